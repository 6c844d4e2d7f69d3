"""`splitnn-client`: the data holder that trains model part 1 through the server."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from splitnn.client.app import run
from splitnn.client.config import ClientConfig
from splitnn.client.dp import NOPEEK_REFUSAL, DPSettings
from splitnn.common.logs import configure_logging
from splitnn.common.models import PLAIN_BATCH_SIZE
from splitnn.common.reports import RunReport
from splitnn.options import (
    FLAG,
    NOISE,
    config_from,
    connect_timeout_option,
    credential_options,
    dataset_option,
    device_option,
    dir_option,
    dp_options,
    guard_options,
    json_option,
    logging_options,
    lr_option,
    option_table,
    partition_options,
    training_options,
)
from splitnn.programs import program


@program("splitnn-client", example_option="SERVER=host:50051")
@click.option("--server", default="127.0.0.1:50051", help="Address of splitnn-server, HOST:PORT.")
@dataset_option()
@training_options(whose="", batch_size=PLAIN_BATCH_SIZE)
@click.option(
    "--eval-noise",
    type=NOISE,
    default=None,
    help="Noise scale for test/deployment (post-training noise). Default: --noise.",
)
@lr_option(help="Learning rate (Adam).")
@dir_option("--model-dir", "models", help="Checkpoints go to MODEL_DIR/classifiers.")
@dir_option("--data-dir", "data")
@click.option(
    "--run",
    default=None,
    help="Session name on the server. Default: from dataset, noise, nopeek, seed.",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 256),
    default=None,
    help="Torch threads. Default: OMP_NUM_THREADS where set, else all cores.",
)
@option_table(
    ("--deploy", FLAG, None, "After training, run the attack-evaluation images through the model."),
)
@connect_timeout_option
@option_table(
    ("--step-timeout", click.FloatRange(0.1), 60.0,
     "Seconds one step may take before it is sent again (answered once, never applied twice)."),
    ("--reconnect-timeout", click.FloatRange(0), 120.0,
     "Seconds to keep retrying when the server goes away; it resumes the run when back."),
    ("--save-every", click.IntRange(0), 100,
     "Save points every N steps besides each epoch end (0: epoch ends only)."),
    ("--resume", FLAG, None,
     "Continue this run from its last save point (after this process died)."),
    ("--restart", FLAG, None,
     "Start the run over even if an interrupted one left a state to resume."),
    ("--send-indices", FLAG, None,
     "Evaluation harness only: send each batch's sample indices so that an attack can be "
     "scored against the true images. A real data holder never reveals them."),
)  # fmt: skip
@click.option(
    "--group",
    default=None,
    help="Train as one holder of this training group of the server (its --group). The server's "
    "topology decides what is shared; every holder of the group gives the same --seed, "
    "--epochs, --lr, --holders, --partition and --alpha, and its own --holder.",
)
@click.option(
    "--holder", type=click.IntRange(0), default=0, help="With --group: this holder's index 0..K-1."
)
@partition_options(
    holders_help="With --group: K; the training set is shared out among K holders, this one "
    "trains on share --holder."
)
@click.option(
    "--group-timeout",
    type=click.FloatRange(1),
    default=3600.0,
    help="Seconds to wait for the other holders of the group at one synchronisation.",
)
@guard_options
@dp_options
@credential_options
@click.option(
    "--from-checkpoint",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Do not train: evaluate this trained part-1 checkpoint (settings from its manifest; "
    "the server loads the matching head). With --eval-noise: post-training noise.",
)
@device_option
@json_option
@logging_options
def main(*, as_json: bool, quiet: bool, verbose: int, **options: Any) -> None:
    """Train the data holder's part of the split model through a splitnn-server.

    Each batch goes through part 1 here; the cut tensor, with Laplace noise, is sent to the
    server, which returns the gradient. Validates every epoch, keeps the best-validation epoch
    (MODEL_DIR/classifiers/<dataset>_<b>noise_<W>nopeek_epoch=<N>.ckpt, the server writes the
    matching .head.ckpt) and reports its test accuracy.

    Both sides save their state at every epoch end and every --save-every steps. If the server
    goes away, this side retries for --reconnect-timeout seconds and continues where both saved;
    if this process dies, run the same command with --resume.

    With --tls-ca the channel is TLS (the server's certificate must name its host, or
    --tls-server-name); with --tls-cert/--tls-key it is mutual TLS, the certificate naming this
    party (see splitnn-certs). --token-file sends a bearer token instead.

    --guard splitguard checks, while training, that the server's gradients follow the labels:
    after --guard-start-after steps, some batches are fakes with shifted labels on which part 1
    takes no step; a score below --guard-threshold is the alarm (a hijacking server), which
    warns, or with --guard-action stop saves the state and exits 4. Fake batches do not count in
    the reported training loss and accuracy.

    --dp-epsilon E (or --dp-noise-multiplier S) trains part 1 with DP-SGD: Poisson batches of
    expected size --batch-size, each sample's gradient clipped to --dp-max-grad-norm, Gaussian
    noise; the report gives the epsilon spent (RDP accountant) at --dp-delta. Its default
    learning rate is 1e-3. Epsilon covers part 1's parameters, not the cut tensors sent.

    \b
    Example (with a splitnn-server listening on port 50051):
      splitnn-client --server 127.0.0.1:50051 --dataset mnist5k --noise 0.5 --epochs 10
    With the guard, stopping at its alarm:
      splitnn-client --server 127.0.0.1:50051 --epochs 5 --guard splitguard --guard-action stop
    With DP-SGD at epsilon 3, delta 1e-5:
      splitnn-client --server 127.0.0.1:50051 --epochs 10 --dp-epsilon 3 --dp-delta 1e-5
    """
    configure_logging(verbose=verbose, quiet=quiet or as_json)
    _check(**options)
    report = run(config_from(ClientConfig, options, progress=not quiet and sys.stderr.isatty()))
    if as_json:
        click.echo(json.dumps(report.to_json()))
    else:
        _print_summary(report)


def _check(
    *,
    server: str,
    resume: bool,
    restart: bool,
    from_checkpoint: Path | None,
    group: str | None,
    holder: int,
    holders: int,
    guard: str | None,
    dp: DPSettings | None,
    nopeek: float,
    **others: Any,
) -> None:
    """Usage errors the options' types cannot see."""
    host, _, port = server.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"expected HOST:PORT, got {server!r}", param_hint="--server")
    if resume and (restart or from_checkpoint is not None):
        other = "--restart" if restart else "--from-checkpoint"
        raise click.UsageError(f"--resume cannot be combined with {other}")
    if group is None and (holders != 1 or holder != 0):
        raise click.UsageError("--holder and --holders need --group")
    if holder >= holders:
        raise click.BadParameter(
            f"holder {holder} of {holders}: 0..{holders - 1}", param_hint="--holder"
        )
    if group is not None and from_checkpoint is not None:
        raise click.UsageError("--group cannot be combined with --from-checkpoint")
    if guard is not None and (group is not None or from_checkpoint is not None):
        # A group's steps interleave several holders' batches; a served model trains no more.
        other = "--group" if group is not None else "--from-checkpoint"
        raise click.UsageError(f"--guard watches a lone holder's training: not with {other}")
    if dp is not None:
        if nopeek > 0:
            raise click.UsageError(NOPEEK_REFUSAL)
        if group is not None or from_checkpoint is not None:
            other = "--group" if group is not None else "--from-checkpoint"
            raise click.UsageError(f"DP-SGD trains a lone holder's part 1: not with {other}")


