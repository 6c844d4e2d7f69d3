"""Measurement of a classifier in-process; wire-log compaction and post-training noise."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from splitnn.common.codec import tensor_to_proto
from splitnn.common.datasets import DatasetSplits, Subset
from splitnn.common.models import build_body, build_head
from splitnn.common.wirelog import WireLogError, WireLogWriter, read_wirelog
from splitnn.experiments import wirelogs
from splitnn.experiments.measure import measure_classifier
from splitnn.proto import splitnn_pb2 as pb


def _subset(n: int, seed: int) -> Subset:
    generator = torch.Generator().manual_seed(seed)
    return Subset(
        images=torch.rand(n, 1, 28, 28, generator=generator),
        labels=torch.randint(0, 10, (n,), generator=generator),
        indices=torch.arange(n),
    )


def _splits() -> DatasetSplits:
    parts = {
        role: _subset(12, i) for i, role in enumerate(("train", "val", "test", "aux", "attack"))
    }
    return DatasetSplits(name="toy", num_classes=10, description="toy", **parts)


def test_without_noise_the_sent_cut_is_the_cut() -> None:
    body, head = build_body(0).eval(), build_head(1).eval()

    m = measure_classifier(body, head, splits=_splits(), noise=0.0, posttrain_levels=(0.0, 5.0))

    assert m.dcor == pytest.approx(m.dcor_sent)
    assert 0.0 < m.dcor <= 1.0
    assert all(0.0 <= a <= 100.0 for a in (m.train_accuracy, m.val_accuracy, m.test_accuracy))
    assert m.posttrain[0.0] == m.test_accuracy
    assert (m.dcor_samples, m.train_samples) == (12, 12)


def test_noise_lowers_the_dependence_of_what_is_sent() -> None:
    body, head = build_body(0).eval(), build_head(1).eval()

    m = measure_classifier(body, head, splits=_splits(), noise=5.0)

    assert m.dcor_sent < m.dcor
    assert m.posttrain == {}


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
