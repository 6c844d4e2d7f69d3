"""The study's groups of runs, registered by name (the reference's ``main.sh``, as data).

A training group is a list of classifier settings; the ``attacks`` group is built from whatever
classifiers of the grid exist (see `splitnn.experiments.attacks`). Names follow the study:
``plain`` (b = 0, W = 0), ``noise`` (Laplace b), ``nopeek`` (NoPeek W, batch 32), ``combo``
(both, batch 32). The ``multi`` group is a list of multi-holder simulations (`MultiSetting`), each
one `splitnn-sim` run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from splitnn.common.checkpoints import setting_tag
from splitnn.common.models import NOPEEK_BATCH_SIZE, PLAIN_BATCH_SIZE
from splitnn.common.topology import NAMES

NOISE_LEVELS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
NOPEEK_WEIGHTS = (0.05, 0.1, 0.25, 0.5, 1.0)
COMBO_NOISE = (0.1, 0.2, 0.5, 1.0)
COMBO_NOPEEK = (0.1, 0.25, 0.5)
# Noise added after training to the plain and NoPeek models (docs/study.md, Table B).
POSTTRAIN_NOISE = (0.0, 0.1, 0.2, 0.5, 1.0, 1.5, 2.0)
# The attacker side (issue 4).
POSTTRAIN_ATTACK_NOISE = (0.1, 0.5, 1.0)
AUX_FRACTIONS = (0.02, 0.1, 0.25, 0.5, 0.75, 1.0)

# Multi-holder simulations (the ``multi`` group): holders K, topologies, Dirichlet label skew,
# and the victims' noise at K = 4 with iid data.
MULTI_HOLDERS = (2, 4, 8)
DIRICHLET_ALPHA = 0.5
MULTI_NOISE_HOLDERS = 4
MULTI_NOISE = (0.5, 1.0, 2.0, 5.0)

TRAINING_GROUPS = ("plain", "noise", "nopeek", "combo")
GroupKind = Literal["train", "attack", "report", "multi"]


@dataclass(frozen=True)
class Setting:
    """One classifier of the grid, before seeds: noise b, NoPeek weight W, batch size."""

    noise: float
    nopeek: float
    batch_size: int

    @property
    def tag(self) -> str:
        """E.g. ``05noise_00nopeek``: the study's name without data set and epoch."""
        return f"{setting_tag(self.noise)}noise_{setting_tag(self.nopeek)}nopeek"


def run_name(dataset: str, tag: str, seed: int) -> str:
    """``<dataset>_<tag>``, plus ``_seed<k>`` for seeds other than 0."""
    return f"{dataset}_{tag}" + (f"_seed{seed}" if seed else "")


@dataclass(frozen=True)
class TrainSpec:
    """One training run: a setting on a data set with one seed, for `epochs` epochs."""

    dataset: str
    setting: Setting
    seed: int
    epochs: int
    max_steps: int | None = None

    @property
    def name(self) -> str:
        """E.g. ``mnist5k_05noise_00nopeek`` or ``..._seed2``: the classifier without its epoch."""
        return run_name(self.dataset, self.setting.tag, self.seed)

    @property
    def model(self) -> str:
        """The seed-free name under which seeds are aggregated in the tables."""
        return f"{self.dataset}_{self.setting.tag}"


def _plain() -> list[Setting]:
    return [Setting(0.0, 0.0, PLAIN_BATCH_SIZE)]


def _noise() -> list[Setting]:
    return [Setting(b, 0.0, PLAIN_BATCH_SIZE) for b in NOISE_LEVELS]


def _nopeek() -> list[Setting]:
    return [Setting(0.0, w, NOPEEK_BATCH_SIZE) for w in NOPEEK_WEIGHTS]


def _combo() -> list[Setting]:
    return [Setting(b, w, NOPEEK_BATCH_SIZE) for b in COMBO_NOISE for w in COMBO_NOPEEK]


@dataclass(frozen=True)
class Group:
    """A named group of the CLI.

    Attributes:
        kind: "train" groups train classifiers; "attack" runs attackers; "report" writes tables.
        settings: the classifier settings of a training group (empty otherwise).
        help: one line for ``--help``.
    """

    kind: GroupKind
    help: str
    settings: tuple[Setting, ...] = ()


def _train_group(make: Callable[[], list[Setting]], text: str) -> Group:
    return Group(kind="train", help=text, settings=tuple(make()))


