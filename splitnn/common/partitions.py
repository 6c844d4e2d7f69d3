"""The training set shared out among several data holders ("several data holders, one server").

``partition(labels, holders=K, scheme=...)`` assigns every sample of a data set's train subset to
exactly one of K holders and returns a :class:`Partition`: for each holder, the sorted positions
of its samples in that subset (int64 tensors, positions 0..N-1, not the source-split indices the
subset carries). ``subset_for(subset, partition, holder)`` cuts one holder's :class:`Subset` out
of the train subset, keeping each image's original index so an attack can still be scored.

Two schemes:

* ``"iid"``: a seeded permutation of 0..N-1 cut into K consecutive parts whose sizes differ by at
  most one (the first ``N % K`` holders get one more), each part sorted.
* ``"dirichlet"``: non-IID by label, the usual federated-learning construction. For each class c
  (ascending) the class's positions are shuffled, proportions p ~ Dirichlet(alpha * 1_K) are
  drawn, and the shuffled positions are cut at ``floor(cumsum(p) * n_c)``: holder k gets about
  ``p_k * n_c`` of class c. Small alpha (0.1) gives each holder a few dominant classes; large
  alpha (100) gives every holder nearly 1/K of every class.

Every holder gets at least one sample. A Dirichlet draw can leave a holder empty (likely with
small alpha and many holders); the whole draw is then repeated, up to ``MAX_DRAWS`` times in all.
If the last draw still leaves holders empty, each empty holder in turn (lowest number first) takes
one sample, chosen at random, from the holder that is largest at that moment (lowest number on a
tie); since K <= N that holder has at least two samples, so it never becomes empty itself.

All randomness comes from one numpy Generator seeded with ``seed_for(seed, "partition")``: the same
labels, K, scheme, alpha and seed give the same assignment on every machine.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch

from splitnn.common import exits
from splitnn.common.datasets import Subset
from splitnn.common.seeds import SEEDING, seed_for

__all__ = [
    "MAX_DRAWS",
    "Partition",
    "PartitionError",
    "Scheme",
    "partition",
    "subset_for",
]

Scheme = Literal["iid", "dirichlet"]
SCHEMES: tuple[str, ...] = get_args(Scheme)
# Dirichlet draws tried before empty holders are filled from the largest one.
MAX_DRAWS = 10
# Hex characters of the sha256 kept as the assignment's digest.
_DIGEST_CHARS = 16


class PartitionError(exits.Failed, ValueError):
    """A partition asked for with bad arguments (holders, alpha, scheme, labels, seed), or an
    inconsistent Partition, or a subset that does not match its partition."""


@dataclass(frozen=True, eq=False)
class Partition:
    """Which samples of a train subset each of K data holders gets.

    Attributes:
        scheme: "iid" or "dirichlet".
        holders: K >= 1, the number of data holders.
        alpha: the Dirichlet concentration for "dirichlet", None for "iid".
        seed: the run seed; the assignment is drawn from ``seed_for(seed, "partition")``.
        indices: K int64 tensors, holder k's positions in the train subset (0..N-1), each 1-D,
            strictly increasing and non-empty; together they are exactly 0..N-1, N = ``size``.

    Raises:
        PartitionError: the fields are inconsistent (checked on construction).
    """

    scheme: Scheme
    holders: int
    alpha: float | None
    seed: int
    indices: tuple[torch.Tensor, ...]

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise PartitionError(f"unknown scheme {self.scheme!r}; known: {', '.join(SCHEMES)}")
        if (self.alpha is None) != (self.scheme == "iid"):
            raise PartitionError(
                f"alpha is for 'dirichlet' only; got {self.alpha!r} for {self.scheme!r}"
            )
        if len(self.indices) != self.holders:
            raise PartitionError(f"{self.holders} holders but {len(self.indices)} index tensors")
        for k, idx in enumerate(self.indices):
            if idx.dtype != torch.int64 or idx.dim() != 1 or idx.numel() == 0:
                raise PartitionError(
                    f"holder {k}: indices must be a non-empty int64 [n] tensor, got "
                    f"{idx.dtype} {tuple(idx.shape)}"
                )
            if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
                raise PartitionError(f"holder {k}: indices are not strictly increasing")
        every = torch.cat(self.indices).sort().values
        if not torch.equal(every, torch.arange(every.numel(), dtype=torch.int64)):
            raise PartitionError(
                f"the holders' indices are not exactly 0..{every.numel() - 1}: they overlap or "
                f"leave a gap"
            )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Partition):
            return NotImplemented
        return (
            (self.scheme, self.holders, self.alpha, self.seed)
            == (other.scheme, other.holders, other.alpha, other.seed)
        ) and all(torch.equal(a, b) for a, b in zip(self.indices, other.indices, strict=True))

    __hash__ = None  # type: ignore[assignment]

    @property
    def size(self) -> int:
        """N, the number of samples shared out."""
        return sum(self.sizes)

    @property
    def sizes(self) -> tuple[int, ...]:
        """The number of samples of each holder, K ints."""
        return tuple(int(idx.numel()) for idx in self.indices)

    @property
    def digest(self) -> str:
        """A short sha256 (16 hex characters) of the assignment alone: which positions each
        holder has, in holder order. Equal assignments have equal digests whatever the scheme
        or seed that made them."""
        h = hashlib.sha256(b"splitnn-partition-v1")
        h.update(self.holders.to_bytes(8, "little"))
        for idx in self.indices:
            h.update(int(idx.numel()).to_bytes(8, "little"))
            h.update(idx.numpy().astype("<i8", copy=False).tobytes())
        return h.hexdigest()[:_DIGEST_CHARS]

    def label_counts(self, labels: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
        """How many samples of each class each holder has.

        Args:
            labels: int64 [N], the labels of the train subset the partition was made for.
            num_classes: C; by default ``labels.max() + 1``.

        Returns:
            int64 [K, C]; row k sums to holder k's size.

        Raises:
            PartitionError: labels are not integer [N] with values in 0..C-1.
        """
        labels = _check_labels(labels)
        if labels.numel() != self.size:
            raise PartitionError(f"{labels.numel()} labels for a partition of {self.size} samples")
        top = int(labels.max()) + 1
        classes = top if num_classes is None else num_classes
        if classes < top:
            raise PartitionError(f"labels go up to {top - 1}, beyond num_classes={num_classes}")
        return torch.stack(
            [torch.bincount(labels[idx], minlength=classes) for idx in self.indices]
        ).to(torch.int64)

    def to_manifest(
        self, labels: torch.Tensor | None = None, num_classes: int | None = None
    ) -> dict[str, Any]:
        """A JSON-able description of the partition (without the indices themselves).

        Keys: scheme, holders, alpha (None for iid), seed, seeding (the seed scheme), size (N),
        sizes (K ints), digest (see :attr:`digest`) and, if `labels` (int64 [N]) are given,
        label_counts (K lists of C ints, see :meth:`label_counts`).
        """
        manifest: dict[str, Any] = {
            "scheme": self.scheme,
            "holders": self.holders,
            "alpha": self.alpha,
            "seed": self.seed,
            "seeding": SEEDING,
            "size": self.size,
            "sizes": list(self.sizes),
            "digest": self.digest,
        }
        if labels is not None:
            manifest["label_counts"] = self.label_counts(labels, num_classes).tolist()
        return manifest


def _check_labels(labels: torch.Tensor) -> torch.Tensor:
    """`labels` as int64 [N] on the CPU, or PartitionError."""
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
        raise PartitionError("labels must be a 1-D tensor [N]")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise PartitionError(f"labels must be integers, got {labels.dtype}")
    labels = labels.detach().cpu().to(torch.int64)
    if labels.numel() and int(labels.min()) < 0:
        raise PartitionError("labels must be >= 0")
    return labels


def partition(
    labels: torch.Tensor,
    *,
    holders: int,
    scheme: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
) -> Partition:
    """Share the N samples whose labels are given among `holders` data holders.

    Args:
        labels: int64 [N] (any integer dtype), >= 0: the train subset's labels. Only N matters
            for "iid".
        holders: K, 1 <= K <= N.
        scheme: "iid" or "dirichlet" (see the module docstring).
        alpha: the Dirichlet concentration, > 0 and finite; used by "dirichlet" only.
        seed: the run seed, >= 0.

    Returns:
        A Partition whose ``indices`` are K sorted, non-empty int64 tensors of positions
        0..N-1, disjoint and together covering 0..N-1.

    Raises:
        PartitionError: (a ValueError) for holders < 1 or > N, alpha <= 0 (or not finite) with
            "dirichlet", an unknown scheme, a negative seed, or labels that are not integer [N]
            and >= 0.
    """
    labels = _check_labels(labels)
    n = int(labels.numel())
    if isinstance(holders, bool) or not isinstance(holders, int):
        raise PartitionError(f"holders must be an int, got {holders!r}")
    if holders < 1:
        raise PartitionError(f"holders must be >= 1, got {holders}")
    if holders > n:
        raise PartitionError(f"holders ({holders}) must be <= the number of samples ({n})")
    if scheme not in SCHEMES:
        raise PartitionError(f"unknown scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise PartitionError(f"seed must be a non-negative int, got {seed!r}")
    rng = np.random.default_rng(seed_for(seed, "partition"))
    if scheme == "iid":
        parts = np.array_split(rng.permutation(n), holders)
        return _make("iid", holders, None, seed, parts)
    if not isinstance(alpha, int | float) or not math.isfinite(alpha) or alpha <= 0:
        raise PartitionError(f"alpha must be a finite number > 0, got {alpha!r}")
    parts = _dirichlet(labels.numpy(), holders, float(alpha), rng)
    return _make("dirichlet", holders, float(alpha), seed, parts)


def _make(
    scheme: Scheme, holders: int, alpha: float | None, seed: int, parts: list[np.ndarray]
) -> Partition:
    indices = tuple(torch.from_numpy(np.sort(p).astype(np.int64)) for p in parts)
    return Partition(scheme=scheme, holders=holders, alpha=alpha, seed=seed, indices=indices)


def _dirichlet(
    labels: np.ndarray, holders: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Per-class Dirichlet split of positions 0..N-1 (labels int64 [N]); K int64 arrays, none
    empty (redraws, then fills from the largest holder: see the module docstring)."""
    for _ in range(MAX_DRAWS):
        parts = _dirichlet_draw(labels, holders, alpha, rng)
        if all(p.size for p in parts):
            return parts
    for k in range(holders):
        if parts[k].size == 0:
            donor = int(np.argmax([p.size for p in parts]))
            take = int(rng.integers(parts[donor].size))
            parts[k] = parts[donor][take : take + 1]
            parts[donor] = np.delete(parts[donor], take)
    return parts


