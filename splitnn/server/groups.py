"""The training groups this server declares, by name (see `group.py` for one group)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from splitnn.server.changes import Changes
from splitnn.server.errors import Forbidden
from splitnn.server.group import Group
from splitnn.server.group_saves import GroupStore
from splitnn.server.group_spec import GroupSpec
from splitnn.server.identity import Identity

logger = logging.getLogger(__name__)


class Groups:
    """The groups this server declares, by name; `changes` wakes whoever waits on any of them.

    `root`: each group saves its state in ``root/<name>/`` and takes up the run saved there
    (see `group_saves.py`); None: groups live in memory only.
    """

    def __init__(self, specs: Sequence[GroupSpec], *, root: Path | None = None) -> None:
        self.changes = Changes()
        self._groups = {
            spec.name: Group(
                spec, self.changes, store=None if root is None else GroupStore(root / spec.name)
            )
            for spec in specs
        }
        if len(self._groups) != len(specs):
            raise ValueError("two groups of the same name")

    def __bool__(self) -> bool:
        return bool(self._groups)

    def get(self, name: str) -> Group:
        """The group `name` (in-process callers; a peer's request goes through `admit`).

        Raises:
            Forbidden: no such group, with `admit`'s text: no refusal names the declared ones.
        """
        group = self._groups.get(name)
        if group is None:
            raise _not_open(name)
        return group

    def admit(self, name: str, holder: int, caller: Identity) -> Group:
        """The group `name` if `caller` may join it as `holder`.

        A group that names its members admits each index's own identity only; one that names
        none admits anyone (the group binds each index to the first identity that takes it).

        Raises:
            Forbidden: no such group, or not open to `caller` at `holder`: one status and one
                text for both, so a party not named learns nothing of the group.
        """
        group = self._groups.get(name)
        if group is None or not group.spec.admits(holder, caller.name):
            # The operator's log says why; the caller is told only that it may not join.
            why = "no such group" if group is None else "the index is not this party's"
            logger.warning(
                "%r refused as holder %d of group %r: %s", caller.name, holder, name, why
            )
            raise _not_open(name)
        return group

    def save_all(self) -> None:
        """Writes every group's state (on shutdown): its holders resume after the restart."""
        for group in self._groups.values():
            group.save()

    def expire(self, ttl: float) -> set[Group]:
        """The groups whose run was dropped for being idle `ttl` seconds (see `Group.expire`)."""
        return {group for group in self._groups.values() if group.expire(ttl)}


def _not_open(name: str) -> Forbidden:
    return Forbidden(f"no group {name!r} that this party may join on this server")
