"""The ``multi`` group: its 30 simulations, the splitnn-sim command line, skip/redo, the CSV rows
and the figure. splitnn-sim itself is replaced by a fake that prints its contract's JSON."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from matplotlib.image import imread

from splitnn.common.processes import ProcessError
from splitnn.common.reports import MultiSummary
from splitnn.experiments import runner
from splitnn.experiments.cli import main
from splitnn.experiments.config import ExperimentConfig
from splitnn.experiments.grid import GROUPS, MultiSetting, MultiSpec, expand, multi_specs
from splitnn.experiments.multi_holder_report import (
    MULTI_COLUMNS,
    MULTI_CSV,
    MULTI_RUNS_CSV,
    multi_panels,
    multi_rows,
    multi_table_rows,
    topology_series,
    write_multi_figure,
    write_multi_tables,
)
from splitnn.experiments.multi_holder_runs import MULTI
from splitnn.experiments.records import MultiRecord
from splitnn.experiments.tables import read_rows, upsert_rows

DATA = "0123456789abcdef"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _cfg(tmp_path: Path, **changes: Any) -> ExperimentConfig:
    base: dict[str, Any] = {
        "groups": ("multi",),
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


def _spec(
    holders: int = 4,
    topology: str = "round-robin",
    noise: float = 0.0,
    seed: int = 0,
    epochs: int = 3,
) -> MultiSpec:
    return MultiSpec("mnist5k", MultiSetting(holders, topology, "iid", None, noise), seed, epochs)


def summary(
    *,
    topology: str = "round-robin",
    holders: int = 4,
    partition: str = "iid",
    alpha: float | None = None,
    noise: float = 0.0,
    seed: int = 0,
    ssim: tuple[float, ...] = (),
    validator: tuple[float, ...] = (),
    figure: str = "fig.png",
) -> dict[str, Any]:
    """What `splitnn-sim --json` prints (its contract); holder 0 colludes."""
    victims = range(1, holders)
    ssim = ssim or tuple(0.5 + 0.01 * h for h in victims)
    validator = validator or tuple(90.0 - h for h in victims)
    return {
        "topology": topology,
        "holders": holders,
        "partition": partition,
        "alpha": alpha,
        "colluder": 0,
        "dataset": "mnist5k",
        "epochs": 3,
        "seed": seed,
        "noise": noise,
        "nopeek": 0.0,
        "colluder_noise": 0.0,
        "seconds": 12.5,
        "members": [
            {
                "holder": h,
                "samples": 1000 + h,
                "noise": 0.0 if h == 0 else noise,
                "nopeek": 0.0,
                "test_accuracy": 90.0 + h,
            }
            for h in range(holders)
        ],
        "victims": [
            {
                "holder": h,
                "noise": noise,
                "nopeek": 0.0,
                "test_accuracy": 90.0 + h,
                "attack_mse": 0.01 * h,
                "attack_psnr": 15.0 + h,
                "attack_ssim": s,
                "attack_validator_accuracy": v,
                "validator_accuracy_originals": 95.5,
                "figure": figure.replace(".png", f"_holder{h}.png"),
            }
            for h, s, v in zip(victims, ssim, validator, strict=True)
        ],
    }


def _record(data: dict[str, Any]) -> MultiRecord:
    return MultiRecord(
        settings={"max_steps": None, "attack_epochs": 2, "decoder": "deep"},
        report=MultiSummary.from_json(data),
        wall_seconds=13.0,
        finished_at="then",
    )


# The grid


def test_the_group_is_18_plain_settings_and_12_noisy_ones() -> None:
    specs = multi_specs(dataset="mnist5k", seeds=1, epochs=10)
    settings = [s.setting for s in specs]

    assert len(specs) == 30
    assert len({s.name for s in specs}) == 30
    plain = {(s.holders, s.topology, s.partition, s.alpha) for s in settings if s.noise == 0}
    assert plain == {
        (k, t, p, a)
        for k in (2, 4, 8)
        for t in ("shared-head", "round-robin", "splitfed")
        for p, a in (("iid", None), ("dirichlet", 0.5))
    }
    noisy = [(s.holders, s.topology, s.partition, s.noise) for s in settings if s.noise > 0]
    assert sorted(noisy) == sorted(
        (4, t, "iid", b) for t in ("shared-head", "round-robin", "splitfed") for b in (0.5, 1, 2, 5)
    )
    assert {s.nopeek for s in settings} == {0.0}


def test_seeds_repeat_every_setting_seed_major() -> None:
    specs = multi_specs(dataset="mnist5k", seeds=2, epochs=10, max_steps=5)

    assert len(specs) == 60
    assert Counter(s.seed for s in specs) == {0: 30, 1: 30}
    assert [s.seed for s in specs[:30]] == [0] * 30
    assert specs[0].name == "mnist5k_multi_shared-head_k2_iid_00noise_00nopeek"
    assert specs[31].name == "mnist5k_multi_shared-head_k2_dir05_00noise_00nopeek_seed1"
    assert {s.max_steps for s in specs} == {5}


def test_multi_is_a_group_but_not_part_of_all() -> None:
    assert GROUPS["multi"].kind == "multi"
    assert "multi" not in expand(("all",))
    assert expand(("plain", "multi")) == ("plain", "multi")

    result = CliRunner().invoke(main, ["--help"])

    assert result.exit_code == 0
    assert "  multi " in result.output


def test_the_command_line_of_one_simulation(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, attack_epochs=7, decoder="study")
    setting = MultiSetting(8, "splitfed", "dirichlet", 0.5, 2.0)
    spec = MultiSpec("mnist5k", setting, seed=1, epochs=3, max_steps=20)
    name = "mnist5k_multi_splitfed_k8_dir05_20noise_00nopeek_seed1"

    args = MULTI.sim_args(spec, cfg)

    assert spec.name == name
    assert args == [
        *("--holders", "8", "--topology", "splitfed", "--partition", "dirichlet"),
        *("--alpha", "0.5", "--noise", "2.0", "--nopeek", "0.0"),
        *("--colluder", "0", "--colluder-noise", "0.0"),
        *("--dataset", "mnist5k", "--epochs", "3", "--max-steps", "20", "--seed", "1"),
        *("--attack-epochs", "7", "--decoder", "study"),
        *("--workdir", str(tmp_path / "runs" / "mnist5k" / "multi" / name)),
        *("--model-dir", str(tmp_path / "models" / "multi" / name)),
        *("--validator-dir", str(tmp_path / "models")),
        *("--figure", str(tmp_path / "results" / "figures" / "multi" / f"{name}.png")),
        *("--json", "-q"),
    ]


def test_iid_whole_epochs_pass_no_alpha_and_no_max_steps(tmp_path: Path) -> None:
    args = MULTI.sim_args(_spec(), _cfg(tmp_path))

    assert "--alpha" not in args
    assert "--max-steps" not in args
    assert args[args.index("--partition") + 1] == "iid"


# Skip / redo


class FakeSim:
    """Stands in for `run_json("splitnn-sim", ...)`: writes the victims' figures and returns
    the contract's JSON for the flags it was given."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, name: str, args: list[str], **_: Any) -> dict[str, Any]:
        assert name == "splitnn-sim"
        self.calls.append(args)
        flag = dict(zip(args[::2], args[1::2], strict=False))
        figure = Path(args[args.index("--figure") + 1])
        data = summary(
            topology=flag["--topology"],
            holders=int(flag["--holders"]),
            partition=flag["--partition"],
            alpha=float(flag["--alpha"]) if "--alpha" in flag else None,
            noise=float(flag["--noise"]),
            seed=int(flag["--seed"]),
            figure=str(figure),
        )
        figure.parent.mkdir(parents=True, exist_ok=True)
        for victim in data["victims"]:
            Path(victim["figure"]).write_bytes(PNG_SIGNATURE)
        return data


