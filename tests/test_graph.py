"""G-Prune against independent transcriptions of the published formulation (float64, and the official fp32 code)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gprune import gprune_keep, gprune_scores, gprune_select, token_budget
from gprune.packed import block_positions

def published_scores(features: np.ndarray, iterations: int, threshold: float, temperature: float) -> np.ndarray:
    """The published formulation in float64: masked softmax with −5000 fill, P to the power t."""
    x = features.astype(np.float64)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    cosine = unit @ unit.T
    mask = cosine >= threshold
    logits = np.where(mask, cosine, -5000.0) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    transition = np.exp(logits)
    transition /= transition.sum(axis=1, keepdims=True)
    degree = mask.sum(axis=1)
    weights = np.linalg.norm(x, axis=1)
    return np.stack([weights @ np.linalg.matrix_power(transition, t) / degree for t in range(iterations + 1)])


def published_keep(features: np.ndarray, rows: int, cols: int, keep_ratio: float, base: int, **graph) -> np.ndarray:
    base_positions, grid_positions, newline_positions = (p.numpy() for p in block_positions(rows, cols, base))
    keep_base, keep_grid = token_budget(rows, cols, keep_ratio, base)
    kept = [newline_positions]
    for positions, k in ((base_positions, keep_base), (grid_positions, keep_grid)):
        last = published_scores(features[positions], **graph)[-1]
        kept.append(positions[np.argsort(-last, kind="stable")[:k]])
    return np.sort(np.concatenate(kept))


def clustered_features(n: int, d: int, seed: int) -> np.ndarray:
    """Features with cluster structure so the thresholded graph has real edges."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, d))
    return (centres[rng.integers(0, 6, n)] + 0.6 * rng.normal(size=(n, d))) * rng.uniform(0.5, 2.0, (n, 1))


@pytest.mark.parametrize("iterations, threshold, temperature", [(0, 0.5, 0.03), (1, 0.3, 0.1), (5, 0.5, 0.03), (12, 0.2, 0.05)])
def test_scores_match_matrix_power(iterations, threshold, temperature):
    features = clustered_features(200, 48, seed=iterations)
    ours = gprune_scores(torch.from_numpy(features).float(), iterations=iterations, threshold=threshold, temperature=temperature)
    reference = published_scores(features, iterations, threshold, temperature)
    assert ours.shape == (iterations + 1, 200)
    np.testing.assert_allclose(ours.double().numpy(), reference, rtol=2e-4, atol=1e-6 * np.abs(reference).max())


def test_row_zero_is_norm_over_degree_and_mass_is_conserved():
    features = torch.from_numpy(clustered_features(150, 32, seed=1)).float()
    scores = gprune_scores(features, iterations=6, threshold=0.4, temperature=0.05)
    unit = torch.nn.functional.normalize(features, dim=1)
    degree = ((unit @ unit.T) >= 0.4).sum(1).float()
    torch.testing.assert_close(scores[0], features.norm(dim=1) / degree)
    mass = scores * degree
    torch.testing.assert_close(mass.sum(1), torch.full((7,), float(features.norm(dim=1).sum())), rtol=1e-5, atol=0)


def test_keep_matches_published_on_a_packed_block():
    rows, cols, base = 6, 8, 36
    features = clustered_features(base + rows * (cols + 1), 40, seed=3)
    graph = dict(iterations=5, threshold=0.5, temperature=0.03)
    ours = gprune_keep(torch.from_numpy(features).float(), rows, cols, 0.25, base_tokens=base, **graph)
    assert ours.dtype == torch.long and bool((ours[1:] > ours[:-1]).all())
    np.testing.assert_array_equal(ours.numpy(), published_keep(features, rows, cols, 0.25, base, **graph))


def test_keep_counts_and_newlines():
    rows, cols, base = 5, 7, 16
    features = torch.randn(base + rows * (cols + 1), 24)
    _, _, newlines = block_positions(rows, cols, base)
    for ratio in (0.01, 0.11, 0.3, 0.5, 1.0):
        kept = gprune_keep(features, rows, cols, ratio, base_tokens=base)
        assert len(kept) == sum(token_budget(rows, cols, ratio, base)) + rows
        assert set(newlines.tolist()) <= set(kept.tolist())
    assert len(gprune_keep(features, rows, cols, 1.0, base_tokens=base)) == features.shape[0]


def test_select_reports_neighbours_and_degree():
    rows, cols, base = 4, 6, 16
    features = torch.from_numpy(clustered_features(base + rows * (cols + 1), 24, seed=5)).float()
    selection = gprune_select(features, rows, cols, 0.5, base_tokens=base, threshold=0.3, neighbors=4)
    base_positions, grid_positions, newlines = block_positions(rows, cols, base)
    assert np.isnan(selection.scores[:, newlines]).all() and selection.degree[newlines].sum() == 0
    assert (selection.degree[base_positions] >= 1).all()
    for token in (0, int(grid_positions[3])):
        view = base_positions if token < base else grid_positions
        sources = selection.neighbors[token][selection.neighbors[token] >= 0]
        assert set(sources.tolist()) <= set(view.tolist()) - {token}
        assert np.all(np.diff(selection.neighbor_weights[token]) <= 0)


