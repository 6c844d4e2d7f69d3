"""A training group the server declares on its command line: ``--group NAME=TOPOLOGY:K[@IDS]``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from splitnn.common.topology import DEFAULT, Topology, topology

MAX_GROUP_SIZE = 64
# A party's name as a certificate CN or a tokens file gives it, when it can be written here.
_IDENTITY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class GroupSpec:
    """A group the server declares: its name, topology and number of holders K.

    `members`: the identity that may hold each index 0..K-1, in order (``@alice,bob,carol``);
    empty: each index is bound to the first identity that takes it.
    """

    name: str
    topology: Topology
    size: int
    members: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> GroupSpec:
        """Parses ``NAME=TOPOLOGY:K`` or ``NAME=TOPOLOGY:K@ID0,ID1,...`` (K identities, one per
        index), e.g. ``hospitals=<topology>:2@alice,bob``.

        Raises:
            ValueError: with what is wrong.
        """
        name, sep, rest = text.partition("=")
        rest, at, named = rest.partition("@")
        kind, sep2, size = rest.partition(":")
        if not sep or not sep2 or not name:
            example = f"hospitals={DEFAULT.name}:2@alice,bob"
            raise ValueError(f"{text!r}: expected NAME=TOPOLOGY:K[@ID,...], e.g. {example}")
        if not all(c.isalnum() or c in "_.-" for c in name) or name.startswith("."):
            raise ValueError(f"group name {name!r}: use letters, digits, _ . - (no leading .)")
        found = topology(kind)
        if not (size.isascii() and size.isdigit()) or not 1 <= int(size) <= MAX_GROUP_SIZE:
            raise ValueError(f"group size {size!r}: an integer in 1..{MAX_GROUP_SIZE}")
        members = tuple(named.split(",")) if at else ()
        if at and len(members) != int(size):
            raise ValueError(
                f"group {name!r}: {len(members)} identities for {size} holders (one per index)"
            )
        for member in members:
            if not _IDENTITY.fullmatch(member):
                raise ValueError(f"identity {member!r}: use letters, digits, _ . - (up to 64)")
        return cls(name=name, topology=found, size=int(size), members=members)

    def admits(self, holder: int, identity: str) -> bool:
        """Whether `identity` may take index `holder`: a named group's own member only."""
        if not self.members:
            return True  # first come, first bound (the group checks the index)
        return 0 <= holder < self.size and self.members[holder] == identity
