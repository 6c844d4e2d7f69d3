"""Tests for splitnn.common.partitions: the train subset shared out among several data holders."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import splitnn.common.partitions as partitions
from splitnn.common.datasets import Subset, load_splits
from splitnn.common.partitions import Partition, PartitionError, partition, subset_for
from splitnn.common.seeds import SEEDING

SCHEMES = ("iid", "dirichlet")
HOLDERS = (1, 2, 3, 4, 8)

# Small synthetic label sets: balanced, one class, classes with gaps, very unbalanced, N = 8.
SYNTHETIC = {
    "balanced": torch.arange(60) % 6,
    "one-class": torch.zeros(23, dtype=torch.int64),
    "gaps": torch.tensor([0, 7, 7, 3, 0, 7, 3, 3, 0, 0, 7, 9], dtype=torch.int64),
    "unbalanced": torch.cat([torch.zeros(50), torch.ones(3), torch.full((2,), 2)]).long(),
    "tiny": torch.tensor([1, 0, 1, 0, 2, 2, 1, 0], dtype=torch.int64),
}


@pytest.fixture(scope="module")
def train() -> Subset:
    return load_splits("mnist5k").train


def assert_disjoint_cover(p: Partition, n: int) -> None:
    """Each holder's indices are sorted, int64, non-empty; together exactly 0..n-1 once each."""
    assert len(p.indices) == p.holders
    seen: list[int] = []
    for idx in p.indices:
        assert idx.dtype == torch.int64 and idx.dim() == 1
        values = idx.tolist()
        assert values, "a holder got no samples"
        assert values == sorted(values)
        seen += values
    assert len(seen) == len(set(seen)) == n, "holders overlap or miss samples"
    assert set(seen) == set(range(n))
    assert sum(p.sizes) == p.size == n


# --- disjoint and covering ------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("holders", HOLDERS)
def test_mnist5k_train_is_shared_out_disjointly_and_completely(
    train: Subset, scheme: str, holders: int
) -> None:
    p = partition(train.labels, holders=holders, scheme=scheme, seed=3)
    assert (p.scheme, p.holders, p.seed) == (scheme, holders, 3)
    assert p.alpha == (0.5 if scheme == "dirichlet" else None)
    assert_disjoint_cover(p, len(train))


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("holders", HOLDERS)
@pytest.mark.parametrize("alpha", [0.1, 0.5, 100.0])
def test_synthetic_labels_are_shared_out_disjointly_and_completely(
    name: str, scheme: str, holders: int, alpha: float
) -> None:
    labels = SYNTHETIC[name]
    p = partition(labels, holders=holders, scheme=scheme, alpha=alpha, seed=1)
    assert_disjoint_cover(p, len(labels))


@settings(max_examples=150, deadline=None)
@given(
    labels=st.lists(st.integers(0, 5), min_size=1, max_size=120),
    holders=st.integers(1, 12),
    scheme=st.sampled_from(SCHEMES),
    alpha=st.sampled_from([0.01, 0.1, 1.0, 100.0]),
    seed=st.integers(0, 2**63 - 1),
)
def test_any_labels_are_shared_out_disjointly_and_completely(
    labels: list[int], holders: int, scheme: str, alpha: float, seed: int
) -> None:
    holders = min(holders, len(labels))
    p = partition(torch.tensor(labels), holders=holders, scheme=scheme, alpha=alpha, seed=seed)
    assert_disjoint_cover(p, len(labels))


def test_labels_of_any_integer_dtype_are_accepted() -> None:
    labels = SYNTHETIC["tiny"]
    for dtype in (torch.uint8, torch.int32):
        p = partition(labels.to(dtype), holders=3, scheme="dirichlet", seed=0)
        assert p == partition(labels, holders=3, scheme="dirichlet", seed=0)


# --- determinism ----------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_the_same_seed_reproduces_and_other_seeds_differ(train: Subset, scheme: str) -> None:
    first = partition(train.labels, holders=4, scheme=scheme, seed=7)
    torch.manual_seed(123)  # the global generators play no part
    again = partition(train.labels.clone(), holders=4, scheme=scheme, seed=7)
    assert again == first
    assert all(torch.equal(a, b) for a, b in zip(again.indices, first.indices, strict=True))
    others = [partition(train.labels, holders=4, scheme=scheme, seed=s) for s in range(6)]
    digests = {p.digest for p in others}
    assert len(digests) == len(others), "two seeds gave the same assignment"
    assert all(p != first for p in others)


