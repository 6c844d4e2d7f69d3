"""How many training steps does one server core carry, against what its head alone computes?

One `splitnn-server` process (default flags: one compute thread) on loopback, and --holders
synthetic data holders, each a process with its own run and session that sends the same
precomputed cut tensor (float32 [128, 500], batch 128) and labels as fast as the server answers,
for --seconds after a warm-up. They keep the server busy without computing a part 1: what is
measured is the server's cost of a training step, all of it (gRPC, decoding, checks, the
head's step, the answer's encoding, its bookkeeping).

With two or more cores the server process (all its threads) is pinned to one core and the
holders to the others, and the head's own step is timed on the server's core: the question is
what one server core carries, and on a small machine holders sharing the server's core would
otherwise charge their context switches and cache misses to the server (--no-pin to compare).

Prints, measured in this one run on this machine:
  server: steps/s sustained (all holders' steps over the wall time) and steps per server
          CPU-second (its CPU time from /proc, every thread: what one saturated core carries)
  head:   the head's own forward, backward and Adam step on the same tensors in this process
          with one thread (`apply_step`, no RPC): steps/s, the best of five windows
  head as served: the same step on --holders heads in turn, each on a tensor freshly decoded
          from its wire message (no RPC): what the server's head step costs without the caches
          that one head on one tensor keeps warm
  server over head as served: the server's steps per CPU-second over that
  capacity ratio: server steps per CPU-second over the head's steps/s (1.0: the server spends
          nothing but the head's compute)

Run: .venv/bin/python bench/capacity.py [--holders 4] [--seconds 20] [--no-pin]
     .venv/bin/python bench/capacity.py --profile server.txt   (py-spy on the server, if installed)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from tempfile import TemporaryDirectory

from splitnn.common.processes import listening_address

BATCH = 128
WARMUP_S = 3.0


def holder(address: str, run: str, seconds: float) -> None:
    """One synthetic data holder (a child process): waits for "go", then sends steps until its
    time is up after the warm-up; prints JSON with the steps it sent in the measured window."""
    import torch

    from splitnn.client.transport import ServerLink, SessionSettings
    from splitnn.common.codec import StepId

    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(hash(run) % 2**31)
    cut = torch.rand(BATCH, 500, generator=generator)
    labels = torch.randint(0, 10, (BATCH,), generator=generator)
    settings = SessionSettings(run=run, num_classes=10, lr=1e-4, seed=1, max_batch_size=BATCH)
    with ServerLink(address, settings) as link:
        link.train_step(StepId(run, 1, 0), cut, labels, None)
        print("ready", flush=True)
        sys.stdin.readline()
        began = time.perf_counter()
        counted, batch = 0, 1
        while (now := time.perf_counter()) < began + WARMUP_S + seconds:
            link.train_step(StepId(run, 1, batch), cut, labels, None)
            batch += 1
            counted += int(now >= began + WARMUP_S)
        link.close(finished=True)
    print(json.dumps({"steps": counted}), flush=True)


def head_steps_per_s(seconds: float) -> float:
    """The head's own step (`apply_step`: forward, backward, Adam) on one thread, steps/s."""
    import torch

    from splitnn.common.codec import StepId
    from splitnn.common.models import build_head, make_optimizer
    from splitnn.server.head import apply_step

    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    cut = torch.rand(BATCH, 500, generator=generator)
    labels = torch.randint(0, 10, (BATCH,), generator=generator)
    head = build_head(1)
    optimizer = make_optimizer(head, 1e-4)
    step = StepId("head", 1, 0)
    return best_rate(lambda _: apply_step(head, optimizer, step, cut, labels), seconds)


def best_rate(one: Callable[[int], object], seconds: float) -> float:
    """Calls of `one(k)` (k = 0, 1, ...) per second: 50 to warm up, then the best of five
    windows over `seconds` (other work on the machine only ever slows a window down)."""
    for k in range(50):
        one(k)
    best, k = 0.0, 50
    for _ in range(5):
        done, began = 0, time.perf_counter()
        while time.perf_counter() - began < seconds / 5:
            one(k)
            done, k = done + 1, k + 1
        best = max(best, done / (time.perf_counter() - began))
    return best


def head_as_served_steps_per_s(holders: int, seconds: float) -> float:
    """The head's step as the server meets it, still without RPC: `holders` heads stepped in
    turn, each step on a tensor freshly decoded from its wire message (one thread), steps/s."""
    import torch

    from splitnn.common.codec import StepId, tensor_from_proto, tensor_to_proto
    from splitnn.common.models import build_head, make_optimizer
    from splitnn.server.head import apply_step

    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    message = tensor_to_proto(torch.rand(BATCH, 500, generator=generator))
    labels = torch.randint(0, 10, (BATCH,), generator=generator)
    heads = [build_head(k) for k in range(holders)]
    optimizers = [make_optimizer(head, 1e-4) for head in heads]
    step = StepId("head", 1, 0)

    def one(k: int) -> None:
        cut = tensor_from_proto(message, dtype="float32", shape=(None, 500), finite=True)
        apply_step(heads[k % holders], optimizers[k % holders], step, cut, labels)

    return best_rate(one, seconds)


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system, every thread) of process `pid`, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start(args: list[str], cores: set[int] | None) -> subprocess.Popen[str]:
    """Start `args` with pipes; on `cores` (every thread it starts inherits them) if given."""

    def pin() -> None:
        if cores is not None:
            os.sched_setaffinity(0, cores)

    return subprocess.Popen(
        args,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        preexec_fn=pin,
    )


