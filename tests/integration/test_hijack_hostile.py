"""A hijacking server (--hijack fsha) refuses hostile input exactly as the honest one does.

The honest server's hostile-input tests run here again against a server started with
`hijack="fsha"`: malformed requests, limits, unknown sessions, other parties' runs. Beside
them, a refused request must leave the hijacking state (critic, buffer, decoder) untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import tests.integration.test_security as security_tests
from splitnn.proto import splitnn_pb2 as pb
from splitnn.server import hijack
from splitnn.server.app import RunningServer, build_server
from splitnn.server.config import ServerConfig
from splitnn.server.hijack import HijackHead
from tests.conftest import refusal, start_server
from tests.integration.test_bad_input import (  # noqa: F401  (run here against the hijacker)
    BAD_BATCHES,
    Opened,
    _train_request,
    opened,
    stub,
    test_bad_eval_request_changes_nothing,
    test_bad_open_session_leaves_the_live_session_alone,
    test_bad_train_request_changes_nothing,
    test_message_over_the_receive_limit_is_resource_exhausted,
    test_retried_step_is_answered_from_the_cache,
    test_unary_calls_of_an_unknown_session_are_unauthenticated,
)
from tests.integration.test_security import (  # noqa: F401
    pki,
    test_holder_b_cannot_touch_holder_as_run,
)

# Each test's session takes a hijacked step first, so these run in `make test` only.
pytestmark = pytest.mark.slow

HIJACK: dict[str, Any] = {"hijack": "fsha", "hijack_pretrain_steps": 2}


@pytest.fixture
def running_server(tmp_path: Path, tap_records: list[pb.TapRecord]) -> Iterator[RunningServer]:
    """The hostile-input tests' server, hijacking."""
    cfg = ServerConfig(port=0, model_dir=tmp_path / "server-models", grace=1.0, **HIJACK)
    running = build_server(cfg, tap=tap_records.append)
    yield running
    running.shutdown(grace=0.0)


@pytest.fixture(autouse=True)
def _hijacking_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ownership tests' servers hijack too."""

    def serve(tmp_path: Path, **changes: Any) -> RunningServer:
        return start_server(tmp_path / "models", **HIJACK, **changes)

    monkeypatch.setattr(security_tests, "_serve", serve)


@pytest.fixture(autouse=True)
def _cheap_hijacked_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """One critic update and a decoder step on 8 public images per hijacked step (instead of
    10 and 64: about 0.6 s a step): what is tested here is what a refused request leaves,
    not how well the hijacking learns (tests/unit/test_hijack.py)."""
    monkeypatch.setattr(hijack, "CRITIC_STEPS", 1)
    monkeypatch.setattr(hijack, "PUBLIC_BATCH", 8)


def _hijack_state(head: HijackHead) -> list[torch.Tensor]:
    parts = [*head.critic.state_dict().values(), *head.decoder.state_dict().values()]
    return [t.clone() for t in [*parts, head.buffer_cut, head.buffer_labels]]


@pytest.mark.parametrize("name", sorted(BAD_BATCHES))
def test_a_refused_step_leaves_the_hijacking_state_alone(opened: Opened, name: str) -> None:  # noqa: F811
    head = opened.server.sessions.get(opened.session_id).head
    assert isinstance(head, HijackHead)
    before = _hijack_state(head)
    request = _train_request(opened.session_id, batch=1)
    BAD_BATCHES[name](request)

    refusal(lambda: list(opened.stub.Train(iter([request]), timeout=10)))

    after = _hijack_state(head)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_hijack_is_refused_with_training_groups(tmp_path: Path) -> None:
    from splitnn.server.group_spec import GroupSpec

    group = GroupSpec.parse("clinics=round-robin:2")
    with pytest.raises(ValueError, match="--group"):
        start_server(tmp_path, groups=(group,), **HIJACK)
