"""Samples the explorer plots about a view's tokens, computed the same way live and when precomputed."""

from __future__ import annotations

import numpy as np

SIMILARITY_PAIRS = 50_000


def pair_similarities(features: np.ndarray, positions: np.ndarray, pairs: int = SIMILARITY_PAIRS, seed: int = 0) -> np.ndarray:
    """Cosine similarities of `pairs` random distinct token pairs among `positions` (deterministic in `seed`).

    Args:
        features: `(n, d)` packed features; positions: the view's token positions.
    Returns:
        `(pairs,)` float32.
    """
    features = np.asarray(features, dtype=np.float32)[positions]
    if len(positions) < 2:
        raise ValueError("need at least two tokens to sample pairs")
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    rng = np.random.default_rng(seed)
    i = rng.integers(len(positions), size=pairs)
    j = rng.integers(len(positions) - 1, size=pairs)
    j += j >= i
    return np.einsum("kd,kd->k", unit[i], unit[j])
