"""The runs' resume states on disk: one file per saved step, a few kept per run.

A run's saves live in ``<root>/<run>/``, one file per step, named so that the step and the kind
sort and parse without opening the file:

- ``<epoch>-<batch>.point.ckpt``: a save point the data holder marked (it saves its own state at
  the same step, after the server's reply);
- ``<epoch>-<batch>.snapshot.ckpt``: written when a session expires, closes or the server stops.

Only the two newest save points are kept (the data holder's last save is always one of them: it
is at most one save point behind the server) and a snapshot only while it is the newest save.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splitnn.common.checkpoints import (
    CheckpointError,
    load_checkpoint,
    remove_checkpoint,
    save_checkpoint,
)
from splitnn.common.codec import StepId
from splitnn.server.errors import WrongState

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d+)-(\d+)\.(point|snapshot)\.ckpt$")
POINTS_KEPT = 2


@dataclass(frozen=True, order=True)
class Save:
    """One saved state of a run. Orders by step, a save point before a snapshot of that step."""

    epoch: int
    batch: int
    snapshot: bool
    path: Path

    def step(self, run: str) -> StepId:
        return StepId(run, self.epoch, self.batch)


class ResumeStore:
    """Writes, finds and prunes the resume states of runs under `root`.

    Run names are checked (`check_stem`) by the session registry before they reach this class.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def saves(self, run: str) -> list[Save]:
        """The run's saves, oldest first."""
        folder = self.root / run
        if not folder.is_dir():
            return []
        found = []
        for path in folder.iterdir():
            match = _NAME.match(path.name)
            if match:
                epoch, batch, kind = match.groups()
                found.append(Save(int(epoch), int(batch), kind == "snapshot", path))
        return sorted(found)

    def find(self, step: StepId) -> Save | None:
        """The save of exactly `step`; a save point is preferred to a snapshot of the same step."""
        for save in self.saves(step.run):
            if (save.epoch, save.batch) == step.key():
                return save
        return None

    def newest(self, run: str) -> Save | None:
        saves = self.saves(run)
        return saves[-1] if saves else None

    def write(
        self, step: StepId, state: dict[str, Any], manifest: dict[str, Any], *, point: bool
    ) -> Path:
        """Saves `state` at `step` atomically, then prunes what is no longer needed."""
        kind = "point" if point else "snapshot"
        path = self.root / step.run / f"{step.epoch}-{step.batch}.{kind}.ckpt"
        save_checkpoint(path, state, {**manifest, "step": [step.epoch, step.batch], "kind": kind})
        self._prune(step.run)
        return path

    @staticmethod
    def load(save: Save) -> dict[str, Any]:
        """The saved state.

        Raises:
            WrongState: the file cannot be read; the message, sent to the data holder, names the
                run and the step, never the file (logged here with its path).
        """
        try:
            state, _ = load_checkpoint(save.path)
        except CheckpointError as error:
            logger.warning("unreadable resume state: %s", error)
            raise WrongState(
                f"the server's save of run {save.path.parent.name!r} at step "
                f"{save.epoch}-{save.batch} cannot be read; start the run over"
            ) from None
        return state

    def discard_after(self, step: StepId) -> None:
        """Removes the saves newer than `step`: a run resumed there has abandoned them."""
        for save in self.saves(step.run):
            if (save.epoch, save.batch) > step.key():
                remove_checkpoint(save.path)

    def clear(self, run: str) -> None:
        """Removes every save of `run` (it starts over, or it has finished)."""
        folder = self.root / run
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)

    def _prune(self, run: str) -> None:
        saves = self.saves(run)
        points = [s for s in saves if not s.snapshot]
        keep = set(points[-POINTS_KEPT:])
        newest = saves[-1] if saves else None
        if newest is not None and newest.snapshot:
            keep.add(newest)
        for save in saves:
            if save not in keep:
                remove_checkpoint(save.path)
