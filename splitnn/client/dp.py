"""DP-SGD on part 1: per-sample clipping, seeded Gaussian noise, Poisson sampling, an accountant.

The pieces are assembled here rather than by Opacus's `make_private`, which would replace the
data holder's seeded, resumable batching; Opacus supplies the per-sample gradients (its hooks,
``GradSampleModule``) and the privacy accountant (RDP).

One step: a Poisson batch (each training sample joins with probability q = B / N, so the batch
size varies and may be 0); part 1's forward; the server's gradient d(mean loss)/d(cut) goes back
through part 1 (``cut.backward``), where the hooks keep every sample's own gradient g_i; each g_i
is clipped to norm C (over all of part 1's parameters together), the clipped ones are summed,
Gaussian noise N(0, sigma²C²) is added, and the sum is divided by the expected batch size B before
the optimiser's step. An empty batch sends nothing and steps on noise alone.

What epsilon covers: the parameters of part 1 at every step, and everything computed from them alone
(the saved model, its later deployment). It does not cover the cut tensors sent at each step:
each is a fresh function of its sample's image, released to the server (docs/defences.md).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from splitnn.common import exits

# DP-SGD wants its own learning rate: the holder's usual Adam 1e-4 takes too few useful steps
# when every step is noisy (docs/defences.md: mnist5k, 10 epochs, epsilon 3).
DP_LR = 1e-3
DP_DELTA = 1e-5
DP_MAX_GRAD_NORM = 1.0
# The accountant splitnn reports: Opacus's RDP accountant, whose conversion to (epsilon, delta)
# is Balle et al. 2020 (Opacus >= 1.0), tighter than the classic one of Mironov 2017.
ACCOUNTANT = "rdp"
# Why DP-SGD is refused with NoPeek (every program that refuses it says this).
NOPEEK_REFUSAL = (
    "DP-SGD cannot be combined with NoPeek (--nopeek): the distance-correlation term couples "
    "the samples of a batch, so clipping each sample's gradient bounds nothing"
)


@contextlib.contextmanager
def _quiet_orders() -> Iterator[None]:
    """Silences the accountant's note that a larger RDP order might tighten a large epsilon:
    the bound it gives is valid, with Opacus's default orders (what its own users report)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the (largest|smallest) alpha")
        yield


class DPError(exits.BadUsage):
    """DP-SGD settings that cannot work (and the reason)."""


@dataclass(frozen=True)
class DPSettings:
    """DP-SGD's settings: a target `epsilon` (sigma found for the run), or `noise_multiplier`.

    Attributes:
        epsilon: the (epsilon, delta) budget of the whole run; None: `noise_multiplier` is given.
        delta: the delta of the guarantee.
        noise_multiplier: sigma, the noise's standard deviation in units of the clipping norm.
        max_grad_norm: C, every sample's gradient is clipped to this L2 norm.
    """

    epsilon: float | None = None
    delta: float = DP_DELTA
    noise_multiplier: float | None = None
    max_grad_norm: float = DP_MAX_GRAD_NORM

    def __post_init__(self) -> None:
        if (self.epsilon is None) == (self.noise_multiplier is None):
            raise DPError("DP-SGD takes either a target epsilon or a noise multiplier, not both")
        if self.epsilon is not None and not self.epsilon > 0:
            raise DPError(f"the DP epsilon must be > 0, not {self.epsilon:g}")
        if self.noise_multiplier is not None and not self.noise_multiplier > 0:
            raise DPError(f"the DP noise multiplier must be > 0, not {self.noise_multiplier:g}")
        if not 0 < self.delta < 1:
            raise DPError(f"the DP delta must be in (0, 1), not {self.delta:g}")
        if not self.max_grad_norm > 0:
            raise DPError(f"the DP max grad norm must be > 0, not {self.max_grad_norm:g}")

    @property
    def tag(self) -> str:
        """The part of a run or checkpoint name that tells DP runs apart, e.g. ``dp3eps``."""
        if self.epsilon is not None:
            return f"dp{self.epsilon:g}eps".replace(".", "p")
        assert self.noise_multiplier is not None
        return f"dp{self.noise_multiplier:g}sigma".replace(".", "p")


def sample_rate(batch_size: int, samples: int) -> float:
    """q: each of `samples` training samples joins a batch with this probability."""
    if samples < 1:
        raise DPError("DP-SGD needs at least one training sample")
    return min(1.0, batch_size / samples)


