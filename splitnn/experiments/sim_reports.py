"""The JSON object `splitnn-sim --holders K ... --json` prints, as typed, checked dataclasses.

One object per simulation: the settings it ran with, every holder's test accuracy, and for every
holder but the colluding one the attack on its cut tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from splitnn.common.reports import ReportError


@dataclass(frozen=True)
class SimMember:
    """One holder of a simulation: its training samples, its defences, its test accuracy (%)."""

    holder: int
    samples: int
    noise: float
    nopeek: float
    test_accuracy: float

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SimMember:
        return cls(
            holder=int(data["holder"]),
            samples=int(data["samples"]),
            noise=float(data["noise"]),
            nopeek=float(data["nopeek"]),
            test_accuracy=float(data["test_accuracy"]),
        )


@dataclass(frozen=True)
class SimVictim:
    """A non-colluding holder and the attack on it: MSE, PSNR (dB), SSIM, and the validator's
    accuracy (%) on the reconstructions and on the originals; `figure` is the attack's PNG."""

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

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SimVictim:
        return cls(
            holder=int(data["holder"]),
            noise=float(data["noise"]),
            nopeek=float(data["nopeek"]),
            test_accuracy=float(data["test_accuracy"]),
            attack_mse=float(data["attack_mse"]),
            attack_psnr=float(data["attack_psnr"]),
            attack_ssim=float(data["attack_ssim"]),
            attack_validator_accuracy=float(data["attack_validator_accuracy"]),
            validator_accuracy_originals=float(data["validator_accuracy_originals"]),
            figure=str(data["figure"]),
        )


@dataclass(frozen=True)
class SimReport:
    """What one multi-holder `splitnn-sim` run printed. `alpha` is None for iid data;
    `noise`/`nopeek` are the victims' defences, `colluder_noise` the colluding holder's."""

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
    seconds: float
    members: tuple[SimMember, ...]
    victims: tuple[SimVictim, ...]

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {
            "members": [asdict(m) for m in self.members],
            "victims": [asdict(v) for v in self.victims],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SimReport:
        """Raises ReportError for a missing or mistyped field, or holders that do not add up
        (one member per holder, one victim per holder but the colluder)."""
        try:
            report = cls(
                topology=str(data["topology"]),
                holders=int(data["holders"]),
                partition=str(data["partition"]),
                alpha=None if data["alpha"] is None else float(data["alpha"]),
                colluder=int(data["colluder"]),
                dataset=str(data["dataset"]),
                epochs=int(data["epochs"]),
                seed=int(data["seed"]),
                noise=float(data["noise"]),
                nopeek=float(data["nopeek"]),
                colluder_noise=float(data["colluder_noise"]),
                seconds=float(data["seconds"]),
                members=tuple(SimMember.from_json(m) for m in data["members"]),
                victims=tuple(SimVictim.from_json(v) for v in data["victims"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ReportError(f"simulation report: {error!r}") from None
        everyone = set(range(report.holders))
        if sorted(m.holder for m in report.members) != sorted(everyone):
            raise ReportError(f"simulation report: members are not holders 0..{report.holders - 1}")
        if sorted(v.holder for v in report.victims) != sorted(everyone - {report.colluder}):
            raise ReportError("simulation report: victims are not every holder but the colluder")
        return report

    def member(self, holder: int) -> SimMember:
        """The member entry of `holder` (KeyError if there is none)."""
        for m in self.members:
            if m.holder == holder:
                return m
        raise KeyError(holder)
