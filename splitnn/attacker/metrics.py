"""Scores of reconstructions against the original images, looked up by name.

Every metric takes originals and reconstructions, both float [N, C, H, W] with pixels in [0, 1]
(data range 1), and returns a Python float. Computation is in float64 on the inputs' device.
Reconstructions are scored as given: clamp an unbounded decoder's output (the study's affine
decoder) to [0, 1] first, as an attacker who knows the pixel range would. The accuracy of a
validation classifier on the reconstructions is computed elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType

import torch
import torch.nn.functional as F

from splitnn.common.distcorr import distance_correlation

# Per-image MSE is floored here, so identical images score 100 dB rather than infinity (which
# would make the mean infinite and cannot be written to a CSV as a number).
MSE_FLOOR = 1e-10
PSNR_CAP_DB = -10.0 * math.log10(MSE_FLOOR)

# SSIM constants of Wang et al. (2004), as in skimage with gaussian_weights=True.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03

Metric = Callable[[torch.Tensor, torch.Tensor], float]


def _checked(
    originals: torch.Tensor, reconstructions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both as float64 [N, C, H, W]; raises ValueError on mismatched or implausible input."""
    if originals.shape != reconstructions.shape:
        raise ValueError(
            f"originals {tuple(originals.shape)} and reconstructions "
            f"{tuple(reconstructions.shape)} differ in shape"
        )
    if originals.dim() != 4 or originals.shape[0] == 0:
        raise ValueError(f"expected images [N, C, H, W] with N >= 1, got {tuple(originals.shape)}")
    if not (originals.is_floating_point() and reconstructions.is_floating_point()):
        raise ValueError("images must be floating point")
    x, y = originals.double(), reconstructions.double()
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError("images contain NaN or infinite values")
    # Normalised images (mean 0.1307, std 0.3081) are the likely mistake here.
    if x.min() < 0.0 or x.max() > 1.0:
        raise ValueError("original pixels must lie in [0, 1]; were normalised images passed?")
    return x, y


def _per_image_mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((x - y) ** 2).flatten(1).mean(dim=1)


def mse(originals: torch.Tensor, reconstructions: torch.Tensor) -> float:
    """Mean squared pixel error over all images and pixels (lower is better)."""
    x, y = _checked(originals, reconstructions)
    return float(_per_image_mse(x, y).mean())


def psnr(originals: torch.Tensor, reconstructions: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB, data range 1: 10 log10(1 / MSE) per image, then averaged
    (the study's convention, and every table's `psnr`); see `psnr_pooled` for the other one.

    Each image's MSE is floored at `MSE_FLOOR`, so the result is at most `PSNR_CAP_DB` (100 dB).
    """
    x, y = _checked(originals, reconstructions)
    per_image = -10.0 * torch.log10(_per_image_mse(x, y).clamp_min(MSE_FLOOR))
    return float(per_image.mean())


def psnr_pooled(originals: torch.Tensor, reconstructions: torch.Tensor) -> float:
    """PSNR of the pooled MSE in dB, data range 1: 10 log10(1 / mean MSE over all pixels of all
    images), the torchmetrics convention. Not the reported `psnr` (per image, then averaged),
    which is at least this by Jensen's inequality; -10 log10 of a table's `mse` column gives it.
    Floored like `psnr`, so at most `PSNR_CAP_DB`.
    """
    x, y = _checked(originals, reconstructions)
    return float(-10.0 * torch.log10(_per_image_mse(x, y).mean().clamp_min(MSE_FLOOR)))


def _gaussian_window(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The normalised 11 x 11 Gaussian (sigma 1.5) as a conv2d weight [1, 1, 11, 11]."""
    offsets = torch.arange(SSIM_WINDOW, dtype=dtype, device=device) - (SSIM_WINDOW - 1) / 2
    line = torch.exp(-(offsets**2) / (2 * SSIM_SIGMA**2))
    line = line / line.sum()
    return torch.outer(line, line)[None, None]


def ssim_per_image(originals: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Structural similarity of each image pair: float64 [N] (1 for identical images).

    Gaussian window 11 x 11, sigma 1.5, K1 0.01, K2 0.03, data range 1, population (not sample)
    covariances; the SSIM map is averaged over the positions where the window fits inside the
    image and over channels. Equals skimage's ``structural_similarity(gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=1)``, which crops the same border.
    """
    x, y = _checked(originals, reconstructions)
    n, c, h, w = x.shape
    if min(h, w) < SSIM_WINDOW:
        raise ValueError(f"images of {h} x {w} are smaller than the {SSIM_WINDOW}-pixel window")
    # Five local means in one convolution: every plane is a separate one-channel image.
    planes = torch.stack([x, y, x * x, y * y, x * y]).reshape(5 * n * c, 1, h, w)
    local = F.conv2d(planes, _gaussian_window(x.dtype, x.device))
    mu_x, mu_y, xx, yy, xy = local.reshape(5, n, c, *local.shape[-2:])
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # (K * data range)^2 with data range 1
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    denominator = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    per_image: torch.Tensor = (numerator / denominator).flatten(1).mean(dim=1)
    return per_image


def ssim(originals: torch.Tensor, reconstructions: torch.Tensor) -> float:
    """Mean structural similarity over the images, in [-1, 1] (higher is better)."""
    return float(ssim_per_image(originals, reconstructions).mean())


def dcor(originals: torch.Tensor, reconstructions: torch.Tensor) -> float:
    """Distance correlation between flattened originals and reconstructions (biased V-statistic).

    The study's measure dCor(x, x_hat), in [0, 1]. It is biased upwards in high dimension: on
    500 MNIST images, originals against a shuffled copy (independent pairs) score about 0.30,
    and independent uniform noise about 0.93; compare settings, not against 0. Needs N >= 2.
    """
    x, y = _checked(originals, reconstructions)
    return float(distance_correlation(x.flatten(1), y.flatten(1)))


def dcor_sq_unbiased(originals: torch.Tensor, reconstructions: torch.Tensor) -> float:
    """Bias-corrected SQUARED distance correlation R*² (Székely & Rizzo 2014), in [-1, 1].

    About 0 for independent pairs whatever the dimension, 1 for identical images. Needs N >= 4.
    """
    x, y = _checked(originals, reconstructions)
    return float(distance_correlation(x.flatten(1), y.flatten(1), unbiased=True))


METRICS: Mapping[str, Metric] = MappingProxyType(
    {
        "mse": mse,
        "psnr": psnr,
        "ssim": ssim,
        "dcor": dcor,
        "dcor_sq_unbiased": dcor_sq_unbiased,
    }
)


def score(originals: torch.Tensor, reconstructions: torch.Tensor) -> dict[str, float]:
    """Every registered metric, by name.

    Args:
        originals: float [N, 1, 28, 28] in [0, 1], the victim's true images; N >= 4.
        reconstructions: float [N, 1, 28, 28], the decoder's output for the same images, in the
            same order (clamped to [0, 1] if the decoder is unbounded).

    Returns:
        {"mse": ..., "psnr": ..., "ssim": ..., "dcor": ..., "dcor_sq_unbiased": ...}.
    """
    return {name: metric(originals, reconstructions) for name, metric in METRICS.items()}
