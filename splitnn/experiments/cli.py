"""`splitnn-experiments`: the study's grid of runs (its ``main.sh``) as one command."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from splitnn.client.dp import DP_LR
from splitnn.common import exits
from splitnn.common.logs import configure_logging
from splitnn.common.models import DECODER_EPOCHS, DECODER_NAMES
from splitnn.experiments.app import Summary, run
from splitnn.experiments.config import ExperimentConfig, default_dataset
from splitnn.experiments.grid import ALL, GROUP_NAMES, GROUPS, expand
from splitnn.experiments.report import REPORT_FILE, ReportError, render_report, update_readme
from splitnn.options import (
    LEARNING_RATE,
    config_from,
    dataset_option,
    dir_option,
    epochs_option,
    logging_options,
    lr_option,
    max_steps_option,
)
from splitnn.programs import program

REPORT = "report"
_GROUP_HELP = "\n".join(f"  {name:<12} {group.help}" for name, group in GROUPS.items())
_REPORT_HELP = (
    f"  {REPORT:<12} alone: the result tables as markdown from RESULTS_DIR/*.csv (stdout and\n"
    f"  {'':<12} RESULTS_DIR/{REPORT_FILE}); runs nothing; --readme FILE rewrites its quoted tables"
)


@program(
    "splitnn-experiments",
    example_option="JOBS=2",
    epilog_head=(f"\b\nGroups:\n{_GROUP_HELP}\n  {'all':<12} {' '.join(ALL)}\n{_REPORT_HELP}"),
)
@click.argument(
    "groups",
    nargs=-1,
    required=True,
    type=click.Choice((*GROUP_NAMES, REPORT)),
    metavar="GROUP...",
)
@dataset_option(
    default=None,
    help="Victim's data set. Default: mnist if it is in --data-dir, else mnist5k (offline).",
)
@epochs_option()
@click.option("--seeds", type=click.IntRange(1, 100), default=1, help="Seeds 0..N-1 per setting.")
@click.option("--jobs", type=click.IntRange(1, 64), default=1, help="Runs at once.")
@click.option("--force", is_flag=True, help="Redo runs that are already done.")
@max_steps_option
@lr_option(help="The data holder's learning rate (without DP-SGD).")
@click.option(
    "--dp-lr",
    type=LEARNING_RATE,
    default=DP_LR,
    show_default=True,
    help="The data holder's learning rate with DP-SGD (the dp group; splitnn-client's default).",
)
@click.option(
    "--attacks/--no-attacks", default=True, help="Whether 'all' includes the attacks group."
)
@click.option(
    "--attack-epochs",
    type=click.IntRange(1),
    default=DECODER_EPOCHS,
    help="Decoder epochs (the same default as splitnn-attack and splitnn-sim).",
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
@dir_option("--model-dir", "models")
@dir_option("--data-dir", "data")
@dir_option("--runs-dir", "runs/experiments", help="Run records.")
@dir_option("--results-dir", "results", help="CSVs and figures/.")
@click.option(
    "--readme",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="With report: rewrite this file's <!-- report:TABLE CSV --> blocks from their CSVs.",
)
@logging_options
def main(
    *,
    groups: tuple[str, ...],
    attacks: bool,
    dataset: str | None,
    quiet: bool,
    verbose: int,
    readme: Path | None,
    **options: Any,
) -> None:
    """Run groups of the study's grid; every training run is a splitnn-server and a
    splitnn-client process talking gRPC over loopback, every attack a splitnn-attack process.

    Runs already done with the same settings are skipped (--force redoes them); tables are
    updated row by row, never dropping rows of other runs.

    \b
    Example: splitnn-experiments all --dataset mnist5k --epochs 10
    """
    configure_logging(verbose=verbose, quiet=quiet)
    if REPORT in groups:
        _report(groups, results_dir=options["results_dir"], readme=readme, quiet=quiet)
        return
    if readme is not None:
        raise click.UsageError("--readme goes with the report group")
    cfg = config_from(
        ExperimentConfig,
        options,
        groups=expand(groups, attacks=attacks),
        dataset=dataset or default_dataset(options["data_dir"]),
        progress=not quiet and sys.stderr.isatty(),
    )
    summary = run(cfg)
    _print_summary(summary)
    if summary.failures:
        sys.exit(exits.FAILED)


def _report(
    groups: tuple[str, ...], *, results_dir: Path, readme: Path | None, quiet: bool
) -> None:
    """`splitnn-experiments report`: the tables to stdout and RESULTS_DIR/tables.md, and the
    README's quoted tables rewritten (`splitnn.experiments.report`)."""
    if groups != (REPORT,):
        raise click.UsageError(
            f"{REPORT} runs alone, not with {' '.join(g for g in groups if g != REPORT)}"
        )
    try:
        if readme is not None:
            count = update_readme(readme)
            click.echo(f"{readme}: {count} tables rewritten from their CSVs", err=True)
            return
        text = render_report(results_dir)
    except (ReportError, OSError) as error:
        raise exits.Failed(str(error)) from None
    path = results_dir / REPORT_FILE
    path.write_text(text)
    if not quiet:
        click.echo(text)
    click.echo(f"{path}: written", err=True)


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
