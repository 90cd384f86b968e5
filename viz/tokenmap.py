"""Pixel ↔ token lookup for one view of an image (the base view or the high-resolution grid).

Drawing is split in two steps so that redrawing is cheap:

1. `token_index_map` rasterises the view's token boxes once into an `(H, W)` int32 map holding, for every
   pixel, the position of the token that covers it (-1 where none does). This is the only per-box loop.
2. Every overlay then colours pixels with one vectorised gather, `per_token[index_map]` (`paint_tokens`),
   so a new iteration's heatmap or mask costs a few array passes over the image, independent of the
   number of tokens.
"""

from __future__ import annotations

import math

import numpy as np


def token_index_map(boxes: np.ndarray, token_positions: np.ndarray, height: int, width: int) -> np.ndarray:
    """Map each pixel of a `height × width` image to the token whose box contains the pixel's centre.

    Args:
        boxes: `(n, 4)` float `(x0, y0, x1, y1)` pixel boxes for all tokens of the block; rows with NaN
            (newline tokens) cover no pixel.
        token_positions: `(m,)` int positions (rows of `boxes`) of the tokens in this view.
        height, width: the image size in pixels.

    Returns:
        `(height, width)` int32 array of token positions, -1 where no token covers the pixel. Edges are
        rounded to the nearest integer with one rule for all boxes, so boxes that share a float edge tile
        with neither gap nor overlap; where boxes do overlap, the later position in `token_positions` wins.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    positions = np.asarray(token_positions)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (n, 4), got {boxes.shape}")
    if positions.ndim != 1 or not np.issubdtype(positions.dtype, np.integer):
        raise ValueError(f"token_positions must be a 1-D integer array, got {positions.dtype} {positions.shape}")
    if positions.size and (positions.min() < 0 or positions.max() >= len(boxes)):
        raise ValueError(f"token_positions must lie in [0, {len(boxes)})")
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}×{width}")

    index_map = np.full((height, width), -1, dtype=np.int32)
    view_boxes = boxes[positions]
    finite = np.isfinite(view_boxes).all(axis=1)
    # Pixel j's centre j + 0.5 lies in [x0, x1) iff floor(x0 + 0.5) <= j < floor(x1 + 0.5).
    edges = np.floor(view_boxes[finite] + 0.5).astype(np.int64)
    edges[:, [0, 2]] = edges[:, [0, 2]].clip(0, width)
    edges[:, [1, 3]] = edges[:, [1, 3]].clip(0, height)
    for position, (x0, y0, x1, y1) in zip(positions[finite], edges):
        index_map[y0:y1, x0:x1] = position
    return index_map


def token_at(index_map: np.ndarray, x: float, y: float) -> int:
    """The token position under pixel `(x, y)` (column, row), or -1 where no token covers it.

    Coordinates are floored to pixels and clamped to the image, so a click on the far edge (x == W, as some
    UI libraries report) still lands on the border pixel.
    """
    _check_index_map(index_map)
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ValueError(f"pixel coordinates must be finite, got ({x}, {y})")
    height, width = index_map.shape
    column = min(max(math.floor(x), 0), width - 1)
    row = min(max(math.floor(y), 0), height - 1)
    return int(index_map[row, column])


def paint_tokens(index_map: np.ndarray, per_token: np.ndarray, fill) -> np.ndarray:
    """Per-pixel copy of per-token data: `out[y, x] = per_token[index_map[y, x]]`, `fill` where it is -1.

    Args:
        index_map: `(H, W)` int token positions from `token_index_map`.
        per_token: `(n, ...)` values for every token position the map can hold.
        fill: value (broadcastable to `per_token[0]`) for uncovered pixels.

    Returns:
        `(H, W, ...)` array with `per_token`'s dtype.
    """
    _check_index_map(index_map)
    per_token = np.asarray(per_token)
    if index_map.size and index_map.max() >= len(per_token):
        raise ValueError(f"index_map holds token {index_map.max()} but only {len(per_token)} values were given")
    # Appending the fill row makes -1 (numpy's "last element") select it: one gather, no masking pass.
    # np.take along axis 0 is several times faster than fancy indexing for (n, 3) colour tables.
    extended = np.concatenate([per_token, np.broadcast_to(np.asarray(fill, per_token.dtype), per_token.shape[1:])[None]])
    return np.take(extended, index_map, axis=0)


def token_centres(index_map: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """`(len(tokens), 2)` float `(x, y)` pixel centre of each token's area in the map; NaN where it has none."""
    _check_index_map(index_map)
    tokens = np.asarray(tokens, dtype=np.int64)
    unique, slot_of_token = np.unique(tokens, return_inverse=True)
    rows, cols = np.nonzero(np.isin(index_map, unique))
    slot = np.searchsorted(unique, index_map[rows, cols])
    counts = np.bincount(slot, minlength=len(unique)).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        x = np.bincount(slot, weights=cols + 0.5, minlength=len(unique)) / counts
        y = np.bincount(slot, weights=rows + 0.5, minlength=len(unique)) / counts
    x, y = x[slot_of_token], y[slot_of_token]
    return np.stack([x, y], -1)


def tokens_shown(index_map: np.ndarray, n_tokens: int) -> np.ndarray:
    """`(n_tokens,)` bool: which token positions cover at least one pixel of the map."""
    _check_index_map(index_map)
    counts = np.bincount(index_map.ravel() + 1, minlength=n_tokens + 1)
    if len(counts) > n_tokens + 1:
        raise ValueError(f"index_map holds token {len(counts) - 2} but n_tokens is {n_tokens}")
    return counts[1:] > 0


def _check_index_map(index_map: np.ndarray) -> None:
    if not isinstance(index_map, np.ndarray) or index_map.ndim != 2 or not np.issubdtype(index_map.dtype, np.integer):
        raise ValueError("index_map must be a 2-D integer array from token_index_map")
    if index_map.size == 0:
        raise ValueError("index_map must not be empty")
