"""Running a group's runs as jobs of a Slurm cluster, through submitit (``--executor slurm``).

Every run that is not done yet (one training: a server and a data holder over loopback; one
attack; one simulation) becomes one task of a Slurm job array, on one node with
`SlurmOptions.cpus_per_run` CPUs. A task calls the same function a local run calls, with the
submitting process's Python and in its working directory, so it writes its record to the shared
runs folder exactly as a local run does. The submitting process waits for the tasks and reads
their records back.

A task that raised, was cancelled, ran out of time or memory, or ended without its record is a
failed run, named by its Slurm job id, with the end of its stderr log. Without job accounting
(``sacct``) submitit never learns that a task was killed before it wrote its result, so a task
that has left the queue (``squeue``) without a result also counts as ended, `RESULT_GRACE_S`
later. submitit's files and the tasks' logs are in ``RESULTS_DIR/slurm/<job id>/``.

submitit is imported only here, and only when jobs are submitted: ``--executor local`` needs none.
"""

from __future__ import annotations

import getpass
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from splitnn.common import exits
from splitnn.common.processes import log_tail
from splitnn.experiments.config import ExperimentConfig, SlurmOptions

if TYPE_CHECKING:
    import submitit

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)

LOG_FOLDER = "slurm"
POLL_S = 10.0
"""Seconds between two looks at the jobs (result files, and one ``squeue`` call)."""
RESULT_GRACE_S = 30.0
"""How long a task that has ended may take to show its result file (a network filesystem's
cache) before it counts as ended without one."""
REQUIRED_COMMANDS = ("sbatch", "srun")
# States in which a job may still write its result (squeue --states).
_ACTIVE_STATES = "PENDING,CONFIGURING,RUNNING,COMPLETING,SUSPENDED,REQUEUED,RESIZING,SIGNALING"
# sacct's states that are not a job's end (or no answer): submitit's list.
_NOT_FINAL = {"READY", "PENDING", "RUNNING", "UNKNOWN", "REQUEUED", "COMPLETING", "PREEMPTED"}


class JobPaths(Protocol):
    """The files of a job that are read here (`submitit.core.utils.JobPaths`)."""

    @property
    def result_pickle(self) -> Path: ...

    @property
    def stderr(self) -> Path: ...


class Job(Protocol[R_co]):
    """What is used here of a submitted job (`submitit.Job`)."""

    @property
    def job_id(self) -> str: ...

    @property
    def paths(self) -> JobPaths: ...

    def get_info(self, mode: str = "force") -> dict[str, str]: ...

    def done(self, force_check: bool = False) -> bool: ...

    def result(self) -> R_co: ...


def log_folder(results_dir: Path) -> Path:
    """submitit's folder: one folder per job (``%j``: an array task's is ``<array>_<task>``)."""
    return results_dir.resolve() / LOG_FOLDER / "%j"


def missing_commands() -> list[str]:
    """The Slurm commands submitting needs that are not on PATH."""
    return [name for name in REQUIRED_COMMANDS if shutil.which(name) is None]