GROUPS: dict[str, Group] = {
    "plain": _train_group(_plain, f"b=0, W=0, batch {PLAIN_BATCH_SIZE}"),
    "noise": _train_group(_noise, f"b in 0.1 0.2 0.5 1.0 2.0 5.0, batch {PLAIN_BATCH_SIZE}"),
    "nopeek": _train_group(_nopeek, f"W in 0.05 0.1 0.25 0.5 1.0, batch {NOPEEK_BATCH_SIZE}"),
    "combo": _train_group(
        _combo, f"b in 0.1 0.2 0.5 1.0 x W in 0.1 0.25 0.5, batch {NOPEEK_BATCH_SIZE}"
    ),
    "attacks": Group(kind="attack", help="an attacker for every classifier, and the variants"),
    "performance": Group(kind="report", help="measure everything, write the CSVs and figures"),
    "multi": Group(
        kind="multi",
        help="splitnn-sim: K in 2 4 8 x topologies x iid/dirichlet; victims' b at K=4 (not in all)",
    ),
}
# `all` expands to these, in this order.
ALL = (*TRAINING_GROUPS, "attacks", "performance")
GROUP_NAMES = (*GROUPS, "all")


def expand(names: tuple[str, ...], *, attacks: bool = True) -> tuple[str, ...]:
    """Group names in the order given, ``all`` expanded, duplicates dropped.

    With `attacks` False, ``attacks`` is left out of the expansion of ``all``.
    """
    out: list[str] = []
    for name in names:
        if name not in GROUP_NAMES:
            raise KeyError(f"unknown group {name!r}; known: {', '.join(GROUP_NAMES)}")
        parts = [n for n in ALL if attacks or n != "attacks"] if name == "all" else [name]
        out.extend(part for part in parts if part not in out)
    return tuple(out)


def train_specs(
    group: str, *, dataset: str, seeds: int, epochs: int, max_steps: int | None = None
) -> list[TrainSpec]:
    """The training runs of one group: every setting for seeds 0..seeds-1 (seed-major)."""
    settings = GROUPS[group].settings
    return [
        TrainSpec(dataset, setting, seed, epochs, max_steps)
        for seed in range(seeds)
        for setting in settings
    ]


def grid_specs(
    *, dataset: str, seeds: int, epochs: int, max_steps: int | None = None
) -> list[TrainSpec]:
    """Every training run of the four training groups."""
    return [
        spec
        for group in TRAINING_GROUPS
        for spec in train_specs(
            group, dataset=dataset, seeds=seeds, epochs=epochs, max_steps=max_steps
        )
    ]


@dataclass(frozen=True)
class MultiSetting:
    """One multi-holder simulation, before seeds: K holders (holder 0 colludes with the server),
    a topology, how the training data is split, and the victims' noise b and NoPeek weight W.

    `alpha` is the Dirichlet concentration (None for iid).
    """

    holders: int
    topology: str
    partition: Literal["iid", "dirichlet"]
    alpha: float | None
    noise: float
    nopeek: float = 0.0

    @property
    def tag(self) -> str:
        """``<topology>_k<K>_<iid|dir<alpha>>_<b>noise_<W>nopeek``, e.g. with K = 8 and
        Dirichlet alpha 0.5: ``<topology>_k8_dir05_00noise_00nopeek``."""
        split = "iid" if self.alpha is None else f"dir{setting_tag(self.alpha)}"
        return (
            f"{self.topology}_k{self.holders}_{split}_"
            f"{setting_tag(self.noise)}noise_{setting_tag(self.nopeek)}nopeek"
        )


@dataclass(frozen=True)
class MultiSpec:
    """One `splitnn-sim` run: a setting on a data set with one seed, for `epochs` epochs."""

    dataset: str
    setting: MultiSetting
    seed: int
    epochs: int
    max_steps: int | None = None

    @property
    def name(self) -> str:
        """E.g. ``mnist5k_multi_<topology>_k4_iid_00noise_00nopeek`` (``_seed<k>`` for k > 0)."""
        return run_name(self.dataset, f"multi_{self.setting.tag}", self.seed)


def multi_settings() -> list[MultiSetting]:
    """K x topology x (iid, Dirichlet) with noise-free victims, then the victims' noise levels
    at K = 4 with iid data for each topology."""
    partitions: list[tuple[Literal["iid", "dirichlet"], float | None]] = [
        ("iid", None),
        ("dirichlet", DIRICHLET_ALPHA),
    ]
    plain = [
        MultiSetting(k, topology, partition, alpha, 0.0)
        for k in MULTI_HOLDERS
        for topology in NAMES
        for partition, alpha in partitions
    ]
    noisy = [
        MultiSetting(MULTI_NOISE_HOLDERS, topology, "iid", None, b)
        for topology in NAMES
        for b in MULTI_NOISE
    ]
    return plain + noisy


def multi_specs(
    *, dataset: str, seeds: int, epochs: int, max_steps: int | None = None
) -> list[MultiSpec]:
    """The simulations of the ``multi`` group for seeds 0..seeds-1 (seed-major)."""
    return [
        MultiSpec(dataset, setting, seed, epochs, max_steps)
        for seed in range(seeds)
        for setting in multi_settings()
    ]
