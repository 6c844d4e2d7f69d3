"""The programs' reports: what `splitnn-client --json`, `splitnn-attack run --json` and
`splitnn-sim --holders K --json` print, and what the orchestrators (`splitnn-sim`,
`splitnn-experiments`) read back.

One typed home for both sides of each process boundary: the producer builds the dataclass, the
consumer parses the JSON with `from_json`, which checks the kind, the version and every field, so a
renamed or missing field fails where it is read, with its name, not later as a KeyError.
"""

from __future__ import annotations

import dataclasses
import types
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, TypeVar, Union, get_args, get_origin, get_type_hints

__all__ = [
    "REPORT_VERSION",
    "AttackReport",
    "EpochRecord",
    "GroupReport",
    "GuardScore",
    "MemberSummary",
    "MultiSummary",
    "ReportError",
    "RunReport",
    "VictimSummary",
    "checked",
]

# Bump when a field of a report is renamed, removed or changes its meaning.
REPORT_VERSION = 1


class ReportError(ValueError):
    """A report that is not the expected kind or version, or lacks or mistypes a field."""


R = TypeVar("R")


@dataclass(frozen=True)
class EpochRecord:
    """One epoch's numbers; accuracies in percent."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_accuracy: float
    seconds: float  # in training steps
    samples: int
    dp_epsilon: float | None = None  # DP-SGD: epsilon spent by the end of this epoch


@dataclass(frozen=True)
class GroupReport:
    """A data holder's place in a training group: which holder of which group, its share."""

    name: str
    topology: str  # a name in `splitnn.common.topology.TOPOLOGIES`
    holders: int  # K
    holder: int  # 0..K-1
    partition: str  # iid or dirichlet
    alpha: float | None  # dirichlet only
    train_samples: int  # this holder's share of the training set
    partition_digest: str  # the same for every holder of a group that shares out alike


@dataclass(frozen=True)
class GuardScore:
    """The guard's score after a fake batch: `step` is the 0-based training step of the run
    ((epoch - 1) * batches per epoch + batch); `score` in [0, 1], near 1 for an honest server."""

    step: int
    score: float


@dataclass(frozen=True)
class RunReport:
    """What a data holder's run measured; accuracies in percent."""

    KIND: ClassVar[str] = "run"

    run: str
    dataset: str
    dataset_description: str
    noise: float
    nopeek: float
    eval_noise: float
    epochs: int
    batch_size: int
    seed: int
    best_epoch: int
    train_accuracy: float | None  # None when a trained model was only evaluated
    val_accuracy: float
    test_accuracy: float
    samples_per_second: float
    train_seconds: float
    checkpoint: str
    head_checkpoint: str
    deploy_accuracy: float | None = None
    resumed_from: str | None = None  # the step a --resume run continued after
    step_ms_p50: float | None = None  # training steps of this process, median
    step_ms_p95: float | None = None
    history: list[EpochRecord] = field(default_factory=list)
    group: GroupReport | None = None  # set when the run trained in a group (its final epoch)
    guard: str | None = None  # the hijack detector that watched the training (None: none)
    guard_scores: list[GuardScore] = field(default_factory=list)  # every score, in step order
    guard_detected_at_step: int | None = None  # the step of the first score below the threshold
    test_samples: int | None = None  # the test images `test_accuracy` was measured on
    # DP-SGD on part 1 (None without): epsilon spent over the whole run (the RDP accountant),
    # its delta, the noise multiplier sigma, the clipping norm C and the Poisson sampling rate.
    dp_epsilon: float | None = None
    dp_delta: float | None = None
    dp_noise_multiplier: float | None = None
    dp_max_grad_norm: float | None = None
    dp_sample_rate: float | None = None

    def to_json(self) -> dict[str, Any]:
        return _to_json(self)

    @classmethod
    def from_json(cls, data: object) -> RunReport:
        """Raises ReportError: see the module docstring."""
        return _from_json(cls, data)


@dataclass(frozen=True)
class AttackReport:
    """Scores of an attack's reconstructions against the true images (pixels in [0,1])."""

    KIND: ClassVar[str] = "attack"

    classifier: str
    attacker: str
    dataset: str
    deployed_noise: float
    set_noise: float
    aux: str
    aux_fraction: float
    aux_images: int
    decoder: str
    protocol: str
    images: int
    mse: float
    psnr: float
    ssim: float
    dcor: float
    validator_accuracy: float
    validator_accuracy_originals: float
    figure: str
    source: str
    log_problem: str | None
    # What stood in for part 1: "lent" (the colluding holder's black box), "substitute" (trained
    # by the attacker alone), "hijacked" (a malicious server's decoder).
    oracle: str = "lent"
    # Trivial reconstructions scored the same way (splitnn.attacker.baselines): name -> metrics.
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    # Whose classes the class-mean baseline used: "head" (the server head's predictions on the
    # attacked tensors), "wire labels" (the labels sent with them), None (no class-mean baseline).
    baseline_classes: str | None = None

    def to_json(self) -> dict[str, Any]:
        return _to_json(self)

    @classmethod
    def from_json(cls, data: object) -> AttackReport:
        """Raises ReportError: see the module docstring."""
        return _from_json(cls, data)


@dataclass(frozen=True)
class MemberSummary:
    """One holder of a simulation: its training samples, its defences, its test accuracy (%)."""

    holder: int
    samples: int
    noise: float
    nopeek: float
    test_accuracy: float


