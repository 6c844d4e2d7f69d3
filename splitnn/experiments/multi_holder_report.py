"""The ``multi`` group's results: multi_holder_runs.csv (one row per victim of a simulation, one
seed), multi_holder_attacks.csv (one row per victim of a setting: means and standard errors over
seeds), its figure, and one summary line per simulation."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from splitnn.common.reports import MultiSummary
from splitnn.common.topology import NAMES as TOPOLOGIES
from splitnn.experiments.config import ExperimentConfig
from splitnn.experiments.grid import (
    DIRICHLET_ALPHA,
    MULTI_HOLDERS,
    MULTI_NOISE_HOLDERS,
    MultiSpec,
)
from splitnn.experiments.multi_holder_runs import MULTI
from splitnn.experiments.plots import Panel, Series, panels_plot
from splitnn.experiments.records import MultiRecord
from splitnn.experiments.tables import aggregate, mean_se, mse_margin, optional_mean_se, upsert_rows

MULTI_CSV = "multi_holder_attacks.csv"
MULTI_RUNS_CSV = "multi_holder_runs.csv"
MULTI_FIGURE = "multi_holder_attacks.png"
_ATTACK = (
    "attack_mse",
    "attack_psnr",
    "attack_ssim",
    "attack_validator_accuracy",
    "validator_accuracy_originals",
)
_ACCURACIES = ("victim_test_accuracy", "colluder_test_accuracy", "mean_test_accuracy")
# Averaged over seeds, each with a `_se` column.
_AVERAGED = (*_ACCURACIES, *_ATTACK)
# The same decoder on the victim's own training share as the server received it (empty where a
# simulation could not score it); averaged over the seeds that have it, with `_se`.
_OWN = ("own_attack_mse", "own_attack_psnr", "own_attack_ssim")
# The trivial baselines on the deployment tensors and the attack's margins over them (baseline
# MSE - attack MSE of each seed: positive = better than the baseline); averaged over the seeds
# whose simulation reported them, with `_se`.
_BASELINES = ("attack_baseline_mean_mse", "attack_baseline_class_mse")
_MARGINS = ("mse_margin_mean", "mse_margin_class")
_OPTIONAL = (*_OWN, *_BASELINES, *_MARGINS)
MULTI_RUN_KEY = (
    *("dataset", "topology", "holders", "partition", "alpha", "seed", "epochs"),
    *("victim_noise", "victim_nopeek", "colluder", "victim"),
)
MULTI_RUN_COLUMNS = (
    *MULTI_RUN_KEY[1:],
    *_AVERAGED,
    *_OPTIONAL,
    "own_attack_images",
    *("dataset", "colluder_noise", "victim_samples", "max_steps", "attack_epochs", "decoder"),
    *("figure", "test_images"),
)
MULTI_KEY = tuple(name for name in MULTI_RUN_KEY if name != "seed")
MULTI_COLUMNS = (
    *MULTI_KEY[1:],
    "seeds",
    *(name for field in (*_AVERAGED, *_OPTIONAL) for name in (field, f"{field}_se")),
    "own_attack_images",
    *("test_images", "dataset", "colluder_noise", "victim_samples", "max_steps"),
    *("attack_epochs", "decoder", "figure"),
)


def multi_rows(record: MultiRecord) -> list[dict[str, Any]]:
    """The rows of multi_holder_attacks.csv of one simulation: one per victim."""
    report, settings = record.report, record.settings
    mean_accuracy = statistics.fmean(m.test_accuracy for m in report.members)
    return [
        {
            "topology": report.topology,
            "holders": report.holders,
            "partition": report.partition,
            "alpha": report.alpha,
            "seed": report.seed,
            "epochs": report.epochs,
            "victim_noise": report.noise,
            "victim_nopeek": report.nopeek,
            "colluder": report.colluder,
            "victim": victim.holder,
            "victim_test_accuracy": victim.test_accuracy,
            "colluder_test_accuracy": report.member(report.colluder).test_accuracy,
            "mean_test_accuracy": mean_accuracy,
            **{name: getattr(victim, name) for name in (*_ATTACK, *_OWN, *_BASELINES)},
            **{
                margin: mse_margin(getattr(victim, baseline), victim.attack_mse)
                for margin, baseline in zip(_MARGINS, _BASELINES, strict=True)
            },
            "own_attack_images": victim.own_attack_images,
            "dataset": report.dataset,
            "colluder_noise": report.colluder_noise,
            "victim_samples": report.member(victim.holder).samples,
            "max_steps": settings.get("max_steps"),
            "attack_epochs": settings.get("attack_epochs"),
            "decoder": settings.get("decoder"),
            "figure": victim.figure,
        }
        for victim in report.victims
    ]


def multi_table_rows(
    runs: Sequence[dict[str, Any]], *, test_images: int | None = None
) -> list[dict[str, Any]]:
    """The rows of multi_holder_attacks.csv from those of `multi_rows` (any seeds): one per
    victim of a setting, every accuracy and score the mean over its seeds with a standard error
    (`_se`, empty for one seed), and `seeds`; the figure and sizes are the lowest seed's.

    `test_images` is the size of the test set the accuracies are measured on, if known.
    """
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for run in sorted(runs, key=lambda r: r["seed"]):
        groups.setdefault(tuple(run[k] for k in MULTI_KEY), []).append(run)
    out = []
    for seeds in groups.values():
        first = seeds[0]
        out.append(
            {
                **{k: first[k] for k in MULTI_KEY},
                "seeds": len(seeds),
                **aggregate(seeds, _AVERAGED),
                **_aggregate_present(seeds),
                "test_images": test_images,
                **{k: first[k] for k in ("colluder_noise", "victim_samples", "max_steps")},
                **{k: first[k] for k in ("attack_epochs", "decoder", "figure")},
            }
        )
    return out


def _aggregate_present(seeds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Each optional score's mean and standard error over the seeds that have it (None where
    none has), and the lowest own-scored seed's image count."""
    out: dict[str, Any] = {}
    for field in _OPTIONAL:
        out[field], out[f"{field}_se"] = optional_mean_se(run.get(field) for run in seeds)
    scored = [run for run in seeds if run.get("own_attack_mse") not in (None, "")]
    out["own_attack_images"] = scored[0].get("own_attack_images") if scored else None
    return out


