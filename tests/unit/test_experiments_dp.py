"""The ``dp`` group: DP-SGD settings, the names the client gives its runs and checkpoints, the
client's command line, the records, the CSV columns and the report's commands; the threats
table's DP-SGD defence. Nothing trains: the client and splitnn-sim only parse their flags."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import splitnn.client.cli as client_cli
import splitnn.sim.cli as sim_cli
from splitnn.client.app import default_run_name
from splitnn.client.config import ClientConfig
from splitnn.client.dp import DP_DELTA, DP_LR, DPSettings
from splitnn.common.checkpoints import classifier_stem, save_checkpoint
from splitnn.common.files import write_json_atomic
from splitnn.common.processes import ProcessError
from splitnn.common.reports import AttackReport, RunReport
from splitnn.experiments import runner
from splitnn.experiments.attack_report import (
    ATTACK_COLUMNS,
    ATTACK_RUN_COLUMNS,
    FIGURES,
    _with_run_settings,
    attack_row,
    attack_rows,
    write_figures,
)
from splitnn.experiments.attacks import AttackSpec, attack_specs
from splitnn.experiments.cli import main
from splitnn.experiments.config import ExperimentConfig
from splitnn.experiments.grid import (
    GROUPS,
    Defence,
    Setting,
    ThreatSetting,
    ThreatSpec,
    TrainSpec,
    expand,
    grid_specs,
    threat_defences,
    train_specs,
)
from splitnn.experiments.performance import (
    MODEL_COLUMNS,
    MODEL_CSV,
    Measured,
    model_rows,
    nothing_trained,
    posttrain_rows,
)
from splitnn.experiments.records import (
    AttackRecord,
    ClassifierRecord,
    load_train_record,
    train_record_path,
    train_settings,
    wirelog_path,
)
from splitnn.experiments.report import TABLES
from splitnn.experiments.runner import client_command
from splitnn.experiments.tables import read_rows, upsert_rows
from splitnn.experiments.threat_records import ThreatRecord, ThreatSummary
from splitnn.experiments.threat_report import THREATS_COLUMNS, summary_line, threat_row
from splitnn.experiments.threat_runs import THREATS
from splitnn.sim.app import SimConfig

DATA = "0123456789abcdef"
DP_COLUMNS = ("dp_epsilon", "dp_delta", "dp_noise_multiplier", "dp_max_grad_norm")


def _dp_specs(seeds: int = 1) -> list[TrainSpec]:
    return train_specs("dp", dataset="mnist5k", seeds=seeds, epochs=4)


def _cfg(tmp_path: Path, **changes: Any) -> ExperimentConfig:
    base: dict[str, Any] = {
        "groups": ("dp",),
        "dataset": "mnist5k",
        "epochs": 4,
        "model_dir": tmp_path / "models",
        "data_dir": tmp_path / "data",
        "runs_dir": tmp_path / "runs",
        "results_dir": tmp_path / "results",
        "progress": False,
        "data_fingerprint": DATA,
    }
    return ExperimentConfig(**{**base, **changes})


# The group


def test_the_dp_group_is_dp_sgd_at_three_epsilons_without_noise_or_nopeek() -> None:
    group = GROUPS["dp"]

    assert group.kind == "train"
    assert group.settings == tuple(Setting(0.0, 0.0, 128, dp_epsilon=e) for e in (1.0, 3.0, 8.0))
    assert [s.dp for s in group.settings] == [
        DPSettings(epsilon=e, delta=1e-5) for e in (1.0, 3.0, 8.0)
    ]
    assert all(s.dp is None for name in ("plain", "noise", "nopeek", "combo")
               for s in GROUPS[name].settings)  # fmt: skip


def test_dp_is_a_group_of_its_own_not_part_of_all() -> None:
    assert expand(("dp",)) == ("dp",)
    assert expand(("dp", "attacks", "performance")) == ("dp", "attacks", "performance")
    assert "dp" not in expand(("all",))

    result = CliRunner().invoke(main, ["--help"])

    assert result.exit_code == 0
    assert "  dp " in result.output
    assert "--dp-lr" in result.output


def test_the_grid_is_unchanged_and_the_extra_groups_add_the_dp_classifiers() -> None:
    grid = grid_specs(dataset="mnist5k", seeds=2, epochs=4)
    everything = grid_specs(dataset="mnist5k", seeds=2, epochs=4, extra=True)

    assert len(grid) == 48 and all(s.setting.dp is None for s in grid)
    assert everything[:48] == grid
    assert [s.setting.dp_epsilon for s in everything[48:]] == [1.0, 3.0, 8.0] * 2


# Names


def test_dp_names_carry_the_dp_tag_after_the_settings() -> None:
    specs = _dp_specs(seeds=2)

    assert [s.name for s in specs] == [
        "mnist5k_00noise_00nopeek_dp1eps",
        "mnist5k_00noise_00nopeek_dp3eps",
        "mnist5k_00noise_00nopeek_dp8eps",
        "mnist5k_00noise_00nopeek_dp1eps_seed1",
        "mnist5k_00noise_00nopeek_dp3eps_seed1",
        "mnist5k_00noise_00nopeek_dp8eps_seed1",
    ]
    assert {s.model for s in specs} == {s.name for s in specs[:3]}
    assert Setting(0.0, 0.0, 128).tag == "00noise_00nopeek"  # the other groups' names as before


class _Parsed(Exception):
    """Raised by the fake `run`: the client parsed its command line into `cfg`."""

    def __init__(self, cfg: ClientConfig) -> None:
        super().__init__("parsed")
        self.cfg = cfg


def _client_config(args: list[str], monkeypatch: pytest.MonkeyPatch) -> ClientConfig:
    """The `ClientConfig` that `splitnn-client ARGS` would train with."""

    def fake_run(cfg: ClientConfig) -> RunReport:
        raise _Parsed(cfg)

    monkeypatch.setattr(client_cli, "run", fake_run)
    result = CliRunner().invoke(client_cli.main, args)
    assert isinstance(result.exception, _Parsed), result.output
    return result.exception.cfg


@pytest.mark.parametrize("seed", [0, 1])
def test_the_client_given_the_grids_command_names_its_checkpoint_as_the_grid_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    cfg = _cfg(tmp_path)
    for spec in _dp_specs(seeds=2):
        if spec.seed != seed:
            continue
        args = client_command(spec, cfg, server="127.0.0.1:1").args()

        client = _client_config(args, monkeypatch)

        assert client.dp == spec.setting.dp
        assert client.lr == DP_LR
        assert client.batch_size == 128 and client.seed == seed
        stem = classifier_stem(
            dataset=client.dataset,
            noise=client.noise,
            nopeek=client.nopeek,
            epoch=4,
            seed=client.seed,
            dp=client.dp.tag if client.dp is not None else "",
        )
        assert stem == f"{spec.name}_epoch=4"
        assert default_run_name(client) == f"{spec.model}_seed{seed}"


def test_the_training_command_passes_dp_sgds_flags_and_learning_rate(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, lr=2e-4, dp_lr=5e-3)
    plain, *_ = train_specs("plain", dataset="mnist5k", seeds=1, epochs=4)
    dp3 = _dp_specs()[1]

    args = client_command(dp3, cfg, server="127.0.0.1:1").args()
    plain_args = client_command(plain, cfg, server="127.0.0.1:1").args()

    assert args[args.index("--dp-epsilon") + 1] == "3.0"
    assert args[args.index("--dp-delta") + 1] == repr(DP_DELTA)
    assert args[args.index("--lr") + 1] == "0.005"
    assert args[args.index("--batch-size") + 1] == "128"
    assert "--dp-noise-multiplier" not in args and "--nopeek" in args
    assert not any(a.startswith("--dp-") for a in plain_args)
    assert plain_args[plain_args.index("--lr") + 1] == "0.0002"


def test_the_grid_takes_its_dp_learning_rate_from_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[ExperimentConfig] = []

    def fake_run(cfg: ExperimentConfig) -> None:
        seen.append(cfg)
        raise _Parsed(ClientConfig())

    monkeypatch.setattr("splitnn.experiments.cli.run", fake_run)

    CliRunner().invoke(main, ["dp", "--dp-lr", "0.002", "--data-dir", str(tmp_path)])
    CliRunner().invoke(main, ["dp", "--data-dir", str(tmp_path)])

    assert [c.dp_lr for c in seen] == [0.002, DP_LR]
    assert [c.groups for c in seen] == [("dp",), ("dp",)]
    assert seen[0].lr_for(GROUPS["dp"].settings[0]) == 0.002
    assert seen[0].lr_for(GROUPS["plain"].settings[0]) == seen[0].lr == 1e-4


# Records


def _run_report(spec: TrainSpec, body: Path, head: Path, *, spent: float | None) -> RunReport:
    dp = spec.setting.dp
    return RunReport(
        run=spec.name, dataset="mnist5k", dataset_description="d", noise=0.0, nopeek=0.0,
        eval_noise=0.0, epochs=4, batch_size=128, seed=spec.seed, best_epoch=4,
        train_accuracy=80.0, val_accuracy=80.0, test_accuracy=80.0 + spec.seed,
        samples_per_second=1.0, train_seconds=10.0, checkpoint=str(body), head_checkpoint=str(head),
        test_samples=500,
        dp_epsilon=spent if dp is not None else None,
        dp_delta=dp.delta if dp is not None else None,
        dp_noise_multiplier=1.1 if dp is not None else None,
        dp_max_grad_norm=dp.max_grad_norm if dp is not None else None,
        dp_sample_rate=0.05 if dp is not None else None,
    )  # fmt: skip


def _finished_run(
    tmp_path: Path, spec: TrainSpec, *, lr: float, spent: float | None = 2.9
) -> ClassifierRecord:
    """What a finished run leaves behind, with the manifest the client writes (`dp` included)."""
    classifiers = tmp_path / "models" / "classifiers"
    body = classifiers / f"{spec.name}_epoch=4.ckpt"
    head = classifiers / f"{spec.name}_epoch=4.head.ckpt"
    dp = spec.setting.dp
    manifest = {
        "part": "body",
        "dataset": spec.dataset,
        "noise": spec.setting.noise,
        "nopeek": spec.setting.nopeek,
        "seed": spec.seed,
        "batch_size": spec.setting.batch_size,
        "dp": None if dp is None else asdict(dp),
    }
    save_checkpoint(body, {"w": torch.zeros(1)}, manifest)
    save_checkpoint(head, {"w": torch.zeros(1)}, {"part": "head"})
    runs = tmp_path / "runs"
    wirelog_path(runs, spec).parent.mkdir(parents=True, exist_ok=True)
    wirelog_path(runs, spec).write_bytes(b"log")
    record = ClassifierRecord(
        settings=train_settings(spec, lr=lr, data=DATA),
        report=_run_report(spec, body, head, spent=spent),
        wirelog=str(wirelog_path(runs, spec)),
        wall_seconds=1.0,
        finished_at="then",
    )
    write_json_atomic(train_record_path(runs, spec), record.to_json())
    return record


def test_only_dp_runs_record_dp_settings() -> None:
    plain, *_ = train_specs("plain", dataset="mnist5k", seeds=1, epochs=4)
    dp3 = _dp_specs()[1]

    assert "dp_epsilon" not in train_settings(plain, lr=1e-4, data=DATA)  # older records hold
    settings = train_settings(dp3, lr=DP_LR, data=DATA)
    assert (settings["dp_epsilon"], settings["dp_delta"], settings["lr"]) == (3.0, 1e-5, DP_LR)


def test_a_dp_run_is_done_under_the_dp_learning_rate_only(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    dp3 = _dp_specs()[1]
    record = _finished_run(tmp_path, dp3, lr=cfg.dp_lr)

    assert load_train_record(cfg.runs_dir, dp3, lr=DP_LR, data=DATA) == record
    assert load_train_record(cfg.runs_dir, dp3, lr=cfg.lr, data=DATA) is None


def test_a_checkpoint_of_another_epsilon_is_not_done(tmp_path: Path) -> None:
    dp3 = _dp_specs()[1]
    record = _finished_run(tmp_path, dp3, lr=DP_LR)
    manifest = Path(record.report.checkpoint + ".json")
    manifest.write_text(manifest.read_text().replace('"epsilon": 3.0', '"epsilon": 8.0'))

    assert load_train_record(tmp_path / "runs", dp3, lr=DP_LR, data=DATA) is None


def test_a_checkpoint_without_dp_sgd_is_not_a_dp_run(tmp_path: Path) -> None:
    dp3 = _dp_specs()[1]
    record = _finished_run(tmp_path, dp3, lr=DP_LR)
    manifest = Path(record.report.checkpoint + ".json")
    text = manifest.read_text()
    start = text.index('"dp": {')
    manifest.write_text(text[:start] + '"dp": null}')

    assert load_train_record(tmp_path / "runs", dp3, lr=DP_LR, data=DATA) is None


def test_nothing_to_measure_names_the_dp_runs_learning_rate_flag(tmp_path: Path) -> None:
    plain, *_ = train_specs("plain", dataset="mnist5k", seeds=1, epochs=4)
    _finished_run(tmp_path, plain, lr=1e-4)
    _finished_run(tmp_path, _dp_specs()[1], lr=DP_LR)

    text = nothing_trained(_cfg(tmp_path, epochs=10))

    assert "  --dataset mnist5k --epochs 4 --lr 0.0001: 1 run, seed 0" in text.splitlines()
    assert "  --dataset mnist5k --epochs 4 --dp-lr 0.001: 1 run, seed 0" in text.splitlines()


# model_performances.csv


def _measured(spec: TrainSpec, record: ClassifierRecord) -> Measured:
    measurement = {
        "train_accuracy": 80.0, "val_accuracy": 80.0, "test_accuracy": 80.0, "dcor": 0.5,
        "dcor_sent": 0.5, "dcor_unbiased": 0.4, "dcor_sent_unbiased": 0.4, "dcor_samples": 500,
        "train_samples": 4000, "test_samples": 500, "val_samples": 500,
    }  # fmt: skip
    posttrain = {repr(b): 70.0 for b in (0.0, 0.1, 0.2, 0.5, 1.0, 1.5, 2.0)}
    return spec, record, {"measurement": measurement, "posttrain": posttrain}


def test_model_rows_carry_the_epsilon_spent_and_dp_sgds_settings(tmp_path: Path) -> None:
    plain, *_ = train_specs("plain", dataset="mnist5k", seeds=1, epochs=4)
    dp0, dp1 = (s for s in _dp_specs(seeds=2) if s.setting.dp_epsilon == 3.0)
    measured = [
        _measured(plain, _finished_run(tmp_path, plain, lr=1e-4)),
        _measured(dp0, _finished_run(tmp_path, dp0, lr=DP_LR, spent=2.9)),
        _measured(dp1, _finished_run(tmp_path, dp1, lr=DP_LR, spent=3.1)),
    ]

    plain_row, dp_row = model_rows(measured)

    assert dp_row["model"] == "mnist5k_00noise_00nopeek_dp3eps" and dp_row["seeds"] == 2
    assert dp_row["dp_epsilon"] == pytest.approx(3.0)
    assert dp_row["dp_epsilon_se"] == pytest.approx(0.1)
    assert (dp_row["dp_delta"], dp_row["dp_noise_multiplier"]) == (1e-5, 1.1)
    assert (dp_row["dp_max_grad_norm"], dp_row["lr"]) == (1.0, DP_LR)
    assert all(plain_row[c] is None for c in DP_COLUMNS)
    assert set(plain_row) == set(dp_row) == set(MODEL_COLUMNS)
    # Noise after training is the plain model's alone.
    assert {r["model"] for r in posttrain_rows(measured)} == {plain.model}

    csv = tmp_path / MODEL_CSV
    upsert_rows(csv, [plain_row, dp_row], key=("model",), columns=MODEL_COLUMNS)
    header, rows = read_rows(csv)
    assert set(DP_COLUMNS) <= set(header)
    assert [rows[0][c] for c in DP_COLUMNS] == ["", "", "", ""]
    assert [rows[1][c] for c in DP_COLUMNS] == ["3", "1e-05", "1.1", "1"]


def test_the_report_rebuilds_the_dp_groups_command() -> None:
    base = {"dataset": "mnist5k", "epochs": "4", "max_steps": "", "seeds": "1"}
    rows = [
        {**base, "model": "mnist5k_00noise_00nopeek", "noise": "0", "nopeek": "0",
         "lr": "0.0001", "dp_epsilon": ""},
        {**base, "model": "mnist5k_00noise_00nopeek_dp3eps", "noise": "0", "nopeek": "0",
         "lr": "0.001", "dp_epsilon": "2.98"},
        {**base, "model": "mnist5k_00noise_00nopeek_dp8eps", "noise": "0", "nopeek": "0",
         "lr": "0.002", "dp_epsilon": "7.9"},
    ]  # fmt: skip

    commands = TABLES["models"].commands(rows)

    assert commands == [
        "splitnn-experiments plain performance --dataset mnist5k --epochs 4",
        "splitnn-experiments dp performance --dataset mnist5k --epochs 4",
        "splitnn-experiments dp performance --dataset mnist5k --epochs 4 --dp-lr 0.002",
    ]


# The attack tables


def _attack_record(tmp_path: Path, spec: TrainSpec, *, ssim: float = 0.3) -> AttackRecord:
    figure = tmp_path / f"{spec.name}.png"
    plt.imsave(figure, np.random.default_rng(0).random((20, 40)))
    stem = f"{spec.name}_epoch=4"
    return AttackRecord(
        family="grid",
        model=spec.model,
        classifier_seed=spec.seed,
        noise=0.0,
        nopeek=0.0,
        settings={"set_noise": None, "aux_fraction": 1.0, "decoder": "deep", "epochs": 30,
                  "seed": spec.seed},
        report=AttackReport(
            classifier=f"models/classifiers/{stem}.ckpt",
            attacker=f"models/attackers/mnist_attacker_model{stem}_deep.ckpt",
            dataset="mnist5k", deployed_noise=0.0, set_noise=0.0, aux="mnist5k",
            aux_fraction=1.0, aux_images=500, decoder="deep", protocol="noisy", images=500,
            mse=0.05, psnr=13.0, ssim=ssim, dcor=0.9, validator_accuracy=90.0,
            validator_accuracy_originals=98.0, figure=str(figure), source="log",
            log_problem=None, baselines={}, baseline_classes="head",
        ),
        wall_seconds=1.0,
        finished_at="then",
        dp_epsilon=spec.setting.dp_epsilon,
    )  # fmt: skip


def test_dp_classifiers_get_the_honest_attacker_only(tmp_path: Path) -> None:
    specs = attack_specs(_dp_specs(seeds=2), _cfg(tmp_path, clean_comparison=True))

    assert [s.family for s in specs] == ["grid"] * 6
    assert AttackSpec(_dp_specs()[1], "grid").key == (
        "mnist_attacker_modelmnist5k_00noise_00nopeek_dp3eps_deep"
    )


def test_attack_rows_carry_the_classifiers_target_epsilon(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, dp_lr=5e-3)
    plain, *_ = train_specs("plain", dataset="mnist5k", seeds=1, epochs=4)
    dp3 = _dp_specs()[1]
    records = [_attack_record(tmp_path, plain), _attack_record(tmp_path, dp3)]

    plain_run, dp_run = (attack_row(r) for r in records)
    plain_row, dp_row = attack_rows(records)

    assert (plain_run["dp_epsilon"], dp_run["dp_epsilon"]) == (None, 3.0)
    assert (plain_row["dp_epsilon"], dp_row["dp_epsilon"]) == (None, 3.0)
    assert dp_row["attack"] == "mnist_attacker_modelmnist5k_00noise_00nopeek_dp3eps_deep"
    assert set(dp_run) == set(ATTACK_RUN_COLUMNS)
    assert set(dp_row) <= set(ATTACK_COLUMNS) and "dp_epsilon" in ATTACK_COLUMNS
    assert _with_run_settings(dp_row, cfg)["lr"] == 5e-3
    assert _with_run_settings(plain_row, cfg)["lr"] == cfg.lr


def test_an_attack_record_from_before_dp_sgd_reads_as_without_it(tmp_path: Path) -> None:
    plain, *_ = train_specs("plain", dataset="mnist5k", seeds=1, epochs=4)
    data = _attack_record(tmp_path, plain).to_json()
    del data["dp_epsilon"]

    assert AttackRecord.from_json(data).dp_epsilon is None


def test_dp_attackers_have_their_own_figure_and_stay_out_of_the_others(tmp_path: Path) -> None:
    plain, *_ = train_specs("plain", dataset="mnist5k", seeds=1, epochs=4)
    plain_record = _attack_record(tmp_path, plain)
    dp_records = [_attack_record(tmp_path, s) for s in _dp_specs()]

    without = {p.name for p in write_figures([plain_record], tmp_path / "a")}
    written = {p.name for p in write_figures([plain_record, *dp_records], tmp_path / "b")}

    assert "reconstructions_dp.png" not in without
    assert "reconstructions_dp.png" in written
    for name in ("reconstructions_noise.png", "reconstructions_nopeek.png"):
        assert not any(FIGURES[name].keep(r) for r in dp_records)
    dp_figure = FIGURES["reconstructions_dp.png"]
    ordered = sorted([plain_record, *dp_records], key=dp_figure.order)
    assert [dp_figure.label(r) for r in ordered] == [
        "DP-SGD ε=1",
        "DP-SGD ε=3",
        "DP-SGD ε=8",
        "no DP-SGD",
    ]


# The threats table's DP-SGD defence


def _threat_spec(threat: str = "colluding", seed: int = 0) -> ThreatSpec:
    return ThreatSpec("mnist5k", ThreatSetting(threat, Defence(dp_epsilon=3.0)), seed, 3)


def test_the_dp_defence_is_named_by_its_tag_and_labelled_for_people() -> None:
    dp = Defence(dp_epsilon=3.0)

    assert (dp.name, dp.parameter, dp.tag, dp.label) == ("dp", 3.0, "dp3eps", "DP-SGD ε=3")
    assert dp.dp == DPSettings(epsilon=3.0, delta=1e-5) and dp.batch_size == 128
    assert Defence(dp_epsilon=3.0) in threat_defences()
    assert [d.tag for d in threat_defences()][-1] == "dp3eps"
    assert _threat_spec("fsha", seed=1).name == "mnist5k_threats_fsha_dp3eps_seed1"


@pytest.mark.parametrize("threat", ["colluding", "fsha", "passive"])
def test_splitnn_sim_takes_the_dp_rows_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threat: str
) -> None:
    seen: list[SimConfig] = []

    def fake_run(cfg: SimConfig) -> None:
        seen.append(cfg)
        raise _Parsed(ClientConfig())

    monkeypatch.setattr(sim_cli, "run", fake_run)
    args = THREATS.sim_args(_threat_spec(threat), _cfg(tmp_path))

    result = CliRunner().invoke(sim_cli.main, args)

    assert isinstance(result.exception, _Parsed), result.output
    (sim,) = seen
    assert sim.dp == Defence(dp_epsilon=3.0).dp
    assert (sim.threat, sim.noise, sim.nopeek, sim.batch_size) == (threat, 0.0, 0.0, 128)


def test_only_the_dp_row_records_dp_settings(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    dp_settings = THREATS.settings(_threat_spec(), cfg)
    plain = ThreatSpec("mnist5k", ThreatSetting("colluding", Defence()), 0, 3)

    assert (dp_settings["defence"], dp_settings["dp_epsilon"]) == ("dp", 3.0)
    assert dp_settings["dp_delta"] == 1e-5
    assert "dp_epsilon" not in THREATS.settings(plain, cfg)


def _sim_summary(**changes: Any) -> dict[str, Any]:
    """What `splitnn-sim --threat colluding --dp-epsilon 3 --json` prints (its contract)."""
    return {
        "dataset": "mnist5k", "threat": "colluding", "noise": 0.0, "nopeek": 0.0, "epochs": 3,
        "test_accuracy": 85.0, "attack_mse": 0.06, "attack_psnr": 12.0, "attack_ssim": 0.3,
        "attack_validator_accuracy": 60.0, "guard_detected_at_step": None, "figure": "f.png",
        "seconds": 60.0, "dp_epsilon": 2.95, "dp_delta": 1e-5, "dp_noise_multiplier": 1.2,
        "dp_max_grad_norm": 1.0, **changes,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("defence", "reported"),
    [(Defence(dp_epsilon=3.0), {"dp_delta": None}), (Defence(), {})],
    ids=["dp-row-without-dp", "plain-row-with-dp"],
)
def test_a_report_that_disagrees_on_dp_sgd_is_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, defence: Defence, reported: dict[str, Any]
) -> None:
    monkeypatch.setattr(runner, "run_json", lambda *_, **__: _sim_summary(**reported))
    spec = ThreatSpec("mnist5k", ThreatSetting("colluding", defence), 0, 3)

    with pytest.raises(ProcessError, match="DP-SGD"):
        THREATS.simulate(spec, _cfg(tmp_path))


def test_the_dp_row_carries_the_epsilon_spent(tmp_path: Path) -> None:
    setting = _threat_spec().setting
    runs = [
        (
            _threat_spec(seed=seed),
            ThreatRecord(
                settings={"batch_size": 128, "attack_epochs": 2, "decoder": "deep"},
                report=ThreatSummary.from_json(_sim_summary(dp_epsilon=spent)),
                wall_seconds=1.0,
                finished_at="then",
            ),
        )
        for seed, spent in enumerate((2.9, 3.0))
    ]

    row = threat_row(setting, runs, test_images=500)

    assert (row["defence"], row["parameter"]) == ("dp", 3.0)
    assert row["dp_epsilon"] == pytest.approx(2.95)
    assert row["dp_epsilon_se"] == pytest.approx(0.05)
    assert (row["dp_delta"], row["dp_noise_multiplier"], row["dp_max_grad_norm"]) == (
        1e-5,
        1.2,
        1.0,
    )
    assert set(row) == set(THREATS_COLUMNS)
    assert summary_line(setting, row).startswith(
        "colluding, DP-SGD ε=3: test accuracy 85.0%, attack SSIM 0.300, PSNR 12.0 dB, "
        "validator 60.0%, DP-SGD ε spent 2.95"
    )