def noise_multiplier_for(settings: DPSettings, *, sample_rate: float, steps: int) -> float:
    """sigma of `settings`: as given, or the smallest sigma whose epsilon after `steps` steps
    at rate `sample_rate` is within Opacus's tolerance (0.01) of the target."""
    if settings.noise_multiplier is not None:
        return settings.noise_multiplier
    assert settings.epsilon is not None
    from opacus.accountants.utils import get_noise_multiplier  # Opacus takes 2 s to import

    try:
        with _quiet_orders():
            sigma = get_noise_multiplier(
                target_epsilon=settings.epsilon,
                target_delta=settings.delta,
                sample_rate=sample_rate,
                steps=max(steps, 1),
                accountant=ACCOUNTANT,
            )
        return float(sigma)
    except ValueError as error:
        raise DPError(
            f"no noise multiplier reaches epsilon {settings.epsilon:g}: {error}"
        ) from None


def epsilon_spent(
    *, noise_multiplier: float, sample_rate: float, steps: int, delta: float
) -> float:
    """epsilon of `steps` DP-SGD steps with sigma and q, by the accountant splitnn reports."""
    accountant = Accountant(delta)
    accountant.step(noise_multiplier, sample_rate, steps=steps)
    return accountant.epsilon()


class Accountant:
    """The privacy spent so far: Opacus's RDP accountant with its history as plain numbers
    (so it can be saved with the data holder's resume state)."""

    def __init__(self, delta: float) -> None:
        from opacus.accountants import RDPAccountant

        self.delta = delta
        self._rdp = RDPAccountant()

    def step(self, noise_multiplier: float, sample_rate: float, *, steps: int = 1) -> None:
        """Counts `steps` steps with sigma and q."""
        if steps < 1:
            return
        history = self._rdp.history
        if history and history[-1][:2] == (noise_multiplier, sample_rate):
            history[-1] = (noise_multiplier, sample_rate, history[-1][2] + steps)
        else:
            history.append((noise_multiplier, sample_rate, steps))

    @property
    def steps(self) -> int:
        return sum(n for _, _, n in self._rdp.history)

    def epsilon(self) -> float:
        """epsilon at `delta` after the steps so far (0.0 before any)."""
        if not self._rdp.history:
            return 0.0
        with _quiet_orders():
            return float(self._rdp.get_epsilon(self.delta))

    def state_dict(self) -> dict[str, Any]:
        return {"delta": self.delta, "history": [list(entry) for entry in self._rdp.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if float(state["delta"]) != self.delta:
            raise ValueError(f"the saved accountant has delta {state['delta']}, not {self.delta}")
        self._rdp.history = [(float(s), float(q), int(n)) for s, q, n in state["history"]]


def poisson_batch(samples: int, rate: float, *, seed: int, epoch: int, batch: int) -> torch.Tensor:
    """The positions (int64 [b], ascending) of one Poisson batch: each of `samples` joins with
    probability `rate`. The same (seed, epoch, batch) always draws the same batch, so a resumed
    run takes exactly the batches the uninterrupted one would have."""
    state = int(np.random.SeedSequence([seed, epoch, batch]).generate_state(1, dtype=np.uint64)[0])
    draws = torch.rand(samples, generator=torch.Generator().manual_seed(state >> 1))
    return torch.nonzero(draws < rate).flatten()


def batch_bound(batch_size: int) -> int:
    """The largest Poisson batch a session admits for expected size B: B + 8 sqrt(B) + 8
    (a larger one is eight standard deviations out: it does not happen)."""
    return batch_size + math.ceil(8 * math.sqrt(batch_size)) + 8


def _per_sample_grads(body: nn.Module) -> nn.Module:
    """Opacus's per-sample-gradient hooks on `body`'s layers (see `_PerSampleGrads` below)."""
    from opacus.grad_sample import GradSampleModule

    class _PerSampleGrads(GradSampleModule):  # type: ignore[misc]
        """Opacus's hooks, with the per-sample gradients of each Linear weight written into
        one buffer kept from step to step.

        Part 1's Linear 9216 -> 500 has 4.6 M weights: its per-sample gradients at batch 128
        are 2.4 GB, which Opacus allocates twice a step (the outer products, then a zeroed
        copy). Writing them into a reused buffer gives the same numbers bit for bit (each entry
        is one product) in a fifth of the time.
        """

        def __init__(self, module: nn.Module) -> None:
            super().__init__(module, batch_first=True, loss_reduction="mean", strict=True)
            self._outer: dict[int, torch.Tensor] = {}
            # The hooks look their samplers up on the instance, at every backward.
            self.GRAD_SAMPLERS = {
                **GradSampleModule.GRAD_SAMPLERS,
                nn.Linear: self.linear_grad_sample,
            }

        def linear_grad_sample(
            self, layer: nn.Linear, activations: list[torch.Tensor], backprops: torch.Tensor
        ) -> dict[nn.Parameter, torch.Tensor]:
            """Per-sample gradients of `layer`: weight [n, out, in] (in the buffer), bias
            [n, out]. activations[0]: its input [n, in]; backprops: each sample's
            d(its loss)/d(output) [n, out]."""
            inputs = activations[0].to(backprops.dtype)
            n = inputs.shape[0]
            buffer = self._outer.get(id(layer))
            if buffer is None or buffer.shape[0] < n or buffer.dtype != backprops.dtype:
                shape = (n, *layer.weight.shape)
                buffer = torch.empty(shape, dtype=backprops.dtype, device=backprops.device)
                self._outer[id(layer)] = buffer
            out = buffer[:n]
            torch.mul(backprops[:, :, None], inputs[:, None, :], out=out)
            # Opacus moves it to `grad_sample` once the layer's backward is done.
            layer.weight._current_grad_sample = out  # type: ignore[attr-defined]
            grads: dict[nn.Parameter, torch.Tensor] = {}
            if layer.bias is not None:
                grads[layer.bias] = backprops
            return grads

    return _PerSampleGrads(body)


class DPSGD:
    """DP-SGD's step on part 1 (see the module docstring).

    Args:
        body: part 1; its Linear and Conv2d layers get Opacus's per-sample-gradient hooks.
        noise_multiplier: sigma.
        max_grad_norm: C.
        expected_batch_size: B (= q N), the divisor of the noised sum.
        noise_seed: seeds the Gaussian noise; each step's noise is drawn from (seed, epoch,
            batch), so a resumed run adds the same noise.
        delta: the delta at which the accountant reports epsilon.
        sample_rate: q, for the accountant.
    """

    def __init__(
        self,
        *,
        body: nn.Module,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: int,
        noise_seed: int,
        delta: float,
        sample_rate: float,
    ) -> None:
        self.body = body
        self.noise_multiplier = noise_multiplier
        self.max_grad_norm = max_grad_norm
        self.expected_batch_size = expected_batch_size
        self.noise_seed = noise_seed
        self.sample_rate = sample_rate
        self.accountant = Accountant(delta)
        self.hooks = _per_sample_grads(body)
        # torch warns at every backward that the first layer's full backward hook fires on its
        # outputs' gradients (its input, the images, needs none): that is what the per-sample
        # gradients are computed from.
        warnings.filterwarnings(
            "ignore", message="Full backward hook is firing when gradients are computed"
        )

    def _params(self) -> Iterator[nn.Parameter]:
        return (p for p in self.body.parameters() if p.requires_grad)

    def clipped_sum(self) -> list[torch.Tensor]:
        """Each parameter's sum over the batch of the clipped per-sample gradients (the
        per-sample gradients are then dropped)."""
        params = list(self._params())
        samples = [p.grad_sample for p in params]  # type: ignore[attr-defined]
        if any(s is None for s in samples):
            raise RuntimeError(
                "no per-sample gradients: part 1 had no backward since the last step"
            )
        n = samples[0].shape[0]
        norms = torch.stack([s.reshape(n, -1).norm(2, dim=1) for s in samples], dim=1).norm(
            2, dim=1
        )
        factors = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        sums = [torch.einsum("i,i...->...", factors, s) for s in samples]
        self.drop_per_sample()
        return sums

    def drop_per_sample(self) -> None:
        """Forgets the per-sample gradients (after a step, or a step that trains nothing)."""
        for p in self._params():
            p.grad_sample = None  # type: ignore[attr-defined]

    def batch(self, samples: int, *, seed: int, epoch: int, batch: int) -> torch.Tensor:
        """The positions (int64 [b]) of training batch (`epoch`, `batch`) among `samples`."""
        positions = poisson_batch(samples, self.sample_rate, seed=seed, epoch=epoch, batch=batch)
        if len(positions) > batch_bound(self.expected_batch_size):
            raise DPError(
                f"a Poisson batch of {len(positions)} samples, over the session's bound "
                f"{batch_bound(self.expected_batch_size)}"
            )
        return positions

    def privatise(self, *, epoch: int, batch: int, empty: bool = False) -> None:
        """Sets part 1's gradient to the noised mean of the clipped per-sample gradients of the
        last backward (`empty`: of no sample) and counts the step; the optimiser's step is the
        caller's."""
        params = list(self._params())
        sums = [torch.zeros_like(p) for p in params] if empty else self.clipped_sum()
        state = np.random.SeedSequence([self.noise_seed, epoch, batch]).generate_state(
            1, dtype=np.uint64
        )
        # Drawn on the CPU whatever the device: a seed gives the same noise everywhere.
        generator = torch.Generator().manual_seed(int(state[0]) >> 1)
        std = self.noise_multiplier * self.max_grad_norm
        for p, total in zip(params, sums, strict=True):
            noise = torch.normal(0.0, std, size=p.shape, generator=generator).to(p.device)
            p.grad = (total + noise) / self.expected_batch_size
        self.accountant.step(self.noise_multiplier, self.sample_rate)

    def epsilon(self) -> float:
        """epsilon spent so far at the accountant's delta."""
        return self.accountant.epsilon()

    def reset(self) -> None:
        """Back to no step taken (a run that starts over)."""
        self.drop_per_sample()
        self.accountant = Accountant(self.accountant.delta)
