"""A training group's state on disk, so that the group survives a restart of the server.

A group writes its whole state (`group_state`) at every save point one of its members marks,
after every new hand-in and when a member closes, always before it replies. One file holds
everything but the parts 1; a part 1 (18 MB) is written once, named by its SHA-256, and shared
by the saves that hold it:

- ``<root>/<group>/<n>.group.ckpt``: the n-th save, a magic line, the SHA-256 of the payload
  and the payload (``torch.save`` of tensors, numbers, strings and bytes, read back with
  ``weights_only=True``). The two newest are kept.
- ``<root>/<group>/parts/<sha256>.part1``: a part 1 as it travels (a serialized `Weights`).

Every file is written atomically (temporary file, fsync, rename), parts 1 before the save that
names them, and a part 1 is removed only once no kept save names it. A file whose SHA-256 does
not match, or that cannot be parsed, is refused (`DamagedSave`) before anything is built from
it; the group then tries the older save, or starts over.

Why the newest save is one every member can resume from: a member's save point is written
here before the member is answered, and the member saves its own state only after the answer.
So the newest save holds at least every member's last own save, and the group keeps each
member's replies since its save point before last: whatever a member saved last is one of them.
Members that went on past the newest save go back to their own last save and replay the rest
(`group_member.py`).
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import torch

from splitnn.common.codec import WeightsBlob
from splitnn.common.devices import to_cpu
from splitnn.common.files import PRIVATE, write_atomic
from splitnn.common.models import Head, build_head, make_optimizer
from splitnn.common.topology import Schedule, Topology
from splitnn.server.group_member import Member
from splitnn.server.group_parts import Parts
from splitnn.server.group_spec import GroupSpec
from splitnn.server.head import SessionSpec

logger = logging.getLogger(__name__)

FORMAT = 1
SAVES_KEPT = 2
_MAGIC = b"splitnn group save 1\n"
_SAVE = re.compile(r"^(\d{1,12})\.group\.ckpt$")
_PART = re.compile(r"^([0-9a-f]{64})\.part1$")


class Group(Protocol):
    """What a save holds of a group (`splitnn.server.group.Group`)."""

    spec: GroupSpec
    topology: Topology
    settings: SessionSpec | None
    epochs: int
    head: Head | None
    optimizer: torch.optim.Adam | None
    schedule: Schedule | None
    cursor: int
    members: dict[int, Member]
    parts: Parts

    def reset(self) -> None: ...


class DamagedSave(Exception):
    """A group's save that cannot be used: damaged, truncated, or not this group's."""


class GroupStore:
    """Writes, reads and prunes one group's saves in `folder` (see the module)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._named: dict[Path, set[bytes]] = {}  # the parts 1 each save names, once read

    def saves(self) -> list[Path]:
        """The group's saves, newest first."""
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := _SAVE.match(p.name))]
        return [path for _, path in sorted(found, reverse=True)]

    def write(self, state: dict[str, Any], parts: Iterable[WeightsBlob]) -> Path:
        """Writes `state` as the newest save, with the parts 1 it names, then prunes."""
        named = {}
        for blob in parts:
            named[blob.sha256] = blob
            path = self._part_path(blob.sha256)
            if not path.exists():
                write_atomic(path, blob.data, mode=PRIVATE)
        buffer = io.BytesIO()
        torch.save(to_cpu({**state, "parts1": sorted(named)}), buffer)
        payload = buffer.getvalue()
        saves = self.saves()
        number = int(saves[0].name.split(".")[0]) + 1 if saves else 1
        path = self.folder / f"{number}.group.ckpt"
        write_atomic(path, _MAGIC + hashlib.sha256(payload).digest() + payload, mode=PRIVATE)
        self._named[path] = set(named)
        self._prune()
        return path

    def read(self, path: Path) -> tuple[dict[str, Any], dict[bytes, WeightsBlob]]:
        """The state saved at `path` and the parts 1 it names, by SHA-256.

        Raises:
            DamagedSave: the file or a part 1 it names is missing, damaged or truncated.
        """
        try:
            content = path.read_bytes()
        except OSError as error:
            raise DamagedSave(f"{path.name}: {error.strerror}") from None
        header = len(_MAGIC) + 32
        payload = content[header:]
        if (
            not content.startswith(_MAGIC)
            or hashlib.sha256(payload).digest() != content[len(_MAGIC) : header]
        ):
            raise DamagedSave(f"{path.name} is damaged or truncated (its SHA-256 differs)")
        try:
            state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises many types for a file it cannot parse
            raise DamagedSave(f"{path.name} cannot be parsed: {error}") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise DamagedSave(f"{path.name} is not a group save of format {FORMAT}")
        names = state.get("parts1")
        if not isinstance(names, list) or not all(isinstance(n, bytes) for n in names):
            raise DamagedSave(f"{path.name} does not list its parts 1")
        self._named[path] = set(names)
        return state, {sha: self._read_part(sha) for sha in names}

    def clear(self) -> None:
        """Removes every save and part 1 of the group (its run is over, dropped or restarted)."""
        for path in self.saves():
            path.unlink(missing_ok=True)
        parts = self.folder / "parts"
        if parts.is_dir():
            for path in parts.iterdir():
                if _PART.match(path.name):
                    path.unlink(missing_ok=True)
        self._named.clear()

    def _read_part(self, sha: bytes) -> WeightsBlob:
        path = self._part_path(sha)
        try:
            data = path.read_bytes()
        except OSError as error:
            raise DamagedSave(f"part 1 {path.name}: {error.strerror}") from None
        if hashlib.sha256(data).digest() != sha:
            raise DamagedSave(f"part 1 {path.name} is damaged or truncated")
        return WeightsBlob(data=data, sha256=sha)

    def _part_path(self, sha: bytes) -> Path:
        return self.folder / "parts" / f"{sha.hex()}.part1"

    def _prune(self) -> None:
        """Keeps the `SAVES_KEPT` newest saves and the parts 1 they name."""
        saves = self.saves()
        for old in saves[SAVES_KEPT:]:
            old.unlink(missing_ok=True)
            self._named.pop(old, None)
        named: set[bytes] = set()
        for kept in saves[:SAVES_KEPT]:
            if kept not in self._named:
                try:
                    self.read(kept)  # a save of an earlier process: learn what it names
                except DamagedSave:
                    continue  # unusable: it keeps nothing
            named |= self._named.get(kept, set())
        parts = self.folder / "parts"
        for path in parts.iterdir() if parts.is_dir() else ():
            match = _PART.match(path.name)
            if match and bytes.fromhex(match.group(1)) not in named:
                path.unlink(missing_ok=True)


