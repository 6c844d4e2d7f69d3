"""How does one server hold up as data holders are added?

For each N in --holders (default 1 2 4 8 16): a fresh `splitnn-server` process (default flags)
and N data-holder processes, each its own run, each keeping its Train and Evaluate streams open
as a real data holder does. Every holder waits until all are connected, then trains --max-steps
batches of mnist5k (batch 128) through the real client code; then, with every stream still open,
it evaluates the validation split, checkpoints and restores the head, and closes its session.

Prints per N: errors (holders that failed), aggregate training samples/s (all holders' samples
over the time from the common start to the last holder's last step), per-step latency p50/p95 over
every step of every holder, the server's RSS (now and peak), and the server's CPU seconds per
training step. Last line: ``holders=16 errors=E samples_per_s=X``. The machine's cores are shared
out: each holder gets cores // N torch threads (at least 1), the server 1.

Run: .venv/bin/python bench/load.py [--holders 1 2 4 8 16] [--max-steps 30]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from splitnn.common.processes import listening_address

BATCH = 128
TIMEOUT_S = 900.0


@dataclass(frozen=True)
class Round:
    holders: int
    errors: int
    samples_per_s: float
    p50_ms: float
    p95_ms: float
    rss_mb: float
    peak_rss_mb: float
    cpu_s_per_step: float


def holder(address: str, run: str, steps: int, threads: int) -> None:
    """One data holder (a child process): waits for "go" on stdin, trains, prints JSON."""
    import torch

    from splitnn.client.split_trainer import SplitTrainer
    from splitnn.client.transport import ServerLink, SessionSettings
    from splitnn.common.codec import StepId
    from splitnn.common.datasets import epoch_permutation, load_splits
    from splitnn.common.models import build_body
    from splitnn.common.noise import LaplaceNoise

    torch.set_num_threads(threads)
    data = load_splits("mnist5k", root=Path("data"))
    settings = SessionSettings(run=run, num_classes=10, lr=1e-4, seed=1, max_batch_size=500)
    with ServerLink(address, settings) as link:
        trainer = SplitTrainer(
            body=build_body(0),
            link=link,
            run=run,
            noise=LaplaceNoise(0.5),
            nopeek=0.0,
            lr=1e-4,
            batch_size=BATCH,
            seed=0,
        )
        order = epoch_permutation(len(data.train), seed=0, epoch=1)
        # Both streams open before the common start, as in a real run.
        trainer.evaluate("val", data.val.take(BATCH), noise=LaplaceNoise(0.5))
        print("ready", flush=True)
        sys.stdin.readline()
        times = []
        for batch in range(steps):
            idx = order[torch.arange(batch * BATCH, (batch + 1) * BATCH) % len(order)]
            began = time.perf_counter()
            trainer.step(StepId(run, 1, batch), data.train.images[idx], data.train.labels[idx])
            times.append(time.perf_counter() - began)
        trained_at = time.time()
        print(json.dumps({"trained_at": trained_at, "steps": times}), flush=True)
        sys.stdin.readline()  # the server's CPU is read; now the rest of a run
        trainer.evaluate("val", data.val, noise=LaplaceNoise(0.5))
        link.checkpoint(f"{run}-head", replace_previous=True)
        link.restore(f"{run}-head")
        link.close(finished=True)
    print("done", flush=True)


def server_usage(pid: int) -> tuple[float, float, float]:
    """(CPU seconds, RSS MB, peak RSS MB) of process `pid`, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return cpu, int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


def start(args: list[str], **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, **kwargs
    )


def read_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    return process.stdout.readline().strip()


def one_round(n: int, steps: int, tmp: Path) -> Round:
    server = start(
        [
            str(Path(sys.executable).parent / "splitnn-server"),
            "--port",
            "0",
            "-q",
            "--model-dir",
            str(tmp / f"server-{n}"),
        ]
    )
    line = read_line(server)
    address = listening_address(line)
    if address is None:
        server.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    threads = max(1, (os.cpu_count() or 1) // n)
    holders = [
        start(
            [
                sys.executable,
                __file__,
                "--holder",
                address,
                f"holder-{k}",
                str(steps),
                str(threads),
            ],
            stderr=subprocess.DEVNULL,
        )
        for k in range(n)
    ]
    ready = [read_line(h) == "ready" for h in holders]
    cpu_before = server_usage(server.pid)[0]
    went = time.time()
    for h in holders:
        if h.poll() is None:
            assert h.stdin is not None
            h.stdin.write("go\n")
            h.stdin.flush()
    results = [
        json.loads(line) if ok and (line := read_line(h)).startswith("{") else None
        for h, ok in zip(holders, ready, strict=True)
    ]
    cpu_after, rss, peak = server_usage(server.pid)
    for h in holders:
        if h.poll() is None:
            assert h.stdin is not None
            h.stdin.write("finish\n")
            h.stdin.flush()
    finished = [h.wait(TIMEOUT_S) == 0 and read_line(h) == "done" for h in holders]
    server.terminate()
    server.wait(TIMEOUT_S)
    good = [r for r, ok in zip(results, finished, strict=True) if r is not None and ok]
    times = sorted(1000 * t for r in good for t in r["steps"])
    span = max((r["trained_at"] for r in good), default=went) - went
    return Round(
        holders=n,
        errors=n - len(good),
        samples_per_s=len(times) * BATCH / span if span > 0 else 0.0,
        p50_ms=statistics.median(times) if times else float("nan"),
        p95_ms=times[int(0.95 * (len(times) - 1))] if times else float("nan"),
        rss_mb=rss,
        peak_rss_mb=peak,
        cpu_s_per_step=(cpu_after - cpu_before) / max(len(times), 1),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--holders", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--max-steps", type=int, default=30, help="training steps per holder")
    parser.add_argument("--holder", nargs=4, help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args()
    if args.holder:
        address, run, steps, threads = args.holder
        holder(address, run, int(steps), int(threads))
        return
    print(f"{args.max_steps} steps of batch {BATCH} per holder, {os.cpu_count()} cores")
    print("holders errors samples/s  p50 ms  p95 ms  server RSS MB (peak)  server CPU s/step")
    last = None
    with TemporaryDirectory() as tmp:
        for n in args.holders:
            last = one_round(n, args.max_steps, Path(tmp))
            print(
                f"{n:7d} {last.errors:6d} {last.samples_per_s:9.0f} {last.p50_ms:7.1f} "
                f"{last.p95_ms:7.1f} {last.rss_mb:9.0f} ({last.peak_rss_mb:.0f})"
                f"{last.cpu_s_per_step:14.4f}",
                flush=True,
            )
    assert last is not None
    print(f"holders={last.holders} errors={last.errors} samples_per_s={last.samples_per_s:.0f}")


if __name__ == "__main__":
    main()
