"""What the attacker queries in place of part 1: the deployed part 1 lent by a colluding data
holder (`BodyOracle`), or a substitute the attacker trained alone (`attacker.substitute`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Protocol

import torch

from splitnn.common.checkpoints import CheckpointError, load_checkpoint, manifest_path
from splitnn.common.devices import on_device, to_compute
from splitnn.common.models import Body
from splitnn.common.noise import LaplaceNoise


class CutOracle(Protocol):
    """Images in, the cut tensors the attacker takes for what part 1 would send.

    Attributes:
        kind: "lent" (the deployed part 1, lent by a colluding holder) or "substitute".
        noise_scale: the Laplace scale b its answers carry.
    """

    kind: str
    noise_scale: float

    def query(
        self, images: torch.Tensor, *, noisy: bool = True, batch_size: int = 500
    ) -> torch.Tensor:
        """images: float32 [N,1,28,28] in [0,1] -> cut tensors float32 [N,500]."""
        ...

    def describe(self) -> dict[str, Any]:
        """What identifies this oracle's answers (for the decoder's manifest): JSON values."""
        ...


@torch.no_grad()
def cut_tensors(
    body: Body, noise: LaplaceNoise | None, images: torch.Tensor, batch_size: int = 500
) -> torch.Tensor:
    """images float32 [N,1,28,28] in [0,1] through `body` (and `noise`, if any), `batch_size` at
    a time -> float32 [N,500]."""
    outputs = []
    for start in range(0, len(images), batch_size):
        cut = body(to_compute(images[start : start + batch_size])).cpu()
        outputs.append(noise(cut) if noise is not None else cut)
    return torch.cat(outputs) if outputs else torch.empty(0, 500)


def file_sha256(path: Path) -> str:
    """Hex sha256 of the file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_checkpoint(path: Path, *, part: str = "body") -> Path:
    """`path` itself, or, for a ``*`` pattern (in any of its parts), the newest match whose
    manifest names `part` ("body": a data holder's part 1; "head": a server's part 2).

    Matches are chosen by their manifest (``part``), never by their names: a pattern may also
    match other checkpoints (a server's head, an attacker's decoder).

    Raises:
        CheckpointError: nothing usable matches; the message lists what was found and why not.
    """
    if path.exists() or "*" not in str(path):
        return path
    usable: list[Path] = []
    passed: list[str] = []
    # A pattern may have * in any part (heads/<party>/*/*.ckpt): glob from its anchor.
    anchor = Path(path.anchor or ".")
    matches = anchor.glob(str(path.relative_to(anchor) if path.anchor else path))
    for match in sorted(matches, key=lambda p: p.stat().st_mtime):
        if match.suffix != ".ckpt":
            continue
        found_part = _manifest_part(match)
        if found_part == part:
            usable.append(match)
        else:
            why = "no manifest" if found_part is None else f"part {found_part}"
            passed.append(f"{match.name} ({why})")
    if not usable:
        found = f"; found only: {', '.join(passed)}" if passed else ""
        raise CheckpointError(f"no {_PART_NAMES.get(part, part)} checkpoint matches {path}{found}")
    return usable[-1]


_PART_NAMES = {"body": "data holder's part-1", "head": "server's head"}


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

    kind = "lent"

    def __init__(self, checkpoint: Path, *, set_noise: float | None = None, seed: int = 0) -> None:
        self.path = resolve_checkpoint(checkpoint)
        state, manifest = load_checkpoint(self.path)
        if manifest.get("part") != "body":
            raise CheckpointError(f"{self.path} is not a data holder's part-1 checkpoint")
        self.manifest: dict[str, Any] = manifest
        self.body = on_device(Body())
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
        return cut_tensors(self.body, self._noise if noisy else None, images, batch_size)

    def describe(self) -> dict[str, Any]:
        """The part 1 by its bytes (the path may be rewritten in place) and the noise it adds."""
        return {
            "classifier": str(self.path),
            "classifier_sha256": file_sha256(self.path),
            "deployed_noise": self.deployed_noise,
            "set_noise": self.noise_scale,
        }
