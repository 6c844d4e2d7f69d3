"""The three-party simulation: server, victim and attacker as separate OS processes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splitnn.common.certs import make_certificates
from splitnn.common.credentials import Credentials
from splitnn.common.processes import ServerProcess, run_json

SUMMARY_FROM_VICTIM = ("dataset", "noise", "nopeek", "epochs", "best_epoch", "test_accuracy",
                       "val_accuracy")  # fmt: skip
SUMMARY_FROM_ATTACK = {
    "attack_mse": "mse", "attack_psnr": "psnr", "attack_ssim": "ssim", "attack_dcor": "dcor",
    "attack_validator_accuracy": "validator_accuracy",
    "validator_accuracy_originals": "validator_accuracy_originals",
    "attack_images": "images", "decoder": "decoder", "figure": "figure", "attacker": "attacker",
}  # fmt: skip


@dataclass(frozen=True)
class SimConfig:
    """The victim's training settings, the attacker's, and where files go."""

    dataset: str = "mnist5k"
    noise: float = 0.0
    nopeek: float = 0.0
    epochs: int = 10
    batch_size: int | None = None  # None: 128, or 32 with NoPeek (the study's)
    max_steps: int | None = None
    seed: int = 0
    aux: str | None = None
    aux_fraction: float = 1.0
    set_noise: float | None = None
    decoder: str = "deep"
    attack_epochs: int = 30
    validator_epochs: int = 5
    workdir: Path = Path("runs/sim")
    model_dir: Path = Path("models")
    figure: Path = Path("results/figures/sim_reconstructions.png")
    quiet: bool = False


VICTIM = "victim"


def certificates(workdir: Path) -> tuple[list[str], Credentials]:
    """Development certificates for this simulation (made once, then reused): the server's
    TLS flags, and the victim's credentials. Every party speaks mutual TLS."""
    out = workdir / "certs"
    if not all((out / f"{name}.pem").exists() for name in ("server", VICTIM)):
        make_certificates(out, server_names=["localhost", "127.0.0.1"], holders=[VICTIM], taps=[])
    server = ["--tls-cert", str(out / "server.pem"), "--tls-key", str(out / "server.key"),
              "--client-ca", str(out / "ca.pem")]  # fmt: skip
    victim = Credentials(ca=out / "ca.pem", cert=out / f"{VICTIM}.pem", key=out / f"{VICTIM}.key")
    return server, victim


def victim_args(cfg: SimConfig, *, server: str) -> list[str]:
    batch = cfg.batch_size or (32 if cfg.nopeek > 0 else 128)
    args = [
        "--server", server, "--dataset", cfg.dataset, "--noise", repr(cfg.noise),
        "--nopeek", repr(cfg.nopeek), "--epochs", str(cfg.epochs), "--batch-size", str(batch),
        "--seed", str(cfg.seed), "--model-dir", str(cfg.model_dir), "--deploy", "--json",
        # The simulation starts its victim over, whatever an interrupted one left, and, as an
        # evaluation harness, has it send the sample indices that score the attack.
        "--restart", "--send-indices",
    ]  # fmt: skip
    if cfg.max_steps:
        args += ["--max-steps", str(cfg.max_steps)]
    return args


def attack_args(cfg: SimConfig, *, classifier: str, log: Path) -> list[str]:
    args = [
        *(["-q"] if cfg.quiet else []), "run", "--classifier", classifier,
        "--from-log", str(log), "--dataset", cfg.dataset, "--decoder", cfg.decoder,
        "--epochs", str(cfg.attack_epochs), "--aux-fraction", repr(cfg.aux_fraction),
        "--seed", str(cfg.seed), "--model-dir", str(cfg.model_dir),
        "--figure", str(cfg.figure), "--validator-epochs", str(cfg.validator_epochs), "--json",
    ]  # fmt: skip
    if cfg.aux:
        args += ["--aux", cfg.aux]
    if cfg.set_noise is not None:
        args += ["--set-noise", repr(cfg.set_noise)]
    return args


def run(cfg: SimConfig) -> dict[str, Any]:
    """Runs server (collusion mode), victim and attacker; returns the combined summary.

    Server and victim speak mutual TLS with certificates made under `cfg.workdir`/certs.

    Raises:
        ProcessError: a party failed to start or exited with an error.
        CertificateError: the certificates cannot be made.
    """
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    log = cfg.workdir / "wire.log"
    log.unlink(missing_ok=True)  # this simulation's log only
    began = time.perf_counter()
    tls, victim_credentials = certificates(cfg.workdir)
    server_args = ["--model-dir", str(cfg.model_dir), "--tap-log", str(log), *tls]
    with ServerProcess([*server_args, *(["-q"] if cfg.quiet else [])]) as server:
        args = [*victim_args(cfg, server=server.address), *victim_credentials.args()]
        victim = run_json("splitnn-client", args)
    attack = run_json("splitnn-attack", attack_args(cfg, classifier=victim["checkpoint"], log=log))
    summary = {key: victim[key] for key in SUMMARY_FROM_VICTIM}
    summary.update({key: attack[field] for key, field in SUMMARY_FROM_ATTACK.items()})
    summary.update(
        wire_log=str(log),
        classifier=victim["checkpoint"],
        seconds=round(time.perf_counter() - began, 1),
    )
    return summary
