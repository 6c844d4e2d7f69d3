"""What a server keeps of a run on disk, and how its operator lists and removes runs.

Alice trains against a real server with mutual TLS; the operator then runs
``splitnn-server --list-runs`` and ``--remove-run`` on the same model folder, as programs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from splitnn.client.transport import ServerLink
from splitnn.common.codec import StepId
from tests.conftest import address_of, run_program, seeded_batch, settings
from tests.parties import Pki

B = 8
RUN = "alices-run"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.make(tmp_path_factory.mktemp("certs"), ["alice"])


def _alice_checkpoints(pki: Pki, models: Path, labels: list[str], **changes: int) -> list[str]:
    """Alice trains a step before each checkpoint of `labels`, none replacing the others; the
    head checkpoints left on the server, by name."""
    server = pki.serve(models, **changes)
    try:
        spec = settings(RUN, max_batch_size=B)
        with ServerLink(address_of(server), spec, credentials=pki.party("alice")) as link:
            for batch, label in enumerate(labels):
                link.train_step(StepId(RUN, 1, batch), *seeded_batch(batch, B), save=True)
                link.checkpoint(label, replace_previous=False)
    finally:
        server.shutdown(grace=0.0)
    return sorted(p.name for p in (models / "heads" / "alice" / RUN).glob("*.head.ckpt"))


def test_a_run_keeps_its_newest_head_checkpoints_only(tmp_path: Path, pki: Pki) -> None:
    labels = [f"epoch={n}" for n in range(1, 7)]

    kept = _alice_checkpoints(pki, tmp_path / "models", labels)
    kept_two = _alice_checkpoints(pki, tmp_path / "other", labels, keep_checkpoints=2)

    assert kept == ["epoch=4.head.ckpt", "epoch=5.head.ckpt", "epoch=6.head.ckpt"]  # default 3
    assert kept_two == ["epoch=5.head.ckpt", "epoch=6.head.ckpt"]


@pytest.mark.slow
def test_the_operator_lists_and_removes_a_run_without_serving(tmp_path: Path, pki: Pki) -> None:
    models = tmp_path / "models"
    _alice_checkpoints(pki, models, ["epoch=1"])
    folders = [models / "server" / "alice" / RUN, models / "heads" / "alice" / RUN]
    present = [folder.is_dir() for folder in folders]

    def server(*args: str) -> tuple[int, list[str], list[str]]:
        done = run_program("splitnn-server", "--model-dir", str(models), *args, cwd=tmp_path)
        return done.returncode, done.stdout.splitlines(), done.stderr.splitlines()

    listed = server("--list-runs")
    removed = server("--remove-run", f"alice/{RUN}")
    again = server("--remove-run", f"alice/{RUN}")
    escape = server("--remove-run", "alice/../../outside")
    empty = server("--list-runs")

    assert present == [True, True]
    code, out, _ = listed
    assert code == 0 and len(out) == 1
    assert out[0].startswith(f"alice/{RUN}  resume states: 1  head checkpoints: 1  ")
    assert removed[0] == 0 and removed[1][0].startswith(f"removed alice/{RUN}  ")
    assert not any(folder.exists() for folder in folders)
    assert again[0] == 2 and again[2] == [f"splitnn-server: no run alice/{RUN} under {models}"]
    assert escape[0] == 2 and len(escape[2]) == 1 and "is not a run" in escape[2][0]
    assert empty[:2] == (0, [])
