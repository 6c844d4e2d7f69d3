"""The hijacking server's cost per holder step, against the honest head's, side by side.

Both heads answer the same training steps (batch 128 of random cut tensors float32 [128, 500]
in [-1, 1] with random labels), alternately, in one process on the CPU with the server's one
torch thread. The honest head (`LoneHead`) takes one Adam step of part 2; the hijacking one
(`HijackHead`, "fsha") also takes 10 critic updates with a gradient penalty on up to 512 buffered
tensors, the gradient of the critic's adversarial loss and one decoder update. Pre-training is
not timed (it happens once, before serving). Prints the median milliseconds of each and the
ratio as `fsha/honest: X`.

Run: .venv/bin/python bench/hijack_step.py [--steps N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from splitnn.common.codec import StepId
from splitnn.server.head import LoneHead, SessionSpec
from splitnn.server.hijack import HijackHead, HijackSettings

BATCH = 128
SPEC = SessionSpec(
    run="bench", cut_shape=(500,), dtype="float32", max_batch_size=BATCH, num_classes=10,
    lr=1e-4, seed=1,
)  # fmt: skip


def _time_step(head: LoneHead, step: StepId, cut: torch.Tensor, labels: torch.Tensor) -> float:
    start = time.perf_counter()
    head.train(step, cut, labels, save=False)
    return (time.perf_counter() - start) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps of each head")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the server's default (--threads 1)
    generator = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        settings = HijackSettings(model_dir=Path(folder), pretrain_steps=5)
        heads = {"honest": LoneHead(SPEC), "fsha": HijackHead(SPEC, settings=settings)}
        times: dict[str, list[float]] = {name: [] for name in heads}
        for n in range(args.steps + 5):  # the first 5 steps of each warm up, untimed
            cut = torch.rand(BATCH, 500, generator=generator) * 2 - 1
            labels = torch.randint(0, 10, (BATCH,), generator=generator)
            for name, head in heads.items():
                elapsed = _time_step(head, StepId("bench", 1, n), cut.clone(), labels)
                if n >= 5:
                    times[name].append(elapsed)
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, value in medians.items():
        print(f"{name}: {value:.1f} ms per step (median of {args.steps})")
    print(f"fsha/honest: {medians['fsha'] / medians['honest']:.0f}")


if __name__ == "__main__":
    main()
