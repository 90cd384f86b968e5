"""G-Prune (Jiang et al., AAAI 2025) as its published code computes it (METHOD.md §2).

Tokens are nodes of a thresholded cosine-similarity graph; importance starts as each token's l2 norm
and flows along row-softmax-normalised edges for a few iterations; the score is the mass divided by the
degree. We propagate with vector–matrix products instead of the published matrix power: the same
numbers, O(I·n²) instead of O(n³·log I), and every intermediate iteration for the UI.
"""

from __future__ import annotations

import time

import torch

from .checks import check_features, check_iterations, check_keep_ratio, check_temperature, check_threshold
from .packed import BASE_TOKENS, block_positions, check_block, keep_top_per_view
from .result import Selection

NEIGHBORS = 16
BLOCK_ROWS = 256
TINY = torch.finfo(torch.float32).tiny


def row_norms(features: torch.Tensor) -> torch.Tensor:
    """`(n,)` fp32 l2 norms of the rows; `ValueError` if a feature is NaN or infinite.

    Squares overflow fp32 for entries near 1e19 and underflow near 1e-19: only those rows are redone
    divided by their largest entry. Non-finite input shows up in the norms, so no separate n×d check.
    """
    features = features.float()
    norm = torch.linalg.vector_norm(features, dim=1)
    redo = ~torch.isfinite(norm) | (norm < 1e-18)
    if redo.any():
        rows = features[redo]
        scale = rows.abs().amax(dim=1).clamp_min(TINY)
        norm[redo] = torch.linalg.vector_norm(rows / scale[:, None], dim=1) * scale
    if not torch.isfinite(norm).all():
        raise ValueError("features contain NaN or infinite values (or norms beyond the float32 range)")
    return norm


