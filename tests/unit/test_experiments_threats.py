"""The ``threats`` group: its 21 rows, the splitnn-sim command line, the records, skip/redo, the
CSV and the figure. splitnn-sim itself is replaced by a fake that prints its contract's JSON."""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from matplotlib.image import imread

from splitnn.attacker.figures import save_grid
from splitnn.common.processes import ProcessError
from splitnn.experiments import runner
from splitnn.experiments.cli import main
from splitnn.experiments.config import ExperimentConfig
from splitnn.experiments.grid import (
    GROUPS,
    Defence,
    ThreatSetting,
    ThreatSpec,
    expand,
    threat_specs,
)
from splitnn.experiments.plots import grid_rows
from splitnn.experiments.tables import read_rows, upsert_rows
from splitnn.experiments.threat_records import (
    ThreatRecord,
    ThreatSummary,
)
from splitnn.experiments.threat_report import (
    THREATS_CSV,
    THREATS_FIGURE,
    threat_row,
    write_threat_tables,
    write_threats_figure,
)
from splitnn.experiments.threat_runs import THREATS

DATA = "0123456789abcdef"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DEFENCES = ("none", "laplace05", "laplace10", "laplace20", "nopeek05", "splitguard", "dp3eps")


def _cfg(tmp_path: Path, **changes: Any) -> ExperimentConfig:
    base: dict[str, Any] = {
        "groups": ("threats",),
        "dataset": "mnist5k",
        "epochs": 3,
        "attack_epochs": 2,
        "decoder": "deep",
        "model_dir": tmp_path / "models",
        "runs_dir": tmp_path / "runs",
        "results_dir": tmp_path / "results",
        "progress": False,
        "data_fingerprint": DATA,
    }
    return ExperimentConfig(**{**base, **changes})


def _spec(threat: str = "fsha", defence: Defence | None = None, seed: int = 0) -> ThreatSpec:
    return ThreatSpec("mnist5k", ThreatSetting(threat, defence or Defence()), seed, 3)


def summary(
    *,
    threat: str = "colluding",
    noise: float = 0.0,
    nopeek: float = 0.0,
    detected: int | None = None,
    ssim: float = 0.5,
    test_accuracy: float = 93.0,
    figure: str = "fig.png",
    **extra: Any,
) -> dict[str, Any]:
    """What `splitnn-sim --threat ... --json` prints (its contract)."""
    return {
        "dataset": "mnist5k",
        "threat": threat,
        "noise": noise,
        "nopeek": nopeek,
        "epochs": 3,
        "best_epoch": 2,
        "test_accuracy": test_accuracy,
        "val_accuracy": 92.0,
        "attack_mse": 0.05,
        "attack_psnr": 13.0,
        "attack_ssim": ssim,
        "attack_dcor": 0.9,
        "attack_validator_accuracy": 80.0,
        "validator_accuracy_originals": 95.0,
        "attack_images": 500,
        "decoder": "deep",
        "figure": figure,
        "attacker": "models/attackers/a.ckpt",
        "wire_log": "runs/sim/wire.log",
        "classifier": "models/classifiers/c.ckpt",
        "seconds": 30.0,
        "guard_detected_at_step": detected,
        **extra,
    }


def _record(data: dict[str, Any], **settings: Any) -> ThreatRecord:
    base = {"batch_size": 128, "attack_epochs": 2, "decoder": "deep"}
    return ThreatRecord(
        settings={**base, **settings},
        report=ThreatSummary.from_json(data),
        wall_seconds=31.0,
        finished_at="then",
    )


# The grid


def test_the_group_is_every_threat_against_every_defence() -> None:
    specs = threat_specs(dataset="mnist5k", seeds=1, epochs=10)

    assert len(specs) == 21
    assert len({s.name for s in specs}) == 21
    assert [s.setting.tag for s in specs] == [
        f"{t}_{d}" for t in ("colluding", "fsha", "passive") for d in DEFENCES
    ]
    defences = {s.setting.defence for s in specs}
    assert defences == {
        Defence(),
        Defence(noise=0.5),
        Defence(noise=1.0),
        Defence(noise=2.0),
        Defence(nopeek=0.5),
        Defence(guard="splitguard"),
        Defence(dp_epsilon=3.0),
    }
    assert {d.batch_size for d in defences if d.nopeek > 0} == {32}
    assert {d.batch_size for d in defences if d.nopeek == 0} == {128}


