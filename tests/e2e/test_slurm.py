"""`splitnn-experiments --executor slurm` on a real Slurm cluster (`make slurm-test`).

A small grid (the plain setting with two seeds, one epoch of two steps) goes through Slurm, every
job must end COMPLETED in ``sacct``, and the same grid run locally must give the same tables.
Then jobs that raise, die without a result or leave no record must come back as failed runs,
with accounting and without it.

The jobs write to a folder the nodes must see at the same path: pytest's temporary folder, or
``SPLITNN_SLURM_TEST_DIR`` when the nodes do not share it. ``SPLITNN_SLURM_TEST_PARTITION``
names a partition other than the cluster's default.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from splitnn.common.processes import ProcessError
from splitnn.experiments import executors
from splitnn.experiments.config import ExperimentConfig, SlurmOptions
from tests.conftest import run_program

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("sbatch") is None,
        reason="sbatch is not on PATH: these tests submit jobs to a Slurm cluster",
    ),
]

RUN_S = 600.0
SACCT_WAIT_S = 60.0  # the accounting database learns a job's end a little after it
SMOKE = ["plain", "performance", "--dataset", "mnist5k", "--epochs", "1", "--max-steps", "2"]
SEEDS = ["--seeds", "2"]
CPUS = 1  # each Slurm job's torch threads; the local run is given as many (see _local_jobs)
TIMING = {"train_seconds", "train_seconds_se"}  # wall times: the only numbers that may differ
TABLES = ("model_performances.csv", "posttrain_noise.csv")
PARTITION = os.environ.get("SPLITNN_SLURM_TEST_PARTITION")


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    """A fresh folder that the cluster's nodes see at the same path."""
    base = os.environ.get("SPLITNN_SLURM_TEST_DIR")
    if not base:
        return tmp_path
    Path(base).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="slurm-test-", dir=base))


def _folders(root: Path, data: Path) -> list[str]:
    return [
        *("--model-dir", str(root / "models"), "--runs-dir", str(root / "runs")),
        *("--results-dir", str(root / "results"), "--data-dir", str(data)),
    ]


def _slurm_flags() -> list[str]:
    flags = ["--executor", "slurm", "--slurm-time", "10", "--slurm-cpus-per-run", str(CPUS)]
    return flags + (["--slurm-partition", PARTITION] if PARTITION else [])


def _local_jobs() -> int:
    """--jobs for the local run such that each run has CPUS torch threads, as on Slurm (a thread
    count may round a sum apart)."""
    return max(1, min(64, (os.cpu_count() or 1) // CPUS))


def _rows(results: Path, name: str) -> list[dict[str, str]]:
    with (results / name).open() as handle:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(handle)]


def _job_ids(results: Path) -> list[str]:
    """The Slurm job of every run: submitit's folder per job, RESULTS_DIR/slurm/<job id>/."""
    folders = (results / "slurm").iterdir()
    return sorted(p.name for p in folders if list(p.glob("*_log.err")))


def _sacct_states(job_ids: list[str]) -> dict[str, str]:
    """sacct's state of each job, waiting while the accounting has not seen them all end."""
    arrays = sorted({job.split("_")[0] for job in job_ids})
    command = ["sacct", "--noheader", "--parsable2", "--allocations", "--format=JobID,State"]
    deadline = time.monotonic() + SACCT_WAIT_S
    while True:
        out = subprocess.run(
            [*command, *(f"--jobs={a}" for a in arrays)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        states = dict(line.split("|", 1) for line in out.splitlines() if "|" in line)
        found = {job: states.get(job, "MISSING") for job in job_ids}
        if set(found.values()) == {"COMPLETED"} or time.monotonic() > deadline:
            return found
        time.sleep(2)


def test_a_grid_through_slurm_completes_and_matches_the_local_run(shared: Path) -> None:
    data = shared / "data"
    on_slurm = run_program(
        "splitnn-experiments",
        *SMOKE,
        *SEEDS,
        *_slurm_flags(),
        *_folders(shared / "slurm", data),
        cwd=shared,
        timeout=RUN_S,
    )

    assert on_slurm.returncode == 0, on_slurm.stderr[-3000:]
    assert "2 ran, 0 skipped (done before), 0 failed" in on_slurm.stdout
    results = shared / "slurm" / "results"
    jobs = _job_ids(results)
    assert len(jobs) == 2, jobs
    states = _sacct_states(jobs)
    print("sacct:", states)
    assert set(states.values()) == {"COMPLETED"}, states

    again = run_program(
        "splitnn-experiments",
        *SMOKE,
        *SEEDS,
        *_slurm_flags(),
        *_folders(shared / "slurm", data),
        cwd=shared,
        timeout=RUN_S,
    )

    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 ran, 2 skipped" in again.stdout
    assert _job_ids(results) == jobs  # nothing was submitted again

    local = run_program(
        "splitnn-experiments",
        *SMOKE,
        *SEEDS,
        "--jobs",
        str(_local_jobs()),
        *_folders(shared / "local", data),
        cwd=shared,
        timeout=RUN_S,
    )

    assert local.returncode == 0, local.stderr[-3000:]
    assert "2 ran, 0 skipped" in local.stdout
    for table in TABLES:
        slurm_rows = _rows(results, table)
        assert slurm_rows, table
        assert slurm_rows == _rows(shared / "local" / "results", table), table
    (model,) = _rows(results, TABLES[0])
    assert model["seeds"] == "2"


@pytest.mark.parametrize("accounting", [True, False], ids=["sacct", "no-sacct"])
def test_failed_and_killed_jobs_are_failed_runs(
    shared: Path, accounting: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without accounting, a job killed before its result is noticed by leaving the queue."""
    monkeypatch.setattr(executors, "POLL_S", 1.0)
    monkeypatch.setattr(executors, "RESULT_GRACE_S", 3.0)
    if not accounting:
        from submitit.slurm.slurm import SlurmInfoWatcher

        monkeypatch.setattr(SlurmInfoWatcher, "_make_command", lambda self: ["false"])
    records = shared / "records"
    records.mkdir()

    def work(item: str) -> str:
        if item == "raises":
            raise ProcessError("splitnn-client exited with status 1")
        if item == "killed":
            os.kill(os.getpid(), signal.SIGKILL)
        if item != "no-record":
            (records / item).write_text(item)
        return item

    def done(item: str) -> str | None:
        path = records / item
        return path.read_text() if path.is_file() else None

    cfg = ExperimentConfig(
        groups=("plain",),
        results_dir=shared / "results",
        executor="slurm",
        slurm=SlurmOptions(partition=PARTITION, minutes=5, cpus_per_run=1),
    )
    items = ["fine", "raises", "killed", "no-record"]

    ended = {
        items[i]: (record, error)
        for i, record, error in executors.run_on_slurm(
            items, work=work, done=done, cfg=cfg, desc="test"
        )
    }

    assert ended["fine"] == ("fine", None)
    job = r"Slurm job \d+_\d"
    for item, pattern in (
        ("raises", rf"{job} failed: \S*ProcessError: splitnn-client exited with status 1; "),
        ("killed", rf"{job} (ended without a result \(Slurm state \w+\)|left the queue)"),
        ("no-record", rf"{job} finished but its record is missing"),
    ):
        record, error = ended[item]
        assert record is None and error is not None
        assert re.match(pattern, error), error
        assert "_log.err ends:\n" in error or "_log.err is empty" in error
    if not accounting:  # only squeue can have seen it go
        assert "left the queue without a result" in str(ended["killed"][1])