def _dirichlet_draw(
    labels: np.ndarray, holders: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """One draw: for each class, shuffle its positions and cut them by p ~ Dir(alpha * 1_K)."""
    buckets: list[list[np.ndarray]] = [[] for _ in range(holders)]
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rng.shuffle(members)
        p = rng.dirichlet(np.full(holders, alpha))
        if not np.isfinite(p).all():  # every gamma variate underflowed: the alpha -> 0 limit
            p = np.eye(holders)[rng.integers(holders)]
        cuts = np.minimum(np.floor(np.cumsum(p)[:-1] * members.size), members.size)
        for k, piece in enumerate(np.split(members, cuts.astype(np.int64))):
            buckets[k].append(piece)
    return [np.concatenate(b) if b else np.empty(0, np.int64) for b in buckets]


def subset_for(subset: Subset, partition: Partition, holder: int) -> Subset:
    """Holder `holder`'s share of `subset`, the train subset `partition` was made for.

    Images, labels and indices are sliced at the holder's positions, in increasing order; the
    returned ``indices`` are still the images' indices in their source split (as in `subset`),
    so reconstructions of a holder's images can be scored against the originals.

    Raises:
        PartitionError: `holder` is not in 0..K-1, or `subset` has not N samples.
    """
    if isinstance(holder, bool) or not isinstance(holder, int):
        raise PartitionError(f"holder must be an int, got {holder!r}")
    if not 0 <= holder < partition.holders:
        raise PartitionError(f"holder must be in 0..{partition.holders - 1}, got {holder}")
    if len(subset) != partition.size:
        raise PartitionError(
            f"the subset has {len(subset)} samples, the partition shares out {partition.size}"
        )
    pos = partition.indices[holder]
    return Subset(images=subset.images[pos], labels=subset.labels[pos], indices=subset.indices[pos])
