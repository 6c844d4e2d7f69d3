"""`splitnn-sim`: server, victim data holder and attacker as three processes on loopback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from splitnn.common import exits
from splitnn.common.certs import CertificateError
from splitnn.common.datasets import DATASETS
from splitnn.common.logs import configure_logging
from splitnn.common.models import DECODER_NAMES, NOPEEK_BATCH_SIZE, PLAIN_BATCH_SIZE
from splitnn.common.processes import ProcessError
from splitnn.common.seeds import SEED_TYPE
from splitnn.sim.app import SimConfig, SimSummary, run


@click.command(context_settings={"auto_envvar_prefix": "SPLITNN_SIM", "show_default": True})
@click.option("--dataset", type=click.Choice(DATASETS), default="mnist5k")
@click.option("--noise", type=click.FloatRange(0), default=0.0, help="Victim's Laplace scale b.")
@click.option("--nopeek", type=click.FloatRange(0), default=0.0, help="Victim's NoPeek weight W.")
@click.option("--epochs", type=click.IntRange(1), default=10, help="Victim's training epochs.")
@click.option(
    "--batch-size",
    type=click.IntRange(2),
    default=None,
    help=f"Victim's batch size. Default: {PLAIN_BATCH_SIZE}, or {NOPEEK_BATCH_SIZE} with NoPeek.",
)
@click.option("--max-steps", type=click.IntRange(1), default=None, help="Smoke runs.")
@click.option("--seed", type=SEED_TYPE, default=0)
@click.option("--aux", type=click.Choice(DATASETS), default=None, help="Attacker's data set.")
@click.option("--aux-fraction", type=click.FloatRange(0, 1, min_open=True), default=1.0)
@click.option("--set-noise", type=click.FloatRange(0), default=None)
@click.option(
    "--decoder", type=click.Choice(DECODER_NAMES), default="deep", help="Attacker's decoder."
)
@click.option("--attack-epochs", type=click.IntRange(1), default=30)
@click.option("--validator-epochs", type=click.IntRange(1), default=5)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs/sim"),
    help="Holds the wire log of this simulation.",
)
@click.option(
    "--model-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("models")
)
@click.option(
    "--figure",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("results/figures/sim_reconstructions.png"),
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the results.")
@click.option("-q", "--quiet", is_flag=True)
def main(as_json: bool, quiet: bool, **options: Any) -> None:
    """Run the three parties of the threat model as separate processes on loopback.

    \b
    1. splitnn-server in collusion mode, logging every received batch to WORKDIR/wire.log
    2. splitnn-client, the victim, trains with --noise/--nopeek and then runs its
       deployment-time images (the attack-evaluation slice) through the split model
    3. splitnn-attack inverts the intercepted deployment tensors and scores them
    Then prints victim accuracy and attack scores and writes the reconstruction figure.
    Server and victim speak mutual TLS with development certificates made under
    WORKDIR/certs (see splitnn-certs).
    """
    configure_logging(quiet=quiet or as_json)
    try:
        summary = run(SimConfig(quiet=quiet or as_json, **options))
    except (ProcessError, CertificateError, OSError) as error:
        exits.fail("splitnn-sim", str(error), exits.FAILED)
    except KeyboardInterrupt:
        exits.fail("splitnn-sim", "interrupted", exits.INTERRUPTED)
    if as_json:
        click.echo(json.dumps(summary.to_json()))
    else:
        _print_table(summary)


def _print_table(s: SimSummary) -> None:
    originals = f"(originals {s.validator_accuracy_originals:.1f}%)"
    rows = [
        ("data set", s.dataset),
        ("victim defence", f"noise b={s.noise:g}, NoPeek W={s.nopeek:g}"),
        ("victim test accuracy", f"{s.test_accuracy:.2f}% (best epoch {s.best_epoch})"),
        ("attack images", str(s.attack_images)),
        ("attack MSE", f"{s.attack_mse:.4f}"),
        ("attack PSNR", f"{s.attack_psnr:.2f} dB"),
        ("attack SSIM", f"{s.attack_ssim:.3f}"),
        ("attack dCor(x, x_hat)", f"{s.attack_dcor:.3f}"),
        ("validator on reconstructions", f"{s.attack_validator_accuracy:.1f}% {originals}"),
        ("figure", s.figure),
        ("wire log", s.wire_log),
        ("wall time", f"{s.seconds:.0f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")