@pytest.fixture
def fake_sim(monkeypatch: pytest.MonkeyPatch, fake_validators: list[list[str]]) -> FakeSim:
    fake = FakeSim()
    monkeypatch.setattr(runner, "run_json", fake)
    return fake


def test_a_finished_simulation_is_recorded_and_done(tmp_path: Path, fake_sim: FakeSim) -> None:
    cfg, spec = _cfg(tmp_path), _spec()

    record = MULTI.simulate(spec, cfg)

    assert MULTI.record(cfg, spec) == record
    saved = json.loads(MULTI.record_path(cfg.runs_dir, spec).read_text())
    assert saved["kind"] == "multi"
    assert saved["settings"]["holders"] == 4
    assert saved["settings"]["colluder"] == 0
    assert [v["holder"] for v in saved["report"]["victims"]] == [1, 2, 3]


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
    MULTI.simulate(spec, cfg)
    other_cfg, other = _cfg(tmp_path, **cfg_changes), replace(spec, **spec_changes)
    # Same record file, other settings.
    assert MULTI.record_path(cfg.runs_dir, other) == MULTI.record_path(cfg.runs_dir, spec)

    assert MULTI.record(other_cfg, other) is None
    assert MULTI.record(cfg, spec) is not None


def test_a_simulation_whose_figures_are_gone_is_not_done(tmp_path: Path, fake_sim: FakeSim) -> None:
    cfg, spec = _cfg(tmp_path), _spec()
    record = MULTI.simulate(spec, cfg)

    Path(record.report.victims[1].figure).unlink()

    assert MULTI.record(cfg, spec) is None


