"""Running the grid's training runs: each one a real server and a real data holder process.

Runs already done (see `splitnn.experiments.records`) are skipped unless forced; up to `jobs`
runs go at once, each pair on its own port. A failed run is reported and the rest go on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from splitnn.common.checkpoints import remove_checkpoint
from splitnn.common.processes import ProcessError, ServerProcess, log_tail, run_json
from splitnn.common.wirelog import WireLogError
from splitnn.experiments import wirelogs
from splitnn.experiments.config import ExperimentConfig
from splitnn.experiments.grid import TrainSpec
from splitnn.experiments.records import (
    classifier_record,
    now,
    process_log_path,
    read_json,
    train_record_path,
    train_settings,
    wirelog_path,
    write_json_atomic,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """What became of one run: status "ran", "skipped" or "failed"."""

    item: T
    status: Literal["ran", "skipped", "failed"]
    record: dict[str, Any] | None = None
    error: str | None = None


def run_jobs(
    items: Sequence[T],
    *,
    work: Callable[[T], dict[str, Any]],
    done: Callable[[T], dict[str, Any] | None],
    label: Callable[[T], str],
    cfg: ExperimentConfig,
    desc: str,
) -> list[Outcome[T]]:
    """Runs `work` on every item not yet `done` (all of them with `cfg.force`), `cfg.jobs` at once.

    Returns one outcome per item, in the order of `items`. Exceptions of type ProcessError,
    WireLogError and OSError mark the item failed; anything else propagates.
    """
    outcomes: dict[int, Outcome[T]] = {}
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
    with bar, logging_redirect_tqdm(), ThreadPoolExecutor(max_workers=cfg.jobs) as pool:
        futures: dict[Future[dict[str, Any]], int] = {pool.submit(work, items[i]): i for i in todo}
        for count, future in enumerate(as_completed(futures), start=1):
            i = futures[future]
            try:
                outcomes[i] = Outcome(items[i], "ran", future.result())
                logger.info(
                    "%s %d/%d: %s done (%.0f s so far)",
                    *(desc, count, len(todo), label(items[i]), time.monotonic() - started),
                )
            except (ProcessError, WireLogError, OSError) as error:
                logger.error("%s failed: %s", label(items[i]), error)
                outcomes[i] = Outcome(items[i], "failed", error=str(error))
            bar.set_postfix_str(label(items[i]), refresh=False)
            bar.update()
    return [outcomes[i] for i in range(len(items))]


def client_args(spec: TrainSpec, cfg: ExperimentConfig, *, server: str) -> list[str]:
    """The `splitnn-client` command line of one training run."""
    args = [
        "--server", server,
        "--dataset", spec.dataset,
        "--noise", repr(spec.setting.noise),
        "--nopeek", repr(spec.setting.nopeek),
        "--epochs", str(spec.epochs),
        "--batch-size", str(spec.setting.batch_size),
        "--lr", repr(cfg.lr),
        "--seed", str(spec.seed),
        "--model-dir", str(cfg.model_dir),
        "--data-dir", str(cfg.data_dir),
        "--threads", str(cfg.threads_per_job()),
        # A run the grid starts is started over, even if an interrupted one left its state;
        # the grid is an evaluation harness: indices let it score the attacks.
        "--deploy", "--restart", "--send-indices", "--json", "-q",
    ]  # fmt: skip
    if spec.max_steps is not None:
        args += ["--max-steps", str(spec.max_steps)]
    return args


def train_one(spec: TrainSpec, cfg: ExperimentConfig) -> dict[str, Any]:
    """Trains one classifier through a fresh collusion-mode server; writes and returns its record.

    Raises:
        ProcessError: the server or the client failed (the message ends with their log).
    """
    previous = read_json(train_record_path(cfg.runs_dir, spec))
    log_path = process_log_path(cfg.runs_dir, spec)
    wirelog = wirelog_path(cfg.runs_dir, spec)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    wirelog.unlink(missing_ok=True)  # a server appends to an existing log
    started = time.monotonic()
    server_args = ["--model-dir", str(cfg.model_dir), "--tap-log", str(wirelog), "-q"]
    with log_path.open("w") as log:
        try:
            with ServerProcess(server_args, log=log) as server:
                report = run_json(
                    "splitnn-client", client_args(spec, cfg, server=server.address), log=log
                )
        except ProcessError as error:
            log.flush()
            raise ProcessError(f"{error}; {log_path} ends:\n{log_tail(log_path)}") from None
    if not cfg.keep_wirelogs:
        wirelogs.compact(wirelog)
    record = {
        "kind": "classifier",
        "settings": train_settings(spec, lr=cfg.lr, data=cfg.data_fingerprint),
        "report": report,
        "wirelog": str(wirelog),
        "wall_seconds": time.monotonic() - started,
        "finished_at": now(),
    }
    write_json_atomic(train_record_path(cfg.runs_dir, spec), record)
    _drop_stale_checkpoints(previous, report)
    return record


def _drop_stale_checkpoints(previous: dict[str, Any] | None, report: dict[str, Any]) -> None:
    """Removes the checkpoints of a run's earlier record that the new run did not overwrite."""
    if previous is None:
        return
    for key in ("checkpoint", "head_checkpoint"):
        old = previous.get("report", {}).get(key)
        if old and old != report.get(key):
            remove_checkpoint(Path(old))


def train_all(
    specs: Sequence[TrainSpec], cfg: ExperimentConfig, *, desc: str
) -> list[Outcome[TrainSpec]]:
    """Trains every spec not yet done; see `run_jobs`."""
    return run_jobs(
        specs,
        work=lambda spec: train_one(spec, cfg),
        done=lambda spec: classifier_record(cfg, spec),
        label=lambda spec: spec.name,
        cfg=cfg,
        desc=desc,
    )