def test_seeds_repeat_every_row_seed_major() -> None:
    specs = threat_specs(dataset="mnist5k", seeds=2, epochs=10, max_steps=5)

    assert len(specs) == 42
    assert [s.seed for s in specs[:21]] == [0] * 21
    assert specs[0].name == "mnist5k_threats_colluding_none"
    assert specs[22].name == "mnist5k_threats_colluding_laplace05_seed1"
    assert {s.max_steps for s in specs} == {5}


def test_defence_names_and_parameters() -> None:
    assert [(d.name, d.parameter, d.label) for d in (Defence(), Defence(noise=2.0))] == [
        ("none", None, "no defence"),
        ("laplace", 2.0, "Laplace b=2"),
    ]
    assert (Defence(nopeek=0.5).name, Defence(nopeek=0.5).parameter) == ("nopeek", 0.5)
    assert Defence(guard="splitguard").parameter is None
    assert Defence(guard="splitguard").label == "SplitGuard"
    assert Defence(guard="splitguard").tag == "splitguard"


def test_threats_is_a_group_but_not_part_of_all() -> None:
    assert GROUPS["threats"].kind == "threats"
    assert "threats" not in expand(("all",))
    assert expand(("multi", "threats")) == ("multi", "threats")

    result = CliRunner().invoke(main, ["--help"])

    assert result.exit_code == 0
    assert "  threats " in result.output


# The command lines


def _expected(tmp_path: Path, name: str, *flags: str, max_steps: str | None = None) -> list[str]:
    steps = ["--max-steps", max_steps] if max_steps else []
    return [
        *flags,
        *("--dataset", "mnist5k", "--epochs", "3", *steps, "--seed", "1"),
        *("--attack-epochs", "7", "--decoder", "study"),
        *("--workdir", str(tmp_path / "runs" / "mnist5k" / "threats" / name)),
        *("--model-dir", str(tmp_path / "models" / "threats" / name)),
        *("--validator-dir", str(tmp_path / "models")),
        *("--figure", str(tmp_path / "results" / "figures" / "threats" / f"{name}.png")),
        *("--json", "-q"),
    ]


@pytest.mark.parametrize(
    ("threat", "defence", "flags"),
    [
        ("colluding", Defence(), ("--threat", "colluding", "--noise", "0.0", "--nopeek", "0.0",
                                  "--batch-size", "128")),
        ("fsha", Defence(guard="splitguard"), ("--threat", "fsha", "--guard", "splitguard",
                                               "--noise", "0.0", "--nopeek", "0.0",
                                               "--batch-size", "128")),
        ("passive", Defence(nopeek=0.5), ("--threat", "passive", "--noise", "0.0",
                                          "--nopeek", "0.5", "--batch-size", "32")),
        ("fsha", Defence(noise=2.0), ("--threat", "fsha", "--noise", "2.0", "--nopeek", "0.0",
                                      "--batch-size", "128")),
        ("colluding", Defence(dp_epsilon=3.0), ("--threat", "colluding", "--noise", "0.0",
                                                "--nopeek", "0.0", "--dp-epsilon", "3.0",
                                                "--dp-delta", "1e-05", "--batch-size", "128")),
    ],
    ids=["colluding-none", "fsha-splitguard", "passive-nopeek", "fsha-laplace", "colluding-dp"],
)  # fmt: skip
def test_the_command_line_of_one_row(
    tmp_path: Path, threat: str, defence: Defence, flags: tuple[str, ...]
) -> None:
    cfg = _cfg(tmp_path, attack_epochs=7, decoder="study")
    spec = ThreatSpec("mnist5k", ThreatSetting(threat, defence), seed=1, epochs=3)

    args = THREATS.sim_args(spec, cfg)

    assert spec.name == f"mnist5k_threats_{threat}_{defence.tag}_seed1"
    assert args == _expected(tmp_path, spec.name, *flags)


