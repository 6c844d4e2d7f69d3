"""DP-SGD's cost on part 1: one training step with DP-SGD against the same step without, in one run.

Each variant trains part 1 and the head in one process on the same random batches of B images
(float32 [B, 1, 28, 28], labels int64 [B]) through the split step's backward (the head's
gradient at the cut, then ``cut.backward(grad)``), and the optimiser's step:

- ``plain``: no DP-SGD.
- ``dp``: `splitnn.client.dp.DPSGD` (per-sample gradients with the Linear layer's buffer kept
  from step to step, clipping, noise).
- ``dp-stock``: the same, with Opacus's stock per-sample hooks (``GradSampleModule``), which
  allocate the Linear layer's per-sample gradients afresh at every step.

It prints the median step time of each and the ratios ``dp/plain`` and ``dp-stock/dp``.

Run: .venv/bin/python bench/dp_step.py [--batch-size 128] [--steps 8]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F

from splitnn.client.dp import DPSGD
from splitnn.common.models import build_body, build_head, make_optimizer


def _time_steps(variant: str, batch_size: int, steps: int) -> float:
    """Median seconds of `steps` training steps of `variant` (after one warm-up step)."""
    body, head = build_body(0), build_head(0)
    dp = None
    if variant != "plain":
        dp = DPSGD(
            body=body,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            expected_batch_size=batch_size,
            noise_seed=0,
            delta=1e-5,
            sample_rate=0.04,
        )
        if variant == "dp-stock":
            from opacus.grad_sample import GradSampleModule

            ours: Any = dp.hooks  # a GradSampleModule
            ours.remove_hooks()
            dp.hooks = GradSampleModule(body, batch_first=True, loss_reduction="mean")
    opt_body, opt_head = make_optimizer(body, 1e-3), make_optimizer(head, 1e-3)
    generator = torch.Generator().manual_seed(0)
    times = []
    for step in range(steps + 1):
        images = torch.rand(batch_size, 1, 28, 28, generator=generator)
        labels = torch.randint(0, 10, (batch_size,), generator=generator)
        began = time.perf_counter()
        opt_body.zero_grad(set_to_none=True)
        opt_head.zero_grad(set_to_none=True)
        cut = body(images)
        sent = cut.detach().requires_grad_()
        F.cross_entropy(head(sent), labels).backward()
        cut.backward(sent.grad)
        if dp is not None:
            dp.privatise(epoch=1, batch=step)
        opt_body.step()
        opt_head.step()
        if step > 0:
            times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    seconds = {v: _time_steps(v, args.batch_size, args.steps) for v in ("plain", "dp", "dp-stock")}
    for variant, value in seconds.items():
        median = f"median of {args.steps}, B={args.batch_size}"
        print(f"{variant:>9}: {value * 1000:8.1f} ms/step ({median})")
    print(f"dp/plain: {seconds['dp'] / seconds['plain']:.2f}")
    print(f"dp-stock/dp: {seconds['dp-stock'] / seconds['dp']:.2f}")


if __name__ == "__main__":
    main()
