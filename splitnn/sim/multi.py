"""The cross-holder attack: K data holders train one model in a group; the server colludes with
one of them and inverts every other holder's tensors from the wire.

Every party is its own OS process speaking mutual TLS: the server (collusion mode, with one
training group of the chosen topology), K data holders (each with its own certificate, share of
the training set and defences), and one attacker per victim. The attacker gets black-box access
to the colluding holder's part 1 as deployed (with its noise), trains its decoder once, and
scores it on each victim's deployment tensors as the server received them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from splitnn.common.certs import make_certificates
from splitnn.common.commands import AttackCommand, ClientCommand, run_attacker, run_client
from splitnn.common.credentials import Credentials
from splitnn.common.models import study_batch_size
from splitnn.common.processes import ProcessError, ServerProcess
from splitnn.common.reports import (
    AttackReport,
    MemberSummary,
    MultiSummary,
    RunReport,
    VictimSummary,
)
from splitnn.sim.app import SimConfig

GROUP = "sim"


@dataclass(frozen=True)
class MultiConfig(SimConfig):
    """K holders in one group: the topology, the partition, each holder's defences, and the
    victim's and attacker's settings of `SimConfig` (`set_noise` does not apply).

    `noise` and `nopeek` are every victim's defences (every holder but `colluder`), who has
    `colluder_noise` and `colluder_nopeek`.
    """

    holders: int = 4
    topology: str = "round-robin"
    partition: str = "iid"
    alpha: float | None = None
    colluder: int = 0
    colluder_noise: float = 0.0
    colluder_nopeek: float = 0.0

    def defences(self, holder: int) -> tuple[float, float]:
        """(noise b, NoPeek W) of `holder`."""
        if holder == self.colluder:
            return self.colluder_noise, self.colluder_nopeek
        return self.noise, self.nopeek


def holder_name(holder: int) -> str:
    return f"holder{holder}"


def certificates(workdir: Path, holders: int) -> tuple[list[str], list[Credentials]]:
    """The server's TLS flags and each holder's credentials (made once per set of names)."""
    out = workdir / "certs"
    names = [holder_name(h) for h in range(holders)]
    missing = [n for n in ("server", *names) if not (out / f"{n}.pem").exists()]
    if missing:
        make_certificates(
            out,
            server_names=["localhost", "127.0.0.1"] if "server" in missing else [],
            holders=[n for n in names if n in missing],
            taps=[],
        )
    server = ["--tls-cert", str(out / "server.pem"), "--tls-key", str(out / "server.key"),
              "--client-ca", str(out / "ca.pem")]  # fmt: skip
    holders_credentials = [
        Credentials(ca=out / "ca.pem", cert=out / f"{n}.pem", key=out / f"{n}.key") for n in names
    ]
    return server, holders_credentials


def holder_command(
    cfg: MultiConfig, holder: int, *, server: str, credentials: Credentials
) -> ClientCommand:
    noise, nopeek = cfg.defences(holder)
    # Holders that take turns leave the cores to whoever trains; parallel ones share them.
    threads = max(1, (os.cpu_count() or 1) // cfg.holders) if cfg.topology == "splitfed" else None
    return ClientCommand(
        server=server,
        dataset=cfg.dataset,
        noise=noise,
        nopeek=nopeek,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size or study_batch_size(nopeek),
        seed=cfg.seed,
        max_steps=cfg.max_steps,
        threads=threads,
        model_dir=cfg.model_dir,
        deploy=True,
        restart=True,
        send_indices=True,
        quiet=True,
        credentials=credentials,
        group=GROUP,
        holder=holder,
        holders=cfg.holders,
        partition=cfg.partition,
        alpha=cfg.alpha,
    )


def attack_command(
    cfg: MultiConfig, *, colluder: RunReport, victim: RunReport, log: Path
) -> AttackCommand:
    assert victim.group is not None
    figure = cfg.figure.with_name(f"{cfg.figure.stem}_h{victim.group.holder}{cfg.figure.suffix}")
    return AttackCommand(
        classifier=Path(colluder.checkpoint),
        from_log=log,
        run=victim.run,
        dataset=cfg.dataset,
        aux=cfg.aux,
        aux_fraction=cfg.aux_fraction,
        decoder=cfg.decoder,
        epochs=cfg.attack_epochs,
        seed=cfg.seed,
        model_dir=cfg.model_dir,
        figure=figure,
        validator_epochs=cfg.validator_epochs,
        quiet=cfg.quiet,
    )


def run_multi(cfg: MultiConfig) -> MultiSummary:
    """Runs the server, the K holders and the attacks; returns what they measured.

    Raises:
        ProcessError: a party failed to start or exited with an error.
        CertificateError: the certificates cannot be made.
        ValueError: a colluder index outside 0..K-1, or fewer than two holders.
    """
    if cfg.holders < 2 or not 0 <= cfg.colluder < cfg.holders:
        raise ValueError(f"--colluder must be one of the holders 0..{cfg.holders - 1} (K >= 2)")
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    log = cfg.workdir / "wire.log"
    log.unlink(missing_ok=True)  # this simulation's log only
    began = time.perf_counter()
    tls, credentials = certificates(cfg.workdir, cfg.holders)
    server_args = ["--model-dir", str(cfg.model_dir), "--tap-log", str(log),
                   "--group", f"{GROUP}={cfg.topology}:{cfg.holders}", *tls]  # fmt: skip
    with ServerProcess([*server_args, *(["-q"] if cfg.quiet else [])]) as server:
        reports = _train_holders(cfg, server.address, credentials)
    colluder = reports[cfg.colluder]
    victims = []
    for report in reports:
        assert report.group is not None
        if report.group.holder == cfg.colluder:
            continue
        attack = run_attacker(attack_command(cfg, colluder=colluder, victim=report, log=log))
        victims.append(_victim(report, attack))
    return MultiSummary(
        topology=cfg.topology,
        holders=cfg.holders,
        partition=cfg.partition,
        alpha=cfg.alpha,
        colluder=cfg.colluder,
        dataset=cfg.dataset,
        epochs=cfg.epochs,
        seed=cfg.seed,
        noise=cfg.noise,
        nopeek=cfg.nopeek,
        colluder_noise=cfg.colluder_noise,
        members=[_member(r) for r in reports],
        victims=victims,
        wire_log=str(log),
        seconds=round(time.perf_counter() - began, 1),
    )


def _train_holders(
    cfg: MultiConfig, server: str, credentials: Sequence[Credentials]
) -> list[RunReport]:
    """Starts the K holders at once (each waits for the others in the group); their reports."""
    commands = [
        holder_command(cfg, h, server=server, credentials=credentials[h])
        for h in range(cfg.holders)
    ]
    with ThreadPoolExecutor(max_workers=cfg.holders) as pool:
        futures = [pool.submit(run_client, command) for command in commands]
        errors = [f.exception() for f in futures]
        failed = [(h, e) for h, e in enumerate(errors) if e is not None]
        if failed:
            holder, error = failed[0]
            raise ProcessError(f"holder {holder}: {error}")
        return [f.result() for f in futures]


def _member(report: RunReport) -> MemberSummary:
    assert report.group is not None
    return MemberSummary(
        holder=report.group.holder,
        samples=report.group.train_samples,
        noise=report.noise,
        nopeek=report.nopeek,
        test_accuracy=report.test_accuracy,
    )


def _victim(report: RunReport, attack: AttackReport) -> VictimSummary:
    assert report.group is not None
    return VictimSummary(
        holder=report.group.holder,
        noise=report.noise,
        nopeek=report.nopeek,
        test_accuracy=report.test_accuracy,
        attack_mse=attack.mse,
        attack_psnr=attack.psnr,
        attack_ssim=attack.ssim,
        attack_validator_accuracy=attack.validator_accuracy,
        validator_accuracy_originals=attack.validator_accuracy_originals,
        figure=attack.figure,
    )
