"""Multi-kernel MMD: zero for the same sample, growing with a shift, the kernel by hand."""

from __future__ import annotations

import math

import pytest
import torch

from splitnn.attacker.mmd import conditional_mk_mmd, gaussian_kernels, mk_mmd


def _sample(n: int = 64, dim: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def test_the_kernel_is_a_sum_of_gaussians_computed_by_hand() -> None:
    x = torch.tensor([[0.0, 0.0]])
    y = torch.tensor([[1.0, 0.0], [0.0, 2.0]])

    kernel = gaussian_kernels(x, y, bandwidths=[1.0, 4.0])

    expected = [math.exp(-1) + math.exp(-1 / 4), math.exp(-4) + math.exp(-1)]
    assert kernel.shape == (1, 2)
    assert kernel[0].tolist() == pytest.approx(expected)


def test_mmd_of_two_points_by_hand() -> None:
    # Pooled {0, 1}: mean pairwise squared distance 1, so the bandwidths are the scales.
    x, y = torch.tensor([[0.0]]), torch.tensor([[1.0]])

    value = mk_mmd(x, y, scales=(1.0, 2.0))

    expected = 2 * 2 - 2 * (math.exp(-1) + math.exp(-1 / 2))
    assert float(value) == pytest.approx(expected, rel=1e-5)


def test_mmd_is_zero_for_identical_samples() -> None:
    x = _sample()

    assert float(mk_mmd(x, x.clone())) == pytest.approx(0.0, abs=1e-6)


def test_mmd_is_positive_and_grows_with_the_shift() -> None:
    x = _sample()
    shifts = [0.25, 0.5, 1.0, 2.0]

    values = [float(mk_mmd(x, x + s)) for s in shifts]

    assert values[0] > 1e-4
    assert values == sorted(values)
    assert values[-1] > 2 * values[0]


def test_mmd_passes_gradients_to_both_samples() -> None:
    x = _sample().requires_grad_(True)
    y = _sample(seed=1) + 1.0

    mk_mmd(x, y).backward()

    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_conditional_mmd_ignores_class_proportions_that_marginal_mmd_sees() -> None:
    # Two classes far apart; the same points per class on both sides, in other proportions.
    a, b = _sample(8, seed=2), _sample(8, seed=3) + 5.0
    x = torch.cat([a, b[:2]])
    x_labels = torch.tensor([0] * 8 + [1] * 2)
    y = torch.cat([a[:2], b])
    y_labels = torch.tensor([0] * 2 + [1] * 8)

    conditional = float(conditional_mk_mmd(x, x_labels, y, y_labels))
    marginal = float(mk_mmd(x, y))
    swapped = float(conditional_mk_mmd(x, 1 - x_labels, y, y_labels))

    assert marginal > 0.05
    assert conditional < marginal
    assert swapped > marginal


def test_conditional_mmd_without_a_common_class_is_a_zero_with_a_graph() -> None:
    x = _sample(4).requires_grad_(True)

    value = conditional_mk_mmd(x, torch.zeros(4, dtype=torch.long), x, torch.ones(4).long())

    value.backward()
    assert float(value.detach()) == 0.0


def test_bad_bandwidths_and_empty_samples_are_refused() -> None:
    x = _sample(4)
    with pytest.raises(ValueError, match="positive"):
        gaussian_kernels(x, x, bandwidths=[1.0, 0.0])
    with pytest.raises(ValueError, match="at least one"):
        mk_mmd(x[:0], x)