def test_a_record_of_another_format_is_not_done(tmp_path: Path, fake_sim: FakeSim) -> None:
    cfg, spec = _cfg(tmp_path), _spec()
    MULTI.simulate(spec, cfg)
    path = MULTI.record_path(cfg.runs_dir, spec)
    path.write_text(path.read_text().replace('"attack_ssim"', '"ssim"'))

    assert MULTI.record(cfg, spec) is None


@pytest.mark.parametrize("force", [False, True])
def test_done_simulations_are_skipped_unless_forced(
    tmp_path: Path, fake_sim: FakeSim, fake_validators: list[list[str]], force: bool
) -> None:
    cfg = _cfg(tmp_path)
    first = MULTI.run(cfg)
    assert [o.status for o in first] == ["ran"] * 30
    # The seed's validator is prepared once, in the grid's model folder, which every run shares.
    validator = ["-q", "validator", "--dataset", "mnist5k", "--seed", "0"]
    validator += ["--model-dir", str(cfg.model_dir), "--data-dir", str(cfg.data_dir)]
    assert fake_validators == [validator]
    assert {args[args.index("--validator-dir") + 1] for args in fake_sim.calls} == {
        str(cfg.model_dir)
    }

    second = MULTI.run(_cfg(tmp_path, force=force))

    assert [o.status for o in second] == ["ran" if force else "skipped"] * 30
    assert len(fake_sim.calls) == (60 if force else 30)
    assert len(fake_validators) == (2 if force else 1)  # nothing to run: nothing prepared
    assert len({args[args.index("--workdir") + 1] for args in fake_sim.calls}) == 30


def test_a_failed_or_wrong_simulation_is_failed_and_not_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_validators: list[list[str]]
) -> None:
    def broken(name: str, args: list[str], **_: Any) -> dict[str, Any]:
        if "splitfed" in args:
            raise ProcessError("splitnn-sim exited with status 1")
        return summary(topology="shared-head", holders=2)  # whatever was asked

    monkeypatch.setattr(runner, "run_json", broken)
    cfg = _cfg(tmp_path)

    outcomes = MULTI.run(cfg)

    statuses = Counter((o.item.setting.topology, o.status) for o in outcomes)
    assert statuses == {
        ("shared-head", "ran"): 1,  # K = 2, iid: what it reported
        ("shared-head", "failed"): 9,
        ("round-robin", "failed"): 10,
        ("splitfed", "failed"): 10,
    }
    failed = next(o for o in outcomes if o.item.setting.topology == "splitfed")
    assert failed.error is not None
    assert failed.error.startswith("splitnn-sim exited with status 1; ")
    assert not MULTI.record_path(cfg.runs_dir, failed.item).exists()


