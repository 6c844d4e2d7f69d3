"""Does a training group's memory stay flat over its epochs?

One `splitnn-server` process over loopback gRPC serves a ``splitfed`` group of K = 4 holders
(threads of this process, one `ServerLink` each) for 20 epochs of 2 steps of 8 samples. Every
epoch each holder hands in part 1 (18.5 MB) and the server averages the round; a group keeps
only the rounds a resume can still ask for, so the server's resident memory should stop growing
after the first epochs, where keeping every hand-in and average would add about 90 MiB an epoch.

Prints the server's RSS after every epoch's average, then ``growth after epoch 3: X MiB``.
Run: .venv/bin/python bench/group_memory.py [--epochs 20] [--holders 4]
"""

from __future__ import annotations

import argparse
import threading
from functools import partial
from pathlib import Path
from tempfile import TemporaryDirectory

import torch

from splitnn.client.transport import GroupSettings, ServerLink, SessionSettings
from splitnn.common.codec import StepId, WeightsBlob
from splitnn.common.models import build_body
from splitnn.common.processes import ServerProcess
from splitnn.common.weights import to_blob

BATCH = 8
STEPS = 2
SETTLED = 3  # epochs before the memory is compared


def rss_mib(pid: int) -> float:
    """The resident memory of process `pid`, in MiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc")


def holder(
    *, address: str, index: int, epochs: int, body: WeightsBlob, epoch_done: threading.Barrier
) -> None:
    """Holder `index`'s run: every epoch its turns, its steps and its hand-in, then the barrier
    (once every holder is there, the round is averaged)."""
    run = f"h{index}"
    group = GroupSettings(
        name="g", holder=index, batches_per_epoch=STEPS, samples=STEPS * BATCH, epochs=epochs
    )
    settings = SessionSettings(
        run=run, num_classes=10, lr=1e-3, seed=0, max_batch_size=BATCH, group=group
    )
    generator = torch.Generator().manual_seed(index)
    with ServerLink(address, settings, group_timeout=600.0) as link:
        for epoch in range(1, epochs + 1):
            for batch in range(STEPS):
                link.turn(epoch, batch)  # epoch > 1, batch 0: the round's average comes back
                activations = torch.rand(BATCH, 500, generator=generator)
                labels = torch.randint(0, 10, (BATCH,), generator=generator)
                link.train_step(StepId(run, epoch, batch), activations, labels, save=True)
            link.hand_in(epoch, body)
            epoch_done.wait()
        link.finish()
        link.close(finished=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--holders", type=int, default=4)
    args = parser.parse_args()
    bodies = [to_blob(build_body(seed).state_dict()) for seed in range(args.holders)]
    with TemporaryDirectory() as folder:
        flags = ["--model-dir", folder, "--group", f"g=splitfed:{args.holders}", "-q"]
        with ServerProcess(flags) as server:
            pid = server.process.pid
            print(f"server RSS before the group: {rss_mib(pid):.0f} MiB")
            sizes: list[float] = []
            barrier = threading.Barrier(args.holders + 1)
            threads = []
            for i in range(args.holders):
                kwargs = {"address": server.address, "index": i, "epochs": args.epochs}
                run = partial(holder, **kwargs, body=bodies[i], epoch_done=barrier)
                threads.append(threading.Thread(target=run, daemon=True))
            for thread in threads:
                thread.start()
            for epoch in range(1, args.epochs + 1):
                barrier.wait()  # every holder has handed in: the round is averaged
                sizes.append(rss_mib(pid))
                print(f"epoch {epoch:2d}: server RSS {sizes[-1]:.0f} MiB", flush=True)
            for thread in threads:
                thread.join()
    growth = sizes[-1] - sizes[SETTLED - 1]
    print(f"growth after epoch {SETTLED}: {growth:.0f} MiB over {args.epochs - SETTLED} epochs")


if __name__ == "__main__":
    main()