def test_max_steps_are_passed_on(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, attack_epochs=7, decoder="study")
    spec = replace(_spec("colluding", Defence(noise=0.5), seed=1), max_steps=20)

    args = THREATS.sim_args(spec, cfg)

    flags = ("--threat", "colluding", "--noise", "0.5", "--nopeek", "0.0", "--batch-size", "128")
    assert args == _expected(tmp_path, spec.name, *flags, max_steps="20")


def test_every_run_has_its_own_files(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, seeds=2)
    commands = [THREATS.sim_args(spec, cfg) for spec in THREATS.specs(cfg)]

    for flag in ("--workdir", "--model-dir", "--figure"):
        assert len({args[args.index(flag) + 1] for args in commands}) == 42


# Records


def test_a_record_round_trips_through_json() -> None:
    record = _record(summary(threat="fsha", detected=12, attack_baseline_mean_mse=0.1))

    again = ThreatRecord.from_json(json.loads(json.dumps(record.to_json())))

    assert again == record
    assert again.report.guard_detected_at_step == 12
    assert again.report.attack_baseline_mean_mse == 0.1
    assert again.report.attack_baseline_class_mse is None


def test_the_report_ignores_fields_it_does_not_read_and_needs_the_threat() -> None:
    report = ThreatSummary.from_json(summary(epsilon=3.5, guard="splitguard"))
    assert report.threat == "colluding"

    data = summary()
    del data["threat"]
    with pytest.raises(ValueError, match="missing fields threat"):
        ThreatSummary.from_json(data)
    with pytest.raises(ValueError, match="guard_detected_at_step"):
        ThreatSummary.from_json({**summary(), "guard_detected_at_step": "12"})


class FakeSim:
    """Stands in for `run_json("splitnn-sim", ...)`: writes the run's figure (a real grid of
    originals above reconstructions) and returns the contract's JSON for the flags it was given.
    Runs of the threats in `failing` exit with an error."""

    def __init__(self, failing: tuple[str, ...] = ()) -> None:
        self.calls: list[list[str]] = []
        self.failing = failing

    def __call__(self, name: str, args: list[str], **_: Any) -> dict[str, Any]:
        assert name == "splitnn-sim"
        self.calls.append(args)
        flag = dict(zip(args[::2], args[1::2], strict=False))
        if flag["--threat"] in self.failing:
            raise ProcessError("splitnn-sim exited with status 1")
        figure = Path(flag["--figure"])
        _grid_png(figure, shade=0.1 * len(self.calls) % 1.0)
        dp: dict[str, Any] = {}
        if "--dp-epsilon" in flag:
            dp = {"dp_epsilon": float(flag["--dp-epsilon"]) - 0.05,
                  "dp_delta": float(flag["--dp-delta"]), "dp_noise_multiplier": 1.2,
                  "dp_max_grad_norm": 1.0}  # fmt: skip
        return summary(
            threat=flag["--threat"],
            noise=float(flag["--noise"]),
            nopeek=float(flag["--nopeek"]),
            detected=7 if flag["--threat"] == "fsha" and "--guard" in flag else None,
            figure=str(figure),
            **dp,
        )


def _grid_png(path: Path, *, shade: float = 0.6, n: int = 3) -> Path:
    originals = torch.full((n, 1, 28, 28), 0.1)
    originals[:, :, 8:20, 12:16] = 0.9
    reconstructions = torch.full((n, 1, 28, 28), shade)
    return save_grid(path, originals=originals, rows=[("reconstruction", reconstructions)], n=n)


@pytest.fixture
def fake_sim(monkeypatch: pytest.MonkeyPatch, fake_validators: list[list[str]]) -> FakeSim:
    fake = FakeSim()
    monkeypatch.setattr(runner, "run_json", fake)
    return fake