def test_a_report_that_does_not_add_up_is_refused() -> None:
    data = summary(holders=4)
    data["victims"] = data["victims"][:2]

    with pytest.raises(ValueError, match="victims are not every holder but the colluder"):
        MultiSummary.from_json(data)


# The table and the figure


def test_one_row_per_victim_from_the_programs_summary() -> None:
    data = summary(holders=3, noise=0.5, ssim=(0.61, 0.42), validator=(88.0, 41.5))

    rows = multi_rows(_record(data))

    assert len(rows) == 2
    assert rows[1] == {
        "topology": "round-robin",
        "holders": 3,
        "partition": "iid",
        "alpha": None,
        "seed": 0,
        "epochs": 3,
        "victim_noise": 0.5,
        "victim_nopeek": 0.0,
        "colluder": 0,
        "victim": 2,
        "victim_test_accuracy": 92.0,
        "colluder_test_accuracy": 90.0,
        "mean_test_accuracy": 91.0,
        "attack_mse": 0.02,
        "attack_psnr": 17.0,
        "attack_ssim": 0.42,
        "attack_validator_accuracy": 41.5,
        "validator_accuracy_originals": 95.5,
        "dataset": "mnist5k",
        "colluder_noise": 0.0,
        "victim_samples": 1002,
        "max_steps": None,
        "attack_epochs": 2,
        "decoder": "deep",
        "figure": "fig_holder2.png",
        "own_attack_mse": None,
        "own_attack_psnr": None,
        "own_attack_ssim": None,
        "own_attack_images": None,
        "attack_baseline_mean_mse": None,
        "attack_baseline_class_mse": None,
        "mse_margin_mean": None,
        "mse_margin_class": None,
    }
    assert rows[0]["victim"] == 1
    assert rows[0]["attack_ssim"] == 0.61


def test_the_table_keeps_rows_of_other_runs(tmp_path: Path, fake_sim: FakeSim) -> None:
    cfg = _cfg(tmp_path)
    csv_path = cfg.results_dir / MULTI_CSV
    upsert_rows(csv_path, [{"topology": "older", "note": "kept"}], key=("topology",), columns=())
    for spec in (_spec(holders=2, topology="splitfed"), _spec(topology="splitfed", noise=5.0)):
        MULTI.simulate(spec, cfg)

    lines = write_multi_tables(cfg, test_images=500)

    header, rows = read_rows(csv_path)
    assert header[:4] == ["topology", "holders", "partition", "alpha"]
    assert {r["seeds"] for r in rows[1:]} == {"1"} and rows[1]["test_images"] == "500"
    assert "note" in header
    assert [(r["topology"], r["holders"], r["victim"]) for r in rows] == [
        ("older", "", ""),
        ("splitfed", "2", "1"),
        *(("splitfed", "4", str(h)) for h in (1, 2, 3)),
    ]
    assert rows[0]["note"] == "kept"
    assert rows[1]["attack_ssim"] == "0.51"
    assert rows[1]["mean_test_accuracy"] == "90.5"
    assert lines[0] == (
        "mnist5k_multi_splitfed_k2_iid_00noise_00nopeek: test accuracy mean 90.5% "
        "(colluder 90.0%), 1 victims: attack SSIM 0.510, validator 89.0% (12 s)"
    )
    assert lines[-3] == f"{cfg.results_dir / MULTI_RUNS_CSV}: 4 victims of 2 simulations"
    _, runs = read_rows(cfg.results_dir / MULTI_RUNS_CSV)
    assert [r["seed"] for r in runs] == ["0"] * 4
    assert lines[-1] == str(cfg.figures_dir / "multi_holder_attacks.png")
    assert Path(lines[-1]).read_bytes()[:8] == PNG_SIGNATURE


