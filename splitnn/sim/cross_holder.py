"""The cross-holder attack: K data holders train one model in a group; the server colludes with
one of them and inverts every other holder's tensors from the wire.

Every party is its own OS process speaking mutual TLS: the server (collusion mode, with one
training group of the chosen topology), K data holders (each with its own certificate, share of
the training set and defences), and one attacker per victim. The attacker gets black-box access
to the colluding holder's part 1 as deployed (with its noise), trains its decoder once, and
scores it on each victim's deployment tensors as the server received them.

The deployment tensors are of the same attack-evaluation images for every holder, and where the
topology leaves every holder with one part 1 (round-robin, splitfed) two victims' deployment
scores agree. So each victim is also scored on its own data: the same decoder on the tensors of
the victim's training share as the server received them (each image's latest, from its last
epoch), made by the victim's part 1 of then, not the colluder's (`own_data_scores`; the
harness's holders send sample indices, so the true images are known).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from splitnn.attacker.intercept import InterceptError, from_log, ground_truth
from splitnn.attacker.inversion import reconstruct
from splitnn.attacker.metrics import score
from splitnn.common.checkpoints import load_checkpoint
from splitnn.common.commands import AttackCommand, ClientCommand, run_attacker, run_client
from splitnn.common.credentials import Credentials
from splitnn.common.datasets import Subset, load_splits
from splitnn.common.decoders import build_decoder
from splitnn.common.devices import cpu_threads
from splitnn.common.processes import ProcessError, worker_pool
from splitnn.common.reports import (
    AttackReport,
    MemberSummary,
    MultiSummary,
    RunReport,
    VictimSummary,
)
from splitnn.common.topology import DEFAULT, topology
from splitnn.sim.app import (
    SimConfig,
    attack_command,
    certificates,
    colluding_server,
    count_test_images,
    holder_command,
    wire_log,
)

GROUP = "sim"
# The settings a multi-holder summary repeats from its configuration.
_SETTINGS: tuple[str, ...] = ("topology", "holders", "partition", "alpha", "colluder", "dataset")
_SETTINGS += ("epochs", "seed", "noise", "nopeek", "colluder_noise")


@dataclass(frozen=True)
class MultiConfig(SimConfig):
    """K holders in one group: the topology, the partition, each holder's defences, and the
    victim's and attacker's settings of `SimConfig` (`set_noise` does not apply).

    `noise` and `nopeek` are every victim's defences (every holder but `colluder`), who has
    `colluder_noise` and `colluder_nopeek`.
    """

    holders: int = 4
    topology: str = DEFAULT.name
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


def member_command(
    cfg: MultiConfig, holder: int, *, server: str, credentials: Credentials
) -> ClientCommand:
    """Holder `holder`'s command: `holder_command` with its defences, in the group."""
    noise, nopeek = cfg.defences(holder)
    command = holder_command(
        cfg, server=server, credentials=credentials, noise=noise, nopeek=nopeek
    )
    # Holders that take turns leave the cores to whoever trains; parallel ones share them.
    parallel = topology(cfg.topology).schedule is None
    threads = max(1, cpu_threads() // cfg.holders) if parallel else None
    return replace(
        command,
        threads=threads,
        quiet=True,
        group=GROUP,
        holder=holder,
        holders=cfg.holders,
        partition=cfg.partition,
        alpha=cfg.alpha,
    )


def victim_attack(
    cfg: MultiConfig, *, colluder: RunReport, victim: RunReport, log: Path
) -> AttackCommand:
    """The attack on `victim`'s run with the colluder's part 1; one figure per victim."""
    assert victim.group is not None
    figure = cfg.figure.with_name(f"{cfg.figure.stem}_h{victim.group.holder}{cfg.figure.suffix}")
    return attack_command(
        cfg, classifier=colluder.checkpoint, log=log, run=victim.run, figure=figure
    )


def run_multi(cfg: MultiConfig) -> MultiSummary:
    """Runs the server, the K holders and the attacks; returns what they measured.

    Raises:
        ProcessError: a party failed to start or exited with an error.
        CertificateError: the certificates cannot be made.
        ValueError: a colluder index outside 0..K-1, fewer than two holders, or a `set_noise`.
    """
    if cfg.holders < 2 or not 0 <= cfg.colluder < cfg.holders:
        raise ValueError(f"--colluder must be one of the holders 0..{cfg.holders - 1} (K >= 2)")
    if cfg.set_noise is not None:
        raise ValueError("set_noise is for a single holder")
    began = time.perf_counter()
    log = wire_log(cfg)
    names = [holder_name(h) for h in range(cfg.holders)]
    tls, credentials = certificates(cfg.workdir, names)
    # Each index is its own holder's: no other party can take it.
    group = ["--group", f"{GROUP}={cfg.topology}:{cfg.holders}@{','.join(names)}"]
    # The holders start afresh (`--restart`); so does the simulation's group: the saves an
    # interrupted simulation left would make its server refuse the fresh holders.
    shutil.rmtree(cfg.model_dir / "groups" / GROUP, ignore_errors=True)
    with colluding_server(cfg, log=log, tls=tls, extra=group) as server:
        reports = _train_holders(cfg, server.address, credentials)
    colluder = reports[cfg.colluder]
    train = load_splits(cfg.dataset, download=False).train
    victims = []
    for report in reports:
        assert report.group is not None
        if report.group.holder == cfg.colluder:
            continue
        attack = run_attacker(victim_attack(cfg, colluder=colluder, victim=report, log=log))
        decoder = _decoder(cfg.decoder, Path(attack.attacker))
        own = own_data_scores(decoder, log, run=report.run, train=train)
        victims.append(_victim(report, attack, own))
    return MultiSummary(
        **{name: getattr(cfg, name) for name in _SETTINGS},
        members=[_member(r) for r in reports],
        victims=victims,
        wire_log=str(log),
        seconds=round(time.perf_counter() - began, 1),
        test_samples=count_test_images(cfg.dataset),
    )


def own_data_scores(
    decoder: torch.nn.Module, log: Path, *, run: str, train: Subset
) -> dict[str, float | int]:
    """The decoder on a victim's own data: the tensors of its training share as the server
    received them (each image's last tensor, i.e. from its last epoch, from the victim's part 1
    of then), inverted and scored against the true training images.

    Args:
        decoder: the attacker's decoder (float32 [N, 500] -> [N, 1, 28, 28]).
        log: the wire log; run: the victim's run in it.
        train: the data set's training split (the sample indices point into it).

    Returns:
        ``own_attack_mse``, ``own_attack_psnr``, ``own_attack_ssim`` and ``own_attack_images``
        (how many tensors); empty when the log holds fewer than 4 of the run's training tensors
        with sample indices (the scores need 4).
    """
    try:
        received = from_log(log, split="train", run=run)
    except InterceptError:  # none, or none with sample indices
        return {}
    if len(received.indices) < 4:
        return {}
    originals, _ = ground_truth(train, received.indices)
    with torch.no_grad():
        scores = score(originals, reconstruct(decoder, received.activations))
    own: dict[str, float | int] = {f"own_attack_{k}": scores[k] for k in ("mse", "psnr", "ssim")}
    return {**own, "own_attack_images": len(received.indices)}


def _decoder(name: str, path: Path) -> torch.nn.Module:
    """The attacker's trained decoder `name` saved at `path`, in eval mode."""
    decoder = build_decoder(name, seed=0)  # the weights are replaced by the saved ones
    state, _ = load_checkpoint(path)
    decoder.load_state_dict(state)
    return decoder.eval()


def _train_holders(
    cfg: MultiConfig, server: str, credentials: Sequence[Credentials]
) -> list[RunReport]:
    """Starts the K holders at once (each waits for the others in the group); their reports."""
    commands = [
        member_command(cfg, h, server=server, credentials=credentials[h])
        for h in range(cfg.holders)
    ]
    with worker_pool(cfg.holders) as pool:  # interrupted, it stops the holders
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


def _victim(report: RunReport, attack: AttackReport, own: dict[str, float | int]) -> VictimSummary:
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
        own_attack_mse=float(own["own_attack_mse"]) if own else None,
        own_attack_psnr=float(own["own_attack_psnr"]) if own else None,
        own_attack_ssim=float(own["own_attack_ssim"]) if own else None,
        own_attack_images=int(own["own_attack_images"]) if own else None,
        attack_baseline_mean_mse=attack.baselines.get("mean_image", {}).get("mse"),
        attack_baseline_class_mse=attack.baselines.get("class_mean_image", {}).get("mse"),
    )
