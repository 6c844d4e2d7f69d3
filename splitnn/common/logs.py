"""Logging set-up, called only from the CLI entry points."""

from __future__ import annotations

import logging


def configure_logging(*, verbose: int = 0, quiet: bool = False) -> None:
    """INFO by default, DEBUG with -v, WARNING with --quiet; to stderr, one line per record."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
