"""Repeating a simulation over seeds: the seeds, each seed's own files, and the summary over them.

`splitnn-sim --seeds N` runs the whole simulation once for each of the seeds
``--seed .. --seed + N - 1`` (0..N-1 by default), one after the other, and reports each score as
its mean over the seeds with its standard error (`aggregate`).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from splitnn.common.reports import MultiSummary, VictimSummary
from splitnn.sim.app import SimConfig, SimSummary

__all__ = ["SCORES", "SeedsSummary", "aggregate", "mean_se", "seed_list", "seeded"]

# Every score of a summary, at its top level or in a holder's entry (`members`, `victims`).
SCORES: frozenset[str] = frozenset(SimSummary.SCORES) | frozenset(VictimSummary.SCORES)
# Lists of per-holder entries, matched across seeds by their "holder".
_PER_HOLDER = ("members", "victims")

C = TypeVar("C", bound=SimConfig)


def seed_list(first: int, count: int) -> list[int]:
    """The seeds of `count` runs from `first`: first, first + 1, ..., first + count - 1.

    Raises:
        ValueError: a negative first seed or a count below 1.
    """
    if first < 0 or count < 1:
        raise ValueError(f"seeds start at a seed >= 0 and count >= 1, not {first} and {count}")
    return list(range(first, first + count))


def seeded(cfg: C, seed: int, *, several: bool) -> C:
    """`cfg` for the run of `seed`. When `several` seeds run, each run's files are its own: the
    work folder (wire log, certificates, curve) is ``WORKDIR/seed<k>`` and the figure
    ``<stem>_seed<k><suffix>``; checkpoints, attackers, decoders and validators already carry
    the seed in their names (``..._seed<k>...``, seed 0 keeping the study's names)."""
    if not several:
        return replace(cfg, seed=seed)
    figure = cfg.figure.with_name(f"{cfg.figure.stem}_seed{seed}{cfg.figure.suffix}")
    return replace(cfg, seed=seed, workdir=cfg.workdir / f"seed{seed}", figure=figure)


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """The mean of `values` and its standard error: the sample standard deviation (ddof = 1)
    over sqrt(n); 0.0 for a single value or equal values.

    Raises:
        ValueError: no values.
    """
    n = len(values)
    if n == 0:
        raise ValueError("the mean of no values")
    if all(v == values[0] for v in values):  # exactly, not to the last bit of a sum
        return float(values[0]), 0.0
    mean = math.fsum(values) / n
    variance = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def aggregate(
    runs: Sequence[Mapping[str, Any]], *, scores: Collection[str] = SCORES
) -> dict[str, Any]:
    """One summary of several seeds' summaries (JSON objects of one kind).

    Each key of `scores` becomes the mean over the runs, with its standard error as
    ``<key>_se`` (both None unless every run has a number there). `members` and `victims` (lists
    of per-holder entries) are aggregated entry by entry, matched by ``holder``. Any other key
    is kept where every run has the same value and left out where they differ (e.g. the
    figures' paths): each run's own value stays in its summary.

    Raises:
        ValueError: no runs, or runs whose keys or holders differ.
    """
    if not runs:
        raise ValueError("no runs to aggregate")
    keys = list(runs[0])
    if any(list(run) != keys for run in runs):
        raise ValueError("the runs' summaries have different keys: not one kind of simulation")
    out: dict[str, Any] = {}
    for key in keys:
        values = [run[key] for run in runs]
        if key in scores:
            numbers = [v for v in values if _is_number(v)]
            mean, se = mean_se(numbers) if len(numbers) == len(values) else (None, None)
            out[key], out[f"{key}_se"] = mean, se
        elif key in _PER_HOLDER and all(isinstance(v, list) for v in values):
            out[key] = _per_holder(values, key=key, scores=scores)
        elif all(v == values[0] for v in values):
            out[key] = values[0]
    return out


def _per_holder(
    lists: Sequence[list[Mapping[str, Any]]], *, key: str, scores: Collection[str]
) -> list[dict[str, Any]]:
    holders = [[entry["holder"] for entry in entries] for entries in lists]
    if any(h != holders[0] for h in holders):
        raise ValueError(f"the runs' {key} are not the same holders")
    return [
        aggregate([entries[i] for entries in lists], scores=scores) for i in range(len(holders[0]))
    ]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class SeedsSummary:
    """What `splitnn-sim --seeds N` (N >= 2) prints: the runs of `seeds`, in order."""

    seeds: list[int]
    runs: list[SimSummary] | list[MultiSummary]

    def to_json(self) -> dict[str, Any]:
        """`aggregate` of the runs' JSON, with ``seeds``, ``seconds`` (the total wall time) and
        ``runs`` (every seed's own summary, as a single run prints it)."""
        runs = [run.to_json() for run in self.runs]
        out = aggregate(runs)
        out["seconds"] = round(math.fsum(run["seconds"] for run in runs), 1)
        return {**out, "seeds": list(self.seeds), "runs": runs}
