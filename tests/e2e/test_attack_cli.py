"""`splitnn-attack run` as a real process against real processes: live from a collusion-mode
`splitnn-server --tap`, and from its wire log, intact and with a torn last record.

One module-wide scenario: a victim `splitnn-client` trains two steps; an attacker subscribes to
the server's live tap; the victim redeploys its checkpoint without noise (the attack-evaluation
images cross the wire: the live attacker inverts them), then once more with post-training noise
b = 1; the server stops, leaving its wire log.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from splitnn.attacker.validator import build_validator, validator_path
from splitnn.common.checkpoints import save_checkpoint
from splitnn.common.processes import ServerProcess
from splitnn.common.seeds import SEEDING
from splitnn.common.wirelog import read_wirelog
from tests.conftest import BIN, ENV, run_program

pytestmark = pytest.mark.slow  # about a minute and a half on two cores: five processes in turn

RUN_S = 300.0
SUBSCRIBED_DEADLINE_S = 120.0
DEPLOYED = 500  # mnist5k's attack-evaluation slice, one record on the wire
LATER_NOISE = 1.0  # the second deployment's post-training noise
# A small, quick attacker: the study's decoder, one epoch on a fifth of the auxiliary images.
ATTACKER = ["--decoder", "study", "--epochs", "1", "--aux-fraction", "0.2", "--json"]


@dataclass(frozen=True)
class Scenario:
    root: Path
    classifier: Path
    wirelog: Path
    tap_address: str
    live: subprocess.CompletedProcess[str]

    def attack(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`splitnn-attack -q run --classifier ... ARGS` with the scenario's small attacker."""
        return _program(
            self.root,
            "splitnn-attack",
            *("-q", "run", "--classifier", str(self.classifier), *ATTACKER),
            *("--model-dir", str(self.root / "models")),
            *args,
        )


def _program(root: Path, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_program(name, *args, cwd=root, timeout=RUN_S)


def _report(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr[-3000:]
    report: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return report


def _wait_for_subscriber(server_log: Path, attacker: subprocess.Popen[str]) -> None:
    """Returns once the server has logged the attacker's tap subscription; fails otherwise."""
    deadline = time.monotonic() + SUBSCRIBED_DEADLINE_S
    while "tap subscriber" not in server_log.read_text():
        if attacker.poll() is not None:
            pytest.fail(f"the attacker exited ({attacker.returncode}) before subscribing")
        if time.monotonic() > deadline:
            pytest.fail(f"no tap subscriber within {SUBSCRIBED_DEADLINE_S:g} s")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    root = tmp_path_factory.mktemp("attack")
    models = root / "models"
    # A stand-in validator: these tests check what is attacked, not how well it classifies.
    save_checkpoint(
        validator_path(models, "mnist5k", 0),
        build_validator(0, 10).state_dict(),
        {"part": "validator", "seeding": SEEDING},
    )
    wirelog = root / "wire.log"
    server_log = root / "server.log"
    with server_log.open("w") as log:
        server = ServerProcess(
            [
                "--model-dir",
                str(root / "server"),
                "--tap",
                "--anonymous-tap",
                "--tap-log",
                str(wirelog),
            ],
            log=log,
        )
        with server:
            victim = ["--server", server.address, "--model-dir", str(models), "-q", "--json"]
            trained = _report(
                _program(root, "splitnn-client", *victim, "--epochs", "1", "--max-steps", "2")
            )
            classifier = Path(trained["checkpoint"])
            live_args = [*ATTACKER, "--classifier", str(classifier), "--live", server.address]
            attacker = subprocess.Popen(
                [str(BIN / "splitnn-attack"), "-q", "run", *live_args],
                cwd=root,
                env=ENV,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                _wait_for_subscriber(server_log, attacker)
                redeploy = ["--from-checkpoint", str(classifier), "--deploy", "--send-indices"]
                _report(_program(root, "splitnn-client", *victim, *redeploy))
                stdout, stderr = attacker.communicate(timeout=RUN_S)
            finally:
                if attacker.poll() is None:
                    attacker.kill()
                    attacker.wait()
            live = subprocess.CompletedProcess(attacker.args, attacker.returncode, stdout, stderr)
            noisy = [*redeploy, "--eval-noise", str(LATER_NOISE)]
            _report(_program(root, "splitnn-client", *victim, *noisy))
    # The server has stopped (SIGTERM, graceful): its wire log is complete.
    yield Scenario(root, classifier, wirelog, server.address, live)


def _deployments(path: Path) -> list[int]:
    """Rows of each record of the attack-evaluation split in the wire log, in order."""
    return [r.activations.shape[0] for r in read_wirelog(path).records if r.split == "attack"]


def test_live_attack_inverts_the_whole_deployment_it_saw_on_the_tap(scenario: Scenario) -> None:
    report = _report(scenario.live)

    assert report["source"] == f"live tap {scenario.tap_address}"
    assert report["images"] == DEPLOYED
    assert report["log_problem"] is None
    assert report["classifier"] == str(scenario.classifier)
    assert (scenario.root / report["figure"]).stat().st_size > 0


def test_attack_from_a_truncated_log_uses_every_intact_record_and_reports_the_tail(
    scenario: Scenario,
) -> None:
    torn = scenario.root / "torn.log"
    data = scenario.wirelog.read_bytes()
    torn.write_bytes(data[: len(data) - 100])  # into the last record: the noisy deployment's

    report = _report(scenario.attack("--from-log", str(torn)))
    inspected = _program(scenario.root, "splitnn-attack", "inspect", str(torn))

    assert _deployments(scenario.wirelog) == [DEPLOYED, DEPLOYED]
    assert _deployments(torn) == [DEPLOYED]
    assert report["log_problem"] is not None and "truncated tail" in report["log_problem"]
    assert report["source"] == str(torn) and report["images"] == DEPLOYED
    # What is left is the first deployment, the one the live attacker saw: the same seeded
    # attacker on the same tensors gives the same reconstructions, so the same scores.
    live = _report(scenario.live)
    assert report["mse"] == pytest.approx(live["mse"], rel=1e-5)
    assert report["ssim"] == pytest.approx(live["ssim"], rel=1e-5)
    assert inspected.returncode == 0 and "damage: truncated tail" in inspected.stdout


def test_attack_from_the_intact_log_inverts_the_latest_deployment(scenario: Scenario) -> None:
    report = _report(scenario.attack("--from-log", str(scenario.wirelog)))
    live = _report(scenario.live)

    assert report["source"] == str(scenario.wirelog) and report["log_problem"] is None
    assert report["images"] == DEPLOYED
    # The latest deployment carried Laplace noise b = 1 that the attacker's oracle (b = 0, as
    # trained) never added: its reconstructions are worse than those of the noise-free one.
    assert report["mse"] > live["mse"], (report["mse"], live["mse"])


def test_a_passive_attack_from_the_log_needs_no_part_1(scenario: Scenario) -> None:
    heads = scenario.root / "server" / "heads"
    result = _program(
        scenario.root,
        "splitnn-attack",
        *("-q", "run", "--oracle", "substitute", *ATTACKER, "--substitute-epochs", "1"),
        *("--from-log", str(scenario.wirelog), "--head", f"{heads}/*/*/*.head.ckpt"),
        *("--model-dir", str(scenario.root / "models")),
    )

    report = _report(result)
    assert report["oracle"] == "substitute" and report["classifier"] == ""
    assert report["images"] == DEPLOYED and report["source"] == str(scenario.wirelog)
    assert report["baseline_classes"] == "head"
    assert set(report["baselines"]) == {"mean_image", "class_mean_image"}
