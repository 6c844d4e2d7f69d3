"""`splitnn-experiments`: the study's grid of runs (its ``main.sh``) as one command."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from splitnn.client.dp import DP_LR
from splitnn.common import exits
from splitnn.common.devices import export_device
from splitnn.common.logs import configure_logging
from splitnn.common.models import DECODER_EPOCHS, DECODER_NAMES
from splitnn.common.processes import raise_on_sigterm
from splitnn.experiments.app import Summary, run
from splitnn.experiments.config import (
    SLURM_MIN_MINUTES,
    ExperimentConfig,
    SlurmOptions,
    default_dataset,
)
from splitnn.experiments.executors import missing_commands, parse_extra
from splitnn.experiments.grid import ALL, GROUP_NAMES, GROUPS, expand
from splitnn.experiments.report import REPORT_FILE, ReportError, render_report, update_readme
from splitnn.options import (
    LEARNING_RATE,
    config_from,
    dataset_option,
    device_option,
    dir_option,
    epochs_option,
    logging_options,
    lr_option,
    max_steps_option,
)
from splitnn.programs import program

REPORT = "report"
SIMULATION_KINDS = ("multi", "threats")
EXECUTORS = ("local", "slurm")
_SLURM_DEFAULTS = SlurmOptions()
# The --slurm-* options by parameter name; each is None (or empty) unless given.
SLURM_FLAGS = {
    "slurm_partition": "--slurm-partition",
    "slurm_time": "--slurm-time",
    "slurm_cpus_per_run": "--slurm-cpus-per-run",
    "slurm_mem_gb": "--slurm-mem-gb",
    "slurm_array_parallelism": "--slurm-array-parallelism",
    "slurm_extra": "--slurm-extra",
}
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
@click.option(
    "--only",
    multiple=True,
    metavar="PATTERN",
    help="multi and threats: only the simulations whose run name matches this shell pattern "
    "(repeatable), e.g. '*_k4_iid_00noise_*' or '*_fsha_*'; they alone run and are tabled.",
)
@click.option(
    "--executor",
    type=click.Choice(EXECUTORS),
    default="local",
    help="local: runs on this machine, --jobs at once. slurm: every run one job of a Slurm "
    "job array (submitit), its processes on one node; this command waits for them.",
)
@click.option(
    "--slurm-partition", default=None, help="The jobs' partition. [default: the cluster's]"
)
@click.option(
    "--slurm-time",
    type=int,
    default=None,
    metavar="MINUTES",
    help=f"Each job's time limit, at least {SLURM_MIN_MINUTES}. "
    f"[default: {_SLURM_DEFAULTS.minutes}]",
)
@click.option(
    "--slurm-cpus-per-run",
    type=click.IntRange(1, 1024),
    default=None,
    help=f"CPUs of each job (its torch threads). [default: {_SLURM_DEFAULTS.cpus_per_run}]",
)
@click.option(
    "--slurm-mem-gb",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Memory of each job in GB. [default: the cluster's]",
)
@click.option(
    "--slurm-array-parallelism",
    type=click.IntRange(1),
    default=None,
    help=f"Jobs running at once. [default: {_SLURM_DEFAULTS.array_parallelism}]",
)
@click.option(
    "--slurm-extra",
    multiple=True,
    metavar="KEY=VALUE",
    help="Another sbatch option for every job, e.g. account=proj or qos=short (repeatable).",
)
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
@device_option
@logging_options
def main(
    *,
    groups: tuple[str, ...],
    attacks: bool,
    dataset: str | None,
    executor: str,
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
    raise_on_sigterm()  # SIGTERM unwinds as Ctrl-C does: the parties started are stopped
    # Every process of every run computes there (a cluster job inherits the environment and
    # resolves the device on its own node; a local run's `auto` is decided here, once).
    export_device(options.pop("device"), here=executor != "slurm")
    if REPORT in groups:
        _report(groups, results_dir=options["results_dir"], readme=readme, quiet=quiet)
        return
    if readme is not None:
        raise click.UsageError("--readme goes with the report group")
    _check_only(options["only"], groups)
    slurm = _slurm_options(executor, options)
    if executor == "slurm":
        if click.get_current_context().get_parameter_source("jobs") not in _NOT_GIVEN:
            raise click.UsageError(
                "--jobs goes with --executor local; --slurm-array-parallelism sets the jobs "
                "that run at once"
            )
        options["jobs"] = slurm.array_parallelism
    cfg = config_from(
        ExperimentConfig,
        options,
        groups=expand(groups, attacks=attacks),
        dataset=dataset or default_dataset(options["data_dir"]),
        progress=not quiet and sys.stderr.isatty(),
        executor=executor,
        slurm=slurm,
    )
    summary = run(cfg)
    _print_summary(summary)
    if summary.failures:
        sys.exit(exits.FAILED)


_NOT_GIVEN = (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)


def _check_only(patterns: tuple[str, ...], groups: tuple[str, ...]) -> None:
    """--only selects simulations: it needs a simulation group and an empty pattern selects
    nothing.

    Raises:
        click.UsageError: --only without ``multi`` or ``threats``, or an empty pattern.
    """
    if not patterns:
        return
    if not any(GROUPS[g].kind in SIMULATION_KINDS for g in groups if g in GROUPS):
        raise click.UsageError("--only selects simulations: give it with multi or threats")
    if any(not p.strip() for p in patterns):
        raise click.UsageError("--only: an empty pattern matches no run name")


def _slurm_options(executor: str, options: dict[str, Any]) -> SlurmOptions:
    """The --slurm-* options (taken out of `options`) as the jobs' settings.

    Raises:
        click.UsageError: one given without ``--executor slurm``; ``--executor slurm`` without
            Slurm's commands; a time under `SLURM_MIN_MINUTES`; an --slurm-extra not KEY=VALUE.
    """
    given = {name: options.pop(name) for name in SLURM_FLAGS}
    named = [flag for name, flag in SLURM_FLAGS.items() if given[name] not in (None, ())]
    if executor != "slurm":
        if named:
            raise click.UsageError(f"{', '.join(named)}: only with --executor slurm")
        return _SLURM_DEFAULTS
    minutes = given["slurm_time"]
    if minutes is not None and minutes < SLURM_MIN_MINUTES:
        raise click.UsageError(
            f"--slurm-time {minutes}: at least {SLURM_MIN_MINUTES} minutes (submitit signals a "
            "job 90 s before its time is up, so a shorter one can be stopped before it starts)"
        )
    try:
        extra = parse_extra(given["slurm_extra"])
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    missing = missing_commands()
    if missing:
        raise click.UsageError(
            f"--executor slurm: {' and '.join(missing)} not found on PATH "
            "(submit from a machine of the Slurm cluster)"
        )
    d = _SLURM_DEFAULTS

    def pick(name: str, default: Any) -> Any:
        return default if given[name] is None else given[name]

    return SlurmOptions(
        partition=given["slurm_partition"],
        minutes=pick("slurm_time", d.minutes),
        cpus_per_run=pick("slurm_cpus_per_run", d.cpus_per_run),
        mem_gb=given["slurm_mem_gb"],
        array_parallelism=pick("slurm_array_parallelism", d.array_parallelism),
        extra=extra,
    )


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