@dataclass(frozen=True)
class VictimSummary:
    """The attack on one victim holder; accuracies in percent.

    Two scores of the one decoder (trained through the colluder's part 1): ``attack_*`` on the
    victim's deployment tensors (the attack-evaluation images, which every holder deploys alike),
    ``own_attack_*`` on the victim's own training share as the server received it during its
    last epoch (its part 1 then, not the colluder's; `own_attack_images` tensors, scored against
    the true training images). The own-data scores are None where the log held no training
    tensors with sample indices. No validator score on them: the validator was trained on the
    same training images. ``attack_baseline_mean_mse`` and ``attack_baseline_class_mse``: the
    trivial baselines on the deployment tensors, measured by the same attack run (the mean
    public image; the mean public image of the class the attack assigns each tensor, see
    `splitnn.attacker.app.assigned_classes`); None where the attack did not report them.
    """

    # The measurements (a mean and standard error each over several seeds).
    SCORES: ClassVar[tuple[str, ...]] = (
        "test_accuracy", "attack_mse", "attack_psnr", "attack_ssim", "attack_validator_accuracy",
        "validator_accuracy_originals", "own_attack_mse", "own_attack_psnr", "own_attack_ssim",
        "attack_baseline_mean_mse", "attack_baseline_class_mse",
    )  # fmt: skip

    holder: int
    noise: float
    nopeek: float
    test_accuracy: float
    attack_mse: float
    attack_psnr: float
    attack_ssim: float
    attack_validator_accuracy: float
    validator_accuracy_originals: float
    figure: str
    own_attack_mse: float | None = None
    own_attack_psnr: float | None = None
    own_attack_ssim: float | None = None
    own_attack_images: int | None = None
    attack_baseline_mean_mse: float | None = None
    attack_baseline_class_mse: float | None = None


@dataclass(frozen=True)
class MultiSummary:
    """What `splitnn-sim --holders K` prints (`--json`: these fields as one object)."""

    topology: str
    holders: int
    partition: str
    alpha: float | None
    colluder: int
    dataset: str
    epochs: int
    seed: int
    noise: float
    nopeek: float
    colluder_noise: float
    members: list[MemberSummary]
    victims: list[VictimSummary]
    seconds: float
    wire_log: str = ""
    test_samples: int | None = None  # the test images of every `test_accuracy` (None: not counted)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: object) -> MultiSummary:
        """What `--json` printed, checked field by field.

        Raises:
            ReportError: a missing, unknown or mistyped field, or holders that do not add up
                (one member per holder, one victim per holder but the colluder).
        """
        summary = checked(cls, data, what="simulation report")
        everyone = set(range(summary.holders))
        if sorted(m.holder for m in summary.members) != sorted(everyone):
            raise ReportError(
                f"simulation report: members are not holders 0..{summary.holders - 1}"
            )
        if sorted(v.holder for v in summary.victims) != sorted(everyone - {summary.colluder}):
            raise ReportError("simulation report: victims are not every holder but the colluder")
        return summary

    def member(self, holder: int) -> MemberSummary:
        """The member entry of `holder` (KeyError if there is none)."""
        for m in self.members:
            if m.holder == holder:
                return m
        raise KeyError(holder)


def checked(cls: type[R], data: object, *, what: str) -> R:
    """`data` (a JSON object) as the dataclass `cls`, every field checked as `from_json` does.

    Raises:
        ReportError: `data` is not an object, or lacks, adds or mistypes a field.
    """
    if not isinstance(data, dict):
        raise ReportError(f"a {what} is a JSON object, not {type(data).__name__}")
    return _build(cls, data, what)


def _to_json(report: Any) -> dict[str, Any]:
    return {"kind": report.KIND, "version": REPORT_VERSION, **asdict(report)}


def _from_json(cls: type[R], data: object) -> R:
    kind: str = getattr(cls, "KIND")  # noqa: B009 (a ClassVar of both report classes)
    if not isinstance(data, dict):
        raise ReportError(f"a {kind} report is a JSON object, not {type(data).__name__}")
    if data.get("kind") != kind or data.get("version") != REPORT_VERSION:
        raise ReportError(
            f"expected a {kind} report of version {REPORT_VERSION}, got kind "
            f"{data.get('kind')!r} version {data.get('version')!r}"
        )
    return _build(cls, {k: v for k, v in data.items() if k not in ("kind", "version")}, kind)


def _build(cls: type[R], data: dict[str, Any], where: str) -> R:
    hints = get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    names = {f.name for f in fields}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ReportError(f"{where} report: unknown fields {', '.join(unknown)}")
    required = {
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    missing = sorted(required - set(data))
    if missing:
        raise ReportError(f"{where} report: missing fields {', '.join(missing)}")
    values = {name: _value(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    return cls(**values)


def _value(hint: Any, value: Any, where: str) -> Any:
    """`value` checked against the annotation `hint` (ints are accepted for floats).

    A dataclass with its own `from_json` (a report nested in a record) is decoded by it.
    """
    if hint is Any:
        return value
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return _value(inner, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ReportError(f"{where}: expected a list, got {type(value).__name__}")
        (item,) = get_args(hint)
        return [_value(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ReportError(f"{where}: expected an object, got {value!r}")
        _, item = get_args(hint)
        return {k: _value(item, v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        if hasattr(hint, "from_json"):
            return hint.from_json(value)
        if not isinstance(value, dict):
            raise ReportError(f"{where}: expected an object, got {type(value).__name__}")
        return _build(hint, value, where)  # type: ignore[arg-type]
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ReportError(f"{where}: expected {hint.__name__}, got {value!r}")