def test_fp16_input_is_computed_in_fp32():
    features = torch.from_numpy(clustered_features(100, 32, seed=7)).float()
    np.testing.assert_allclose(
        gprune_scores(features.half(), iterations=5).numpy(),
        gprune_scores(features.half().float(), iterations=5).numpy(), rtol=1e-6,
    )


def official_fp32(features: np.ndarray, iterations: int, threshold: float, temperature: float):
    """The published llava_arch.py block transcribed op by op in fp32: zero below the threshold, ÷ τ,
    −5000 where |entry| < 1e-6, row softmax, degree = number of non-zero softmax entries, matrix power."""
    x = torch.from_numpy(features).float()
    unit = torch.nn.functional.normalize(x, p=2, dim=1)
    similarity = unit @ unit.T
    similarity[similarity < threshold] = 0
    similarity = similarity / temperature
    similarity[similarity.abs() < 1e-6] = -5000
    transition = torch.softmax(similarity, dim=1)
    degree = (transition > 0).sum(dim=1)
    scores = (x.norm(dim=1)[None] @ torch.linalg.matrix_power(transition, iterations))[0] / degree
    return scores, degree


@pytest.mark.parametrize("temperature", [0.03, 0.01, 0.003, 0.001])
def test_degree_counts_edges_whose_fp32_weight_survives_like_the_official_code(temperature):
    """At a small τ exp((C − 1)/τ) underflows for weak edges; the official fp32 code then counts fewer edges."""
    base = 574  # a base view of 574 tokens plus a 1×1 grid and its newline: 576 packed tokens
    features = clustered_features(base + 2, 64, seed=3)
    selection = gprune_select(torch.from_numpy(features).float(), 1, 1, 0.5, base_tokens=base, threshold=0.5,
                              temperature=temperature, iterations=5, neighbors=0)
    scores, degree = official_fp32(features[:base], 5, 0.5, temperature)
    np.testing.assert_array_equal(selection.degree[:base], degree.numpy())
    cosine = torch.nn.functional.normalize(torch.from_numpy(features[:base]).float(), dim=1)
    mask_degree = ((cosine @ cosine.T) >= 0.5).sum(1).numpy()
    if temperature <= 0.003:  # the case the fidelity fix is about: the plain edge count would differ
        assert (mask_degree != degree.numpy()).sum() > 100
    ours = selection.scores[-1, :base].astype(np.float64)
    k = base // 2
    assert_same_top_k_up_to_near_ties(ours, scores.double().numpy(), k, np.argsort(-scores.numpy(), kind="stable")[:k])


def test_zero_feature_keeps_a_self_loop():
    features = torch.randn(20, 8)
    features[3] = 0
    scores = gprune_scores(features, iterations=3, threshold=0.5)
    assert torch.isfinite(scores).all() and scores[:, 3].eq(0).all()


def assert_same_top_k_up_to_near_ties(ours: np.ndarray, reference: np.ndarray, k: int, reference_kept: np.ndarray):
    """Kept sets may differ only by swaps across the top-k boundary among near-tied reference scores."""
    kept = set(np.argsort(-ours, kind="stable")[:k].tolist())
    differing = kept ^ set(reference_kept.tolist())
    cut = np.sort(reference)[::-1][k - 1]
    for index in differing:
        assert abs(reference[index] - cut) <= 1e-4 * abs(cut), f"token {index} differs but is not near the cut"


@pytest.mark.parametrize("kwargs, message", [
    (dict(iterations=-1), "iterations"),
    (dict(iterations=10_000), "iterations"),
    (dict(iterations=2.5), "iterations"),
    (dict(threshold=1.5), "threshold"),
    (dict(threshold=float("nan")), "threshold"),
    (dict(temperature=0.0), "temperature"),
    (dict(temperature=-1.0), "temperature"),
])
def test_bad_graph_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        gprune_scores(torch.randn(10, 4), **kwargs)


@pytest.mark.parametrize("features, message", [
    (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), "NaN"),
    (torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), "NaN or infinite"),
    (torch.randn(3, 4, 5), "shape"),
    (torch.randn(0, 4), "shape"),
    (np.ones((3, 4)), "torch.Tensor"),
    (torch.ones(3, 4, dtype=torch.long), "floating"),
])
def test_bad_features(features, message):
    with pytest.raises(ValueError, match=message):
        gprune_scores(features)


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.01, float("nan"), "half"])
def test_bad_keep_ratio(ratio):
    with pytest.raises(ValueError, match="keep_ratio"):
        gprune_keep(torch.randn(16 + 2 * 3, 4), 2, 2, ratio, base_tokens=16)


def test_layout_mismatch():
    with pytest.raises(ValueError, match="layout does not match"):
        gprune_keep(torch.randn(100, 4), 2, 2, 0.5, base_tokens=16)
