"""Trivial reconstructions every attack is measured beside.

An attack that scores no better than these has learnt nothing about the images beyond what a
server knows without looking at the cut tensors:

- ``mean_image``: every reconstruction is the mean of the attacker's public (auxiliary) images.
- ``class_mean_image``: every reconstruction is the mean public image of the class the attacker
  assigns to that tensor (the label the data holder sent in the clear, or the class the server's
  own head predicts). Its validator accuracy is the attacker's label accuracy, not a sign of
  reconstruction: a server that receives labels has that much by design.

Both are scored with the same metrics as an attack (`splitnn.attacker.metrics.score`) and the
same validator.
"""

from __future__ import annotations

import torch
from torch import nn

from splitnn.attacker.metrics import score
from splitnn.attacker.validator import accuracy

BASELINES = ("mean_image", "class_mean_image")


def class_means(images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean image per class: images float32 [N, C, H, W], labels int64 [N] -> [classes, C, H, W].

    A class without images gets the mean of all images.
    """
    if images.shape[0] != labels.shape[0] or images.shape[0] == 0:
        raise ValueError(
            f"need as many labels as images (>= 1), got {images.shape[0]} and {labels.shape[0]}"
        )
    overall = images.mean(dim=0)
    means = overall.expand(num_classes, *overall.shape).clone()
    for c in range(num_classes):
        chosen = labels == c
        if bool(chosen.any()):
            means[c] = images[chosen].mean(dim=0)
    return means


def baseline_images(
    public_images: torch.Tensor,
    public_labels: torch.Tensor,
    classes: torch.Tensor,
    *,
    num_classes: int = 10,
) -> dict[str, torch.Tensor]:
    """Each baseline's reconstructions of M tensors: name -> float32 [M, C, H, W].

    public_images: float32 [N, C, H, W] in [0, 1]; public_labels: int64 [N]; classes: int64 [M],
    the class the attacker assigns to each attacked tensor.
    """
    if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= num_classes):
        raise ValueError(f"classes must lie in 0..{num_classes - 1}")
    overall = public_images.mean(dim=0, keepdim=True)
    per_class = class_means(public_images, public_labels, num_classes)
    return {
        "mean_image": overall.expand(len(classes), *overall.shape[1:]).clone(),
        "class_mean_image": per_class[classes],
    }


def score_baselines(
    originals: torch.Tensor,
    labels: torch.Tensor,
    *,
    public_images: torch.Tensor,
    public_labels: torch.Tensor,
    classes: torch.Tensor,
    validator: nn.Module,
) -> dict[str, dict[str, float]]:
    """name -> {mse, psnr, ssim, dcor, validator_accuracy} of each baseline against `originals`.

    originals: float32 [M, C, H, W] in [0, 1], the true images; labels: int64 [M], their true
    labels (for the validator); classes: int64 [M], see `baseline_images`.
    """
    out: dict[str, dict[str, float]] = {}
    for name, recon in baseline_images(public_images, public_labels, classes).items():
        scores = dict(score(originals, recon))
        scores["validator_accuracy"] = accuracy(validator, recon, labels)
        out[name] = scores
    return out
