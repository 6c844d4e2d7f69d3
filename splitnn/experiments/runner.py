"""Running the grid's training runs: each one a real server and a real data holder process.

Runs already done (see `splitnn.experiments.records`) are skipped unless forced; up to `jobs`
runs go at once, each pair on its own port. A failed run is reported and the rest go on.
With ``executor="slurm"`` every run is a job of a Slurm cluster instead (`executors`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from splitnn.common.checkpoints import remove_checkpoint
from splitnn.common.commands import ClientCommand, run_client
from splitnn.common.files import write_json_atomic
from splitnn.common.processes import (
    ProcessError,
    ServerProcess,
    log_tail,
    run_checked,
    run_json,
    worker_pool,
)
from splitnn.common.reports import RunReport
from splitnn.common.wirelog import WireLogError
from splitnn.experiments import wirelogs
from splitnn.experiments.config import ExperimentConfig
from splitnn.experiments.grid import TrainSpec
from splitnn.experiments.records import (
    ClassifierRecord,
    classifier_record,
    now,
    process_log_path,
    read_json,
    train_record_path,
    train_settings,
    wirelog_path,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Outcome(Generic[T, R]):
    """What became of one run: status "ran", "skipped" or "failed"; its record unless failed."""

    item: T
    status: Literal["ran", "skipped", "failed"]
    record: R | None = None
    error: str | None = None


def run_jobs(
    items: Sequence[T],
    *,
    work: Callable[[T], R],
    done: Callable[[T], R | None],
    label: Callable[[T], str],
    cfg: ExperimentConfig,
    desc: str,
) -> list[Outcome[T, R]]:
    """Runs `work` on every item not yet `done` (all of them with `cfg.force`), `cfg.jobs` at once.

    Returns one outcome per item, in the order of `items`. Exceptions of type ProcessError,
    WireLogError and OSError mark the item failed; anything else propagates. With
    `cfg.executor` ``slurm`` every item is a Slurm job, and a job that failed in any way, or
    ended without the record that `done` reads, marks its item failed.
    """
    outcomes: dict[int, Outcome[T, R]] = {}
    todo: list[int] = []
    for i, item in enumerate(items):
        record = None if cfg.force else done(item)
        if record is not None:
            outcomes[i] = Outcome(item, "skipped", record)
        else:
            todo.append(i)
    if outcomes:
        done_count = len(outcomes)
        logger.info(
            "%s: %d of %d runs done before (--force redoes them)", desc, done_count, len(items)
        )
    bar = tqdm(
        total=len(items),
        initial=len(outcomes),
        desc=desc,
        unit="run",
        disable=not cfg.progress or not items,
    )
    started = time.monotonic()
    if cfg.executor == "local":
        ended = _in_threads(items, todo, work=work, jobs=cfg.jobs)
    else:
        ended = _on_slurm(items, todo, work=work, done=done, cfg=cfg, desc=desc)
    with bar, logging_redirect_tqdm():
        for count, (i, outcome) in enumerate(ended, start=1):
            outcomes[i] = outcome
            if outcome.status == "ran":
                logger.info(
                    "%s %d/%d: %s done (%.0f s so far)",
                    *(desc, count, len(todo), label(items[i]), time.monotonic() - started),
                )
            else:
                logger.error("%s failed: %s", label(items[i]), outcome.error)
            bar.set_postfix_str(label(items[i]), refresh=False)
            bar.update()
    return [outcomes[i] for i in range(len(items))]


def _in_threads(
    items: Sequence[T], todo: Sequence[int], *, work: Callable[[T], R], jobs: int
) -> Iterator[tuple[int, Outcome[T, R]]]:
    """`work` on `items[i]` for every i in `todo`, `jobs` at once in threads; each index with its
    outcome as it ends. ProcessError, WireLogError and OSError fail a run; the rest propagates.
    Interrupted, it starts no further run and stops the programs of the runs under way."""
    with worker_pool(jobs, stop_on=(KeyboardInterrupt, GeneratorExit)) as pool:
        futures: dict[Future[R], int] = {pool.submit(work, items[i]): i for i in todo}
        for future in as_completed(futures):
            i = futures[future]
            try:
                outcome = Outcome(items[i], "ran", future.result())
            except (ProcessError, WireLogError, OSError) as error:
                outcome = Outcome(items[i], "failed", error=str(error))
            yield i, outcome


def _on_slurm(
    items: Sequence[T],
    todo: Sequence[int],
    *,
    work: Callable[[T], R],
    done: Callable[[T], R | None],
    cfg: ExperimentConfig,
    desc: str,
) -> Iterator[tuple[int, Outcome[T, R]]]:
    """`_in_threads` as jobs of a Slurm job array (`executors.run_on_slurm`): a job that failed
    in any way, or left no record, fails its run."""
    from splitnn.experiments.executors import run_on_slurm  # submitit: only when asked for

    chosen = [items[i] for i in todo]
    for k, record, error in run_on_slurm(chosen, work=work, done=done, cfg=cfg, desc=desc):
        i = todo[k]
        if record is None:
            yield i, Outcome(items[i], "failed", error=error)
        else:
            yield i, Outcome(items[i], "ran", record)


S = TypeVar("S")


def prepare_validators(cfg: ExperimentConfig, seeds: set[int]) -> None:
    """Trains the validation classifier of each attacker seed in `seeds` once, in
    ``cfg.model_dir``, before the runs that use it start side by side (a run finds it there and
    loads it; each seed has its own, ``<dataset>_validator_seed<k>_...``). One that exists is
    only loaded.

    Raises:
        ProcessError: `splitnn-attack validator` failed.
    """
    for seed in sorted(seeds):
        log_path = cfg.runs_dir / cfg.dataset / "validators" / f"validator_seed{seed}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        args = ["-q", "validator", "--dataset", cfg.dataset, "--seed", str(seed)]
        args += ["--model-dir", str(cfg.model_dir), "--data-dir", str(cfg.data_dir)]
        with log_path.open("w") as log:
            run_checked("splitnn-attack", args, log=log)


def simulate_json(
    args: Sequence[str],
    *,
    log_path: Path,
    cfg: ExperimentConfig,
    check: Callable[[dict[str, Any]], S],
) -> tuple[S, float]:
    """Runs `splitnn-sim ARGS` with one job's threads, its output in `log_path`; returns its JSON
    report as `check` parses it, and the wall seconds the simulation took.

    Raises:
        ProcessError: splitnn-sim failed, printed no JSON, or `check` refused its report (the
            message ends with the log).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    threads = {"OMP_NUM_THREADS": str(cfg.threads_per_job())}
    started = time.monotonic()
    with log_path.open("w") as log:
        try:
            report = check(run_json("splitnn-sim", list(args), log=log, env=threads))
        except ValueError as error:  # a line starting with "{" that is not JSON
            raise ProcessError(f"splitnn-sim printed no JSON result: {error}") from None
        except ProcessError as error:
            log.flush()
            raise ProcessError(f"{error}; {log_path} ends:\n{log_tail(log_path)}") from None
    return report, time.monotonic() - started


