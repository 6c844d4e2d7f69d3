"""The study's groups of runs, registered by name (the reference's ``main.sh``, as data).

A training group is a list of classifier settings; the ``attacks`` group is built from whatever
classifiers of the grid exist (see `splitnn.experiments.attacks`). Names follow the study:
``plain`` (b = 0, W = 0), ``noise`` (Laplace b), ``nopeek`` (NoPeek W, batch 32), ``combo``
(both, batch 32); ``dp`` (DP-SGD on part 1 at a target epsilon, b = 0, W = 0) is trained only
when named. The ``multi`` group is a list of multi-holder simulations (`MultiSetting`), each
one `splitnn-sim` run; so is the ``threats`` group (`ThreatSetting`): every threat model of
`splitnn-sim --threat` against every defence of the data holder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from splitnn.client.dp import DP_DELTA, DPSettings
from splitnn.common.checkpoints import setting_tag
from splitnn.common.models import NOPEEK_BATCH_SIZE, PLAIN_BATCH_SIZE, study_batch_size
from splitnn.common.threats import THREATS as THREAT_MODELS
from splitnn.common.topology import NAMES

NOISE_LEVELS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
NOPEEK_WEIGHTS = (0.05, 0.1, 0.25, 0.5, 1.0)
COMBO_NOISE = (0.1, 0.2, 0.5, 1.0)
COMBO_NOPEEK = (0.1, 0.25, 0.5)
# Noise added after training to the plain and NoPeek models (docs/study.md, Table B).
POSTTRAIN_NOISE = (0.0, 0.1, 0.2, 0.5, 1.0, 1.5, 2.0)
# The attacker side: post-training noise of the attacked deployment, and the auxiliary data volume.
POSTTRAIN_ATTACK_NOISE = (0.1, 0.5, 1.0)
AUX_FRACTIONS = (0.02, 0.1, 0.25, 0.5, 0.75, 1.0)
# DP-SGD on part 1 (the ``dp`` group): the target epsilon of the whole run, at delta `DP_DELTA`.
DP_EPSILONS = (1.0, 3.0, 8.0)

# Multi-holder simulations (the ``multi`` group): holders K, topologies, Dirichlet label skew,
# and the victims' noise at K = 4 with iid data.
MULTI_HOLDERS = (2, 4, 8)
DIRICHLET_ALPHA = 0.5
MULTI_NOISE_HOLDERS = 4
MULTI_NOISE = (0.5, 1.0, 2.0, 5.0)

# Threat models x defences (the ``threats`` group): `splitnn-sim --threat`, the data holder's
# Laplace b, NoPeek W (at the NoPeek batch size), SplitGuard (`splitnn-sim --guard`) and DP-SGD
# (`splitnn-sim --dp-epsilon`).
THREATS = tuple(THREAT_MODELS)  # the rows of the threats table, in order
THREAT_NOISE = (0.5, 1.0, 2.0)
THREAT_NOPEEK = 0.5
THREAT_GUARDS = ("splitguard",)
THREAT_DP_EPSILON = 3.0

# The study's training groups: `all` trains them.
TRAINING_GROUPS = ("plain", "noise", "nopeek", "combo")
# Training groups trained only when named (not in `all`); `attacks` and `performance` take
# whichever of their classifiers are trained.
EXTRA_TRAINING_GROUPS = ("dp",)
GroupKind = Literal["train", "attack", "report", "multi", "threats"]


def dp_settings(epsilon: float | None) -> DPSettings | None:
    """DP-SGD at target `epsilon` with the grid's delta and clipping norm (None: no DP-SGD)."""
    return None if epsilon is None else DPSettings(epsilon=epsilon, delta=DP_DELTA)


@dataclass(frozen=True)
class Setting:
    """One classifier of the grid, before seeds: noise b, NoPeek weight W, batch size, and the
    target epsilon of DP-SGD on part 1 (None: no DP-SGD)."""

    noise: float
    nopeek: float
    batch_size: int
    dp_epsilon: float | None = None

    @property
    def dp(self) -> DPSettings | None:
        """DP-SGD's settings (`splitnn-client --dp-epsilon --dp-delta`), None without it."""
        return dp_settings(self.dp_epsilon)

    @property
    def tag(self) -> str:
        """E.g. ``05noise_00nopeek``, or ``00noise_00nopeek_dp3eps`` with DP-SGD: the study's
        name without data set and epoch, as `splitnn-client` names the run and its checkpoint
        (`checkpoints.classifier_stem`)."""
        tag = f"{setting_tag(self.noise)}noise_{setting_tag(self.nopeek)}nopeek"
        dp = self.dp
        return tag if dp is None else f"{tag}_{dp.tag}"


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


