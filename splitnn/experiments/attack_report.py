"""The ``performance`` group's attack side: attack_runs.csv (one row per attacker and seed),
attack_performances.csv (one row per attack, means and standard errors over seeds), the protocol
comparison, and the study's reconstruction figures (the seed-0 attackers')."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splitnn.common.checkpoints import attacker_stem
from splitnn.common.reports import AttackReport
from splitnn.experiments.attacks import attack_records
from splitnn.experiments.config import ExperimentConfig
from splitnn.experiments.plots import line_plot, stack_images
from splitnn.experiments.records import AttackRecord
from splitnn.experiments.tables import aggregate, mean_se, optional_mean_se, upsert_rows

logger = logging.getLogger(__name__)

ATTACK_CSV = "attack_performances.csv"
ATTACK_RUNS_CSV = "attack_runs.csv"
PROTOCOL_CSV = "attack_protocols.csv"
_SCORES = ("mse", "psnr", "ssim", "dcor", "validator_accuracy")
# The trivial baselines of the same run (`splitnn.attacker.baselines`) and the attack's margin
# over them: positive means the attack did better than the baseline.
BASELINE_FIELDS = (
    "baseline_mean_mse",
    "baseline_class_mse",
    "baseline_mean_ssim",
    "baseline_class_ssim",
    "baseline_class_validator_accuracy",
    "mse_margin_mean",
    "mse_margin_class",
    "ssim_margin_class",
)
# Averaged over seeds, each with a `_se` column.
_AVERAGED = (*_SCORES, "validator_accuracy_originals")
_SETTING = ("set_noise", "aux", "aux_fraction", "decoder", "protocol")
ATTACK_RUN_COLUMNS = (
    *("classifier", "attacker", *_SETTING),
    *_SCORES,
    *("validator_accuracy_originals", "family", "model", "dataset", "classifier_seed"),
    *("noise", "nopeek", "deployed_noise", "oracle_noise", "aux_images", "images", "epochs"),
    "figure",
    *("attack", "seed", *BASELINE_FIELDS, "baseline_classes"),
    *("classifier_epochs", "max_steps", "lr", "dp_epsilon"),
)
ATTACK_COLUMNS = (
    *("classifier", "attacker", *_SETTING),
    *_SCORES,
    *("validator_accuracy_originals", "family", "model", "dataset", "classifier_seed"),
    *("noise", "nopeek", "deployed_noise", "oracle_noise", "aux_images", "images", "epochs"),
    "figure",
    *("attack", "seeds"),
    *(f"{field}_se" for field in _AVERAGED),
    *(name for field in BASELINE_FIELDS for name in (field, f"{field}_se")),
    *("baseline_classes", "classifier_epochs", "max_steps", "lr", "dp_epsilon"),
)
PROTOCOL_COLUMNS = (
    "model",
    "noise",
    "decoder",
    *(f"{score}_{protocol}" for score in _SCORES for protocol in ("noisy", "clean")),
    "seeds",
    *(f"{score}_{protocol}_se" for score in _SCORES for protocol in ("noisy", "clean")),
    # What `splitnn-experiments report` needs: the attacked images, the decoder's epochs, and
    # the settings that rebuild the command (added to files written before them).
    *("dataset", "images", "epochs", "classifier_epochs", "max_steps", "lr"),
)

Record = AttackRecord


def _stem(path: str) -> str:
    return Path(path).name.removesuffix(".ckpt")


def attack_name(record: Record) -> str:
    """The attack without its seed: the attacker's name with the seed-free model in place of the
    classifier, e.g. ``mnist_attacker_modelmnist5k_00noise_00nopeek_deep``; the rows of one name
    are the seeds of one attack."""
    settings = record.settings
    return attacker_stem(
        classifier=record.model,
        aux=record.report.aux,
        set_noise=settings["set_noise"],
        aux_fraction=float(settings.get("aux_fraction", record.report.aux_fraction)),
        decoder=record.report.decoder,
        protocol=record.report.protocol,
    )


def baseline_scores(report: AttackReport) -> dict[str, float | None]:
    """The baselines' MSE, SSIM and (class mean) validator accuracy measured in the attack's own
    run, and the attack's margins over them (baseline MSE - attack MSE, attack SSIM - baseline
    SSIM: positive = better than the baseline); None where the run did not measure one."""
    mean = report.baselines.get("mean_image", {})
    by_class = report.baselines.get("class_mean_image", {})

    def margin(baseline: float | None, attack: float, *, lower_is_better: bool) -> float | None:
        if baseline is None:
            return None
        return baseline - attack if lower_is_better else attack - baseline

    out: dict[str, float | None] = {
        "baseline_mean_mse": mean.get("mse"),
        "baseline_class_mse": by_class.get("mse"),
        "baseline_mean_ssim": mean.get("ssim"),
        "baseline_class_ssim": by_class.get("ssim"),
        "baseline_class_validator_accuracy": by_class.get("validator_accuracy"),
    }
    out["mse_margin_mean"] = margin(out["baseline_mean_mse"], report.mse, lower_is_better=True)
    out["mse_margin_class"] = margin(out["baseline_class_mse"], report.mse, lower_is_better=True)
    out["ssim_margin_class"] = margin(
        out["baseline_class_ssim"], report.ssim, lower_is_better=False
    )
    return out


def attack_row(record: Record) -> dict[str, Any]:
    """One row of attack_runs.csv (one attacker, one seed) from an attack's run record."""
    report, settings = record.report, record.settings
    return {
        "classifier": _stem(report.classifier),
        "attacker": _stem(report.attacker),
        "set_noise": settings["set_noise"],
        "aux": report.aux,
        "aux_fraction": report.aux_fraction,
        "decoder": report.decoder,
        "protocol": report.protocol,
        **{score: getattr(report, score) for score in _AVERAGED},
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
        "attack": attack_name(record),
        "seed": settings.get("seed"),
        **baseline_scores(report),
        "baseline_classes": report.baseline_classes,
        "classifier_epochs": settings.get("classifier_epochs"),
        "max_steps": settings.get("max_steps"),
        "lr": settings.get("lr"),
        "dp_epsilon": record.dp_epsilon,
    }


