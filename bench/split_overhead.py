"""What does splitting the model across a gRPC connection cost per training step?

Times one training step of the study's model at batch 128 two ways, alternated pair by pair so
that machine noise hits both alike: (a) split: part 1 here, part 2 in a real `splitnn-server`
process over loopback gRPC (forward, send the cut tensor, receive the gradient, backward, Adam on
both sides); (b) in-process: the same two parts and optimizers in this process. Threads are placed
as in deployment: this process (the data holder) uses every core, the server one thread.

Prints per-side medians and, last, ``median ratio: X`` (split / in-process, median of the
per-pair ratios). Run: .venv/bin/python bench/split_overhead.py [--pairs 100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from tempfile import TemporaryDirectory

import torch
from torch.nn import functional as F

from splitnn.client.split_trainer import SplitTrainer
from splitnn.client.transport import ServerLink, SessionSettings
from splitnn.common.codec import StepId
from splitnn.common.models import build_body, build_head, make_optimizer
from splitnn.common.noise import LaplaceNoise
from splitnn.common.processes import listening_address

BATCH = 128


def start_server(model_dir: Path) -> tuple[subprocess.Popen[str], str]:
    script = Path(sys.executable).parent / "splitnn-server"
    process = subprocess.Popen(
        [str(script), "--port", "0", "--threads", "1", "--model-dir", str(model_dir), "-q"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    address = listening_address(line)
    if address is None:
        process.kill()
        raise RuntimeError(f"server did not start: {line.strip()!r}")
    return process, address


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(BATCH, 1, 28, 28, generator=generator)
    labels = torch.randint(0, 10, (BATCH,), generator=generator)
    indices = torch.arange(BATCH)

    body, head = build_body(0), build_head(1)
    opt_body, opt_head = make_optimizer(body, 1e-4), make_optimizer(head, 1e-4)

    def local_step() -> None:
        opt_body.zero_grad(set_to_none=True)
        opt_head.zero_grad(set_to_none=True)
        F.cross_entropy(head(body(images)), labels).backward()
        opt_body.step()
        opt_head.step()

    with TemporaryDirectory() as tmp:
        server, address = start_server(Path(tmp))
        try:
            settings = SessionSettings(
                run="bench", num_classes=10, lr=1e-4, seed=1, max_batch_size=BATCH
            )
            with ServerLink(address, settings) as link:
                trainer = SplitTrainer(
                    body=build_body(0),
                    link=link,
                    run="bench",
                    noise=LaplaceNoise(0.0),
                    nopeek=0.0,
                    lr=1e-4,
                    batch_size=BATCH,
                    seed=0,
                )
                counter = iter(range(10**9))

                def split_step() -> None:
                    trainer.step(StepId("bench", 1, next(counter)), images, labels, indices)

                split_times, local_times = measure(split_step, local_step, args)
        finally:
            server.terminate()
            server.wait(timeout=30)

    ratios = [s / loc for s, loc in zip(split_times, local_times, strict=True)]
    print(f"pairs: {len(ratios)}, batch {BATCH}, torch threads here: {torch.get_num_threads()}")
    print(f"split step median:      {1000 * statistics.median(split_times):.1f} ms")
    print(f"in-process step median: {1000 * statistics.median(local_times):.1f} ms")
    print(f"median ratio: {statistics.median(ratios):.3f}")


def measure(
    split_step: Callable[[], None], local_step: Callable[[], None], args: argparse.Namespace
) -> tuple[list[float], list[float]]:
    """Alternates the two steps; the order within a pair flips every pair."""
    for _ in range(args.warmup):
        split_step()
        local_step()
    split_times: list[float] = []
    local_times: list[float] = []
    for pair in range(args.pairs):
        order = [(split_step, split_times), (local_step, local_times)]
        for step, times in order if pair % 2 == 0 else order[::-1]:
            began = time.perf_counter()
            step()
            times.append(time.perf_counter() - began)
    return split_times, local_times


if __name__ == "__main__":
    main()
