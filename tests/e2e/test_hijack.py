"""A hijacking server as real processes: kill -9 and resume, and the scoring harness.

The holder is the unmodified `splitnn-client`; the server runs with --hijack fsha (a short
pre-training, a few steps). A server killed mid-run and restarted must end exactly like the
uninterrupted run: the holder's parameters and reports, the head, and the decoder snapshots.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import torch

from splitnn.attacker.validator import validator_path
from splitnn.common.checkpoints import load_checkpoint
from splitnn.common.processes import ServerProcess, child_env, program
from splitnn.server.head import ANONYMOUS_OWNER
from tests.e2e.test_crash_resume import RUN, Outcome, _assert_same_run, _client, _finish, _wait_for

pytestmark = pytest.mark.slow

# FLAGS with 8 steps an epoch: 2 epochs of 8 steps (a hijacked step costs the server about a
# second: its decoder and critic train too); a snapshot every 4, a save point every 5.
SHORT = ("--max-steps", "8")
STEPS = (4, 8, 12, 16)
SNAPSHOTS = tuple(f"decoder_step={step}.ckpt" for step in STEPS)


def _server(root: Path, *, port: int = 0) -> ServerProcess:
    log = (root / "server.log").open("a")
    flags = ["--model-dir", str(root / "server"), "--hijack", "fsha",
             "--hijack-pretrain-steps", "5", "--hijack-snapshot-every", "4",
             "--tap-log", str(root / "wire.log")]  # fmt: skip
    return ServerProcess(flags, log=log, port=port)


def _snapshots(root: Path) -> dict[str, dict[str, torch.Tensor]]:
    folder = root / "server" / "hijack" / ANONYMOUS_OWNER / RUN
    return {name: load_checkpoint(folder / name)[0] for name in SNAPSHOTS}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Outcome]:
    """The same run, never interrupted, deployed with indices so that it can be scored."""
    root = tmp_path_factory.mktemp("uninterrupted")
    with _server(root) as server:
        client = _client(server.address, root / "client", "--deploy", "--send-indices", *SHORT)
        return root, _finish(client, root / "server")


def test_a_hijacking_server_killed_mid_run_resumes_and_ends_the_same(
    reference: tuple[Path, Outcome], tmp_path: Path
) -> None:
    server = _server(tmp_path)
    port = int(server.address.rsplit(":", 1)[1])
    client = _client(server.address, tmp_path / "client", "--deploy", "--send-indices", *SHORT)
    saves = tmp_path / "server" / "server" / ANONYMOUS_OWNER / RUN
    _wait_for(lambda: any(saves.glob("*.point.ckpt")), "the first save point")
    server.process.kill()
    server.process.wait()
    interrupted = client.poll() is None
    time.sleep(1.0)
    with _server(tmp_path, port=port):
        outcome = _finish(client, tmp_path / "server")

    assert interrupted, "the run had ended before the kill"
    _assert_same_run(outcome, reference[1])
    ours, theirs = _snapshots(tmp_path), _snapshots(reference[0])
    for name in SNAPSHOTS:
        for key, value in theirs[name].items():
            torch.testing.assert_close(ours[name][key], value, rtol=0, atol=1e-6)


def test_splitnn_attack_hijacked_scores_every_snapshot(
    reference: tuple[Path, Outcome], tmp_path: Path
) -> None:
    root = reference[0]
    args = ["hijacked", "--from-log", str(root / "wire.log"),
            "--decoders", str(root / "server" / "hijack" / ANONYMOUS_OWNER),
            "--model-dir", str(tmp_path / "models"), "--curve", str(tmp_path / "curve.csv"),
            "--figure", str(tmp_path / "fig.png"), "--report", str(tmp_path / "report.json"),
            "--validator-epochs", "1", "--json"]  # fmt: skip

    done = subprocess.run([program("splitnn-attack"), *args], capture_output=True, text=True,
                          env=child_env(), timeout=600)  # fmt: skip

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["oracle"] == "hijacked"
    assert [row["step"] for row in result["curve"]] == list(STEPS)
    assert set(result["baselines"]) == {"mean_image", "class_mean_image"}
    assert result["images"] == 500
    assert all(0.0 < row["train_mse"] < 1.0 for row in result["curve"])
    assert 0.0 < result["mse"] < 1.0
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # its plot
    assert (tmp_path / "curve.csv").read_text().splitlines()[0] == (
        "step,mse,psnr,ssim,validator_accuracy,train_mse,train_ssim"
    )
    assert (tmp_path / "fig.png").stat().st_size > 0
    assert json.loads((tmp_path / "report.json").read_text())["oracle"] == "hijacked"
    assert validator_path(tmp_path / "models", "mnist5k", 0, 1).is_file()  # of the epochs asked
