"""Property tests: any features, any layout, any keep ratio → valid selections at equal budgets."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gprune import gprune_scores, gprune_select, keep_top_per_view, l2norm_select, random_select, token_budget, tome_select
from gprune.packed import block_positions


@st.composite
def packed_blocks(draw):
    """A small packed block whose rows mix gaussian, duplicate, zero and constant features at extreme scales."""
    base_side = draw(st.integers(1, 5))
    rows, cols = draw(st.integers(1, 5)), draw(st.integers(1, 7))
    base = base_side * base_side
    n, d = base + rows * (cols + 1), draw(st.integers(1, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    features = rng.normal(size=(n, d))
    kinds = rng.integers(0, 4, n)
    features[kinds == 1] = features[0]                       # duplicates
    features[kinds == 2] = 0.0                               # zeros
    features[kinds == 3] = draw(st.floats(-3, 3))            # constant rows
    features *= 10.0 ** rng.choice([-20, -3, 0, 3, 20], size=(n, 1))   # extreme norms
    keep_ratio = draw(st.floats(0.001, 1.0))
    return torch.from_numpy(features).float(), rows, cols, base, keep_ratio


def assert_valid(kept: np.ndarray, rows: int, cols: int, base: int, keep_ratio: float):
    assert kept.dtype == np.int64
    assert np.all(np.diff(kept) > 0), "kept positions must be sorted and unique"
    assert kept.min(initial=0) >= 0 and kept.max(initial=0) < base + rows * (cols + 1)
    keep_base, keep_grid = token_budget(rows, cols, keep_ratio, base)
    base_positions, grid_positions, newline_positions = (p.numpy() for p in block_positions(rows, cols, base))
    assert np.isin(kept, base_positions).sum() == keep_base
    assert np.isin(kept, grid_positions).sum() == keep_grid
    assert np.isin(newline_positions, kept).all()


@settings(max_examples=120, deadline=None)
@given(packed_blocks(), st.integers(0, 8), st.floats(-1, 1), st.floats(0.005, 2.0))
def test_gprune_selects_validly_with_finite_scores(block, iterations, threshold, temperature):
    features, rows, cols, base, keep_ratio = block
    selection = gprune_select(features, rows, cols, keep_ratio, iterations=iterations, threshold=threshold,
                              temperature=temperature, base_tokens=base, neighbors=3)
    assert_valid(selection.kept_positions, rows, cols, base, keep_ratio)
    scored = ~np.isin(np.arange(features.shape[0]), block_positions(rows, cols, base)[2].numpy())
    assert np.isfinite(selection.scores[:, scored]).all()


@settings(max_examples=120, deadline=None)
@given(packed_blocks())
def test_every_method_keeps_the_same_budget(block):
    features, rows, cols, base, keep_ratio = block
    selections = {
        "gprune": gprune_select(features, rows, cols, keep_ratio, base_tokens=base, neighbors=0),
        "tome": tome_select(features, rows, cols, keep_ratio, base_tokens=base),
        "l2norm": l2norm_select(features, rows, cols, keep_ratio, base_tokens=base),
        "random": random_select(features.shape[0], rows, cols, keep_ratio, base_tokens=base),
        # FastV chooses with the same helper from an attention row: any scores will do here.
        "fastv": None,
    }
    attention = torch.rand(features.shape[0]).softmax(0)
    fastv_kept = keep_top_per_view(attention, rows, cols, keep_ratio, base).numpy()
    for name, selection in selections.items():
        kept = fastv_kept if selection is None else selection.kept_positions
        assert_valid(kept, rows, cols, base, keep_ratio)
    assert np.isfinite(selections["tome"].merged_features).all()
    assert len({len(s.kept_positions) for s in selections.values() if s is not None} | {len(fastv_kept)}) == 1


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 40), st.integers(1, 16), st.integers(0, 10), st.integers(0, 2**32 - 1))
def test_mass_is_conserved_for_any_features(n, d, iterations, seed):
    rng = np.random.default_rng(seed)
    features = torch.from_numpy(rng.normal(size=(n, d)) * 10.0 ** rng.uniform(-10, 10, (n, 1))).float()
    scores = gprune_scores(features, iterations=iterations, threshold=float(rng.uniform(-1, 1)))
    assert torch.isfinite(scores).all()
    assert scores.shape == (iterations + 1, n)
    # Row 0 is the l2 norm over the degree; multiplying back by the degree, every row sums to the same mass.
    norms = features.double().norm(dim=1)
    degree = (norms / scores[0].double())
    totals = (scores.double() * degree).sum(1)
    np.testing.assert_allclose(totals.numpy(), float(norms.sum()), rtol=1e-4)
    assert ((degree >= 1 - 1e-4) & (degree <= n * (1 + 1e-4))).all()


@st.composite
def degenerate_blocks(draw):
    """A whole block of one degenerate kind: all zeros, all one duplicated row, or all one constant, at any scale."""
    base_side = draw(st.integers(1, 5))
    rows, cols = draw(st.integers(1, 5)), draw(st.integers(1, 7))
    base = base_side * base_side
    n, d = base + rows * (cols + 1), draw(st.integers(1, 12))
    kind = draw(st.sampled_from(["zeros", "duplicate", "constant"]))
    scale = 10.0 ** draw(st.sampled_from([-20, -3, 0, 3, 20]))
    if kind == "zeros":
        features = np.zeros((n, d))
    elif kind == "duplicate":
        features = np.tile(np.random.default_rng(draw(st.integers(0, 2**16))).normal(size=d), (n, 1)) * scale
    else:
        features = np.full((n, d), draw(st.floats(-3, 3))) * scale
    return torch.from_numpy(features).float(), rows, cols, base, draw(st.floats(0.001, 1.0))


@settings(max_examples=80, deadline=None)
@given(degenerate_blocks())
def test_every_method_handles_fully_degenerate_blocks(block):
    """No structure at all (every token the same, or all zero): still valid selections at equal budgets."""
    features, rows, cols, base, keep_ratio = block
    selections = [
        gprune_select(features, rows, cols, keep_ratio, base_tokens=base, neighbors=3),
        tome_select(features, rows, cols, keep_ratio, base_tokens=base),
        l2norm_select(features, rows, cols, keep_ratio, base_tokens=base),
    ]
    for selection in selections:
        assert_valid(selection.kept_positions, rows, cols, base, keep_ratio)
    scored = ~np.isin(np.arange(features.shape[0]), block_positions(rows, cols, base)[2].numpy())
    assert np.isfinite(selections[0].scores[:, scored]).all()
    assert np.isfinite(selections[1].merged_features).all()


@settings(max_examples=120, deadline=None)
@given(st.integers(1, 5), st.integers(1, 5), st.integers(1, 7), st.floats(0.001, 1.0), st.integers(1, 3),
       st.sampled_from([1e-30, 1.0, 1e30]), st.integers(0, 2**16))
def test_fastv_style_selection_with_tied_scores(base_side, rows, cols, keep_ratio, distinct, scale, seed):
    """keep_top_per_view (FastV's chooser) on scores with only 1–3 distinct values: valid and deterministic."""
    base = base_side * base_side
    n = base + rows * (cols + 1)
    scores = torch.from_numpy(np.random.default_rng(seed).integers(0, distinct, n) * scale).float()
    kept = keep_top_per_view(scores, rows, cols, keep_ratio, base).numpy()
    assert_valid(kept, rows, cols, base, keep_ratio)
    assert np.array_equal(kept, keep_top_per_view(scores.clone(), rows, cols, keep_ratio, base).numpy())