def test_a_finished_run_is_recorded_and_done(tmp_path: Path, fake_sim: FakeSim) -> None:
    cfg, spec = _cfg(tmp_path), _spec("fsha", Defence(guard="splitguard"))

    record = THREATS.simulate(spec, cfg)

    assert THREATS.record(cfg, spec) == record
    saved = json.loads(THREATS.record_path(cfg.runs_dir, spec).read_text())
    assert saved["kind"] == "threat"
    assert saved["settings"]["threat"] == "fsha"
    assert saved["settings"]["guard"] == "splitguard"
    assert saved["settings"]["batch_size"] == 128
    assert saved["report"]["guard_detected_at_step"] == 7


@pytest.mark.parametrize(
    ("cfg_changes", "spec_changes"),
    [
        ({}, {"epochs": 4}),
        ({}, {"max_steps": 2}),
        ({"attack_epochs": 3}, {}),
        ({"decoder": "study"}, {}),
        ({"data_fingerprint": "fedcba9876543210"}, {}),
    ],
    ids=["epochs", "steps", "attack-epochs", "decoder", "data"],
)
def test_other_settings_are_not_done(
    tmp_path: Path, fake_sim: FakeSim, cfg_changes: dict[str, Any], spec_changes: dict[str, Any]
) -> None:
    cfg, spec = _cfg(tmp_path), _spec()
    THREATS.simulate(spec, cfg)
    other_cfg, other = _cfg(tmp_path, **cfg_changes), replace(spec, **spec_changes)
    assert THREATS.record_path(cfg.runs_dir, other) == THREATS.record_path(cfg.runs_dir, spec)

    assert THREATS.record(other_cfg, other) is None
    assert THREATS.record(cfg, spec) is not None


def test_a_run_whose_figure_is_gone_is_not_done(tmp_path: Path, fake_sim: FakeSim) -> None:
    cfg, spec = _cfg(tmp_path), _spec()
    record = THREATS.simulate(spec, cfg)

    Path(record.report.figure).unlink()

    assert THREATS.record(cfg, spec) is None


@pytest.mark.parametrize(
    ("reported", "message"),
    [
        ({"threat": "colluding"}, "splitnn-sim reported"),
        ({"noise": 0.5}, "splitnn-sim reported"),
        ({"guard_detected_at_step": 3}, "a guard's detection for a run without a guard"),
        ({"threat": None}, "unexpected report"),
    ],
    ids=["threat", "noise", "guard", "malformed"],
)
def test_a_report_of_another_run_is_failed_and_not_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reported: dict[str, Any], message: str
) -> None:
    def wrong(name: str, args: list[str], **_: Any) -> dict[str, Any]:
        return {**summary(threat="fsha"), **reported}

    monkeypatch.setattr(runner, "run_json", wrong)
    cfg, spec = _cfg(tmp_path), _spec("fsha")

    with pytest.raises(ProcessError, match=message):
        THREATS.simulate(spec, cfg)

    assert not THREATS.record_path(cfg.runs_dir, spec).exists()


# The table


