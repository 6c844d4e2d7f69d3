"""Wire logs of the grid's runs, compacted to the deployment batches.

A collusion-mode server logs every batch it receives, training included (about 60 MB for a
10-epoch mnist5k run, 800 MB on MNIST). The attacks only use the deployment batches (split
"attack"), so by default each run's log is rewritten with just those.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from splitnn.common.files import replacing
from splitnn.common.wirelog import WireLogError, WireLogWriter, read_wirelog

logger = logging.getLogger(__name__)

DEPLOY_SPLIT = "attack"


def _rewrite(source: Path, target: Path, *, header: dict[str, Any]) -> int:
    """Writes the `DEPLOY_SPLIT` records of `source` to `target` (atomically).

    Returns:
        The number of records written.

    Raises:
        WireLogError: `source` is unreadable, or holds no deployment batch.
    """
    log = read_wirelog(source)
    if log.problem:
        logger.warning("wire log %s: %s", source, log.problem)
    kept = [record for record in log.records if record.split == DEPLOY_SPLIT]
    if not kept:
        raise WireLogError(f"{source} holds no {DEPLOY_SPLIT!r} batches (client without --deploy?)")
    with replacing(target) as tmp, WireLogWriter(tmp, header={**log.header, **header}) as writer:
        for record in kept:
            writer.write(record)
    return len(kept)


def compact(path: Path) -> int:
    """Keeps only the deployment batches of the wire log at `path`; returns how many."""
    size = path.stat().st_size
    kept = _rewrite(path, path, header={"compacted": f"only split {DEPLOY_SPLIT!r} kept"})
    logger.debug("compacted %s from %d bytes to %d", path, size, path.stat().st_size)
    return kept
