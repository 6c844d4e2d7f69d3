"""Dependency floors that the file-safety guarantees rest on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Below torch 2.6, torch.load(weights_only=True) can still run code from a crafted file
# (CVE-2025-32434); every checkpoint and resume file is read that way. torchvision 0.21 is
# the release paired with torch 2.6.
FLOORS = {"torch": (2, 6), "torchvision": (0, 21)}


def _floor(requirement: str) -> tuple[int, ...]:
    found = re.fullmatch(r"[A-Za-z0-9_.-]+\s*>=\s*(\d+(?:\.\d+)*)", requirement.strip())
    assert found, f"{requirement!r} has no plain '>=' floor"
    return tuple(int(part) for part in found.group(1).split("."))


def _requirements() -> dict[str, str]:
    """The `[project] dependencies` of pyproject.toml by name (tomllib is not in Python 3.10)."""
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, flags=re.MULTILINE | re.DOTALL)
    assert block is not None, "pyproject.toml has no [project] dependencies list"
    deps = re.findall(r'^\s*"([^"]+)"', block.group(1), flags=re.MULTILINE)
    return {re.split(r"[<>=!~ \[]", dep, maxsplit=1)[0]: dep for dep in deps}


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_the_declared_floor_excludes_releases_whose_safe_loading_can_be_bypassed(
    name: str,
) -> None:
    assert _floor(_requirements()[name]) >= FLOORS[name]


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_the_image_installs_the_same_floor(name: str) -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()

    pinned = re.search(rf'"{name}\s*>=\s*([\d.]+)"', dockerfile)

    assert pinned is not None, f"docker/Dockerfile installs {name} without a floor"
    assert _floor(f"{name}>={pinned.group(1)}") >= FLOORS[name]