def unit_and_norm(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(unit rows (n, d), l2 norms (n,))`: `rows`, a private fp32 copy, is normalised in place (no
    second n×d buffer); all-zero rows stay zero."""
    norm = row_norms(rows)
    return rows.div_(norm.clamp_min(TINY)[:, None]), norm


def edge_weights(unit: torch.Tensor, threshold: float, temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Symmetric edge weights of one graph, `E = exp((C − 1)/τ)·M`, with their row sums and the degrees.

    Args:
        unit: `(n, d)` fp32 unit-length features (see `unit_and_norm`).
    Returns:
        `(weights (n, n), row_sum (n,), degree (n,))`; the transition matrix is
        `P = weights / row_sum[:, None]`: `P[i, j]` is the share of i's mass sent to j.

    `C = ÛÛᵀ` (cosine, self-loops included) and `M = [C ≥ s]`; the diagonal is always an edge (it is one
    anyway, cos = 1 ≥ s, except for an all-zero feature, whose row would otherwise have no edge).
    `P` is the published row softmax over each token's edges: shifting the exponents by the constant 1,
    the largest cosine, instead of by each row's max gives the same softmax, keeps exp() ≤ 1 and keeps
    E symmetric. So only the upper block triangle of C is computed (half the GEMM), one block of rows
    at a time while it is in cache; the lower triangle is mirrored, and no n×n mask is ever stored.

    The degree counts the edges whose fp32 weight is non-zero, as the published code does
    (`sum(softmax > 0)`): at a small τ, exp((C − 1)/τ) underflows for weak edges, and those edges then
    count neither in the propagation nor in the degree. In exact arithmetic this is `Σ_j M_ij`.
    """
    n = unit.shape[0]
    weights = torch.empty(n, n, dtype=torch.float32, device=unit.device)
    row_sum = torch.zeros(n, dtype=torch.float32, device=unit.device)
    degree = torch.zeros(n, dtype=torch.float32, device=unit.device)
    for start in range(0, n, BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, n)
        tile = unit[start:stop] @ unit[start:].T  # rows start..stop, columns start..n
        edges = tile >= threshold
        edges[:, : stop - start].diagonal().fill_(True)
        tile.sub_(1.0).div_(temperature).exp_().mul_(edges)
        # The self-loop's weight is exp(0) = 1, as in the published softmax (a row's largest entry is its own);
        # it must not underflow for an all-zero feature, whose only edge it is.
        tile[:, : stop - start].diagonal().fill_(1.0)
        weights[start:stop, start:] = tile
        weights[stop:, start:stop] = tile[:, stop - start :].T
        row_sum[start:stop] += tile.sum(dim=1)
        row_sum[stop:] += tile[:, stop - start :].sum(dim=0)
        nonzero = torch.gt(tile, 0.0, out=edges)  # reuse the mask's memory: edges that survived exp()
        degree[start:stop] += nonzero.sum(dim=1)
        degree[stop:] += nonzero[:, stop - start :].sum(dim=0)
    return weights, row_sum, degree


def propagate(weights: torch.Tensor, row_sum: torch.Tensor, initial_mass: torch.Tensor, iterations: int) -> torch.Tensor:
    """Mass after each iteration: `r⁰ = w`, `rᵗ = rᵗ⁻¹ · P`. Returns `(iterations + 1, n)`.

    With `P = E / row_sum[:, None]` and E symmetric, `rᵗ⁻¹ · P = E · (rᵗ⁻¹ / row_sum)`: one mat-vec.
    """
    inverse_row_sum = 1.0 / row_sum.clamp_min(TINY)
    mass = [initial_mass]
    for _ in range(iterations):
        mass.append(torch.mv(weights, mass[-1] * inverse_row_sum))
    return torch.stack(mass)


def gprune_scores(
    features: torch.Tensor, *, iterations: int = 5, threshold: float = 0.5, temperature: float = 0.03
) -> torch.Tensor:
    """G-Prune scores of one graph after every iteration.

    Args:
        features: `(n, d)` post-projector features of the graph's tokens (any float dtype).
    Returns:
        `(iterations + 1, n)` float32; row t = mass after t iterations / degree (row 0 = l2 norm / degree).
    """
    check_features(features, finite=False)  # unit_and_norm finds NaN / inf from the norms
    check_iterations(iterations)
    unit, norm = unit_and_norm(features.to(torch.float32, copy=True))
    weights, row_sum, degree = edge_weights(unit, check_threshold(threshold), check_temperature(temperature))
    return propagate(weights, row_sum, norm, iterations) / degree


def strongest_sources(weights: torch.Tensor, row_sum: torch.Tensor, count: int = NEIGHBORS) -> tuple[torch.Tensor, torch.Tensor]:
    """For each token j, the tokens i ≠ j that send it the largest share `P[i, j]` ("who feeds it").

    Returns `(sources (n, m), weights (n, m))` with m = min(count, n − 1); -1 / 0 where there is no edge.
    """
    m = min(count, weights.shape[0] - 1)
    incoming = weights / row_sum.clamp_min(TINY)[None, :]  # [j, i] = E[j, i] / row_sum[i] = P[i, j]
    incoming.diagonal().fill_(0.0)
    shares, sources = torch.topk(incoming, m, dim=1)
    sources[shares <= 0] = -1
    return sources, shares


def gprune_keep(
    packed_features: torch.Tensor,
    rows: int,
    cols: int,
    keep_ratio: float,
    *,
    iterations: int = 5,
    threshold: float = 0.5,
    temperature: float = 0.03,
    base_tokens: int = BASE_TOKENS,
) -> torch.Tensor:
    """Kept positions of one image's packed block `[base | rows × (cols + 1)]`, newlines included.

    Returns a sorted int64 tensor of `⌊ρ·base⌋ + ⌊ρ·rows·cols⌋ + rows` positions.
    """
    selection = gprune_select(
        packed_features, rows, cols, keep_ratio, iterations=iterations, threshold=threshold,
        temperature=temperature, base_tokens=base_tokens, neighbors=0,
    )
    return torch.from_numpy(selection.kept_positions)


def gprune_select(
    packed_features: torch.Tensor,
    rows: int,
    cols: int,
    keep_ratio: float,
    *,
    iterations: int = 5,
    threshold: float = 0.5,
    temperature: float = 0.03,
    base_tokens: int = BASE_TOKENS,
    neighbors: int = NEIGHBORS,
) -> Selection:
    """G-Prune on one packed block: two independent graphs (base view, high-resolution grid).

    Returns a `Selection` with kept positions, scores `(iterations + 1, n)` (NaN for newlines), degrees
    and, if `neighbors > 0`, each token's strongest in-graph sources as packed positions.
    """
    start = time.perf_counter()
    check_features(packed_features, "packed_features", finite=False)  # unit_and_norm finds NaN / inf
    check_block(packed_features.shape[0], rows, cols, base_tokens)
    check_keep_ratio(keep_ratio)
    check_iterations(iterations)
    check_threshold(threshold)
    check_temperature(temperature)

    n = packed_features.shape[0]
    features = packed_features.detach()
    scores = torch.full((iterations + 1, n), float("nan"))
    degree = torch.zeros(n)
    sources = torch.full((n, max(neighbors, 0)), -1, dtype=torch.long)
    source_weights = torch.zeros((n, max(neighbors, 0)))
    base_positions, grid_positions, _ = block_positions(rows, cols, base_tokens)
    for positions in (base_positions, grid_positions):
        unit, norm = unit_and_norm(features[positions].to(torch.float32))  # indexing copies
        weights, row_sum, view_degree = edge_weights(unit, threshold, temperature)
        del unit
        view_scores = propagate(weights, row_sum, norm, iterations) / view_degree
        scores[:, positions] = view_scores.cpu()
        degree[positions] = view_degree.cpu()
        if neighbors > 0 and len(positions) > 1:
            view_sources, view_weights = strongest_sources(weights, row_sum, neighbors)
            m = view_sources.shape[1]
            local_to_packed = positions.to(view_sources.device)
            sources[positions, :m] = torch.where(view_sources >= 0, local_to_packed[view_sources.clamp(min=0)], -1).cpu()
            source_weights[positions, :m] = view_weights.cpu()
        del weights
    kept_positions = keep_top_per_view(scores[-1], rows, cols, keep_ratio, base_tokens)
    return Selection(
        kept_positions=kept_positions.numpy(),
        scores=scores.numpy(),
        degree=degree.numpy(),
        neighbors=sources.numpy() if neighbors > 0 else None,
        neighbor_weights=source_weights.numpy() if neighbors > 0 else None,
        seconds=time.perf_counter() - start,
    )
