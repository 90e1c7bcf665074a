"""Labelled comparison grids (PIL only): rows are concepts tagged target / CARE / unrelated, columns are
models x seeds, so one picture shows what an erasure removed and what it spared.

Layout (top to bottom): an optional title, one header band naming each column *group* (a model: "original",
"erased") spanning its seeds, one band naming each column (a seed), then one row per concept. The left
margin shows the concept's tag as a coloured chip (:data:`TAG_COLOURS`) followed by its label; every cell
gets a frame in its row's tag colour. Images are upscaled with nearest-neighbour to ``cell`` pixels so
small (32 / 64 px) images stay legible. Fonts are Pillow's bundled default (no system font needed).

Images may be torch tensors or numpy arrays, ``[H, W, C]`` (ComfyUI IMAGE rows) or ``[C, H, W]``
(the toy world's samples), float in ``[0, 1]`` or uint8.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

TAG_COLOURS: dict[str, tuple[int, int, int]] = {
    "target": (205, 45, 45),
    "care": (225, 150, 20),
    "unrelated": (60, 110, 195),
}
"""Tag -> RGB used for chips, frames and bars; any other tag is drawn in :data:`OTHER_COLOUR`."""
OTHER_COLOUR = (120, 120, 120)
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
GRID_LINE = (200, 200, 200)

DEFAULT_CELL = 128  # px of one image cell after upscaling
PAD = 6  # px between cells and around the grid
FRAME = 3  # px of the tag-coloured frame around each cell
FONT_SIZE = 14
TITLE_SIZE = 18
CHANNEL_COUNTS = (1, 3, 4)


class GridError(ValueError):
    """Images or labels that do not make a grid; the message says what to fix."""


def font(size: int = FONT_SIZE) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font at ``size`` (Pillow >= 10.1 ships a scalable one); the bitmap font otherwise."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # older Pillow: fixed-size bitmap font only
        return ImageFont.load_default()


def text_size(
    draw: ImageDraw.ImageDraw, text: str, fnt: ImageFont.ImageFont | ImageFont.FreeTypeFont
) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=fnt)
    return int(right - left), int(bottom - top)


def tag_colour(tag: str) -> tuple[int, int, int]:
    return TAG_COLOURS.get(tag.lower(), OTHER_COLOUR)


def to_uint8_hwc(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """One image as ``uint8 [H, W, 3]``: accepts HWC or CHW, 1/3/4 channels, float [0, 1] or uint8."""
    arr = image.detach().cpu().float().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise GridError(f"an image must have 2 or 3 dimensions, got shape {arr.shape}")
    if arr.shape[-1] not in CHANNEL_COUNTS and arr.shape[0] in CHANNEL_COUNTS:
        arr = np.transpose(arr, (1, 2, 0))
    if arr.shape[-1] not in CHANNEL_COUNTS:
        raise GridError(f"cannot tell the channel axis of an image of shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return np.ascontiguousarray(arr[:, :, :3])


@dataclass(frozen=True)
class GridRow:
    """One concept row: ``label`` shown at the left, ``tag`` picks the colour (target / care / unrelated)."""

    label: str
    tag: str = "unrelated"


def make_grid(
    images: Sequence[Sequence[torch.Tensor | np.ndarray]],
    rows: Sequence[GridRow],
    columns: Sequence[str],
    groups: Sequence[tuple[str, int]] = (),
    title: str = "",
    cell: int = DEFAULT_CELL,
) -> Image.Image:
    """A labelled grid: ``images[i][j]`` is row ``i`` (``rows[i]``), column ``j`` (``columns[j]``).

    ``groups`` is a list of ``(label, span)`` naming consecutive columns (e.g. ``[("original", 2),
    ("erased", 2)]``); spans must add up to the number of columns. A thicker gap separates groups.
    """
    if not rows or not columns:
        raise GridError("a grid needs at least one row and one column")
    if len(images) != len(rows) or any(len(r) != len(columns) for r in images):
        shape = [len(r) for r in images]
        raise GridError(f"images per row {shape} do not match {len(rows)} rows x {len(columns)} columns")
    if groups and sum(span for _, span in groups) != len(columns):
        raise GridError(f"column groups span {sum(s for _, s in groups)} columns but the grid has {len(columns)}")
    if cell < 1:
        raise GridError("cell size must be at least 1 pixel")
    fnt, title_fnt = font(FONT_SIZE), font(TITLE_SIZE)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = text_size(probe, "Ag", fnt)[1] + PAD
    chip_w = max(text_size(probe, tag.upper(), fnt)[0] for tag in {r.tag for r in rows}) + 2 * PAD
    label_w = chip_w + PAD + max(text_size(probe, r.label, fnt)[0] for r in rows) + 2 * PAD
    title_h = text_size(probe, title, title_fnt)[1] + 2 * PAD if title else 0
    group_h = line_h if groups else 0
    group_gap = PAD * 2
    starts = _group_starts(groups, len(columns))

    def col_x(j: int) -> int:
        return label_w + PAD + j * (cell + PAD) + sum(group_gap for s in starts if 0 < s <= j)

    width = col_x(len(columns) - 1) + cell + 2 * PAD
    top = title_h + group_h + line_h
    height = top + len(rows) * (cell + PAD) + PAD
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((PAD, PAD), title, fill=TEXT, font=title_fnt)
    for (label, span), start in zip(groups, starts):
        x0, x1 = col_x(start), col_x(start + span - 1) + cell
        draw.text(((x0 + x1 - text_size(draw, label, fnt)[0]) // 2, title_h), label, fill=TEXT, font=fnt)
        draw.line([(x0, title_h + line_h - PAD // 2), (x1, title_h + line_h - PAD // 2)], fill=GRID_LINE, width=1)
    for j, label in enumerate(columns):
        draw.text(
            (col_x(j) + (cell - text_size(draw, label, fnt)[0]) // 2, title_h + group_h), label, fill=TEXT, font=fnt
        )
    for i, row in enumerate(rows):
        y = top + i * (cell + PAD)
        colour = tag_colour(row.tag)
        chip = row.tag.upper()
        cy = y + (cell - line_h) // 2
        draw.rectangle([PAD, cy, PAD + chip_w, cy + line_h], fill=colour)
        draw.text((PAD + (chip_w - text_size(draw, chip, fnt)[0]) // 2, cy + PAD // 2), chip, fill=BACKGROUND, font=fnt)
        draw.text((2 * PAD + chip_w, cy + PAD // 2), row.label, fill=TEXT, font=fnt)
        for j, image in enumerate(images[i]):
            x = col_x(j)
            tile = Image.fromarray(to_uint8_hwc(image)).resize((cell - 2 * FRAME, cell - 2 * FRAME), Image.NEAREST)
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=colour)
            canvas.paste(tile, (x + FRAME, y + FRAME))
    return canvas


def _group_starts(groups: Sequence[tuple[str, int]], n_columns: int) -> list[int]:
    starts, at = [], 0
    for _, span in groups:
        starts.append(at)
        at += span
    return starts if groups else [0] if n_columns else []


def model_seed_grid(
    images: Sequence[Sequence[Sequence[torch.Tensor | np.ndarray]]],
    rows: Sequence[GridRow],
    models: Sequence[str],
    seeds: Sequence[int],
    title: str = "",
    cell: int = DEFAULT_CELL,
) -> Image.Image:
    """The comparison grid: ``images[model][row][seed]`` laid out as rows x (models x seeds)."""
    if len(images) != len(models):
        raise GridError(f"{len(images)} image sets for {len(models)} models")
    table = [[image for m in range(len(models)) for image in images[m][i]] for i in range(len(rows))]
    columns = [f"seed {s}" for _ in models for s in seeds]
    return make_grid(table, rows, columns, [(m, len(seeds)) for m in models], title, cell)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image as a ComfyUI IMAGE batch ``[1, H, W, 3]`` float32 in [0, 1]."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)[None]


def batch_grid(
    batches: Sequence[torch.Tensor],
    rows: Sequence[GridRow],
    models: Sequence[str],
    title: str = "",
    cell: int = DEFAULT_CELL,
    column_labels: Sequence[str] = (),
) -> Image.Image:
    """A comparison grid from image batches sampled elsewhere: ``batches[m]`` holds model ``m``'s images,
    row-major (row 0's images first), ``len(rows)`` rows of equally many images each.

    Columns are labelled ``column_labels`` (one per image of a row) or ``#1, #2, ...``.
    """
    if len(batches) != len(models) or not batches:
        raise GridError(f"{len(batches)} image batches for {len(models)} model labels")
    sizes = {int(b.shape[0]) for b in batches}
    if len(sizes) != 1:
        raise GridError(
            f"the image batches differ in size ({sorted(sizes)}); give every model the same prompts and seeds"
        )
    n = sizes.pop()
    if not rows or n % len(rows):
        raise GridError(f"{n} images per batch cannot be split into {len(rows)} rows of equal length")
    per_row = n // len(rows)
    labels = list(column_labels) or [f"#{k + 1}" for k in range(per_row)]
    if len(labels) != per_row:
        raise GridError(f"{len(labels)} column labels for {per_row} images per row")
    table = [[b[i * per_row + k] for b in batches for k in range(per_row)] for i in range(len(rows))]
    return make_grid(
        table, rows, [label for _ in models for label in labels], [(m, per_row) for m in models], title, cell
    )