def _print_summary(report: RunReport) -> None:
    click.echo(f"dataset: {report.dataset_description}")
    click.echo(
        f"noise b={report.noise:g} (evaluation b={report.eval_noise:g}), nopeek W={report.nopeek:g}"
    )
    group = report.group
    if group is None:
        click.echo(f"best epoch: {report.best_epoch}/{report.epochs}")
    else:
        alpha = f" alpha {group.alpha:g}" if group.alpha is not None else ""
        click.echo(
            f"group {group.name} ({group.topology}): holder {group.holder} of {group.holders}, "
            f"{group.train_samples} training samples ({group.partition}{alpha}); "
            f"final epoch {report.best_epoch}"
        )
    if report.train_accuracy is not None:
        click.echo(f"train accuracy: {report.train_accuracy:.2f}%")
    click.echo(f"val accuracy:   {report.val_accuracy:.2f}%")
    tested = f" of {report.test_samples} images" if report.test_samples is not None else ""
    click.echo(f"test accuracy:  {report.test_accuracy:.2f}%{tested}")
    if report.dp_epsilon is not None:
        click.echo(
            f"DP-SGD: epsilon {report.dp_epsilon:.3f} spent at delta {report.dp_delta:g} "
            f"(RDP accountant; sigma {report.dp_noise_multiplier:.4f}, "
            f"C {report.dp_max_grad_norm:g}, q {report.dp_sample_rate:.5f})"
        )
    click.echo(f"throughput: {report.samples_per_second:.0f} samples/s")
    if report.guard is not None:
        lowest = min((s.score for s in report.guard_scores), default=None)
        scored = f"lowest score {lowest:.3f}" if lowest is not None else "no score yet"
        alarm = report.guard_detected_at_step
        flagged = f"ALARM at step {alarm}" if alarm is not None else "no alarm"
        click.echo(f"guard {report.guard}: {len(report.guard_scores)} scores, {scored}; {flagged}")
    click.echo(f"checkpoint: {report.checkpoint} (server: {report.head_checkpoint})")
