"""`splitnn-sim --seeds N`: the mean and standard error over seeds, each seed's own settings and
files, the summary printed; the server seeded by the run; and a victim's own-data score (no
process starts)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from splitnn.common import exits
from splitnn.common.codec import tensor_to_proto
from splitnn.common.credentials import Credentials
from splitnn.common.datasets import load_splits
from splitnn.common.reports import MemberSummary, MultiSummary, VictimSummary
from splitnn.common.wirelog import WireLogWriter
from splitnn.proto import splitnn_pb2 as pb
from splitnn.sim import app
from splitnn.sim import cli as sim_cli
from splitnn.sim.app import SimConfig, SimSummary
from splitnn.sim.cross_holder import MultiConfig, own_data_scores
from splitnn.sim.seeds import SCORES, aggregate, mean_se, seed_list, seeded
from tests.unit.test_guard_usage import report
from tests.unit.test_sim_threats import attack_report


def test_mean_and_standard_error_of_known_numbers() -> None:
    mean, se = mean_se([1.0, 2.0, 3.0, 4.0])

    # sample variance (ddof 1) = 5/3; SE = sqrt(5/3) / sqrt(4)
    assert mean == 2.5
    assert se == pytest.approx(math.sqrt(5 / 3) / 2)
    assert mean_se([7.0]) == (7.0, 0.0)
    assert mean_se([0.1, 0.1, 0.1])[1] == 0.0
    with pytest.raises(ValueError, match="no values"):
        mean_se([])


def test_scores_are_averaged_settings_kept_and_what_differs_left_out() -> None:
    runs = [
        {"dataset": "mnist5k", "seed": 0, "test_accuracy": 90.0, "attack_mse": 0.02,
         "attack_baseline_class_mse": None, "figure": "f_seed0.png"},
        {"dataset": "mnist5k", "seed": 1, "test_accuracy": 92.0, "attack_mse": 0.04,
         "attack_baseline_class_mse": 0.05, "figure": "f_seed1.png"},
    ]  # fmt: skip

    out = aggregate(runs)

    assert out["dataset"] == "mnist5k"
    assert (out["test_accuracy"], out["test_accuracy_se"]) == (91.0, pytest.approx(1.0))
    assert out["attack_mse"] == pytest.approx(0.03)
    assert out["attack_mse_se"] == pytest.approx(0.01)
    # measured in one seed only: no mean over the seeds
    assert (out["attack_baseline_class_mse"], out["attack_baseline_class_mse_se"]) == (None, None)
    assert "seed" not in out and "figure" not in out


def test_holders_entries_are_aggregated_holder_by_holder() -> None:
    def run(ssim: float, own: float) -> dict[str, Any]:
        victim = {"holder": 1, "attack_ssim": ssim, "own_attack_ssim": own, "figure": str(ssim)}
        return {"holders": 2, "victims": [victim], "members": [{"holder": 0, "samples": 3}]}

    out = aggregate([run(0.4, 0.1), run(0.6, 0.3), run(0.5, 0.2)])

    (victim,) = out["victims"]
    assert victim["holder"] == 1 and "figure" not in victim
    assert victim["attack_ssim"] == pytest.approx(0.5)
    assert victim["attack_ssim_se"] == pytest.approx(0.1 / math.sqrt(3))
    assert victim["own_attack_ssim"] == pytest.approx(0.2)
    assert out["members"] == [{"holder": 0, "samples": 3}]
    with pytest.raises(ValueError, match="not the same holders"):
        aggregate([run(0.4, 0.1), {**run(0.5, 0.2), "victims": [{"holder": 0}]}])


def test_every_float_of_a_summary_is_a_score_or_a_setting() -> None:
    # A new score must be added to SCORES, or it would silently drop out of --seeds.
    settings = {"noise", "nopeek", "seconds", "colluder_noise", "alpha"}
    settings |= {"dp_delta", "dp_noise_multiplier", "dp_max_grad_norm"}
    for cls in (SimSummary, VictimSummary, MemberSummary, MultiSummary):
        hints = {name: str(hint) for name, hint in cls.__annotations__.items()}
        floats = {n for n, h in hints.items() if h.startswith("float") and "ClassVar" not in h}
        assert floats - settings <= SCORES, cls.__name__


def test_seeds_count_from_the_seed_and_each_seed_has_its_own_files() -> None:
    cfg = SimConfig(workdir=Path("w"), figure=Path("out/fig.png"))

    assert seed_list(0, 3) == [0, 1, 2] and seed_list(5, 2) == [5, 6]
    assert seeded(cfg, 4, several=False) == SimConfig(
        workdir=Path("w"), figure=Path("out/fig.png"), seed=4
    )
    two = seeded(MultiConfig(workdir=Path("w"), figure=Path("out/fig.png")), 2, several=True)
    assert isinstance(two, MultiConfig)
    assert (two.seed, two.workdir, two.figure) == (2, Path("w/seed2"), Path("out/fig_seed2.png"))
    with pytest.raises(ValueError):
        seed_list(0, 0)


def _summary(cfg: SimConfig) -> SimSummary:
    accuracy = 90.0 + cfg.seed
    return SimSummary.of(
        report(seed=cfg.seed, test_accuracy=accuracy, checkpoint=f"c{cfg.seed}.ckpt"),
        attack_report(mse=0.01 * (cfg.seed + 1), ssim=0.5, figure=str(cfg.figure)),
        wire_log=cfg.workdir / "wire.log",
        seconds=2.0,
        test_samples=500,
    )


def test_seeds_run_one_simulation_each_and_print_the_means(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[SimConfig] = []

    def run(cfg: SimConfig) -> SimSummary:
        seen.append(cfg)
        return _summary(cfg)

    monkeypatch.setattr(sim_cli, "run", run)

    done = CliRunner().invoke(sim_cli.main, ["--seeds", "3", "--seed", "1", "--json"])

    assert done.exit_code == 0, done.output
    assert [c.seed for c in seen] == [1, 2, 3]
    assert len({c.workdir for c in seen}) == len({c.figure for c in seen}) == 3
    out = json.loads(done.output)
    assert out["seeds"] == [1, 2, 3] and [r["seed"] for r in out["runs"]] == [1, 2, 3]
    assert out["test_accuracy"] == pytest.approx(92.0)
    assert out["test_accuracy_se"] == pytest.approx(1 / math.sqrt(3))
    assert out["attack_mse"] == pytest.approx(0.03) and out["attack_mse_se"] > 0
    assert out["attack_ssim_se"] == 0.0 and out["test_samples"] == 500
    assert out["seconds"] == 6.0
    text = CliRunner().invoke(sim_cli.main, ["--seeds", "2"])
    assert text.exit_code == 0, text.output
    assert "2 seeds (0, 1): mean ± standard error" in text.output
    assert "of 500 test images" in text.output and "sim_reconstructions_seed1.png" in text.output
    assert "test_accuracy" in text.output and "90.5 ± 0.5" in text.output


def test_one_seed_prints_a_single_runs_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sim_cli, "run", _summary)

    out = json.loads(CliRunner().invoke(sim_cli.main, ["--seed", "2", "--json"]).output)

    assert "seeds" not in out and "runs" not in out
    assert (out["seed"], out["test_samples"]) == (2, 500)


def test_a_failing_seed_fails_the_simulation(monkeypatch: pytest.MonkeyPatch) -> None:
    def run(cfg: SimConfig) -> SimSummary:
        if cfg.seed == 1:
            raise exits.Failed("the victim exited with 1")
        return _summary(cfg)

    monkeypatch.setattr(sim_cli, "run", run)

    done = CliRunner().invoke(sim_cli.main, ["--seeds", "3", "--json"])

    assert done.exit_code == 1  # exits.Failed, as a single run
    assert "the victim exited with 1" in done.output


def test_multi_holder_seeds_aggregate_each_victim(monkeypatch: pytest.MonkeyPatch) -> None:
    def run_multi(cfg: MultiConfig) -> MultiSummary:
        member = MemberSummary(holder=0, samples=1500, noise=0.0, nopeek=0.0, test_accuracy=90.0)
        victim = VictimSummary(holder=1, noise=0.0, nopeek=0.0, test_accuracy=91.0,
                               attack_mse=0.02, attack_psnr=17.0, attack_ssim=0.3 + cfg.seed,
                               attack_validator_accuracy=80.0, validator_accuracy_originals=95.0,
                               figure="f", own_attack_mse=0.03, own_attack_psnr=15.0,
                               own_attack_ssim=0.2, own_attack_images=1500,
                               attack_baseline_mean_mse=0.07,
                               attack_baseline_class_mse=0.05 + 0.01 * cfg.seed)  # fmt: skip
        return MultiSummary(
            topology=cfg.topology, holders=2, partition="iid", alpha=None, colluder=0,
            dataset="mnist5k", epochs=1, seed=cfg.seed, noise=0.0, nopeek=0.0,
            colluder_noise=0.0, members=[member, member], victims=[victim], seconds=1.0,
            test_samples=500,
        )  # fmt: skip

    monkeypatch.setattr(sim_cli, "run_multi", run_multi)

    done = CliRunner().invoke(sim_cli.main, ["--holders", "2", "--seeds", "2", "--json"])

    assert done.exit_code == 0, done.output
    out = json.loads(done.output)
    (victim,) = out["victims"]
    assert victim["attack_ssim"] == pytest.approx(0.8) and victim["attack_ssim_se"] > 0
    assert victim["own_attack_mse"] == 0.03 and victim["own_attack_mse_se"] == 0.0
    assert victim["attack_baseline_class_mse"] == pytest.approx(0.055)
    assert victim["attack_baseline_class_mse_se"] == pytest.approx(0.005)
    text = CliRunner().invoke(sim_cli.main, ["--holders", "2"])
    assert text.exit_code == 0, text.output
    assert (
        "holder 1: mean image 0.0700 (margin +0.0500), class-mean image 0.0500 (margin +0.0300)"
        in text.output
    )
    assert "seed" not in out and out["seeds"] == [0, 1] and len(out["runs"]) == 2


def test_the_server_is_seeded_by_the_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    servers: list[list[str]] = []

    @contextmanager
    def server(args: list[str], *, start_timeout: float) -> Iterator[Any]:
        servers.append(args)
        yield type("Server", (), {"address": "127.0.0.1:1"})()

    monkeypatch.setattr(app, "ServerProcess", server)
    monkeypatch.setattr(app, "certificates", lambda *_: (["--tls"], [Credentials()]))
    monkeypatch.setattr(app, "run_client", lambda command: report(seed=command.seed))
    attacks: list[Any] = []

    def attacker(command: Any) -> Any:
        attacks.append(command)
        return attack_report()

    monkeypatch.setattr(app, "run_attacker", attacker)

    summary = app.run(SimConfig(seed=3, workdir=tmp_path, model_dir=tmp_path / "m"))

    (args,) = servers
    assert args[args.index("--seed") + 1] == "3"
    assert attacks[0].seed == 3
    assert (summary.seed, summary.test_samples) == (3, 500)


class _Grey(nn.Module):
    """Decodes a cut tensor [N, 500] into a flat image [N, 1, 28, 28] of its first value."""

    def forward(self, cut: torch.Tensor) -> torch.Tensor:
        return cut[:, :1, None, None].expand(-1, 1, 28, 28)


def _train_record(run: str, epoch: int, value: float, indices: torch.Tensor | None) -> Any:
    record = pb.TapRecord(
        step=pb.StepId(run=run, epoch=epoch, batch=0),
        phase="train",
        split="train",
        activations=tensor_to_proto(torch.full((8, 500), value)),
        labels=tensor_to_proto(torch.zeros(8, dtype=torch.int64)),
    )
    if indices is not None:
        record.indices.CopyFrom(tensor_to_proto(indices))
    return record


def test_a_victim_is_scored_on_its_own_training_tensors_of_its_last_epoch(tmp_path: Path) -> None:
    train = load_splits("mnist5k").train
    own, other = train.indices[:8], train.indices[8:16]
    log = tmp_path / "wire.log"
    with WireLogWriter(log, header={"cut_shape": [500]}) as writer:
        writer.write(_train_record("victim", 1, 0.0, own))
        writer.write(_train_record("victim", 2, 0.5, own))  # the last epoch: these count
        writer.write(_train_record("other", 2, 1.0, other))
        writer.write(_train_record("no_indices", 1, 0.5, None))

    scores = own_data_scores(_Grey(), log, run="victim", train=train)

    expected = float(((train.images[:8].double() - 0.5) ** 2).mean())
    assert scores["own_attack_mse"] == pytest.approx(expected)
    assert scores["own_attack_images"] == 8
    assert set(scores) == {"own_attack_mse", "own_attack_psnr", "own_attack_ssim",
                           "own_attack_images"}  # fmt: skip
    assert own_data_scores(_Grey(), log, run="no_indices", train=train) == {}
    assert own_data_scores(_Grey(), log, run="absent", train=train) == {}
