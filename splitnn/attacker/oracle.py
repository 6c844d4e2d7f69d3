"""Black-box access to the deployed part 1, lent by the colluding data holder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from splitnn.common.checkpoints import CheckpointError, load_checkpoint, manifest_path
from splitnn.common.models import Body
from splitnn.common.noise import LaplaceNoise


def resolve_checkpoint(path: Path) -> Path:
    """`path` itself, or, for a ``*`` pattern, the newest match that is a data holder's part 1.

    Matches are chosen by their manifest (``part`` = ``body``), never by their names: a pattern
    may also match other checkpoints (a server's head, an attacker's decoder).

    Raises:
        CheckpointError: nothing usable matches; the message lists what was found and why not.
    """
    if path.exists() or "*" not in path.name:
        return path
    usable: list[Path] = []
    passed: list[str] = []
    for match in sorted(path.parent.glob(path.name), key=lambda p: p.stat().st_mtime):
        if match.suffix != ".ckpt":
            continue
        part = _manifest_part(match)
        if part == "body":
            usable.append(match)
        else:
            passed.append(f"{match.name} ({'no manifest' if part is None else f'part {part}'})")
    if not usable:
        found = f"; found only: {', '.join(passed)}" if passed else ""
        raise CheckpointError(f"no data holder's part-1 checkpoint matches {path}{found}")
    return usable[-1]


def _manifest_part(path: Path) -> str | None:
    try:
        return str(json.loads(manifest_path(path).read_text()).get("part"))
    except (OSError, ValueError, AttributeError):
        return None


class BodyOracle:
    """Answers queries with what the deployed part 1 would put on the wire.

    The attacker only calls it forward: images in, noisy cut tensor out. It uses the deployed
    noise scale unless `set_noise` overrides it (the study's post-training-noise attack).

    Args:
        checkpoint: a part-1 checkpoint written by the data holder (with its manifest).
        set_noise: noise scale to apply instead of the deployed one; None: deployed.
        seed: seeds the oracle's noise draws (independent of the victim's).
    """

    def __init__(self, checkpoint: Path, *, set_noise: float | None = None, seed: int = 0) -> None:
        self.path = resolve_checkpoint(checkpoint)
        state, manifest = load_checkpoint(self.path)
        if manifest.get("part") != "body":
            raise CheckpointError(f"{self.path} is not a data holder's part-1 checkpoint")
        self.manifest: dict[str, Any] = manifest
        self.body = Body()
        self.body.load_state_dict(state)
        self.body.eval()
        self.deployed_noise = float(manifest.get("noise", 0.0))
        self.noise_scale = self.deployed_noise if set_noise is None else set_noise
        self._noise = LaplaceNoise(self.noise_scale, seed=seed)

    @torch.no_grad()
    def query(
        self, images: torch.Tensor, *, noisy: bool = True, batch_size: int = 500
    ) -> torch.Tensor:
        """images: float32 [N,1,28,28] in [0,1] -> cut tensors float32 [N,500], noised if `noisy`.

        `noisy=False` gives the pre-noise tensor: the reference's shortcut, never on the wire.
        """
        outputs = []
        for start in range(0, len(images), batch_size):
            cut = self.body(images[start : start + batch_size])
            outputs.append(self._noise(cut) if noisy else cut)
        return torch.cat(outputs) if outputs else torch.empty(0, 500)
