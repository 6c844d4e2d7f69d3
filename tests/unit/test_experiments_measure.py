"""Measurement of a classifier in-process; wire-log compaction and post-training noise."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import dcor
import pytest
import torch

from splitnn.common.codec import tensor_to_proto
from splitnn.common.datasets import DatasetSplits, Subset
from splitnn.common.distcorr import distance_correlation
from splitnn.common.models import build_body, build_head
from splitnn.common.noise import LaplaceNoise
from splitnn.common.wirelog import WireLogError, WireLogWriter, read_wirelog
from splitnn.experiments import measure, wirelogs
from splitnn.experiments.measure import measure_classifier
from splitnn.proto import splitnn_pb2 as pb


def _subset(n: int, seed: int) -> Subset:
    generator = torch.Generator().manual_seed(seed)
    return Subset(
        images=torch.rand(n, 1, 28, 28, generator=generator),
        labels=torch.randint(0, 10, (n,), generator=generator),
        indices=torch.arange(n),
    )


def _splits(n: int = 12) -> DatasetSplits:
    parts = {
        role: _subset(n, i) for i, role in enumerate(("train", "val", "test", "aux", "attack"))
    }
    return DatasetSplits(name="toy", num_classes=10, description="toy", **parts)


class RecordingNoise(LaplaceNoise):
    """LaplaceNoise that keeps every float64 tensor it returns: the measurement's sent cut."""

    sent: ClassVar[list[torch.Tensor]] = []

    def __call__(self, cut: torch.Tensor) -> torch.Tensor:
        out = super().__call__(cut)
        if out.dtype == torch.float64:
            RecordingNoise.sent.append(out.detach().clone())
        return out


@pytest.fixture
def recorded_sent(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """What `measure_classifier` computes dCor on after adding its noise, as it computed it."""
    RecordingNoise.sent = []
    monkeypatch.setattr(measure, "LaplaceNoise", RecordingNoise)
    return RecordingNoise.sent


def _flat_test_images(splits: DatasetSplits) -> torch.Tensor:
    return splits.test.images.reshape(len(splits.test), -1).double()


def test_without_noise_the_sent_cut_is_the_cut_and_dcor_matches_the_dcor_package() -> None:
    body, head = build_body(0).eval(), build_head(1).eval()
    splits = _splits()

    m = measure_classifier(body, head, splits=splits, noise=0.0, posttrain_levels=(0.0, 5.0))

    images = _flat_test_images(splits).numpy()
    with torch.no_grad():
        cut = body(splits.test.images).double().numpy()
    assert m.dcor == pytest.approx(dcor.distance_correlation(images, cut), abs=1e-9)
    assert m.dcor_unbiased == pytest.approx(dcor.u_distance_correlation_sqr(images, cut), abs=1e-9)
    assert (m.dcor_sent, m.dcor_sent_unbiased) == (m.dcor, m.dcor_unbiased)
    assert all(0.0 <= a <= 100.0 for a in (m.train_accuracy, m.val_accuracy, m.test_accuracy))
    assert m.posttrain[0.0] == m.test_accuracy
    assert (m.dcor_samples, m.train_samples) == (12, 12)


def test_the_sent_columns_are_the_dcor_of_what_was_sent(recorded_sent: list[torch.Tensor]) -> None:
    body, head = build_body(0).eval(), build_head(1).eval()
    splits = _splits()

    m = measure_classifier(body, head, splits=splits, noise=1.0)

    (sent,) = recorded_sent
    images = _flat_test_images(splits)
    with torch.no_grad():
        clean = body(splits.test.images).double()
    assert sent.shape == (12, 500) and not torch.allclose(sent, clean)
    assert m.dcor_sent == pytest.approx(float(distance_correlation(images, sent)), abs=1e-12)
    assert m.dcor_sent_unbiased == pytest.approx(
        dcor.u_distance_correlation_sqr(images.numpy(), sent.numpy()), abs=1e-9
    )
    assert m.dcor_unbiased == pytest.approx(
        float(distance_correlation(images, clean, unbiased=True)), abs=1e-9
    )


def test_independent_noise_lowers_the_bias_corrected_dcor() -> None:
    body, head = build_body(0).eval(), build_head(1).eval()

    m = measure_classifier(body, head, splits=_splits(64), noise=5.0)

    # The biased columns need not fall (see the next test); the bias-corrected ones must.
    assert m.dcor_sent_unbiased < m.dcor_unbiased
    assert m.posttrain == {}


def test_noise_on_a_cut_that_ignores_the_image_raises_only_the_biased_dcor() -> None:
    body, head = build_body(0).eval(), build_head(1).eval()
    with torch.no_grad():
        for parameter in body.parameters():
            parameter.zero_()  # the cut is tanh(0) = 0 whatever the image

    m = measure_classifier(body, head, splits=_splits(64), noise=5.0)

    assert m.dcor == 0.0 and m.dcor_unbiased == 0.0  # no dependence, and the estimators agree
    # Independent 500-dimensional noise: the study's V-statistic rises from 0 towards 1 (as the
    # Measurement docstring warns), the bias-corrected estimate stays near 0.
    assert m.dcor_sent > 0.5
    assert abs(m.dcor_sent_unbiased) < 0.05


def _write_log(path: Path) -> None:
    with WireLogWriter(path, header={"test": True}) as writer:
        for batch, split in enumerate(("train", "train", "val", "attack", "attack")):
            cut = torch.full((4, 500), 0.25)
            writer.write(
                pb.TapRecord(
                    step=pb.StepId(run="r", epoch=1, batch=batch),
                    phase="train" if split == "train" else "eval",
                    split=split,
                    activations=tensor_to_proto(cut),
                    indices=tensor_to_proto(torch.arange(4) + 4 * batch),
                )
            )


def test_compaction_keeps_only_the_deployment(tmp_path: Path) -> None:
    log = tmp_path / "run.wirelog"
    _write_log(log)

    kept = wirelogs.compact(log)

    records = read_wirelog(log).records
    assert kept == 2
    assert [r.split for r in records] == ["attack", "attack"]
    assert read_wirelog(log).problem is None


def test_a_log_without_deployment_is_an_error(tmp_path: Path) -> None:
    log = tmp_path / "run.wirelog"
    with WireLogWriter(log, header={}):
        pass

    with pytest.raises(WireLogError, match="no 'attack' batches"):
        wirelogs.compact(log)