def test_the_scheme_and_alpha_change_the_assignment(train: Subset) -> None:
    iid = partition(train.labels, holders=3, scheme="iid", seed=0)
    low = partition(train.labels, holders=3, scheme="dirichlet", alpha=0.5, seed=0)
    high = partition(train.labels, holders=3, scheme="dirichlet", alpha=5.0, seed=0)
    assert len({iid.digest, low.digest, high.digest}) == 3


# --- sizes and label skew -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "holders"), [(n, k) for n in (1, 7, 8, 9, 100, 3000) for k in HOLDERS if k <= n]
)
def test_iid_sizes_differ_by_at_most_one(n: int, holders: int) -> None:
    p = partition(torch.arange(n) % 10, holders=holders, scheme="iid", seed=2)
    assert max(p.sizes) - min(p.sizes) <= 1
    assert sum(p.sizes) == n


def test_iid_mixes_the_samples(train: Subset) -> None:
    # Not the first N/K samples to holder 0: a permutation, then a cut.
    p = partition(train.labels, holders=4, scheme="iid", seed=0)
    assert not torch.equal(p.indices[0], torch.arange(750))
    counts = p.label_counts(train.labels, 10).double()
    share = counts / counts.sum(dim=1, keepdim=True)
    assert share.max() < 0.2  # every holder sees roughly 1/10 of each class


def top_holder_share(counts: torch.Tensor) -> float:
    """Mean over classes of the fraction of the class held by its largest holder ([K, C])."""
    counts = counts.double()
    return float((counts.max(dim=0).values / counts.sum(dim=0)).mean())


@pytest.mark.parametrize("holders", [2, 3, 4, 8])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_small_alpha_is_skewed_and_large_alpha_near_uniform(
    train: Subset, holders: int, seed: int
) -> None:
    labels = train.labels
    skewed = partition(labels, holders=holders, scheme="dirichlet", alpha=0.1, seed=seed)
    even = partition(labels, holders=holders, scheme="dirichlet", alpha=100.0, seed=seed)
    skewed_counts = skewed.label_counts(labels, 10)
    even_counts = even.label_counts(labels, 10)
    # alpha 0.1: most of each class goes to one holder; alpha 100: about 1/K to each.
    assert top_holder_share(skewed_counts) > 0.6
    per_class = even_counts.double() / even_counts.sum(dim=0)
    assert float((per_class - 1 / holders).abs().max()) < 0.1
    if holders >= 4:
        # A holder's most common class is far above 1/10 of its data with alpha 0.1 ...
        majority = skewed_counts.max(dim=1).values.double() / skewed_counts.sum(dim=1)
        assert float(majority.median()) > 0.3
        # ... and about 1/10 with alpha 100.
        majority = even_counts.max(dim=1).values.double() / even_counts.sum(dim=1)
        assert float(majority.max()) < 0.16


@pytest.mark.parametrize("seed", range(5))
def test_every_holder_gets_a_sample_even_when_draws_leave_one_empty(seed: int) -> None:
    # 8 samples of one class among 8 holders: Dirichlet(0.01) draws leave holders empty, so the
    # last resort (move samples from the largest holder) has to fill them.
    labels = torch.zeros(8, dtype=torch.int64)
    p = partition(labels, holders=8, scheme="dirichlet", alpha=0.01, seed=seed)
    assert p.sizes == (1,) * 8
    assert_disjoint_cover(p, 8)