def _dp() -> list[Setting]:
    return [Setting(0.0, 0.0, PLAIN_BATCH_SIZE, dp_epsilon=e) for e in DP_EPSILONS]


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
    "dp": _train_group(
        _dp,
        f"DP-SGD epsilon in {' '.join(f'{e:g}' for e in DP_EPSILONS)} (delta {DP_DELTA:g}, "
        f"--dp-lr), b=0, W=0, batch {PLAIN_BATCH_SIZE} (not in all; attacks, performance use it)",
    ),
    "attacks": Group(kind="attack", help="an attacker for every classifier, and the variants"),
    "performance": Group(kind="report", help="measure everything, write the CSVs and figures"),
    "multi": Group(
        kind="multi",
        help="splitnn-sim: K in 2 4 8 x topologies x iid/dirichlet; victims' b at K=4 (not in all)",
    ),
    "threats": Group(
        kind="threats",
        help=f"splitnn-sim: {' '.join(THREATS)} x none, b {' '.join(map(str, THREAT_NOISE))}, "
        f"W {THREAT_NOPEEK:g}, {' '.join(THREAT_GUARDS)}, DP-SGD epsilon {THREAT_DP_EPSILON:g} "
        "(not in all)",
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
    *, dataset: str, seeds: int, epochs: int, max_steps: int | None = None, extra: bool = False
) -> list[TrainSpec]:
    """Every training run of the four training groups; with `extra`, then those of
    `EXTRA_TRAINING_GROUPS` (``dp``)."""
    groups = (*TRAINING_GROUPS, *EXTRA_TRAINING_GROUPS) if extra else TRAINING_GROUPS
    return [
        spec
        for group in groups
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


@dataclass(frozen=True)
class Defence:
    """What the data holder defends with: Laplace b, NoPeek W (at the study's batch size for W),
    a hijack detector `guard` (a `splitnn-sim --guard` name), or DP-SGD on part 1 at target
    epsilon `dp_epsilon` (`splitnn-sim --dp-epsilon`); all zero / None: no defence."""

    noise: float = 0.0
    nopeek: float = 0.0
    guard: str | None = None
    dp_epsilon: float | None = None

    @property
    def dp(self) -> DPSettings | None:
        """DP-SGD's settings, None without it."""
        return dp_settings(self.dp_epsilon)

    @property
    def name(self) -> str:
        """``none``, ``laplace``, ``nopeek``, ``dp``, or the guard's name."""
        if self.guard is not None:
            return self.guard
        if self.dp_epsilon is not None:
            return "dp"
        if self.nopeek > 0:
            return "nopeek"
        return "laplace" if self.noise > 0 else "none"

    @property
    def parameter(self) -> float | None:
        """b for ``laplace``, W for ``nopeek``, the target epsilon for ``dp``, None otherwise."""
        return {"laplace": self.noise, "nopeek": self.nopeek, "dp": self.dp_epsilon}.get(self.name)

    @property
    def batch_size(self) -> int:
        return study_batch_size(self.nopeek)

    @property
    def tag(self) -> str:
        """E.g. ``none``, ``laplace05``, ``nopeek05``, ``splitguard``, ``dp3eps`` (DP-SGD's own
        tag, as the client names the run)."""
        dp = self.dp
        if dp is not None and self.guard is None:
            return dp.tag
        parameter = self.parameter
        return self.name if parameter is None else f"{self.name}{setting_tag(parameter)}"

    @property
    def label(self) -> str:
        """For people: ``no defence``, ``Laplace b=0.5``, ``NoPeek W=0.5``, ``SplitGuard``,
        ``DP-SGD ε=3``."""
        names = {"none": "no defence", "laplace": f"Laplace b={self.noise:g}"}
        names |= {"nopeek": f"NoPeek W={self.nopeek:g}", "splitguard": "SplitGuard"}
        names |= {"dp": f"DP-SGD ε={self.dp_epsilon:g}"} if self.dp_epsilon is not None else {}
        return names.get(self.name, self.name)


@dataclass(frozen=True)
class ThreatSetting:
    """One row of the threats table, before seeds: a threat model and a defence."""

    threat: str
    defence: Defence

    @property
    def tag(self) -> str:
        """``<threat>_<defence tag>``, e.g. ``fsha_laplace05``."""
        return f"{self.threat}_{self.defence.tag}"


@dataclass(frozen=True)
class ThreatSpec:
    """One `splitnn-sim --threat` run: a setting on a data set with one seed."""

    dataset: str
    setting: ThreatSetting
    seed: int
    epochs: int
    max_steps: int | None = None

    @property
    def name(self) -> str:
        """E.g. ``mnist5k_threats_fsha_laplace05`` (``_seed<k>`` for k > 0)."""
        return run_name(self.dataset, f"threats_{self.setting.tag}", self.seed)


def threat_defences() -> list[Defence]:
    """None; Laplace b in `THREAT_NOISE`; NoPeek `THREAT_NOPEEK`; each guard (without noise);
    DP-SGD at `THREAT_DP_EPSILON`."""
    return [
        Defence(),
        *(Defence(noise=b) for b in THREAT_NOISE),
        Defence(nopeek=THREAT_NOPEEK),
        *(Defence(guard=g) for g in THREAT_GUARDS),
        Defence(dp_epsilon=THREAT_DP_EPSILON),
    ]


def threat_settings() -> list[ThreatSetting]:
    """Every threat x every defence, threat-major."""
    return [ThreatSetting(t, d) for t in THREATS for d in threat_defences()]


def threat_specs(
    *, dataset: str, seeds: int, epochs: int, max_steps: int | None = None
) -> list[ThreatSpec]:
    """The runs of the ``threats`` group for seeds 0..seeds-1 (seed-major)."""
    return [
        ThreatSpec(dataset, setting, seed, epochs, max_steps)
        for seed in range(seeds)
        for setting in threat_settings()
    ]
