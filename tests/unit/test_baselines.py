"""The trivial reconstructions every attack is scored beside."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from splitnn.attacker.baselines import baseline_images, class_means, score_baselines


def _images(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.arange(n) % 3


def test_class_means_by_hand() -> None:
    images = torch.stack([torch.full((1, 2, 2), v) for v in (0.0, 1.0, 0.5, 0.25)])
    labels = torch.tensor([0, 0, 1, 1])
    means = class_means(images, labels, num_classes=3)
    assert means[0].eq(0.5).all() and means[1].eq(0.375).all()
    # A class without images falls back to the mean of all images.
    assert torch.allclose(means[2], images.mean(dim=0))


def test_baseline_images_follow_the_assigned_class() -> None:
    public, labels = _images(30)
    recon = baseline_images(public, labels, torch.tensor([2, 0, 2]))
    assert recon["mean_image"].shape == (3, 1, 28, 28)
    assert torch.allclose(recon["mean_image"][1], public.mean(dim=0))
    assert torch.allclose(recon["class_mean_image"][0], public[labels == 2].mean(dim=0))
    assert torch.equal(recon["class_mean_image"][0], recon["class_mean_image"][2])
    with pytest.raises(ValueError, match="classes"):
        baseline_images(public, labels, torch.tensor([10]))


class _ByMeanPixel(nn.Module):
    """A validator stand-in: class 1 when the image's mean pixel is above 0.5, else 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bright = (x.flatten(1).mean(dim=1) > 0.5).float()
        return torch.stack([1 - bright, bright], dim=1)


def test_scores_of_a_perfect_class_mean() -> None:
    # Two classes of constant images: the class mean is each image exactly.
    public = torch.cat([torch.zeros(5, 1, 28, 28), torch.ones(5, 1, 28, 28)])
    public_labels = torch.tensor([0] * 5 + [1] * 5)
    originals = torch.cat([torch.zeros(4, 1, 28, 28), torch.ones(4, 1, 28, 28)])
    labels = torch.tensor([0] * 4 + [1] * 4)
    scores = score_baselines(
        originals,
        labels,
        public_images=public,
        public_labels=public_labels,
        classes=labels,
        validator=_ByMeanPixel(),
    )
    assert scores["class_mean_image"]["mse"] == pytest.approx(0.0, abs=1e-9)
    assert scores["class_mean_image"]["validator_accuracy"] == 100.0
    assert scores["mean_image"]["mse"] == pytest.approx(0.25)