def test_the_table_averages_each_victim_over_seeds() -> None:
    runs = [
        row
        for seed, ssim in ((1, 0.7), (0, 0.5), (2, 0.6))
        for row in multi_rows(_record(summary(holders=2, seed=seed, ssim=(ssim,))))
    ]
    runs += multi_rows(_record(summary(holders=2, noise=1.0, ssim=(0.3,))))

    rows = multi_table_rows(runs, test_images=500)

    assert [(r["victim_noise"], r["seeds"]) for r in rows] == [(0.0, 3), (1.0, 1)]
    three, one = rows
    assert three["attack_ssim"] == pytest.approx(0.6)
    assert three["attack_ssim_se"] == pytest.approx(0.1 / 3**0.5)
    assert three["victim_test_accuracy_se"] == 0.0
    assert three["test_images"] == 500 and "seed" not in three
    assert one["attack_ssim_se"] is None
    assert set(three) == set(MULTI_COLUMNS)


def test_series_are_means_over_victims_then_seeds_per_topology() -> None:
    reports = [
        MultiSummary.from_json(summary(holders=2, seed=0, ssim=(0.4,))),
        MultiSummary.from_json(summary(holders=2, seed=1, ssim=(0.6,))),
        MultiSummary.from_json(summary(holders=4, ssim=(0.2, 0.3, 0.7))),
        MultiSummary.from_json(summary(topology="splitfed", holders=8, ssim=(0.1,) * 7)),
    ]

    series = topology_series(reports, lambda r: float(r.holders), "attack_ssim")

    assert list(series) == ["round-robin", "splitfed"]  # no shared-head: not plotted
    xs, ys, errors = series["round-robin"]
    assert list(xs) == [2.0, 4.0]
    assert list(ys) == pytest.approx([0.5, 0.4])
    assert errors[0] == pytest.approx(0.1)  # sd 0.1414 / sqrt(2)
    assert errors[1] is None
    xs, ys, errors = series["splitfed"]
    assert (list(xs), list(errors)) == ([8.0], [None])
    assert list(ys) == pytest.approx([0.1])


def test_the_figure_has_three_panels(tmp_path: Path) -> None:
    reports = [
        MultiSummary.from_json(summary(topology=t, holders=k))
        for t in ("round-robin", "splitfed")
        for k in (2, 4, 8)
    ]
    reports += [
        MultiSummary.from_json(
            summary(topology="round-robin", noise=b, validator=(60.0, 50.0, 40.0))
        )
        for b in (0.5, 1.0, 2.0, 5.0)
    ]

    path = write_multi_figure(reports, tmp_path / "figures" / "multi_holder_attacks.png")

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    height, width = imread(path).shape[:2]
    assert (height, width) == (round(120 * 4.2), round(120 * 3 * 6.4))


