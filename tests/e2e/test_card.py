"""The project's card commands, run exactly as written, as processes.

The card introduces splitnn with `splitnn-server`, `splitnn-client --noise 0.5` and
`splitnn-attack --from-log LOG` (and `docker compose up`, tried in test_compose.py). The argument
lists below are those commands word for word; what a short test run must change (a free port, one
short epoch, the wire log) comes through each program's environment variables, as a user's
deployment would set them.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BIN, ENV

pytestmark = pytest.mark.slow  # starts the programs as processes and trains

START_S = 60.0
RUN_S = 300.0
STEM = "mnist5k_05noise_00nopeek_epoch=1"  # noise 0.5, NoPeek 0, one epoch
SCORES = ("mse", "psnr", "ssim", "dcor", "validator_accuracy")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / argv[0]), *argv[1:]],
        cwd=cwd,
        env={**ENV, **env},
        capture_output=True,
        text=True,
        timeout=RUN_S,
        check=False,
    )


def test_the_card_commands_work_as_written(tmp_path: Path) -> None:
    port = _free_port()
    server_env = {"SPLITNN_SERVER_PORT": str(port), "SPLITNN_SERVER_TAP_LOG": "wire.log"}
    server = subprocess.Popen(
        [str(BIN / "splitnn-server")],
        cwd=tmp_path,
        env={**ENV, **server_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == f"listening on 127.0.0.1:{port}"

        client_env = {
            "SPLITNN_CLIENT_SERVER": f"127.0.0.1:{port}",
            "SPLITNN_CLIENT_EPOCHS": "1",
            "SPLITNN_CLIENT_MAX_STEPS": "8",
            "SPLITNN_CLIENT_LR": "1e-3",
            # The evaluation harness: also send the deployment-time tensors, with their indices.
            "SPLITNN_CLIENT_DEPLOY": "1",
            "SPLITNN_CLIENT_SEND_INDICES": "1",
        }
        client = _run(["splitnn-client", "--noise", "0.5"], tmp_path, client_env)
        assert client.returncode == 0, client.stderr
        assert "test accuracy" in client.stdout.lower(), client.stdout
    finally:
        server.send_signal(signal.SIGTERM)
        _, server_err = server.communicate(timeout=START_S)
    assert server.returncode == 0, server_err
    assert "COLLUSION MODE" in server_err

    classifier = tmp_path / "models" / "classifiers" / f"{STEM}.ckpt"
    assert classifier.is_file()
    attack_env = {"SPLITNN_ATTACK_RUN_EPOCHS": "1", "SPLITNN_ATTACK_RUN_VALIDATOR_EPOCHS": "1"}
    options = ["--classifier", str(classifier), "--json"]
    short = _run(["splitnn-attack", "--from-log", "wire.log", *options], tmp_path, attack_env)
    long = _run(["splitnn-attack", "run", "--from-log", "wire.log", *options], tmp_path, attack_env)

    assert short.returncode == 0, short.stderr
    assert long.returncode == 0, long.stderr
    short_scores, long_scores = (json.loads(r.stdout.splitlines()[-1]) for r in (short, long))
    assert {k: short_scores[k] for k in SCORES} == {k: long_scores[k] for k in SCORES}
    assert short_scores["source"] == "wire.log" and short_scores["images"] == 500
    assert 0 < short_scores["mse"] < 1 and -1 <= short_scores["ssim"] <= 1
