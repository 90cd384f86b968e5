"""Token layout geometry, budgets and FLOPs."""

from __future__ import annotations

import numpy as np
import pytest

from gprune import (
    KIND_BASE, KIND_GRID, KIND_NEWLINE, LLAVA_NEXT_7B, block_positions, layer_flops, prefill_flops, prefill_flops_ratio,
    token_budget, token_layout,
)

PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def coverage(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """How many boxes cover each pixel centre."""
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    count = np.zeros((height, width), dtype=int)
    for x0, y0, x1, y1 in boxes:
        count += (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    return count


def test_640x480_has_2340_tokens():
    layout = token_layout((480, 640), PINPOINTS)
    assert (layout.rows, layout.cols, layout.n_tokens) == (36, 48, 2340)
    assert (layout.kind == KIND_NEWLINE).sum() == 36 and (layout.kind == KIND_BASE).sum() == 576


@pytest.mark.parametrize("height, width", [(480, 640), (100, 331), (331, 100), (224, 224), (37, 501)])
def test_boxes_tile_the_image(height, width):
    layout = token_layout((height, width), PINPOINTS)
    base = layout.box[layout.kind == KIND_BASE]
    grid = layout.box[layout.kind == KIND_GRID]
    assert (coverage(base, height, width) == 1).all(), "base boxes must tile the image exactly once"
    grid_coverage = coverage(grid, height, width)
    assert grid_coverage.max() == 1, "grid boxes must not overlap"
    # Unpadding crops whole cells, so at most a sliver under one cell wide may be missed at the edges.
    cell_height, cell_width = height / layout.rows, width / layout.cols
    missed_y, missed_x = np.nonzero(grid_coverage == 0)
    near_edge = (np.minimum(missed_y, height - 1 - missed_y) < cell_height) | (
        np.minimum(missed_x, width - 1 - missed_x) < cell_width)
    assert near_edge.all()
    assert np.isnan(layout.box[layout.kind == KIND_NEWLINE]).all()
    inside = layout.box[layout.kind != KIND_NEWLINE]
    assert (inside[:, [0, 2]] >= 0).all() and (inside[:, [0, 2]] <= width).all()
    assert (inside[:, [1, 3]] >= 0).all() and (inside[:, [1, 3]] <= height).all()


def test_cells_follow_raster_order():
    layout = token_layout((480, 640), PINPOINTS)
    base_positions, grid_positions, newline_positions = block_positions(layout.rows, layout.cols)
    np.testing.assert_array_equal(layout.cell[grid_positions[: layout.cols + 1]][:, 0][: layout.cols], 0)
    np.testing.assert_array_equal(layout.cell[newline_positions][:, 1], -1)
    left_to_right = layout.box[grid_positions[: layout.cols], 0]
    assert (np.diff(left_to_right) > 0).all()


def test_budget_floors_the_decimal_product():
    assert token_budget(36, 48, 0.5) == (288, 864)
    assert token_budget(36, 48, 0.11) == (63, 190)
    assert token_budget(2, 5, 0.3, base_tokens=10) == (3, 3)


def test_flops_formula():
    assert layer_flops(10, 4, 8) == 4 * 10 * 16 + 2 * 100 * 4 + 2 * 10 * 4 * 8
    full = prefill_flops(100, 100, hidden=64, ffn=128, layers=4)
    assert prefill_flops(100, 50, hidden=64, ffn=128, layers=4, prune_layer=2) == pytest.approx(
        2 * layer_flops(100, 64, 128) + 2 * layer_flops(50, 64, 128))
    assert prefill_flops(100, 50, hidden=64, ffn=128, layers=4) < full
    with pytest.raises(ValueError, match="prune_layer"):
        prefill_flops(100, 50, hidden=64, ffn=128, layers=4, prune_layer=5)


def test_flops_ratio_at_llava_next_7b_shapes():
    """METHOD.md §5: Mistral-7B d = 4096, m = 14336, L = 32. A 512×512 image with a short question is 2,953
    prompt tokens; keep 0.25 leaves 793 (the toy model's own shapes give 8.8 % and 54.4 % instead)."""
    assert (LLAVA_NEXT_7B.hidden, LLAVA_NEXT_7B.ffn, LLAVA_NEXT_7B.layers) == (4096, 14336, 32)
    assert prefill_flops_ratio(2953, 793, LLAVA_NEXT_7B) == pytest.approx(0.2458, abs=5e-4)
    assert prefill_flops_ratio(2953, 793, LLAVA_NEXT_7B, prune_layer=2) == pytest.approx(0.2929, abs=5e-4)
    assert prefill_flops_ratio(2953, 2953, LLAVA_NEXT_7B, prune_layer=2) == 1.0
    shape = dict(hidden=4096, ffn=14336, layers=32)
    assert prefill_flops_ratio(100, 40, LLAVA_NEXT_7B, 3) == pytest.approx(
        prefill_flops(100, 40, prune_layer=3, **shape) / prefill_flops(100, 100, **shape))
