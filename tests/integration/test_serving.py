"""A shared server under load and abuse: many holders, idle streams, any bytes, limits, expiry.

Each test runs a real server on port 0 with the CLI's default limits unless it tests a limit.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from torch.nn import functional as F

from splitnn.client.split_trainer import SplitTrainer
from splitnn.client.transport import ServerLink, ServerRefused
from splitnn.common.codec import StepId, tensor_to_proto
from splitnn.common.models import CUT_SHAPE, build_body, build_head, make_optimizer
from splitnn.common.noise import LaplaceNoise
from splitnn.proto import splitnn_pb2 as pb
from splitnn.proto import splitnn_pb2_grpc as pb_grpc
from splitnn.server import handlers as handlers_module
from splitnn.server.app import RunningServer, build_server
from splitnn.server.config import ServerConfig
from splitnn.server.head import ANONYMOUS_OWNER
from tests.conftest import (
    address_of,
    idle_train_streams,
    refusal,
    seeded_batch,
    send_raw,
    settings,
    start_server,
)
from tests.proxy import CuttingProxy

B = 8
TIMEOUT = 30.0
Code = grpc.StatusCode


def _serve(tmp_path: Path, **changes: Any) -> RunningServer:
    return start_server(tmp_path / "models", **changes)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    running = _serve(tmp_path)  # the CLI's defaults
    yield running
    running.shutdown(grace=0.0)


def _holder(address: str, run: str, steps: int) -> int:
    """A data holder's session: trains, evaluates, checkpoints, restores; returns steps done.

    Keeps its Train and Evaluate streams open throughout, as a real data holder does.
    """
    with ServerLink(address, settings(run, max_batch_size=B), step_timeout=TIMEOUT) as link:
        for batch in range(steps):
            link.train_step(StepId(run, 1, batch), *seeded_batch(batch))
            link.evaluate(StepId(run, 1, batch), seeded_batch(100 + batch)[0], split="val")
        link.checkpoint(f"{run}-head", replace_previous=True)
        link.restore(f"{run}-head")
        link.close(finished=True)
    return steps


def _reference_head(steps: int) -> dict[str, torch.Tensor]:
    """The head after `steps` batches of `_batch`, each applied exactly once, in process."""
    spec = settings()
    head = build_head(spec.seed, spec.num_classes)
    optimizer = make_optimizer(head, spec.lr)
    for batch in range(steps):
        activations, labels = seeded_batch(batch)
        optimizer.zero_grad()
        F.cross_entropy(head(activations), labels).backward()
        optimizer.step()
    return head.state_dict()


def _health(address: str, timeout: float = 1.0) -> int:
    with grpc.insecure_channel(address) as channel:
        request = health_pb2.HealthCheckRequest(service="splitnn.v1.SplitLearning")
        status: int = health_pb2_grpc.HealthStub(channel).Check(request, timeout=timeout).status
        return status


def test_sixteen_holders_at_once_all_finish(server: RunningServer) -> None:
    runs = [f"holder-{k}" for k in range(16)]

    with ThreadPoolExecutor(len(runs)) as pool:
        done = list(pool.map(lambda run: _holder(address_of(server), run, steps=6), runs))

    assert done == [6] * 16
    heads = server.sessions.model_dir / "heads" / ANONYMOUS_OWNER
    assert sorted(str(p.relative_to(heads)) for p in heads.rglob("*.head.ckpt")) == sorted(
        f"{run}/{run}-head.head.ckpt" for run in runs
    )
    assert len(server.sessions) == 0


def test_health_and_a_holder_are_served_beside_64_idle_streams(server: RunningServer) -> None:
    address = address_of(server)
    with grpc.insecure_channel(address) as channel:
        streams, release = idle_train_streams(channel, 64)
        try:
            deadline = time.monotonic() + 10  # until all 64 have reached the server
            while server.service.open_calls < 64 and time.monotonic() < deadline:
                time.sleep(0.01)
            status = _health(address, timeout=1.0)
            served = _holder(address, "beside-idle", steps=3)
            open_calls = server.service.open_calls
        finally:
            release.set()
            for stream in streams:
                stream.cancel()

    assert status == health_pb2.HealthCheckResponse.SERVING
    assert served == 3
    assert open_calls >= 64  # the idle streams really were open on the server


METHODS = ["OpenSession", "Checkpoint", "Restore", "CloseSession", "Train", "Evaluate"]
GARBAGE = {
    "bad-tag": b"\xff\xff\xff\xff",
    "truncated-length": b"\x0a\x64abc",  # field 1, 100 bytes announced, 3 sent
    "invalid-utf8-in-a-string": b"\x0a\x02\xc3\x28",  # field 1 (a string in every request)
}


@pytest.mark.parametrize("payload", list(GARBAGE.values()), ids=list(GARBAGE))
@pytest.mark.parametrize("method", METHODS)
def test_undecodable_bytes_are_invalid_argument(
    server: RunningServer, method: str, payload: bytes
) -> None:
    with (
        grpc.insecure_channel(address_of(server)) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        send_raw(channel, method, payload)

    assert refused.value.code() == Code.INVALID_ARGUMENT
    assert "not a valid" in str(refused.value.details())
    assert _holder(address_of(server), "after-garbage", steps=2) == 2  # still trains


def test_tap_refuses_undecodable_bytes(tmp_path: Path) -> None:
    running = build_server(
        ServerConfig(port=0, model_dir=tmp_path / "m", tap=True, anonymous_tap=True)
    )
    try:
        with grpc.insecure_channel(address_of(running)) as channel:
            subscribe = channel.unary_stream(
                "/splitnn.v1.Tap/Subscribe", request_serializer=None, response_deserializer=None
            )
            with pytest.raises(grpc.RpcError) as refused:
                list(subscribe(GARBAGE["bad-tag"], timeout=TIMEOUT))
    finally:
        running.shutdown(grace=0.0)

    assert refused.value.code() == Code.INVALID_ARGUMENT


def _open(channel: grpc.Channel, run: str) -> pb.OpenSessionReply:
    request = pb.OpenSessionRequest(
        run=run, cut_shape=list(CUT_SHAPE), dtype="float32", max_batch_size=B,
        head=pb.HeadSpec(num_classes=10, lr=1e-3, seed=1),
    )  # fmt: skip
    call = channel.unary_unary(
        "/splitnn.v1.SplitLearning/OpenSession",
        request_serializer=pb.OpenSessionRequest.SerializeToString,
        response_deserializer=pb.OpenSessionReply.FromString,
    )
    reply: pb.OpenSessionReply = call(request, timeout=5.0)
    return reply


def test_one_session_over_the_limit_is_resource_exhausted_at_once(tmp_path: Path) -> None:
    running = _serve(tmp_path, max_sessions=2)
    try:
        with grpc.insecure_channel(address_of(running)) as channel:
            _open(channel, "first")
            _open(channel, "second")
            # A deadline, so a hang would read DEADLINE_EXCEEDED, not RESOURCE_EXHAUSTED.
            code, detail = refusal(lambda: _open(channel, "third"))
            again = _open(channel, "second")  # reopening a live run takes no new place
    finally:
        running.shutdown(grace=0.0)

    assert code == Code.RESOURCE_EXHAUSTED
    assert "--max-sessions" in detail
    assert again.session_id


def test_one_call_over_the_stream_limit_is_resource_exhausted_at_once(tmp_path: Path) -> None:
    running = _serve(tmp_path, max_streams=4)
    try:
        with grpc.insecure_channel(address_of(running)) as channel:
            _, release = idle_train_streams(channel, 4)
            deadline = time.monotonic() + 10
            while running.service.open_calls < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
            code, detail = refusal(lambda: _open(channel, "fifth"))
            status = _health(address_of(running))
            release.set()
    finally:
        running.shutdown(grace=0.0)

    assert code == Code.RESOURCE_EXHAUSTED and "--max-streams" in detail
    assert status == health_pb2.HealthCheckResponse.SERVING  # health is not counted


def test_a_request_over_the_inflight_limit_is_resource_exhausted_at_once(tmp_path: Path) -> None:
    running = _serve(tmp_path, max_inflight=1)
    busy = threading.Event()
    running.executor.submit(busy.wait, 30)  # the compute thread is taken
    try:
        with grpc.insecure_channel(address_of(running)) as channel, ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(_open, channel, "queued")  # takes the one place in flight
            deadline = time.monotonic() + 10
            while running.service.inflight < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            code, detail = refusal(lambda: _open(channel, "one-too-many"))
            busy.set()
            served = waiting.result(timeout=TIMEOUT)
    finally:
        busy.set()
        running.shutdown(grace=0.0)

    assert code == Code.RESOURCE_EXHAUSTED and "--max-inflight" in detail
    assert served.session_id


def test_idle_session_expires_saved_and_its_holder_resumes(tmp_path: Path) -> None:
    running = _serve(tmp_path, session_ttl=0.5)
    run = settings().run
    try:
        with ServerLink(address_of(running), settings(max_batch_size=B)) as link:
            for batch in range(2):
                link.train_step(StepId(run, 1, batch), *seeded_batch(batch))
            first_id = link.session_id
            deadline = time.monotonic() + 20
            while len(running.sessions) and time.monotonic() < deadline:
                time.sleep(0.05)
            expired = len(running.sessions) == 0
            saves = [s.path.name for s in running.sessions.store_of().saves(run)]
            link.train_step(StepId(run, 1, 2), *seeded_batch(2))  # the link reopens the session
            session = running.sessions.get(link.session_id)
            resumed_id, steps = link.session_id, session.head.steps_applied
            weights = {k: v.clone() for k, v in session.head.state_dict().items()}
    finally:
        running.shutdown(grace=0.0)

    assert expired and saves == ["1-1.snapshot.ckpt"]
    assert resumed_id != first_id and steps == 3
    for name, value in _reference_head(3).items():
        torch.testing.assert_close(weights[name], value, rtol=0, atol=1e-6, msg=name)


def test_shutdown_is_not_held_by_idle_streams(tmp_path: Path) -> None:
    running = _serve(tmp_path, grace=30.0)
    with grpc.insecure_channel(address_of(running)) as channel:
        _, release = idle_train_streams(channel, 8)
        opened = _open(channel, "live")
        train = channel.stream_stream(
            "/splitnn.v1.SplitLearning/Train",
            request_serializer=pb.TrainRequest.SerializeToString,
            response_deserializer=pb.TrainReply.FromString,
        )
        activations, labels = seeded_batch(0)
        request = pb.TrainRequest(
            session_id=opened.session_id, step=pb.StepId(run="live", epoch=1, batch=0),
            activations=tensor_to_proto(activations), labels=tensor_to_proto(labels),
        )  # fmt: skip
        list(train(iter([request]), timeout=TIMEOUT))

        stopper = threading.Thread(target=running.shutdown, args=(30.0,))
        stopper.start()
        stopper.join(timeout=10)  # far less than the 30 s grace
        stopped = not stopper.is_alive()
        release.set()

    assert stopped
    assert [s.path.name for s in running.sessions.store_of().saves("live")] == ["1-0.snapshot.ckpt"]


def test_a_step_past_its_timeout_is_sent_again_and_applied_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    running = _serve(tmp_path)
    busy = threading.Event()
    run = settings().run
    try:
        with ServerLink(
            address_of(running), settings(max_batch_size=B), step_timeout=0.5, reconnect_timeout=30
        ) as link:
            running.executor.submit(busy.wait, 30)  # the head is stuck for a while
            threading.Timer(1.5, busy.set).start()
            reply = link.train_step(StepId(run, 1, 0), *seeded_batch(0))
            session = running.sessions.get(link.session_id)
            steps = session.head.steps_applied
            weights = {k: v.clone() for k, v in session.head.state_dict().items()}
    finally:
        busy.set()
        running.shutdown(grace=0.0)

    assert "no reply within 0.5 s (step timeout)" in caplog.text  # it was sent again
    assert steps == 1  # and applied once
    assert torch.isfinite(reply.gradient).all()
    for name, value in _reference_head(1).items():
        torch.testing.assert_close(weights[name], value, rtol=0, atol=1e-6, msg=name)


class _CutOnce(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return Code.UNAVAILABLE

    def details(self) -> str:
        return "connection cut after the request was sent (test)"


def test_open_session_cut_once_is_retried(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_stub = pb_grpc.SplitLearningStub
    calls: list[int] = []

    def stub_cutting_the_first_open(channel: grpc.Channel) -> Any:
        stub = real_stub(channel)
        open_session = stub.OpenSession

        def cut_once(request: pb.OpenSessionRequest, **kwargs: Any) -> pb.OpenSessionReply:
            reply: pb.OpenSessionReply = open_session(request, **kwargs)  # opened; reply lost
            calls.append(1)
            if len(calls) == 1:
                raise _CutOnce()
            return reply

        stub.OpenSession = cut_once
        return stub

    monkeypatch.setattr(pb_grpc, "SplitLearningStub", stub_cutting_the_first_open)
    run = settings().run

    with ServerLink(address_of(server), settings(max_batch_size=B), connect_timeout=30) as link:
        link.train_step(StepId(run, 1, 0), *seeded_batch(0))
        live = len(server.sessions)

    assert len(calls) == 2 and live == 1


@dataclass(frozen=True)
class Trained:
    body: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]
    steps_applied: int


def _train_through(address: str, server: RunningServer, steps: int) -> Trained:
    """Trains part 1 for `steps` seeded batches (noise b = 0.5) through `address`."""
    run = "cut"
    generator = torch.Generator().manual_seed(11)
    with ServerLink(
        address, settings(run, max_batch_size=32), step_timeout=10.0, reconnect_timeout=60.0
    ) as link:
        trainer = SplitTrainer(
            body=build_body(7),
            link=link,
            run=run,
            noise=LaplaceNoise(0.5, seed=2),
            nopeek=0.0,
            lr=1e-3,
            batch_size=32,
            seed=0,
        )
        for batch in range(steps):
            images = torch.rand(32, 1, 28, 28, generator=generator)
            labels = torch.randint(0, 10, (32,), generator=generator)
            trainer.step(StepId(run, 1, batch), images, labels)
        session = server.sessions.get(link.session_id)
        return Trained(
            trainer.body.state_dict(), session.head.state_dict(), session.head.steps_applied
        )


@pytest.mark.slow  # 2 x 80 training steps through a cutting proxy
def test_steps_under_connection_cuts_apply_exactly_once(tmp_path: Path) -> None:
    uncut, cut = _serve(tmp_path / "uncut"), _serve(tmp_path / "cut")
    try:
        reference = _train_through(address_of(uncut), uncut, 80)
        with CuttingProxy(address_of(cut), seed=5) as proxy:
            trained = _train_through(proxy.address, cut, 80)
            cuts = proxy.cuts
    finally:
        uncut.shutdown(grace=0.0)
        cut.shutdown(grace=0.0)

    assert cuts >= 2  # the connection really was cut while training
    assert trained.steps_applied == reference.steps_applied == 80
    for part in ("body", "head"):
        mine, theirs = getattr(trained, part), getattr(reference, part)
        for name, value in theirs.items():
            assert torch.equal(mine[name], value), f"{part} {name}"


def test_a_checkpoint_reply_names_the_head_within_the_model_folder_only(
    server: RunningServer,
) -> None:
    run = settings().run
    with ServerLink(address_of(server), settings(max_batch_size=B)) as link:
        link.train_step(StepId(run, 1, 0), *seeded_batch(0))
        name = link.checkpoint("best", replace_previous=True)

    assert name == f"heads/{ANONYMOUS_OWNER}/{run}/best.head.ckpt"
    assert (server.sessions.model_dir / name).is_file()


def test_an_unreadable_resume_state_is_refused_without_the_servers_paths(
    server: RunningServer,
) -> None:
    run = settings().run
    with ServerLink(address_of(server), settings(max_batch_size=B)) as link:
        link.train_step(StepId(run, 1, 0), *seeded_batch(0), save=True)
    saved = server.sessions.store_of().saves(run)
    for save in saved:
        save.path.write_bytes(b"not a checkpoint")
    resuming = dataclasses.replace(settings(max_batch_size=B), resume=True)

    with pytest.raises(ServerRefused) as refused:
        ServerLink(address_of(server), resuming, resume_at=StepId(run, 1, 0))

    detail = str(refused.value)
    assert saved and f"run {run!r} at step 1-0 cannot be read" in detail
    assert str(server.sessions.model_dir) not in detail and ".ckpt" not in detail


def test_steps_run_on_the_event_loop_when_idle_and_after_queued_work_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = _serve(tmp_path)
    applied: list[tuple[str, int]] = []  # (thread, work the executor had finished by then)
    finished = [0]
    decode = handlers_module._decode_batch

    def watched(*args: Any, **kwargs: Any) -> Any:
        applied.append((threading.current_thread().name, finished[0]))
        return decode(*args, **kwargs)

    monkeypatch.setattr(handlers_module, "_decode_batch", watched)
    release = threading.Event()

    def stuck() -> None:
        release.wait(30)
        finished[0] += 1

    run = settings().run
    try:
        with ServerLink(address_of(running), settings(max_batch_size=B)) as link:
            link.train_step(StepId(run, 1, 0), *seeded_batch(0))  # the executor is idle
            running.executor.submit(stuck)  # now it is not
            threading.Timer(0.5, release.set).start()
            link.train_step(StepId(run, 1, 1), *seeded_batch(1))
            steps = running.sessions.get(link.session_id).head.steps_applied
    finally:
        release.set()
        running.shutdown(grace=0.0)

    (first_thread, _), (second_thread, done_before_second) = applied
    assert not first_thread.startswith("splitnn-compute")
    assert not second_thread.startswith("splitnn-compute")
    assert done_before_second == 1  # it waited for the work queued before it
    assert steps == 2
