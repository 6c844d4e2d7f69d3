"""The ``threats`` group's results: threats.csv (one row per threat x defence, means and standard
errors over seeds), the figure of their reconstructions, and one summary line per row."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from splitnn.experiments.config import ExperimentConfig
from splitnn.experiments.grid import ThreatSetting, ThreatSpec, threat_settings
from splitnn.experiments.plots import grid_rows, stack_strips
from splitnn.experiments.tables import aggregate, mse_margin, optional_mean_se, upsert_rows
from splitnn.experiments.threat_records import ThreatRecord
from splitnn.experiments.threat_runs import THREATS

THREATS_CSV = "threats.csv"
THREATS_FIGURE = "threats.png"
# Averaged over seeds (with a `_se` column each), from every record of a row.
_AVERAGED = (
    "test_accuracy",
    "attack_mse",
    "attack_psnr",
    "attack_ssim",
    "attack_validator_accuracy",
    "seconds",
)
# Averaged over the seeds that report them (empty when none does).
_OPTIONAL = (
    "validator_accuracy_originals",
    "attack_baseline_mean_mse",
    "attack_baseline_class_mse",
)
THREATS_KEY = ("dataset", "threat", "defence", "parameter", "epochs")
THREATS_COLUMNS = (
    *("threat", "defence", "parameter", "seeds"),
    *(name for field in _AVERAGED[:-1] for name in (field, f"{field}_se")),
    *("test_images", "guard_detected_at_step", "guard_detected_at_step_se", "guard_detections"),
    *("attack_train_mse_at_alarm", "attack_train_mse_at_alarm_se", "guard_lowest_score"),
    *(name for field in _OPTIONAL for name in (field, f"{field}_se")),
    *("mse_margin_mean", "mse_margin_mean_se", "mse_margin_class", "mse_margin_class_se"),
    *("seconds", "seconds_se", "noise", "nopeek", "guard", "batch_size"),
    *("dataset", "epochs", "max_steps", "attack_epochs", "decoder", "figure"),
    *("dp_epsilon", "dp_epsilon_se", "dp_delta", "dp_noise_multiplier", "dp_max_grad_norm"),
)

Row = tuple[ThreatSetting, list[tuple[ThreatSpec, ThreatRecord]]]


def by_setting(done: Sequence[tuple[ThreatSpec, ThreatRecord]]) -> list[Row]:
    """The records grouped by row of the table (its seeds), in the group's order."""
    rows: dict[ThreatSetting, list[tuple[ThreatSpec, ThreatRecord]]] = {}
    for spec, record in done:
        rows.setdefault(spec.setting, []).append((spec, record))
    order = {setting: i for i, setting in enumerate(threat_settings())}
    return sorted(rows.items(), key=lambda item: order.get(item[0], len(order)))


def threat_row(
    setting: ThreatSetting,
    runs: Sequence[tuple[ThreatSpec, ThreatRecord]],
    *,
    test_images: int | None = None,
) -> dict[str, Any]:
    """One row of threats.csv from the records of its seeds.

    With DP-SGD, `dp_epsilon` is the epsilon spent (mean over the seeds) and `dp_delta`,
    `dp_noise_multiplier` and `dp_max_grad_norm` the lowest seed's settings; empty without.

    `guard_detected_at_step` is the mean step over the seeds whose guard flagged the server
    (empty if none did); `guard_detections` counts those seeds (empty without a guard);
    `attack_train_mse_at_alarm` is the hijacking server's MSE on the training tensors at the
    alarm (mean over the seeds that have it); `guard_lowest_score` the lowest score of any seed.
    `mse_margin_mean` and `mse_margin_class` are each seed's baseline MSE minus its attack MSE
    (positive: better than the baseline), averaged over the seeds that report the baseline.
    """
    spec, first = runs[0]
    reports = [record.report for _, record in runs]
    out: dict[str, Any] = {
        "threat": setting.threat,
        "defence": setting.defence.name,
        "parameter": setting.defence.parameter,
        "seeds": len(runs),
        **aggregate([r.to_json() for r in reports], _AVERAGED),
        "test_images": test_images,
    }
    steps = [r.guard_detected_at_step for r in reports]
    detected = [float(s) for s in steps if s is not None]
    mean, se = optional_mean_se(detected)
    out["guard_detected_at_step"], out["guard_detected_at_step_se"] = mean, se
    out["guard_detections"] = len(detected) if setting.defence.guard is not None else None
    at_alarm = [r.attack_at_alarm["train_mse"] for r in reports if r.attack_at_alarm]
    mean, se = optional_mean_se(at_alarm)
    out["attack_train_mse_at_alarm"], out["attack_train_mse_at_alarm_se"] = mean, se
    lowest = [r.guard_lowest_score for r in reports if r.guard_lowest_score is not None]
    out["guard_lowest_score"] = min(lowest) if lowest else None
    for field in _OPTIONAL:
        out[field], out[f"{field}_se"] = optional_mean_se([getattr(r, field) for r in reports])
    for name, baseline in (
        ("mean", "attack_baseline_mean_mse"),
        ("class", "attack_baseline_class_mse"),
    ):
        margins = [mse_margin(getattr(r, baseline), r.attack_mse) for r in reports]
        out[f"mse_margin_{name}"], out[f"mse_margin_{name}_se"] = optional_mean_se(margins)
    dp_spent, dp_spent_se = optional_mean_se([r.dp_epsilon for r in reports])
    settings = first.settings
    return {
        **out,
        "noise": setting.defence.noise,
        "nopeek": setting.defence.nopeek,
        "guard": setting.defence.guard,
        "batch_size": settings.get("batch_size"),
        "dataset": spec.dataset,
        "epochs": spec.epochs,
        "max_steps": spec.max_steps,
        "attack_epochs": settings.get("attack_epochs"),
        "decoder": settings.get("decoder"),
        "figure": first.report.figure,
        "dp_epsilon": dp_spent,
        "dp_epsilon_se": dp_spent_se,
        "dp_delta": first.report.dp_delta,
        "dp_noise_multiplier": first.report.dp_noise_multiplier,
        "dp_max_grad_norm": first.report.dp_max_grad_norm,
    }


