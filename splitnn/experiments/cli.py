"""`splitnn-experiments`: the study's grid of runs (its ``main.sh``) as one command."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from splitnn.common import exits
from splitnn.common.checkpoints import CheckpointError
from splitnn.common.datasets import DATASETS, DatasetError
from splitnn.common.logs import configure_logging
from splitnn.common.models import DECODER_NAMES
from splitnn.common.processes import ProcessError
from splitnn.common.wirelog import WireLogError
from splitnn.experiments.app import Summary, run
from splitnn.experiments.config import ExperimentConfig, default_dataset
from splitnn.experiments.grid import ALL, GROUP_NAMES, GROUPS, expand

_DIR = click.Path(file_okay=False, path_type=Path)
_GROUP_HELP = "\n".join(f"  {name:<12} {group.help}" for name, group in GROUPS.items())


@click.command(
    context_settings={"auto_envvar_prefix": "SPLITNN_EXPERIMENTS", "show_default": True},
    epilog=f"\b\nGroups:\n{_GROUP_HELP}\n  {'all':<12} {' '.join(ALL)}",
)
@click.argument(
    "groups", nargs=-1, required=True, type=click.Choice(GROUP_NAMES), metavar="GROUP..."
)
@click.option(
    "--dataset",
    type=click.Choice(DATASETS),
    default=None,
    show_default=False,
    help="Victim's data set. Default: mnist if it is in --data-dir, else mnist5k (offline).",
)
@click.option("--epochs", type=click.IntRange(1, 10_000), default=10, help="Training epochs.")
@click.option("--seeds", type=click.IntRange(1, 100), default=1, help="Seeds 0..N-1 per setting.")
@click.option("--jobs", type=click.IntRange(1, 64), default=1, help="Runs at once.")
@click.option("--force", is_flag=True, help="Redo runs that are already done.")
@click.option(
    "--max-steps", type=click.IntRange(1), default=None, help="Batches per epoch (smoke)."
)
@click.option("--lr", type=click.FloatRange(0, 1, min_open=True), default=1e-4)
@click.option(
    "--attacks/--no-attacks", default=True, help="Whether 'all' includes the attacks group."
)
@click.option(
    "--attack-epochs", type=click.IntRange(1), default=10, help="Decoder epochs (the study's 10)."
)
@click.option(
    "--decoder", type=click.Choice(DECODER_NAMES), default="deep", help="Attackers' decoder."
)
@click.option(
    "--clean-comparison/--no-clean-comparison",
    default=True,
    help="Also attack the noise models with the reference's noise-free protocol.",
)
@click.option("--keep-wirelogs", is_flag=True, help="Keep training batches in the wire logs.")
@click.option("--model-dir", type=_DIR, default=Path("models"))
@click.option("--data-dir", type=_DIR, default=Path("data"))
@click.option("--runs-dir", type=_DIR, default=Path("runs/experiments"), help="Run records.")
@click.option("--results-dir", type=_DIR, default=Path("results"), help="CSVs and figures/.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars, only warnings.")
@click.option("-v", "--verbose", count=True)
def main(
    groups: tuple[str, ...],
    dataset: str | None,
    epochs: int,
    seeds: int,
    jobs: int,
    force: bool,
    max_steps: int | None,
    lr: float,
    attacks: bool,
    attack_epochs: int,
    decoder: str,
    clean_comparison: bool,
    keep_wirelogs: bool,
    model_dir: Path,
    data_dir: Path,
    runs_dir: Path,
    results_dir: Path,
    quiet: bool,
    verbose: int,
) -> None:
    """Run groups of the study's grid; every training run is a splitnn-server and a
    splitnn-client process talking gRPC over loopback, every attack a splitnn-attack process.

    Runs already done with the same settings are skipped (--force redoes them); tables are
    updated row by row, never dropping rows of other runs.

    \b
    Example: splitnn-experiments all --dataset mnist5k --epochs 10
    """
    configure_logging(verbose=verbose, quiet=quiet)
    cfg = ExperimentConfig(
        groups=expand(groups, attacks=attacks),
        dataset=dataset or default_dataset(data_dir),
        epochs=epochs,
        seeds=seeds,
        jobs=jobs,
        force=force,
        max_steps=max_steps,
        lr=lr,
        attack_epochs=attack_epochs,
        decoder=decoder,
        clean_comparison=clean_comparison,
        keep_wirelogs=keep_wirelogs,
        model_dir=model_dir,
        data_dir=data_dir,
        runs_dir=runs_dir,
        results_dir=results_dir,
        progress=not quiet and sys.stderr.isatty(),
    )
    try:
        summary = run(cfg)
    except (DatasetError, CheckpointError, WireLogError, ProcessError) as error:
        exits.fail("splitnn-experiments", str(error), exits.FAILED)
    except KeyboardInterrupt:
        exits.fail("splitnn-experiments", "interrupted", exits.INTERRUPTED)
    _print_summary(summary)
    if summary.failures:
        sys.exit(exits.FAILED)


def _print_summary(summary: Summary) -> None:
    for line in summary.lines:
        click.echo(line)
    counts = summary.counts
    click.echo(
        f"runs: {counts['ran']} ran, {counts['skipped']} skipped (done before), "
        f"{counts['failed']} failed; wall time {summary.seconds:.0f} s"
    )
    for failure in summary.failures:
        click.echo(f"FAILED {failure}", err=True)