def core_split(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """(the server's core, the holders' cores), or (None, None) unpinned or on one core."""
    available = sorted(os.sched_getaffinity(0))
    if not pin or len(available) < 2:
        return None, None
    return {available[0]}, set(available[1:])


def _line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    return process.stdout.readline().strip()


def _send(process: subprocess.Popen[str], text: str) -> None:
    assert process.stdin is not None
    process.stdin.write(text + "\n")
    process.stdin.flush()


def measure_server(
    holders: int,
    seconds: float,
    tmp: Path,
    profile: Path | None,
    server_cores: set[int] | None,
    holder_cores: set[int] | None,
) -> dict[str, float]:
    """Steps of `holders` synthetic holders through one server process over `seconds`."""
    server_cmd = [str(Path(sys.executable).parent / "splitnn-server"), "--port", "0", "-q"]
    server = _start([*server_cmd, "--model-dir", str(tmp / "server")], server_cores)
    address = listening_address(_line(server))
    if address is None:
        server.kill()
        raise RuntimeError("the server did not start")
    children = [
        _start(
            [sys.executable, __file__, "--holder", address, f"cap-{k}", str(seconds)], holder_cores
        )
        for k in range(holders)
    ]
    try:
        if not all(_line(child) == "ready" for child in children):
            raise RuntimeError("a holder could not open its session")
        for child in children:
            _send(child, "go")
        time.sleep(WARMUP_S)
        cpu_before, wall_before = cpu_seconds(server.pid), time.perf_counter()
        spy = None
        if profile is not None:
            record = ["py-spy", "record", "--pid", str(server.pid), "--format", "raw"]
            window = ["--duration", str(int(seconds)), "--output", str(profile), "--threads"]
            spy = subprocess.Popen(
                [*record, *window, "--nonblocking"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        time.sleep(seconds)
        cpu_after, wall_after = cpu_seconds(server.pid), time.perf_counter()
        steps = sum(json.loads(_line(child))["steps"] for child in children)
        if spy is not None:
            spy.wait(60)
    finally:
        for child in children:
            child.kill() if child.poll() is None else None
        server.terminate()
        server.wait(60)
    cpu = cpu_after - cpu_before
    return {
        "steps": steps,
        "steps_per_s": steps / (wall_after - wall_before),
        "steps_per_cpu_s": steps / cpu if cpu > 0 else float("nan"),
        "cpu_ms_per_step": 1000 * cpu / max(steps, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--holders", type=int, default=4, help="synthetic holders (processes)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy raw profile here")
    parser.add_argument(
        "--no-pin", action="store_true", help="let the server share cores with the holders"
    )
    parser.add_argument("--holder", nargs=3, help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args()
    if args.holder:
        address, run, seconds = args.holder
        holder(address, run, float(seconds))
        return
    if args.profile is not None and shutil.which("py-spy") is None:
        parser.error("--profile needs py-spy on PATH (pip install py-spy)")
    cores = len(os.sched_getaffinity(0))
    server_cores, holder_cores = core_split(not args.no_pin)
    placement = (
        f"server on core {min(server_cores)}, holders on {len(holder_cores or ())} other core(s)"
        if server_cores is not None
        else "server and holders share the cores"
    )
    print(
        f"{args.holders} synthetic holders, batch {BATCH}, {args.seconds:g} s, {cores} cores, "
        f"{placement}"
    )
    with TemporaryDirectory() as tmp:
        served = measure_server(
            args.holders, args.seconds, Path(tmp), args.profile, server_cores, holder_cores
        )
    if server_cores is not None:
        os.sched_setaffinity(0, server_cores)  # the head's step on the server's core
    head = head_steps_per_s(min(args.seconds, 10.0))
    served_head = head_as_served_steps_per_s(args.holders, min(args.seconds, 10.0))
    print(
        f"server: {served['steps_per_s']:.0f} steps/s sustained, "
        f"{served['steps_per_cpu_s']:.0f} steps per CPU-second "
        f"({served['cpu_ms_per_step']:.2f} ms CPU a step)"
    )
    print(f"head:   {head:.0f} steps/s compute only ({1000 / head:.2f} ms a step, one thread)")
    print(
        f"head as served: {served_head:.0f} steps/s ({1000 / served_head:.2f} ms a step: "
        f"{args.holders} heads in turn, each step's tensor decoded from its wire message)"
    )
    print(f"server over head as served: {served['steps_per_cpu_s'] / served_head:.2f}")
    print(f"capacity ratio: {served['steps_per_cpu_s'] / head:.2f}")


if __name__ == "__main__":
    main()
