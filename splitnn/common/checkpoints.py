"""Checkpoint files: plain state_dicts written atomically, a JSON manifest beside each, names."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from splitnn.common import exits
from splitnn.common.devices import to_cpu
from splitnn.common.files import PRIVATE, write_atomic, write_json_atomic

_STEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=+-]{0,199}")


class CheckpointError(exits.Failed):
    """A checkpoint is missing, unreadable, or does not match what was asked for."""


def setting_tag(value: float) -> str:
    """The study's number tag, decimal point dropped: 0.5 -> "05", 1.0 -> "10", 0.05 -> "005"."""
    text = f"{value:.1f}" if round(value, 1) == value else repr(float(value))
    return text.replace(".", "")


def classifier_stem(
    *, dataset: str, noise: float, nopeek: float, epoch: int, seed: int = 0, dp: str = ""
) -> str:
    """E.g. ``mnist_05noise_00nopeek_epoch=3``: the study's names, the data set as the prefix.

    Seeds other than 0 add ``_seed<k>`` before the epoch, so repeated runs do not collide; a
    DP-SGD run adds its tag (`dp`, e.g. ``dp3eps``) after the settings.
    """
    seed_part = f"_seed{seed}" if seed else ""
    dp_part = f"_{dp}" if dp else ""
    tags = f"{setting_tag(noise)}noise_{setting_tag(nopeek)}nopeek{dp_part}"
    return f"{dataset}_{tags}{seed_part}_epoch={epoch}"


def attacker_stem(
    *,
    classifier: str,
    aux: str,
    set_noise: float | None = None,
    aux_fraction: float = 1.0,
    decoder: str = "deep",
    protocol: str = "noisy",
) -> str:
    """The study's attacker name, e.g. ``mnist_attacker_model<classifier>_set05noise_deep``.

    `classifier` names the attacked part 1 (a checkpoint stem, or a run's name before its epoch
    is known); the prefix is the auxiliary data set's family; what distinguishes our variants
    follows: oracle noise, a fraction of the auxiliary data, the decoder unless it is the study's,
    and the reference's noise-free protocol.
    """
    prefix = "emnist" if aux.startswith("emnist") else aux.split("-")[0].removesuffix("5k")
    stem = f"{prefix}_attacker_model{classifier}"
    if set_noise is not None:
        stem += f"_set{setting_tag(set_noise)}noise"
    if aux_fraction != 1.0:
        stem += f"_aux{setting_tag(aux_fraction)}"
    if decoder != "study":
        stem += f"_{decoder}"
    if protocol == "clean":
        stem += "_clean"
    return stem


def check_stem(stem: str) -> str:
    """Returns `stem` if it is a safe file name (no separators, no leading dot), else raises."""
    # fullmatch: with match and "$", a name ending in a newline would pass.
    if not _STEM.fullmatch(stem) or ".." in stem:
        raise CheckpointError(f"not a valid checkpoint name: {stem!r}")
    return stem


def manifest_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def save_checkpoint(path: Path, state: Mapping[str, Any], manifest: Mapping[str, Any]) -> Path:
    """Writes `state` (tensors, numbers, strings) to `path` and `manifest` to `path`.json.

    Both are replaced atomically (`splitnn.common.files`), readable by their owner only: a crash
    leaves either the old file or the new one, never a torn one.
    """
    write_atomic(path, lambda handle: torch.save(to_cpu(dict(state)), handle), mode=PRIVATE)
    write_json_atomic(manifest_path(path), manifest, mode=PRIVATE)
    return path


def load_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reads a checkpoint with ``weights_only=True`` and its manifest (empty if absent)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except Exception as error:  # torch raises many types for a corrupt file
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from error
    manifest: dict[str, Any] = {}
    if manifest_path(path).exists():
        manifest = json.loads(manifest_path(path).read_text())
    return state, manifest


def remove_checkpoint(path: Path) -> None:
    path.unlink(missing_ok=True)
    manifest_path(path).unlink(missing_ok=True)
