"""ToMe: one round against an independent float64 matching, group bookkeeping, budgets, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gprune.packed import block_positions, packed_length, token_budget
from gprune.tome import bipartite_merge_round, tome_merge, tome_select


def reference_round(features: np.ndarray, sizes: np.ndarray, r: int):
    """Bipartite soft matching written out with loops in float64 (ties: lower-index A first)."""
    n = len(features)
    a_tokens, b_tokens = list(range(0, n, 2)), list(range(1, n, 2))
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    best = []  # (score, B token) per A token
    for a in a_tokens if b_tokens else []:  # n = 1: no B token to match
        similarities = [float(unit[a] @ unit[b]) for b in b_tokens]
        j = int(np.argmax(similarities))
        best.append((similarities[j], b_tokens[j]))
    ranking = sorted(range(len(best)), key=lambda i: -best[i][0])  # Python's sort is stable
    folded_into = {a_tokens[i]: best[i][1] for i in ranking[:r]}
    # ToMe's merge.py output order: unmerged A by descending score, then B (identity when r = 0).
    survivors = [a_tokens[i] for i in ranking[r:]] + b_tokens if r > 0 else list(range(n))
    output_of = {token: k for k, token in enumerate(survivors)}
    assignment = np.array([output_of[folded_into.get(i, i)] for i in range(n)])
    new_sizes = np.zeros(len(survivors))
    weighted = np.zeros((len(survivors), features.shape[1]))
    for i in range(n):
        new_sizes[assignment[i]] += sizes[i]
        weighted[assignment[i]] += sizes[i] * features[i]
    return weighted / new_sizes[:, None], new_sizes, assignment


@pytest.mark.parametrize("n", [1, 2, 5, 8, 13])
def test_round_matches_reference(n):
    generator = np.random.default_rng(n)
    features = generator.normal(size=(n, 6))
    sizes = generator.integers(1, 5, size=n).astype(np.float64)
    for r in range(0, (n + 1) // 2 + 1 if n > 1 else 1):
        new_features, new_sizes, assignment = bipartite_merge_round(
            torch.tensor(features, dtype=torch.float32), torch.tensor(sizes), r
        )
        expected_features, expected_sizes, expected_assignment = reference_round(features, sizes, r)
        assert new_features.dtype == torch.float32 and new_features.shape == (n - r, 6)
        np.testing.assert_array_equal(assignment.numpy(), expected_assignment)
        np.testing.assert_allclose(new_sizes.numpy(), expected_sizes)
        np.testing.assert_allclose(new_features.numpy(), expected_features, rtol=1e-5, atol=1e-6)


def test_round_several_a_into_one_b():
    # Tokens 0, 2 and 4 (A) all point the same way as token 3 (B); token 1 (B) is orthogonal.
    features = torch.tensor([[1.0, 0.1], [0.0, 1.0], [1.0, 0.0], [1.0, 0.05], [2.0, 0.1]])
    new_features, new_sizes, assignment = bipartite_merge_round(features, torch.ones(5), 3)
    assert assignment.tolist() == [1, 0, 1, 1, 1]  # no A left; B tokens 1, 3 in their order
    assert new_sizes.tolist() == [1.0, 4.0]
    torch.testing.assert_close(new_features[1], features[[0, 2, 3, 4]].mean(0))
    torch.testing.assert_close(new_features[0], features[1])


def test_rounds_track_sizes_as_group_lengths():
    features = torch.randn(41, 5, generator=torch.Generator().manual_seed(0))
    sizes, owner, current = torch.ones(41), torch.arange(41), features
    while current.shape[0] > 3:
        current, sizes, assignment = bipartite_merge_round(current, sizes, min(current.shape[0] - 3, current.shape[0] // 2))
        owner = assignment[owner]
        assert torch.equal(sizes, torch.bincount(owner, minlength=current.shape[0]).float())
        for j in range(current.shape[0]):  # repeated size-weighted averages = plain group mean
            torch.testing.assert_close(current[j], features[owner == j].mean(0), rtol=1e-5, atol=1e-5)


def test_round_order_is_tomes_unmerged_a_by_score_then_b():
    # A = 0, 2, 4, 6; B = 1, 3, 5. Token 6 matches B best, then 2, then 0; 4 is orthogonal to every B.
    features = torch.tensor([[1.0, 0.5, 0], [1.0, 0, 0], [1.0, 0.3, 0], [0, 0, 1.0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 0.1, 0]])
    _, _, assignment = bipartite_merge_round(features, torch.ones(7), 1)
    # Token 6 merges into B token 1; the unmerged A tokens follow in descending score: 2, 0, 4; then B: 1, 3, 5.
    assert assignment.tolist() == [1, 3, 0, 4, 2, 5, 3]


def reference_merge(features: np.ndarray, target: int) -> list[list[int]]:
    """ToMe's rounds as its merge.py orders them, in float64 with loops: the groups of original tokens."""
    current = [[i] for i in range(len(features))]
    values, sizes = features.astype(np.float64), np.ones(len(features))
    while len(current) > target:
        r = min(len(current) - target, len(current) // 2)
        merged, sizes, assignment = reference_round(values, sizes, r)
        groups = [[] for _ in range(len(merged))]
        for i, j in enumerate(assignment):
            groups[j] += current[i]
        values, current = merged, groups
    return sorted(sorted(g) for g in current)


@pytest.mark.parametrize("n, target", [(1455, 300), (77, 10), (40, 9)])
def test_multi_round_groups_match_tomes_order(n, target):
    features = np.random.default_rng(n).normal(size=(n, 8))
    _, groups, _ = tome_merge(torch.tensor(features, dtype=torch.float32), target)
    assert sorted(g.tolist() for g in groups) == reference_merge(features, target)


@pytest.mark.parametrize("target", [1, 2, 7, 20, 33, 34])
def test_tome_merge_groups_partition_and_means(target):
    features = torch.randn(34, 8, generator=torch.Generator().manual_seed(target))
    merged, groups, representatives = tome_merge(features, target)
    assert merged.shape == (target, 8) and len(groups) == target and representatives.shape == (target,)
    assert sorted(np.concatenate(groups).tolist()) == list(range(34))
    assert torch.equal(representatives, torch.sort(representatives).values)
    for j, group in enumerate(groups):
        assert group.dtype == np.int64 and representatives[j].item() in group
        torch.testing.assert_close(merged[j], features[torch.from_numpy(group)].mean(0), rtol=1e-5, atol=1e-5)
    if target == 34:
        assert torch.equal(merged, features) and all(len(g) == 1 for g in groups)


def test_tome_merge_computes_in_float32():
    features = torch.randn(10, 4, generator=torch.Generator().manual_seed(1)).half()
    merged, groups, _ = tome_merge(features, 4)
    assert merged.dtype == torch.float32
    torch.testing.assert_close(merged[0], features[torch.from_numpy(groups[0])].float().mean(0))


def check_selection(selection, features, rows, cols, keep_ratio, base_tokens):
    """Everything a ToMe selection must satisfy, whatever the features."""
    n = packed_length(rows, cols, base_tokens)
    base, grid, newlines = (p.numpy() for p in block_positions(rows, cols, base_tokens))
    keep_base, keep_grid = token_budget(rows, cols, keep_ratio, base_tokens)
    kept = selection.kept_positions
    assert kept.dtype == np.int64 and len(kept) == keep_base + keep_grid + rows
    assert np.all(np.diff(kept) > 0) and kept[0] >= 0 and kept[-1] < n
    assert set(newlines) <= set(kept.tolist())
    assert selection.scores is None and selection.seconds >= 0
    assert len(selection.groups) == len(kept) and selection.merged_features.shape == (len(kept), features.shape[1])
    assert np.isfinite(selection.merged_features).all()
    members = np.concatenate(selection.groups)
    expected = [*(base if keep_base else []), *(grid if keep_grid else []), *newlines]
    assert sorted(members.tolist()) == sorted(expected)  # each token in exactly one group
    original = features.double().numpy()
    for position, group, merged in zip(kept, selection.groups, selection.merged_features):
        assert position in group
        view = base if position in base else grid if position in grid else None
        if view is None:
            assert group.tolist() == [position]
            np.testing.assert_array_equal(merged, features[position].float().numpy())
        else:
            assert np.isin(group, view).all()  # never merged across views or with a newline
            np.testing.assert_allclose(merged, original[group].mean(0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rows, cols, base_tokens", [(4, 6, 16), (3, 5, 9), (1, 1, 1), (2, 7, 20)])
@pytest.mark.parametrize("keep_ratio", [0.05, 0.1, 0.25, 0.5, 0.7, 1.0])
def test_tome_select_budget_and_groups(rows, cols, base_tokens, keep_ratio):
    features = torch.randn(packed_length(rows, cols, base_tokens), 6, generator=torch.Generator().manual_seed(rows))
    selection = tome_select(features, rows, cols, keep_ratio, base_tokens=base_tokens)
    check_selection(selection, features, rows, cols, keep_ratio, base_tokens)


def test_tome_select_default_base_tokens():
    features = torch.randn(packed_length(3, 4), 4, generator=torch.Generator().manual_seed(2))
    selection = tome_select(features, 3, 4, 0.3)
    check_selection(selection, features, 3, 4, 0.3, 576)
    assert len(selection.kept_positions) == 172 + 3 + 3


def test_tome_select_keep_all_is_identity():
    features = torch.randn(packed_length(4, 6, 16), 5, generator=torch.Generator().manual_seed(3))
    selection = tome_select(features, 4, 6, 1.0, base_tokens=16)
    assert np.array_equal(selection.kept_positions, np.arange(features.shape[0]))
    assert np.array_equal(selection.merged_features, features.numpy())
    assert [g.tolist() for g in selection.groups] == [[i] for i in range(features.shape[0])]


def test_bad_input():
    good = torch.randn(packed_length(2, 3, 4), 5)
    nan = good.clone()
    nan[3, 1] = float("nan")
    bad_calls = [
        lambda: tome_select(nan, 2, 3, 0.5, base_tokens=4),
        lambda: tome_select(good[:, 0], 2, 3, 0.5, base_tokens=4),
        lambda: tome_select(good[None], 2, 3, 0.5, base_tokens=4),
        lambda: tome_select(good.numpy(), 2, 3, 0.5, base_tokens=4),
        lambda: tome_select(good, 2, 4, 0.5, base_tokens=4),
        lambda: tome_select(good, 2, 3, 0.5),
        lambda: tome_select(good, 2, 3, 0.0, base_tokens=4),
        lambda: tome_select(good, 2, 3, 1.5, base_tokens=4),
        lambda: tome_select(good, 2, 3, True, base_tokens=4),
        lambda: tome_merge(good, 0),
        lambda: tome_merge(good, good.shape[0] + 1),
        lambda: tome_merge(nan, 3),
        lambda: bipartite_merge_round(good[:5], torch.ones(5), 4),
        lambda: bipartite_merge_round(good[:5], torch.ones(5), -1),
        lambda: bipartite_merge_round(good[:1], torch.ones(1), 1),
        lambda: bipartite_merge_round(good[:5], torch.ones(4), 1),
        lambda: bipartite_merge_round(good[:5], torch.zeros(5), 1),
    ]
    for call in bad_calls:
        with pytest.raises(ValueError):
            call()


@st.composite
def packed_blocks(draw):
    rows, cols, base_tokens = draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(st.integers(1, 12))
    n, d = packed_length(rows, cols, base_tokens), draw(st.integers(1, 4))
    # A tiny palette of values gives duplicate tokens, constant rows and all-zero tokens.
    values = draw(st.lists(st.sampled_from([0.0, 1.0, -1.0, 2.5]), min_size=n * d, max_size=n * d))
    keep_ratio = draw(st.floats(0.01, 1.0))
    return torch.tensor(values, dtype=torch.float32).reshape(n, d), rows, cols, base_tokens, keep_ratio


@settings(max_examples=150, deadline=None)
@given(packed_blocks())
def test_tome_select_property(block):
    features, rows, cols, base_tokens, keep_ratio = block
    selection = tome_select(features, rows, cols, keep_ratio, base_tokens=base_tokens)
    check_selection(selection, features, rows, cols, keep_ratio, base_tokens)