def test_a_draw_that_leaves_a_holder_empty_is_redrawn(monkeypatch: pytest.MonkeyPatch) -> None:
    draws: list[list[int]] = []
    real_draw = partitions._dirichlet_draw

    def draw(*args: object) -> list[np.ndarray]:
        parts = real_draw(*args)  # type: ignore[arg-type]
        draws.append([len(part) for part in parts])
        return parts

    monkeypatch.setattr(partitions, "_dirichlet_draw", draw)
    redrawn = 0
    for seed in range(30):
        draws.clear()
        p = partition(SYNTHETIC["balanced"], holders=4, scheme="dirichlet", alpha=0.1, seed=seed)
        assert 1 <= len(draws) <= partitions.MAX_DRAWS
        assert all(0 in sizes for sizes in draws[:-1]), "a draw with no empty holder was redrawn"
        if 0 not in draws[-1]:
            assert list(p.sizes) == draws[-1]  # the accepted draw is kept as drawn
        redrawn += len(draws) > 1
    assert redrawn > 0, "no seed needed a redraw: the test proves nothing"


def test_empty_holders_after_the_last_draw_are_filled(monkeypatch: pytest.MonkeyPatch) -> None:
    labels = SYNTHETIC["balanced"]
    monkeypatch.setattr(partitions, "MAX_DRAWS", 1)
    for seed in range(20):
        p = partition(labels, holders=8, scheme="dirichlet", alpha=0.05, seed=seed)
        assert min(p.sizes) >= 1
        assert_disjoint_cover(p, len(labels))


# --- bad arguments --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"holders": 0}, "holders must be >= 1"),
        ({"holders": -2}, "holders must be >= 1"),
        ({"holders": 13}, "must be <= the number of samples"),
        ({"holders": 2.0}, "holders must be an int"),
        ({"holders": True}, "holders must be an int"),
        ({"holders": 2, "scheme": "dirichlet", "alpha": 0.0}, "alpha must be"),
        ({"holders": 2, "scheme": "dirichlet", "alpha": -1.0}, "alpha must be"),
        ({"holders": 2, "scheme": "dirichlet", "alpha": math.nan}, "alpha must be"),
        ({"holders": 2, "scheme": "dirichlet", "alpha": math.inf}, "alpha must be"),
        ({"holders": 2, "scheme": "non-iid"}, "unknown scheme 'non-iid'"),
        ({"holders": 2, "scheme": "IID"}, "unknown scheme"),
        ({"holders": 2, "seed": -1}, "seed must be a non-negative int"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(PartitionError, match=match) as info:
        partition(SYNTHETIC["gaps"], **kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (torch.tensor([0.0, 1.0]), "must be integers"),
        (torch.zeros(2, 2, dtype=torch.int64), "1-D"),
        (torch.tensor([0, -1, 2]), ">= 0"),
        (torch.zeros(0, dtype=torch.int64), "must be <= the number of samples"),
    ],
)
def test_bad_labels_are_refused(labels: torch.Tensor, match: str) -> None:
    with pytest.raises(PartitionError, match=match):
        partition(labels, holders=1)


def test_alpha_is_not_checked_for_iid() -> None:
    assert partition(SYNTHETIC["tiny"], holders=2, scheme="iid", alpha=-1.0).alpha is None


def test_an_inconsistent_partition_is_refused() -> None:
    def make(*parts: list[int], holders: int = 2, **kw: object) -> Partition:
        fields: dict[str, object] = {"scheme": "iid", "alpha": None, "seed": 0} | kw
        indices = tuple(torch.tensor(p, dtype=torch.int64) for p in parts)
        return Partition(holders=holders, indices=indices, **fields)  # type: ignore[arg-type]

    make([0, 2], [1, 3])  # fine
    with pytest.raises(PartitionError, match="overlap or leave a gap"):
        make([0, 1], [1, 2])
    with pytest.raises(PartitionError, match="overlap or leave a gap"):
        make([0, 1], [3])
    with pytest.raises(PartitionError, match="not strictly increasing"):
        make([2, 0], [1])
    with pytest.raises(PartitionError, match="non-empty"):
        make([0, 1], [])
    with pytest.raises(PartitionError, match="3 holders but 2"):
        make([0], [1], holders=3)
    with pytest.raises(PartitionError, match="alpha is for 'dirichlet' only"):
        make([0], [1], alpha=0.5)
    with pytest.raises(PartitionError, match="unknown scheme"):
        make([0], [1], scheme="random")