def test_dirichlet_shares_have_their_own_panel_and_stay_out_of_the_iid_ones() -> None:
    iid = [
        MultiSummary.from_json(summary(topology="shared-head", holders=k, ssim=(0.5,) * (k - 1)))
        for k in (2, 4)
    ]
    skewed = [
        MultiSummary.from_json(
            summary(
                topology="shared-head",
                holders=k,
                partition="dirichlet",
                alpha=0.5,
                ssim=(0.1,) * (k - 1),
                validator=(30.0,) * (k - 1),
            )
        )
        for k in (2, 4)
    ]
    other_alpha = MultiSummary.from_json(
        summary(topology="splitfed", holders=2, partition="dirichlet", alpha=5.0)
    )

    by_k_iid, by_k_skewed, by_noise = multi_panels([*iid, *skewed, other_alpha])

    assert list(by_k_iid.series) == ["shared-head"]
    assert list(by_k_iid.series["shared-head"][1]) == pytest.approx([0.5, 0.5])
    assert list(by_k_skewed.series) == ["shared-head"]  # alpha 5 is not this panel's alpha
    assert list(by_k_skewed.series["shared-head"][0]) == [2.0, 4.0]
    assert list(by_k_skewed.series["shared-head"][1]) == pytest.approx([0.1, 0.1])
    assert "Dirichlet (alpha 0.5)" in by_k_skewed.title
    assert by_k_iid.ylim == by_k_skewed.ylim == (0.0, 1.0)  # one scale to compare them on
    assert list(by_noise.series["shared-head"][2]) == [None]  # K = 4, iid only: one seed
    assert list(by_noise.series["shared-head"][1]) == pytest.approx([88.0])


def _with_own(data: dict[str, Any], mse: float) -> dict[str, Any]:
    """`data` with every victim scored on its own training share too (200 tensors)."""
    for victim in data["victims"]:
        victim.update(own_attack_mse=mse, own_attack_psnr=20.0, own_attack_ssim=0.8)
        victim["own_attack_images"] = 200
    return data


def test_own_share_scores_are_averaged_over_the_seeds_that_scored_them() -> None:
    runs = [
        *multi_rows(_record(_with_own(summary(holders=2, seed=0), 0.02))),
        *multi_rows(_record(_with_own(summary(holders=2, seed=1), 0.04))),
        *multi_rows(_record(summary(holders=2, seed=2))),  # no training tensors in its log
        *multi_rows(_record(summary(holders=2, noise=1.0))),
    ]

    scored, unscored = multi_table_rows(runs)

    assert scored["seeds"] == 3
    assert scored["own_attack_mse"] == pytest.approx(0.03)
    assert scored["own_attack_mse_se"] == pytest.approx(0.01)
    assert scored["own_attack_ssim"] == pytest.approx(0.8)
    assert scored["own_attack_images"] == 200
    assert unscored["own_attack_mse"] is None and unscored["own_attack_mse_se"] is None
    assert set(scored) == set(MULTI_COLUMNS) == set(unscored)


# --only


def test_only_keeps_the_runs_whose_name_matches(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, seeds=2, only=("*_k4_iid_00noise_*",))

    names = [spec.name for spec in MULTI.specs(cfg)]

    assert names == [
        f"mnist5k_multi_{t}_k4_iid_00noise_00nopeek{suffix}"
        for suffix in ("", "_seed1")
        for t in ("shared-head", "round-robin", "splitfed")
    ]
    both = _cfg(tmp_path, only=("*_k2_iid_00noise_*", "*_splitfed_k8_dir05_*"))
    assert [spec.name for spec in MULTI.specs(both)] == [
        f"mnist5k_multi_{t}_k2_iid_00noise_00nopeek" for t in ("shared-head", "round-robin")
    ] + [
        "mnist5k_multi_splitfed_k2_iid_00noise_00nopeek",
        "mnist5k_multi_splitfed_k8_dir05_00noise_00nopeek",
    ]


def test_only_runs_and_tables_just_the_selected_simulations(
    tmp_path: Path, fake_sim: FakeSim
) -> None:
    cfg = _cfg(tmp_path, only=("*_round-robin_k4_iid_*",))

    outcomes = MULTI.run(cfg)
    write_multi_tables(cfg, test_images=500)

    # K = 4 iid round-robin: the noise-free setting and the four noise levels.
    assert [o.status for o in outcomes] == ["ran"] * 5
    assert {args[args.index("--topology") + 1] for args in fake_sim.calls} == {"round-robin"}
    _, rows = read_rows(cfg.results_dir / MULTI_CSV)
    assert {(r["topology"], r["holders"], r["partition"]) for r in rows} == {
        ("round-robin", "4", "iid")
    }
    assert sorted({float(r["victim_noise"]) for r in rows}) == [0.0, 0.5, 1.0, 2.0, 5.0]


