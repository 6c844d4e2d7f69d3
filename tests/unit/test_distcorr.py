"""Distance correlation against the `dcor` package, its gradient and its edge cases."""

from __future__ import annotations

import math

import dcor
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from splitnn.common.distcorr import distance_correlation

RTOL = 1e-5
# Only used where the true value is ~0 (bias-corrected estimator on independent data).
ATOL = 1e-9

KINDS = ("independent", "identity", "nonlinear", "noisy_nonlinear")


def _sample(kind: str, n: int, p: int, q: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns x float64 [n, p] and y float64 [n, q] with the requested dependence."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p))
    if kind == "independent":
        y = rng.normal(size=(n, q))
    elif kind == "identity":
        y = x.copy()
    elif kind == "nonlinear":
        # Symmetric in x, so the linear correlation is ~0 while the dependence is total.
        y = np.repeat((x**2).sum(axis=1, keepdims=True), q, axis=1) + np.cos(x[:, :1])
    else:
        y = np.tanh(2.0 * x[:, :1]) ** 2 + 0.3 * rng.normal(size=(n, q))
    return x, y


def _ours(x: np.ndarray, y: np.ndarray, *, unbiased: bool = False) -> float:
    return float(distance_correlation(torch.from_numpy(x), torch.from_numpy(y), unbiased=unbiased))


@settings(max_examples=80, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    n=st.integers(min_value=2, max_value=64),
    p=st.integers(min_value=1, max_value=8),
    q=st.integers(min_value=1, max_value=8),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_biased_matches_dcor(kind: str, n: int, p: int, q: int, seed: int) -> None:
    x, y = _sample(kind, n, p, q, seed)

    ours = _ours(x, y)

    assert math.isclose(ours, float(dcor.distance_correlation(x, y)), rel_tol=RTOL, abs_tol=ATOL)


@settings(max_examples=80, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    n=st.integers(min_value=4, max_value=64),
    p=st.integers(min_value=1, max_value=8),
    q=st.integers(min_value=1, max_value=8),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_unbiased_matches_dcor_bias_corrected_squared(
    kind: str, n: int, p: int, q: int, seed: int
) -> None:
    x, y = _sample(kind, n, p, q, seed)

    ours = _ours(x, y, unbiased=True)

    # unbiased=True returns the bias-corrected SQUARED dCor, hence the *_sqr reference.
    reference = float(dcor.u_distance_correlation_sqr(x, y))
    assert math.isclose(ours, reference, rel_tol=RTOL, abs_tol=ATOL)


def test_euclidean_not_squared_distances() -> None:
    # y = x² (x symmetric about 0) is a pure nonlinear dependence: with squared distances
    # (the study's formula, = sqrt(RV coefficient)) dCor would be ~0 here.
    x = np.linspace(-1.0, 1.0, 41)[:, None]
    y = x**2

    ours = _ours(x, y)

    assert ours > 0.4
    assert math.isclose(ours, float(dcor.distance_correlation(x, y)), rel_tol=RTOL)


def test_flattens_trailing_dimensions() -> None:
    rng = np.random.default_rng(1)
    images = rng.normal(size=(16, 1, 4, 4))
    cut = np.tanh(images.reshape(16, -1) @ rng.normal(size=(16, 6)))

    ours = _ours(images, cut)

    assert math.isclose(
        ours, float(dcor.distance_correlation(images.reshape(16, -1), cut)), rel_tol=RTOL
    )


def test_float32_stays_float32_and_is_accurate_far_from_origin() -> None:
    # A large common offset is where the Gram formula loses digits without the shift by a row.
    x64, y64 = _sample("noisy_nonlinear", 64, 20, 5, seed=3)
    x32 = torch.from_numpy(x64 + 1000.0).float()
    y32 = torch.from_numpy(y64 - 1000.0).float()

    ours = distance_correlation(x32, y32)

    assert ours.dtype == torch.float32
    assert ours.shape == ()
    assert math.isclose(float(ours), float(dcor.distance_correlation(x64, y64)), rel_tol=1e-4)


@pytest.mark.parametrize("unbiased", [False, True])
def test_gradient_matches_finite_differences(unbiased: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randn(7, 2, generator=gen, dtype=torch.float64)
    y = (y + torch.sin(2.0 * x[:, :2])).detach().requires_grad_(True)

    assert torch.autograd.gradcheck(
        lambda a, b: distance_correlation(a, b, unbiased=unbiased), (x, y), eps=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradient_finite_with_identical_rows(dtype: torch.dtype) -> None:
    # Duplicate images and saturated tanh cuts give zero distances, where sqrt' is infinite.
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(32, 1, 28, 28, generator=gen).to(dtype)
    z = torch.tanh(3.0 * torch.randn(32, 500, generator=gen)).to(dtype)
    x[1] = x[0]
    z[1] = z[0]
    z[5] = z[4]
    x.requires_grad_(True)
    z.requires_grad_(True)

    grad_x, grad_z = torch.autograd.grad(distance_correlation(x, z), (x, z))

    assert torch.isfinite(grad_x).all() and torch.isfinite(grad_z).all()
    assert grad_z.abs().sum() > 0


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("constant", ["x", "y", "both"])
def test_zero_and_finite_gradient_for_constant_input(unbiased: bool, constant: str) -> None:
    gen = torch.Generator().manual_seed(0)
    const = torch.full((8, 3), 0.1, dtype=torch.float64)
    varied = torch.randn(8, 3, generator=gen, dtype=torch.float64)
    x = (const if constant in ("x", "both") else varied).clone().requires_grad_(True)
    y = (const if constant in ("y", "both") else varied).clone().requires_grad_(True)

    value = distance_correlation(x, y, unbiased=unbiased)
    grad_x, grad_y = torch.autograd.grad(value, (x, y))

    assert value.item() == 0.0
    # Not NaN: the documented choice is a zero gradient where dCor is undefined.
    assert torch.equal(grad_x, torch.zeros_like(grad_x))
    assert torch.equal(grad_y, torch.zeros_like(grad_y))


@pytest.mark.parametrize(
    ("x_shape", "y_shape", "unbiased"),
    [
        ((1, 3), (1, 3), False),
        ((3, 3), (3, 2), True),
        ((5, 3), (6, 3), False),
        ((), (), False),
    ],
)
def test_rejects_bad_shapes(
    x_shape: tuple[int, ...], y_shape: tuple[int, ...], unbiased: bool
) -> None:
    x, y = torch.zeros(x_shape), torch.zeros(y_shape)

    with pytest.raises(ValueError):
        distance_correlation(x, y, unbiased=unbiased)


def test_rejects_integer_input() -> None:
    with pytest.raises(TypeError):
        distance_correlation(torch.zeros(4, 2, dtype=torch.long), torch.zeros(4, 2))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    x, y = _sample("noisy_nonlinear", 64, 20, 5, seed=4)
    x_gpu = torch.from_numpy(x).cuda().requires_grad_(True)

    value = distance_correlation(x_gpu, torch.from_numpy(y).cuda())
    (grad_x,) = torch.autograd.grad(value, (x_gpu,))

    assert value.device.type == "cuda"
    assert math.isclose(float(value), _ours(x, y), rel_tol=RTOL)
    assert torch.isfinite(grad_x).all()
