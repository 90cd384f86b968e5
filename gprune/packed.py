"""Index arithmetic on one image's packed visual-token block and the shared token budget.

LLaVA-NeXT packs one image as `[base_tokens base tokens | rows × (cols + 1)]`: the grid rows in raster
order, each followed by one newline token (METHOD.md §1).
"""

from __future__ import annotations

import math

import torch

from .checks import check_keep_ratio

BASE_TOKENS = 576


def packed_length(rows: int, cols: int, base_tokens: int = BASE_TOKENS) -> int:
    return base_tokens + rows * (cols + 1)


def check_block(n_tokens: int, rows: int, cols: int, base_tokens: int = BASE_TOKENS) -> None:
    """Raise `ValueError` unless `n_tokens` packed tokens match the layout."""
    for name, value in (("rows", rows), ("cols", cols), ("base_tokens", base_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive whole number, got {value!r}")
    expected = packed_length(rows, cols, base_tokens)
    if n_tokens != expected:
        raise ValueError(
            f"layout does not match the features: {base_tokens} base + {rows}×({cols}+1) grid/newline "
            f"tokens = {expected}, but got {n_tokens} packed tokens"
        )


def block_positions(rows: int, cols: int, base_tokens: int = BASE_TOKENS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positions of the base, grid and newline tokens inside the packed block.

    Returns `(base_positions (base_tokens,), grid_positions (rows·cols,), newline_positions (rows,))`,
    each int64 and ascending; grid positions are in raster order of the `rows × cols` cells.
    """
    base_positions = torch.arange(base_tokens)
    row_starts = base_tokens + torch.arange(rows) * (cols + 1)
    grid_positions = (row_starts[:, None] + torch.arange(cols)[None, :]).reshape(-1)
    newline_positions = row_starts + cols
    return base_positions, grid_positions, newline_positions


def budget_count(keep_ratio: float, n: int) -> int:
    """⌊ρ·n⌋, with the product rounded to 6 decimals first so that 0.3·10 gives 3, not 2."""
    return math.floor(round(check_keep_ratio(keep_ratio) * n, 6))


def token_budget(rows: int, cols: int, keep_ratio: float, base_tokens: int = BASE_TOKENS) -> tuple[int, int]:
    """G-Prune's split of the budget, shared by every method: `(⌊ρ·base⌋, ⌊ρ·rows·cols⌋)` (+ all newlines)."""
    return budget_count(keep_ratio, base_tokens), budget_count(keep_ratio, rows * cols)


def keep_top_per_view(
    scores: torch.Tensor, rows: int, cols: int, keep_ratio: float, base_tokens: int = BASE_TOKENS
) -> torch.Tensor:
    """Keep the top-scoring base and grid tokens (G-Prune's split) plus every newline.

    Args:
        scores: `(n,)` one score per packed token (newline entries are ignored).
    Returns:
        Sorted int64 `(k_base + k_grid + rows,)` kept positions.
    """
    check_block(scores.shape[0], rows, cols, base_tokens)
    base_positions, grid_positions, newline_positions = block_positions(rows, cols, base_tokens)
    keep_base, keep_grid = token_budget(rows, cols, keep_ratio, base_tokens)
    scores = scores.detach().to(device="cpu", dtype=torch.float64)
    kept = [
        positions[torch.topk(scores[positions], k, sorted=False).indices]
        for positions, k in ((base_positions, keep_base), (grid_positions, keep_grid))
    ]
    return torch.sort(torch.cat(kept + [newline_positions])).values
