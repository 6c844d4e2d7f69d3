"""A whole attack: train a decoder through the black-box part 1, invert the victim, score."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from splitnn.attacker.baselines import score_baselines
from splitnn.attacker.figures import save_grid
from splitnn.attacker.intercept import Intercepted, from_live, from_log, ground_truth
from splitnn.attacker.inversion import reconstruct, train_decoder
from splitnn.attacker.metrics import score
from splitnn.attacker.oracle import BodyOracle, CutOracle
from splitnn.attacker.passive import (
    ServerHead,
    load_head,
    predict,
    save_substitutes,
    substitute_oracle,
)
from splitnn.attacker.substitute import SubstituteEnsemble, SubstituteOracle, SubstituteSettings
from splitnn.attacker.validator import accuracy, load_or_train_validator
from splitnn.common import exits
from splitnn.common.checkpoints import (
    CheckpointError,
    attacker_stem,
    load_checkpoint,
    manifest_path,
    save_checkpoint,
)
from splitnn.common.credentials import Credentials
from splitnn.common.datasets import Subset, load_splits
from splitnn.common.decoders import build_decoder
from splitnn.common.devices import use_device
from splitnn.common.reports import AttackReport
from splitnn.common.seeds import SEEDING, seed_for

logger = logging.getLogger(__name__)

Protocol = Literal["noisy", "clean"]
OracleKind = Literal["lent", "substitute"]
# A passive attacker's victim data set when it is not named (a lent part 1's manifest names it).
DEFAULT_DATASET = "mnist5k"


@dataclass(frozen=True)
class AttackConfig:
    """Settings of one attack.

    Attributes:
        classifier: the deployed part-1 checkpoint the colluding data holder lends (black box);
            needed by the lent oracle only.
        oracle: "lent" (the colluding holder's part 1) or "substitute" (the server alone trains
            one from its wire log, its head and public images: `attacker.passive`).
        head: the server's head checkpoint: the substitute's label term, and the classes of the
            class-mean baseline (else the labels on the wire).
        substitute: how the substitute is trained (oracle "substitute").
        from_log / live: where the victim's tensors come from (exactly one).
        dataset: the victim's data set, for ground truth; None: from the classifier manifest.
        aux: the attacker's auxiliary data set; None: the victim's.
        aux_fraction: fraction of the auxiliary slice used (the study's data-volume experiment).
        set_noise: noise scale of the oracle instead of the deployed one (post-training noise).
        protocol: "noisy" trains and scores on what crosses the wire; "clean" is the reference's
            shortcut: trained and scored on noise-free tensors the wire never carries.
        credentials: with `live`, the tap party's TLS files and/or token.
        connect_timeout: with `live`, seconds to wait for the server to answer at all.
        validator_dir: where the validation classifier is kept (trained there if missing);
            None: `model_dir`. Runs that share one (the same data set, seed and epochs) share
            its file instead of training it each.
        retrain: train the decoder even if one trained under identical settings is saved.
        device: where the decoder, the substitute and the validator compute (the tensors read
            and the scores stay on the CPU).
    """

    classifier: Path | None = None
    oracle: OracleKind = "lent"
    head: Path | None = None
    substitute: SubstituteSettings = field(default_factory=SubstituteSettings)
    from_log: Path | None = None
    live: str | None = None
    dataset: str | None = None
    aux: str | None = None
    aux_fraction: float = 1.0
    set_noise: float | None = None
    decoder: str = "deep"
    protocol: Protocol = "noisy"
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    split: str = "attack"
    run: str | None = None
    model_dir: Path = Path("models")
    data_dir: Path = Path("data")
    figure: Path | None = None
    validator_epochs: int = 5
    validator_dir: Path | None = None
    progress: bool = True
    credentials: Credentials = field(default_factory=Credentials)
    retrain: bool = False
    connect_timeout: float = 30.0
    device: str = "cpu"


def run_attack(cfg: AttackConfig) -> AttackReport:
    """Runs the attack end to end; see `AttackConfig`.

    Raises:
        BadAttack: the settings do not fit the oracle (see `check_config`).
    """
    check_config(cfg)
    use_device(cfg.device)
    lent = _lent_oracle(cfg)
    dataset = cfg.dataset or (
        str(lent.manifest.get("dataset", DEFAULT_DATASET)) if lent else DEFAULT_DATASET
    )
    victim = load_splits(dataset, root=cfg.data_dir)
    aux_name = cfg.aux or dataset
    if lent is None and aux_name != dataset:
        raise BadAttack("a substitute matches by label: --aux must be the victim's data set")
    aux_data = load_splits(aux_name, root=cfg.data_dir).aux
    public = aux_data.take(max(1, round(cfg.aux_fraction * len(aux_data))))
    intercepted = _intercept(cfg, expected=len(victim.attack))
    originals, labels = ground_truth(victim.attack, intercepted.indices)
    server_head = load_head(cfg.head) if cfg.head is not None else None
    oracle: CutOracle
    if lent is not None:
        oracle, part1 = lent, lent.path.name.removesuffix(".ckpt")
    else:
        oracle = _substitute(cfg, run=intercepted.run, public=public, server_head=server_head)
        part1 = f"{intercepted.run}_substitute"
    # The clean protocol never looks at the wire: it scores on the pre-noise tensors of the
    # victim's images, as the reference did (check_config allows it with a lent part 1 only).
    cuts = lent.query(originals, noisy=False) if lent and cfg.protocol == "clean" else None
    cuts = intercepted.activations if cuts is None else cuts
    stem = attacker_stem(
        classifier=part1,
        aux=aux_name,
        set_noise=cfg.set_noise,
        aux_fraction=cfg.aux_fraction,
        decoder=cfg.decoder,
        protocol=cfg.protocol,
    )
    path = cfg.model_dir / "attackers" / f"{stem}.ckpt"
    if isinstance(oracle, SubstituteOracle | SubstituteEnsemble):
        save_substitutes(path.with_name(f"{stem}.substitute.ckpt"), oracle)
    decoder = load_or_train_decoder(
        path,
        cfg=cfg,
        oracle=oracle,
        images=public.images,
        manifest=decoder_manifest(cfg, oracle=oracle, aux=aux_name, images=public.images),
    )
    recon = reconstruct(decoder, cuts)
    scores = score(originals, recon)
    validator = load_or_train_validator(
        splits=victim,
        model_dir=cfg.model_dir if cfg.validator_dir is None else cfg.validator_dir,
        seed=cfg.seed,
        epochs=cfg.validator_epochs,
        progress=cfg.progress,
    )
    head = server_head.head if server_head else None
    classes, classes_from = assigned_classes(head, intercepted)
    baselines = score_baselines(
        originals,
        labels,
        public_images=public.images,
        public_labels=public.labels,
        classes=classes if classes is not None else torch.zeros_like(labels),
        validator=validator,
    )
    if classes is None:
        del baselines["class_mean_image"]
    figure = cfg.figure or Path("results") / "figures" / f"{stem}.png"
    save_grid(figure, originals=originals, rows=[(_row_label(cfg, oracle), recon)], title=stem)
    return AttackReport(
        classifier=str(lent.path) if lent else "",
        attacker=str(path),
        dataset=dataset,
        deployed_noise=lent.deployed_noise if lent else oracle.noise_scale,
        set_noise=oracle.noise_scale,
        aux=aux_name,
        aux_fraction=cfg.aux_fraction,
        aux_images=len(public.images),
        decoder=cfg.decoder,
        protocol=cfg.protocol,
        images=len(originals),
        mse=scores["mse"],
        psnr=scores["psnr"],
        ssim=scores["ssim"],
        dcor=scores["dcor"],
        validator_accuracy=accuracy(validator, recon, labels),
        validator_accuracy_originals=accuracy(validator, originals, labels),
        figure=str(figure),
        source=intercepted.source,
        log_problem=intercepted.problem,
        oracle=oracle.kind,
        baselines=baselines,
        baseline_classes=classes_from,
    )


class BadAttack(exits.BadUsage):
    """The attack's settings contradict each other (e.g. a substitute without a wire log)."""


def check_config(cfg: AttackConfig) -> None:
    """Refuses settings that cannot make an attack; the message says what to give instead.

    Raises:
        BadAttack: a lent oracle without --classifier; a substitute without a wire log, with the
            clean protocol, or with a label term but no head.
    """
    if cfg.oracle == "lent":
        if cfg.classifier is None:
            raise BadAttack("--oracle lent needs --classifier (the part 1 the holder lends)")
        return
    if cfg.oracle != "substitute":
        raise BadAttack(f"unknown oracle {cfg.oracle!r}: lent or substitute")
    if cfg.from_log is None:
        raise BadAttack(
            "--oracle substitute needs --from-log: the substitute is fitted to the training"
            " tensors the server kept"
        )
    if cfg.protocol == "clean":
        raise BadAttack("--protocol clean needs the lent part 1 (--oracle lent)")
    if cfg.substitute.ce_weight > 0 and cfg.head is None:
        raise BadAttack("the label term needs the server's head: give --head or --ce-weight 0")


def _lent_oracle(cfg: AttackConfig) -> BodyOracle | None:
    if cfg.oracle != "lent":
        return None
    assert cfg.classifier is not None  # check_config
    return BodyOracle(
        cfg.classifier, set_noise=cfg.set_noise, seed=seed_for(cfg.seed, "oracle_noise")
    )


def _substitute(
    cfg: AttackConfig,
    *,
    run: str,
    public: Subset,
    server_head: ServerHead | None,
) -> SubstituteOracle | SubstituteEnsemble:
    assert cfg.from_log is not None  # check_config
    settings = dataclasses.replace(cfg.substitute, noise=cfg.set_noise or 0.0)
    return substitute_oracle(
        log=cfg.from_log,
        run=run,
        public=public,
        server_head=server_head,
        settings=settings,
        seed=cfg.seed,
        progress=cfg.progress,
    )


def assigned_classes(
    head: nn.Module | None, intercepted: Intercepted
) -> tuple[torch.Tensor | None, str | None]:
    """The class the attacker assigns each attacked tensor, for the class-mean baseline, and
    where it comes from: the server's head's prediction ("head") when the head is known, else
    the label the holder sent with the tensor ("wire labels"), else none (None, None)."""
    if head is not None:
        return predict(head, intercepted.activations), "head"
    if intercepted.labels is not None:
        return intercepted.labels, "wire labels"
    return None, None


def _intercept(cfg: AttackConfig, *, expected: int) -> Intercepted:
    if cfg.from_log is not None:
        return from_log(cfg.from_log, split=cfg.split, run=cfg.run)
    assert cfg.live is not None
    return from_live(
        cfg.live,
        split=cfg.split,
        run=cfg.run,
        expected=expected,
        credentials=cfg.credentials,
        connect_timeout=cfg.connect_timeout,
    )


def _row_label(cfg: AttackConfig, oracle: CutOracle) -> str:
    return f"b={oracle.noise_scale:g} {cfg.decoder} ({oracle.kind})"


def load_or_train_decoder(
    path: Path,
    *,
    cfg: AttackConfig,
    oracle: CutOracle,
    images: torch.Tensor,
    manifest: Mapping[str, Any],
) -> nn.Module:
    """The decoder saved at `path` if its manifest equals `manifest` (see `decoder_manifest`),
    else a decoder trained afresh on `images` (float32 [N,1,28,28]) and saved there.

    One oracle may serve the attacks on several victims: their decoder is the same, trained once.
    `cfg.retrain` trains it even so; a saved decoder that cannot be read is trained again.
    """
    if not cfg.retrain:
        saved = _saved_decoder(path, cfg=cfg, manifest=manifest)
        if saved is not None:
            logger.info("reusing the decoder trained before: %s", path)
            return saved
    decoder = build_decoder(cfg.decoder, seed=seed_for(cfg.seed, "decoder"))
    train_decoder(
        decoder,
        oracle=oracle,
        images=images,
        noisy=cfg.protocol == "noisy",
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        seed=seed_for(cfg.seed, "decoder_order"),
        progress=cfg.progress,
    )
    save_checkpoint(path, decoder.state_dict(), manifest)
    return decoder


def _saved_decoder(
    path: Path, *, cfg: AttackConfig, manifest: Mapping[str, Any]
) -> nn.Module | None:
    """The decoder at `path` if it was trained under `manifest`; None if there is none usable."""
    if not path.exists():
        return None
    # Compared as read back from JSON, so that e.g. a tuple and a list do not differ.
    expected = json.loads(json.dumps(dict(manifest)))
    try:
        saved_manifest = json.loads(manifest_path(path).read_text())
    except (OSError, ValueError) as error:
        logger.warning("cannot read the manifest of %s (%s): training again", path, error)
        return None
    if saved_manifest != expected:
        logger.info("%s was trained under other settings: training again", path)
        return None
    # A fresh decoder: a load that fails half way leaves some weights replaced.
    decoder = build_decoder(cfg.decoder, seed=seed_for(cfg.seed, "decoder"))
    try:
        state, _ = load_checkpoint(path)
        decoder.load_state_dict(state)
    except (CheckpointError, RuntimeError, TypeError, AttributeError) as error:
        logger.warning("cannot load the decoder at %s (%s): training again", path, error)
        return None
    return decoder


def decoder_manifest(
    cfg: AttackConfig, *, oracle: CutOracle, aux: str, images: torch.Tensor
) -> dict[str, Any]:
    """Everything that determines the trained decoder: a saved one is reused only if it matches.

    The oracle identifies itself (`CutOracle.describe`: a lent part 1 by its bytes and noise, a
    substitute by its weights and how it was made); the auxiliary images by their data set,
    count and bytes.
    """
    pixels = images.detach().cpu().contiguous().numpy().tobytes()
    return {
        "part": "attacker",
        **oracle.describe(),
        "aux": aux,
        "aux_fraction": cfg.aux_fraction,
        "aux_images": len(images),
        "aux_sha256": hashlib.sha256(pixels).hexdigest(),
        "decoder": cfg.decoder,
        "protocol": cfg.protocol,
        "epochs": cfg.epochs,
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "seeding": SEEDING,
    }
