"""Black-box access to the deployed part 1, lent by the colluding data holder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from splitnn.common.checkpoints import CheckpointError, load_checkpoint
from splitnn.common.models import Body
from splitnn.common.noise import LaplaceNoise


def resolve_checkpoint(path: Path) -> Path:
    """`path` itself, or the newest file matching it when it holds a ``*`` pattern."""
    if path.exists() or "*" not in path.name:
        return path
    matches = sorted(path.parent.glob(path.name), key=lambda p: p.stat().st_mtime)
    matches = [m for m in matches if m.suffix == ".ckpt"]
    if not matches:
        raise CheckpointError(f"no checkpoint matches {path}")
    return matches[-1]


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
