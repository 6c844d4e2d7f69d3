"""The training groups this server declares, by name (see `group.py` for one group)."""

from __future__ import annotations

from collections.abc import Sequence

from splitnn.server.changes import Changes
from splitnn.server.errors import InvalidRequest
from splitnn.server.group import Group
from splitnn.server.group_spec import GroupSpec


class Groups:
    """The groups this server declares, by name; `changes` wakes whoever waits on any of them."""

    def __init__(self, specs: Sequence[GroupSpec]) -> None:
        self.changes = Changes()
        self._groups = {spec.name: Group(spec, self.changes) for spec in specs}
        if len(self._groups) != len(specs):
            raise ValueError("two groups of the same name")

    def __bool__(self) -> bool:
        return bool(self._groups)

    def get(self, name: str) -> Group:
        group = self._groups.get(name)
        if group is None:
            declared = ", ".join(sorted(self._groups)) or "none"
            raise InvalidRequest(f"no group {name!r} on this server (declared: {declared})")
        return group

    def expire(self, ttl: float) -> set[Group]:
        """The groups whose run was dropped for being idle `ttl` seconds (see `Group.expire`)."""
        return {group for group in self._groups.values() if group.expire(ttl)}