def _victims_mean(report: MultiSummary, score: str) -> float:
    return statistics.fmean(getattr(v, score) for v in report.victims)


def topology_series(
    reports: Sequence[MultiSummary], x: Callable[[MultiSummary], float], score: str
) -> dict[str, Series]:
    """Per topology (in `TOPOLOGIES` order): x values, the mean over seeds of the victims' mean
    `score`, and its standard error; topologies without a report are left out."""
    by_point: dict[tuple[str, float], list[float]] = defaultdict(list)
    for report in reports:
        by_point[(report.topology, x(report))].append(_victims_mean(report, score))
    out: dict[str, Series] = {}
    for topology in TOPOLOGIES:
        xs = sorted(px for pt, px in by_point if pt == topology)
        if not xs:
            continue
        stats = [mean_se(by_point[(topology, px)]) for px in xs]
        out[topology] = (xs, [m for m, _ in stats], [se for _, se in stats])
    return out


def multi_panels(reports: Sequence[MultiSummary]) -> list[Panel]:
    """The figure's panels, from noise-free colluders without NoPeek. Left: attack SSIM on the
    victims against K per topology, iid shares, noise-free victims. Middle: the same with
    Dirichlet (alpha `DIRICHLET_ALPHA`) shares. Right: the validator's accuracy on
    reconstructions against the victims' noise b at K = 4 (iid), with a dashed 50 % line."""
    plain = [r for r in reports if r.nopeek == 0 and r.colluder_noise == 0]
    iid = [r for r in plain if r.partition == "iid"]
    skewed = [r for r in plain if r.partition == "dirichlet" and r.alpha == DIRICHLET_ALPHA]
    at_k = [r for r in iid if r.holders == MULTI_NOISE_HOLDERS]

    def against_k(shares: Sequence[MultiSummary], title: str) -> Panel:
        return Panel(
            topology_series(
                [r for r in shares if r.noise == 0], lambda r: float(r.holders), "attack_ssim"
            ),
            xlabel="data holders K (holder 0 colludes with the server)",
            ylabel="attack SSIM (mean over victims)",
            title=title,
            xticks=MULTI_HOLDERS,
            ylim=(0.0, 1.0),  # both panels on one scale: SSIM is at most 1
        )

    return [
        against_k(iid, "Attack on non-colluding victims, iid, b = 0"),
        against_k(skewed, f"Dirichlet (alpha {DIRICHLET_ALPHA:g}) shares, b = 0"),
        Panel(
            topology_series(at_k, lambda r: r.noise, "attack_validator_accuracy"),
            xlabel="victims' Laplace noise b",
            ylabel="validator accuracy on reconstructions (%)",
            title=f"K = {MULTI_NOISE_HOLDERS}, iid",
            reference=(50.0, "50 %"),
        ),
    ]


def write_multi_figure(reports: Sequence[MultiSummary], path: Path) -> Path:
    """Writes `multi_panels(reports)` side by side; missing settings are not plotted."""
    return panels_plot(
        path, multi_panels(reports), title="Model inversion with several data holders"
    )


def summary_line(spec: MultiSpec, record: MultiRecord) -> str:
    """One line per simulation: accuracies, and the attack on the victims (their mean)."""
    report = record.report
    members = [m.test_accuracy for m in report.members]
    return (
        f"{spec.name}: test accuracy mean {statistics.fmean(members):.1f}% "
        f"(colluder {report.member(report.colluder).test_accuracy:.1f}%), "
        f"{len(report.victims)} victims: attack SSIM {_victims_mean(report, 'attack_ssim'):.3f}, "
        f"validator {_victims_mean(report, 'attack_validator_accuracy'):.1f}% "
        f"({report.seconds:.0f} s)"
    )


def write_multi_tables(cfg: ExperimentConfig, *, test_images: int | None = None) -> list[str]:
    """Writes multi_holder_runs.csv, multi_holder_attacks.csv and its figure from every finished
    simulation of the group; a text summary (one line per simulation).

    Args:
        test_images: the size of the test set the accuracies are measured on, if known.
    """
    done = MULTI.records(cfg)
    if not done:
        return ["no finished multi-holder simulations with these settings"]
    runs = [{**row, "test_images": test_images} for _, record in done for row in multi_rows(record)]
    runs_path = cfg.results_dir / MULTI_RUNS_CSV
    upsert_rows(runs_path, runs, key=MULTI_RUN_KEY, columns=MULTI_RUN_COLUMNS)
    rows = multi_table_rows(runs, test_images=test_images)
    csv_path = cfg.results_dir / MULTI_CSV
    upsert_rows(csv_path, rows, key=MULTI_KEY, columns=MULTI_COLUMNS)
    figure = write_multi_figure(
        [record.report for _, record in done], cfg.figures_dir / MULTI_FIGURE
    )
    lines = [summary_line(spec, record) for spec, record in done]
    return [
        *lines,
        f"{runs_path}: {len(runs)} victims of {len(done)} simulations",
        f"{csv_path}: {len(rows)} victims of settings, means over seeds",
        f"{figure}",
    ]
