"""Laplace noise on the cut tensor: its distribution, its seeding and its gradient.

The statistical checks use n = 10^6 draws and tolerances of 6 standard errors, so a correct
sampler fails with probability ~1e-9, while a wrong scale (b/2, 2b, even 1.05 b) fails for sure.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from splitnn.common.noise import LaplaceNoise

N = 1_000_000
SIGMAS = 6.0
KS_THRESHOLD = 1.63 / math.sqrt(N)  # Kolmogorov distribution, 1% level
SCALES = (0.05, 0.5, 1.0, 3.0)


def _draws(scale: float, seed: int) -> torch.Tensor:
    """float64 [N] of noise, through the public call on a zero cut tensor."""
    return LaplaceNoise(scale, seed=seed)(torch.zeros(N, dtype=torch.float64))


def _laplace_cdf(x: torch.Tensor, scale: float) -> torch.Tensor:
    half = 0.5 * torch.exp(-x.abs() / scale)
    return torch.where(x < 0, half, 1.0 - half)


def _ks_statistic(draws: torch.Tensor, scale: float) -> float:
    """sup_x |F_n(x) - F(x)| for the Laplace(0, scale) CDF F."""
    x, _ = torch.sort(draws)
    cdf = _laplace_cdf(x, scale)
    n = x.numel()
    above = torch.arange(1, n + 1, dtype=torch.float64) / n - cdf
    below = cdf - torch.arange(0, n, dtype=torch.float64) / n
    return float(torch.maximum(above, below).max())


@pytest.mark.parametrize("scale", SCALES)
def test_moments_match_laplace(scale: float) -> None:
    draws = _draws(scale, seed=11)

    mean = float(draws.mean())
    mean_abs = float(draws.abs().mean())
    variance = float(draws.square().mean())  # the true mean is 0

    # Standard errors: Var X = 2b^2, |X| ~ Exp(b) so Var |X| = b^2, Var X^2 = 24b^4 - 4b^4.
    root_n = math.sqrt(N)
    assert abs(mean) < SIGMAS * math.sqrt(2.0) * scale / root_n
    assert abs(mean_abs - scale) < SIGMAS * scale / root_n
    assert abs(variance - 2 * scale**2) < SIGMAS * math.sqrt(20.0) * scale**2 / root_n


@pytest.mark.parametrize("scale", SCALES)
def test_distribution_passes_kolmogorov_smirnov(scale: float) -> None:
    draws = _draws(scale, seed=12)

    statistic = _ks_statistic(draws, scale)
    wrong_scale = _ks_statistic(draws, 1.05 * scale)

    assert statistic < KS_THRESHOLD
    assert wrong_scale > KS_THRESHOLD  # the check has the power to see a 5% error in b


def test_zero_scale_returns_the_input_unchanged() -> None:
    cut = torch.randn(8, 500, generator=torch.Generator().manual_seed(0))

    out = LaplaceNoise(0.0)(cut)

    assert out is cut or torch.equal(out, cut)


@settings(max_examples=30, deadline=None)
@given(
    scale=st.floats(min_value=1e-3, max_value=10.0),
    seed=st.integers(min_value=0, max_value=2**63 - 1),
    dtype=st.sampled_from([torch.float16, torch.float32, torch.float64]),
    batch=st.integers(min_value=1, max_value=16),
)
def test_fresh_seeded_draws_of_the_input_shape_and_dtype(
    scale: float, seed: int, dtype: torch.dtype, batch: int
) -> None:
    cut = torch.zeros(batch, 500, dtype=dtype)

    first = LaplaceNoise(scale, seed=seed)
    again = LaplaceNoise(scale, seed=seed)
    other = LaplaceNoise(scale, seed=seed + 1)
    a, b = first(cut), first(cut)

    assert a.shape == cut.shape and a.dtype == dtype
    assert not torch.equal(a, b)  # fresh noise on every call
    assert torch.equal(again(cut), a) and torch.equal(again(cut), b)  # same seed, same stream
    assert not torch.equal(other(cut), a)
    assert torch.equal(cut, torch.zeros_like(cut))  # the input is not modified in place


def test_noise_does_not_touch_the_global_generator() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)

    LaplaceNoise(1.0, seed=5)(torch.zeros(100))

    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("scale", [0.0, 0.7])
def test_gradient_passes_straight_through(scale: float) -> None:
    cut = torch.randn(4, 500, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    weights = torch.randn(4, 500, generator=torch.Generator().manual_seed(2))

    (LaplaceNoise(scale, seed=3)(cut) * weights).sum().backward()

    assert cut.grad is not None
    assert torch.equal(cut.grad, weights)


@pytest.mark.parametrize("scale", [-1.0, -1e-12, float("nan"), float("inf"), float("-inf")])
def test_invalid_scale_is_refused(scale: float) -> None:
    with pytest.raises(ValueError, match="scale"):
        LaplaceNoise(scale)