def client_command(spec: TrainSpec, cfg: ExperimentConfig, *, server: str) -> ClientCommand:
    """The `splitnn-client` command of one training run (DP-SGD's flags with a DP setting)."""
    dp = spec.setting.dp
    return ClientCommand(
        server=server,
        dataset=spec.dataset,
        noise=spec.setting.noise,
        nopeek=spec.setting.nopeek,
        epochs=spec.epochs,
        batch_size=spec.setting.batch_size,
        lr=cfg.lr_for(spec.setting),
        seed=spec.seed,
        max_steps=spec.max_steps,
        threads=cfg.threads_per_job(),
        model_dir=cfg.model_dir,
        data_dir=cfg.data_dir,
        quiet=True,
        dp_epsilon=dp.epsilon if dp is not None else None,
        dp_delta=dp.delta if dp is not None else None,
    ).as_harness()


def train_one(spec: TrainSpec, cfg: ExperimentConfig) -> ClassifierRecord:
    """Trains one classifier through a fresh collusion-mode server; writes and returns its record.

    Raises:
        ProcessError: the server or the client failed (the message ends with their log).
    """
    previous = read_json(train_record_path(cfg.runs_dir, spec))  # any version: its files
    log_path = process_log_path(cfg.runs_dir, spec)
    wirelog = wirelog_path(cfg.runs_dir, spec)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    wirelog.unlink(missing_ok=True)  # a server appends to an existing log
    started = time.monotonic()
    server_args = ["--model-dir", str(cfg.model_dir), "--tap-log", str(wirelog), "-q"]
    with log_path.open("w") as log:
        try:
            with ServerProcess(server_args, log=log) as server:
                report = run_client(client_command(spec, cfg, server=server.address), log=log)
            # The server names its head within its model folder, which is ours.
            head = cfg.model_dir / report.head_checkpoint
            report = replace(report, head_checkpoint=str(head))
        except ProcessError as error:
            log.flush()
            raise ProcessError(f"{error}; {log_path} ends:\n{log_tail(log_path)}") from None
    if not cfg.keep_wirelogs:
        wirelogs.compact(wirelog)
    record = ClassifierRecord(
        settings=train_settings(spec, lr=cfg.lr_for(spec.setting), data=cfg.data_fingerprint),
        report=report,
        wirelog=str(wirelog),
        wall_seconds=time.monotonic() - started,
        finished_at=now(),
    )
    write_json_atomic(train_record_path(cfg.runs_dir, spec), record.to_json())
    _drop_stale_checkpoints(previous, report)
    return record


def _drop_stale_checkpoints(previous: dict[str, Any] | None, report: RunReport) -> None:
    """Removes the checkpoints of a run's earlier record that the new run did not overwrite.

    The earlier record is read as plain JSON: one of an older format still names its files.
    """
    if previous is None or not isinstance(previous.get("report"), dict):
        return
    for key, new in (
        ("checkpoint", report.checkpoint),
        ("head_checkpoint", report.head_checkpoint),
    ):
        old = previous["report"].get(key)
        if isinstance(old, str) and old and old != new:
            remove_checkpoint(Path(old))


def train_all(
    specs: Sequence[TrainSpec], cfg: ExperimentConfig, *, desc: str
) -> list[Outcome[TrainSpec, ClassifierRecord]]:
    """Trains every spec not yet done; see `run_jobs`."""
    return run_jobs(
        specs,
        work=lambda spec: train_one(spec, cfg),
        done=lambda spec: classifier_record(cfg, spec),
        label=lambda spec: spec.name,
        cfg=cfg,
        desc=desc,
    )
