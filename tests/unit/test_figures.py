"""The originals-vs-reconstructions figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from splitnn.attacker.figures import save_curve, save_grid

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def images(n: int, *, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def test_grid_is_a_png_with_one_row_per_setting(tmp_path: Path) -> None:
    originals = images(12, seed=0)
    rows = [("b = 0", images(12, seed=1)), ("b = 1.0", images(12, seed=2))]

    path = save_grid(tmp_path / "figs" / "grid.png", originals=originals, rows=rows, n=8)

    assert path == tmp_path / "figs" / "grid.png"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = imread(path)
    height, width = pixels.shape[:2]
    # 3 rows of 8 cells of 0.9 in, a 1.6 in label margin, 0.1 in margins, at 100 dpi.
    assert (height, width) == (round(100 * (3 * 0.9 + 0.2)), round(100 * (1.6 + 8 * 0.9 + 0.1)))
    assert float(np.std(pixels[..., :3])) > 0.05


def test_grid_shows_the_images_it_was_given(tmp_path: Path) -> None:
    black, white = torch.zeros(4, 1, 28, 28), torch.ones(4, 1, 28, 28)

    path = save_grid(tmp_path / "bw.png", originals=white, rows=[("dark", black)], n=4)

    pixels = imread(path)[..., :3].mean(axis=2)
    height, width = pixels.shape
    top_row = pixels[10 + 20 : 100 - 20, width // 2]
    bottom_row = pixels[height - 10 - 70 : height - 10 - 20, width // 2]
    assert top_row.min() > 0.9 and bottom_row.max() < 0.1


def test_title_adds_height_and_n_is_capped_by_the_originals(tmp_path: Path) -> None:
    originals = images(3, seed=0)

    plain = imread(save_grid(tmp_path / "a.png", originals=originals, rows=[], n=10))
    titled = imread(save_grid(tmp_path / "b.png", originals=originals, rows=[], title="noise"))

    assert plain.shape[1] == round(100 * (1.6 + 3 * 0.9 + 0.1))
    assert titled.shape[0] > plain.shape[0]


def test_mismatched_rows_are_refused(tmp_path: Path) -> None:
    originals = images(5, seed=0)

    with pytest.raises(ValueError, match="'short' has 2 images"):
        save_grid(tmp_path / "x.png", originals=originals, rows=[("short", images(2, seed=1))])
    with pytest.raises(ValueError, match="'flat'"):
        save_grid(tmp_path / "x.png", originals=originals, rows=[("flat", torch.rand(5, 784))])
    with pytest.raises(ValueError, match="no images"):
        save_grid(tmp_path / "x.png", originals=originals, rows=[], n=0)


def test_the_curves_plot_is_written_with_its_baselines(tmp_path: Path) -> None:
    row = {"mse": 0.02, "psnr": 17.0, "ssim": 0.8, "validator_accuracy": 93.0, "train_ssim": 0.5}
    curve = [{**row, "step": 10.0, "train_mse": 0.07}, {**row, "step": 20.0, "train_mse": 0.03}]

    path = save_curve(tmp_path / "c.png", curve, baselines={"mean image": 0.069}, title="t")

    image = imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100
