"""Scoring a hijacking server's decoders (feature-space hijacking) on what it received.

A server run with ``--hijack fsha`` writes decoder snapshots under
``MODEL_DIR/hijack/<owner>/<run>/decoder_step=N.ckpt``. This harness decodes the victim's
deployment tensors (the attack split of the wire log) with each snapshot and scores them against
the true images, which only the harness knows (`intercept.ground_truth`): how the attack grows
with the holder's training steps.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from splitnn.attacker.baselines import score_baselines
from splitnn.attacker.figures import save_curve, save_grid
from splitnn.attacker.intercept import InterceptError, from_log, ground_truth, stack_records
from splitnn.attacker.metrics import score
from splitnn.attacker.validator import accuracy, load_or_train_validator
from splitnn.common import exits
from splitnn.common.checkpoints import CheckpointError, load_checkpoint
from splitnn.common.datasets import Subset, load_splits
from splitnn.common.decoders import build_decoder
from splitnn.common.devices import to_compute, use_device
from splitnn.common.reports import AttackReport
from splitnn.common.wirelog import read_wirelog

_STEP = re.compile(r"decoder_step=(\d+)\.ckpt$")
# train_*: the snapshot's decoder on the training tensors of the steps just before it (the
# holder's part 1 as it was then), NaN when the log holds no training tensors with indices.
CURVE_FIELDS = ("step", "mse", "psnr", "ssim", "validator_accuracy", "train_mse", "train_ssim")
RECENT_STEPS = 4  # training batches scored per snapshot


class SnapshotError(exits.Failed):
    """No decoder snapshots where they were looked for, or one that cannot be used."""


@dataclass(frozen=True)
class Snapshot:
    """One decoder snapshot: the holder steps it had seen, its file and its decoder's name."""

    step: int
    path: Path
    decoder: str
    public: str


@dataclass(frozen=True)
class HijackedConfig:
    """Settings of `splitnn-attack hijacked`; see its help."""

    from_log: Path
    decoders: Path
    run: str | None = None
    dataset: str = "mnist5k"
    data_dir: Path = Path("data")
    model_dir: Path = Path("models")
    seed: int = 0
    validator_epochs: int = 5
    curve: Path | None = None
    figure: Path | None = None
    shown: int = 4  # snapshots drawn in the figure, spread over the curve
    device: str = "cpu"  # where the decoders and the validator compute


def find_snapshots(folder: Path, run: str | None = None) -> list[Snapshot]:
    """The snapshots in `folder` (or `folder/run`), by step.

    Raises:
        SnapshotError: none there, or a manifest that is not a hijacking decoder's.
    """
    for where in ([folder / run] if run else []) + [folder]:
        paths = sorted(p for p in where.glob("decoder_step=*.ckpt") if _STEP.search(p.name))
        if paths:
            break
    else:
        which = f" (run {run})" if run else ""
        raise SnapshotError(f"no decoder_step=N.ckpt under {folder}{which}")
    found = []
    for path in paths:
        manifest = _manifest(path)
        if manifest.get("part") != "hijack-decoder":
            raise SnapshotError(f"{path} is not a hijacking server's decoder snapshot")
        settings = manifest.get("settings", {})
        found.append(
            Snapshot(
                step=int(manifest["step"]),
                path=path,
                decoder=str(manifest.get("decoder", "deep")),
                public=str(settings.get("dataset", "?")),
            )
        )
    return sorted(found, key=lambda s: s.step)


def _manifest(path: Path) -> dict[str, Any]:
    manifest_file = path.with_name(path.name + ".json")
    try:
        data = json.loads(manifest_file.read_text())
    except (OSError, ValueError) as error:
        raise SnapshotError(f"cannot read the manifest of {path}: {error}") from None
    if not isinstance(data, dict):
        raise SnapshotError(f"the manifest of {path} is not an object")
    return data


def load_decoder(snapshot: Snapshot) -> nn.Module:
    """The snapshot's decoder in eval mode (read with ``weights_only=True``)."""
    try:
        state, _ = load_checkpoint(snapshot.path)
        decoder = build_decoder(snapshot.decoder, seed=0)
        decoder.load_state_dict(state)
    except (CheckpointError, RuntimeError, ValueError) as error:
        raise SnapshotError(f"cannot load {snapshot.path}: {error}") from None
    return decoder.eval()


def sent_labels(log: Path, *, run: str, indices: torch.Tensor) -> torch.Tensor | None:
    """The labels the holder sent with the attack split's tensors, in `indices`' order; None
    when it sent none (deployment batches usually go without labels)."""
    by_index: dict[int, int] = {}
    for record in read_wirelog(log).records:
        if record.split != "attack" or record.step.run != run or not record.HasField("labels"):
            continue
        if not record.HasField("indices"):
            continue
        idx = torch.frombuffer(bytearray(record.indices.data), dtype=torch.int64)
        lab = torch.frombuffer(bytearray(record.labels.data), dtype=torch.int64)
        if idx.shape != lab.shape:
            continue
        by_index.update(zip(idx.tolist(), lab.tolist(), strict=True))
    if not all(int(i) in by_index for i in indices):
        return None
    return torch.tensor([by_index[int(i)] for i in indices], dtype=torch.int64)


