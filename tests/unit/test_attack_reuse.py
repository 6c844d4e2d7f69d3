"""One oracle, several victims: the attacker trains its decoder once and reuses it, but only
while everything that determined it (the part 1's bytes, every training setting) is the same."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from splitnn.attacker import app
from splitnn.attacker.app import AttackConfig, decoder_manifest, load_or_train_decoder
from splitnn.attacker.inversion import train_decoder
from splitnn.attacker.oracle import BodyOracle
from splitnn.common.checkpoints import load_checkpoint, manifest_path, save_checkpoint
from splitnn.common.decoders import build_decoder
from splitnn.common.models import build_body
from splitnn.common.seeds import seed_for

pytestmark = pytest.mark.slow  # every test trains the attacker's decoder at least once

# The study's (affine) decoder, one epoch on 16 random images: a fraction of a second.
IMAGES = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))


class Attacker:
    """Runs `load_or_train_decoder` as `run_attack` does, counting the trainings."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.classifier = root / "classifiers" / "part1.ckpt"
        self.path = root / "attackers" / "attacker.ckpt"
        self.trainings = 0
        self.write_classifier(seed=0)

        def counting_train(*args: Any, **kwargs: Any) -> list[float]:
            self.trainings += 1
            return train_decoder(*args, **kwargs)

        monkeypatch.setattr(app, "train_decoder", counting_train)

    def write_classifier(self, *, seed: int) -> None:
        save_checkpoint(
            self.classifier, build_body(seed).state_dict(), {"part": "body", "noise": 0.0}
        )

    def config(self, **changes: Any) -> AttackConfig:
        base = AttackConfig(
            classifier=self.classifier, decoder="study", epochs=1, batch_size=8, progress=False
        )
        return dataclasses.replace(base, **changes)

    def decoder(self, cfg: AttackConfig) -> nn.Module:
        assert cfg.classifier is not None
        oracle = BodyOracle(
            cfg.classifier, set_noise=cfg.set_noise, seed=seed_for(cfg.seed, "oracle_noise")
        )
        manifest = decoder_manifest(cfg, oracle=oracle, aux="mnist5k", images=IMAGES)
        return load_or_train_decoder(
            self.path, cfg=cfg, oracle=oracle, images=IMAGES, manifest=manifest
        )


@pytest.fixture
def attacker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Attacker:
    return Attacker(tmp_path, monkeypatch)


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_same_settings_reuse_the_saved_decoder_without_training(
    attacker: Attacker, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = attacker.config()
    first = attacker.decoder(cfg)

    with caplog.at_level(logging.INFO, logger="splitnn.attacker.app"):
        second = attacker.decoder(cfg)

    saved, manifest = load_checkpoint(attacker.path)
    untrained = build_decoder("study", seed=seed_for(cfg.seed, "decoder")).state_dict()
    assert attacker.trainings == 1
    assert _same_weights(second.state_dict(), saved)
    assert _same_weights(second.state_dict(), first.state_dict())
    assert not _same_weights(second.state_dict(), untrained)  # the trained weights, loaded
    assert f"reusing the decoder trained before: {attacker.path}" in caplog.text
    assert manifest["part"] == "attacker" and manifest["aux_images"] == len(IMAGES)
    assert len(manifest["classifier_sha256"]) == 64


def test_another_part_1_at_the_same_path_trains_again(attacker: Attacker) -> None:
    cfg = attacker.config()
    attacker.decoder(cfg)
    _, before = load_checkpoint(attacker.path)

    attacker.write_classifier(seed=1)  # the same path and manifest, other weights
    attacker.decoder(cfg)

    _, after = load_checkpoint(attacker.path)
    assert attacker.trainings == 2
    assert before["classifier"] == after["classifier"]
    assert before["classifier_sha256"] != after["classifier_sha256"]


@pytest.mark.parametrize(
    "change",
    [{"epochs": 2}, {"seed": 1}, {"aux_fraction": 0.5}, {"lr": 3e-3}, {"set_noise": 0.5}],
    ids=lambda change: next(iter(change)),
)
def test_a_changed_setting_trains_again(attacker: Attacker, change: dict[str, Any]) -> None:
    attacker.decoder(attacker.config())

    attacker.decoder(attacker.config(**change))
    attacker.decoder(attacker.config(**change))  # and then reuses the new one

    _, manifest = load_checkpoint(attacker.path)
    assert attacker.trainings == 2
    key, value = next(iter(change.items()))
    assert manifest[key] == value


def test_retrain_trains_even_under_the_same_settings(attacker: Attacker) -> None:
    attacker.decoder(attacker.config())

    attacker.decoder(attacker.config(retrain=True))

    assert attacker.trainings == 2


def _garbage_checkpoint(path: Path) -> None:
    path.write_bytes(b"not a checkpoint")


def _garbage_manifest(path: Path) -> None:
    manifest_path(path).write_text("{")


def _no_manifest(path: Path) -> None:
    manifest_path(path).unlink()


def _an_unexpected_tensor(path: Path) -> None:
    """Weights a load copies before it refuses the unexpected key: a half load."""
    state, manifest = load_checkpoint(path)
    state = {name: torch.full_like(tensor, 7.0) for name, tensor in state.items()}
    save_checkpoint(path, {**state, "unexpected": torch.zeros(1)}, manifest)


def _another_decoders_weights(path: Path) -> None:
    _, manifest = load_checkpoint(path)
    save_checkpoint(path, build_decoder("deep", seed=0).state_dict(), manifest)


@pytest.mark.parametrize(
    "damage",
    [
        _garbage_checkpoint,
        _garbage_manifest,
        _no_manifest,
        _an_unexpected_tensor,
        _another_decoders_weights,
    ],
)
def test_a_damaged_saved_decoder_is_trained_again(
    attacker: Attacker, damage: Callable[[Path], None], caplog: pytest.LogCaptureFixture
) -> None:
    cfg = attacker.config()
    first = attacker.decoder(cfg).state_dict()
    damage(attacker.path)

    with caplog.at_level(logging.WARNING, logger="splitnn.attacker.app"):
        again = attacker.decoder(cfg).state_dict()

    saved, _ = load_checkpoint(attacker.path)
    assert attacker.trainings == 2
    assert "training again" in caplog.text
    # Trained from the decoder's own initial weights (none left over from a half load), so
    # the same as the first time; and saved whole again.
    assert _same_weights(again, first)
    assert _same_weights(saved, first)
