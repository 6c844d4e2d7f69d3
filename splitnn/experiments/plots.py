"""The study's figures: accuracy against post-training noise, and stacked reconstructions.

The reconstruction figures are composed from the PNG each attacker wrote (originals above its
reconstructions), one panel per setting, titled by the setting.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt

logger = logging.getLogger(__name__)

# One line of a line plot: x values, y means, y standard errors (None: no error bar).
Series = tuple[Sequence[float], Sequence[float], Sequence[float | None]]


def line_plot(
    path: Path,
    series: Mapping[str, Series],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
) -> Path:
    """Writes a PNG with one line (and error bars where given) per entry of `series`."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, (xs, ys, errors) in series.items():
        yerr = [e or 0.0 for e in errors] if any(e for e in errors) else None
        ax.errorbar(list(xs), list(ys), yerr=yerr, marker="o", capsize=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def stack_images(path: Path, panels: Sequence[tuple[str, Path]], *, title: str) -> Path | None:
    """Stacks PNGs vertically, each titled; returns None (and writes nothing) without panels.

    Args:
        panels: (title, PNG path) pairs, top to bottom; missing files are skipped.
    """
    present = [(label, png) for label, png in panels if png.is_file()]
    if not present:
        return None
    images = [plt.imread(str(png)) for _, png in present]
    width = max(image.shape[1] for image in images)
    heights = [image.shape[0] * 8.0 / width + 0.35 for image in images]
    fig, axes = plt.subplots(
        len(images), 1, figsize=(8.0, sum(heights) + 0.5), height_ratios=heights, squeeze=False
    )
    for ax, (label, _), image in zip(axes[:, 0], present, images, strict=True):
        ax.imshow(image)
        ax.set_title(label, fontsize="small", loc="left")
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