def parse_extra(pairs: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """``--slurm-extra KEY=VALUE`` flags as (key, value) pairs; a leading ``--`` is dropped.

    Raises:
        ValueError: a flag without ``=`` or without a key.
    """
    parsed = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise ValueError(f"--slurm-extra takes KEY=VALUE (an sbatch option), not {pair!r}")
        parsed.append((key, value))
    return tuple(parsed)


@dataclass(frozen=True)
class InFolder(Generic[T, R]):
    """What a task runs: `work(item)` in `folder`, the submitting process's working directory,
    so that relative paths name the same files."""

    work: Callable[[T], R]
    folder: str

    def __call__(self, item: T) -> R:
        os.chdir(self.folder)
        return self.work(item)


def slurm_executor(cfg: ExperimentConfig, *, name: str) -> submitit.SlurmExecutor:
    """A submitit executor for `cfg.slurm`'s resources, with this process's Python."""
    import submitit

    options: SlurmOptions = cfg.slurm
    executor = submitit.SlurmExecutor(
        folder=log_folder(cfg.results_dir), python=shlex.quote(sys.executable)
    )
    parameters: dict[str, Any] = {
        "job_name": name,
        "time": options.minutes,
        "nodes": 1,
        "ntasks_per_node": 1,
        "cpus_per_task": options.cpus_per_run,
        "array_parallelism": options.array_parallelism,
    }
    if options.partition is not None:
        parameters["partition"] = options.partition
    if options.mem_gb is not None:
        parameters["mem"] = f"{max(1, round(options.mem_gb * 1024))}M"
    if options.extra:
        parameters["additional_parameters"] = dict(options.extra)
    executor.update_parameters(**parameters)
    return executor


def submit(
    executor: submitit.SlurmExecutor, work: Callable[[T], R], items: Sequence[T]
) -> list[submitit.Job[R]]:
    """Submits one task per item as one job array.

    Raises:
        exits.Failed: sbatch refused it (its message says why).
    """
    import submitit.core.utils as submitit_utils

    try:
        return executor.map_array(InFolder(work, str(Path.cwd())), list(items))
    except (submitit_utils.UncompletedJobError, submitit_utils.FailedSubmissionError) as error:
        raise exits.Failed(f"sbatch refused the jobs: {str(error).strip()}") from None


def active_job_ids() -> set[str] | None:
    """The ids of this user's jobs that can still run (array tasks one by one, ``123_4``);
    None when ``squeue`` does not answer."""
    command = ["squeue", "--noheader", "--array", "--format=%i", f"--states={_ACTIVE_STATES}"]
    command.append(f"--user={getpass.getuser()}")
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as error:
        logger.debug("squeue: %s", error)
        return None
    return {line.strip() for line in out.stdout.splitlines() if line.strip()}


def wait_for(
    jobs: Sequence[Job[Any]],
    *,
    active: Callable[[], set[str] | None] = active_job_ids,
    poll_s: float | None = None,
    grace_s: float | None = None,
) -> Iterator[int]:
    """Yields the index of every job once it has ended, as they end.

    A job has ended when its result file is there, or when it has left the queue (submitit's
    state from sacct, or `active`) and no result came within `grace_s`.
    """
    poll = POLL_S if poll_s is None else poll_s
    grace = RESULT_GRACE_S if grace_s is None else grace_s
    pending = set(range(len(jobs)))
    gone_since: dict[int, float] = {}
    while pending:
        queued = active()
        now = time.monotonic()
        for i in sorted(pending):
            job = jobs[i]
            if job.paths.result_pickle.exists():
                ended = True
            elif job.done() or (queued is not None and job.job_id not in queued):
                ended = now - gone_since.setdefault(i, now) >= grace
            else:
                ended = False
            if ended:
                pending.discard(i)
                yield i
        if pending:
            time.sleep(poll)


def job_failure(job: Job[Any], what: str) -> str:
    """A failed task's message: its job id, what became of it, the end of its stderr log."""
    stderr = job.paths.stderr
    tail = log_tail(stderr)
    if tail:
        ending = f"; {stderr} ends:\n{tail}"
    else:
        ending = f"; {stderr} is empty" if stderr.is_file() else f"; no log in {stderr}"
    return f"Slurm job {job.job_id} {what}{ending}"


def final_state(job: Job[Any]) -> str | None:
    """The job's end as sacct tells it now (e.g. ``TIMEOUT``); None without one (no accounting,
    or it has not recorded the end yet)."""
    state = job.get_info(mode="force").get("State") or "UNKNOWN"
    return None if state.split()[0].upper() in _NOT_FINAL else state


def raised(error: Exception) -> str:
    """The line that names what a task raised, e.g. ``...ProcessError: splitnn-client exited``:
    from the traceback that submitit's error carries (the last exception's), else the error's
    own first line."""
    lines = str(error).splitlines()
    starts = [k for k, line in enumerate(lines) if line.startswith("Traceback (most recent call")]
    if starts:
        for line in lines[starts[-1] + 1 :]:
            if line.strip() and not line.startswith(" "):
                return line.strip()
    first = next((line.strip() for line in lines if line.strip()), "")
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def job_outcome(job: Job[R], record: Callable[[], R | None]) -> tuple[R | None, str | None]:
    """The record an ended task left, read back by `record`, or why the task failed.

    A task's exception of any kind is a failed run: the message points to its log, which has
    the traceback.
    """
    if not job.paths.result_pickle.exists():
        state = final_state(job)
        if state is None:  # squeue saw it go
            return None, job_failure(job, "left the queue without a result (killed?)")
        return None, job_failure(job, f"ended without a result (Slurm state {state})")
    try:
        job.result()
    except Exception as error:
        state = final_state(job)  # e.g. CANCELLED: the run raised as it was being stopped
        said = "" if state is None or state.startswith("FAILED") else f" (Slurm state {state})"
        return None, job_failure(job, f"failed{said}: {raised(error)}")
    found = record()
    if found is None:
        return None, job_failure(job, "finished but its record is missing or not of this run")
    return found, None


def run_on_slurm(
    items: Sequence[T],
    *,
    work: Callable[[T], R],
    done: Callable[[T], R | None],
    cfg: ExperimentConfig,
    desc: str,
) -> Iterator[tuple[int, R | None, str | None]]:
    """Runs `work` on every item as one task of a job array; yields (index, record, None) for a
    task that wrote its record, (index, None, why) for one that failed, as they end.

    Interrupted (Ctrl-C), it cancels the tasks that have not ended.

    Raises:
        exits.Failed: sbatch refused the jobs.
    """
    if not items:
        return
    jobs = submit(slurm_executor(cfg, name=f"splitnn-{desc}"), work, items)
    array = jobs[0].job_id.split("_")[0]
    logger.info(
        "%s: %d runs submitted as Slurm job %s (logs in %s)",
        *(desc, len(jobs), array, log_folder(cfg.results_dir).parent),
    )
    ended: set[int] = set()
    try:
        for i in wait_for(jobs):
            ended.add(i)
            record, error = job_outcome(jobs[i], partial(done, items[i]))
            yield i, record, error
    except (KeyboardInterrupt, GeneratorExit):
        cancel([job.job_id for i, job in enumerate(jobs) if i not in ended])
        raise


def cancel(job_ids: Sequence[str]) -> None:
    """``scancel`` of the jobs given, best effort (the user is told to check ``squeue``)."""
    if not job_ids:
        return
    logger.warning("cancelling %d Slurm jobs (check with squeue)", len(job_ids))
    try:
        subprocess.run(["scancel", *job_ids], capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as error:
        logger.warning("scancel failed: %s", error)
