"""The ``performance`` group's attack side: attack_performances.csv, the protocol comparison, and
the study's reconstruction figures."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splitnn.experiments.attacks import attack_records
from splitnn.experiments.config import ExperimentConfig
from splitnn.experiments.plots import line_plot, stack_images
from splitnn.experiments.records import AttackRecord
from splitnn.experiments.tables import upsert_rows

logger = logging.getLogger(__name__)

ATTACK_CSV = "attack_performances.csv"
PROTOCOL_CSV = "attack_protocols.csv"
_SCORES = ("mse", "psnr", "ssim", "dcor", "validator_accuracy")
ATTACK_COLUMNS = (
    *("classifier", "attacker", "set_noise", "aux", "aux_fraction", "decoder", "protocol"),
    *_SCORES,
    *("validator_accuracy_originals", "family", "model", "dataset", "classifier_seed"),
    *("noise", "nopeek", "deployed_noise", "oracle_noise", "aux_images", "images", "epochs"),
    "figure",
)
PROTOCOL_COLUMNS = (
    "model",
    "noise",
    "decoder",
    *(f"{score}_{protocol}" for score in _SCORES for protocol in ("noisy", "clean")),
)

Record = AttackRecord


def _stem(path: str) -> str:
    return Path(path).name.removesuffix(".ckpt")


def attack_row(record: Record) -> dict[str, Any]:
    """One row of attack_performances.csv from an attack's run record."""
    report, settings = record.report, record.settings
    return {
        "classifier": _stem(report.classifier),
        "attacker": _stem(report.attacker),
        "set_noise": settings["set_noise"],
        "aux": report.aux,
        "aux_fraction": report.aux_fraction,
        "decoder": report.decoder,
        "protocol": report.protocol,
        **{score: getattr(report, score) for score in (*_SCORES, "validator_accuracy_originals")},
        "family": record.family,
        "model": record.model,
        "dataset": report.dataset,
        "classifier_seed": record.classifier_seed,
        "noise": record.noise,
        "nopeek": record.nopeek,
        "deployed_noise": report.deployed_noise,
        "oracle_noise": report.set_noise,
        "aux_images": report.aux_images,
        "images": report.images,
        "epochs": settings["epochs"],
        "figure": report.figure,
    }


def protocol_rows(records: Sequence[Record]) -> list[dict[str, Any]]:
    """The honest and the noise-free attacker of the same (seed-0) model, side by side."""
    honest = {r.model: r for r in records if _is(r, "grid") and r.classifier_seed == 0}
    rows = []
    for clean in (r for r in records if _is(r, "clean")):
        noisy = honest.get(clean.model)
        if noisy is None:
            continue
        row: dict[str, Any] = {
            "model": clean.model,
            "noise": clean.noise,
            "decoder": clean.report.decoder,
        }
        for score in _SCORES:
            row[f"{score}_noisy"] = getattr(noisy.report, score)
            row[f"{score}_clean"] = getattr(clean.report, score)
        rows.append(row)
    return sorted(rows, key=lambda row: float(row["noise"]))


def _is(record: Record, family: str) -> bool:
    return record.family == family


def _panel(record: Record, label: str) -> tuple[str, Path]:
    report = record.report
    text = (
        f"{label}: SSIM {report.ssim:.3f}, PSNR {report.psnr:.1f} dB, "
        f"validator {report.validator_accuracy:.1f}%"
    )
    return text, Path(report.figure)


def _setting(record: Record) -> str:
    return f"b={record.noise:g}, W={record.nopeek:g}"


def _grid(record: Record) -> bool:
    return _is(record, "grid") and record.classifier_seed == 0


def _plain(record: Record) -> bool:
    return _grid(record) and record.noise == 0 and record.nopeek == 0


def _by_setting(record: Record) -> Any:
    return (record.noise, record.nopeek)


def _set_noise(record: Record) -> float:
    return float(record.settings["set_noise"] or 0.0)


def _aux_images(record: Record) -> str:
    return f"{record.report.aux_images} auxiliary images ({record.report.aux})"


@dataclass(frozen=True)
class FigureSpec:
    """One composed figure: which attackers, in which order, each panel labelled how.

    It is drawn only if at least one chosen attacker is of family `needs`.
    """

    title: str
    keep: Callable[[Record], bool]
    order: Callable[[Record], Any]
    label: Callable[[Record], str]
    needs: str = "grid"


