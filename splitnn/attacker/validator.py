"""The independent validation classifier that judges whether reconstructions are recognisable.

Same architecture as the victim's model, trained in one piece without any defence on the
training slice; its accuracy on reconstructions of unseen images says how much of the class
survives the inversion.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from splitnn.common.checkpoints import load_checkpoint, save_checkpoint
from splitnn.common.datasets import DatasetSplits, epoch_permutation
from splitnn.common.devices import on_device, to_compute
from splitnn.common.models import Body, Head
from splitnn.common.seeds import SEEDING, seed_for

logger = logging.getLogger(__name__)


def build_validator(seed: int, num_classes: int) -> nn.Sequential:
    """Part 1 and part 2 in one piece, initial weights from the validator's own stream of `seed`
    (never the victim's: the victim of the same seed starts elsewhere)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for(seed, "validator"))
        return on_device(nn.Sequential(Body(), Head(num_classes)))


def validator_path(model_dir: Path, dataset: str, seed: int, epochs: int = 5) -> Path:
    return model_dir / "validators" / f"{dataset}_validator_seed{seed}_epochs{epochs}.ckpt"


def load_or_train_validator(
    *, splits: DatasetSplits, model_dir: Path, seed: int, epochs: int = 5, progress: bool = True
) -> nn.Sequential:
    """Loads the data set's validator, training and saving it first if there is none."""
    path = validator_path(model_dir, splits.name, seed, epochs)
    model = build_validator(seed, splits.num_classes)
    if path.exists():
        state, manifest = load_checkpoint(path)
        if manifest.get("seeding") == SEEDING:
            model.load_state_dict(state)
            return model.eval()
        logger.info("%s was made under another seeding scheme: training it again", path)
    logger.info(
        "training the validation classifier on %s (%d images)", splits.name, len(splits.train)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in tqdm(range(1, epochs + 1), desc="validator", disable=not progress, leave=False):
        model.train()
        order = epoch_permutation(
            len(splits.train), seed=seed_for(seed, "validator_order"), epoch=epoch
        )
        for start in range(0, len(order), 128):
            idx = order[start : start + 128]
            optimizer.zero_grad(set_to_none=True)
            images, labels = splits.train.images[idx], splits.train.labels[idx]
            F.cross_entropy(model(to_compute(images)), to_compute(labels)).backward()
            optimizer.step()
    model.eval()
    test_accuracy = accuracy(model, splits.test.images, splits.test.labels)
    save_checkpoint(
        path,
        model.state_dict(),
        {
            "part": "validator",
            "dataset": splits.name,
            "seed": seed,
            "seeding": SEEDING,
            "epochs": epochs,
            "test_accuracy": test_accuracy,
        },
    )
    logger.info("validator test accuracy %.2f%% (saved %s)", test_accuracy, path)
    return model


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Percent of `images` (float32 [N,1,28,28]) classified as `labels` (int64 [N]), on the
    model's device."""
    model.eval()
    correct = sum(
        int((model(to_compute(images[s : s + 500])).argmax(1).cpu() == labels[s : s + 500]).sum())
        for s in range(0, len(images), 500)
    )
    return 100.0 * correct / max(len(images), 1)
