"""The console scripts as real processes: a training run end to end, shutdown, and user errors."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import torch

from splitnn.common.checkpoints import load_checkpoint
from splitnn.common.codec import tensor_to_proto
from splitnn.common.processes import ProcessError, ServerProcess
from splitnn.common.reports import RunReport
from splitnn.proto import splitnn_pb2 as pb
from splitnn.proto import splitnn_pb2_grpc as pb_grpc
from splitnn.server.head import ANONYMOUS_OWNER
from tests.conftest import BIN, ENV, run_program

pytestmark = pytest.mark.slow  # starts the programs as processes

STARTUP_S = 60.0
RUN_S = 180.0
STEM = "mnist5k_00noise_00nopeek_epoch=1"  # the study's name for noise 0, NoPeek 0, epoch 1
CLEARLY_ABOVE_CHANCE = 40.0  # percent; guessing among ten classes gets 10


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=STARTUP_S)


def _run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_program(script, *args, cwd=cwd, timeout=RUN_S)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """splitnn-server on a free port, its models under tmp_path/server-models, its stderr in
    tmp_path/server.stderr."""
    with (tmp_path / "server.stderr").open("w") as log:
        args = ["--model-dir", str(tmp_path / "server-models")]
        with ServerProcess(args, log=log, start_timeout=STARTUP_S) as started:
            yield started


def _leave_a_session_open(address: str, run: str) -> None:
    """Opens a session and applies one step, then goes away without closing it."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.SplitLearningStub(channel)
        head = pb.HeadSpec(num_classes=10, lr=1e-3, seed=1)
        opened = stub.OpenSession(
            pb.OpenSessionRequest(
                run=run, cut_shape=[500], dtype="float32", max_batch_size=4, head=head
            ),
            timeout=30,
        )
        request = pb.TrainRequest(
            session_id=opened.session_id,
            step=pb.StepId(run=run, epoch=1, batch=0),
            activations=tensor_to_proto(torch.zeros(2, 500)),
            labels=tensor_to_proto(torch.tensor([3, 7])),
        )
        list(stub.Train(iter([request]), timeout=30))


def test_training_run_then_graceful_shutdown(server: ServerProcess, tmp_path: Path) -> None:
    client_dir = tmp_path / "client-models"
    # Five steps of 128 images at lr 1e-3 take mnist5k to about 70 % (measured 69.6 % test).
    flags = ["--dataset", "mnist5k", "--epochs", "1", "--max-steps", "5", "--lr", "1e-3"]
    flags += ["--json"]
    flags += ["--server", server.address, "--model-dir", str(client_dir)]

    result = _run("splitnn-client", *flags, cwd=tmp_path)
    _leave_a_session_open(server.address, "live-at-sigterm")
    server.process.send_signal(signal.SIGTERM)
    server_code = server.process.wait(timeout=STARTUP_S)

    assert result.returncode == 0, result.stderr
    report = RunReport.from_json(json.loads(result.stdout))  # the typed contract, checked
    assert (report.dataset, report.noise, report.best_epoch) == ("mnist5k", 0.0, 1)
    # Far above the 10 % of guessing among ten classes: the split model really trained.
    assert report.test_accuracy > CLEARLY_ABOVE_CHANCE, report
    assert report.val_accuracy > CLEARLY_ABOVE_CHANCE, report
    assert report.samples_per_second > 0
    body = client_dir / "classifiers" / f"{STEM}.ckpt"
    server_dir = tmp_path / "server-models"
    head = server_dir / "heads" / ANONYMOUS_OWNER / report.run / f"{STEM}.head.ckpt"
    assert Path(report.checkpoint) == body and server_dir / report.head_checkpoint == head
    assert json.loads(body.with_name(body.name + ".json").read_text())["epoch"] == 1
    assert load_checkpoint(body)[0] and load_checkpoint(head)[0]
    assert server_code == 0
    saved = server_dir / "server" / ANONYMOUS_OWNER / "live-at-sigterm" / "1-0.snapshot.ckpt"
    resume_state, manifest = load_checkpoint(saved)
    assert resume_state["steps_applied"] == 1 and manifest["run"] == "live-at-sigterm"
    assert "Traceback" not in (tmp_path / "server.stderr").read_text()


@dataclass(frozen=True)
class UserError:
    script: str
    args: tuple[str, ...]
    code: int
    says: str  # the error line names the culprit


USER_ERRORS = {
    "client-unreachable": UserError(
        "splitnn-client", ("--server", "127.0.0.1:1", "--connect-timeout", "1"), 3, "127.0.0.1:1"
    ),
    "client-dataset": UserError("splitnn-client", ("--dataset", "nope"), 2, "--dataset"),
    "client-noise": UserError("splitnn-client", ("--noise", "-1"), 2, "--noise"),
    "client-epochs": UserError("splitnn-client", ("--epochs", "0"), 2, "--epochs"),
    "client-no-port": UserError("splitnn-client", ("--server", "nohostport"), 2, "--server"),
    "client-port-not-a-number": UserError(
        "splitnn-client",
        ("--server", "127.0.0.1:notaport", "--connect-timeout", "1"),
        2,
        "--server",
    ),
    "server-port": UserError("splitnn-server", ("--port", "70000"), 2, "--port"),
    # TEST-NET-1: never an address of this machine, so the bind fails.
    "server-host": UserError(
        "splitnn-server", ("--host", "192.0.2.1", "--port", "0", "--insecure"), 1, "192.0.2.1"
    ),
    "server-plaintext-beyond-loopback": UserError(
        "splitnn-server", ("--host", "0.0.0.0", "--port", "0"), 2, "--insecure"
    ),
    "server-cert-without-key": UserError(
        "splitnn-server", ("--port", "0", "--tls-cert", __file__), 2, "--tls-key"
    ),
    "client-cert-without-ca": UserError(
        "splitnn-client",
        ("--tls-cert", __file__, "--tls-key", __file__),
        2,
        "--tls-ca",
    ),
}


@pytest.fixture(scope="module")
def user_error_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, subprocess.Popen[str]]]:
    """Starts every user-error command at once: each pays for a torch import, so in parallel."""
    root = tmp_path_factory.mktemp("user-errors")
    runs = {
        name: subprocess.Popen(
            [str(BIN / case.script), *case.args, "--model-dir", str(root / name)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=root,
            env=ENV,
        )
        for name, case in USER_ERRORS.items()
    }
    try:
        yield runs
    finally:
        for process in runs.values():
            _stop(process)


@pytest.mark.parametrize("name", list(USER_ERRORS))
def test_user_error_is_one_line_and_an_exit_code(
    user_error_runs: dict[str, subprocess.Popen[str]], name: str
) -> None:
    case = USER_ERRORS[name]

    stdout, stderr = user_error_runs[name].communicate(timeout=RUN_S)

    errors = [
        line for line in stderr.splitlines() if line.startswith(("Error:", f"{case.script}:"))
    ]
    assert user_error_runs[name].returncode == case.code, stderr
    assert len(errors) == 1 and case.says in errors[0], stderr
    assert "Traceback" not in stderr
    assert stdout == ""


def test_second_server_on_a_port_in_use_is_refused(server: ServerProcess, tmp_path: Path) -> None:
    port = int(server.address.rsplit(":", 1)[1])
    stderr = tmp_path / "second.stderr"

    with stderr.open("w") as log, pytest.raises(ProcessError, match=r"\(exit status 1\)"):
        ServerProcess(["--model-dir", str(tmp_path / "second-models")], log=log, port=port)

    assert "cannot listen" in stderr.read_text()
    assert "Traceback" not in stderr.read_text()
