"""`splitnn-attack hijacked`: score a hijacking server's decoder snapshots on a wire log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from splitnn.attacker.hijacked import HijackedConfig, score_hijacked
from splitnn.options import (
    EXISTING_FILE,
    config_from,
    dataset_option,
    device_option,
    dir_option,
    json_option,
    seed_option,
)

_FILE = click.Path(dir_okay=False, path_type=Path)


@click.command()
@click.option(
    "--from-log",
    type=EXISTING_FILE,
    required=True,
    help="Wire log of the hijacking server (--tap-log).",
)
@click.option(
    "--decoders",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    required=True,
    help="Folder of its decoder snapshots: MODEL_DIR/hijack/<party> or one run's folder in it.",
)
@click.option("--run", default=None, help="Which run of the log. Default: the last.")
@dataset_option(help="The victim's data set (ground truth, validator).")
@dir_option("--data-dir", "data")
@dir_option("--model-dir", "models", help="Where the validator is kept (trained if missing).")
@seed_option(help="Seeds the validator.")
@click.option(
    "--validator-epochs",
    type=click.IntRange(1),
    default=5,
    show_default=True,
    help="Epochs of the validation classifier if it must be trained first.",
)
@click.option(
    "--curve",
    type=_FILE,
    default=None,
    help="Write the per-step curve (CSV) and its plot beside it (the same name, .png).",
)
@click.option("--figure", type=_FILE, default=None, help="PNG of originals and reconstructions.")
@click.option(
    "--report",
    "report_path",
    type=_FILE,
    default=None,
    help="Also write the final snapshot's scores as one JSON object to this file.",
)
@device_option
@json_option
def hijacked(*, as_json: bool, report_path: Path | None, **options: Any) -> None:
    """Score a malicious (--hijack fsha) server's decoders on the victim's deployment tensors.

    Every snapshot decodes the attack split of the log (the deployed part 1's tensors) and, when
    the holder sent indices while training, the training tensors of the steps just before it
    (train_mse, train_ssim: how far the hijacking had got); scores are against the true images.

    \b
    Example:
      splitnn-attack hijacked --from-log runs/fsha/wire.log \\
        --decoders models/hijack/_anonymous --curve results/hijack/curve.csv
    """
    report, curve = score_hijacked(config_from(HijackedConfig, options))
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    if as_json:
        click.echo(json.dumps({**report.to_json(), "curve": curve}))
        return
    click.echo(f"scored {len(curve)} decoder snapshots on {report.images} tensors")
    for row in curve:
        click.echo(
            f"step {int(row['step']):>5}  MSE {row['mse']:.4f}  PSNR {row['psnr']:.2f} dB  "
            f"SSIM {row['ssim']:.3f}  validator {row['validator_accuracy']:.1f}%  "
            f"(its own steps' training tensors: MSE {row['train_mse']:.4f})"
        )
    for name, scores in report.baselines.items():
        click.echo(
            f"baseline {name}: MSE {scores['mse']:.4f}  SSIM {scores['ssim']:.3f}  "
            f"validator {scores['validator_accuracy']:.1f}%"
        )
    click.echo(f"figure: {report.figure}")