def attack_rows(records: Sequence[Record]) -> list[dict[str, Any]]:
    """One row of attack_performances.csv per attack (`attack_name`): the mean over its seeds of
    every score, baseline and margin, each with its standard error (`_se`, empty for one seed),
    and `seeds`; names, figure and settings are the lowest seed's."""
    by_attack: dict[str, list[dict[str, Any]]] = {}
    for record in sorted(records, key=lambda r: r.classifier_seed):
        by_attack.setdefault(attack_name(record), []).append(attack_row(record))
    out = []
    for runs in by_attack.values():
        first = runs[0]
        row = {k: v for k, v in first.items() if k != "seed"}
        row["seeds"] = len(runs)
        row.update(aggregate(runs, _AVERAGED))
        for field in BASELINE_FIELDS:
            row[field], row[f"{field}_se"] = optional_mean_se([run[field] for run in runs])
        out.append(row)
    return out


def protocol_rows(records: Sequence[Record]) -> list[dict[str, Any]]:
    """The honest and the noise-free attacker of the same model side by side, each the mean over
    the seeds both were run on (with standard errors)."""
    honest: dict[tuple[str, int], Record] = {
        (r.model, r.classifier_seed): r for r in records if _is(r, "grid")
    }
    pairs: dict[str, list[tuple[Record, Record]]] = {}
    for clean in sorted((r for r in records if _is(r, "clean")), key=lambda r: r.classifier_seed):
        noisy = honest.get((clean.model, clean.classifier_seed))
        if noisy is not None:
            pairs.setdefault(clean.model, []).append((noisy, clean))
    rows = []
    for model, seeds in pairs.items():
        clean = seeds[0][1]
        row: dict[str, Any] = {
            "model": model,
            "noise": clean.noise,
            "decoder": clean.report.decoder,
            "seeds": len(seeds),
            "dataset": clean.report.dataset,
            "images": clean.report.images,
            "epochs": clean.settings["epochs"],
        }
        for score in _SCORES:
            for protocol, index in (("noisy", 0), ("clean", 1)):
                name = f"{score}_{protocol}"
                values = [getattr(pair[index].report, score) for pair in seeds]
                row[name], row[f"{name}_se"] = mean_se(values)
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
    """The seed-0 honest attacker of a classifier trained without DP-SGD."""
    return _is(record, "grid") and record.classifier_seed == 0 and record.dp_epsilon is None


