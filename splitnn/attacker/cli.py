"""`splitnn-attack`: the colluding attacker that inverts intercepted cut tensors into images."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import click

from splitnn.attacker.app import AttackConfig, run_attack
from splitnn.attacker.hijacked_cli import hijacked
from splitnn.attacker.substitute import MATCHINGS, SubstituteSettings
from splitnn.attacker.validator import load_or_train_validator, validator_path
from splitnn.common.datasets import load_splits
from splitnn.common.devices import use_device
from splitnn.common.logs import configure_logging
from splitnn.common.models import DECODER_EPOCHS
from splitnn.common.reports import AttackReport
from splitnn.common.wirelog import read_wirelog
from splitnn.options import (
    DIRECTORY,
    EXISTING_FILE,
    FLAG,
    attacker_options,
    config_from,
    connect_timeout_option,
    credential_options,
    dataset_option,
    device_option,
    dir_option,
    json_option,
    logging_options,
    option_table,
    seed_option,
)
from splitnn.programs import program_group


@program_group(
    "splitnn-attack",
    example_option="RUN_DECODER=study",
    implied={"--from-log": "run", "--live": "run"},
)
@logging_options
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """The colluding attacker: turn what the server received back into the victim's images.

    \b
    1. inspect   what a wire log holds (runs, phases, splits, damage)
    2. run       train a decoder through the colluding data holder's part 1 on auxiliary
                 images (or reuse the one trained under the same settings), invert the
                 victim's intercepted tensors, score and draw them; --oracle substitute:
                 the server alone, through a substitute part 1 fitted to its wire log
    3. validator train (or show) the independent classifier that judges reconstructions

    `splitnn-attack --from-log LOG [OPTIONS]` is short for `splitnn-attack run --from-log LOG
    [OPTIONS]`, and `splitnn-attack --live HOST:PORT [OPTIONS]` for `splitnn-attack run --live
    HOST:PORT [OPTIONS]`: `splitnn-attack run --help` lists those options.

    \b
    Examples (after splitnn-sim, which leaves its wire log in runs/sim):
      splitnn-attack inspect runs/sim/wire.log
      splitnn-attack --from-log runs/sim/wire.log \\
        --classifier models/classifiers/mnist5k_05noise_00nopeek_epoch=10.ckpt
    """
    ctx.obj = {"quiet": quiet}
    configure_logging(verbose=verbose, quiet=quiet)


@main.command()
@click.argument("log", type=EXISTING_FILE)
def inspect(log: Path) -> None:
    """Summarise a wire log: its header, batches per run/phase/split, and any damage."""
    wirelog = read_wirelog(log)
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


# The substitute's settings: options of `run`, gathered into one SubstituteSettings.
_SUBSTITUTE_OPTIONS = {
    "matching": "matching",
    "mmd_weight": "mmd_weight",
    "ce_weight": "ce_weight",
    "match_weight": "match_weight",
    "substitute_epochs": "epochs",
    "substitute_lr": "lr",
    "substitute_batch_size": "batch_size",
    "match_splits": "match_splits",
    "match_epochs": "match_epochs",
    "head_snapshots": "head_snapshots",
    "substitutes": "substitutes",
}
_WEIGHT = click.FloatRange(0)
_FILE = click.Path(dir_okay=False, path_type=Path)


def substitute_options(function: Any) -> Any:
    """The passive attacker's substitute part 1 (`--oracle substitute`): what it matches, how."""
    return option_table(
        ("--matching", click.Choice(MATCHINGS), "conditional",
         "Substitute: MMD per class (labels on the wire) or marginal (FORA's)."),
        ("--mmd-weight", _WEIGHT, 1.0, "Substitute: MMD term's weight."),
        ("--ce-weight", _WEIGHT, 1.0,
         "Substitute: label term's weight (through the frozen --head)."),
        ("--match-weight", _WEIGHT, 0.0,
         "Substitute: WGAN critic term's weight; 0 (default): no critic (it made every run "
         "measured worse)."),
        ("--substitute-epochs", click.IntRange(1), 40, None),
        ("--substitute-lr", click.FloatRange(0, min_open=True), 1e-4, None),
        ("--substitute-batch-size", click.IntRange(2), 64, None),
        ("--match-splits", None, "train",
         "Substitute: comma-separated wire splits whose tensors it matches. Default: train (not "
         "the attacked split; adding it is transductive)."),
        ("--match-epochs", click.IntRange(0), 1,
         "Substitute: of each matched split, the tensors of its last N epochs (0: all)."),
        ("--head-snapshots", click.IntRange(0), 0,
         "Substitute: the label term also goes through the head as it stood after each of the "
         "last N training epochs, replayed from the wire log (needs --head)."),
        ("--substitutes", click.IntRange(1), 1,
         "Substitute: train K (different seeds); the decoder is trained through each in turn."),
    )(function)  # fmt: skip


