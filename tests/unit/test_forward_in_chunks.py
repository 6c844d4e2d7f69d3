"""`forward_in_chunks`: evaluation, deployment and scoring compute their rows 128 at a time
without autograd; the rows must be those of the whole batch at once."""

from __future__ import annotations

import pytest
import torch

from splitnn.attacker.validator import build_validator
from splitnn.common.decoders import build_decoder
from splitnn.common.models import FORWARD_CHUNK, build_body, forward_in_chunks


@pytest.mark.parametrize("rows", [0, 1, FORWARD_CHUNK, FORWARD_CHUNK + 1, 257, 385, 500, 641])
def test_part_1_in_chunks_gives_the_rows_of_the_whole_batch(rows: int) -> None:
    body = build_body(3).eval()
    images = torch.rand(rows, 1, 28, 28, generator=torch.Generator().manual_seed(rows))

    chunked = forward_in_chunks(body, images)

    with torch.no_grad():
        whole = body(images)
    assert chunked.shape == (rows, 500)
    assert torch.equal(chunked, whole)
    assert not chunked.requires_grad  # no autograd graph is kept for 500 images


def test_the_chunks_are_of_equal_size() -> None:
    sizes: list[int] = []

    def record(x: torch.Tensor) -> torch.Tensor:
        sizes.append(len(x))
        return x

    forward_in_chunks(record, torch.zeros(FORWARD_CHUNK + 1, 3))  # type: ignore[arg-type]
    forward_in_chunks(record, torch.zeros(500, 3))  # type: ignore[arg-type]

    assert sizes == [65, 64, 125, 125, 125, 125]


@pytest.mark.parametrize("model", ["deep", "study", "validator"])
def test_decoders_and_the_validator_in_chunks_give_the_same_rows(model: str) -> None:
    net = build_validator(0, 10) if model == "validator" else build_decoder(model, seed=0)
    net.eval()
    shape = (300, 1, 28, 28) if model == "validator" else (300, 500)
    inputs = torch.rand(shape, generator=torch.Generator().manual_seed(1))

    with torch.no_grad():
        whole = net(inputs)
    assert torch.equal(forward_in_chunks(net, inputs), whole)


def test_the_model_keeps_its_mode() -> None:
    body = build_body(0).train()

    forward_in_chunks(body, torch.rand(2, 1, 28, 28))

    assert body.training