def training_tensors(log: Path, *, run: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The holder's training batches (cut float32 [B, 500], indices int64 [B]) in step order,
    the latest copy of a retried step; empty when the holder sent no indices."""
    latest = {}
    for record in read_wirelog(log).records:
        if record.phase == "train" and record.split == "train" and record.step.run == run:
            latest[record.step.epoch, record.step.batch] = record
    try:
        return [stack_records([latest[key]]) for key in sorted(latest)]
    except ValueError:  # no indices: nothing to score against
        return []


def _at_step(
    decoder: nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    step: int,
    train: Subset,
) -> dict[str, float]:
    chosen = batches[max(0, step - RECENT_STEPS) : step]
    if not chosen:
        return {"train_mse": math.nan, "train_ssim": math.nan}
    cut = torch.cat([c for c, _ in chosen])
    originals, _ = ground_truth(train, torch.cat([i for _, i in chosen]))
    with torch.no_grad():
        scores = score(originals, decoder(to_compute(cut)).cpu().clamp(0.0, 1.0))
    return {"train_mse": scores["mse"], "train_ssim": scores["ssim"]}


def score_hijacked(cfg: HijackedConfig) -> tuple[AttackReport, list[dict[str, float]]]:
    """Scores every snapshot on the victim's attack-split tensors; returns the final snapshot's
    report (with baselines) and the curve, one row per snapshot (`CURVE_FIELDS`).

    Raises:
        SnapshotError, InterceptError: nothing to score.
    """
    use_device(cfg.device)
    intercepted = from_log(cfg.from_log, split="attack", run=cfg.run)
    snapshots = find_snapshots(cfg.decoders, intercepted.run)
    splits = load_splits(cfg.dataset, root=cfg.data_dir)
    originals, labels = ground_truth(splits.attack, intercepted.indices)
    validator = load_or_train_validator(
        splits=splits,
        model_dir=cfg.model_dir,
        seed=cfg.seed,
        epochs=cfg.validator_epochs,
        progress=False,
    )
    batches = training_tensors(cfg.from_log, run=intercepted.run)
    curve: list[dict[str, float]] = []
    drawn: list[tuple[str, torch.Tensor]] = []
    chosen = _spread(len(snapshots), cfg.shown)
    for n, snapshot in enumerate(snapshots):
        decoder = load_decoder(snapshot)
        with torch.no_grad():
            recon = decoder(to_compute(intercepted.activations)).cpu().clamp(0.0, 1.0)
        scores = score(originals, recon)
        row = {"step": float(snapshot.step), **{k: scores[k] for k in ("mse", "psnr", "ssim")}}
        row["validator_accuracy"] = accuracy(validator, recon, labels)
        row.update(_at_step(decoder, batches, snapshot.step, splits.train))
        curve.append(row)
        if n in chosen:
            drawn.append((f"step {snapshot.step}", recon))
        last_scores = {**scores, "validator_accuracy": row["validator_accuracy"]}
    sent = sent_labels(cfg.from_log, run=intercepted.run, indices=intercepted.indices)
    classes, classes_from = (labels, "true labels") if sent is None else (sent, "sent labels")
    baselines = score_baselines(
        originals,
        labels,
        public_images=splits.aux.images,
        public_labels=splits.aux.labels,
        classes=classes,
        validator=validator,
    )
    figure = cfg.figure or Path("results/figures") / f"hijacked_{intercepted.run}.png"
    save_grid(figure, originals=originals, rows=drawn, title="feature-space hijacking")
    if cfg.curve is not None:
        write_curve(cfg.curve, curve)
        save_curve(
            cfg.curve.with_suffix(".png"),
            curve,
            baselines={name: scores["mse"] for name, scores in baselines.items()},
            title=f"feature-space hijacking of {intercepted.run}",
        )
    final = snapshots[-1]
    report = AttackReport(
        classifier="",
        attacker=str(final.path),
        dataset=cfg.dataset,
        deployed_noise=0.0,
        set_noise=0.0,
        aux=final.public,
        aux_fraction=1.0,
        aux_images=len(splits.aux),
        decoder=final.decoder,
        protocol=f"fsha (class-mean baseline from the {classes_from})",
        images=int(originals.shape[0]),
        mse=last_scores["mse"],
        psnr=last_scores["psnr"],
        ssim=last_scores["ssim"],
        dcor=last_scores["dcor"],
        validator_accuracy=last_scores["validator_accuracy"],
        validator_accuracy_originals=accuracy(validator, originals, labels),
        figure=str(figure),
        source=intercepted.source,
        log_problem=intercepted.problem,
        oracle="hijacked",
        baselines=baselines,
    )
    return report, curve


def _spread(count: int, shown: int) -> set[int]:
    """Up to `shown` indices of 0..count-1, evenly spread, the last one always among them."""
    if count <= shown:
        return set(range(count))
    if shown <= 1:
        return {count - 1}
    return {round(i * (count - 1) / (shown - 1)) for i in range(shown)}


def write_curve(path: Path, curve: list[dict[str, float]]) -> None:
    """The curve as CSV, one row per snapshot (`CURVE_FIELDS`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CURVE_FIELDS)
        writer.writeheader()
        for row in curve:
            writer.writerow({**row, "step": int(row["step"])})


__all__ = ["HijackedConfig", "InterceptError", "SnapshotError", "find_snapshots", "score_hijacked"]
