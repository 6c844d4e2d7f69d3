"""Training an inversion decoder on (cut tensor, image) pairs, and applying it."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from splitnn.attacker.oracle import CutOracle
from splitnn.common.devices import to_compute


def train_decoder(
    decoder: nn.Module,
    *,
    oracle: CutOracle,
    images: torch.Tensor,
    noisy: bool,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    progress: bool = True,
) -> list[float]:
    """Fits decoder(oracle(x)) ≈ x on the attacker's auxiliary images by MSE.

    The oracle is queried afresh every epoch, so a noisy oracle gives new noise each time: the
    attacker may query its black box as often as it likes.

    Args:
        images: float32 [N,1,28,28] in [0,1], the auxiliary data.
        noisy: query with the deployed noise (the honest protocol); False gives the reference's
            noise-free shortcut.

    Returns:
        Mean training loss per epoch.
    """
    optimizer = torch.optim.Adam(decoder.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    bar = tqdm(range(epochs), desc="attacker", unit="epoch", disable=not progress, leave=False)
    for _ in bar:
        cuts = oracle.query(images, noisy=noisy)
        order = torch.randperm(len(images), generator=generator)
        decoder.train()
        total = 0.0
        for start in range(0, len(images), batch_size):
            idx = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = F.mse_loss(decoder(to_compute(cuts[idx])), to_compute(images[idx]))
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / max(len(images), 1))
        bar.set_postfix(mse=f"{losses[-1]:.4f}")
    return losses


@torch.no_grad()
def reconstruct(decoder: nn.Module, cuts: torch.Tensor, *, batch_size: int = 500) -> torch.Tensor:
    """cuts: float32 [N,500] -> images float32 [N,1,28,28], clamped to the pixel range [0,1]."""
    decoder.eval()
    outputs = [
        decoder(to_compute(cuts[s : s + batch_size])).cpu() for s in range(0, len(cuts), batch_size)
    ]
    if not outputs:
        return torch.empty(0, 1, 28, 28)
    return torch.cat(outputs).clamp_(0.0, 1.0)
