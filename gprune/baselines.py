"""Baselines at G-Prune's budget: l2-norm top-k (the paper's Figure 4 comparison) and seeded random."""

from __future__ import annotations

import time

import torch

from .checks import check_features
from .graph import row_norms
from .packed import BASE_TOKENS, check_block, keep_top_per_view
from .result import Selection


def l2norm_select(packed_features: torch.Tensor, rows: int, cols: int, keep_ratio: float, *, base_tokens: int = BASE_TOKENS) -> Selection:
    """Keep the base and grid tokens with the largest l2 norm (G-Prune's score with no graph)."""
    start = time.perf_counter()
    check_features(packed_features, "packed_features", finite=False)  # row_norms finds NaN / inf
    check_block(packed_features.shape[0], rows, cols, base_tokens)
    norms = row_norms(packed_features.detach()).cpu()
    kept_positions = keep_top_per_view(norms, rows, cols, keep_ratio, base_tokens)
    return Selection(kept_positions=kept_positions.numpy(), scores=norms[None].numpy(), seconds=time.perf_counter() - start)


def random_select(n_tokens: int, rows: int, cols: int, keep_ratio: float, *, seed: int = 0, base_tokens: int = BASE_TOKENS) -> Selection:
    """Keep a uniformly random set of base and grid tokens, reproducible from `seed`.

    The draws are returned as float64 `scores` (the top draws are kept), so a viewer can redraw the selection
    at another keep ratio exactly as this function would make it.
    """
    start = time.perf_counter()
    check_block(n_tokens, rows, cols, base_tokens)
    generator = torch.Generator().manual_seed(seed)
    random_scores = torch.rand(n_tokens, generator=generator, dtype=torch.float64)
    kept_positions = keep_top_per_view(random_scores, rows, cols, keep_ratio, base_tokens)
    return Selection(kept_positions=kept_positions.numpy(), scores=random_scores[None].numpy(),
                     seconds=time.perf_counter() - start)
