"""A whole attack: train a decoder through the black-box part 1, invert the victim, score."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from splitnn.attacker.figures import save_grid
from splitnn.attacker.intercept import Intercepted, from_live, from_log, ground_truth
from splitnn.attacker.inversion import reconstruct, train_decoder
from splitnn.attacker.metrics import score
from splitnn.attacker.oracle import BodyOracle
from splitnn.attacker.validator import accuracy, load_or_train_validator
from splitnn.common.checkpoints import (
    CheckpointError,
    attacker_stem,
    load_checkpoint,
    manifest_path,
    save_checkpoint,
)
from splitnn.common.credentials import Credentials
from splitnn.common.datasets import load_splits
from splitnn.common.decoders import build_decoder
from splitnn.common.reports import AttackReport
from splitnn.common.seeds import SEEDING, seed_for

logger = logging.getLogger(__name__)

Protocol = Literal["noisy", "clean"]


@dataclass(frozen=True)
class AttackConfig:
    """Settings of one attack.

    Attributes:
        classifier: the deployed part-1 checkpoint the colluding data holder lends (black box).
        from_log / live: where the victim's tensors come from (exactly one).
        dataset: the victim's data set, for ground truth; None: from the classifier manifest.
        aux: the attacker's auxiliary data set; None: the victim's.
        aux_fraction: fraction of the auxiliary slice used (the study's data-volume experiment).
        set_noise: noise scale of the oracle instead of the deployed one (post-training noise).
        protocol: "noisy" trains and scores on what crosses the wire; "clean" is the reference's
            shortcut: trained and scored on noise-free tensors the wire never carries.
        credentials: with `live`, the tap party's TLS files and/or token.
        connect_timeout: with `live`, seconds to wait for the server to answer at all.
        retrain: train the decoder even if one trained under identical settings is saved.
    """

    classifier: Path
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
    progress: bool = True
    credentials: Credentials = field(default_factory=Credentials)
    retrain: bool = False
    connect_timeout: float = 30.0


def run_attack(cfg: AttackConfig) -> AttackReport:
    """Runs the attack end to end; see `AttackConfig`."""
    oracle = BodyOracle(
        cfg.classifier, set_noise=cfg.set_noise, seed=seed_for(cfg.seed, "oracle_noise")
    )
    dataset = cfg.dataset or str(oracle.manifest.get("dataset", "mnist5k"))
    victim = load_splits(dataset, root=cfg.data_dir)
    aux_name = cfg.aux or dataset
    aux_data = load_splits(aux_name, root=cfg.data_dir).aux
    aux_images = aux_data.take(max(1, round(cfg.aux_fraction * len(aux_data)))).images
    intercepted = _intercept(cfg, expected=len(victim.attack))
    originals, labels = ground_truth(victim.attack, intercepted.indices)
    noisy = cfg.protocol == "noisy"
    # The clean protocol never looks at the wire: it scores on the pre-noise tensors of the
    # victim's images, as the reference did.
    cuts = intercepted.activations if noisy else oracle.query(originals, noisy=False)

    stem = attacker_stem(
        classifier=oracle.path.name.removesuffix(".ckpt"),
        aux=aux_name,
        set_noise=cfg.set_noise,
        aux_fraction=cfg.aux_fraction,
        decoder=cfg.decoder,
        protocol=cfg.protocol,
    )
    path = cfg.model_dir / "attackers" / f"{stem}.ckpt"
    decoder = load_or_train_decoder(
        path,
        cfg=cfg,
        oracle=oracle,
        images=aux_images,
        manifest=decoder_manifest(cfg, oracle=oracle, aux=aux_name, images=aux_images),
    )
    recon = reconstruct(decoder, cuts)
    scores = score(originals, recon)
    validator = load_or_train_validator(
        splits=victim,
        model_dir=cfg.model_dir,
        seed=cfg.seed,
        epochs=cfg.validator_epochs,
        progress=cfg.progress,
    )
    figure = cfg.figure or Path("results") / "figures" / f"{stem}.png"
    save_grid(figure, originals=originals, rows=[(_row_label(cfg, oracle), recon)], title=stem)
    return AttackReport(
        classifier=str(oracle.path),
        attacker=str(path),
        dataset=dataset,
        deployed_noise=oracle.deployed_noise,
        set_noise=oracle.noise_scale,
        aux=aux_name,
        aux_fraction=cfg.aux_fraction,
        aux_images=len(aux_images),
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
    )


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


def _row_label(cfg: AttackConfig, oracle: BodyOracle) -> str:
    return f"b={oracle.noise_scale:g} {cfg.decoder}"


def load_or_train_decoder(
    path: Path,
    *,
    cfg: AttackConfig,
    oracle: BodyOracle,
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


def file_sha256(path: Path) -> str:
    """Hex sha256 of the file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def decoder_manifest(
    cfg: AttackConfig, *, oracle: BodyOracle, aux: str, images: torch.Tensor
) -> dict[str, Any]:
    """Everything that determines the trained decoder: a saved one is reused only if it matches.

    The part 1 is identified by its bytes (the path may be rewritten in place), its noise by
    the scale the oracle applies; the auxiliary images by their data set, count and bytes.
    """
    pixels = images.detach().cpu().contiguous().numpy().tobytes()
    return {
        "part": "attacker",
        "classifier": str(oracle.path),
        "classifier_sha256": file_sha256(oracle.path),
        "deployed_noise": oracle.deployed_noise,
        "set_noise": oracle.noise_scale,
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
