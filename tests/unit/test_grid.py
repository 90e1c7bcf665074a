"""Labelled comparison grids: layout, cell contents, tag frames, input layouts and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from erasure.grid import FRAME, GridError, GridRow, make_grid, model_seed_grid, pil_to_tensor, tag_colour, to_uint8_hwc

ROWS = [GridRow("boat", "target"), GridRow("water", "care"), GridRow("house", "unrelated")]


def solid(i: int, j: int) -> torch.Tensor:
    """A distinct flat colour per cell, CHW float."""
    return torch.tensor([i * 0.3 + 0.1, j * 0.2 + 0.05, 0.5]).view(3, 1, 1).expand(3, 8, 8)


def find(img, colour) -> tuple[int, int]:
    ys, xs = np.nonzero(np.all(np.asarray(img) == np.array(colour, dtype=np.uint8), axis=-1))
    assert len(xs), f"colour {colour} not in the grid"
    return int(xs.mean()), int(ys.mean())


def test_each_cell_shows_its_image_in_order_with_a_tag_frame() -> None:
    images = [[solid(i, j) for j in range(4)] for i in range(3)]
    grid = model_seed_grid(
        [[r[:2] for r in images], [r[2:] for r in images]], ROWS, ["original", "erased"], [0, 1], cell=40
    )
    arr = np.asarray(grid)
    centres = {(i, j): find(grid, to_uint8_hwc(solid(i, j))[0, 0]) for i in range(3) for j in range(4)}
    for i in range(3):  # rows top to bottom, columns left to right
        assert all(centres[(i, j)][0] < centres[(i, j + 1)][0] for j in range(3))
    for j in range(4):
        assert all(centres[(i, j)][1] < centres[(i + 1, j)][1] for i in range(2))
    for (i, _j), (x, y) in centres.items():  # the frame just outside the image has the row's tag colour
        half = (40 - 2 * FRAME) // 2
        assert tuple(arr[y, x - half - 1]) == tag_colour(ROWS[i].tag)
    # a wider gap separates the two model groups than two seeds of one model
    assert centres[(0, 2)][0] - centres[(0, 1)][0] > centres[(0, 1)][0] - centres[(0, 0)][0]


def test_layouts_and_dtypes_agree() -> None:
    chw = torch.rand(3, 5, 7)
    hwc = chw.permute(1, 2, 0).numpy()
    assert np.array_equal(to_uint8_hwc(chw), to_uint8_hwc(hwc))
    assert to_uint8_hwc(np.zeros((5, 7), dtype=np.uint8)).shape == (5, 7, 3)
    assert to_uint8_hwc(torch.rand(4, 6, 6)).shape == (6, 6, 3)  # RGBA -> RGB


def test_grid_size_grows_with_rows_and_columns() -> None:
    small = make_grid([[solid(0, 0)]], ROWS[:1], ["a"], cell=32)
    wide = make_grid([[solid(0, 0)] * 3], ROWS[:1], ["a", "b", "c"], cell=32)
    tall = make_grid([[solid(0, 0)]] * 3, ROWS, ["a"], cell=32)
    assert wide.width > small.width and wide.height == small.height
    assert tall.height > small.height and tall.width >= small.width


def test_pil_to_tensor_is_a_comfy_image_batch() -> None:
    t = pil_to_tensor(make_grid([[solid(0, 0)]], ROWS[:1], ["a"], title="t", cell=16))
    assert t.ndim == 4 and t.shape[0] == 1 and t.shape[-1] == 3 and 0.0 <= float(t.min()) <= float(t.max()) <= 1.0


@pytest.mark.parametrize(
    "images, rows, columns, groups",
    [
        ([[solid(0, 0)]], ROWS, ["a"], ()),  # fewer image rows than labels
        ([[solid(0, 0), solid(0, 1)]], ROWS[:1], ["a"], ()),  # more images than columns
        ([[solid(0, 0)]], ROWS[:1], ["a"], [("m", 2)]),  # groups do not cover the columns
        ([], [], [], ()),
    ],
)
def test_mismatches_are_refused(images, rows, columns, groups) -> None:
    with pytest.raises(GridError):
        make_grid(images, rows, columns, groups)


def test_batch_grid_splits_row_major_batches() -> None:
    from erasure.grid import batch_grid

    a = torch.stack([solid(i, j).permute(1, 2, 0) for i in range(3) for j in range(2)])  # [6, H, W, 3]
    b = torch.stack([solid(i, j + 2).permute(1, 2, 0) for i in range(3) for j in range(2)])
    grid = batch_grid([a, b], ROWS, ["original", "erased"], cell=24)
    x00, y00 = find(grid, to_uint8_hwc(solid(0, 0))[0, 0])
    x21, y21 = find(grid, to_uint8_hwc(solid(2, 1))[0, 0])
    x03, _ = find(grid, to_uint8_hwc(solid(0, 3))[0, 0])
    assert y21 > y00 and x21 > x00 and x03 > x21  # row 2 below row 0; model b to the right of model a
    with pytest.raises(GridError, match="differ in size"):
        batch_grid([a, b[:4]], ROWS, ["original", "erased"])
    with pytest.raises(GridError, match="rows"):
        batch_grid([a[:5]], ROWS, ["original"])
