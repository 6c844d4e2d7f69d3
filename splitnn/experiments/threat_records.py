"""The ``threats`` group's records: what `splitnn-sim --threat ... --json` printed for one row of
the threats table, kept as ``RUNS_DIR/<dataset>/threats/<run>.json`` with the settings it was run
with. A run is done when its record parses, its settings equal the ones asked for and the
figure it names is still there.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from splitnn.common.reports import ReportError, checked
from splitnn.experiments.records import SimulationRecord

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ThreatSummary:
    """The part of `splitnn-sim --json` that the threats table reads; accuracies in percent.

    `guard_detected_at_step` is the training step at which the data holder's guard flagged the
    server (None: not flagged, or no guard); `attack_at_alarm` how well the hijacking server
    inverted by then. The baselines are the MSE of reconstructing every
    image as the mean image and as its class's mean image, where the simulation reports them.
    """

    dataset: str
    threat: str
    noise: float
    nopeek: float
    epochs: int
    test_accuracy: float
    attack_mse: float
    attack_psnr: float
    attack_ssim: float
    attack_validator_accuracy: float
    guard_detected_at_step: int | None
    figure: str
    seconds: float
    best_epoch: int | None = None
    val_accuracy: float | None = None
    attack_dcor: float | None = None
    validator_accuracy_originals: float | None = None
    attack_images: int | None = None
    decoder: str | None = None
    attacker: str | None = None
    classifier: str | None = None
    wire_log: str | None = None
    attack_baseline_mean_mse: float | None = None
    attack_baseline_class_mse: float | None = None
    # With a guard: its scores ({"step", "score"}), its lowest, and under a hijacking server the
    # attack curve's row at its alarm (the decoder the server had then; train_mse, train_ssim:
    # on the training tensors just before).
    guard_scores: list[dict[str, float]] | None = None
    guard_lowest_score: float | None = None
    attack_at_alarm: dict[str, float] | None = None
    # With DP-SGD on the victim's part 1: the epsilon spent (the accountant's) at delta, sigma
    # and C; None without it.
    dp_epsilon: float | None = None
    dp_delta: float | None = None
    dp_noise_multiplier: float | None = None
    dp_max_grad_norm: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: object) -> ThreatSummary:
        """What `splitnn-sim --json` printed, checked field by field; fields this table does
        not read are left out.

        Raises:
            ReportError: not an object, or a missing or mistyped field.
        """
        if not isinstance(data, dict):
            raise ReportError(f"a simulation report is a JSON object, not {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        return checked(cls, {k: v for k, v in data.items() if k in known}, what="simulation")


@dataclass(frozen=True)
class ThreatRecord(SimulationRecord):
    """A finished row of the threats table: what `splitnn-sim --threat T` reported."""

    KIND: ClassVar[str] = "threat"

    report: ThreatSummary
