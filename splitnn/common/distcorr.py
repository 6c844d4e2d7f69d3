"""Distance correlation (Székely, Rizzo & Bakirov 2007) in PyTorch: the NoPeek loss and the metric.

One vectorised, differentiable implementation serves both as the NoPeek penalty w · dCor(x, z) and
as the measurement dCor(x, x_hat); its value matches the `dcor` package on the same data. Unlike
the study's reference (docs/study.md, defect 3) it uses Euclidean, not squared Euclidean, distances:
with squared distances dCor reduces to sqrt(RV coefficient) and sees only linear dependence.

Cost: O(B² · (p + q)) time and O(B²) memory, one Gram matrix per input.
"""

from __future__ import annotations

import torch

__all__ = ["distance_correlation"]


def _safe_sqrt(t: torch.Tensor) -> torch.Tensor:
    """sqrt(t) for t > 0 and 0 for t <= 0, with gradient 0 wherever t <= 0.

    sqrt has an infinite derivative at 0, and autograd's 0 · inf gives NaN for coincident rows
    (duplicate images, saturated tanh cuts). The distance ||u|| has the unit ball as its
    subdifferential at u = 0; we take its minimum-norm element, 0. The double `where` keeps the
    untaken branch finite (sqrt(1)), otherwise NaN would still leak into the backward pass. Plain
    tensor ops rather than a custom autograd.Function, so double backward works too.
    """
    positive = t > 0
    ones = torch.ones_like(t)
    return torch.where(positive, torch.sqrt(torch.where(positive, t, ones)), torch.zeros_like(t))


def _distance_matrix(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distance matrix of the rows of x: float [B, p] -> float [B, B], zero diagonal.

    Computed from the Gram matrix, so memory is O(B²) rather than the O(B² p) of pairwise
    differences. Subtracting the first row first (distances are translation invariant) keeps the
    Gram entries at the scale of the spread of the data rather than its offset, which limits the
    cancellation in |a|² + |b|² - 2 a·b. It also turns a constant input into exact zeros, so its
    distance matrix is exactly 0 whatever order the matmul sums in.
    """
    x = x - x[:1]
    gram = x @ x.T
    sq_norms = torch.diagonal(gram)
    d2 = (sq_norms[:, None] + sq_norms[None, :] - 2.0 * gram).clamp_min(0.0)
    # The diagonal is 0 by definition; rounding in the Gram formula would make it slightly positive.
    off_diagonal = ~torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return _safe_sqrt(d2 * off_diagonal)


def _double_centred(d: torch.Tensor) -> torch.Tensor:
    """Double centring for the V-statistic: A_ij = d_ij - d_i. - d_.j + d_.. (means). [B, B]."""
    row_means = d.mean(dim=1, keepdim=True)
    # d is symmetric, so the column means are the row means transposed.
    return d - row_means - row_means.T + d.mean()


def _u_centred(d: torch.Tensor) -> torch.Tensor:
    """U-centring (Székely & Rizzo 2014) for the bias-corrected estimator; needs B >= 4. [B, B]."""
    n = d.shape[0]
    row_sums = d.sum(dim=1, keepdim=True)
    centred = d - (row_sums + row_sums.T) / (n - 2) + d.sum() / ((n - 1) * (n - 2))
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=d.device)
    return centred * off_diagonal


def distance_correlation(
    x: torch.Tensor, y: torch.Tensor, *, unbiased: bool = False
) -> torch.Tensor:
    """Distance correlation between the samples x and y of one batch.

    Rows are samples; each is flattened, so x: float [B, ...] -> [B, p] and y: float [B, ...] ->
    [B, q]. Distances are Euclidean (exponent 1). Computed on the inputs' device and in their
    dtype (promoted to the wider one if they differ); differentiable w.r.t. both inputs, with a
    finite gradient where two rows coincide (see `_safe_sqrt`). If either input has zero distance
    variance (all its rows equal) the result is 0, not NaN, and so is its gradient.

    Args:
        x: float [B, ...], e.g. images [B, 1, 28, 28].
        y: float [B, ...], e.g. the cut tensor [B, 500]; same B as x.
        unbiased: False (default): the biased V-statistic estimator dCor_n(x, y) in [0, 1],
            which equals `dcor.distance_correlation(x, y)`. True: the bias-corrected estimator
            of the SQUARED distance correlation, R*²_n(x, y) in [-1, 1] (it can be negative,
            so no square root is taken), which equals `dcor.u_distance_correlation_sqr(x, y)`.

    Returns:
        A 0-d tensor of the inputs' (promoted) dtype, on their device.

    Raises:
        ValueError: if an input has no batch dimension, B < 2 (B < 4 when unbiased), or x and y
            have different batch sizes.
        TypeError: if an input is not floating point.
    """
    for name, t in (("x", x), ("y", y)):
        if t.dim() < 1:
            raise ValueError(f"{name} must have a batch dimension, got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be floating point, got {t.dtype}")
    n = x.shape[0]
    if y.shape[0] != n:
        raise ValueError(f"batch sizes differ: x has {n} rows, y has {y.shape[0]}")
    min_rows = 4 if unbiased else 2
    if n < min_rows:
        raise ValueError(f"need a batch of at least {min_rows} samples, got {n}")

    centre = _u_centred if unbiased else _double_centred
    a = centre(_distance_matrix(x.reshape(n, -1)))
    b = centre(_distance_matrix(y.reshape(n, -1)))
    # The normalisation (1/n² or 1/(n(n-3))) cancels in the ratio, so plain sums suffice.
    dcov_xy = (a * b).sum()
    # U-statistic variances can be negative; dcor takes |.|, as do we. Two square roots rather
    # than one of the product, so float32 cannot overflow for large inputs.
    denominator = _safe_sqrt((a * a).sum().abs()) * _safe_sqrt((b * b).sum().abs())
    defined = denominator > 0
    # Double `where` again: a zero denominator must not put 0/0 into the backward pass.
    r2 = torch.where(defined, dcov_xy / torch.where(defined, denominator, 1.0), 0.0)
    if unbiased:
        return r2
    # The V-statistic r2 is >= 0 in exact arithmetic; rounding may push a ~0 value below it.
    return _safe_sqrt(r2)
