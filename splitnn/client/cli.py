"""`splitnn-client`: the data holder that trains model part 1 through the server."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from splitnn.client.app import run
from splitnn.client.config import ClientConfig
from splitnn.client.resume import ResumeError
from splitnn.client.transport import GroupStalled, ServerRefused, ServerUnreachable
from splitnn.common import exits
from splitnn.common.checkpoints import CheckpointError
from splitnn.common.credentials import CredentialError, Credentials, credential_options
from splitnn.common.datasets import DATASETS, DatasetError
from splitnn.common.logs import configure_logging
from splitnn.common.models import NOPEEK_BATCH_SIZE, PLAIN_BATCH_SIZE
from splitnn.common.partitions import SCHEMES, PartitionError
from splitnn.common.reports import RunReport
from splitnn.common.seeds import SEED_TYPE

_NONNEG = click.FloatRange(min=0.0, max=1e6)


@click.command(context_settings={"auto_envvar_prefix": "SPLITNN_CLIENT", "show_default": True})
@click.option("--server", default="127.0.0.1:50051", help="Address of splitnn-server, HOST:PORT.")
@click.option(
    "--dataset",
    type=click.Choice(DATASETS),
    default="mnist5k",
    help="mnist5k is embedded (offline); the others download to --data-dir.",
)
@click.option("--noise", type=_NONNEG, default=0.0, help="Laplace scale b on the cut tensor.")
@click.option("--nopeek", type=_NONNEG, default=0.0, help="NoPeek weight W (distance correlation).")
@click.option(
    "--eval-noise",
    type=_NONNEG,
    default=None,
    help="Noise scale for test/deployment (post-training noise). Default: --noise.",
)
@click.option("--epochs", type=click.IntRange(1, 10_000), default=10)
@click.option(
    "--batch-size",
    type=click.IntRange(2, 1024),
    default=PLAIN_BATCH_SIZE,
    help=f"The study used {PLAIN_BATCH_SIZE}, and {NOPEEK_BATCH_SIZE} with NoPeek.",
)
@click.option("--lr", type=click.FloatRange(min=0.0, min_open=True, max=1.0), default=1e-4)
@click.option("--seed", type=SEED_TYPE, default=0, help="Seeds weights, shuffling and noise.")
@click.option(
    "--max-steps",
    type=click.IntRange(1),
    default=None,
    help="Batches per epoch at most (smoke runs).",
)
@click.option(
    "--model-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("models"),
    help="Checkpoints go to MODEL_DIR/classifiers.",
)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("data"))
@click.option(
    "--run",
    "run_name",
    default=None,
    help="Session name on the server. Default: from dataset, noise, nopeek, seed.",
)
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="Default: all cores.")
@click.option(
    "--deploy",
    is_flag=True,
    help="After training, run the attack-evaluation images through the model.",
)
@click.option(
    "--connect-timeout",
    type=click.FloatRange(0.1),
    default=30.0,
    help="Seconds to wait for the server.",
)
@click.option(
    "--step-timeout",
    type=click.FloatRange(0.1),
    default=60.0,
    help="Seconds one step may take before it is sent again (answered once, never applied twice).",
)
@click.option(
    "--reconnect-timeout",
    type=click.FloatRange(0),
    default=120.0,
    help="Seconds to keep retrying when the server goes away; it resumes the run when back.",
)
@click.option(
    "--save-every",
    type=click.IntRange(0),
    default=100,
    help="Save points every N steps besides each epoch end (0: epoch ends only).",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue this run from its last save point (after this process died).",
)
@click.option(
    "--restart",
    is_flag=True,
    help="Start the run over even if an interrupted one left a state to resume.",
)
@click.option(
    "--send-indices",
    is_flag=True,
    help="Evaluation harness only: send each batch's sample indices so that an attack can be "
    "scored against the true images. A real data holder never reveals them.",
)
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
@click.option(
    "--holders",
    type=click.IntRange(1, 64),
    default=1,
    help="With --group: K; the training set is shared out among K holders, this one trains on "
    "share --holder.",
)
@click.option(
    "--partition",
    type=click.Choice(SCHEMES),
    default="iid",
    help="With --group: how the training set is shared out (dirichlet: non-IID by label).",
)
@click.option(
    "--alpha",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Dirichlet concentration (--partition dirichlet; small: skewed). Default: 0.5.",
)
@click.option(
    "--group-timeout",
    type=click.FloatRange(1),
    default=3600.0,
    help="Seconds to wait for the other holders of the group at one synchronisation.",
)
@credential_options
@click.option(
    "--from-checkpoint",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Do not train: evaluate this trained part-1 checkpoint (settings from its manifest; "
    "the server loads the matching head). With --eval-noise: post-training noise.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the results.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars, only warnings.")
@click.option("-v", "--verbose", count=True)
def main(
    server: str,
    dataset: str,
    noise: float,
    nopeek: float,
    eval_noise: float | None,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    max_steps: int | None,
    model_dir: Path,
    data_dir: Path,
    run_name: str | None,
    threads: int | None,
    deploy: bool,
    connect_timeout: float,
    step_timeout: float,
    reconnect_timeout: float,
    save_every: int,
    resume: bool,
    restart: bool,
    send_indices: bool,
    group: str | None,
    holder: int,
    holders: int,
    partition: str,
    alpha: float | None,
    group_timeout: float,
    credentials: Credentials,
    from_checkpoint: Path | None,
    as_json: bool,
    quiet: bool,
    verbose: int,
) -> None:
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

    Example: splitnn-client --server 127.0.0.1:50051 --dataset mnist5k --noise 0.5 --epochs 10
    """
    configure_logging(verbose=verbose, quiet=quiet or as_json)
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
    if alpha is not None and partition != "dirichlet":
        raise click.UsageError("--alpha needs --partition dirichlet")
    if group is not None and from_checkpoint is not None:
        raise click.UsageError("--group cannot be combined with --from-checkpoint")
    cfg = ClientConfig(
        server=server,
        dataset=dataset,
        noise=noise,
        nopeek=nopeek,
        eval_noise=eval_noise,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        max_steps=max_steps,
        model_dir=model_dir,
        data_dir=data_dir,
        run=run_name,
        threads=threads,
        deploy=deploy,
        connect_timeout=connect_timeout,
        step_timeout=step_timeout,
        reconnect_timeout=reconnect_timeout,
        save_every=save_every,
        resume=resume,
        restart=restart,
        send_indices=send_indices,
        credentials=credentials,
        from_checkpoint=from_checkpoint,
        group=group,
        holder=holder,
        holders=holders,
        partition=partition,
        alpha=alpha,
        group_timeout=group_timeout,
        progress=not quiet and sys.stderr.isatty(),
    )
    try:
        report = run(cfg)
    except ServerUnreachable as error:
        exits.fail("splitnn-client", str(error), exits.UNREACHABLE)
    except ResumeError as error:
        exits.fail("splitnn-client", str(error), exits.USAGE)
    except (
        ServerRefused,
        DatasetError,
        CheckpointError,
        CredentialError,
        PartitionError,
        GroupStalled,
    ) as error:
        exits.fail("splitnn-client", str(error), exits.FAILED)
    except KeyboardInterrupt:
        exits.fail("splitnn-client", "interrupted", exits.INTERRUPTED)
    if as_json:
        click.echo(json.dumps(report.to_json()))
    else:
        _print_summary(report)


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
    click.echo(f"test accuracy:  {report.test_accuracy:.2f}%")
    click.echo(f"throughput: {report.samples_per_second:.0f} samples/s")
    click.echo(f"checkpoint: {report.checkpoint} (server: {report.head_checkpoint})")
