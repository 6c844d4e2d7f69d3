"""Split training over a real gRPC server equals the same training in one process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch.nn import functional as F

from splitnn.client.dp import DPSGD
from splitnn.client.split_trainer import SplitTrainer
from splitnn.client.transport import ServerLink
from splitnn.common.codec import StepId
from splitnn.common.devices import to_compute, use_device
from splitnn.common.models import build_body, build_head, make_optimizer
from splitnn.common.noise import LaplaceNoise
from splitnn.server.app import RunningServer
from tests.conftest import settings

STEPS = 5
BATCH = 16
SEED = 7
LR = 1e-3
# Every device this machine has: both parties (the server runs in this process) compute there.
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> Iterator[torch.device]:
    """The compute device of the test's models, server and holder alike; the CPU again after."""
    try:
        yield use_device(request.param)
    finally:
        use_device("cpu")


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        (
            torch.rand(BATCH, 1, 28, 28, generator=generator),
            torch.randint(0, 10, (BATCH,), generator=generator),
        )
        for _ in range(STEPS)
    ]


def _train_in_process(
    batches: list[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.nn.Module, torch.nn.Module]:
    body, head = build_body(SEED), build_head(SEED + 1)
    opt_body, opt_head = make_optimizer(body, LR), make_optimizer(head, LR)
    for images, labels in batches:
        opt_body.zero_grad()
        opt_head.zero_grad()
        F.cross_entropy(head(body(to_compute(images))), to_compute(labels)).backward()
        opt_body.step()
        opt_head.step()
    return body, head


def test_split_steps_match_in_process_steps(
    device: torch.device, address: str, running_server: RunningServer
) -> None:
    # Prepare: the server's head is made when the session opens, on `device`.
    batches = _batches()
    link = ServerLink(address, settings("exact", seed=SEED + 1, max_batch_size=BATCH))
    trainer = SplitTrainer(
        body=build_body(SEED),
        link=link,
        run="exact",
        noise=LaplaceNoise(0.0),
        nopeek=0.0,
        lr=LR,
        batch_size=BATCH,
        seed=0,
    )
    # Execute
    for number, (images, labels) in enumerate(batches):
        trainer.step(StepId("exact", 1, number), images, labels, torch.arange(BATCH))
    body, head = _train_in_process(batches)
    server_head = running_server.sessions.get(link.session_id).head
    # Assert
    assert all(t.device == device for t in server_head.state_dict().values())
    assert next(trainer.body.parameters()).device == device
    for (name, split), (_, local) in zip(
        trainer.body.state_dict().items(), body.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(split, local, atol=1e-5, rtol=0, msg=f"body {name}")
    for (name, split), (_, local) in zip(
        server_head.state_dict().items(), head.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(split, local, atol=1e-5, rtol=0, msg=f"head {name}")
    # The weights moved: a test that compares two untrained models would prove nothing.
    untrained = build_body(SEED).state_dict()["features.6.weight"]
    assert (body.state_dict()["features.6.weight"] - untrained).abs().max() > 1e-4
    link.close()


def test_split_dp_sgd_steps_match_in_process_dp_sgd_steps_bit_for_bit(
    address: str, running_server: RunningServer
) -> None:
    # Prepare: Poisson batches vary in size, and may be empty (a noise-only step, no RPC).
    sizes = [BATCH, 0, 9, BATCH + 4, BATCH]
    generator = torch.Generator().manual_seed(1)
    batches = [
        (
            torch.rand(n, 1, 28, 28, generator=generator),
            torch.randint(0, 10, (n,), generator=generator),
        )
        for n in sizes
    ]

    def dp_sgd(body: torch.nn.Module) -> DPSGD:
        return DPSGD(
            body=body,
            noise_multiplier=1.1,
            max_grad_norm=1.0,
            expected_batch_size=BATCH,
            noise_seed=3,
            delta=1e-5,
            sample_rate=0.05,
        )

    link = ServerLink(address, settings("exact-dp", seed=SEED + 1, max_batch_size=max(sizes)))
    split_body = build_body(SEED)
    trainer = SplitTrainer(
        body=split_body,
        link=link,
        run="exact-dp",
        noise=LaplaceNoise(0.0),
        nopeek=0.0,
        lr=LR,
        batch_size=BATCH,
        seed=0,
        dp=dp_sgd(split_body),
    )
    body, head = build_body(SEED), build_head(SEED + 1)
    local_dp = dp_sgd(body)
    opt_body, opt_head = make_optimizer(body, LR), make_optimizer(head, LR)
    # Execute
    for number, (images, labels) in enumerate(batches):
        trainer.step(StepId("exact-dp", 1, number), images, labels, torch.arange(len(images)))
        opt_body.zero_grad(set_to_none=True)
        opt_head.zero_grad(set_to_none=True)
        if len(images):
            F.cross_entropy(head(body(images)), labels).backward()
            local_dp.privatise(epoch=1, batch=number)
            opt_head.step()
        else:
            local_dp.privatise(epoch=1, batch=number, empty=True)
        opt_body.step()
    server_head = running_server.sessions.get(link.session_id).head
    # Assert: the same numbers, bit for bit, and the same privacy spent.
    for (name, split), (_, local) in zip(
        trainer.body.state_dict().items(), body.state_dict().items(), strict=True
    ):
        assert torch.equal(split, local), f"body {name}"
    for (name, split), (_, local) in zip(
        server_head.state_dict().items(), head.state_dict().items(), strict=True
    ):
        assert torch.equal(split, local), f"head {name}"
    assert trainer.dp is not None and trainer.dp.accountant.steps == len(sizes)
    assert trainer.dp.epsilon() == local_dp.epsilon() > 0
    untrained = build_body(SEED).state_dict()["features.6.weight"]
    assert (body.state_dict()["features.6.weight"] - untrained).abs().max() > 1e-4
    link.close()
