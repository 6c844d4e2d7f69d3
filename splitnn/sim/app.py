"""The three-party simulation: server, victim and attacker as separate OS processes, under one of
the threat models of `THREATS`; and the parts every simulation shares (certificates, the
colluding server and its wire log, the holders' and the attacker's command lines), which the
cross-holder simulation builds on."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from splitnn.client.dp import DPSettings
from splitnn.client.guard import GuardSettings
from splitnn.common.certs import make_certificates
from splitnn.common.commands import (
    AttackCommand,
    ClientCommand,
    HijackedCommand,
    run_attacker,
    run_client,
    run_hijacked,
)
from splitnn.common.credentials import Credentials
from splitnn.common.datasets import load_splits
from splitnn.common.models import DECODER_EPOCHS, study_batch_size
from splitnn.common.processes import ServerProcess
from splitnn.common.reports import AttackReport, RunReport
from splitnn.common.threats import Threat


@dataclass(frozen=True)
class SimConfig:
    """The victim's training settings, the attacker's, and where files go."""

    threat: Threat = "colluding"
    dataset: str = "mnist5k"
    noise: float = 0.0
    nopeek: float = 0.0
    epochs: int = 10
    batch_size: int | None = None  # None: study_batch_size(nopeek)
    max_steps: int | None = None
    seed: int = 0
    aux: str | None = None
    aux_fraction: float = 1.0
    set_noise: float | None = None
    decoder: str = "deep"
    attack_epochs: int = DECODER_EPOCHS
    validator_epochs: int = 5
    validator_dir: Path | None = None  # where the attacker keeps its validator; None: model_dir
    workdir: Path = Path("runs/sim")
    model_dir: Path = Path("models")
    figure: Path = Path("results/figures/sim_reconstructions.png")
    quiet: bool = False
    # The victim's hijack detector (`splitnn-client --guard`) and its settings; None: none.
    guard: str | None = None
    guard_settings: GuardSettings = field(default_factory=GuardSettings)
    # threat "fsha": the hijacking server's autoencoder pre-training steps, and how often (in
    # holder steps) it writes the decoder that the attack curve scores.
    hijack_pretrain_steps: int = 300
    hijack_snapshot_every: int = 10
    # threat "passive": epochs of the substitute part 1 (None: splitnn-attack's default).
    substitute_epochs: int | None = None
    # DP-SGD on the victim's part 1 (`splitnn-client --dp-epsilon`...); None: none.
    dp: DPSettings | None = None


VICTIM = "victim"


# What a summary repeats of the victim's report, and the attack's scores (named attack_<score>).
_FROM_VICTIM: tuple[str, ...] = ("dataset", "noise", "nopeek", "epochs", "best_epoch")
_FROM_VICTIM += ("test_accuracy", "val_accuracy")
_ATTACK_SCORES = ("mse", "psnr", "ssim", "dcor", "validator_accuracy")


@dataclass(frozen=True)
class SimSummary:
    """What `splitnn-sim` prints (`--json`: these fields as one object); percent accuracies.

    `test_accuracy` is measured on `test_samples` test images, the attack's scores on
    `attack_images` deployment tensors; `seed` seeded every party of the run.
    """

    # The measurements (a mean and standard error each over several seeds); the rest are the
    # run's settings and files.
    SCORES: ClassVar[tuple[str, ...]] = (
        "test_accuracy", "val_accuracy", "attack_mse", "attack_psnr", "attack_ssim",
        "attack_dcor", "attack_validator_accuracy", "validator_accuracy_originals",
        "attack_baseline_mean_mse", "attack_baseline_class_mse", "guard_lowest_score",
        "dp_epsilon",
    )  # fmt: skip

    dataset: str
    noise: float
    nopeek: float
    epochs: int
    best_epoch: int
    test_accuracy: float
    val_accuracy: float
    attack_mse: float
    attack_psnr: float
    attack_ssim: float
    attack_dcor: float
    attack_validator_accuracy: float
    validator_accuracy_originals: float
    attack_images: int
    decoder: str
    figure: str
    attacker: str
    wire_log: str
    classifier: str
    seconds: float
    guard: str | None = None  # the victim's hijack detector (None: none)
    guard_detected_at_step: int | None = None  # the training step of its alarm (None: none)
    guard_lowest_score: float | None = None  # its lowest score (None: no guard, or no score)
    threat: str = "colluding"
    # MSE of the trivial reconstructions scored beside the attack (None: not measured): every
    # image as the mean auxiliary image, and as the mean auxiliary image of its class.
    attack_baseline_mean_mse: float | None = None
    attack_baseline_class_mse: float | None = None
    # The guard's scores in step order: {"step": 0-based training step, "score": SG}.
    guard_scores: list[dict[str, float]] | None = None
    # threat "fsha": one row per decoder snapshot (step = holder steps so far; mse ... on the
    # deployment tensors, train_mse/train_ssim on the training tensors just before the step),
    # and the last row at or before the guard's alarm (None: no alarm, or no snapshot yet).
    attack_curve: list[dict[str, float]] | None = None
    attack_at_alarm: dict[str, float] | None = None
    seed: int = 0
    test_samples: int | None = None  # the test images of `test_accuracy` (None: not counted)
    # DP-SGD on the victim's part 1: epsilon spent (accountant) at delta, sigma, C; None: none.
    dp_epsilon: float | None = None
    dp_delta: float | None = None
    dp_noise_multiplier: float | None = None
    dp_max_grad_norm: float | None = None

    @classmethod
    def of(
        cls,
        victim: RunReport,
        attack: AttackReport,
        *,
        wire_log: Path,
        seconds: float,
        threat: str = "colluding",
        curve: list[dict[str, float]] | None = None,
        test_samples: int | None = None,
    ) -> SimSummary:
        alarm = victim.guard_detected_at_step
        return cls(
            **{name: getattr(victim, name) for name in _FROM_VICTIM},
            **{f"attack_{name}": getattr(attack, name) for name in _ATTACK_SCORES},
            validator_accuracy_originals=attack.validator_accuracy_originals,
            attack_images=attack.images,
            decoder=attack.decoder,
            figure=attack.figure,
            attacker=attack.attacker,
            wire_log=str(wire_log),
            classifier=victim.checkpoint,
            seconds=round(seconds, 1),
            guard=victim.guard,
            guard_detected_at_step=victim.guard_detected_at_step,
            guard_lowest_score=min((s.score for s in victim.guard_scores), default=None),
            threat=threat,
            attack_baseline_mean_mse=attack.baselines.get("mean_image", {}).get("mse"),
            attack_baseline_class_mse=attack.baselines.get("class_mean_image", {}).get("mse"),
            guard_scores=(
                [{"step": s.step, "score": s.score} for s in victim.guard_scores]
                if victim.guard is not None
                else None
            ),
            attack_curve=curve,
            attack_at_alarm=None if alarm is None or curve is None else at_step(curve, alarm),
            seed=victim.seed,
            test_samples=test_samples,
            dp_epsilon=victim.dp_epsilon,
            dp_delta=victim.dp_delta,
            dp_noise_multiplier=victim.dp_noise_multiplier,
            dp_max_grad_norm=victim.dp_max_grad_norm,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def at_step(curve: list[dict[str, float]], step: int) -> dict[str, float] | None:
    """The last row of a hijacking curve that the server had by 0-based training step `step`
    (its snapshot after at most step + 1 holder steps); None if it had none yet."""
    rows = [row for row in curve if row["step"] <= step + 1]
    return max(rows, key=lambda row: row["step"]) if rows else None


def certificates(workdir: Path, holders: Sequence[str]) -> tuple[list[str], list[Credentials]]:
    """Development certificates for a simulation under `workdir`/certs (each made once, then
    reused): the server's TLS flags, and the credentials of each of `holders` (certificate
    names). Every party speaks mutual TLS."""
    out = workdir / "certs"
    missing = [name for name in ("server", *holders) if not (out / f"{name}.pem").exists()]
    if missing:
        make_certificates(
            out,
            server_names=["localhost", "127.0.0.1"] if "server" in missing else [],
            holders=[name for name in holders if name in missing],
            taps=[],
        )
    server = ["--tls-cert", str(out / "server.pem"), "--tls-key", str(out / "server.key"),
              "--client-ca", str(out / "ca.pem")]  # fmt: skip
    credentials = [
        Credentials(ca=out / "ca.pem", cert=out / f"{name}.pem", key=out / f"{name}.key")
        for name in holders
    ]
    return server, credentials


def wire_log(cfg: SimConfig) -> Path:
    """Where the server of this simulation logs the wire; an earlier simulation's log is gone."""
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    log = cfg.workdir / "wire.log"
    log.unlink(missing_ok=True)
    return log


