"""`splitnn-attack`: the colluding attacker that inverts intercepted cut tensors into images."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import click

from splitnn.attacker.app import AttackConfig, run_attack
from splitnn.attacker.decoders import DECODERS, DecoderError
from splitnn.attacker.intercept import InterceptError
from splitnn.attacker.validator import load_or_train_validator, validator_path
from splitnn.common import exits
from splitnn.common.checkpoints import CheckpointError
from splitnn.common.credentials import CredentialError, credential_options
from splitnn.common.datasets import DATASETS, DatasetError, load_splits
from splitnn.common.logs import configure_logging
from splitnn.common.reports import AttackReport
from splitnn.common.seeds import SEED_TYPE
from splitnn.common.wirelog import WireLogError, read_wirelog

_USER_ERRORS = (
    CheckpointError,
    CredentialError,
    DatasetError,
    DecoderError,
    InterceptError,
    WireLogError,
)


@click.group(context_settings={"auto_envvar_prefix": "SPLITNN_ATTACK", "show_default": True})
@click.option("-v", "--verbose", count=True)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars, only warnings.")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """The colluding attacker: turn what the server received back into the victim's images.

    \b
    1. inspect   what a wire log holds (runs, phases, splits, damage)
    2. run       train a decoder through the colluding data holder's part 1 on auxiliary
                 images (or reuse the one trained under the same settings), invert the
                 victim's intercepted tensors, score and draw them
    3. validator train (or show) the independent classifier that judges reconstructions
    """
    ctx.obj = {"quiet": quiet}
    configure_logging(verbose=verbose, quiet=quiet)


@main.command()
@click.argument("log", type=click.Path(dir_okay=False, exists=True, path_type=Path))
def inspect(log: Path) -> None:
    """Summarise a wire log: its header, batches per run/phase/split, and any damage."""
    try:
        wirelog = read_wirelog(log)
    except WireLogError as error:
        exits.fail("splitnn-attack", str(error), exits.FAILED)
    click.echo(f"header: {json.dumps(wirelog.header, sort_keys=True)}")
    counts: Counter[tuple[str, str, str]] = Counter()
    images: Counter[tuple[str, str, str]] = Counter()
    for record in wirelog.records:
        key = (record.step.run, record.phase, record.split)
        counts[key] += 1
        images[key] += record.activations.shape[0] if record.activations.shape else 0
    for (run, phase, split), n in sorted(counts.items()):
        click.echo(f"run {run}: {phase}/{split}: {n} batches, {images[run, phase, split]} tensors")
    click.echo(f"damage: {wirelog.problem or 'none'}")


@main.command()
@click.option(
    "--classifier",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The deployed part-1 checkpoint lent by the colluding data holder. A quoted pattern"
    " with * picks the newest match, e.g."
    " 'models/classifiers/mnist5k_00noise_00nopeek_epoch=*.ckpt'",
)
@click.option(
    "--from-log",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Wire log written by a collusion-mode server (--tap-log).",
)
@click.option("--live", metavar="HOST:PORT", help="Subscribe to a collusion-mode server (--tap).")
@click.option(
    "--dataset",
    type=click.Choice(DATASETS),
    default=None,
    help="The victim's data set (ground truth). Default: from the classifier.",
)
@click.option(
    "--aux",
    type=click.Choice(DATASETS),
    default=None,
    help="Auxiliary data set of the attacker. Default: the victim's (its aux slice).",
)
@click.option(
    "--aux-fraction",
    type=click.FloatRange(0, 1, min_open=True),
    default=1.0,
    help="Fraction of the auxiliary slice to use.",
)
@click.option(
    "--set-noise",
    type=click.FloatRange(0),
    default=None,
    help="Query part 1 with this noise instead of the deployed noise.",
)
@click.option("--decoder", type=click.Choice(DECODERS), default="deep")
@click.option(
    "--protocol",
    type=click.Choice(["noisy", "clean"]),
    default="noisy",
    help="clean = the reference's shortcut (noise-free tensors), for comparison only.",
)
@click.option("--epochs", type=click.IntRange(1), default=30)
@click.option("--batch-size", type=click.IntRange(1), default=64)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-3)
@click.option("--seed", type=SEED_TYPE, default=0)
@click.option("--split", default="attack", help="Which intercepted split to invert.")
@click.option("--run", "run_name", default=None, help="Which run of the log. Default: the last.")
@click.option(
    "--model-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("models")
)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("data"))
@click.option(
    "--figure",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="PNG of originals above reconstructions. Default: results/figures/<attacker>.png",
)
@click.option(
    "--validator-epochs",
    type=click.IntRange(1),
    default=5,
    help="Epochs of the validation classifier if it must be trained first.",
)
@click.option(
    "--retrain",
    is_flag=True,
    help="Train the decoder even if one trained under the same settings (the same part-1"
    " bytes) is saved; without it, that one is reused.",
)
@credential_options
@click.option("--json", "as_json", is_flag=True, help="Print the scores as one JSON object.")
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the scores as one JSON object to this file.",
)
@click.pass_context
def run(ctx: click.Context, /, as_json: bool, report_path: Path | None, **options: Any) -> None:
    """Train an inversion decoder and attack the victim's intercepted tensors.

    \b
    Example:
      splitnn-attack run --from-log runs/sim/wire.log --json \\
        --classifier 'models/classifiers/mnist5k_00noise_00nopeek_epoch=10.ckpt'
    """
    if (options["from_log"] is None) == (options["live"] is None):
        raise click.UsageError("give exactly one of --from-log FILE or --live HOST:PORT")
    cfg = AttackConfig(
        run=options.pop("run_name"),
        progress=not ctx.obj["quiet"] and sys.stderr.isatty(),
        **options,
    )
    try:
        report = run_attack(cfg)
    except _USER_ERRORS as error:
        exits.fail("splitnn-attack", str(error), exits.FAILED)
    except KeyboardInterrupt:
        exits.fail("splitnn-attack", "interrupted", exits.INTERRUPTED)
    if report_path is not None:
        try:
            report_path.parent.mkdir(parents=True, exist_ok=True)
            report_path.write_text(json.dumps(report.to_json(), indent=2) + "\n")
        except OSError as error:
            exits.fail("splitnn-attack", f"cannot write {report_path}: {error}", exits.FAILED)
    if as_json:
        click.echo(json.dumps(report.to_json()))
    else:
        _print_report(report)


@main.command()
@click.option("--dataset", type=click.Choice(DATASETS), default="mnist5k")
@click.option("--seed", type=SEED_TYPE, default=0)
@click.option(
    "--model-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("models")
)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("data"))
@click.pass_context
def validator(ctx: click.Context, dataset: str, seed: int, model_dir: Path, data_dir: Path) -> None:
    """Train (once) the validation classifier that scores reconstructions."""
    try:
        splits = load_splits(dataset, root=data_dir)
        load_or_train_validator(
            splits=splits, model_dir=model_dir, seed=seed, progress=not ctx.obj["quiet"]
        )
    except _USER_ERRORS as error:
        exits.fail("splitnn-attack", str(error), exits.FAILED)
    click.echo(f"validator: {validator_path(model_dir, dataset, seed)}")


def _print_report(report: AttackReport) -> None:
    click.echo(f"attacked {report.images} intercepted tensors from {report.source}")
    click.echo(
        f"oracle noise b={report.set_noise:g} (deployed {report.deployed_noise:g}), "
        f"decoder {report.decoder}, {report.aux_images} auxiliary images ({report.aux}), "
        f"protocol {report.protocol}"
    )
    click.echo(
        f"MSE {report.mse:.4f}  PSNR {report.psnr:.2f} dB  SSIM {report.ssim:.3f}  "
        f"dCor {report.dcor:.3f}"
    )
    click.echo(
        f"validator accuracy on reconstructions: {report.validator_accuracy:.1f}% "
        f"(on the originals: {report.validator_accuracy_originals:.1f}%)"
    )
    click.echo(f"figure: {report.figure}")
    click.echo(f"attacker: {report.attacker}")
