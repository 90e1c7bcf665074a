"""Labelled image grids (PIL): rows of 32x32 samples, upscaled with nearest-neighbour, with text labels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

UPSCALE = 3
GAP = 2
LABEL_HEIGHT = 14
ROW_LABEL_WIDTH = 150
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)


def to_pil(image: torch.Tensor, upscale: int = UPSCALE) -> Image.Image:
    """``[3, H, W]`` in [0, 1] -> upscaled PIL image."""
    arr = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    pil = Image.fromarray(arr)
    return pil.resize((pil.width * upscale, pil.height * upscale), Image.NEAREST)


def labelled_grid(
    cells: Sequence[Sequence[torch.Tensor]],
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    upscale: int = UPSCALE,
) -> Image.Image:
    """``cells[r][c]`` is a ``[K, 3, H, W]`` strip of K samples; one labelled cell per (row, column)."""
    font = ImageFont.load_default()
    k, _, h, w = cells[0][0].shape
    cell_w = k * (w * upscale + GAP) + 3 * GAP
    cell_h = h * upscale + GAP
    width = ROW_LABEL_WIDTH + len(column_labels) * cell_w
    height = LABEL_HEIGHT + len(row_labels) * (cell_h + GAP)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for c, label in enumerate(column_labels):
        draw.text((ROW_LABEL_WIDTH + c * cell_w + GAP, 1), label, fill=INK, font=font)
    for r, label in enumerate(row_labels):
        y = LABEL_HEIGHT + r * (cell_h + GAP)
        for i, line in enumerate(label.split("\n")):
            draw.text((GAP, y + GAP + i * 11), line, fill=INK, font=font)
        for c in range(len(column_labels)):
            x = ROW_LABEL_WIDTH + c * cell_w
            for j in range(k):
                canvas.paste(to_pil(cells[r][c][j], upscale), (x + j * (w * upscale + GAP), y))
    return canvas


def save(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