def colluding_server(
    cfg: SimConfig,
    *,
    log: Path,
    tls: Sequence[str],
    extra: Sequence[str] = (),
    start_timeout: float = 120.0,
) -> ServerProcess:
    """The server started in collusion mode (it keeps what it receives in `log`); use it as a
    context manager, which stops it.

    Args:
        tls: the TLS flags of `certificates`.
        extra: further `splitnn-server` flags.
        start_timeout: seconds it may take to listen (a hijacking server pre-trains first).
    """
    # --seed: a head whose holder sends no seed, and a hijacking server's streams, are the run's.
    args = ["--model-dir", str(cfg.model_dir), "--tap-log", str(log), "--seed", str(cfg.seed)]
    args += [*extra, *tls]
    return ServerProcess([*args, *(["-q"] if cfg.quiet else [])], start_timeout=start_timeout)


def holder_command(
    cfg: SimConfig, *, server: str, credentials: Credentials, noise: float, nopeek: float
) -> ClientCommand:
    """A data holder that trains with defences `noise` (b) and `nopeek` (W), the guard and DP-SGD
    of `cfg`, deploys, and reveals its sample indices so that the attack can be scored."""
    guard: dict[str, Any] = {}
    if cfg.guard is not None:
        settings = asdict(cfg.guard_settings)
        guard = {"guard": cfg.guard, **{f"guard_{k}": v for k, v in settings.items()}}
    dp: dict[str, Any] = {}
    if cfg.dp is not None:
        dp = {f"dp_{k}": v for k, v in asdict(cfg.dp).items()}
    return ClientCommand(
        server=server,
        dataset=cfg.dataset,
        noise=noise,
        nopeek=nopeek,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size or study_batch_size(nopeek),
        seed=cfg.seed,
        max_steps=cfg.max_steps,
        model_dir=cfg.model_dir,
        credentials=credentials,
        **guard,
        **dp,
    ).as_harness()


