"""Comparisons that hold on any x86 CPU: results computed on two machines (a shipped bundle and a live run)
agree in what a person sees, not in the last bit of every float.

* Kept sets: equal, except for swaps across the keep cut between tokens whose scores are tied within `rtol`.
* Texts (captions, tables): the same words, and numbers equal to within one unit of their last printed digit.
* Pictures: the same size, and all but `MAX_CHANGED_SHARE` of the pixels within `PIXEL_TOLERANCE` levels (a
  tie swapped at the cut recolours a token's cell or two; a score's last bit moves a colour by a level).
"""

from __future__ import annotations

import re

import numpy as np

SCORE_RTOL = 1e-4
PIXEL_TOLERANCE = 24  # of 255 levels per channel
MAX_CHANGED_SHARE = 0.01  # of the pixels


def assert_same_kept_up_to_ties(kept_a: np.ndarray, kept_b: np.ndarray, scores: np.ndarray | None, what: str,
                                rtol: float = SCORE_RTOL) -> None:
    """`kept_a` and `kept_b` (packed positions) are equal in size, and differ only among tokens whose `scores`
    (`(n,)`, one method's final scores; None: no scores, so no ties to allow) are tied with a token across the cut."""
    a, b = set(np.asarray(kept_a).tolist()), set(np.asarray(kept_b).tolist())
    assert len(a) == len(b), f"{what}: {len(a)} vs {len(b)} tokens kept"
    differing = sorted(a ^ b)
    if not differing:
        return
    assert scores is not None, f"{what}: kept sets differ at {differing[:10]} and the method has no scores to tie"
    scores = np.asarray(scores, dtype=np.float64)
    for position in differing:  # kept by one run only: swapped with a token kept by the other run only
        swapped = [scores[other] for other in differing if (other in a) != (position in a)]
        assert any(abs(score - scores[position]) <= rtol * abs(scores[position]) for score in swapped), \
            f"{what}: token {position} is kept by one run only and is not tied with a token kept by the other"


def assert_looks_the_same(a, b, what: str) -> None:
    """Two pictures (arrays or PIL images, or strings such as captions, compared exactly) look the same."""
    if isinstance(a, str) or isinstance(b, str) or a is None or b is None:
        assert a == b, what
        return
    a, b = np.asarray(a, dtype=np.int16), np.asarray(b, dtype=np.int16)
    assert a.shape == b.shape, f"{what}: {a.shape} vs {b.shape}"
    changed = np.abs(a - b).reshape(a.shape[0], a.shape[1], -1).max(-1) > PIXEL_TOLERANCE
    assert changed.mean() <= MAX_CHANGED_SHARE, f"{what}: {changed.mean():.2%} of the pixels differ visibly"


NUMBER = re.compile(r"-?\d+(?:\.(\d+))?(?:e[-+]?\d+)?")


def assert_same_text(a: str, b: str, what: str) -> None:
    """The same text, but for numbers that differ by at most one unit of their last printed digit (a float's
    last bits can round a printed score either way)."""
    assert NUMBER.sub("#", a) == NUMBER.sub("#", b), f"{what}: the texts differ beyond their numbers"
    for x, y in zip(NUMBER.finditer(a), NUMBER.finditer(b)):
        decimals = max(len(x.group(1) or ""), len(y.group(1) or ""))
        close = abs(float(x.group()) - float(y.group())) <= 10.0 ** -decimals * 1.01 + SCORE_RTOL * abs(float(x.group()))
        assert close, f"{what}: {x.group()} vs {y.group()}"


def assert_same_picture_or_text(a, b, what: str) -> None:
    if isinstance(a, str) and isinstance(b, str):
        assert_same_text(a, b, what)
    else:
        assert_looks_the_same(a, b, what)
