"""Crashes as a deployment meets them: kill -9 of either side mid-run, SIGTERM after garbage.

A run interrupted anywhere must end exactly like the same run uninterrupted: the same part-1 and
head parameters, the same reported accuracies. Every party is a real process on loopback.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch

from splitnn.common.checkpoints import load_checkpoint
from splitnn.common.processes import ServerProcess, child_env, program
from splitnn.server.head import ANONYMOUS_OWNER
from tests.conftest import idle_train_streams, send_raw

pytestmark = pytest.mark.slow

RUN = "mnist5k_00noise_00nopeek_seed3"  # the default run name of FLAGS
FLAGS = ["--dataset", "mnist5k", "--epochs", "2", "--max-steps", "16", "--save-every", "5",
         "--seed", "3", "--json"]  # fmt: skip
RUN_S = 240.0
COMPARED = ("best_epoch", "train_accuracy", "val_accuracy", "test_accuracy")


@dataclass(frozen=True)
class Outcome:
    report: dict[str, Any]
    body: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]
    stderr: str


def _client(server: str, model_dir: Path, *extra: str) -> subprocess.Popen[str]:
    args = [*FLAGS, "--server", server, "--model-dir", str(model_dir), *extra]
    return subprocess.Popen([program("splitnn-client"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=child_env())  # fmt: skip


def _finish(client: subprocess.Popen[str], server_dir: Path) -> Outcome:
    stdout, stderr = client.communicate(timeout=RUN_S)
    assert client.returncode == 0, stderr
    report = json.loads(stdout)
    body = load_checkpoint(Path(report["checkpoint"]))[0]
    head = load_checkpoint(server_dir / report["head_checkpoint"])[0]  # named in its folder
    return Outcome(report, body, head, stderr)


def _server(root: Path, *, port: int = 0) -> ServerProcess:
    log = (root / "server.log").open("a")
    return ServerProcess(["--model-dir", str(root / "server")], log=log, port=port)


def _wait_for(found: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not found():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout} s")
        time.sleep(0.02)


def _assert_same_run(outcome: Outcome, reference: Outcome) -> None:
    assert {k: outcome.report[k] for k in COMPARED} == {k: reference.report[k] for k in COMPARED}
    assert outcome.report["history"] == [
        {**h, "seconds": o["seconds"]}
        for h, o in zip(reference.report["history"], outcome.report["history"], strict=True)
    ]
    for part in ("body", "head"):
        mine, theirs = getattr(outcome, part), getattr(reference, part)
        assert mine.keys() == theirs.keys()
        for name, value in theirs.items():
            torch.testing.assert_close(mine[name], value, rtol=0, atol=1e-6, msg=f"{part} {name}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    """The same run, never interrupted."""
    root = tmp_path_factory.mktemp("uninterrupted")
    with _server(root) as server:
        return _finish(_client(server.address, root / "client"), root / "server")


def test_server_killed_at_its_first_save_restarts_and_the_holder_finishes_the_same(
    reference: Outcome, tmp_path: Path
) -> None:
    server = _server(tmp_path)
    port = int(server.address.rsplit(":", 1)[1])
    client = _client(server.address, tmp_path / "client")
    saves = tmp_path / "server" / "server" / ANONYMOUS_OWNER / RUN
    # The trigger is the first save point, not a time: the holder is then somewhere in the steps
    # after it, which the restarted server has lost and must be sent again.
    _wait_for(lambda: any(saves.glob("*.point.ckpt")), "the first save point")
    server.process.kill()
    server.process.wait()
    interrupted = client.poll() is None
    time.sleep(1.0)  # the holder retries against nothing for a while
    with _server(tmp_path, port=port):
        outcome = _finish(client, tmp_path / "server")

    assert interrupted, "the run had ended before the kill"
    assert "the server lost the session" in outcome.stderr
    _assert_same_run(outcome, reference)
    heads = list((tmp_path / "server" / "heads").rglob("*.head.ckpt"))
    assert heads == [tmp_path / "server" / outcome.report["head_checkpoint"]]  # earlier removed


def test_holder_killed_at_its_first_save_resumes_with_resume_and_finishes_the_same(
    reference: Outcome, tmp_path: Path
) -> None:
    client_dir = tmp_path / "client"
    with _server(tmp_path) as server:
        client = _client(server.address, client_dir)
        state = client_dir / "client" / f"{RUN}.ckpt"
        _wait_for(state.exists, "the holder's first save")  # the trigger, as above
        client.kill()
        client.communicate()
        unresumed = _client(server.address, client_dir)
        _, refusal = unresumed.communicate(timeout=RUN_S)
        outcome = _finish(_client(server.address, client_dir, "--resume"), tmp_path / "server")

    assert client.returncode == -signal.SIGKILL, "the run had ended before the kill"
    assert unresumed.returncode == 2 and "--resume" in refusal and "Traceback" not in refusal
    assert outcome.report["resumed_from"] is not None
    _assert_same_run(outcome, reference)
    assert not state.exists()  # a finished run leaves no resume state


def _garbage_on_every_rpc(address: str) -> set[grpc.StatusCode]:
    codes = set()
    with grpc.insecure_channel(address) as channel:
        for method in ("Train", "Evaluate", "OpenSession", "Checkpoint", "Restore",
                       "CloseSession"):  # fmt: skip
            try:
                send_raw(channel, method, b"\xff\xfe\xfd")
            except grpc.RpcError as error:
                codes.add(error.code())
    return codes


def test_sigterm_after_garbage_stops_within_grace_and_saves(tmp_path: Path) -> None:
    grace = 2.0
    log = (tmp_path / "server.log").open("a")
    server = ServerProcess(["--model-dir", str(tmp_path / "m"), "--grace", str(grace)], log=log)
    codes = _garbage_on_every_rpc(server.address)
    with grpc.insecure_channel(server.address) as channel:
        _, quiet = idle_train_streams(channel, 1)
        holder = _client(server.address, tmp_path / "client", "--epochs", "5")
        _wait_for(lambda: any((tmp_path / "m" / "server").rglob("*.point.ckpt")), "a save")
        began = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=grace + 5.0)
        seconds = time.monotonic() - began
        quiet.set()
    holder.kill()
    holder.communicate()

    assert codes == {grpc.StatusCode.INVALID_ARGUMENT}
    assert code == 0, f"exit {code} after {seconds:.1f} s"
    saved = list((tmp_path / "m" / "server" / ANONYMOUS_OWNER / RUN).glob("*.ckpt"))
    assert saved, "the live session was not saved on SIGTERM"
    assert "Traceback" not in (tmp_path / "server.log").read_text()