def attack_command(
    cfg: SimConfig,
    *,
    classifier: str,
    log: Path,
    run: str | None = None,
    figure: Path | None = None,
) -> AttackCommand:
    """The attacker of `classifier` (part 1's checkpoint), scored on `log`: on run `run` of it if
    given, its figure written to `figure` (default `cfg.figure`)."""
    return AttackCommand(
        classifier=Path(classifier),
        from_log=log,
        run=run,
        dataset=cfg.dataset,
        aux=cfg.aux,
        aux_fraction=cfg.aux_fraction,
        set_noise=cfg.set_noise,
        decoder=cfg.decoder,
        epochs=cfg.attack_epochs,
        seed=cfg.seed,
        model_dir=cfg.model_dir,
        figure=cfg.figure if figure is None else figure,
        validator_epochs=cfg.validator_epochs,
        validator_dir=cfg.validator_dir,
        quiet=cfg.quiet,
    )


def run(cfg: SimConfig) -> SimSummary:
    """Runs server, victim and attacker of `cfg.threat`; returns what they measured.

    colluding: the server logs the wire, and the attacker inverts the victim's deployment
    tensors through the victim's part 1 (lent). fsha: the server hijacks the victim's training
    (`splitnn-server --hijack fsha`) and its decoder snapshots are scored. passive: the server
    logs the wire, and the attacker trains a substitute part 1 from the log and the server's head
    (`splitnn-attack run --oracle substitute`): the victim's part 1 is never read.
    Server and victim speak mutual TLS with certificates made under `cfg.workdir`/certs.

    Raises:
        ProcessError: a party failed to start or exited with an error.
        CertificateError: the certificates cannot be made.
    """
    began = time.perf_counter()
    log = wire_log(cfg)
    tls, (credentials,) = certificates(cfg.workdir, [VICTIM])
    extra: list[str] = []
    if cfg.threat == "fsha":
        extra = ["--hijack", "fsha", "--hijack-data", cfg.aux or cfg.dataset,
                 "--hijack-pretrain-steps", str(cfg.hijack_pretrain_steps),
                 "--hijack-snapshot-every", str(cfg.hijack_snapshot_every)]  # fmt: skip
    # The hijacking server pre-trains before it listens: about 0.3 s a step on an idle core,
    # several times that on a loaded machine.
    start_timeout = 120.0 + (3.0 * cfg.hijack_pretrain_steps if cfg.threat == "fsha" else 0.0)
    with colluding_server(
        cfg, log=log, tls=tls, extra=extra, start_timeout=start_timeout
    ) as server:
        victim = run_client(
            holder_command(
                cfg,
                server=server.address,
                credentials=credentials,
                noise=cfg.noise,
                nopeek=cfg.nopeek,
            )
        )
    curve: list[dict[str, float]] | None = None
    if cfg.threat == "fsha":
        attack, curve = run_hijacked(
            HijackedCommand(
                from_log=log,
                decoders=cfg.model_dir / "hijack" / VICTIM,
                run=victim.run,
                dataset=cfg.dataset,
                # `splitnn-attack hijacked` keeps only its validator in its model folder.
                model_dir=cfg.model_dir if cfg.validator_dir is None else cfg.validator_dir,
                seed=cfg.seed,
                validator_epochs=cfg.validator_epochs,
                curve=cfg.workdir / "curve.csv",
                figure=cfg.figure,
                quiet=cfg.quiet,
            )
        )
    elif cfg.threat == "passive":
        command = attack_command(cfg, classifier=victim.checkpoint, log=log)
        attack = run_attacker(
            replace(
                command,
                classifier=None,
                oracle="substitute",
                head=cfg.model_dir / victim.head_checkpoint,
                substitute_epochs=cfg.substitute_epochs,
            )
        )
    else:
        attack = run_attacker(attack_command(cfg, classifier=victim.checkpoint, log=log))
    return SimSummary.of(
        victim,
        attack,
        wire_log=log,
        seconds=time.perf_counter() - began,
        threat=cfg.threat,
        curve=curve,
        test_samples=count_test_images(cfg.dataset),
    )


def count_test_images(dataset: str) -> int:
    """The number of test images a data holder's `test_accuracy` is measured on (the data set's
    test slice, read where the holders read it; a downloaded set is not downloaded again)."""
    return len(load_splits(dataset, download=False).test)
