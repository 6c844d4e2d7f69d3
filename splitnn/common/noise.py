"""Additive Laplace noise on the cut tensor, the study's first defence."""

from __future__ import annotations

import torch


class LaplaceNoise:
    """Adds Laplace(0, scale) noise, drawn fresh for every element of every call.

    Draws come from a private, seeded generator, so runs are reproducible and the global RNG is
    untouched. Laplace(0, b) is sampled as b * (E1 - E2) with E1, E2 ~ Exp(1) independent: no
    log(0) edge case as with inverse-CDF sampling.

    Args:
        scale: b >= 0; 0 means no noise.
        seed: seeds the generator.
    """

    def __init__(self, scale: float, *, seed: int = 0) -> None:
        if not scale >= 0.0 or scale == float("inf"):
            raise ValueError(f"noise scale must be a finite number >= 0, got {scale}")
        self.scale = float(scale)
        self._generator = torch.Generator().manual_seed(seed)

    def __call__(self, cut: torch.Tensor) -> torch.Tensor:
        """Returns cut + noise. cut: float [B, ...]; the result has the same shape and dtype.

        The noise is a constant w.r.t. autograd, so d(out)/d(cut) is the identity and a gradient
        w.r.t. the noisy tensor passes straight to `cut`.
        """
        if self.scale == 0.0:
            return cut
        return cut + self.sample(cut.shape, dtype=cut.dtype).to(cut.device)

    def get_state(self) -> torch.Tensor:
        """The generator's state (uint8 tensor), to resume the same stream of draws."""
        return self._generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self._generator.set_state(state)

    def sample(self, shape: torch.Size | tuple[int, ...], *, dtype: torch.dtype) -> torch.Tensor:
        """Draws Laplace(0, scale) noise of the given shape on the CPU."""
        e1 = torch.empty(shape, dtype=dtype).exponential_(generator=self._generator)
        e2 = torch.empty(shape, dtype=dtype).exponential_(generator=self._generator)
        return (e1 - e2).mul_(self.scale)