def group_state(group: Group) -> tuple[dict[str, Any], list[WeightsBlob]]:
    """Everything a group needs to go on (lock held), and the parts 1 it holds.

    The settings, epochs and members (identity, run, steps an epoch, kept replies, save
    points, sample counts), the head and optimizer (one, or each member's), the cursor and the
    parts 1 (`Parts.to_state`).
    """
    assert group.settings is not None, "a group is saved once it has started"
    one_head = group.topology.one_head
    state: dict[str, Any] = {
        "format": FORMAT,
        "group": group.spec.name,
        "topology": group.topology.name,
        "size": group.spec.size,
        "declared": list(group.spec.members),
        "settings": {**asdict(group.settings), "cut_shape": list(group.settings.cut_shape)},
        "epochs": group.epochs,
        "cursor": group.cursor,
        "members": [
            group.members[h].to_state(with_head=not one_head) for h in sorted(group.members)
        ],
        "parts": group.parts.to_state(),
    }
    if one_head:
        assert group.head is not None and group.optimizer is not None
        state["head"] = group.head.state_dict()
        state["optimizer"] = group.optimizer.state_dict()
    return state, group.parts.blobs()


def take_up(group: Group, store: GroupStore) -> str:
    """Sets `group` (just built) to the newest usable save in `store`: its run goes on.

    Returns why nothing was taken up when saves were refused (said to the holders that try
    to resume), else "".
    """
    refused = []
    name = group.spec.name
    for path in store.saves():
        try:
            restore_group(group, *store.read(path))
        except DamagedSave as error:
            group.reset()
            refused.append(path.name)
            logger.error("group %s: save %s refused: %s", name, path.name, error)
            continue
        if all(m.closed for m in group.members.values()):
            group.reset()  # every holder had finished: nothing to take up
            store.clear()
            return ""
        at = ", ".join(f"holder {h} after {m.last}" for h, m in sorted(group.members.items()))
        logger.warning(
            "group %s: its run is taken up from save %s (%s); each holder resumes from its own "
            "last save; a holder that never comes back keeps the others waiting, and once all "
            "are silent for --session-ttl s the run is dropped and its saves removed",
            name,
            path.name,
            at,
        )
        return ""
    if not refused:
        return ""
    logger.error("group %s: no usable save; the group starts over", name)
    return f"its saved state ({', '.join(refused)}) cannot be read"


def restore_group(group: Group, state: dict[str, Any], parts: dict[bytes, WeightsBlob]) -> None:
    """Sets `group` (lock held, just reset) to what `group_state` saved.

    Raises:
        DamagedSave: the save is another group's, or of another declaration (topology, size,
            members' identities), or its content does not make a group.
    """
    spec = group.spec
    declared = (state.get("group"), state.get("topology"), state.get("size"), state.get("declared"))
    if declared != (spec.name, spec.topology.name, spec.size, list(spec.members)):
        raise DamagedSave(
            f"it is of group {declared[0]!r} = {declared[1]}:{declared[2]} "
            f"@{','.join(declared[3] or [])}, not of this declaration"
        )
    try:
        _restore(group, state, parts)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError) as error:
        raise DamagedSave(f"its content does not make a group ({type(error).__name__})") from None


def _restore(group: Group, state: dict[str, Any], parts: dict[bytes, WeightsBlob]) -> None:
    raw = dict(state["settings"])
    settings = SessionSpec(**{**raw, "cut_shape": tuple(int(d) for d in raw["cut_shape"])})
    group.settings, group.epochs = settings, int(state["epochs"])
    if group.topology.one_head:
        group.head = build_head(settings.seed, settings.num_classes)
        group.optimizer = make_optimizer(group.head, settings.lr)
        group.head.load_state_dict(state["head"])
        group.optimizer.load_state_dict(state["optimizer"])
    members = {}
    for saved in state["members"]:
        if group.head is not None and group.optimizer is not None:
            head, optimizer = group.head, group.optimizer
        else:
            head = build_head(settings.seed, settings.num_classes)
            optimizer = make_optimizer(head, settings.lr)
        member = Member.from_state(saved, head=head, optimizer=optimizer)
        members[member.holder] = member
    if sorted(members) != list(range(group.spec.size)):
        raise ValueError("not one member for every index")
    group.members = members
    group.parts = Parts.from_state(state["parts"], parts)
    group.cursor = int(state["cursor"])
    order = group.topology.schedule
    if order is not None:
        group.schedule = order(group.epochs, [members[h].batches for h in sorted(members)])
        if not 0 <= group.cursor <= len(group.schedule):
            raise ValueError("the cursor is outside the schedule")
