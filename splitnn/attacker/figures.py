"""The study's figure: a grid of original images above one row of reconstructions per setting."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import torch
from matplotlib.figure import Figure

# Files only, never a window. Figures are built without pyplot, so no global figure state either.
matplotlib.use("Agg")

_CELL_INCHES = 0.9  # side of one image in the figure
_LABEL_INCHES = 1.6  # left margin for the row labels
_TITLE_INCHES = 0.5
_MARGIN_INCHES = 0.1  # top (without a title), right and bottom


def save_grid(
    path: str | os.PathLike[str],
    *,
    originals: torch.Tensor,
    rows: Sequence[tuple[str, torch.Tensor]],
    n: int = 10,
    title: str | None = None,
) -> Path:
    """Writes a PNG: the first `n` originals on top, then one labelled row per reconstruction set.

    Args:
        path: the PNG to write; missing parent folders are created.
        originals: float [N, 1, 28, 28] in [0, 1] (any [N, 1, H, W] works).
        rows: (label, reconstructions float [M, 1, H, W]) pairs, M >= the images shown, in the
            originals' order; shown as given, with pixels outside [0, 1] drawn clipped.
        n: how many images per row (at most N).
        title: an optional title above the grid.

    Returns:
        The path written.

    Raises:
        ValueError: on an empty selection, mismatched image shapes or too few reconstructions.
    """
    shown = min(n, originals.shape[0])
    labelled = [("original", originals), *rows]
    _check_rows(labelled, shown=shown)
    top = _TITLE_INCHES if title else _MARGIN_INCHES
    width = _LABEL_INCHES + shown * _CELL_INCHES + _MARGIN_INCHES
    height = top + len(labelled) * _CELL_INCHES + _MARGIN_INCHES
    figure = Figure(figsize=(width, height), dpi=100)
    axes = figure.subplots(len(labelled), shown, squeeze=False)
    figure.subplots_adjust(
        left=_LABEL_INCHES / width,
        right=1.0 - _MARGIN_INCHES / width,
        bottom=_MARGIN_INCHES / height,
        top=1.0 - top / height,
        wspace=0.05,
        hspace=0.05,
    )
    for row, (label, images) in enumerate(labelled):
        pixels = images[:shown, 0].detach().to("cpu", torch.float32).numpy()
        for column in range(shown):
            ax = axes[row, column]
            ax.imshow(pixels[column], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=10)
    if title:
        figure.suptitle(title, fontsize=12, y=1.0 - 0.15 * top / height)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="png")
    return out


def _check_rows(labelled: Sequence[tuple[str, torch.Tensor]], *, shown: int) -> None:
    """Raises ValueError unless every row holds at least `shown` images [N, 1, H, W] alike."""
    if shown < 1:
        raise ValueError("no images to show: n and the number of originals must be >= 1")
    size = labelled[0][1].shape[2:]
    for label, images in labelled:
        if images.dim() != 4 or images.shape[1] != 1 or images.shape[2:] != size:
            raise ValueError(f"row {label!r}: images {tuple(images.shape)}, not [N, 1, H, W]")
        if images.shape[0] < shown:
            raise ValueError(f"row {label!r} has {images.shape[0]} images; {shown} are shown")


def save_curve(
    path: Path,
    curve: Sequence[dict[str, float]],
    *,
    baselines: dict[str, float],
    title: str,
) -> Path:
    """A hijacking curve as PNG: MSE against victim steps, on the deployment tensors (`mse`) and
    on the training tensors just before each snapshot (`train_mse`), the trivial baselines'
    MSE (name -> MSE) as dashed lines. Returns `path`."""
    figure = Figure(figsize=(7, 4))
    axes = figure.add_subplot()
    steps = [row["step"] for row in curve]
    axes.plot(
        steps,
        [row["mse"] for row in curve],
        marker="o",
        label="deployment tensors (part 1 as deployed)",
    )
    axes.plot(
        steps,
        [row["train_mse"] for row in curve],
        marker="s",
        label="training tensors (part 1 at that step)",
    )
    for (name, mse), style in zip(baselines.items(), (":", "--", "-."), strict=False):
        axes.axhline(mse, color="grey", linestyle=style, label=f"baseline: {name}")
    axes.set_xlabel("victim training steps")
    axes.set_ylabel("reconstruction MSE (pixels in [0, 1])")
    axes.set_ylim(bottom=0)
    axes.set_title(title)
    axes.legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    return path
