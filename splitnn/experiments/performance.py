"""The ``performance`` group's classifier side: model_performances.csv and posttrain_noise.csv.

Every trained classifier of the grid is measured in this process (`splitnn.experiments.measure`),
once per training run (cached beside its run record); the tables aggregate over seeds. The
``dp`` group's classifiers are measured when they are trained: their rows carry the epsilon that
DP-SGD spent (``dp_epsilon``, from the data holder's report), delta, sigma and C; a row without
DP-SGD leaves them empty. Post-training noise is measured on the b = 0 models without DP-SGD.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from splitnn.common.datasets import DatasetSplits, load_splits
from splitnn.common.files import write_json_atomic
from splitnn.experiments.config import ExperimentConfig
from splitnn.experiments.grid import POSTTRAIN_NOISE, Setting, TrainSpec, grid_specs
from splitnn.experiments.measure import (
    EPSILON_NOTE,
    epsilon,
    load_classifier,
    measure_classifier,
)
from splitnn.experiments.plots import line_plot
from splitnn.experiments.records import (
    ClassifierRecord,
    classifier_record,
    load_train_record,
    read_json,
    train_settings,
)
from splitnn.experiments.tables import aggregate, mean_se, upsert_rows

logger = logging.getLogger(__name__)

MODEL_CSV = "model_performances.csv"
POSTTRAIN_CSV = "posttrain_noise.csv"
_AVERAGED = (
    "best_epoch",
    "train_accuracy",
    "val_accuracy",
    "test_accuracy",
    "dcor",
    "dcor_sent",
    "client_test_accuracy",
    "train_seconds",
    "dcor_unbiased",
    "dcor_sent_unbiased",
)
MODEL_COLUMNS = (
    *("model", "dataset", "noise", "nopeek", "seeds"),
    *_AVERAGED[:6],
    "epsilon",
    *(f"{name}_se" for name in _AVERAGED[:6]),
    *("epochs", "batch_size", "releases", "epsilon_total"),
    *("client_test_accuracy", "client_test_accuracy_se", "dcor_samples", "train_samples"),
    *("train_seconds", "train_seconds_se"),
    *("dcor_unbiased", "dcor_unbiased_se", "dcor_sent_unbiased", "dcor_sent_unbiased_se"),
    *("test_samples", "val_samples", "max_steps", "lr"),
    *("dp_epsilon", "dp_epsilon_se", "dp_delta", "dp_noise_multiplier", "dp_max_grad_norm"),
)
# DP-SGD's numbers from the data holder's report: the epsilon spent, averaged over seeds, and
# the settings it was spent with (the first seed's; every seed has the same).
_DP_SETTINGS = ("dp_delta", "dp_noise_multiplier", "dp_max_grad_norm")
POSTTRAIN_COLUMNS = (
    *("model", "noise_after", "test_accuracy", "test_accuracy_se"),
    *("dataset", "noise", "nopeek", "seeds", "test_samples", "epochs", "max_steps", "lr"),
)
_CACHE_VERSION = 3  # 2: bias-corrected dCor columns; 3: the sizes of the val and test slices


class NothingToMeasure(Exception):
    """No classifier of the grid is trained with the settings asked for; the message says
    which settings the run records hold and the flags that select them."""


Measured = tuple[TrainSpec, ClassifierRecord, dict[str, Any]]  # spec, run record, measurement


def _measure_one(
    spec: TrainSpec, record: ClassifierRecord, cfg: ExperimentConfig, *, splits: DatasetSplits
) -> dict[str, Any]:
    """The measurement of one run, from its cache unless the run changed (or --force)."""
    cache = cfg.runs_dir / spec.dataset / f"{spec.name}.measure.json"
    cached = read_json(cache)
    if (
        not cfg.force
        and cached is not None
        and cached.get("version") == _CACHE_VERSION
        and cached.get("finished_at") == record.finished_at
    ):
        return cached
    report = record.report
    body, head = load_classifier(Path(report.checkpoint), Path(report.head_checkpoint))
    result = measure_classifier(
        body,
        head,
        splits=splits,
        noise=spec.setting.noise,
        seed=spec.seed,
        posttrain_levels=POSTTRAIN_NOISE if _posttrain(spec.setting) else (),
    )
    measurement = asdict(result)
    posttrain = {repr(b): acc for b, acc in measurement.pop("posttrain").items()}
    data = {
        "version": _CACHE_VERSION,
        "finished_at": record.finished_at,
        "measurement": measurement,
        "posttrain": posttrain,
    }
    write_json_atomic(cache, data)
    return data


def measure_all(cfg: ExperimentConfig) -> list[Measured]:
    """Measures every trained classifier of the grid (all seeds) and of the extra training
    groups (``dp``); untrained ones of the grid are listed.

    Raises:
        NothingToMeasure: not one of them is trained with these settings.
    """
    specs = grid_specs(
        dataset=cfg.dataset,
        seeds=cfg.seeds,
        epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        extra=True,
    )
    core = set(
        grid_specs(dataset=cfg.dataset, seeds=cfg.seeds, epochs=cfg.epochs, max_steps=cfg.max_steps)
    )
    records = [(s, classifier_record(cfg, s)) for s in specs]
    if all(r is None for _, r in records):
        raise NothingToMeasure(nothing_trained(cfg))
    missing = [s.name for s, r in records if r is None and s in core]
    if missing:
        logger.warning(
            "%d of %d classifiers are not trained with these settings (e.g. %s): left out",
            *(len(missing), len(core), ", ".join(missing[:3])),
        )
    done = [(s, r) for s, r in records if r is not None]
    splits = load_splits(cfg.dataset, root=cfg.data_dir)
    bar = tqdm(done, desc="measure", unit="model", disable=not cfg.progress)
    return [(s, r, _measure_one(s, r, cfg, splits=splits)) for s, r in bar]


def _by_model(measured: Sequence[Measured]) -> dict[str, list[Measured]]:
    groups: dict[str, list[Measured]] = {}
    for item in measured:
        groups.setdefault(item[0].model, []).append(item)
    return groups


def model_rows(measured: Sequence[Measured]) -> list[dict[str, Any]]:
    """One row per model (setting), means and standard errors over its seeds."""
    rows = []
    for model, items in _by_model(measured).items():
        spec = items[0][0]
        runs = [
            {
                **data["measurement"],
                "best_epoch": record.report.best_epoch,
                "client_test_accuracy": record.report.test_accuracy,
                "train_seconds": record.report.train_seconds,
            }
            for _, record, data in items
        ]
        eps = epsilon(spec.setting.noise)
        reports = [record.report for _, record, _ in items]
        spent = [r.dp_epsilon for r in reports if r.dp_epsilon is not None]
        dp_spent, dp_spent_se = mean_se(spent) if spent else (None, None)
        rows.append(
            {
                "model": model,
                "dataset": spec.dataset,
                "noise": spec.setting.noise,
                "nopeek": spec.setting.nopeek,
                "seeds": len(items),
                **aggregate(runs, _AVERAGED),
                "epsilon": eps,
                "epochs": spec.epochs,
                "batch_size": spec.setting.batch_size,
                "releases": spec.epochs,
                "epsilon_total": spec.epochs * eps,
                "dcor_samples": runs[0]["dcor_samples"],
                "train_samples": runs[0]["train_samples"],
                "test_samples": runs[0]["test_samples"],
                "val_samples": runs[0]["val_samples"],
                "max_steps": spec.max_steps,
                "lr": items[0][1].settings.get("lr"),
                "dp_epsilon": dp_spent,
                "dp_epsilon_se": dp_spent_se,
                **{name: getattr(reports[0], name) for name in _DP_SETTINGS},
            }
        )
    return rows


def _posttrain(setting: Setting) -> bool:
    """Whether noise after training is measured on a model: b = 0, without DP-SGD."""
    return setting.noise == 0 and setting.dp_epsilon is None


def posttrain_rows(measured: Sequence[Measured]) -> list[dict[str, Any]]:
    """Test accuracy of the plain and NoPeek (b = 0, no DP-SGD) models with noise added after
    training."""
    rows = []
    for model, items in _by_model(measured).items():
        spec = items[0][0]
        if not _posttrain(spec.setting):
            continue
        for b in POSTTRAIN_NOISE:
            runs = [{"test_accuracy": data["posttrain"][repr(b)]} for _, _, data in items]
            rows.append(
                {
                    "model": model,
                    "noise_after": b,
                    **aggregate(runs, ["test_accuracy"]),
                    "dataset": spec.dataset,
                    "noise": spec.setting.noise,
                    "nopeek": spec.setting.nopeek,
                    "seeds": len(items),
                    "test_samples": items[0][2]["measurement"]["test_samples"],
                    "epochs": spec.epochs,
                    "max_steps": spec.max_steps,
                    "lr": items[0][1].settings.get("lr"),
                }
            )
    return rows


def _posttrain_plot(rows: Sequence[dict[str, Any]], path: Path, *, dataset: str) -> Path:
    series: dict[str, tuple[list[float], list[float], list[float | None]]] = {}
    for row in rows:
        label = "plain" if row["nopeek"] == 0 else f"NoPeek W={row['nopeek']:g}"
        xs, ys, errors = series.setdefault(label, ([], [], []))
        xs.append(row["noise_after"])
        ys.append(row["test_accuracy"])
        errors.append(row["test_accuracy_se"])
    return line_plot(
        path,
        series,
        xlabel="Laplace noise b added after training",
        ylabel="test accuracy (%)",
        title=f"Post-training noise ({dataset})",
    )


def write_classifier_tables(cfg: ExperimentConfig) -> list[str]:
    """Measures, writes both CSVs, the plot and the epsilon note; returns a text summary.

    Raises:
        NothingToMeasure: no classifier of the grid is trained with these settings.
    """
    measured = measure_all(cfg)
    rows = model_rows(measured)
    model_csv = cfg.results_dir / MODEL_CSV
    upsert_rows(model_csv, rows, key=("model",), columns=MODEL_COLUMNS)
    post = posttrain_rows(measured)
    lines = [f"{model_csv}: {len(rows)} models written"]
    if post:
        post_csv = cfg.results_dir / POSTTRAIN_CSV
        upsert_rows(post_csv, post, key=("model", "noise_after"), columns=POSTTRAIN_COLUMNS)
        plot = _posttrain_plot(post, cfg.figures_dir / "posttrain_noise.png", dataset=cfg.dataset)
        lines += [f"{post_csv}: {len(post)} rows written", f"{plot}: accuracy against noise"]
    note = cfg.results_dir / "epsilon.txt"
    note.write_text(EPSILON_NOTE)
    lines += ["", _summary(rows), "", EPSILON_NOTE]
    return lines


def _summary(rows: Sequence[dict[str, Any]]) -> str:
    out = [f"{'model':<34} {'seeds':>5} {'test %':>7} {'dCor':>6} {'dCor sent':>9} {'epsilon':>8}"]
    for row in rows:
        eps = "inf" if row["epsilon"] == float("inf") else f"{row['epsilon']:.0f}"
        out.append(
            f"{row['model']:<34} {row['seeds']:>5} {row['test_accuracy']:>7.2f} "
            f"{row['dcor']:>6.3f} {row['dcor_sent']:>9.3f} {eps:>8}"
        )
    return "\n".join(out)


def nothing_trained(cfg: ExperimentConfig) -> str:
    """Why nothing is measured: the settings asked for, and those the run records hold, each
    with the flags of `splitnn-experiments` that select it."""
    folder = cfg.runs_dir / cfg.dataset
    asked = _flags(cfg.epochs, cfg.max_steps, cfg.lr, cfg.seeds, cfg)
    lines = [f"no classifier of the grid is trained with these settings ({asked}) in {folder}"]
    usable, stale = _trained(cfg)
    groups: dict[tuple[int, int | None, float, bool], set[int]] = {}
    counts: dict[tuple[int, int | None, float, bool], int] = {}
    for settings in usable:
        dp = "dp_epsilon" in settings  # a DP-SGD run's learning rate is --dp-lr
        key = (settings["epochs"], settings["max_steps"], settings["lr"], dp)
        groups.setdefault(key, set()).add(settings["seed"])
        counts[key] = counts.get(key, 0) + 1
    if groups:
        lines.append("trained there (select them with these flags):")
    for (epochs, max_steps, lr, dp), seeds in sorted(groups.items(), key=lambda kv: str(kv[0])):
        flags = _flags(epochs, max_steps, lr, max(seeds) + 1, cfg, dp=dp)
        runs = counts[epochs, max_steps, lr, dp]
        lines.append(f"  {flags}: {runs} run{'s' if runs > 1 else ''}, {_seeds(seeds)}")
    if stale:
        lines.append(
            f"{stale} more trained on other data or by another version of splitnn: "
            "their training groups train them again"
        )
    if not groups and not stale:
        lines.append(
            f"run a training group first, e.g. splitnn-experiments plain --epochs {cfg.epochs}"
        )
    return "\n".join(lines)


def _trained(cfg: ExperimentConfig) -> tuple[list[dict[str, Any]], int]:
    """The settings of the usable training runs recorded for `cfg.dataset` (their files are
    there), and how many more were made with settings no flag selects (data, seeding)."""
    usable: list[dict[str, Any]] = []
    stale = 0
    for path in sorted((cfg.runs_dir / cfg.dataset).glob("*.json")):
        data = read_json(path)
        settings = data.get("settings") if data is not None else None
        if path.name.endswith(".measure.json") or not isinstance(settings, dict):
            continue
        try:
            spec = TrainSpec(
                dataset=str(settings["dataset"]),
                setting=Setting(
                    float(settings["noise"]),
                    float(settings["nopeek"]),
                    int(settings["batch_size"]),
                    dp_epsilon=_optional_float(settings.get("dp_epsilon")),
                ),
                seed=int(settings["seed"]),
                epochs=int(settings["epochs"]),
                max_steps=settings["max_steps"],
            )
            lr, data_hash = float(settings["lr"]), str(settings["data"])
        except (KeyError, TypeError, ValueError):
            continue
        if load_train_record(cfg.runs_dir, spec, lr=lr, data=data_hash) is None:
            continue  # its files are gone, or it is of an older format
        if train_settings(spec, lr=lr, data=cfg.data_fingerprint) == settings:
            usable.append(settings)
        else:
            stale += 1
    return usable, stale


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _flags(
    epochs: int,
    max_steps: int | None,
    lr: float,
    seeds: int,
    cfg: ExperimentConfig,
    *,
    dp: bool = False,
) -> str:
    """The flags that select training runs of these settings, as a user would type them (`lr`
    as --dp-lr for DP-SGD runs)."""
    flags = [f"--dataset {cfg.dataset}", f"--epochs {epochs}"]
    if max_steps is not None:
        flags.append(f"--max-steps {max_steps}")
    elif cfg.max_steps is not None:
        flags.append("without --max-steps")
    flags.append(f"{'--dp-lr' if dp else '--lr'} {lr!r}")
    if seeds > 1:
        flags.append(f"--seeds {seeds}")
    return " ".join(flags)


def _seeds(seeds: Iterable[int]) -> str:
    ordered = sorted(seeds)
    return f"seed{'s' if len(ordered) > 1 else ''} {', '.join(map(str, ordered))}"
