"""The study's figures: line plots (one or more panels side by side), and stacked reconstructions.

The reconstruction figures are composed from the PNG each attacker wrote (originals above its
reconstructions), one panel per setting, titled by the setting; or, cut down to their rows of
images, as one labelled strip per setting under a single row of originals.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from numpy.typing import NDArray

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

# One line of a line plot: x values, y means, y standard errors (None: no error bar).
Series = tuple[Sequence[float], Sequence[float], Sequence[float | None]]


@dataclass(frozen=True)
class Panel:
    """One panel of a figure: a line (with error bars where given) per entry of `series`.

    Attributes:
        xticks: the x positions to label (None: matplotlib's choice).
        reference: a dashed horizontal line: (y, its legend label).
        ylim: the y axis's (bottom, top) (None: matplotlib's choice).
    """

    series: Mapping[str, Series]
    xlabel: str
    ylabel: str
    title: str
    xticks: Sequence[float] | None = None
    reference: tuple[float, str] | None = None
    ylim: tuple[float, float] | None = None


def line_plot(
    path: Path,
    series: Mapping[str, Series],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
) -> Path:
    """Writes a PNG with one line (and error bars where given) per entry of `series`."""
    return panels_plot(path, [Panel(series, xlabel, ylabel, title)])


def panels_plot(path: Path, panels: Sequence[Panel], *, title: str | None = None) -> Path:
    """Writes a PNG with `panels` side by side, under `title` if given."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.2), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        _draw(ax, panel)
    return _save(fig, path, title=title)


def _draw(ax: Axes, panel: Panel) -> None:
    for label, (xs, ys, errors) in panel.series.items():
        yerr = [e or 0.0 for e in errors] if any(e for e in errors) else None
        ax.errorbar(list(xs), list(ys), yerr=yerr, marker="o", capsize=3, label=label)
    if panel.reference is not None:
        y, label = panel.reference
        ax.axhline(y, color="grey", linestyle="--", linewidth=1, label=label)
    if panel.xticks is not None:
        ax.set_xticks(list(panel.xticks))
    if panel.ylim is not None:
        ax.set_ylim(*panel.ylim)
    ax.set_xlabel(panel.xlabel)
    ax.set_ylabel(panel.ylabel)
    ax.set_title(panel.title)
    ax.grid(alpha=0.3)
    if panel.series or panel.reference:
        ax.legend(fontsize="small")


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
    return _save(fig, path, title=title)


# A pixel of a grid PNG lighter than this grey level (in [0, 1]) is the white background; the
# cells' images are darker unless saturated, and the text is thin.
_BACKGROUND = 0.98
_CELL_COLUMNS = 0.3  # share of a column's pixels in cells, at least, for a column of cells
_CELL_ROWS = 0.6  # the same for a row of pixels across the cell columns
_MIN_BAND = 3  # pixels: a thinner band is a line, not a row of images
_BLANK_ROW = 0.02  # at most this share of a pixel row in ink: the blank between two rows of cells


def grid_rows(image: NDArray[np.floating]) -> list[NDArray[np.floating]]:
    """The rows of cells of a reconstruction grid (originals on top, then reconstructions),
    cut out of its PNG without the row labels, the title and the margins.

    Args:
        image: float [H, W] or [H, W, 3 or 4] in [0, 1], as `matplotlib.pyplot.imread` gives.

    Returns:
        One array [h, w(, C)] per row of cells, top to bottom; empty when none is found.
    """
    gray = image[..., :3].mean(axis=-1) if image.ndim == 3 else image
    ink = gray < _BACKGROUND
    columns = np.flatnonzero(ink.mean(axis=0) > _CELL_COLUMNS)
    if columns.size == 0:
        return []
    left, right = int(columns[0]), int(columns[-1]) + 1
    share = ink[:, left:right].mean(axis=1)
    # A band is a run of pixel rows between blank ones; it is a row of cells if enough of its
    # fullest pixel row is in cells (the title's text is not). Cells that are mostly white (the
    # reconstructions of a heavily noised tensor) thin a row of cells out but do not blank it.
    filled = np.concatenate([[False], share > _BLANK_ROW, [False]])
    edges = np.flatnonzero(np.diff(filled.astype(np.int8)))
    bands = [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]
    return [
        image[a:b, left:right]
        for a, b in bands
        if b - a >= _MIN_BAND and share[a:b].max() > _CELL_ROWS
    ]


def stack_strips(
    path: Path, strips: Sequence[tuple[str, NDArray[np.floating]]], *, title: str
) -> Path | None:
    """Writes strips of images (e.g. `grid_rows`) one under the other, each labelled on its
    left; returns None (and writes nothing) without strips.

    Args:
        strips: (label, image [h, w(, C)]) pairs, top to bottom.
    """
    if not strips:
        return None
    label, cells, top, bottom = 2.6, 8.0, 0.6, 0.1  # inches
    heights = [s.shape[0] * cells / s.shape[1] for _, s in strips]
    gap = 0.1
    height = top + sum(heights) + gap * (len(strips) - 1) + bottom
    fig, axes = plt.subplots(
        len(strips), 1, figsize=(label + cells, height), height_ratios=heights, squeeze=False
    )
    fig.subplots_adjust(
        left=label / (label + cells),
        right=1.0,
        top=1.0 - top / height,
        bottom=bottom / height,
        hspace=gap / (sum(heights) / len(strips)),
    )
    for ax, (text, strip) in zip(axes[:, 0], strips, strict=True):
        ax.imshow(strip, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(text, rotation=0, ha="right", va="center", fontsize="small")
        for spine in ax.spines.values():
            spine.set_visible(False)
    fig.suptitle(title, y=1.0 - 0.3 / height, va="center")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _save(fig: Figure, path: Path, *, title: str | None) -> Path:
    """Writes `fig` to `path` (a PNG, folders made), under `title` if given, and closes it."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