def test_one_seed_gives_the_reports_numbers_and_empty_standard_errors() -> None:
    setting = ThreatSetting("passive", Defence(nopeek=0.5))
    spec = ThreatSpec("mnist5k", setting, 0, 3)
    record = _record(
        summary(threat="passive", nopeek=0.5, ssim=0.25, figure="p.png"), batch_size=32
    )

    row = threat_row(setting, [(spec, record)], test_images=500)

    assert row == {
        "threat": "passive",
        "defence": "nopeek",
        "parameter": 0.5,
        "seeds": 1,
        **{"test_accuracy": 93.0, "attack_mse": 0.05, "attack_psnr": 13.0, "attack_ssim": 0.25},
        **{"attack_validator_accuracy": 80.0, "seconds": 30.0},
        **{f"{k}_se": None for k in ("test_accuracy", "attack_mse", "attack_psnr")},
        **{f"{k}_se": None for k in ("attack_ssim", "attack_validator_accuracy", "seconds")},
        "test_images": 500,
        "guard_detected_at_step": None,
        "guard_detected_at_step_se": None,
        "guard_detections": None,
        **{"attack_train_mse_at_alarm": None, "attack_train_mse_at_alarm_se": None},
        "guard_lowest_score": None,
        "validator_accuracy_originals": 95.0,
        "validator_accuracy_originals_se": None,
        **{"attack_baseline_mean_mse": None, "attack_baseline_mean_mse_se": None},
        **{"attack_baseline_class_mse": None, "attack_baseline_class_mse_se": None},
        **{"mse_margin_mean": None, "mse_margin_mean_se": None},
        **{"mse_margin_class": None, "mse_margin_class_se": None},
        **{"noise": 0.0, "nopeek": 0.5, "guard": None, "batch_size": 32},
        **{"dataset": "mnist5k", "epochs": 3, "max_steps": None},
        **{"attack_epochs": 2, "decoder": "deep", "figure": "p.png"},
        **{"dp_epsilon": None, "dp_epsilon_se": None, "dp_delta": None},
        **{"dp_noise_multiplier": None, "dp_max_grad_norm": None},
    }


def _two_seeds(tmp_path: Path) -> ExperimentConfig:
    """Records written by hand: fsha with SplitGuard (flagged at step 40 by seed 0 only) and
    colluding without a defence, each for seeds 0 and 1."""
    cfg = _cfg(tmp_path, seeds=2)
    guard = Defence(guard="splitguard")
    cases = [
        ("fsha", guard, 0, summary(threat="fsha", detected=40, ssim=0.62, test_accuracy=91.0,
                                   attack_baseline_mean_mse=0.1)),
        ("fsha", guard, 1, summary(threat="fsha", detected=None, ssim=0.48, test_accuracy=93.5)),
        ("colluding", Defence(), 0, summary(ssim=0.4)),
        ("colluding", Defence(), 1, summary(ssim=0.4)),
    ]  # fmt: skip
    for threat, defence, seed, data in cases:
        spec = ThreatSpec("mnist5k", ThreatSetting(threat, defence), seed, 3)
        figure = _grid_png(tmp_path / "figures" / f"{spec.name}.png")
        record = ThreatRecord(
            settings=THREATS.settings(spec, cfg),
            report=ThreatSummary.from_json({**data, "figure": str(figure)}),
            wall_seconds=1.0,
            finished_at="then",
        )
        path = THREATS.record_path(cfg.runs_dir, spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record.to_json()))
    return cfg


def test_two_seeds_give_mean_and_standard_error(tmp_path: Path) -> None:
    cfg = _two_seeds(tmp_path)
    csv_path = cfg.results_dir / THREATS_CSV
    upsert_rows(csv_path, [{"threat": "older", "note": "kept"}], key=("threat",), columns=())

    lines = write_threat_tables(cfg, test_images=500)

    header, rows = read_rows(csv_path)
    assert header[:4] == ["threat", "defence", "parameter", "seeds"]
    assert "note" in header
    assert [(r["threat"], r["defence"], r["seeds"]) for r in rows] == [
        ("older", "", ""),
        ("colluding", "none", "2"),
        ("fsha", "splitguard", "2"),
    ]
    colluding, fsha = rows[1], rows[2]
    # By hand: SSIM 0.62 and 0.48 -> mean 0.55, sd 0.098995, SE sd / sqrt(2) = 0.07.
    assert float(fsha["attack_ssim"]) == pytest.approx(0.55)
    assert float(fsha["attack_ssim_se"]) == pytest.approx(0.07, rel=1e-5)
    assert float(fsha["test_accuracy"]) == pytest.approx(92.25)
    assert float(fsha["test_accuracy_se"]) == pytest.approx(1.25, rel=1e-5)
    assert statistics.stdev([91.0, 93.5]) / math.sqrt(2) == pytest.approx(1.25)
    # Flagged by one seed of two: its step, no SE, and the count.
    assert (fsha["guard_detected_at_step"], fsha["guard_detected_at_step_se"]) == ("40", "")
    assert fsha["guard_detections"] == "1"
    assert (fsha["attack_baseline_mean_mse"], fsha["attack_baseline_class_mse"]) == ("0.1", "")
    # The margin of the seed that measured the baseline: 0.1 - its attack MSE.
    assert float(fsha["mse_margin_mean"]) == pytest.approx(0.1 - 0.05)
    assert fsha["mse_margin_class"] == ""
    # No guard: nothing flagged and nothing to count; equal seeds: SE 0.
    assert colluding["guard_detected_at_step"] == colluding["guard_detections"] == ""
    assert (colluding["attack_ssim"], colluding["attack_ssim_se"]) == ("0.4", "0")
    assert colluding["test_images"] == fsha["test_images"] == "500"
    assert fsha["parameter"] == colluding["parameter"] == ""
    assert lines[1] == (
        "fsha, SplitGuard: test accuracy 92.2%, attack SSIM 0.550, PSNR 13.0 dB, "
        "validator 80.0%, guard flagged 1 of 2 (step 40) (2 seeds)"
    )
    assert lines[2] == f"{csv_path}: 2 rows from 4 runs"
    assert lines[3] == str(cfg.figures_dir / THREATS_FIGURE)


