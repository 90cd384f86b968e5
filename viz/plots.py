"""Small matplotlib charts rendered straight to PIL images.

Figures are built with `matplotlib.figure.Figure` on an Agg canvas rather than through pyplot: nothing is
registered globally, so there is no figure to close or leak, and no GUI backend is ever touched.
"""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

FIGSIZE = (5.2, 3.5)  # inches; small enough that the text stays legible on a phone
DPI = 110
SLIDE_DPI = 220  # 1144 × 770 px: slide-ready


def stability_plot(keep_ratios: np.ndarray, curves: dict[str, np.ndarray], reference_label: str, *,
                   note: str = "", dpi: int = DPI) -> Image.Image:
    """Log-probability of the unpruned model's answer as tokens are pruned, one line per method.

    Args:
        keep_ratios: `(r,)` fractions of visual tokens kept, in (0, 1].
        curves: method name → `(r,)` log-probability of the reference answer at each keep ratio.
        reference_label: short description of the reference answer, used as the title.
        note: a warning printed in red above the plot (e.g. that a toy model made the numbers).

    The x axis runs from keep ratio 1 down to the smallest, so "more pruning" reads left to right.
    """
    ratios = _vector(keep_ratios, "keep_ratios")
    figure, axes = _figure(dpi, note)
    for method, curve in _curves(curves, ratios, "curves").items():
        axes.plot(ratios, curve, marker="o", markersize=3, label=method)
    axes.invert_xaxis()
    axes.set_xlabel("keep ratio (fraction of visual tokens kept)")
    axes.set_ylabel("log p(reference answer)")
    _title(axes, reference_label)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=9)
    return _render(figure)