def row_label(setting: ThreatSetting) -> str:
    """E.g. ``fsha, Laplace b=0.5``."""
    return f"{setting.threat}, {setting.defence.label}"


def write_threats_figure(rows: Sequence[Row], path: Path) -> Path | None:
    """The originals once (from the first run's figure), then one strip of reconstructions per
    row of the table (its lowest seed's figure), labelled; None without a readable figure."""
    originals = None
    strips = []
    for setting, runs in rows:
        figure = Path(runs[0][1].report.figure)
        if not figure.is_file():
            continue
        cells = grid_rows(plt.imread(str(figure)))
        if len(cells) < 2:
            continue
        if originals is None:
            originals = cells[0]
        label = row_label(setting)
        step = runs[0][1].report.guard_detected_at_step
        if step is not None:
            label += f"\n(flagged at step {step})"
        strips.append((label, cells[-1]))
    if originals is None:
        return None
    title = "Reconstructions by threat model and defence"
    return stack_strips(path, [("originals", originals), *strips], title=title)


def summary_line(setting: ThreatSetting, row: dict[str, Any]) -> str:
    """One line per row of the table (means over its seeds)."""
    guard = ""
    if row.get("dp_epsilon") is not None:
        guard = f", DP-SGD ε spent {row['dp_epsilon']:.2f}"
    if setting.defence.guard is not None:
        flagged = row["guard_detections"]
        guard = f", guard flagged {flagged} of {row['seeds']}"
        if row["guard_detected_at_step"] is not None:
            guard += f" (step {row['guard_detected_at_step']:.0f})"
    return (
        f"{row_label(setting)}: test accuracy {row['test_accuracy']:.1f}%, "
        f"attack SSIM {row['attack_ssim']:.3f}, PSNR {row['attack_psnr']:.1f} dB, "
        f"validator {row['attack_validator_accuracy']:.1f}%{guard} "
        f"({row['seeds']} seed{'s' if row['seeds'] > 1 else ''})"
    )


def write_threat_tables(cfg: ExperimentConfig, *, test_images: int | None = None) -> list[str]:
    """Writes threats.csv and its figure from every finished run of the group; a text summary.

    Args:
        test_images: the size of the test set the victims' accuracy is measured on, if known.
    """
    done = THREATS.records(cfg)
    if not done:
        return ["no finished threat runs with these settings"]
    rows = by_setting(done)
    table = [(s, threat_row(s, runs, test_images=test_images)) for s, runs in rows]
    csv_path = cfg.results_dir / THREATS_CSV
    upsert_rows(csv_path, [row for _, row in table], key=THREATS_KEY, columns=THREATS_COLUMNS)
    lines = [summary_line(setting, row) for setting, row in table]
    lines.append(f"{csv_path}: {len(table)} rows from {len(done)} runs")
    figure = write_threats_figure(rows, cfg.figures_dir / THREATS_FIGURE)
    if figure is not None:
        lines.append(str(figure))
    return lines
