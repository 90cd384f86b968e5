"""The cross-machine comparisons of tests/pictures.py accept last-bit differences and nothing a person would see."""

from __future__ import annotations

import numpy as np
import pytest

from pictures import assert_looks_the_same, assert_same_kept_up_to_ties, assert_same_text


def test_kept_sets_may_differ_only_by_swapping_tied_tokens():
    scores = np.array([5.0, 4.0, 3.0, 3.0 * (1 + 1e-6), 1.0])
    assert_same_kept_up_to_ties([0, 1, 2], [0, 1, 3], scores, "tie")  # 2 and 3 are tied at the cut
    with pytest.raises(AssertionError, match="not tied"):
        assert_same_kept_up_to_ties([0, 1, 2], [0, 1, 4], scores, "no tie")
    with pytest.raises(AssertionError, match="no scores"):
        assert_same_kept_up_to_ties([0, 1, 2], [0, 1, 3], None, "ToMe")
    with pytest.raises(AssertionError, match="3 vs 2 tokens"):
        assert_same_kept_up_to_ties([0, 1, 2], [0, 1], scores, "budget")


def test_pictures_look_the_same_within_a_few_levels_on_almost_every_pixel():
    picture = np.random.default_rng(0).integers(30, 220, (100, 100, 3), dtype=np.uint8)
    nudged = picture + 2  # every colour a level or two off
    assert_looks_the_same(picture, nudged.astype(np.uint8), "nudged")
    one_cell = picture.copy()
    one_cell[:9, :9] = 0  # one token's cell recoloured: 0.8 % of the pixels
    assert_looks_the_same(picture, one_cell, "one cell")
    many_cells = picture.copy()
    many_cells[:20, :20] = 0
    with pytest.raises(AssertionError, match="differ visibly"):
        assert_looks_the_same(picture, many_cells, "many cells")
    with pytest.raises(AssertionError, match=r"\(100, 100, 3\) vs \(100, 99, 3\)"):
        assert_looks_the_same(picture, picture[:, 1:], "cropped")


def test_texts_match_up_to_the_last_printed_digit():
    assert_same_text("score 0.123 of 4 tokens", "score 0.124 of 4 tokens", "rounding")
    with pytest.raises(AssertionError, match="0.123 vs 0.125"):
        assert_same_text("score 0.123", "score 0.125", "two units")
    with pytest.raises(AssertionError, match="beyond their numbers"):
        assert_same_text("kept 3", "dropped 3", "words")
