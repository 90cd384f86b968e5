"""Where each packed visual token comes from in the original image (METHOD.md §1).

Uses transformers' own geometry (`select_best_resolution`, `get_patch_output_size`, `unpad_image` run on
an index grid) so the layout is the one the model really sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers.image_processing_utils import get_patch_output_size, select_best_resolution
from transformers.image_utils import ChannelDimension
from transformers.models.llava_next.modeling_llava_next import unpad_image

from .packed import block_positions

KIND_BASE, KIND_GRID, KIND_NEWLINE = 0, 1, 2
KIND_NAMES = ("base", "grid", "newline")


@dataclass(frozen=True)
class TokenLayout:
    """Per-token geometry of one image's packed block `[base | rows × (cols + 1)]`.

    Attributes:
        image_width, image_height: the original image size in pixels.
        base_side: the base view is `base_side × base_side` cells (24 for CLIP-336/14).
        rows, cols: the unpadded high-resolution grid, in cells.
        kind: `(n,)` int8, KIND_BASE / KIND_GRID / KIND_NEWLINE.
        cell: `(n, 2)` int64 `(row, col)` inside the token's view; newlines have `(row, -1)`.
        box: `(n, 4)` float64 `(x0, y0, x1, y1)` pixel box in the original image, clipped to it;
            NaN for newlines (they have no pixels).
    """

    image_width: int
    image_height: int
    base_side: int
    rows: int
    cols: int
    kind: np.ndarray
    cell: np.ndarray
    box: np.ndarray

    @property
    def n_tokens(self) -> int:
        return int(self.kind.shape[0])

    @property
    def base_tokens(self) -> int:
        return self.base_side * self.base_side

    def positions(self, kind: int) -> np.ndarray:
        return np.flatnonzero(self.kind == kind)


def token_layout(
    image_size: tuple[int, int], grid_pinpoints: list, tile_size: int = 336, patch_size: int = 14
) -> TokenLayout:
    """Build the layout for an image of `(height, width)` pixels under a LLaVA-NeXT processor config."""
    height, width = image_size
    cells_per_tile = tile_size // patch_size
    best_height, best_width = select_best_resolution([height, width], grid_pinpoints)
    canvas_rows = best_height // tile_size * cells_per_tile
    canvas_cols = best_width // tile_size * cells_per_tile

    # Which canvas cells survive unpadding, exactly as the model computes it.
    index_grid = torch.arange(canvas_rows * canvas_cols).view(1, canvas_rows, canvas_cols)
    surviving = unpad_image(index_grid, [height, width])[0]
    rows, cols = surviving.shape
    canvas_row = (surviving // canvas_cols).numpy()
    canvas_col = (surviving % canvas_cols).numpy()

    # The processor resizes the image to (new_height, new_width) and pastes it centred on the canvas.
    dummy = np.zeros((1, height, width))
    new_height, new_width = get_patch_output_size(dummy, (best_height, best_width), ChannelDimension.FIRST)
    paste_y, paste_x = (best_height - new_height) // 2, (best_width - new_width) // 2
    scale_x, scale_y = width / new_width, height / new_height
    # Edges come from one expression so neighbouring cells share them exactly (no float gaps).
    # Unpadding works in whole cells, so a sliver (< 1 cell) of the image may fall outside every grid
    # cell, as it does in the model.
    x_edges = (np.arange(canvas_cols + 1) * patch_size - paste_x) * scale_x
    y_edges = (np.arange(canvas_rows + 1) * patch_size - paste_y) * scale_y
    grid_boxes = np.stack(
        [x_edges[canvas_col], y_edges[canvas_row], x_edges[canvas_col + 1], y_edges[canvas_row + 1]], -1
    ).reshape(-1, 4)

    side = cells_per_tile
    base_r, base_c = np.divmod(np.arange(side * side), side)
    base_boxes = np.stack(
        [base_c * width / side, base_r * height / side, (base_c + 1) * width / side, (base_r + 1) * height / side], -1
    )

    base_positions, grid_positions, _ = (p.numpy() for p in block_positions(rows, cols, side * side))
    kind, cell = block_kinds_and_cells(side, rows, cols)
    box = np.full((len(kind), 4), np.nan)
    box[base_positions] = base_boxes
    box[grid_positions] = grid_boxes
    box[:, [0, 2]] = np.clip(box[:, [0, 2]], 0, width)
    box[:, [1, 3]] = np.clip(box[:, [1, 3]], 0, height)
    return TokenLayout(width, height, side, rows, cols, kind, cell, box)


def block_kinds_and_cells(base_side: int, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """`(kind, cell)` of the packed block `[base | rows × (cols + 1)]` as `TokenLayout` holds them: they depend
    only on the block's shape (the boxes need the image and the processor)."""
    base_positions, grid_positions, newline_positions = (p.numpy() for p in block_positions(rows, cols, base_side**2))
    n = base_side**2 + rows * (cols + 1)
    kind = np.full(n, KIND_BASE, dtype=np.int8)
    kind[grid_positions] = KIND_GRID
    kind[newline_positions] = KIND_NEWLINE
    cell = np.zeros((n, 2), dtype=np.int64)
    cell[base_positions] = np.stack(np.divmod(np.arange(base_side**2), base_side), -1)
    cell[grid_positions] = np.stack(np.divmod(np.arange(rows * cols), cols), -1)
    cell[newline_positions] = np.stack([np.arange(rows), np.full(rows, -1)], -1)
    return kind, cell
