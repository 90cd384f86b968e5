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


def unit_and_norm(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(unit rows (n, d), l2 norms (n,))` in fp32, safe for norms beyond fp32's square range.

    A plain fp32 norm squares the entries first: rows near 1e20 overflow to inf and rows near 1e-20
    underflow to 0. Dividing each row by its largest entry first keeps every step in range.
    """
    features = features.float()
    scale = features.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    scaled = features / scale
    scaled_norm = scaled.norm(dim=1, keepdim=True)
    return scaled / scaled_norm.clamp_min(1e-12), (scaled_norm * scale).squeeze(1)


def transition_matrix(unit: torch.Tensor, threshold: float, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-stochastic transition matrix and degrees of one graph, in fp32.

    Args:
        unit: `(n, d)` fp32 unit-length token features (see `unit_and_norm`).
    Returns:
        `(transition (n, n), degree (n,))`: `transition[i, j]` is the share of i's mass sent to j.

    Only one n×n float matrix and one n×n bool mask are alive at a time (everything else in place).
    The diagonal is always an edge; it is one anyway (cos = 1 ≥ s) except for an all-zero feature,
    whose row would otherwise have no edge at all.
    """
    transition = unit @ unit.T
    edges = transition >= threshold
    edges.diagonal().fill_(True)
    degree = edges.sum(dim=1, dtype=torch.float32)
    # Softmax over kept edges; subtracting the row max keeps exp() finite for any temperature.
    transition.masked_fill_(~edges, float("-inf"))
    transition.sub_(transition.amax(dim=1, keepdim=True)).div_(temperature).exp_()
    transition.div_(transition.sum(dim=1, keepdim=True))
    return transition, degree


def propagate(transition: torch.Tensor, initial_mass: torch.Tensor, iterations: int) -> torch.Tensor:
    """Mass after each iteration as a row vector: `r⁰ = w`, `rᵗ = rᵗ⁻¹ · P`. Returns `(iterations + 1, n)`."""
    mass = [initial_mass]
    for _ in range(iterations):
        mass.append(mass[-1] @ transition)
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
    check_features(features)
    check_iterations(iterations)
    unit, norm = unit_and_norm(features)
    transition, degree = transition_matrix(unit, check_threshold(threshold), check_temperature(temperature))
    return propagate(transition, norm, iterations) / degree


def strongest_sources(transition: torch.Tensor, count: int = NEIGHBORS) -> tuple[torch.Tensor, torch.Tensor]:
    """For each token j, the tokens i ≠ j that send it the largest share `P[i, j]` ("who feeds it").

    Returns `(sources (n, m), weights (n, m))` with m = min(count, n − 1); -1 / 0 where there is no edge.
    """
    n = transition.shape[0]
    m = min(count, n - 1)
    incoming = transition.T.clone()
    incoming.diagonal().fill_(0.0)
    weights, sources = torch.topk(incoming, m, dim=1)
    sources[weights <= 0] = -1
    return sources, weights


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
    check_features(packed_features, "packed_features")
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
        unit, norm = unit_and_norm(features[positions])
        transition, view_degree = transition_matrix(unit, threshold, temperature)
        view_scores = propagate(transition, norm, iterations) / view_degree
        scores[:, positions] = view_scores.cpu()
        degree[positions] = view_degree.cpu()
        if neighbors > 0 and len(positions) > 1:
            view_sources, view_weights = strongest_sources(transition, neighbors)
            m = view_sources.shape[1]
            local_to_packed = positions.to(view_sources.device)
            sources[positions, :m] = torch.where(view_sources >= 0, local_to_packed[view_sources.clamp(min=0)], -1).cpu()
            source_weights[positions, :m] = view_weights.cpu()
        del transition
    kept_positions = keep_top_per_view(scores[-1], rows, cols, keep_ratio, base_tokens)
    return Selection(
        kept_positions=kept_positions.numpy(),
        scores=scores.numpy(),
        degree=degree.numpy(),
        neighbors=sources.numpy() if neighbors > 0 else None,
        neighbor_weights=source_weights.numpy() if neighbors > 0 else None,
        seconds=time.perf_counter() - start,
    )
