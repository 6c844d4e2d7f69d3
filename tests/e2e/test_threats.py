"""The ``threats`` group's colluding row through the real `splitnn-sim` (three processes), a few
steps long: its record, its table row and the figure cut from the run's own PNG."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from matplotlib.image import imread

from splitnn.attacker.validator import build_validator, validator_path
from splitnn.common.checkpoints import save_checkpoint
from splitnn.common.processes import child_env, program
from splitnn.common.seeds import SEEDING
from splitnn.experiments.config import ExperimentConfig
from splitnn.experiments.grid import Defence, ThreatSetting, ThreatSpec
from splitnn.experiments.plots import grid_rows
from splitnn.experiments.tables import read_rows
from splitnn.experiments.threat_report import THREATS_CSV, THREATS_FIGURE, write_threat_tables
from splitnn.experiments.threat_runs import THREATS

pytestmark = pytest.mark.slow


def _sim_has_threats() -> bool:
    shown = subprocess.run(
        [program("splitnn-sim"), "--help"], capture_output=True, text=True, env=child_env()
    )
    return "--threat" in shown.stdout


def test_the_colluding_row_through_the_real_simulation(tmp_path: Path) -> None:
    if not _sim_has_threats():
        pytest.skip("this splitnn-sim has no --threat")
    cfg = ExperimentConfig(
        groups=("threats",),
        dataset="mnist5k",
        epochs=1,
        max_steps=3,
        attack_epochs=1,
        model_dir=tmp_path / "models",
        runs_dir=tmp_path / "runs",
        results_dir=tmp_path / "results",
        progress=False,
        data_fingerprint="e2e",
    )
    spec = ThreatSpec("mnist5k", ThreatSetting("colluding", Defence()), 0, 1, max_steps=3)
    # A stand-in validator where the grid keeps it: this test checks the row's plumbing, not how
    # well reconstructions classify (training one would take half of the test's time).
    save_checkpoint(
        validator_path(cfg.model_dir, "mnist5k", 0),
        build_validator(0, 10).state_dict(),
        {"part": "validator", "seeding": SEEDING},
    )

    record = THREATS.simulate(spec, cfg)
    lines = write_threat_tables(cfg, test_images=500)

    assert THREATS.record(cfg, spec) == record
    assert record.report.threat == "colluding"
    assert record.report.guard_detected_at_step is None
    assert 0.0 <= record.report.attack_ssim <= 1.0
    _, rows = read_rows(cfg.results_dir / THREATS_CSV)
    assert [(r["threat"], r["defence"], r["seeds"]) for r in rows] == [("colluding", "none", "1")]
    assert float(rows[0]["attack_mse"]) == pytest.approx(record.report.attack_mse, rel=1e-5)
    assert lines[-1] == str(cfg.figures_dir / THREATS_FIGURE)
    assert len(grid_rows(imread(cfg.figures_dir / THREATS_FIGURE))) == 2
