"""Metrics of a trained split classifier, computed in this process from its two checkpoints.

Accuracy on the train / validation / test slices with the noise it was trained with (drawn
afresh from a fixed seed), the distance correlation between the images and the cut tensor before
and after the noise, and the epsilon that the Laplace mechanism on the tanh-bounded cut nominally
gives (docs/study.md, defect 5).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from splitnn.common.checkpoints import CheckpointError, load_checkpoint
from splitnn.common.datasets import DatasetSplits
from splitnn.common.distcorr import distance_correlation
from splitnn.common.models import CUT_SHAPE, Body, Head
from splitnn.common.noise import LaplaceNoise
from splitnn.common.seeds import seed_for

# tanh bounds every one of the 500 cut values to [-1, 1]: one sample moves each by at most 2.
L1_SENSITIVITY = 2.0 * CUT_SHAPE[0]
# dCor needs two n x n distance matrices: the test slice is subsampled to bound the memory.
DCOR_SAMPLES = 1000
# Train accuracy on at most this many (the first) training images: MNIST's 40,000 would take
# longer to evaluate than the rest of the measurement together.
TRAIN_SAMPLES = 10_000
_BATCH = 256  # faster than 500 on a 2-core CPU

EPSILON_NOTE = f"""\
epsilon (column `epsilon`) is the nominal privacy loss of ONE release of one sample's cut tensor
by the Laplace mechanism. tanh bounds each of the {CUT_SHAPE[0]} cut values to [-1, 1], so
swapping one image for another moves the cut by at most {L1_SENSITIVITY:g} in L1 norm, whatever
part 1's weights are; Laplace(0, b) noise on every value then gives epsilon = {L1_SENSITIVITY:g} / b
per release ('inf' for b = 0: no noise, no guarantee).
What it promises: one noisy cut tensor is at most exp(epsilon) times more likely under the true
image than under any other image.
What it does not promise: at the study's noise levels (b <= 5, so epsilon >= 200) that factor is
astronomically large and bounds nothing an attacker cares about. It covers the cut tensor only:
not the labels (sent in the clear), the returned gradients, or part 1's weights (trained on the
data, and lent to the attacker in the threat model). And it composes: each training epoch
releases every training image once more (column `releases` = epochs; by basic composition
`epsilon_total` = epochs x epsilon), and every evaluation or deployment pass adds another release.
"""


@dataclass(frozen=True)
class Measurement:
    """Accuracies in percent; dCor of the flattened images vs the cut tensor [N, 500].

    `dcor`/`dcor_sent` are the study's (biased, V-statistic) estimator; `*_unbiased` is the
    bias-corrected squared dCor, about 0 for independent data. The biased estimator grows with
    the dimension of independent noise, so it can rise when noise is added; the bias-corrected
    one falls, as dependence does. `posttrain` maps a noise scale b added after training to the
    test accuracy with it. `train_samples`, `val_samples` and `test_samples` are the images each
    accuracy is measured on (the test accuracy with post-training noise too).
    """

    train_accuracy: float
    val_accuracy: float
    test_accuracy: float
    dcor: float
    dcor_sent: float
    dcor_unbiased: float
    dcor_sent_unbiased: float
    dcor_samples: int
    train_samples: int
    val_samples: int
    test_samples: int
    posttrain: dict[float, float]


def epsilon(noise: float) -> float:
    """Nominal epsilon of one Laplace release of the cut with scale `noise` (inf for 0)."""
    return math.inf if noise == 0 else L1_SENSITIVITY / noise


def load_classifier(checkpoint: Path, head_checkpoint: Path) -> tuple[Body, Head]:
    """Part 1 and part 2 of a trained classifier, in eval mode.

    Raises:
        CheckpointError: a file is missing, unreadable, or not the part it should be.
    """
    body_state, body_manifest = load_checkpoint(checkpoint)
    head_state, head_manifest = load_checkpoint(head_checkpoint)
    if body_manifest.get("part") != "body" or head_manifest.get("part") != "head":
        raise CheckpointError(f"{checkpoint} / {head_checkpoint}: not a part-1 / part-2 pair")
    body, head = Body(), Head(int(head_manifest.get("num_classes", 10)))
    body.load_state_dict(body_state)
    head.load_state_dict(head_state)
    return body.eval(), head.eval()


@torch.no_grad()
def cuts(body: Body, images: torch.Tensor) -> torch.Tensor:
    """images float32 [N, 1, 28, 28] -> pre-noise cut tensors float32 [N, 500]."""
    parts = [body(images[s : s + _BATCH]) for s in range(0, len(images), _BATCH)]
    return torch.cat(parts) if parts else torch.empty(0, *CUT_SHAPE)


@torch.no_grad()
def accuracy(head: Head, cut: torch.Tensor, labels: torch.Tensor, noise: LaplaceNoise) -> float:
    """Percent of `labels` (int64 [N]) predicted from `cut` (float32 [N, 500]) plus noise."""
    correct = sum(
        int((head(noise(cut[s : s + _BATCH])).argmax(1) == labels[s : s + _BATCH]).sum())
        for s in range(0, len(cut), _BATCH)
    )
    return 100.0 * correct / max(len(cut), 1)


def measure_classifier(
    body: Body,
    head: Head,
    *,
    splits: DatasetSplits,
    noise: float,
    seed: int = 0,
    posttrain_levels: Iterable[float] = (),
) -> Measurement:
    """Accuracies with the training noise, dCor on (a subsample of) the test slice, and the test
    accuracy with each of `posttrain_levels` as the noise instead (post-training noise)."""
    draw = LaplaceNoise(noise, seed=seed_for(seed, "measure_noise"))
    train = splits.train.take(TRAIN_SAMPLES)
    train_acc, val_acc = (
        accuracy(head, cuts(body, subset.images), subset.labels, draw)
        for subset in (train, splits.val)
    )
    test_cut = cuts(body, splits.test.images)
    test_acc = accuracy(head, test_cut, splits.test.labels, draw)
    n = min(DCOR_SAMPLES, len(splits.test))
    images = splits.test.images[:n].reshape(n, -1).double()
    clean = test_cut[:n].double()
    sent = draw(clean)
    posttrain = {
        b: accuracy(
            head,
            test_cut,
            splits.test.labels,
            LaplaceNoise(b, seed=seed_for(seed, "measure_noise")),
        )
        for b in posttrain_levels
    }
    return Measurement(
        train_accuracy=train_acc,
        val_accuracy=val_acc,
        test_accuracy=test_acc,
        dcor=float(distance_correlation(images, clean)),
        dcor_sent=float(distance_correlation(images, sent)),
        dcor_unbiased=float(distance_correlation(images, clean, unbiased=True)),
        dcor_sent_unbiased=float(distance_correlation(images, sent, unbiased=True)),
        dcor_samples=n,
        train_samples=len(train),
        val_samples=len(splits.val),
        test_samples=len(splits.test),
        posttrain=posttrain,
    )
