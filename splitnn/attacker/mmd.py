"""Maximum mean discrepancy with a sum of Gaussian kernels (MK-MMD), marginal or per class.

The passive attacker's substitute part 1 is trained so that its cut tensors are distributed like
the ones that arrived on the wire; MMD measures that distance without a critic to train. A sum of
Gaussian kernels of several bandwidths (Gretton et al. 2012; Long et al. 2015, DAN) needs no
single bandwidth to be right: the bandwidths are multiples of the mean pairwise squared distance
of the pooled batch, so the same scales fit tanh cut tensors of any spread.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Multiples of the batch's mean pairwise squared distance used as the kernels' 2 sigma^2.
DEFAULT_SCALES: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)


def gaussian_kernels(
    x: torch.Tensor, y: torch.Tensor, *, bandwidths: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """Sum over bandwidths h of exp(-||x_i - y_j||^2 / h): x float32 [N, D], y [M, D] -> [N, M].

    Each h is 2 sigma^2 of one Gaussian kernel; all must be positive.
    """
    h = torch.as_tensor(bandwidths, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
    if h.numel() == 0 or bool((h <= 0).any()):
        raise ValueError("bandwidths must be a non-empty list of positive numbers")
    sq = torch.cdist(x, y).pow(2)
    return torch.exp(-sq.unsqueeze(0) / h).sum(0)


def bandwidths_for(
    x: torch.Tensor, y: torch.Tensor, *, scales: Sequence[float] = DEFAULT_SCALES
) -> torch.Tensor:
    """The kernels' 2 sigma^2: `scales` times the mean pairwise squared distance of x and y pooled.

    Detached: the bandwidths follow the data but are not a way to lower the loss.
    """
    pooled = torch.cat([x, y]).detach()
    n = pooled.shape[0]
    mean_sq = torch.cdist(pooled, pooled).pow(2).sum() / max(n * n - n, 1)
    base = mean_sq.clamp_min(1e-8)
    return base * torch.as_tensor(scales, dtype=x.dtype, device=x.device)


def mk_mmd(
    x: torch.Tensor, y: torch.Tensor, *, scales: Sequence[float] = DEFAULT_SCALES
) -> torch.Tensor:
    """Squared MMD between samples x float32 [N, D] and y [M, D]: a differentiable scalar.

    The biased (V-statistic) estimate mean k(x, x') + mean k(y, y') - 2 mean k(x, y): never
    negative, zero when the two samples are the same multiset, growing as they move apart.
    """
    if x.shape[0] == 0 or y.shape[0] == 0:
        raise ValueError("MMD needs at least one sample on each side")
    h = bandwidths_for(x, y, scales=scales)
    kxx = gaussian_kernels(x, x, bandwidths=h).mean()
    kyy = gaussian_kernels(y, y, bandwidths=h).mean()
    kxy = gaussian_kernels(x, y, bandwidths=h).mean()
    return (kxx + kyy - 2 * kxy).clamp_min(0.0)


def conditional_mk_mmd(
    x: torch.Tensor,
    x_labels: torch.Tensor,
    y: torch.Tensor,
    y_labels: torch.Tensor,
    *,
    scales: Sequence[float] = DEFAULT_SCALES,
) -> torch.Tensor:
    """Mean over the classes present on both sides of mk_mmd(x of class c, y of class c).

    x float32 [N, D] with x_labels int64 [N]; y [M, D] with y_labels [M]. Classes seen on one side
    only are skipped; with no class in common the result is a zero that keeps the graph.
    """
    common = sorted(set(x_labels.tolist()) & set(y_labels.tolist()))
    if not common:
        return x.sum() * 0.0
    terms = [mk_mmd(x[x_labels == c], y[y_labels == c], scales=scales) for c in common]
    return torch.stack(terms).mean()