def _dp(record: Record) -> bool:
    """The seed-0 honest attacker of a classifier trained with DP-SGD."""
    return _is(record, "grid") and record.classifier_seed == 0 and record.dp_epsilon is not None


def _dp_label(record: Record) -> str:
    return "no DP-SGD" if record.dp_epsilon is None else f"DP-SGD ε={record.dp_epsilon:g}"


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

    It is drawn only if at least one chosen attacker is of family `needs` (or, when `needs` is
    a function, one it accepts).
    """

    title: str
    keep: Callable[[Record], bool]
    order: Callable[[Record], Any]
    label: Callable[[Record], str]
    needs: str | Callable[[Record], bool] = "grid"

    def drawn(self, chosen: Sequence[Record]) -> bool:
        needs = self.needs
        return any(needs(r) if callable(needs) else _is(r, needs) for r in chosen)


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
    "reconstructions_dp.png": FigureSpec(
        "Reconstructions with DP-SGD on part 1 (b=0, W=0)",
        lambda r: _plain(r) or _dp(r),
        lambda r: (r.dp_epsilon is None, r.dp_epsilon or 0.0), _dp_label, needs=_dp,
    ),
}  # fmt: skip


def write_figures(records: Sequence[Record], folder: Path) -> list[Path]:
    """The study's reconstruction figures, composed from the attackers' own PNGs."""
    written = []
    for name, spec in FIGURES.items():
        chosen = sorted((r for r in records if spec.keep(r)), key=spec.order)
        if not spec.drawn(chosen):
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
                [row.get(f"{score}_{protocol}_se") for row in rows],
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
    """Writes attack_runs.csv, attack_performances.csv, attack_protocols.csv and the figures;
    returns a text summary."""
    records = attack_records(cfg)
    if not records:
        return ["no finished attacks with these settings: run the 'attacks' group first"]
    runs_csv = cfg.results_dir / ATTACK_RUNS_CSV
    upsert_rows(
        runs_csv,
        (_with_run_settings(attack_row(r), cfg) for r in records),
        key=("attacker",),
        columns=ATTACK_RUN_COLUMNS,
    )
    rows = [_with_run_settings(row, cfg) for row in attack_rows(records)]
    attack_csv = cfg.results_dir / ATTACK_CSV
    upsert_rows(attack_csv, rows, key=("attack",), columns=ATTACK_COLUMNS)
    lines = [
        f"{runs_csv}: one row per attacker and seed",
        f"{attack_csv}: {len(rows)} attacks (means over seeds) "
        f"from {len(records)} attackers written",
    ]
    protocols = [_with_run_settings(row, cfg) for row in protocol_rows(records)]
    if protocols:
        protocol_csv = cfg.results_dir / PROTOCOL_CSV
        upsert_rows(protocol_csv, protocols, key=("model", "decoder"), columns=PROTOCOL_COLUMNS)
        plots = _protocol_plots(protocols, cfg.figures_dir)
        lines.append(f"{protocol_csv}: {len(protocols)} models, honest vs noise-free attacker")
        lines += [f"{p}" for p in plots]
        lines += ["", _protocol_summary(protocols)]
    lines += [f"{p}" for p in write_figures(records, cfg.figures_dir)]
    return lines


def _with_run_settings(row: dict[str, Any], cfg: ExperimentConfig) -> dict[str, Any]:
    """The classifiers' training settings that select them (`splitnn-experiments report` puts
    them back on the command line); a DP-SGD classifier's learning rate is --dp-lr."""
    lr = cfg.lr if row.get("dp_epsilon") is None else cfg.dp_lr
    return {**row, "classifier_epochs": cfg.epochs, "max_steps": cfg.max_steps, "lr": lr}


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
