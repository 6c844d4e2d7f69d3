"""`splitnn-server`: the computation server that hosts the head (model part 2)."""

from __future__ import annotations

import logging
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import torch

from splitnn.common.datasets import DATASETS
from splitnn.common.devices import resolve_device, use_device
from splitnn.common.logs import configure_logging
from splitnn.common.topology import DEFAULT, describe
from splitnn.options import (
    EXISTING_FILE,
    FLAG,
    config_from,
    device_option,
    dir_option,
    logging_options,
    option_table,
    seed_option,
)
from splitnn.programs import program
from splitnn.server.app import serve
from splitnn.server.config import MIN_STREAMS_PER_PARTY, ServerConfig
from splitnn.server.group_spec import GroupSpec
from splitnn.server.runs import StoredRun, remove_run, stored_runs

logger = logging.getLogger(__name__)


def _parse_groups(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> tuple[GroupSpec, ...]:
    try:
        specs = tuple(GroupSpec.parse(value) for value in values)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise click.BadParameter("two groups of the same name")
    return specs


@program("splitnn-server", example_option="PORT=50052")
@click.option("--host", default="127.0.0.1", help="Address to listen on (0.0.0.0 for all).")
@click.option("--port", type=click.IntRange(0, 65535), default=50051, help="0 picks a free port.")
@dir_option(
    "--model-dir",
    "models",
    help="Written: each run's heads under MODEL_DIR/heads/<party>/<run>/ and its resume states "
    "under MODEL_DIR/server/<party>/<run>/.",
)
@option_table(
    (
        "--max-batch-size",
        click.IntRange(1, 65536),
        1024,
        "Largest batch a data holder may send; sizes the gRPC message limit.",
    ),
    (
        "--threads",
        click.IntRange(1, 256),
        1,
        "Torch threads for the head; 1 leaves the cores to the data holder.",
    ),
)
@seed_option(help="Head seed when the data holder sends none.")
@option_table(
    (
        "--grace",
        click.FloatRange(0, 3600),
        10.0,
        "Seconds in-flight steps get on SIGTERM/SIGINT; the process ends within GRACE + 5 s.",
    ),
    (
        "--max-sessions",
        click.IntRange(1, 100_000),
        64,
        "Live sessions at most; one more is refused with RESOURCE_EXHAUSTED.",
    ),
    (
        "--max-streams",
        click.IntRange(2, 1_000_000),
        256,
        "Open calls at most (idle streams count; health checks do not).",
    ),
    (
        "--max-sessions-per-party",
        click.IntRange(1, 100_000),
        None,
        "Live sessions of one party (identity) at most, so no party can take them all. Default: "
        "a quarter of --max-sessions with --client-ca or --tokens; without, every caller is one "
        "anonymous party and the default is --max-sessions.",
    ),
    (
        "--max-streams-per-party",
        click.IntRange(MIN_STREAMS_PER_PARTY, 1_000_000),
        None,
        "Open calls of one party at most (a session holds up to 3). Default: a quarter of "
        "--max-streams with --client-ca or --tokens, else --max-streams.",
    ),
    (
        "--max-inflight",
        click.IntRange(1, 100_000),
        64,
        "Requests waiting for the head at most; more are refused at once, never queued.",
    ),
    (
        "--session-ttl",
        click.FloatRange(0.1),
        600.0,
        "Seconds idle before a session is saved and forgotten (its holder resumes it). A training "
        "group none of whose holders called or waited for this long drops its run.",
    ),
    (
        "--tls-cert",
        EXISTING_FILE,
        None,
        "The server's certificate (PEM): serve TLS. See splitnn-certs.",
    ),
    ("--tls-key", EXISTING_FILE, None, "The server's private key (PEM)."),
    (
        "--client-ca",
        EXISTING_FILE,
        None,
        "Mutual TLS: require client certificates signed by this CA; they name each party.",
    ),
    (
        "--tokens",
        EXISTING_FILE,
        None,
        "Identities by bearer token: lines of '<name> <holder|tap> <token>'.",
    ),
    (
        "--insecure",
        FLAG,
        None,
        "Allow plaintext on an address other than loopback (anyone on the path reads it).",
    ),
    (
        "--stop-after-runs",
        click.IntRange(1),
        None,
        "Stop (gracefully, exit 0) once N runs have trained (at least one step) and finished, and "
        "no session is live: one-shot deployments such as docker compose end by themselves.",
    ),
    (
        "--keep-checkpoints",
        click.IntRange(1, 10_000),
        3,
        "Head checkpoints kept per run: the newest K; writing another removes the oldest.",
    ),
    (
        "--list-runs",
        FLAG,
        None,
        "Do not serve: list the runs under --model-dir (OWNER/RUN, files, size) and exit.",
    ),
)
@click.option(
    "--remove-run",
    metavar="OWNER/RUN",
    default=None,
    help="Do not serve: remove this run's resume states and head checkpoints from --model-dir "
    "and exit. Stop the server that serves it first.",
)
@option_table(
    ("--tap-log", click.Path(dir_okay=False, path_type=Path), None,
     "COLLUSION MODE: append every received batch to this wire log."),
    ("--tap", FLAG, None, "COLLUSION MODE: serve received batches live (Tap service)."),
    ("--anonymous-tap", FLAG, None,
     "COLLUSION MODE without --client-ca or --tokens: let every (anonymous) caller subscribe "
     "to --tap; otherwise anonymous callers only train."),
)  # fmt: skip
@click.option(
    "--group",
    "groups",
    multiple=True,
    metavar="NAME=TOPOLOGY:K[@ID,...]",
    callback=_parse_groups,
    help="Declare a training group of K data holders (repeatable). TOPOLOGY: "
    f"{describe()}. @ID,... names the party (certificate CN or token name) of each index "
    "0..K-1; others are refused as if there were no such group. Without it an index goes to "
    f"the first party that takes it. E.g. --group clinics={DEFAULT.name}:3@alice,bob,carol",
)
@option_table(
    (
        "--hijack",
        click.Choice(["fsha"]),
        None,
        "MALICIOUS SERVER: hijack every holder's part 1 (feature-space hijacking) instead of "
        "returning the task's gradient; replies look honest. Off by default; not with --group.",
    ),
    (
        "--hijack-data",
        click.Choice(DATASETS),
        None,
        "With --hijack: the public data set whose auxiliary slice trains pilot and decoder "
        "(default: mnist5k).",
    ),
)
@dir_option("--data-dir", "data", help="With --hijack: where --hijack-data is read.")
@option_table(
    ("--hijack-pretrain-steps", click.IntRange(0), 300,
     "With --hijack: autoencoder steps of pilot and decoder before serving."),
    ("--hijack-snapshot-every", click.IntRange(0), 0,
     "With --hijack: write the decoder every N holder steps under "
     "MODEL_DIR/hijack/<party>/<run>/ (0: only when the run finishes)."),
)  # fmt: skip
@device_option
@logging_options
def main(
    *, verbose: int, quiet: bool, list_runs: bool, remove_run: str | None, **options: Any
) -> None:
    """Serve the head of the split model over gRPC.

    Each data holder opens a session, streams its cut-layer tensors with labels, and receives
    the gradient w.r.t. what it sent. Prints "listening on HOST:PORT" once bound; stops
    gracefully on SIGTERM/SIGINT (finishes in-flight steps, saves every session, exits 0).

    Plaintext is served on loopback only (or with --insecure); --tls-cert/--tls-key serve TLS,
    --client-ca requires client certificates (mutual TLS) and --tokens accepts bearer tokens.
    A run belongs to the identity that opened it: no other party can touch or see it.

    Each run's resume state is saved under MODEL_DIR/server/<party>/<run>/ at the save points
    its data holder marks (every epoch end and every --save-every steps), when its session
    expires or closes, and on shutdown: after a restart, data holders continue where both
    sides saved.

    --list-runs and --remove-run OWNER/RUN act on MODEL_DIR and exit without serving.

    \b
    Example (then splitnn-client --server 127.0.0.1:50051):
      splitnn-server --port 50051 --model-dir models
    """
    configure_logging(verbose=verbose, quiet=quiet)
    cfg = config_from(ServerConfig, options)
    if cfg.hijack is not None and cfg.groups:
        raise click.UsageError("--hijack serves lone runs only: drop --group")
    device = resolve_device(cfg.device)
    if cfg.hijack is not None and device.type != "cpu":
        logger.warning("--hijack computes on the CPU only: serving on the CPU, not %s", device)
        device = torch.device("cpu")
    use_device(device)
    if list_runs or remove_run is not None:
        _manage_runs(cfg.model_dir, list_runs=list_runs, remove=remove_run)
        return

    def announce(bound_host: str, bound_port: int) -> None:
        click.echo(f"listening on {bound_host}:{bound_port}", nl=True)
        sys.stdout.flush()

    serve(cfg, on_bound=announce)


def _manage_runs(model_dir: Path, *, list_runs: bool, remove: str | None) -> None:
    """--list-runs and --remove-run: one line per run on stdout."""
    if list_runs and remove is not None:
        raise click.UsageError("--list-runs and --remove-run go one at a time")
    if remove is not None:
        click.echo(f"removed {_describe_run(remove_run(model_dir, remove))}")
        return
    runs = stored_runs(model_dir)
    for run in runs:
        click.echo(_describe_run(run))
    if not runs:
        click.echo(f"no runs under {model_dir}", err=True)


def _describe_run(run: StoredRun) -> str:
    when = datetime.fromtimestamp(run.modified).isoformat(sep=" ", timespec="seconds")
    return (
        f"{run.name}  resume states: {run.resume_states}  head checkpoints: "
        f"{run.head_checkpoints}  {_size(run.size)}  modified {when}"
    )


def _size(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"
