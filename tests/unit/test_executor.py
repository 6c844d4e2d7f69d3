"""`splitnn-experiments --executor`: the Slurm options' checks, the sbatch settings they make,
and how an ended Slurm job becomes a run's outcome (fake jobs: no cluster, no training)."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from splitnn.common import exits
from splitnn.experiments import executors
from splitnn.experiments.cli import main
from splitnn.experiments.config import ExperimentConfig, SlurmOptions
from splitnn.experiments.executors import job_outcome, parse_extra, wait_for
from splitnn.experiments.runner import run_jobs

ROOT = Path(__file__).resolve().parents[2]


class _Built(Exception):
    """Raised by the fake `run` once the CLI has built its settings."""


def _settings(args: list[str], monkeypatch: pytest.MonkeyPatch) -> ExperimentConfig:
    seen: list[ExperimentConfig] = []

    def fake_run(cfg: ExperimentConfig) -> None:
        seen.append(cfg)
        raise _Built

    monkeypatch.setattr("splitnn.experiments.cli.run", fake_run)
    result = CliRunner().invoke(main, args)
    assert isinstance(result.exception, _Built), result.output
    return seen[0]


def _usage_error(args: list[str]) -> str:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == exits.USAGE, result.output
    assert "Traceback" not in result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    return line


@pytest.fixture
def with_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a cluster's submit host: Slurm's commands are found."""
    monkeypatch.setattr("splitnn.experiments.cli.missing_commands", list)


@pytest.mark.parametrize(
    "flag",
    [
        ["--slurm-partition", "gpu"],
        ["--slurm-time", "30"],
        ["--slurm-cpus-per-run", "2"],
        ["--slurm-mem-gb", "8"],
        ["--slurm-array-parallelism", "4"],
        ["--slurm-extra", "account=proj"],
    ],
)
def test_a_slurm_option_without_the_slurm_executor_is_a_usage_error(flag: list[str]) -> None:
    for executor in ([], ["--executor", "local"]):
        line = _usage_error(["plain", *executor, *flag])

        assert line == f"Error: {flag[0]}: only with --executor slurm"


def test_the_slurm_executor_without_sbatch_on_path_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))

    line = _usage_error(["plain", "--executor", "slurm"])

    assert "sbatch and srun not found on PATH" in line


@pytest.mark.usefixtures("with_slurm")
@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--slurm-time", "2"], "--slurm-time 2: at least 3 minutes"),
        (["--slurm-time", "-5"], "--slurm-time -5: at least 3 minutes"),
        (["--slurm-extra", "exclusive"], "--slurm-extra takes KEY=VALUE"),
        (["--slurm-extra", "=x"], "--slurm-extra takes KEY=VALUE"),
        (["--jobs", "4"], "--jobs goes with --executor local"),
        (["--slurm-cpus-per-run", "0"], "0 is not in the range"),
        (["--slurm-mem-gb", "0"], "0.0 is not in the range"),
    ],
)
def test_bad_slurm_options_are_usage_errors(args: list[str], problem: str) -> None:
    line = _usage_error(["plain", "--executor", "slurm", *args])

    assert problem in line


@pytest.mark.usefixtures("with_slurm")
def test_the_slurm_options_reach_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["plain", "--executor", "slurm", "--slurm-partition", "gpu", "--slurm-time", "3"]
    args += ["--slurm-cpus-per-run", "6", "--slurm-mem-gb", "1.5"]
    args += ["--slurm-array-parallelism", "8", "--slurm-extra", "account=proj"]
    args += ["--slurm-extra", "--qos=a=b"]

    cfg = _settings(args, monkeypatch)

    assert cfg.executor == "slurm"
    assert cfg.slurm == SlurmOptions(
        partition="gpu",
        minutes=3,
        cpus_per_run=6,
        mem_gb=1.5,
        array_parallelism=8,
        extra=(("account", "proj"), ("qos", "a=b")),
    )
    assert cfg.jobs == 8  # runs at once: the array's
    assert cfg.threads_per_job() == 6  # the job's CPUs, whatever the node has