def test_nothing_finished_writes_nothing(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)

    assert write_threat_tables(cfg) == ["no finished threat runs with these settings"]
    assert not (cfg.results_dir / THREATS_CSV).exists()


# The figure


def test_grid_rows_cuts_the_originals_and_reconstructions_out_of_a_grid(tmp_path: Path) -> None:
    image = imread(_grid_png(tmp_path / "grid.png", shade=0.5, n=4))

    rows = grid_rows(image)

    assert len(rows) == 2
    originals, reconstructions = rows
    assert originals.shape == reconstructions.shape
    assert 80 <= originals.shape[0] <= 90  # one 0.9 in row at 100 dpi, without the gap
    assert reconstructions[..., :3].mean() == pytest.approx(0.5, abs=0.05)
    assert originals[..., :3].mean() < 0.4  # dark digits' background with a bright bar
    assert grid_rows(imread(_blank_png(tmp_path))) == []


def test_grid_rows_keeps_a_row_of_mostly_white_reconstructions_whole(tmp_path: Path) -> None:
    # Reconstructions of heavily noised tensors: white cells with dark specks every few pixels,
    # so that most pixel rows across them are more white than the cutter's ink threshold.
    originals = torch.full((4, 1, 28, 28), 0.1)
    white = torch.ones(4, 1, 28, 28)
    white[:, :, ::3, ::3] = 0.0
    path = save_grid(tmp_path / "white.png", originals=originals, rows=[("r", white)], n=4)

    rows = grid_rows(imread(path))

    assert len(rows) == 2
    assert rows[0].shape == rows[1].shape


def _blank_png(tmp_path: Path) -> Path:
    import matplotlib.pyplot as plt

    path = tmp_path / "blank.png"
    plt.imsave(path, torch.ones(20, 30).numpy(), cmap="gray", vmin=0, vmax=1)
    return path


def test_the_figure_has_the_originals_once_and_a_strip_per_row(tmp_path: Path) -> None:
    cfg = _two_seeds(tmp_path)  # two rows, each of its seeds' figures a grid of 3 images

    write_threat_tables(cfg)

    path = cfg.figures_dir / THREATS_FIGURE
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    strips = grid_rows(imread(path))
    assert len(strips) == 3
    originals, *reconstructions = (s[..., :3].mean() for s in strips)
    assert reconstructions == pytest.approx([0.6, 0.6], abs=0.05)
    assert originals < 0.3  # dark, with a bright bar: not a strip of reconstructions


def test_a_row_without_its_figure_is_left_out_of_the_figure(tmp_path: Path) -> None:
    record = _record(summary(figure=str(tmp_path / "gone.png")))

    assert write_threats_figure([(ThreatSetting("fsha", Defence()), [(_spec(), record)])],
                                tmp_path / "f.png") is None  # fmt: skip
    assert not (tmp_path / "f.png").exists()