def test_only_that_matches_nothing_runs_nothing_and_says_so(
    tmp_path: Path, fake_sim: FakeSim, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _cfg(tmp_path, only=("*_k3_*",))

    assert MULTI.run(cfg) == []
    assert fake_sim.calls == []
    assert "--only *_k3_* matches none of its runs" in caplog.text
    assert "mnist5k_multi_shared-head_k2_iid_00noise_00nopeek" in caplog.text


def test_only_names_each_pattern_that_matches_nothing_beside_one_that_matches(
    tmp_path: Path, fake_sim: FakeSim, caplog: pytest.LogCaptureFixture
) -> None:
    # A mistyped pattern beside a good one must not pass unnoticed: its runs would be missing.
    only = ("*_k2_iid_00noise_*", "*_k2_dirichlet*", "*_splitfed_k8_dir05_*_seed1")
    cfg = _cfg(tmp_path, seeds=2, only=only)

    MULTI.run(cfg)

    assert len(fake_sim.calls) == 3 * 2 + 1  # three topologies x two seeds, and seed 1 of one
    assert "--only *_k2_dirichlet* matches none of its runs" in caplog.text
    assert "--only *_k2_iid_00noise_* matches none" not in caplog.text
    assert "_seed1 matches none" not in caplog.text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["plain", "--only", "*_k4_*"], "give it with multi or threats"),
        (["multi", "--only", " "], "an empty pattern matches no run name"),
    ],
)
def test_only_without_simulations_or_with_an_empty_pattern_is_a_usage_error(
    args: list[str], message: str
) -> None:
    result = CliRunner().invoke(main, args)

    assert result.exit_code == 2
    assert message in result.output


def _with_baselines(data: dict[str, Any], class_mse: float) -> dict[str, Any]:
    """`data` with the trivial baselines of every victim (mean image 0.07)."""
    for victim in data["victims"]:
        victim.update(attack_baseline_mean_mse=0.07, attack_baseline_class_mse=class_mse)
    return data


def test_margins_over_the_baselines_are_per_seed_then_averaged() -> None:
    # Victim 1's attack MSE is 0.01 in every seed (see `summary`).
    runs = [
        *multi_rows(_record(_with_baselines(summary(holders=2, seed=0), 0.05))),
        *multi_rows(_record(_with_baselines(summary(holders=2, seed=1), 0.03))),
        *multi_rows(_record(summary(holders=2, seed=2))),  # reported no baselines
    ]
    assert runs[0]["mse_margin_class"] == pytest.approx(0.04)
    assert runs[0]["mse_margin_mean"] == pytest.approx(0.06)
    assert runs[2]["mse_margin_class"] is None

    (row,) = multi_table_rows(runs)

    assert row["seeds"] == 3
    assert row["attack_baseline_class_mse"] == pytest.approx(0.04)
    assert row["mse_margin_class"] == pytest.approx(0.03)
    assert row["mse_margin_class_se"] == pytest.approx(0.01)
    assert row["mse_margin_mean"] == pytest.approx(0.06) and row["mse_margin_mean_se"] == 0.0


def test_a_simulation_starts_over_from_empty_folders(tmp_path: Path, fake_sim: FakeSim) -> None:
    # An interrupted attempt left the server's group save and a holder's state behind.
    cfg, spec = _cfg(tmp_path), _spec()
    stale = [
        MULTI.model_dir(spec, cfg) / "groups" / "sim" / "27.group.ckpt",
        MULTI.workdir(spec, cfg) / "wire.log",
    ]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"left over")
    other = MULTI.model_dir(_spec(topology="splitfed"), cfg) / "kept"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"another run's")

    MULTI.simulate(spec, cfg)

    assert not any(path.exists() for path in stale)
    assert other.read_bytes() == b"another run's"
    assert MULTI.record(cfg, spec) is not None