# --- label counts and the manifest ----------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_label_counts_add_up(train: Subset, scheme: str) -> None:
    p = partition(train.labels, holders=3, scheme=scheme, seed=0)
    counts = p.label_counts(train.labels)
    assert counts.dtype == torch.int64 and counts.shape == (3, 10)
    assert counts.sum(dim=1).tolist() == list(p.sizes)
    assert torch.equal(counts.sum(dim=0), torch.bincount(train.labels, minlength=10))
    for k, idx in enumerate(p.indices):
        assert torch.equal(counts[k], torch.bincount(train.labels[idx], minlength=10))
    assert p.label_counts(train.labels, num_classes=12).shape == (3, 12)
    with pytest.raises(PartitionError, match="beyond num_classes"):
        p.label_counts(train.labels, num_classes=5)
    with pytest.raises(PartitionError, match="labels for a partition of"):
        p.label_counts(train.labels[:-1])


@pytest.mark.parametrize("scheme", SCHEMES)
def test_the_manifest_is_json_and_describes_the_partition(train: Subset, scheme: str) -> None:
    p = partition(train.labels, holders=4, scheme=scheme, alpha=0.3, seed=5)
    manifest = json.loads(json.dumps(p.to_manifest(train.labels, num_classes=10)))
    assert manifest["scheme"] == scheme and manifest["holders"] == 4 and manifest["seed"] == 5
    assert manifest["alpha"] == (0.3 if scheme == "dirichlet" else None)
    assert manifest["seeding"] == SEEDING
    assert manifest["size"] == len(train) and manifest["sizes"] == list(p.sizes)
    assert manifest["label_counts"] == p.label_counts(train.labels, 10).tolist()
    assert isinstance(manifest["digest"], str) and len(manifest["digest"]) == 16
    assert "label_counts" not in p.to_manifest()
    json.dumps(p.to_manifest())


def test_the_digest_follows_the_assignment(train: Subset) -> None:
    p = partition(train.labels, holders=3, scheme="dirichlet", seed=0)
    assert p.digest == partition(train.labels, holders=3, scheme="dirichlet", seed=0).digest
    assert p.digest != partition(train.labels, holders=3, scheme="dirichlet", seed=1).digest
    # Swap one sample between holders 0 and 1: same sizes, another assignment.
    a, b = p.indices[0].tolist(), p.indices[1].tolist()
    a[0], b[0] = b[0], a[0]
    swapped = Partition(
        scheme=p.scheme,
        holders=p.holders,
        alpha=p.alpha,
        seed=p.seed,
        indices=(torch.tensor(sorted(a)), torch.tensor(sorted(b)), p.indices[2]),
    )
    assert swapped.sizes == p.sizes and swapped != p
    assert swapped.digest != p.digest
    assert swapped.to_manifest()["digest"] != p.to_manifest()["digest"]
    # Holder order is part of the assignment.
    reordered = Partition(
        scheme=p.scheme,
        holders=3,
        alpha=p.alpha,
        seed=p.seed,
        indices=(p.indices[1], p.indices[0], p.indices[2]),
    )
    assert reordered.digest != p.digest


# --- one holder's subset --------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_subset_for_gives_each_holder_its_samples_with_their_original_indices(
    train: Subset, scheme: str
) -> None:
    p = partition(train.labels, holders=3, scheme=scheme, seed=0)
    parts = [subset_for(train, p, k) for k in range(3)]
    assert [len(s) for s in parts] == list(p.sizes)
    for pos, part in zip(p.indices, parts, strict=True):
        assert torch.equal(part.images, train.images[pos])
        assert torch.equal(part.labels, train.labels[pos])
        assert torch.equal(part.indices, train.indices[pos])  # source-split indices, not pos
    every = torch.cat([s.indices for s in parts])
    assert sorted(every.tolist()) == sorted(train.indices.tolist())
    assert not torch.equal(parts[0].indices, p.indices[0])


def test_subset_for_refuses_a_wrong_holder_or_subset(train: Subset) -> None:
    p = partition(train.labels, holders=2, seed=0)
    for holder in (-1, 2):
        with pytest.raises(PartitionError, match=r"holder must be in 0\.\.1"):
            subset_for(train, p, holder)
    with pytest.raises(PartitionError, match="the subset has 2999 samples"):
        subset_for(train.take(2999), p, 0)