FIGURES: dict[str, FigureSpec] = {
    "reconstructions_noise.png": FigureSpec(
        "Reconstructions across noise levels",
        lambda r: _grid(r) and r.nopeek == 0, _by_setting, _setting,
    ),
    "reconstructions_nopeek.png": FigureSpec(
        "Reconstructions across NoPeek weights",
        lambda r: _grid(r) and r.noise == 0, _by_setting, _setting,
    ),
    "reconstructions_combo.png": FigureSpec(
        "Reconstructions with noise and NoPeek",
        lambda r: _grid(r) and r.noise > 0 and r.nopeek > 0, _by_setting, _setting,
    ),
    "reconstructions_volume.png": FigureSpec(
        "Reconstructions across attacker data volume (plain model)",
        lambda r: _plain(r) or _is(r, "volume"),
        lambda r: r.settings["aux_fraction"], _aux_images, needs="volume",
    ),
    "reconstructions_posttrain.png": FigureSpec(
        "Reconstructions with noise added after training (plain model)",
        lambda r: _plain(r) or _is(r, "posttrain"), _set_noise,
        lambda r: f"b={_set_noise(r):g} after training", needs="posttrain",
    ),
    "reconstructions_emnist.png": FigureSpec(
        "Attacker trained on MNIST vs EMNIST letters (plain model)",
        lambda r: _plain(r) or _is(r, "emnist"), lambda r: _is(r, "emnist"), _aux_images,
        needs="emnist",
    ),
    "reconstructions_protocol.png": FigureSpec(
        "Honest attacker (noisy tensors) vs the reference's noise-free shortcut",
        lambda r: (_grid(r) and r.nopeek == 0 and r.noise > 0) or _is(r, "clean"),
        lambda r: (r.noise, r.report.protocol == "clean"),
        lambda r: f"{_setting(r)}, {r.report.protocol} protocol", needs="clean",
    ),
}  # fmt: skip


def write_figures(records: Sequence[Record], folder: Path) -> list[Path]:
    """The study's reconstruction figures, composed from the attackers' own PNGs."""
    written = []
    for name, spec in FIGURES.items():
        chosen = sorted((r for r in records if spec.keep(r)), key=spec.order)
        if not any(_is(r, spec.needs) for r in chosen):
            continue
        panels = [_panel(r, spec.label(r)) for r in chosen]
        path = stack_images(folder / name, panels, title=spec.title)
        if path is not None:
            written.append(path)
    return written


def _protocol_plots(rows: Sequence[dict[str, Any]], folder: Path) -> list[Path]:
    xs = [float(row["noise"]) for row in rows]
    out = []
    for score, label in (("ssim", "SSIM"), ("validator_accuracy", "validator accuracy (%)")):
        series = {
            f"{protocol} protocol": (
                xs,
                [row[f"{score}_{protocol}"] for row in rows],
                [None] * len(xs),
            )
            for protocol in ("noisy", "clean")
        }
        out.append(
            line_plot(
                folder / f"attack_protocols_{score}.png",
                series,
                xlabel="Laplace noise b (training and deployment)",
                ylabel=f"attack {label}",
                title="Honest attacker vs the reference's noise-free shortcut",
            )
        )
    return out


def write_attack_tables(cfg: ExperimentConfig) -> list[str]:
    """Writes attack_performances.csv, attack_protocols.csv and the figures; a text summary."""
    records = attack_records(cfg)
    if not records:
        return ["no finished attacks with these settings: run the 'attacks' group first"]
    attack_csv = cfg.results_dir / ATTACK_CSV
    upsert_rows(attack_csv, map(attack_row, records), key=("attacker",), columns=ATTACK_COLUMNS)
    lines = [f"{attack_csv}: {len(records)} attackers written"]
    rows = protocol_rows(records)
    if rows:
        protocol_csv = cfg.results_dir / PROTOCOL_CSV
        upsert_rows(protocol_csv, rows, key=("model", "decoder"), columns=PROTOCOL_COLUMNS)
        plots = _protocol_plots(rows, cfg.figures_dir)
        lines.append(f"{protocol_csv}: {len(rows)} models, honest vs noise-free attacker")
        lines += [f"{p}" for p in plots]
        lines += ["", _protocol_summary(rows)]
    lines += [f"{p}" for p in write_figures(records, cfg.figures_dir)]
    return lines


def _protocol_summary(rows: Sequence[dict[str, Any]]) -> str:
    out = [
        "Attack SSIM / validator accuracy: honest (noisy tensors) vs the reference's shortcut",
        f"{'b':>5} {'SSIM noisy':>10} {'SSIM clean':>10} {'val% noisy':>10} {'val% clean':>10}",
    ]
    for row in rows:
        out.append(
            f"{float(row['noise']):>5g} {row['ssim_noisy']:>10.3f} {row['ssim_clean']:>10.3f} "
            f"{row['validator_accuracy_noisy']:>10.1f} {row['validator_accuracy_clean']:>10.1f}"
        )
    return "\n".join(out)
