"""What does the data holder's guard (SplitGuard) cost in training time?

Two data holders train side by side in this process through one real `splitnn-server` process
over loopback gRPC, on the same mnist5k batches (batch 128): one without a guard, one with
SplitGuard at its defaults but from the first step (``start_after=0``, so every step is planned
and about one in ten is a fake batch). Each pair runs one short epoch (`--batches` steps) of each,
the order flipping every pair so that machine noise hits both alike.

Two costs, both guard / none: per step (a fake step skips part 1's optimiser step, a recorded
step adds a first-layer gradient to the guard's sums), and per trained sample (fake batches train
nothing, so the same training needs more steps). Prints per-side medians and, last,
``median ratio: X`` (per trained sample, the median of the per-pair ratios).

Run: .venv/bin/python bench/guard.py [--pairs 10] [--batches 12]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import torch

from splitnn.client.guard import GuardSettings, SplitGuard
from splitnn.client.progress import Progress
from splitnn.client.split_trainer import SplitTrainer
from splitnn.client.transport import ServerLink, SessionSettings
from splitnn.common.datasets import Subset, load_splits
from splitnn.common.models import build_body
from splitnn.common.noise import LaplaceNoise
from splitnn.common.processes import ServerProcess

BATCH = 128


def trainer(link: ServerLink, run: str, guard: SplitGuard | None) -> SplitTrainer:
    return SplitTrainer(
        body=build_body(0),
        link=link,
        run=run,
        noise=LaplaceNoise(0.0),
        nopeek=0.0,
        lr=1e-4,
        batch_size=BATCH,
        seed=0,
        guard=guard,
    )


def epoch(split: SplitTrainer, data: Subset, number: int, batches: int) -> tuple[float, int]:
    """Trains epoch `number` (its first `batches` steps); its seconds and trained samples."""
    progress = Progress(epoch=number)
    began = time.perf_counter()
    split.train_epoch(data, progress, max_steps=batches, show_progress=False)
    return time.perf_counter() - began, progress.samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--batches", type=int, default=12, help="Steps per measured epoch.")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    data = load_splits("mnist5k").train
    guard = SplitGuard(GuardSettings(start_after=0), seed=0, num_classes=10)
    times: dict[str, list[float]] = {"none": [], "guard": []}
    samples: dict[str, list[int]] = {"none": [], "guard": []}
    with TemporaryDirectory() as tmp:
        server_args = ["--threads", "1", "--model-dir", str(Path(tmp)), "-q"]
        with ServerProcess(server_args) as server:
            settings = {
                name: SessionSettings(
                    run=name, num_classes=10, lr=1e-4, seed=1, max_batch_size=BATCH
                )
                for name in times
            }
            with (
                ServerLink(server.address, settings["none"]) as plain_link,
                ServerLink(server.address, settings["guard"]) as guard_link,
            ):
                sides = {
                    "none": trainer(plain_link, "none", None),
                    "guard": trainer(guard_link, "guard", guard),
                }
                epoch(sides["none"], data, 1, 2)  # warm-up, outside the measured epochs
                epoch(sides["guard"], data, 1, 2)
                for pair in range(args.pairs):
                    order = ["none", "guard"] if pair % 2 == 0 else ["guard", "none"]
                    for name in order:
                        seconds, trained = epoch(sides[name], data, pair + 2, args.batches)
                        times[name].append(seconds)
                        samples[name].append(trained)
    report(times, samples, guard, args)


def report(
    times: dict[str, list[float]],
    samples: dict[str, list[int]],
    guard: SplitGuard,
    args: argparse.Namespace,
) -> None:
    step = [g / n for g, n in zip(times["guard"], times["none"], strict=True)]
    per_sample = [
        (g / gs) / (n / ns)
        for g, gs, n, ns in zip(
            times["guard"], samples["guard"], times["none"], samples["none"], strict=True
        )
    ]
    steps = args.pairs * args.batches
    fakes = guard.fake.count
    threads = torch.get_num_threads()
    print(f"pairs: {args.pairs} of {args.batches} steps, batch {BATCH}, threads here: {threads}")
    print(f"fake batches of the guard: {fakes} of {steps + 2} steps, {len(guard.scores)} scores")
    for name in ("none", "guard"):
        ms = 1000 * statistics.median(times[name]) / args.batches
        print(f"{name:>5}: median {ms:.1f} ms per step")
    print(f"median ratio per step: {statistics.median(step):.3f}")
    print(f"median ratio: {statistics.median(per_sample):.3f}")


if __name__ == "__main__":
    main()