def accuracy_plot(keep_ratios: np.ndarray, accuracy: dict[str, np.ndarray], unpruned: float, title: str, *,
                  note: str = "", dpi: int = DPI) -> Image.Image:
    """Benchmark accuracy against the keep ratio, one line per method, the unpruned model as a dashed line
    (the layout of the G-Prune paper's Figures 3 and 4).

    Args:
        keep_ratios: `(r,)` fractions of visual tokens kept, in (0, 1].
        accuracy: method label → `(r,)` accuracy in % at each keep ratio (NaN where not evaluated).
        unpruned: the unpruned model's accuracy in %.
        title: what was evaluated (dataset, model, examples).
        note: a warning printed in red above the plot (e.g. that a small model trained here made the numbers).
    """
    ratios = _vector(keep_ratios, "keep_ratios")
    figure, axes = _figure(dpi, note)
    for method, values in _curves(accuracy, ratios, "accuracy").items():
        axes.plot(ratios, values, marker="o", markersize=4, label=method)
    axes.axhline(unpruned, color="black", linestyle="--", linewidth=1, label=f"unpruned ({unpruned:.1f} %)")
    axes.set_xscale("log")
    axes.set_xticks(ratios, [f"{ratio:g}" for ratio in ratios])
    axes.minorticks_off()
    axes.invert_xaxis()
    axes.set_xlabel("keep ratio (fraction of visual tokens kept)")
    axes.set_ylabel("accuracy %")
    axes.set_ylim(0, 100)
    _title(axes, title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return _render(figure)


def _curves(curves: dict[str, np.ndarray], ratios: np.ndarray, name: str) -> dict[str, np.ndarray]:
    """`curves` as float vectors, each checked to have one value per keep ratio (NaN allowed)."""
    if not curves:
        raise ValueError(f"{name} must name at least one method")
    checked = {method: _vector(curve, f"{name}[{method!r}]", allow_nan=True) for method, curve in curves.items()}
    for method, curve in checked.items():
        if curve.shape != ratios.shape:
            raise ValueError(f"{name}[{method!r}] has shape {curve.shape}, keep_ratios {ratios.shape}")
    return checked


def similarity_histogram(similarities: np.ndarray, threshold: float, *, title: str = "", note: str = "",
                         dpi: int = DPI) -> Image.Image:
    """Histogram of pairwise similarities with the threshold line and the fraction of pairs at or above it.

    Args:
        similarities: `(k,)` similarities; non-finite entries are ignored.
        threshold: the similarity above which pairs count (drawn as a vertical line).
    """
    finite = _finite(similarities, "similarities")
    figure, axes = _figure(dpi, note)
    edges = np.histogram_bin_edges(finite, bins=50)
    fraction = float((finite >= threshold).mean())
    axes.hist(finite[finite < threshold], bins=edges, histtype="stepfilled", color="tab:gray", alpha=0.8, label="no edge")
    axes.hist(finite[finite >= threshold], bins=edges, histtype="stepfilled", color="tab:blue", alpha=0.9,
              label=f"edge (≥ s = {threshold:g}): {fraction:.1%} of {finite.size:,} pairs")
    axes.axvline(threshold, color="tab:red", linestyle="--")
    axes.set_xlabel("cosine similarity")
    axes.set_ylabel("pairs")
    _title(axes, title)
    axes.legend(fontsize=9, loc="upper left")
    return _render(figure)


def score_histogram(scores: np.ndarray, cut: float, *, title: str = "", note: str = "", dpi: int = DPI) -> Image.Image:
    """Histogram of token scores, kept (≥ `cut`) and dropped in two colours, with the top-k cut line.

    Scores that are all positive and span more than two decades are binned on a log axis (G-Prune's do: a
    linear axis shows one spike at 0 with the cut invisible beside it).

    Args:
        scores: `(n,)` token scores; non-finite entries are ignored.
        cut: the score of the k-th best token (tokens scoring ≥ `cut` are kept).
    """
    finite = _finite(scores, "scores")
    figure, axes = _figure(dpi, note)
    log = bool(finite.min() > 0 and finite.max() / finite.min() > 100)
    if log:
        edges = np.geomspace(finite.min(), finite.max(), 61)
        axes.set_xscale("log")
    else:
        edges = np.histogram_bin_edges(finite, bins=60)
    kept = finite >= cut
    axes.hist(finite[~kept], bins=edges, histtype="stepfilled", color="tab:gray", alpha=0.8, label=f"dropped ({int((~kept).sum()):,})")
    axes.hist(finite[kept], bins=edges, histtype="stepfilled", color="tab:green", alpha=0.9, label=f"kept ({int(kept.sum()):,})")
    axes.axvline(cut, color="tab:red", linestyle="--", label=f"top-k cut ({cut:.3g})")
    axes.set_xlabel("score (log scale)" if log else "score")
    axes.set_ylabel("tokens")
    _title(axes, title)
    axes.legend(fontsize=9, loc="upper right")
    return _render(figure)


def score_trace_plot(scores_over_iterations: np.ndarray, label: str, *, cuts: np.ndarray | None = None,
                     note: str = "", dpi: int = DPI) -> Image.Image:
    """One token's score across propagation iterations `0..t`, optionally against the view's keep cut.

    Args:
        scores_over_iterations: `(t + 1,)` scores, entry `i` after iteration `i` (0 is the initial score).
        label: what the token is (e.g. "token 812 (grid r3 c7)"), used as the title.
        cuts: `(t + 1,)` the lowest kept score of the token's view after each iteration (dashed line):
            the token is kept where its line is on or above it.
    """
    scores = _vector(scores_over_iterations, "scores_over_iterations", allow_nan=True)
    figure, axes = _figure(dpi, note)
    steps = np.arange(scores.size)
    axes.plot(steps, scores, marker="o", label="this token")
    if cuts is not None:
        cuts = _vector(cuts, "cuts", allow_nan=True)
        if cuts.shape != scores.shape:
            raise ValueError(f"cuts has shape {cuts.shape}, scores {scores.shape}")
        axes.plot(steps, cuts, linestyle="--", color="tab:red", label="keep cut (lowest kept score)")
        axes.legend(fontsize=9)
    values = np.concatenate([scores, cuts if cuts is not None else []])
    values = values[np.isfinite(values)]
    if values.size and values.min() > 0 and values.max() / values.min() > 10:
        axes.set_yscale("log")
    axes.set_xlabel("iteration")
    axes.set_ylabel("score")
    _title(axes, label)
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.grid(alpha=0.3)
    return _render(figure)


def speedup_plot(
    keep_ratios: np.ndarray, measured: dict[str, list[float]], flops_ratio: dict[str, list[float]]
) -> Image.Image:
    """Measured speedup per method (solid) against the theoretical FLOPs speedup (dashed, same colour).

    Args:
        keep_ratios: `(r,)` fractions of visual tokens kept.
        measured: method → `r` measured speedups (unpruned time / pruned time).
        flops_ratio: method → `r` theoretical speedups (unpruned FLOPs / pruned FLOPs); methods may be missing.
    """
    ratios = _vector(keep_ratios, "keep_ratios")
    if not measured:
        raise ValueError("measured must name at least one method")
    unknown = set(flops_ratio) - set(measured)
    if unknown:
        raise ValueError(f"flops_ratio names methods with no measurement: {sorted(unknown)}")
    figure, axes = _figure()
    for method, speedups in measured.items():
        speedups = _vector(speedups, f"measured[{method!r}]", allow_nan=True)
        if speedups.shape != ratios.shape:
            raise ValueError(f"measured[{method!r}] has shape {speedups.shape}, keep_ratios {ratios.shape}")
        (line,) = axes.plot(ratios, speedups, marker="o", markersize=3, label=f"{method} measured")
        if method in flops_ratio:
            ideal = _vector(flops_ratio[method], f"flops_ratio[{method!r}]", allow_nan=True)
            if ideal.shape != ratios.shape:
                raise ValueError(f"flops_ratio[{method!r}] has shape {ideal.shape}, keep_ratios {ratios.shape}")
            axes.plot(ratios, ideal, linestyle="--", color=line.get_color(), label=f"{method} FLOPs")
    axes.axhline(1.0, color="grey", linewidth=0.8)
    axes.invert_xaxis()
    axes.set_xlabel("keep ratio (fraction of visual tokens kept)")
    axes.set_ylabel("speedup ×")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    return _render(figure)


def _figure(dpi: int = DPI, note: str = ""):
    figure = Figure(figsize=FIGSIZE, dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    if note:
        figure.suptitle(_shorten(note, 90), x=0.01, ha="left", color="firebrick", fontsize=9.5, fontweight="bold")
    return figure, figure.add_subplot()


def _title(axes, text: str) -> None:
    """Left-aligned, so a viewer's buttons in the top-right corner of the picture never cover it."""
    axes.set_title(_shorten(text, 62), fontsize=10, loc="left")


def _render(figure: Figure) -> Image.Image:
    figure.canvas.draw()
    return Image.fromarray(np.asarray(figure.canvas.buffer_rgba())).convert("RGB")


def _vector(values, name: str, allow_nan: bool = False) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {values.shape}")
    if not allow_nan and not np.isfinite(values).all():
        raise ValueError(f"{name} must be finite")
    return values


def _finite(values, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise ValueError(f"{name} has no finite values to plot")
    return finite


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
