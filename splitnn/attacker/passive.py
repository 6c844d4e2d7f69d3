"""The honest-but-curious server alone: it holds its head and what arrived on the wire, never the
data holder's part 1, and builds a substitute part 1 from those and public images.

What it uses, all its own in this threat model: the wire log its server kept (the cut tensors of
training and deployment and the labels sent in the clear), the head checkpoint its server saved,
and the attacker's public (auxiliary) images with their labels.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from splitnn.attacker.intercept import (
    InterceptError,
    received_from_log,
    training_batches,
    training_run,
)
from splitnn.attacker.oracle import file_sha256, resolve_checkpoint
from splitnn.attacker.substitute import (
    MatchTarget,
    SubstituteEnsemble,
    SubstituteOracle,
    SubstituteSettings,
    train_substitute,
)
from splitnn.common.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from splitnn.common.datasets import Subset
from splitnn.common.devices import on_device, to_compute
from splitnn.common.models import Head, build_head, make_optimizer
from splitnn.common.seeds import SEEDING, seed_for

logger = logging.getLogger(__name__)


def replay_heads(log: Path, *, run: str, spec: dict[str, object], last: int) -> list[Head]:
    """The server's head as it stood after each of the last `last` training epochs of `run`.

    The server never kept those snapshots (it saves the best head only), but it can rebuild them:
    the session told it the head's seed and learning rate (`spec`, the saved head's manifest),
    and its wire log holds every batch the head trained on, in order. Replaying them with the
    server's own step (Adam on the mean cross-entropy) retraces the head's path.

    Raises:
        InterceptError: the log holds no training batches of `run`.
    """
    batches = training_batches(log, run=run)
    if not batches:
        raise InterceptError(f"no training batches of run {run!r} in {log} to replay")
    head = build_head(int(str(spec["seed"])), int(str(spec.get("num_classes", 10))))
    optimizer = make_optimizer(head, float(str(spec["lr"])))
    snapshots: list[Head] = []
    for row, (epoch, cut, labels) in enumerate(batches):
        head.train()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(head(to_compute(cut)), to_compute(labels)).backward()
        optimizer.step()
        if row + 1 == len(batches) or batches[row + 1][0] != epoch:
            snapshots.append(copy.deepcopy(head).eval())
    return snapshots[-last:]


@dataclass(frozen=True)
class ServerHead:
    """The server's saved head (eval mode), its file and its manifest (seed, lr, classes)."""

    head: Head
    path: Path
    manifest: dict[str, Any]


def load_head(path: Path) -> ServerHead:
    """The server's head saved at `path` (a quoted ``*`` pattern picks the newest head).

    Raises:
        CheckpointError: no head there, or its weights do not fit part 2's architecture.
    """
    path = resolve_checkpoint(path, part="head")
    state, manifest = load_checkpoint(path)
    if manifest.get("part") != "head":
        raise CheckpointError(f"{path} is not a server's head checkpoint")
    head = on_device(Head(int(manifest.get("num_classes", 10))))
    try:
        head.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(f"{path} does not hold part 2's weights: {error}") from None
    return ServerHead(head.eval(), path, manifest)


@torch.no_grad()
def predict(head: nn.Module, cuts: torch.Tensor, *, batch_size: int = 500) -> torch.Tensor:
    """The head's classes for cut tensors float32 [N,500] -> int64 [N]."""
    head.eval()
    out = [
        head(to_compute(cuts[s : s + batch_size])).argmax(1).cpu()
        for s in range(0, len(cuts), batch_size)
    ]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.int64)


def substitute_oracle(
    *,
    log: Path,
    run: str,
    public: Subset,
    server_head: ServerHead | None,
    settings: SubstituteSettings,
    seed: int,
    progress: bool = True,
) -> SubstituteOracle | SubstituteEnsemble:
    """Trains a substitute part 1 on `public` against run `run`'s received tensors in `log`;
    with `settings.substitutes` K > 1, K of them from different seeds, queried in turn.

    The label term goes through the saved head and, with `settings.head_snapshots` N, also the
    head as it stood after each of the last N epochs (`replay_heads`).

    Raises:
        InterceptError: the log holds no labelled tensors of `settings.match_splits` for `run`.
        ValueError: the label term is on (`ce_weight` > 0) but `head` is None.
    """
    # The attacked tensors may come from a redeployment under a run of their own.
    run = training_run(log, run=run)
    received = received_from_log(
        log, splits=settings.match_splits, run=run, last_epochs=settings.match_epochs or None
    )
    logger.info(
        "substitute: matching %d received tensors (%s) with %d public images",
        len(received.activations),
        ", ".join(received.splits),
        len(public.images),
    )
    target = MatchTarget(received.activations, received.labels, public.images, public.labels)
    heads: list[nn.Module] = []
    if server_head is not None:
        heads.append(server_head.head)
        if settings.head_snapshots:
            spec = server_head.manifest
            heads += replay_heads(log, run=run, spec=spec, last=settings.head_snapshots)
    identity = {
        "wire_log_sha256": file_sha256(log),
        "run": run,
        "head_sha256": None if server_head is None else file_sha256(server_head.path),
        "substitute": settings.to_json(),
        "seed": seed,
        "seeding": SEEDING,
    }
    members = []
    for k in range(settings.substitutes):
        # The first substitute has the role's own stream; further ones a member's stream each.
        member = k or None
        body, losses = train_substitute(
            target=target,
            heads=heads,
            settings=settings,
            seed=seed_for(seed, "substitute", member=member),
            progress=progress,
        )
        logger.info("substitute %d: loss %.4f after %d epochs", k, losses[-1], len(losses))
        noise_seed = seed_for(seed, "oracle_noise", member=member)
        members.append(
            SubstituteOracle(body, noise=settings.noise, seed=noise_seed, identity=identity)
        )
    return members[0] if len(members) == 1 else SubstituteEnsemble(members)


def save_substitutes(path: Path, oracle: SubstituteOracle | SubstituteEnsemble) -> list[Path]:
    """Writes each substitute's weights with how it was made (``part`` = ``substitute``) as
    `path`, or for an ensemble `path` with ``.<k>`` before its suffix; returns the files."""
    if isinstance(oracle, SubstituteOracle):
        members, paths = [oracle], [path]
    else:
        members = list(oracle.members)
        paths = [path.with_name(f"{path.stem}.{k}{path.suffix}") for k in range(len(members))]
    for member, file in zip(members, paths, strict=True):
        save_checkpoint(file, member.body.state_dict(), {"part": "substitute", **member.describe()})
    return paths
