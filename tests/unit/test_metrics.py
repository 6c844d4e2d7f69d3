"""Reconstruction scores: hand-computed values, skimage agreement, the registry.

scikit-image is a dev dependency: the SSIM reference check always runs, never skips.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage import metrics

from splitnn.attacker.metrics import (
    METRICS,
    PSNR_CAP_DB,
    dcor,
    dcor_sq_unbiased,
    mse,
    psnr,
    score,
    ssim,
    ssim_per_image,
)


def digits(n: int, *, seed: int = 0) -> torch.Tensor:
    """Smooth blob images float32 [n, 1, 28, 28] in [0, 1], with structure for SSIM to see."""
    generator = torch.Generator().manual_seed(seed)
    grid = torch.linspace(-1, 1, 28)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    centres = torch.rand(n, 2, 1, 1, generator=generator) - 0.5
    widths = 0.1 + 0.3 * torch.rand(n, 1, 1, generator=generator)
    blobs = torch.exp(-((xx - centres[:, 0]) ** 2 + (yy - centres[:, 1]) ** 2) / widths)
    return blobs.unsqueeze(1).float()


def noisy(images: torch.Tensor, level: float, *, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (images + level * torch.randn(images.shape, generator=generator)).clamp(0, 1)


def test_mse_of_known_tensors() -> None:
    originals = torch.zeros(2, 1, 28, 28)
    reconstructions = torch.zeros(2, 1, 28, 28)
    reconstructions[0] = 0.5  # squared error 0.25 on every pixel of one image of two
    reconstructions[1, 0, 0, :4] = 1.0  # 4 pixels of 784 with squared error 1

    assert mse(originals, reconstructions) == pytest.approx((0.25 + 4 / 784) / 2)


def test_psnr_of_a_known_mse_and_its_cap() -> None:
    originals = torch.zeros(3, 1, 28, 28)

    assert psnr(originals, originals + 0.1) == pytest.approx(20.0, abs=1e-5)  # MSE 0.01
    assert psnr(originals, originals + 1.0) == pytest.approx(0.0, abs=1e-9)  # MSE 1
    assert psnr(originals, originals) == PSNR_CAP_DB == pytest.approx(100.0)


def test_psnr_averages_per_image_values() -> None:
    originals = torch.zeros(2, 1, 28, 28)
    reconstructions = torch.stack([originals[0] + 0.1, originals[1] + 0.01])

    assert psnr(originals, reconstructions) == pytest.approx((20.0 + 40.0) / 2, abs=1e-4)


def test_ssim_of_an_image_with_itself_is_one() -> None:
    images = digits(4)

    assert ssim(images, images) == pytest.approx(1.0, abs=1e-12)
    assert ssim(torch.zeros(2, 1, 28, 28), torch.zeros(2, 1, 28, 28)) == pytest.approx(1.0)


def test_ssim_decreases_with_added_noise() -> None:
    images = digits(8)

    values = [ssim(images, noisy(images, level)) for level in (0.01, 0.05, 0.2, 0.5)]

    assert values == sorted(values, reverse=True)
    assert values[0] > 0.9 and values[-1] < 0.3


def test_ssim_per_image_shape_and_constant_offset() -> None:
    images = digits(3)

    per_image = ssim_per_image(images, (images + 0.2).clamp(0, 1))

    assert per_image.shape == (3,) and per_image.dtype == torch.float64
    assert torch.all(per_image < 1.0)


def test_ssim_matches_skimage() -> None:
    originals = digits(6, seed=2)
    reconstructions = noisy(originals, 0.15, seed=3)
    reconstructions[0] = originals[0]

    expected = np.mean(
        [
            metrics.structural_similarity(  # type: ignore[no-untyped-call]
                o[0].double().numpy(),
                r[0].double().numpy(),
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1.0,
            )
            for o, r in zip(originals, reconstructions, strict=True)
        ]
    )

    # Same window, constants and border crop: agreement to rounding, far inside the 1e-3 asked.
    assert ssim(originals, reconstructions) == pytest.approx(expected, abs=1e-6)


def test_dcor_of_identical_and_of_independent_images() -> None:
    generator = torch.Generator().manual_seed(4)
    a = torch.rand(100, 1, 28, 28, generator=generator)
    b = torch.rand(100, 1, 28, 28, generator=generator)

    assert dcor(a, a) == pytest.approx(1.0, abs=1e-6)
    assert dcor_sq_unbiased(a, a) == pytest.approx(1.0, abs=1e-6)
    assert abs(dcor_sq_unbiased(a, b)) < 0.05
    # The biased V-statistic is not small for independent high-dimensional data (documented).
    assert dcor(a, b) > 0.9


def test_dcor_orders_reconstructions_by_fidelity() -> None:
    images = digits(64, seed=5)

    close = dcor_sq_unbiased(images, noisy(images, 0.05))
    far = dcor_sq_unbiased(images, noisy(images, 0.5))

    assert close > far > 0.0


def test_score_returns_every_registered_metric_as_floats() -> None:
    images = digits(8)

    result = score(images, noisy(images, 0.1))

    assert list(result) == list(METRICS) == ["mse", "psnr", "ssim", "dcor", "dcor_sq_unbiased"]
    assert all(isinstance(v, float) and math.isfinite(v) for v in result.values())
    assert result["mse"] == pytest.approx(mse(images, noisy(images, 0.1)))


def test_bad_inputs_are_refused() -> None:
    images = digits(4)

    with pytest.raises(ValueError, match="differ in shape"):
        mse(images, images[:3])
    with pytest.raises(ValueError, match="normalised"):
        mse((images - 0.1307) / 0.3081, images)
    with pytest.raises(ValueError, match="NaN"):
        psnr(images, torch.full_like(images, math.nan))
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        ssim(images[:, 0], images[:, 0])
    with pytest.raises(ValueError, match="window"):
        ssim(images[..., :8, :8], images[..., :8, :8])
