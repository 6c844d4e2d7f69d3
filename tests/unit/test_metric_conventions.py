"""Which PSNR and which distance correlation the tables report: per-image PSNR against the PSNR
of the pooled MSE, and the bias-corrected squared dCor against the `dcor` package."""

from __future__ import annotations

import math

import dcor
import numpy as np
import pytest
import torch

from splitnn.attacker.metrics import dcor as dcor_biased
from splitnn.attacker.metrics import dcor_sq_unbiased, mse, psnr, psnr_pooled


def test_psnr_is_per_image_and_at_least_the_psnr_of_the_pooled_mse() -> None:
    originals = torch.zeros(2, 1, 28, 28)
    # MSE 0.01 on one image and 0.0001 on the other: 20 dB and 40 dB.
    recon = torch.cat([originals[:1] + 0.1, originals[1:] + 0.01])

    assert psnr(originals, recon) == pytest.approx(30.0, abs=1e-5)
    pooled = -10 * math.log10((0.01 + 0.0001) / 2)
    assert psnr_pooled(originals, recon) == pytest.approx(pooled, abs=1e-5)
    assert psnr_pooled(originals, recon) == pytest.approx(-10 * math.log10(mse(originals, recon)))
    assert psnr(originals, recon) > psnr_pooled(originals, recon)


def test_both_distance_correlations_match_the_dcor_package() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((40, 1, 28, 28))
    y = np.clip(x + 0.3 * rng.standard_normal(x.shape), 0, 1)
    originals, recon = torch.from_numpy(x), torch.from_numpy(y)
    flat_x, flat_y = x.reshape(40, -1), y.reshape(40, -1)

    assert dcor_biased(originals, recon) == pytest.approx(
        float(dcor.distance_correlation(flat_x, flat_y)), rel=1e-8
    )
    # Squared, bias-corrected: compare with the *_sqr reference, not its square root.
    assert dcor_sq_unbiased(originals, recon) == pytest.approx(
        float(dcor.u_distance_correlation_sqr(flat_x, flat_y)), rel=1e-8, abs=1e-12
    )


def test_on_independent_images_the_biased_dcor_is_high_and_the_corrected_near_zero() -> None:
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.random((200, 1, 28, 28)))
    y = torch.from_numpy(rng.random((200, 1, 28, 28)))

    assert dcor_biased(x, y) > 0.8
    assert abs(dcor_sq_unbiased(x, y)) < 0.02
