"""The data holder's resume state: what it takes to continue a run exactly where it was saved.

Saved at every save point, after the server's reply (so the server holds the same step): part 1,
its optimizer, both noise generators, the guard's sums and scores (with a guard), DP-SGD's
accountant (with DP-SGD: the privacy spent so far), the position
with the running epoch's sums, the history and the best epoch so far, and the settings the run
was started with. One file per run,
``<model_dir>/client/<run>.ckpt``, written atomically; it is removed when the run completes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from splitnn.client.progress import Progress
from splitnn.common import exits
from splitnn.common.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from splitnn.common.codec import StepId


class ResumeError(exits.BadUsage):
    """There is no state to resume, or it belongs to a run with other settings."""


@dataclass(frozen=True)
class HolderState:
    """One saved state. step: the last step applied on both sides."""

    step: StepId
    progress: Progress
    body: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    noise: torch.Tensor  # generator state of the training noise (uint8)
    val_noise: torch.Tensor  # generator state of the validation noise (uint8)
    guard: dict[str, Any] | None = None  # the guard's `state_dict` (None: no guard)
    dp: dict[str, Any] | None = None  # DP-SGD's accountant `state_dict` (None: no DP-SGD)


def resume_path(model_dir: Path, run: str) -> Path:
    return model_dir / "client" / f"{run}.ckpt"


def save_state(path: Path, state: HolderState, *, settings: dict[str, Any], run: str) -> None:
    """Writes `state` atomically, with the run's `settings` to check on resume."""
    payload = {
        "step": [state.step.epoch, state.step.batch],
        "progress": state.progress.to_state(),
        "body": state.body,
        "optimizer": state.optimizer,
        "noise": state.noise,
        "val_noise": state.val_noise,
        "guard": state.guard,
        "dp": state.dp,
        "settings": settings,
    }
    manifest = {"part": "body-resume", "run": run, "step": payload["step"], **settings}
    save_checkpoint(path, payload, manifest)


def load_state(path: Path, *, settings: dict[str, Any], run: str) -> HolderState:
    """Reads the state saved at `path`; its settings must equal `settings`.

    Raises:
        ResumeError: no state, an unreadable one, or one saved with other settings.
    """
    if not path.exists():
        raise ResumeError(f"nothing to resume: run {run!r} has no saved state ({path})")
    try:
        payload, _ = load_checkpoint(path)
    except CheckpointError as error:
        raise ResumeError(str(error)) from None
    saved = payload.get("settings", {})
    differ = sorted(k for k in settings.keys() | saved.keys() if saved.get(k) != settings.get(k))
    if differ:
        was = ", ".join(f"{k}={saved.get(k)!r}" for k in differ)
        raise ResumeError(f"run {run!r} was started with other settings ({was}): "
                          "use them to resume it, or --restart")  # fmt: skip
    epoch, batch = (int(v) for v in payload["step"])
    return HolderState(
        step=StepId(run, epoch, batch),
        progress=Progress.from_state(payload["progress"]),
        body=payload["body"],
        optimizer=payload["optimizer"],
        noise=payload["noise"],
        val_noise=payload["val_noise"],
        guard=payload.get("guard"),
        dp=payload.get("dp"),
    )
