"""The compose file and the image, read as text (no Docker engine needed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FILES = [ROOT / "docker-compose.yml", ROOT / "docker" / "Dockerfile"]
_CHMOD = re.compile(r"\bchmod\s+(?:-\w+\s+)*([0-7]{3,4})\b")


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.name)
def test_no_folder_or_file_is_made_writable_by_every_user(path: Path) -> None:
    modes = [int(mode, 8) for mode in _CHMOD.findall(path.read_text())]

    assert all(mode & 0o002 == 0 for mode in modes), f"{path.name}: world-writable {modes}"


def test_the_hosts_results_folder_belongs_to_the_image_user() -> None:
    compose = (ROOT / "docker-compose.yml").read_text()

    chmod = re.search(r"chmod\s+([0-7]{3,4})\s+/results/compose", compose)
    owner = re.search(r"chown\s+(?:-\w+\s+)*splitnn[:\w$() %/-]*\s+/results/compose", compose)

    assert chmod is not None and int(chmod.group(1), 8) & 0o007 == 0
    assert owner is not None, "the attacker writes /results/compose as the image's user"
