"""A training group the server declares on its command line: ``--group NAME=TOPOLOGY:K``."""

from __future__ import annotations

from dataclasses import dataclass

from splitnn.common.topology import DEFAULT, Topology, topology

MAX_GROUP_SIZE = 64


@dataclass(frozen=True)
class GroupSpec:
    """A group the server declares: its name, topology and number of holders K."""

    name: str
    topology: Topology
    size: int

    @classmethod
    def parse(cls, text: str) -> GroupSpec:
        """Parses ``NAME=TOPOLOGY:K``, e.g. ``hospitals=<topology>:4``.

        Raises:
            ValueError: with what is wrong.
        """
        name, sep, rest = text.partition("=")
        kind, sep2, size = rest.partition(":")
        if not sep or not sep2 or not name:
            example = f"hospitals={DEFAULT.name}:4"
            raise ValueError(f"{text!r}: expected NAME=TOPOLOGY:K, e.g. {example}")
        if not all(c.isalnum() or c in "_.-" for c in name):
            raise ValueError(f"group name {name!r}: use letters, digits, _ . -")
        found = topology(kind)
        if not (size.isascii() and size.isdigit()) or not 1 <= int(size) <= MAX_GROUP_SIZE:
            raise ValueError(f"group size {size!r}: an integer in 1..{MAX_GROUP_SIZE}")
        return cls(name=name, topology=found, size=int(size))
