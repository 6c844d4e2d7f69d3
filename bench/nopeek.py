"""NoPeek's dCor penalty: forward + backward time, our loss against the study's Python double loop.

For B in 32, 128, 512 it draws NoPeek's inputs, images x: float32 [B, 1, 28, 28] and a tanh cut
z: float32 [B, 500] requiring grad, and times dCor(x, z).backward() on the CPU for
`splitnn.common.distcorr.distance_correlation` and for `distance_correlation_reference_loop` (below)
on the same tensors, in the same run. It prints the median of several repetitions of each and the
ratio loop / ours as `speedup@<B>: X`. The loop takes seconds (minutes at B=512), so it gets
fewer repetitions; `--quick` skips it at B=512 (no speedup line for 512 then).

The two do not compute the same number: the loop is the study's formula (squared distances), ours
the corrected one. What is compared is the cost of the penalty in a NoPeek training step.

Run: .venv/bin/python bench/nopeek.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from splitnn.common.distcorr import distance_correlation

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

BATCH_SIZES = (32, 128, 512)
OURS_REPEATS = 50
LOOP_REPEATS = {32: 5, 128: 3, 512: 1}


def distance_correlation_reference_loop(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The study's dCor, reproduced with its defects (docs/study.md, defect 3): a baseline only.

    Never use it as a loss or a metric. Squared Euclidean distances (so it measures only linear
    dependence: it is sqrt of the RV coefficient), biased V-statistic, distance matrices filled
    element by element in a Python double loop into a matrix allocated on the CPU, and a sqrt of
    the distance covariance whose gradient is infinite when that covariance is 0.

    Args:
        x: float [B, ...].
        y: float [B, ...].

    Returns:
        A 0-d float32 tensor on the CPU.
    """

    def centred_distances(data: torch.Tensor) -> torch.Tensor:
        data = data.reshape(data.shape[0], -1)
        n = data.shape[0]
        matrix = torch.zeros((n, n))
        for i in range(n):
            for j in range(n):
                matrix[i, j] = ((data[i] - data[j]) ** 2).sum()
        row_mean = matrix.mean(dim=0, keepdim=True)
        col_mean = matrix.mean(dim=1, keepdim=True)
        return matrix - row_mean - col_mean + matrix.mean()

    def dcov(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * b).sum().sqrt() / a.shape[0]

    a, b = centred_distances(x), centred_distances(y)
    return dcov(a, b) / torch.sqrt(dcov(a, a) * dcov(b, b))


def _inputs(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images float32 [B, 1, 28, 28] in [0, 1] and a cut float32 [B, 500] in (-1, 1), with grad."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 1, 28, 28, generator=gen)
    # The cut depends on x, as part 1's output does, through a random tanh layer.
    weight = torch.randn(28 * 28, 500, generator=gen) / 28.0
    z = torch.tanh(x.reshape(batch, -1) @ weight).requires_grad_(True)
    return x, z


def _median_seconds(loss: Loss, x: torch.Tensor, z: torch.Tensor, repeats: int) -> float:
    """Median wall time of loss(x, z).backward() over `repeats` runs."""
    times = []
    for _ in range(repeats):
        z.grad = None
        start = time.perf_counter()
        torch.autograd.backward(loss(x, z))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the loop at B=512")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    # Other processes on the machine skew both timings; the load average says how much.
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads, load {load:.2f}")
    # Warm-up: first calls pay for allocator and kernel initialisation.
    for loss in (distance_correlation, distance_correlation_reference_loop):
        _median_seconds(loss, *_inputs(8, args.seed), repeats=2)

    for batch in BATCH_SIZES:
        x, z = _inputs(batch, args.seed)
        ours = _median_seconds(distance_correlation, x, z, OURS_REPEATS)
        if args.quick and batch == 512:
            print(f"B={batch}: ours {ours * 1e3:.2f} ms (median of {OURS_REPEATS}); loop skipped")
            continue
        repeats = LOOP_REPEATS[batch]
        loop = _median_seconds(distance_correlation_reference_loop, x, z, repeats)
        print(
            f"B={batch}: ours {ours * 1e3:.2f} ms (median of {OURS_REPEATS}), "
            f"study loop {loop * 1e3:.1f} ms (median of {repeats})"
        )
        print(f"speedup@{batch}: {loop / ours:.1f}")


if __name__ == "__main__":
    main()