@pytest.mark.usefixtures("with_slurm")
def test_the_slurm_executor_has_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _settings(["plain", "--executor", "slurm"], monkeypatch)

    assert cfg.slurm == SlurmOptions()
    assert cfg.jobs == SlurmOptions().array_parallelism


def test_the_local_executor_is_the_default_and_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _settings(["plain", "--jobs", "2"], monkeypatch)

    assert (cfg.executor, cfg.jobs, cfg.slurm) == ("local", 2, SlurmOptions())
    assert cfg.threads_per_job() == max(1, (os.cpu_count() or 1) // 2)


def test_parse_extra_keeps_everything_after_the_first_equals_sign() -> None:
    assert parse_extra(["account=p", "--constraint=a|b", "comment="]) == (
        ("account", "p"),
        ("constraint", "a|b"),
        ("comment", ""),
    )


def test_local_runs_do_not_import_submitit() -> None:
    code = (
        "import sys\n"
        "from splitnn.experiments.config import ExperimentConfig\n"
        "from splitnn.experiments.runner import run_jobs\n"
        "cfg = ExperimentConfig(groups=('plain',), progress=False, jobs=2)\n"
        "out = run_jobs([1, 2], work=lambda i: i * 10, done=lambda i: None, label=str,"
        " cfg=cfg, desc='t')\n"
        "assert [o.record for o in out] == [10, 20], out\n"
        "assert 'submitit' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def test_the_sbatch_script_asks_for_the_options_with_this_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    srun = tmp_path / "bin" / "srun"
    srun.parent.mkdir()
    srun.write_text("#!/bin/sh\n")
    srun.chmod(srun.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{srun.parent}{os.pathsep}{os.environ['PATH']}")
    slurm = SlurmOptions(
        partition="gpu",
        minutes=7,
        cpus_per_run=3,
        mem_gb=2,
        array_parallelism=5,
        extra=(("account", "proj"),),
    )
    cfg = ExperimentConfig(
        groups=("plain",), results_dir=tmp_path / "results", executor="slurm", slurm=slurm
    )

    executor = executors.slurm_executor(cfg, name="splitnn-plain")
    executor.parameters["map_count"] = 12  # as for an array of 12 runs
    script = executor._make_submission_file_text("COMMAND", "uid")

    assert str(executor.folder) == str(tmp_path.resolve() / "results" / "slurm" / "%j")
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --time=7",
        "#SBATCH --cpus-per-task=3",
        "#SBATCH --mem=2048M",
        "#SBATCH --array=0-11%5",
        "#SBATCH --account=proj",
        "#SBATCH --job-name=splitnn-plain",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=1",
    ):
        assert line in script.splitlines()
    assert executor.python == shlex.quote(sys.executable)


def test_a_task_runs_in_the_submitting_folder(tmp_path: Path) -> None:
    here = Path.cwd()
    task: executors.InFolder[None, Path] = executors.InFolder(lambda _: Path.cwd(), str(tmp_path))
    try:
        assert task(None) == tmp_path
    finally:
        os.chdir(here)


@dataclass
class FakePaths:
    result_pickle: Path
    stderr: Path


@dataclass
class FakeJob:
    """A job as submitit shows it: its files, its Slurm state, its result or exception."""

    job_id: str
    paths: FakePaths
    state: str = "COMPLETED"
    error: Exception | None = None
    sacct_done: bool = False
    calls: list[str] = field(default_factory=list)

    def get_info(self, mode: str = "force") -> dict[str, str]:
        return {"State": self.state} if self.state else {}

    def done(self, force_check: bool = False) -> bool:
        return self.paths.result_pickle.exists() or self.sacct_done

    def result(self) -> str:
        if self.error is not None:
            raise self.error
        return "returned"


def _job(tmp_path: Path, job_id: str, *, result: bool, log: str = "", **kw: Any) -> FakeJob:
    folder = tmp_path / job_id
    folder.mkdir()
    paths = FakePaths(folder / "result.pkl", folder / "log.err")
    if result:
        paths.result_pickle.write_bytes(b"")
    if log:
        paths.stderr.write_text(log)
    return FakeJob(job_id, paths, **kw)


def test_a_job_that_wrote_its_record_ran(tmp_path: Path) -> None:
    job = _job(tmp_path, "7_0", result=True)

    assert job_outcome(job, lambda: "record read back") == ("record read back", None)


def test_a_job_that_raised_fails_with_its_id_and_log(tmp_path: Path) -> None:
    log = "starting\nTraceback (most recent call last):\nProcessError: splitnn-client exited 1\n"
    job = _job(tmp_path, "7_1", result=True, log=log, error=RuntimeError("no trace\nmore"))

    for state, said in (
        ("FAILED", ""),
        ("", ""),
        ("CANCELLED by 0", " (Slurm state CANCELLED by 0)"),
    ):
        job.state = state
        record, error = job_outcome(job, lambda: "stale record")

        assert record is None and error is not None
        first, *rest = error.splitlines()
        assert first == (
            f"Slurm job 7_1 failed{said}: RuntimeError: no trace; {job.paths.stderr} ends:"
        )
        assert rest[-1] == "ProcessError: splitnn-client exited 1"


def test_what_a_job_raised_is_named_from_its_traceback() -> None:
    trace = (
        "Job (task=0) failed during processing with trace:\n----\n"
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n'
        "    raise OSError(2)\n"
        "OSError: 2\n\n"
        "During handling of the above exception, another exception occurred:\n\n"
        "Traceback (most recent call last):\n"
        '  File "x.py", line 3, in f\n'
        "    raise ProcessError(msg)\n"
        "splitnn.common.processes.ProcessError: splitnn-client exited with status 1; log ends:\n"
        "Killed\n----\nYou can check full logs"
    )

    assert executors.raised(RuntimeError(trace)) == (
        "splitnn.common.processes.ProcessError: splitnn-client exited with status 1; log ends:"
    )
    assert executors.raised(ValueError("")) == "ValueError"


@pytest.mark.parametrize("state", ["TIMEOUT", "CANCELLED by 0", "OUT_OF_MEMORY", "FAILED"])
def test_a_job_killed_before_its_result_fails_with_its_state(tmp_path: Path, state: str) -> None:
    log = "slurmstepd: *** JOB 8 CANCELLED ***"
    job = _job(tmp_path, "8_3", result=False, log=log, state=state)

    record, error = job_outcome(job, lambda: "a record from an earlier call")

    assert record is None
    assert error == (
        f"Slurm job 8_3 ended without a result (Slurm state {state}); {job.paths.stderr} ends:\n"
        f"{log}"
    )


@pytest.mark.parametrize("state", ["", "UNKNOWN", "RUNNING", "PENDING"])
def test_a_job_gone_without_a_final_state_in_sacct_fails_too(tmp_path: Path, state: str) -> None:
    """No accounting, or accounting that has not seen the end yet: squeue saw the job go."""
    job = _job(tmp_path, "8_4", result=False, state=state)

    record, error = job_outcome(job, lambda: None)

    assert record is None
    assert error == (
        f"Slurm job 8_4 left the queue without a result (killed?); no log in {job.paths.stderr}"
    )


def test_a_job_that_left_no_record_fails(tmp_path: Path) -> None:
    job = _job(tmp_path, "9", result=True)
    job.paths.stderr.write_text("")

    record, error = job_outcome(job, lambda: None)

    assert record is None
    assert error == "Slurm job 9 finished but its record is missing or not of this run; " + (
        f"{job.paths.stderr} is empty"
    )


def test_jobs_end_by_their_result_by_sacct_or_by_leaving_the_queue(tmp_path: Path) -> None:
    """Without accounting, a job killed before writing its result is noticed by squeue."""
    finished = _job(tmp_path, "1_0", result=True)
    failed_in_sacct = _job(tmp_path, "1_1", result=False, sacct_done=True)
    killed = _job(tmp_path, "1_2", result=False)  # sacct knows nothing: state UNKNOWN
    running = _job(tmp_path, "1_3", result=False)
    queues = iter([{"1_2", "1_3"}, {"1_3"}, {"1_3"}, set()])

    def writes_its_result_once_gone() -> set[str]:
        queue = next(queues)
        if not queue:
            running.paths.result_pickle.write_bytes(b"")
        return queue

    jobs = [finished, failed_in_sacct, killed, running]
    ended = list(wait_for(jobs, active=writes_its_result_once_gone, poll_s=0, grace_s=0))

    assert ended == [0, 1, 2, 3]


def test_a_job_gone_from_the_queue_has_a_grace_for_its_result(tmp_path: Path) -> None:
    slow_filesystem = _job(tmp_path, "2_0", result=False)
    looks = 0

    def gone() -> set[str]:
        nonlocal looks
        looks += 1
        if looks == 3:  # the result shows on the third look
            slow_filesystem.paths.result_pickle.write_bytes(b"")
        return set()

    assert list(wait_for([slow_filesystem], active=gone, poll_s=0, grace_s=60)) == [0]
    assert looks == 3


def test_without_squeue_only_results_and_sacct_end_jobs(tmp_path: Path) -> None:
    job = _job(tmp_path, "3_0", result=False)
    looks = 0

    def no_answer() -> None:
        nonlocal looks
        looks += 1
        if looks == 4:
            job.sacct_done = True

    assert list(wait_for([job], active=no_answer, poll_s=0, grace_s=0)) == [0]
    assert looks == 4


def test_slurm_runs_skip_what_is_done_and_report_failed_jobs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    submitted: list[list[str]] = []

    def fake_run_on_slurm(
        items: Sequence[str], *, work: Callable[[str], Any], **_: Any
    ) -> Iterator[tuple[int, str | None, str | None]]:
        submitted.append(list(items))
        yield 1, None, "Slurm job 5_1 ended without a result (Slurm state TIMEOUT)"
        yield 0, "new record", None

    monkeypatch.setattr(executors, "run_on_slurm", fake_run_on_slurm)
    cfg = ExperimentConfig(groups=("plain",), progress=False, executor="slurm")

    outcomes = run_jobs(
        ["done", "todo", "killed"],
        work=str.upper,
        done=lambda item: "old record" if item == "done" else None,
        label=str,
        cfg=cfg,
        desc="test",
    )

    assert submitted == [["todo", "killed"]]
    assert [(o.status, o.record, o.error) for o in outcomes] == [
        ("skipped", "old record", None),
        ("ran", "new record", None),
        ("failed", None, "Slurm job 5_1 ended without a result (Slurm state TIMEOUT)"),
    ]


def test_an_interrupted_wait_cancels_the_jobs_not_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = [_job(tmp_path, f"4_{k}", result=k == 0) for k in range(3)]
    cancelled: list[list[str]] = []

    def interrupted_after_one(_: Sequence[Any]) -> Iterator[int]:
        yield 0
        raise KeyboardInterrupt

    monkeypatch.setattr(executors, "slurm_executor", lambda cfg, name: None)
    monkeypatch.setattr(executors, "submit", lambda executor, work, items: jobs)
    monkeypatch.setattr(executors, "wait_for", interrupted_after_one)
    monkeypatch.setattr(executors, "cancel", lambda ids: cancelled.append(list(ids)))
    cfg = ExperimentConfig(groups=("plain",), executor="slurm", results_dir=tmp_path)
    ended = executors.run_on_slurm(
        ["a", "b", "c"], work=str.upper, done=lambda item: item, cfg=cfg, desc="t"
    )

    assert next(ended) == (0, "a", None)
    with pytest.raises(KeyboardInterrupt):
        next(ended)
    assert cancelled == [["4_1", "4_2"]]