@main.command()
@option_table(
    ("--oracle", click.Choice(["lent", "substitute"]), "lent",
     "lent: the colluding data holder lends its part 1 (--classifier). substitute: the server "
     "alone trains one from its wire log (--from-log), its head (--head) and public images: "
     "the honest-but-curious server."),
    ("--classifier", _FILE, None,
     "With --oracle lent (required): the deployed part-1 checkpoint lent by the colluding data "
     "holder. A quoted pattern with * picks the newest match, e.g. "
     "'models/classifiers/mnist5k_00noise_00nopeek_epoch=*.ckpt'"),
    ("--head", _FILE, None,
     "The server's head checkpoint (a quoted * pattern picks the newest), e.g. "
     "'models/heads/victim/*/*.head.ckpt': the substitute's label term, and the classes of the "
     "class-mean baseline (without it: the labels on the wire)."),
    ("--from-log", EXISTING_FILE, None, "Wire log written by a collusion-mode server (--tap-log)."),
)  # fmt: skip
@click.option("--live", metavar="HOST:PORT", help="Subscribe to a collusion-mode server (--tap).")
@connect_timeout_option
@dataset_option(
    default=None,
    help="The victim's data set (ground truth). Default: from the classifier (with --oracle"
    " substitute: mnist5k).",
)
@attacker_options
@click.option(
    "--protocol",
    type=click.Choice(["noisy", "clean"]),
    default="noisy",
    help="clean = the reference's shortcut (noise-free tensors), for comparison only.",
)
@click.option(
    "--epochs",
    type=click.IntRange(1),
    default=DECODER_EPOCHS,
    show_default=True,
    help="Decoder epochs.",
)
@click.option("--batch-size", type=click.IntRange(1), default=64, help="Decoder batch size.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-3, help="Decoder lr.")
@seed_option(help="Seeds the decoder, its batch order and the oracle's noise.")
@click.option("--split", default="attack", help="Which intercepted split to invert.")
@click.option("--run", default=None, help="Which run of the log. Default: the last.")
@dir_option("--model-dir", "models")
@dir_option("--data-dir", "data")
@option_table(
    ("--figure", _FILE, None,
     "PNG of originals above reconstructions. Default: results/figures/<attacker>.png"),
    ("--validator-epochs", click.IntRange(1), 5,
     "Epochs of the validation classifier if it must be trained first."),
    ("--validator-dir", DIRECTORY, None,
     "Where the validation classifier is kept (trained there if missing). Default: "
     "--model-dir."),
    ("--retrain", FLAG, None,
     "Train the decoder even if one trained under the same settings (the same part-1 bytes) "
     "is saved; without it, that one is reused."),
)  # fmt: skip
@substitute_options
@credential_options
@device_option
@json_option
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
    Examples:
      splitnn-attack run --from-log runs/sim/wire.log --json \\
        --classifier 'models/classifiers/mnist5k_00noise_00nopeek_epoch=10.ckpt'
      splitnn-attack run --oracle substitute --from-log runs/sim/wire.log --json \\
        --head 'models/heads/victim/*/*.head.ckpt'
    """
    if (options["from_log"] is None) == (options["live"] is None):
        raise click.UsageError("give exactly one of --from-log FILE or --live HOST:PORT")
    if options["oracle"] == "lent" and options["classifier"] is None:
        raise click.UsageError(
            "Missing option '--classifier': --oracle lent attacks through the part 1 the"
            " colluding holder lends (--oracle substitute needs none)"
        )
    if options["oracle"] == "substitute" and options["from_log"] is None:
        raise click.UsageError("--oracle substitute needs --from-log (the server's wire log)")
    substitute = {new: options.pop(old) for old, new in _SUBSTITUTE_OPTIONS.items()}
    substitute["match_splits"] = _splits(substitute["match_splits"])
    progress = not ctx.obj["quiet"] and sys.stderr.isatty()
    cfg = config_from(
        AttackConfig, options, progress=progress, substitute=SubstituteSettings(**substitute)
    )
    report = run_attack(cfg)
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    if as_json:
        click.echo(json.dumps(report.to_json()))
    else:
        _print_report(report)


@main.command()
@dataset_option()
@seed_option(help="Seeds the validator's weights and batch order.")
@dir_option("--model-dir", "models")
@dir_option("--data-dir", "data")
@device_option
@click.pass_context
def validator(
    ctx: click.Context, dataset: str, seed: int, model_dir: Path, data_dir: Path, device: str
) -> None:
    """Train (once) the validation classifier that scores reconstructions."""
    use_device(device)
    splits = load_splits(dataset, root=data_dir)
    load_or_train_validator(
        splits=splits, model_dir=model_dir, seed=seed, progress=not ctx.obj["quiet"]
    )
    click.echo(f"validator: {validator_path(model_dir, dataset, seed)}")


main.add_command(hijacked)


def _splits(text: str) -> tuple[str, ...]:
    splits = tuple(part.strip() for part in text.split(",") if part.strip())
    if not splits:
        raise click.BadParameter("name at least one split", param_hint="--match-splits")
    return splits


def _print_report(report: AttackReport) -> None:
    click.echo(f"attacked {report.images} intercepted tensors from {report.source}")
    deployed = f"deployed {report.deployed_noise:g}" if report.oracle == "lent" else "assumed"
    click.echo(
        f"oracle {report.oracle}, noise b={report.set_noise:g} ({deployed}), "
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
    for name, scores in report.baselines.items():
        click.echo(
            f"baseline {name}: MSE {scores['mse']:.4f}  SSIM {scores['ssim']:.3f}  "
            f"validator {scores['validator_accuracy']:.1f}%"
        )
    if report.baseline_classes:
        click.echo(f"(class-mean baseline classes: {report.baseline_classes})")
    click.echo(f"figure: {report.figure}")
    click.echo(f"attacker: {report.attacker}")