# End to end, with a fake splitnn-sim


def test_a_failed_row_is_reported_and_run_again_while_done_rows_are_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_validators: list[list[str]]
) -> None:
    fake = FakeSim(failing=("fsha",))
    monkeypatch.setattr(runner, "run_json", fake)
    args = ["threats", "--dataset", "mnist5k", "--epochs", "3", "--max-steps", "2", "-q"]
    for flag, folder in (("--runs-dir", "runs"), ("--results-dir", "results"),
                         ("--model-dir", "models"), ("--data-dir", "data")):  # fmt: skip
        args += [flag, str(tmp_path / folder)]
    csv_path = tmp_path / "results" / THREATS_CSV

    first = CliRunner().invoke(main, args)

    assert first.exit_code == 1, first.output
    assert "runs: 14 ran, 0 skipped (done before), 7 failed" in first.output
    assert "FAILED mnist5k_threats_fsha_none: splitnn-sim exited with status 1; " in first.output
    assert Counter(r["threat"] for r in read_rows(csv_path)[1]) == {"colluding": 7, "passive": 7}
    assert len(fake.calls) == 21
    assert [call[call.index("--seed") + 1] for call in fake_validators] == ["0"]

    fake.failing = ()
    second = CliRunner().invoke(main, args)

    assert second.exit_code == 0, second.output
    assert "runs: 7 ran, 14 skipped (done before), 0 failed" in second.output
    assert len(fake_validators) == 2  # the failed runs' seed again
    assert [c[1] for c in fake.calls[21:]] == ["fsha"] * 7
    _, rows = read_rows(csv_path)
    assert [(r["threat"], r["defence"], r["parameter"]) for r in rows[7:14]] == [
        ("passive", "none", ""),
        ("passive", "laplace", "0.5"),
        ("passive", "laplace", "1"),
        ("passive", "laplace", "2"),
        ("passive", "nopeek", "0.5"),
        ("passive", "splitguard", ""),
        ("passive", "dp", "3"),
    ]
    fsha = [r for r in rows if r["threat"] == "fsha"]
    assert [r["guard_detected_at_step"] for r in fsha] == ["", "", "", "", "", "7", ""]
    assert [r["dp_epsilon"] for r in fsha] == ["", "", "", "", "", "", "2.95"]
    assert {r["test_images"] for r in rows} == {"500"}
    figure = imread(tmp_path / "results" / "figures" / THREATS_FIGURE)
    assert len(grid_rows(figure)) == 1 + 21  # the originals, then every row's reconstructions


def test_the_guards_row_says_how_far_the_hijacking_had_got_at_each_alarm() -> None:
    setting = ThreatSetting("fsha", Defence(guard="splitguard"))
    alarm = {"step": 30.0, "mse": 0.05, "psnr": 13.0, "ssim": 0.3, "validator_accuracy": 50.0}
    seeds = [
        summary(threat="fsha", detected=29, guard_lowest_score=0.2,
                attack_at_alarm={**alarm, "train_mse": 0.06, "train_ssim": 0.2},
                guard_scores=[{"step": 29, "score": 0.2}]),
        summary(threat="fsha", detected=44, guard_lowest_score=0.1,
                attack_at_alarm={**alarm, "train_mse": 0.04, "train_ssim": 0.4}),
        summary(threat="fsha", detected=None, guard_lowest_score=0.7),
    ]  # fmt: skip
    runs = [
        (ThreatSpec("mnist5k", setting, seed, 3), _record(data)) for seed, data in enumerate(seeds)
    ]

    row = threat_row(setting, runs)

    assert row["attack_train_mse_at_alarm"] == pytest.approx(0.05)
    assert row["attack_train_mse_at_alarm_se"] == pytest.approx(0.01)
    assert row["guard_lowest_score"] == 0.1
    assert (row["guard_detections"], row["guard_detected_at_step"]) == (2, 36.5)
