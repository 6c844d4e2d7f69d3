"""Names and settings the parties and the orchestrators share live in common/, and agree."""

from __future__ import annotations

from splitnn.common.decoders import DECODERS
from splitnn.common.models import (
    DECODER_NAMES,
    NOPEEK_BATCH_SIZE,
    PLAIN_BATCH_SIZE,
    study_batch_size,
)
from splitnn.common.processes import listening_address
from splitnn.experiments.grid import GROUPS


def test_the_attacker_builds_exactly_the_decoders_common_names() -> None:
    assert tuple(DECODERS) == DECODER_NAMES


def test_the_grid_trains_with_the_study_batch_sizes() -> None:
    for name in ("plain", "noise", "nopeek", "combo"):
        for setting in GROUPS[name].settings:
            assert setting.batch_size == study_batch_size(setting.nopeek)
    assert study_batch_size(0.0) == PLAIN_BATCH_SIZE
    assert study_batch_size(0.1) == NOPEEK_BATCH_SIZE


def test_listening_address_reads_only_the_startup_line() -> None:
    assert listening_address("listening on 127.0.0.1:50051\n") == "127.0.0.1:50051"
    assert listening_address("listening on [::]:0") == "[::]:0"
    assert listening_address("listening on nowhere") is None
    assert listening_address("warning: listening on 127.0.0.1:1") is None
