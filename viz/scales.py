"""Colour scales: per-token values → [0, 1] positions on a colour bar, in rank, log or linear mode.

Importance scores are heavy-tailed (G-Prune's span four decades on a photo), so a linear scale paints most
tokens one flat colour. `rank` spreads the tokens evenly over the colours (position = share of the view's
tokens scoring lower), which is what decides keep or drop; `log` keeps magnitudes comparable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLOUR_MODES = ("rank", "log", "linear")
LINEAR_PERCENTILES = (2.0, 98.0)


@dataclass(frozen=True)
class Scale:
    """A colour scale fitted to the values of the tokens a picture shows.

    Attributes:
        mode: one of `COLOUR_MODES`.
        low_label, high_label: what the two ends of the colour bar stand for.
        sorted_values: the shown tokens' finite values, sorted (they define `rank`).
        low, high: the ends of `log` (in log10) and `linear`.
        floor: `log` maps values below it (zeros) to it: the smallest positive shown value.
    """

    mode: str
    low_label: str
    high_label: str
    sorted_values: np.ndarray
    low: float = 0.0
    high: float = 1.0
    floor: float = 1.0

    def positions(self, values: np.ndarray) -> np.ndarray:
        """`values` placed on the colour bar, in [0, 1]; NaN where a value is not finite."""
        values = np.asarray(values, dtype=np.float64)
        out = np.full(values.shape, np.nan)
        finite = np.isfinite(values)
        if self.mode == "rank":
            out[finite] = _mid_rank(self.sorted_values, values[finite])
            return out
        mapped = np.log10(np.maximum(values[finite], self.floor)) if self.mode == "log" else values[finite]
        span = self.high - self.low
        out[finite] = np.clip((mapped - self.low) / span, 0.0, 1.0) if span > 0 else 0.5
        return out

    def position(self, value: float) -> float:
        """Where one value sits on the colour bar (e.g. the keep/drop cut)."""
        return float(self.positions(np.array([value]))[0])


def fit_scale(values: np.ndarray, shown: np.ndarray, mode: str = "rank") -> Scale:
    """Fit `mode` to the finite `values[shown]`.

    Args:
        values: `(n,)` per-token values.
        shown: `(n,)` bool, the tokens the picture draws (the scale adapts to them, not to hidden tokens).
        mode: `rank` (share of shown tokens scoring lower, ties share a mid rank), `log` (log10, 2nd–98th
            percentile; values ≤ 0 sit at the bottom) or `linear` (2nd–98th percentile).
    """
    if mode not in COLOUR_MODES:
        raise ValueError(f"colour mode must be one of {', '.join(COLOUR_MODES)}, got {mode!r}")
    values = np.asarray(values, dtype=np.float64)
    shown = np.asarray(shown, dtype=bool)
    if values.ndim != 1 or shown.shape != values.shape:
        raise ValueError(f"values and shown must be 1-D of one length, got {values.shape} and {shown.shape}")
    reference = np.sort(values[np.isfinite(values) & shown])
    if reference.size == 0:
        raise ValueError("no finite value among the shown tokens")
    if mode == "rank":
        return Scale(mode, "lowest", "highest", reference)
    if mode == "log":
        positive = reference[reference > 0]
        floor = float(positive[0]) if positive.size else 1.0
        low, high = np.percentile(np.log10(np.maximum(reference, floor)), LINEAR_PERCENTILES)
        return Scale(mode, f"{10 ** low:.2g}", f"{10 ** high:.2g}", reference, float(low), float(high), floor)
    low, high = np.percentile(reference, LINEAR_PERCENTILES)
    return Scale(mode, f"{low:.3g}", f"{high:.3g}", reference, float(low), float(high))


def _mid_rank(sorted_values: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Share of `sorted_values` below each value, ties counted half, stretched so min → 0 and max → 1."""
    m = sorted_values.size
    if m == 1:
        return np.full(values.shape, 0.5)
    below = np.searchsorted(sorted_values, values, side="left")
    at_or_below = np.searchsorted(sorted_values, values, side="right")
    return np.clip((below + at_or_below - 1) / 2 / (m - 1), 0.0, 1.0)
