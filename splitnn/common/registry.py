"""Looking a name up in one of the project's registries (topologies, head policies)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


def lookup(registry: Mapping[str, T], name: str, *, kind: str) -> T:
    """The entry `name` of `registry`, whose entries are called `kind` (e.g. "topology").

    Raises:
        ValueError: no such entry, naming the known ones.
    """
    found = registry.get(name)
    if found is None:
        raise ValueError(f"{kind} {name!r}: one of {', '.join(registry)}")
    return found
