"""What does training in a group cost per step, next to training alone?

One `splitnn-server` process over loopback gRPC serves three sessions of the same data holder's
model at batch 128, stepped in turn so that machine noise hits them alike:
(a) alone: a plain session; (b) group: the only member of a ``shared-head`` group (each step
waits for its turn with a `Sync` call, and the server keeps a SHA-256 and the reply of every
step for a resume); (c) hand-over: the only member of a ``round-robin`` group of one batch per
epoch, so every step also hands in part 1 (18.5 MB with its SHA-256) and takes it back at its
next turn: the cost a round-robin or splitfed group pays once per holder and epoch.

Prints per-kind medians and, last, ``median ratio group/alone: X`` and ``median ratio
hand-over/alone: Y`` (medians of the per-round ratios).
Run: .venv/bin/python bench/groups.py [--rounds 60]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from tempfile import TemporaryDirectory

import torch

from splitnn.client.split_trainer import SplitTrainer
from splitnn.client.transport import GroupSettings, ServerLink, SessionSettings
from splitnn.common.codec import StepId
from splitnn.common.models import build_body
from splitnn.common.noise import LaplaceNoise
from splitnn.common.processes import ServerProcess
from splitnn.common.weights import from_blob, to_blob

BATCH = 128


def trainer_on(link: ServerLink, run: str) -> SplitTrainer:
    return SplitTrainer(
        body=build_body(0),
        link=link,
        run=run,
        noise=LaplaceNoise(0.0),
        nopeek=0.0,
        lr=1e-4,
        batch_size=BATCH,
        seed=0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(BATCH, 1, 28, 28, generator=generator)
    labels = torch.randint(0, 10, (BATCH,), generator=generator)
    steps = args.rounds + args.warmup

    def settings(run: str, group: GroupSettings | None = None) -> SessionSettings:
        return SessionSettings(
            run=run, num_classes=10, lr=1e-4, seed=1, max_batch_size=BATCH, group=group
        )

    shared = GroupSettings(name="shared", holder=0, batches_per_epoch=steps, samples=1, epochs=1)
    turns = GroupSettings(name="turns", holder=0, batches_per_epoch=1, samples=1, epochs=steps)
    with TemporaryDirectory() as tmp:
        groups = ["--group", "shared=shared-head:1", "--group", "turns=round-robin:1"]
        server_args = ["--threads", "1", "--model-dir", tmp, "-q", *groups]
        with ServerProcess(server_args) as server:
            address = server.address
            with (
                ServerLink(address, settings("alone")) as alone_link,
                ServerLink(address, settings("shared", shared)) as shared_link,
                ServerLink(address, settings("turns", turns)) as turns_link,
            ):
                alone = trainer_on(alone_link, "alone")
                member = trainer_on(shared_link, "shared")
                passer = trainer_on(turns_link, "turns")
                counters = {"alone": 0, "shared": 0, "turns": 0}

                def alone_step() -> None:
                    alone.step(StepId("alone", 1, counters["alone"]), images, labels)
                    counters["alone"] += 1

                def group_step() -> None:
                    step = StepId("shared", 1, counters["shared"])
                    shared_link.turn(1, step.batch)
                    member.step(step, images, labels)
                    counters["shared"] += 1

                def handover_step() -> None:
                    epoch = counters["turns"] + 1
                    blob = turns_link.turn(epoch, 0)
                    if blob is not None:
                        passer.body.load_state_dict(from_blob(blob))
                    passer.step(StepId("turns", epoch, 0), images, labels)
                    weights = to_blob(passer.body.state_dict())
                    turns_link.hand_in(epoch, weights)
                    counters["turns"] += 1

                times = measure([alone_step, group_step, handover_step], args)

    alone_t, group_t, handover_t = times
    print(f"rounds: {args.rounds}, batch {BATCH}, torch threads here: {torch.get_num_threads()}")
    print(f"alone step median:     {1000 * statistics.median(alone_t):.1f} ms")
    print(f"group step median:     {1000 * statistics.median(group_t):.1f} ms")
    print(f"hand-over step median: {1000 * statistics.median(handover_t):.1f} ms")
    group_ratio = statistics.median(g / a for g, a in zip(group_t, alone_t, strict=True))
    handover_ratio = statistics.median(h / a for h, a in zip(handover_t, alone_t, strict=True))
    print(f"median ratio group/alone: {group_ratio:.3f}")
    print(f"median ratio hand-over/alone: {handover_ratio:.3f}")


def measure(steps: list[Callable[[], None]], args: argparse.Namespace) -> list[list[float]]:
    """Runs the steps round by round, rotating which goes first."""
    for _ in range(args.warmup):
        for step in steps:
            step()
    times: list[list[float]] = [[] for _ in steps]
    for round_ in range(args.rounds):
        shift = round_ % len(steps)
        for i in [*range(shift, len(steps)), *range(shift)]:
            began = time.perf_counter()
            steps[i]()
            times[i].append(time.perf_counter() - began)
    return times


if __name__ == "__main__":
    main()
