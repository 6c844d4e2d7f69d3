"""The honest-but-curious server alone: a substitute part 1 from the wire log, its head and
public images; never the data holder's part 1."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.nn import functional as F

from splitnn.attacker import app, oracle, passive
from splitnn.attacker.app import AttackConfig, BadAttack, check_config, run_attack
from splitnn.attacker.cli import main
from splitnn.attacker.intercept import InterceptError, received_from_log, training_run
from splitnn.attacker.passive import replay_heads
from splitnn.attacker.substitute import (
    MatchTarget,
    SubstituteEnsemble,
    SubstituteOracle,
    SubstituteSettings,
    train_substitute,
)
from splitnn.common.checkpoints import save_checkpoint
from splitnn.common.codec import tensor_to_proto
from splitnn.common.datasets import load_splits
from splitnn.common.models import build_body, build_head, make_optimizer
from splitnn.common.wirelog import WireLogWriter
from splitnn.proto import splitnn_pb2 as pb

RUN = "victim_run"


def _record(
    cut: torch.Tensor, labels: torch.Tensor, *, split: str, epoch: int, batch: int, **extra: Any
) -> pb.TapRecord:
    record = pb.TapRecord(
        step=pb.StepId(run=RUN, epoch=epoch, batch=batch),
        phase="train" if split == "train" else "eval",
        split=split,
        activations=tensor_to_proto(cut),
        labels=tensor_to_proto(labels),
    )
    if "indices" in extra:
        record.indices.CopyFrom(tensor_to_proto(extra["indices"]))
    return record


def write_victim_log(path: Path, *, attacked: int = 12) -> None:
    """A wire log as a curious server keeps it: two epochs of training tensors (labels, no
    indices) and the deployment tensors of the first `attacked` images of mnist5k's attack slice,
    all made by a part 1 the attacker never sees."""
    splits = load_splits("mnist5k")
    body = build_body(7).eval()
    with torch.no_grad(), WireLogWriter(path, header={"cut_shape": [500]}) as writer:
        for epoch in (1, 2):
            for batch in range(2):
                rows = slice(16 * batch, 16 * (batch + 1))
                cut = body(splits.train.images[rows])
                labels = splits.train.labels[rows]
                writer.write(_record(cut, labels, split="train", epoch=epoch, batch=batch))
        attack = splits.attack
        writer.write(
            _record(
                body(attack.images[:attacked]),
                attack.labels[:attacked],
                split="attack",
                epoch=0,
                batch=0,
                indices=attack.indices[:attacked],
            )
        )


@pytest.fixture
def victim_log(tmp_path: Path) -> Path:
    path = tmp_path / "wire.log"
    write_victim_log(path)
    return path


@pytest.fixture
def head_file(tmp_path: Path) -> Path:
    path = tmp_path / "heads" / "victim" / RUN / "best.head.ckpt"
    save_checkpoint(path, build_head(3).state_dict(), {"part": "head", "num_classes": 10})
    return path


def _tiny_validator(**_: Any) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))


def test_a_passive_attack_runs_without_ever_opening_a_part_1(
    tmp_path: Path, victim_log: Path, head_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: no part-1 file exists (the log was made in memory), and any attempt to build the
    # lent oracle or to read a checkpoint that is not a head fails.
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the passive attacker touched the data holder's part 1")

    real_load = oracle.load_checkpoint  # type: ignore[attr-defined]

    def load_only_heads(path: Path) -> Any:
        state, manifest = real_load(path)
        if manifest.get("part") != "head":
            refuse()
        return state, manifest

    monkeypatch.setattr(app, "BodyOracle", refuse)
    monkeypatch.setattr(oracle, "load_checkpoint", load_only_heads)
    monkeypatch.setattr(passive, "load_checkpoint", load_only_heads)
    monkeypatch.setattr(app, "load_or_train_validator", _tiny_validator)
    cfg = AttackConfig(
        oracle="substitute",
        from_log=victim_log,
        head=head_file,
        decoder="study",
        epochs=1,
        batch_size=32,
        substitute=SubstituteSettings(epochs=1, batch_size=32),
        model_dir=tmp_path / "models",
        figure=tmp_path / "grid.png",
        progress=False,
    )

    report = run_attack(cfg)

    assert report.oracle == "substitute"
    assert report.classifier == ""
    assert report.images == 12
    assert report.baseline_classes == "head"
    assert set(report.baselines) == {"mean_image", "class_mean_image"}
    assert 0.0 <= report.mse <= 1.0
    assert (tmp_path / "grid.png").exists()
    assert list((tmp_path / "models" / "attackers").glob("*.substitute.ckpt"))


def test_without_a_head_the_baseline_takes_the_labels_on_the_wire(
    tmp_path: Path, victim_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app, "load_or_train_validator", _tiny_validator)
    cfg = AttackConfig(
        oracle="substitute",
        from_log=victim_log,
        decoder="study",
        epochs=1,
        substitute=SubstituteSettings(epochs=1, batch_size=32, ce_weight=0.0),
        model_dir=tmp_path / "models",
        figure=tmp_path / "grid.png",
        progress=False,
    )

    report = run_attack(cfg)

    assert report.baseline_classes == "wire labels"
    assert "class_mean_image" in report.baselines


def test_the_received_tensors_are_those_of_the_last_epochs_with_their_labels(
    victim_log: Path,
) -> None:
    last = received_from_log(victim_log, splits=("train",), run=RUN, last_epochs=1)
    every = received_from_log(victim_log, splits=("train",), run=RUN, last_epochs=None)
    both = received_from_log(victim_log, splits=("train", "attack"), run=RUN)

    assert last.activations.shape == (32, 500) and last.labels.shape == (32,)
    assert every.activations.shape == (64, 500)
    assert len(both.labels) == 32 + 12


def test_the_substitute_loss_decreases_on_a_tiny_problem() -> None:
    # Prepare: 64 random "public" images with labels; received tensors from a hidden part 1.
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(64, 1, 28, 28, generator=generator)
    labels = torch.arange(64) % 4
    with torch.no_grad():
        received = build_body(11)(images)
    target = MatchTarget(received, labels, images, labels)
    settings = SubstituteSettings(epochs=10, lr=1e-3, batch_size=32, ce_weight=0.5)

    _, losses = train_substitute(
        target=target, heads=[build_head(5)], settings=settings, seed=1, progress=False
    )

    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("matching", ["conditional", "marginal"])
def test_the_critic_term_and_both_matchings_train(matching: str) -> None:
    images = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(16) % 2
    target = MatchTarget(torch.rand(16, 500) * 2 - 1, labels, images, labels)
    settings = SubstituteSettings(
        epochs=1,
        batch_size=8,
        match_weight=0.5,
        matching=matching,  # type: ignore[arg-type]
        ce_weight=0.0,
    )

    _, losses = train_substitute(target=target, heads=[], settings=settings, seed=2)

    assert len(losses) == 1 and torch.isfinite(torch.tensor(losses)).all()


def test_the_label_term_without_a_head_is_refused() -> None:
    images = torch.rand(4, 1, 28, 28)
    target = MatchTarget(torch.zeros(4, 500), torch.zeros(4).long(), images, torch.zeros(4).long())
    with pytest.raises(ValueError, match="head"):
        train_substitute(target=target, heads=[], settings=SubstituteSettings(), seed=0)


def test_settings_that_cannot_make_an_attack_are_refused(tmp_path: Path) -> None:
    lent = AttackConfig(from_log=tmp_path / "wire.log")
    substitute = dataclasses.replace(lent, oracle="substitute", head=tmp_path / "h.ckpt")

    with pytest.raises(BadAttack, match="--classifier"):
        check_config(lent)
    with pytest.raises(BadAttack, match="--from-log"):
        check_config(dataclasses.replace(substitute, from_log=None, live="localhost:1"))
    with pytest.raises(BadAttack, match="--head"):
        check_config(dataclasses.replace(substitute, head=None))
    with pytest.raises(BadAttack, match="lent"):
        check_config(dataclasses.replace(substitute, protocol="clean"))
    check_config(substitute)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("run --oracle substitute --live localhost:1", "needs --from-log"),
        ("run --from-log {log}", "Missing option '--classifier'"),
        ("run --oracle lent --from-log {log}", "Missing option '--classifier'"),
        ("run --oracle substitute --from-log {log} --match-splits ,", "at least one split"),
    ],
)
def test_the_cli_refuses_an_oracle_without_what_it_needs(
    args: str, message: str, tmp_path: Path
) -> None:
    log = tmp_path / "wire.log"
    log.write_bytes(b"")

    result = CliRunner().invoke(main, args.format(log=log).split())

    assert result.exit_code == 2
    assert message in result.output


def test_head_snapshots_replayed_from_the_log_retrace_the_servers_head(victim_log: Path) -> None:
    # Prepare: the server's head trained by hand on the log's training batches, epoch by epoch.
    spec: dict[str, object] = {"seed": 3, "lr": 1e-3, "num_classes": 10}
    head = build_head(3)
    optimizer = make_optimizer(head, 1e-3)
    by_hand = []
    for epoch in (1, 2):
        train = received_from_log(victim_log, run=RUN, last_epochs=None)
        rows = slice(32 * (epoch - 1), 32 * epoch)
        for cut, labels in zip(
            train.activations[rows].split(16), train.labels[rows].split(16), strict=True
        ):
            optimizer.zero_grad()
            F.cross_entropy(head(cut), labels).backward()
            optimizer.step()
        by_hand.append({k: v.clone() for k, v in head.state_dict().items()})

    snapshots = replay_heads(victim_log, run=RUN, spec=spec, last=5)

    assert len(snapshots) == 2
    for snapshot, expected in zip(snapshots, by_hand, strict=True):
        for name, value in snapshot.state_dict().items():
            torch.testing.assert_close(value, expected[name])


def test_an_ensemble_answers_from_each_substitute_in_turn() -> None:
    members = [
        SubstituteOracle(build_body(seed), noise=0.0, seed=0, identity={"k": seed})
        for seed in (1, 2)
    ]
    ensemble = SubstituteEnsemble(members)
    images = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(4))

    answers = [ensemble.query(images) for _ in range(3)]

    torch.testing.assert_close(answers[0], members[0].query(images))
    torch.testing.assert_close(answers[1], members[1].query(images))
    torch.testing.assert_close(answers[2], answers[0])
    assert [d["k"] for d in ensemble.describe()["substitutes"]] == [1, 2]


def test_a_redeployment_is_matched_with_its_holders_training_run(tmp_path: Path) -> None:
    # Prepare: holder "v" trains under run "a" and deploys again under run "b"; "w" only deploys.
    cut, labels = torch.zeros(2, 500), torch.zeros(2, dtype=torch.int64)
    records = [
        _record(cut, labels, split="train", epoch=1, batch=0),
        _record(cut, labels, split="attack", epoch=0, batch=0),
        _record(cut, labels, split="attack", epoch=0, batch=0),
    ]
    for record, run, owner in zip(records, ["a", "b", "c"], ["v", "v", "w"], strict=True):
        record.step.run, record.owner = run, owner
    log = tmp_path / "wire.log"
    with WireLogWriter(log, header={"cut_shape": [500]}) as writer:
        for record in records:
            writer.write(record)

    assert training_run(log, run="a") == "a"
    assert training_run(log, run="b") == "a"
    with pytest.raises(InterceptError, match="'c'"):
        training_run(log, run="c")
