"""ToMe (token merging) by bipartite soft matching on packed LLaVA-NeXT visual tokens (METHOD.md §4).

Re-implemented from the description in METHOD.md; no code from facebookresearch/ToMe.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from .checks import check_features, check_keep_ratio
from .packed import BASE_TOKENS, block_positions, check_block, token_budget
from .result import Selection


def _merge_round(features: torch.Tensor, sizes: torch.Tensor, r: int):
    """One round; also returns `survivors` (m,), the input index each output token continues."""
    n = features.shape[0]
    index = torch.arange(n, device=features.device)
    a_index, b_index = index[0::2], index[1::2]
    destination = index.clone()  # destination[i] = input token that i is folded into (itself if it stays)
    unmerged_a = a_index
    if r > 0:
        unit = F.normalize(features, dim=-1)  # zero rows stay zero: similarity 0 to everything
        best_score, best_b = (unit[a_index] @ unit[b_index].T).max(dim=-1)
        # Stable descending sort: among equal scores the lower-index A token comes first.
        ranking = torch.sort(best_score, descending=True, stable=True).indices
        merged_a = ranking[:r]
        destination[a_index[merged_a]] = b_index[best_b[merged_a]]
        unmerged_a = a_index[ranking[r:]]
    # ToMe's output order: the unmerged A tokens by descending best-match score, then every B token. The
    # next round splits this order into A and B again, so it decides which tokens can merge later.
    survivors = torch.cat([unmerged_a, b_index]) if r > 0 else index
    new_index = torch.full_like(index, -1)
    new_index[survivors] = torch.arange(survivors.shape[0], device=features.device)
    assignment = new_index[destination]
    m = survivors.shape[0]
    new_sizes = torch.zeros(m, dtype=sizes.dtype, device=sizes.device).index_add_(0, assignment, sizes)
    weighted = torch.zeros(m, features.shape[1], dtype=features.dtype, device=features.device)
    weighted.index_add_(0, assignment, features * sizes[:, None])
    return weighted / new_sizes[:, None], new_sizes, assignment, survivors


def bipartite_merge_round(features: torch.Tensor, sizes: torch.Tensor, r: int):
    """Merge `r` tokens of the current list into others by bipartite soft matching.

    A = even indices, B = odd indices; each A token's best B match by cosine similarity; the r A
    tokens with the highest best-match score fold into their match (several may share one B) as a
    size-weighted average `x_b ← Σ s·x / Σ s`, and sizes add.
    The output order is ToMe's (`merge.py`): `[unmerged A by descending best-match score, all B]`
    (with r = 0 nothing moves). Over several rounds this order decides the next A/B split.

    Args:
        features: `(n, d)` float features (computed in float32).
        sizes: `(n,)` positive number of original tokens each token stands for.
        r: tokens to remove, `0 ≤ r ≤ |A| = ⌈n/2⌉` (and 0 when there is no B token, n = 1).
    Returns:
        `(new_features (n−r, d) float32, new_sizes (n−r,) float32, assignment (n,) int64)`, where
        `assignment[i]` is the output index of input token i.
    """
    features = check_features(features).float()
    if not isinstance(sizes, torch.Tensor) or sizes.shape != (features.shape[0],):
        raise ValueError(f"sizes must be a tensor of shape ({features.shape[0]},), got {getattr(sizes, 'shape', sizes)!r}")
    sizes = sizes.to(device=features.device, dtype=torch.float32)
    if not (torch.isfinite(sizes) & (sizes > 0)).all():
        raise ValueError("sizes must be finite and > 0 (each token stands for at least one original token)")
    n_a, n_b = (features.shape[0] + 1) // 2, features.shape[0] // 2
    if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r <= (n_a if n_b else 0):
        raise ValueError(f"r must be a whole number from 0 to {n_a if n_b else 0} for {features.shape[0]} tokens, got {r!r}")
    return _merge_round(features, sizes, r)[:3]


def tome_merge(features: torch.Tensor, target: int):
    """Merge `n` tokens down to `target` by rounds of `r = min(n_current − target, ⌊n_current/2⌋)`.

    Args:
        features: `(n, d)` float features (any float dtype; computed in float32).
        target: tokens to keep, `1 ≤ target ≤ n` (`target == n` is the identity). Zero is refused: an
            average of no tokens has no meaning; a caller with a zero budget keeps nothing instead.
    Returns:
        `(merged_features (target, d) float32, groups, representatives (target,) int64)`: `groups[j]`
        is the sorted int64 numpy array of the original indices merged into output j, and
        `representatives[j]` (ascending) the original token that survived, whose position it takes.
    """
    features = check_features(features).float()
    n = features.shape[0]
    if isinstance(target, bool) or not isinstance(target, int) or not 1 <= target <= n:
        raise ValueError(f"target must be a whole number from 1 to {n}, got {target!r}")
    sizes = torch.ones(n, device=features.device)
    owner = torch.arange(n, device=features.device)  # original token → current output index
    representatives = owner.clone()
    while features.shape[0] > target:
        r = min(features.shape[0] - target, features.shape[0] // 2)
        features, sizes, assignment, survivors = _merge_round(features, sizes, r)
        owner, representatives = assignment[owner], representatives[survivors]
    # Outputs in ascending representative order (raster order of the positions they take).
    order = torch.argsort(representatives)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(target, device=order.device)
    features, owner, representatives = features[order], rank[owner], representatives[order]
    # Stable sort by owner lists each group's members in ascending original index.
    members = torch.argsort(owner, stable=True).cpu()
    counts = torch.bincount(owner, minlength=target).cpu().tolist()
    groups = [group.numpy() for group in torch.split(members, counts)]
    return features, groups, representatives


def tome_select(
    packed_features: torch.Tensor, rows: int, cols: int, keep_ratio: float, *, base_tokens: int = BASE_TOKENS
) -> Selection:
    """ToMe on one image's packed block: merge base tokens to ⌊ρ·base⌋ and grid tokens to
    ⌊ρ·rows·cols⌋ (separately, as G-Prune splits its budget); newline tokens are never merged.

    Args:
        packed_features: `(base_tokens + rows·(cols+1), d)` post-projector features.
    Returns:
        `Selection` with sorted `kept_positions` (representatives + every newline), `groups` and
        `merged_features` `(k, d)` float32 aligned with them (newlines: themselves), `scores=None`.
        A view whose budget is 0 keeps nothing, and its tokens belong to no group.
    """
    start = time.perf_counter()
    check_features(packed_features, "packed_features")
    check_block(packed_features.shape[0], rows, cols, base_tokens)
    check_keep_ratio(keep_ratio)
    features = packed_features.detach().float()
    base_positions, grid_positions, newline_positions = block_positions(rows, cols, base_tokens)
    kept, groups, rows_out = [], [], []
    for positions, target in zip((base_positions, grid_positions), token_budget(rows, cols, keep_ratio, base_tokens)):
        if target == 0:
            continue
        merged, view_groups, representatives = tome_merge(features[positions.to(features.device)], target)
        positions = positions.numpy()
        kept.append(positions[representatives.cpu().numpy()])
        groups += [positions[group] for group in view_groups]
        rows_out.append(merged)
    newlines = newline_positions.numpy()
    kept.append(newlines)
    groups += [np.array([position], dtype=np.int64) for position in newlines]
    rows_out.append(features[newline_positions.to(features.device)])
    kept_positions = np.concatenate(kept).astype(np.int64)
    order = np.argsort(kept_positions, kind="stable")  # interleave grid representatives and newlines
    merged_features = torch.cat(rows_out).cpu().numpy()[order]
    return Selection(
        kept_positions=kept_positions[order],
        groups=[groups[i] for i in order],
        merged_features=merged_features,
        scores=None,
        seconds=time.perf_counter() - start,
    )
