"""A trained model served again from its checkpoints: same accuracy without noise, and the
study's post-training noise when deployed with another noise scale."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitnn.client.app import run
from splitnn.client.config import ClientConfig
from splitnn.proto import splitnn_pb2 as pb


@pytest.mark.slow  # trains two epochs through a server, then serves the model again
def test_redeployed_checkpoint_matches_and_takes_post_training_noise(
    address: str, tmp_path: Path, tap_records: list[pb.TapRecord]
) -> None:
    # Prepare: a short training run, its best epoch checkpointed on both sides
    base = ClientConfig(
        server=address,
        epochs=2,
        max_steps=3,
        lr=1e-3,
        model_dir=tmp_path / "client",
        progress=False,
    )
    trained = run(base)
    checkpoint = Path(trained.checkpoint)
    # Execute
    same = run(ClientConfig(server=address, from_checkpoint=checkpoint, progress=False))
    noisy = run(
        ClientConfig(
            server=address,
            from_checkpoint=checkpoint,
            eval_noise=5.0,
            deploy=True,
            progress=False,
        )
    )
    # Assert
    assert same.test_accuracy == trained.test_accuracy  # both parts restored, no noise
    assert same.val_accuracy == trained.val_accuracy
    assert noisy.eval_noise == 5.0 and noisy.noise == 0.0
    assert noisy.test_accuracy < trained.test_accuracy  # b = 5 swamps a [-1, 1] cut tensor
    deployed = [r for r in tap_records if r.split == "attack" and r.step.run.endswith("_eval")]
    assert sum(r.activations.shape[0] for r in deployed) == 500
