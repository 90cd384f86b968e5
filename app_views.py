"""Pure rendering glue for the Gradio app: an `Analysis` + display choices → numpy pictures, HTML, ZIP bytes.

Nothing here imports Gradio or runs the model, so every picture the app shows can be unit-tested without a
server. The drawing itself lives in `viz`; the pruning facts come from `gprune`. The expensive per-analysis
work (the display-size image and one pixel→token map per view) is done once in `prepare_canvas`; redrawing
an iteration or another keep ratio afterwards is a few vectorised array passes (ToMe: one re-merge).
"""

from __future__ import annotations

import dataclasses
import datetime
import html
import io
import json
import re
import shlex
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import viz
from gprune import (
    KIND_BASE, KIND_GRID, LLAVA_NEXT_7B, METHOD_LABELS, Analysis, Selection, Timing, keep_top_per_view, tome_select,
)
from gprune.__main__ import save as save_analysis
from gprune.analysis import DEFAULT_SWEEP_RATIOS
from gprune.checks import check_keep_ratio
from gprune.images import fit_image
from gprune.loading import SHAPES
from gprune.train.scenes import looks_like_flat_shapes
from gprune.stats import SIMILARITY_PAIRS, pair_similarities

DISPLAY_MAX_SIDE = 768
EXPORT_MAX_SIDE = 1280
VIEWS = ("grid", "base")
VIEW_KINDS = {"base": KIND_BASE, "grid": KIND_GRID}
VIEW_NAMES = {"base": "base view (24×24 over the whole image)", "grid": "high-resolution grid"}
VIEW_SHORT = {"base": "base view", "grid": "high-res grid"}
COLOUR_MODES = viz.COLOUR_MODES
COLOUR_MODE_NAMES = {"rank": "rank within this view", "log": "log scale", "linear": "linear, 2nd–98th percentile"}
HEATMAP_CMAP = "inferno"
STABILITY_RATIOS = DEFAULT_SWEEP_RATIOS  # what precomputed bundles store
ANSWER_PREVIEW_WORDS = 10
SOURCES_LISTED = 5
PHOTO_WARNING = ("This image is not like the flat synthetic shapes the `shapes` model was trained on: its answers "
                 "here mean nothing (the pruning itself is still real).")
KEPT_SWATCH_RGB = (190, 190, 190)
DROPPED_SWATCH_RGB = (55, 55, 55)


@dataclass(frozen=True)
class Canvas:
    """The display-size picture of an analysed image and one pixel → token map per view.

    Attributes:
        image: `(H, W, 3)` uint8, the analysed image shrunk to at most the canvas's maximum side.
        scale: `(sx, sy)` display pixels per original pixel.
        maps: view name → `(H, W)` int32 token positions (-1 = no token; newline tokens never appear).
    """

    image: np.ndarray
    scale: tuple[float, float]
    maps: dict[str, np.ndarray]


@dataclass
class Session:
    """Everything one browser session keeps between clicks (held in `gr.State`, never in a global).

    `keep_ratio` and `colour_mode` are what the pictures are drawn with: the keep ratio starts at the run's
    and follows the keep-ratio slider (a redraw from stored scores; answers stay those of the run).
    """

    analysis: Analysis
    canvas: Canvas
    image_name: str = "image"
    keep_ratio: float | None = None
    colour_mode: str = "rank"
    stability: dict | None = None  # {"keep_ratios": [...], "curves": {method: [...]}} after a sweep
    kept_cache: dict[tuple[int, float], np.ndarray] = field(default_factory=dict)
    selection_cache: dict[tuple[str, float], Selection] = field(default_factory=dict)

    def __post_init__(self):
        if self.keep_ratio is None:
            self.keep_ratio = self.analysis.config.keep_ratio


def prepare_canvas(analysis: Analysis, max_side: int = DISPLAY_MAX_SIDE) -> Canvas:
    """Shrink the image for display and rasterise each view's token boxes once."""
    display = fit_image(analysis.image, max_side)
    layout = analysis.layout
    sx, sy = display.width / layout.image_width, display.height / layout.image_height
    boxes = layout.box * np.array([sx, sy, sx, sy])
    maps = {
        view: viz.token_index_map(boxes, layout.positions(kind), display.height, display.width)
        for view, kind in VIEW_KINDS.items()
    }
    return Canvas(np.asarray(display.convert("RGB")), (sx, sy), maps)


def new_session(analysis: Analysis, image_name: str = "image") -> Session:
    """`image_name` (e.g. the upload's file name) only names the exports."""
    return Session(analysis, prepare_canvas(analysis), image_name=image_name)


# ---------------------------------------------------------------------------------------------- helpers


def check_view(view: str) -> str:
    if view not in VIEW_KINDS:
        raise ValueError(f"view must be one of {', '.join(VIEWS)}, got {view!r}")
    return view


def gprune_result(analysis: Analysis):
    result = analysis.results.get("gprune")
    if result is None:
        raise ValueError("G-Prune was not among the methods of this run; tick G-Prune and run again")
    return result


def iteration_count(analysis: Analysis) -> int:
    """Number of propagation iterations stored (the slider's maximum)."""
    return analysis.config.iterations


def check_iteration(analysis: Analysis, iteration) -> int:
    total = iteration_count(analysis)
    if isinstance(iteration, float) and iteration.is_integer():
        iteration = int(iteration)
    if isinstance(iteration, bool) or not isinstance(iteration, (int, np.integer)) or not 0 <= iteration <= total:
        raise ValueError(f"iteration must be a whole number from 0 to {total}, got {iteration!r}")
    return int(iteration)


def view_positions(analysis: Analysis, view: str) -> np.ndarray:
    return analysis.layout.positions(VIEW_KINDS[check_view(view)])


def view_mask(analysis: Analysis, view: str) -> np.ndarray:
    """`(n,)` bool: the tokens of `view`."""
    return analysis.layout.kind == VIEW_KINDS[check_view(view)]


def cell_name(analysis: Analysis, token: int) -> str:
    """`r12 c30`: a token's row and column inside its view."""
    row, col = (int(v) for v in analysis.layout.cell[token])
    return f"r{row} c{col}"


def is_toy(analysis: Analysis) -> bool:
    """A toy-size model: the random-weight `tiny` or the small `shapes` model trained here."""
    return analysis.toy_note is not None


def toy_note(analysis: Analysis) -> str:
    """The note every figure of a toy-size model carries ("" for a real checkpoint)."""
    return analysis.toy_note or ""


def photo_for_shapes_model(analysis: Analysis) -> bool:
    """The `shapes` model asked about an image unlike its flat synthetic training images (a photo, say)."""
    return analysis.model_name == SHAPES and not looks_like_flat_shapes(analysis.image)


def _percent(value: float) -> str:
    return f"{value:.1%}"


def _ratio(value: float) -> str:
    return f"{value:g}"


# ------------------------------------------------------------------------------------ keep-ratio redraw


def set_display(session: Session, keep_ratio: float | None = None, colour_mode: str | None = None) -> None:
    """Draw this session's pictures at another keep ratio and/or in another colour mode."""
    if keep_ratio is not None and check_keep_ratio(keep_ratio) != session.keep_ratio:
        # Fresh caches (assigned, never mutated while another redraw of this session may read them).
        session.keep_ratio, session.kept_cache, session.selection_cache = float(keep_ratio), {}, {}
    if colour_mode is not None:
        if colour_mode not in COLOUR_MODES:
            raise ValueError(f"colour mode must be one of {', '.join(COLOUR_MODES)}, got {colour_mode!r}")
        session.colour_mode = colour_mode


def redraw_selection(analysis: Analysis, method: str, keep_ratio: float) -> Selection:
    """What `method` keeps at `keep_ratio`, recomputed from this analysis's stored data (never the model).

    G-Prune, L2-norm, Random and FastV rank their stored scores (G-Prune's last iteration; FastV's stored
    attention row, which does not depend on the ratio, so this is exactly what FastV would keep); ToMe merges
    the stored features again.
    """
    result = analysis.results.get(method)
    if result is None:
        raise ValueError(f"{method!r} was not run in this analysis (ran: {', '.join(analysis.results)})")
    layout = analysis.layout
    if method == "tome" and analysis.features is None:  # restored from a bundle: ToMe stored at every slider ratio
        stored = analysis.precomputed.tome.get(round(keep_ratio, 2))
        if stored is None or abs(keep_ratio - round(keep_ratio, 2)) > 1e-9:
            raise ValueError(f"this precomputed example has ToMe's groups at keep ratios 0.01 … 1 in steps of 0.01, "
                             f"not {keep_ratio:g}")
        return stored
    if method == "tome":
        return tome_select(torch.from_numpy(analysis.features), layout.rows, layout.cols, keep_ratio,
                           base_tokens=layout.base_tokens)
    scores = result.selection.scores
    if scores is None:
        raise ValueError(f"{METHOD_LABELS[method]} stored no scores to redraw from")
    kept = keep_top_per_view(torch.from_numpy(scores[-1]), layout.rows, layout.cols, keep_ratio, layout.base_tokens)
    return dataclasses.replace(result.selection, kept_positions=kept.numpy(), seconds=0.0)


def selection_at(session: Session, method: str, keep_ratio: float | None = None) -> Selection:
    """`method`'s selection at `keep_ratio` (default: the session's): the run's own at the run's ratio, else a
    redraw from stored data (`redraw_selection`), cached while that ratio is on display."""
    analysis = session.analysis
    keep_ratio = session.keep_ratio if keep_ratio is None else check_keep_ratio(keep_ratio)
    if method not in analysis.results:
        raise ValueError(f"{method!r} was not run in this analysis (ran: {', '.join(analysis.results)}); "
                         "pick one of those")
    if keep_ratio == analysis.config.keep_ratio:
        return analysis.results[method].selection
    key = (method, keep_ratio)
    cache = session.selection_cache
    if key not in cache:
        cache[key] = redraw_selection(analysis, method, keep_ratio)
    return cache[key]


def method_kept(session: Session, method: str) -> np.ndarray:
    """`(n,)` bool: what `method` keeps at the session's keep ratio (`unpruned` keeps everything)."""
    n = session.analysis.layout.n_tokens
    if method == "unpruned":
        return np.ones(n, dtype=bool)
    return selection_at(session, method).kept_mask(n)


def kept_at(session: Session, iteration: int) -> np.ndarray:
    """`(n,)` bool: the tokens G-Prune would keep (at the session's ratio) if it stopped after `iteration`."""
    analysis = session.analysis
    iteration = check_iteration(analysis, iteration)
    key = (iteration, session.keep_ratio)
    cache = session.kept_cache
    if key not in cache:
        scores = gprune_result(analysis).selection.scores
        layout = analysis.layout
        kept = keep_top_per_view(torch.from_numpy(scores[iteration]), layout.rows, layout.cols,
                                 session.keep_ratio, layout.base_tokens)
        mask = np.zeros(layout.n_tokens, dtype=bool)
        mask[kept.numpy()] = True
        cache[key] = mask
    return cache[key]


def ratio_notice(session: Session) -> str:
    """Markdown: which keep ratio the pictures show, and that answers/FLOPs/timings belong to the run's."""
    run_ratio = session.analysis.config.keep_ratio
    if session.keep_ratio == run_ratio:
        return f"Masks, answers, FLOPs and timings at keep ratio **ρ = {_ratio(run_ratio)}** (the ratio that was run)."
    return (f"Masks redrawn at **ρ = {_ratio(session.keep_ratio)}** from the stored scores (no model call). "
            f"Answers, FLOPs and timings are from the run at **ρ = {_ratio(run_ratio)}**: press Run to recompute them.")


# -------------------------------------------------------------------------------------------- iteration


def score_scale(session: Session, view: str, iteration: int) -> viz.Scale:
    """G-Prune's scores after `iteration`, fitted to `view` in the session's colour mode."""
    analysis = session.analysis
    scores = gprune_result(analysis).selection.scores[check_iteration(analysis, iteration)]
    return viz.fit_scale(scores, view_mask(analysis, view), session.colour_mode)


def keep_cut(session: Session, view: str, iteration: int) -> float:
    """The lowest score G-Prune keeps in `view` after `iteration` (the top-k cut)."""
    analysis = session.analysis
    positions = view_positions(analysis, view)
    scores = gprune_result(analysis).selection.scores[iteration, positions]
    kept = kept_at(session, iteration)[positions]
    return float(scores[kept].min()) if kept.any() else float(np.nanmax(scores))


def heatmap_picture(session: Session, view: str, iteration: int) -> np.ndarray:
    analysis, canvas = session.analysis, session.canvas
    scores = gprune_result(analysis).selection.scores[check_iteration(analysis, iteration)]
    colour = score_scale(session, view, iteration).positions(scores)
    return viz.heatmap_overlay(canvas.image, canvas.maps[view], colour, vmin=0.0, vmax=1.0, cmap=HEATMAP_CMAP)


def mask_picture(session: Session, view: str, iteration: int) -> np.ndarray:
    """Kept / dropped after `iteration`; tokens that entered or left the kept set since `iteration − 1` tinted."""
    canvas = session.canvas
    previous = kept_at(session, iteration - 1) if iteration > 0 else None
    return viz.mask_overlay(canvas.image, canvas.maps[check_view(view)], kept_at(session, iteration), previous=previous)


def iteration_changes(session: Session, view: str, iteration: int) -> tuple[int, int]:
    """`(entered, left)`: tokens of `view` that joined / left the kept set since `iteration − 1`."""
    if iteration == 0:
        return 0, 0
    positions = view_positions(session.analysis, view)
    now, before = kept_at(session, iteration)[positions], kept_at(session, iteration - 1)[positions]
    return int((now & ~before).sum()), int((before & ~now).sum())


def iteration_caption(session: Session, view: str, iteration: int) -> str:
    analysis = session.analysis
    positions = view_positions(analysis, view)
    kept = int(kept_at(session, iteration)[positions].sum())
    text = (f"**Iteration {iteration} of {iteration_count(analysis)}** · {VIEW_NAMES[view]}: "
            f"kept {kept:,} of {len(positions):,} tokens at ρ = {_ratio(session.keep_ratio)}.")
    if iteration > 0:
        entered, left = iteration_changes(session, view, iteration)
        text += f" Since iteration {iteration - 1}: **{entered}** entered the kept set, **{left}** left it."
    return text


def iteration_pictures(session: Session, view: str, iteration: int) -> tuple[np.ndarray, np.ndarray, str]:
    """G-Prune's score heatmap, kept/dropped mask and caption after `iteration` (what `/step` returns).

    The pictures have the canvas size, so clicks map to tokens; their legends are `heatmap_legend` and
    `mask_legend`.
    """
    iteration = check_iteration(session.analysis, iteration)
    check_view(view)
    return (heatmap_picture(session, view, iteration), mask_picture(session, view, iteration),
            iteration_caption(session, view, iteration))


def heatmap_legend(session: Session, view: str, iteration: int) -> viz.ColourBar:
    scale = score_scale(session, view, iteration)
    kept = int(kept_at(session, iteration)[view_positions(session.analysis, view)].sum())
    return viz.ColourBar(
        f"G-Prune score after iteration {iteration} — colour: {COLOUR_MODE_NAMES[session.colour_mode]}",
        HEATMAP_CMAP, scale.low_label, scale.high_label, cut=scale.position(keep_cut(session, view, iteration)),
        cut_label=f"▲ keep cut: the top {kept:,} are kept",
    )


def mask_legend(iteration: int, title: str = "") -> viz.Swatches:
    items = [(KEPT_SWATCH_RGB, "kept (original colours, white cell borders)"),
             (DROPPED_SWATCH_RGB, "dropped (darkened, grey)")]
    if iteration > 0:
        items += [(viz.ENTERED_RGB, f"entered since iteration {iteration - 1}"),
                  (viz.LEFT_RGB, f"left since iteration {iteration - 1}")]
    return viz.Swatches(title or f"Kept by G-Prune after iteration {iteration}", tuple(items),
                        outline=viz.KEPT_OUTLINE_RGB)


def tome_legend() -> viz.Swatches:
    colour = tuple(int(c) for c in viz.group_colours(np.array([1]))[0])
    return viz.Swatches("ToMe's merge groups", ((colour, "ToMe: one colour per group of merged tokens "
                                                          "(uncoloured: not merged)"),))


def gallery_legend() -> viz.Swatches:
    """What the comparison pictures show: kept / dropped, and ToMe's groups."""
    kept = mask_legend(0, "Each method's tokens at the shared budget")
    return dataclasses.replace(kept, items=kept.items + tome_legend().items)


def iterations_gif(session: Session, view: str, duration_ms: int = 900) -> bytes:
    """Animated GIF, one frame per iteration: heatmap | kept mask side by side, titled, with both legends."""
    frames = []
    for t in range(iteration_count(session.analysis) + 1):
        heatmap, mask, _ = iteration_pictures(session, view, t)
        pair = np.hstack([heatmap, np.full((heatmap.shape[0], 8, 3), 255, np.uint8), mask])
        title = (f"G-Prune iteration {t} of {iteration_count(session.analysis)} · {VIEW_SHORT[view]} · "
                 f"ρ = {_ratio(session.keep_ratio)}: score (left), kept (right)")
        width = pair.shape[1]
        frames.append(np.vstack([viz.title_strip(title, width, note=toy_note(session.analysis)), pair,
                                 viz.legend_picture(heatmap_legend(session, view, t), width),
                                 viz.legend_picture(mask_legend(t), width)]))
    frames = _same_height(frames)
    return viz.gif_bytes(frames, duration_ms=duration_ms)


def _same_height(frames: list[np.ndarray]) -> list[np.ndarray]:
    """Pad frames at the bottom with white to the tallest (legends at t = 0 have fewer lines)."""
    height = max(f.shape[0] for f in frames)
    return [np.vstack([f, np.full((height - f.shape[0], f.shape[1], 3), 255, np.uint8)]) for f in frames]


# ----------------------------------------------------------------------------------------------- compare




def timing_text(timing: Timing | None) -> str:
    """`74 ms (70–81, 3 runs)`: the median and spread of repeated runs; `—` when not measured."""
    if timing is None:
        return "—"
    return f"{_milliseconds(timing.median)} ms ({_milliseconds(timing.low)}–{_milliseconds(timing.high)}, {timing.rounds} runs)"


def _milliseconds(seconds: float) -> str:
    value = seconds * 1e3
    return f"{value:.2g}" if value < 10 else f"{value:,.0f}"


def method_overlay(session: Session, method: str, view: str) -> np.ndarray:
    """One method's decision at the session's keep ratio: kept mask, or merge groups for ToMe."""
    canvas, n = session.canvas, session.analysis.layout.n_tokens
    index_map = canvas.maps[check_view(view)]
    selection = selection_at(session, method)
    if selection.groups is not None:
        return viz.groups_overlay(canvas.image, index_map, selection.group_of(n))
    return viz.mask_overlay(canvas.image, index_map, selection.kept_mask(n))


def method_title(session: Session, method: str, view: str) -> str:
    """`G-Prune · 576/2,304 · ρ 0.25`: the method, its kept tokens of the view and the keep ratio."""
    positions = view_positions(session.analysis, view)
    selection = selection_at(session, method)
    kept_count = int(selection.kept_mask(session.analysis.layout.n_tokens)[positions].sum())
    merged = " (colours: merge groups)" if selection.groups is not None else ""
    return f"{METHOD_LABELS[method]}{merged} · {kept_count:,}/{len(positions):,} · ρ {_ratio(session.keep_ratio)}"


def method_picture(session: Session, method: str, view: str) -> np.ndarray:
    """`method_overlay` with its title above it."""
    return viz.titled(method_overlay(session, method, view), method_title(session, method, view))


def method_pictures(session: Session, view: str) -> list[tuple[np.ndarray, str]]:
    """`[(picture, caption)]` for every method of the run, in run order (the title is in the picture)."""
    return [(method_picture(session, method, view), METHOD_LABELS[method]) for method in session.analysis.results]


def answer_html(answer: str, reference: str | None = None) -> str:
    """`answer` folded to its first words (click to unfold); against `reference`, unfolded as a word diff."""
    if reference is not None and answer.strip() == reference.strip():
        return '<span class="gprune-same">= unpruned answer</span>'
    words = answer.split()
    full = html.escape(answer) if reference is None else viz.word_diff_html(reference, answer)
    summary = html.escape(" ".join(words[:ANSWER_PREVIEW_WORDS]) + (" …" if len(words) > ANSWER_PREVIEW_WORDS else ""))
    if reference is not None:
        _, removed, added = viz.word_diff_counts(reference, answer)
        summary += f" <span class='gprune-diffcount'>(−{removed} +{added} words)</span>"
    elif len(words) <= ANSWER_PREVIEW_WORDS:
        return full
    return f"<details class='gprune-answer-fold'><summary>{summary}</summary>{full}</details>"


def comparison_html(analysis: Analysis) -> str:
    """Every method at the shared budget: tokens, FLOPs, timings (median of repeated runs) and the answer."""
    reference = analysis.reference
    run_ratio = _ratio(analysis.config.keep_ratio)
    rows = []
    for name, result in (("unpruned", reference), *analysis.results.items()):
        rows.append(
            "<tr>"
            f"<td data-label='method'><b>{METHOD_LABELS[name]}</b></td>"
            f"<td data-label='tokens kept'>{result.tokens_after:,}/{result.tokens_before:,}</td>"
            f"<td data-label='{analysis.flops_label}'>{_percent(analysis.reported_flops_ratio(result))}</td>"
            f"<td data-label='selection'>{'–' if name == 'unpruned' else timing_text(result.selection_timing)}</td>"
            f"<td data-label='prefill'>{timing_text(result.prefill_timing)}</td>"
            f"<td data-label='answer' class='gprune-answer-cell'>"
            f"{answer_html(result.answer, None if name == 'unpruned' else reference.answer)}</td>"
            "</tr>"
        )
    toy = is_toy(analysis)
    header = ("<tr><th>method</th><th>visual tokens kept</th>"
              f"<th>prefill {analysis.flops_label} (vs unpruned)</th>"
              f"<th>selection time{' (toy)' if toy else ''}</th><th>prefill time{' (toy)' if toy else ''}</th>"
              f"<th>{'toy ' if toy else ''}answer (vs unpruned)</th></tr>")
    notes = [f"Answers, FLOPs and timings at <b>ρ = {run_ratio}</b> (the ratio that was run)."]
    if toy:
        what = ("Toy model with random weights: its answers are meaningless" if analysis.random_weights else
                f"{analysis.toy_note}: its answers mean something on such images only")
        if photo_for_shapes_model(analysis):
            notes.append(f"<b class='gprune-toy'>{PHOTO_WARNING}</b>")
        notes.append(f"<b class='gprune-toy'>{what}, and its timings are of a tiny model on this server's CPU.</b> "
                     f"FLOPs are computed for "
                     f"{LLAVA_NEXT_7B.name}'s language model (d = {LLAVA_NEXT_7B.hidden}, m = {LLAVA_NEXT_7B.ffn}, "
                     f"L = {LLAVA_NEXT_7B.layers}) at these token counts; FastV pays K = {analysis.config.fastv_layer} "
                     "unpruned layers.")
    if not any(r.prefill_timing for r in (reference, *analysis.results.values())):
        notes.append("— = not measured: tick “Measure timings” and Run (1 warm-up + 3 timed rounds per method).")
    else:
        notes.append("Timings: median (fastest–slowest) of the timed rounds after one warm-up.")
    return (f'<div class="gprune-notes">{"<br>".join(notes)}</div>'
            f'<div class="gprune-table-wrap"><table class="gprune-compare"><thead>{header}</thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def difference_picture(session: Session, method_a: str, method_b: str, view: str) -> tuple[np.ndarray, str]:
    """Tokens kept by A only (orange), by B only (blue), by both (as is), by neither (dimmed)."""
    canvas = session.canvas
    kept_a, kept_b = method_kept(session, method_a), method_kept(session, method_b)
    picture, counts = viz.difference_overlay(canvas.image, canvas.maps[check_view(view)], kept_a, kept_b)
    name_a, name_b = METHOD_LABELS[method_a], METHOD_LABELS[method_b]
    text = (f"{VIEW_NAMES[view]} at ρ = {_ratio(session.keep_ratio)}: "
            f"<span style='color:#ff8c00'>■</span> kept by {name_a} only: **{counts['a_only']}** · "
            f"<span style='color:#0096ff'>■</span> kept by {name_b} only: **{counts['b_only']}** · "
            f"both: **{counts['both']}** · neither (dimmed): **{counts['neither']}**")
    return picture, text


# ------------------------------------------------------------------------------------------------ inspect


@dataclass(frozen=True)
class TokenInspection:
    token: int
    highlight: np.ndarray
    trace: Image.Image
    markdown: str


def token_under(session: Session, view: str, x: float, y: float) -> int:
    """Token position of `view` under pixel `(x, y)` of the analysed (original-size) image."""
    sx, sy = session.canvas.scale
    layout = session.analysis.layout
    if not (0 <= x <= layout.image_width and 0 <= y <= layout.image_height):
        raise ValueError(f"pixel ({x:g}, {y:g}) lies outside the {layout.image_width}×{layout.image_height} image")
    token = viz.token_at(session.canvas.maps[check_view(view)], x * sx, y * sy)
    if token < 0:
        raise ValueError(f"no {view} token covers pixel ({x:g}, {y:g}) (a sliver at the edge the model crops)")
    return token


def inspect_token(session: Session, view: str, x: float, y: float) -> TokenInspection:
    """A token's score across iterations, its graph edges on the image, its degree and who kept it."""
    analysis, canvas = session.analysis, session.canvas
    token = token_under(session, view, x, y)
    layout = analysis.layout
    x0, y0, x1, y1 = layout.box[token]
    lines = [f"**Token at {cell_name(analysis, token)}** (row, column) of the {VIEW_NAMES[view]} · "
             f"pixels x {x0:.0f}–{x1:.0f}, y {y0:.0f}–{y1:.0f} · packed position {token}"]
    gprune = analysis.results.get("gprune")
    if gprune is not None and gprune.selection.neighbors is not None:
        highlight, trace, graph_lines = _graph_facts_of(session, view, token)
        lines += graph_lines
    else:
        highlight = viz.highlight_tokens(canvas.image, canvas.maps[view], token, np.array([], int), np.array([]))
        trace = viz.score_trace_plot(np.full(1, np.nan), f"{cell_name(analysis, token)}: G-Prune was not run")
        lines.append("- G-Prune was not run, so there is no graph to show.")
    lines.append(f"- **At ρ = {_ratio(session.keep_ratio)}:** " + " · ".join(_fate(session, m, token) for m in analysis.results))
    return TokenInspection(token, highlight, trace, "\n".join(lines))


def _graph_facts_of(session: Session, view: str, token: int) -> tuple[np.ndarray, Image.Image, list[str]]:
    """The highlight (edges drawn, width ∝ weight), the score trace against the keep cut, and the text."""
    analysis, canvas = session.analysis, session.canvas
    selection = gprune_result(analysis).selection
    neighbors, weights = selection.neighbors[token], selection.neighbor_weights[token]
    shown = (neighbors >= 0) & (weights > 0)
    highlight = viz.highlight_tokens(canvas.image, canvas.maps[view], token, neighbors, weights)
    scores = selection.scores[:, token]
    positions = view_positions(analysis, view)
    last = len(scores) - 1
    rank = int((selection.scores[last, positions] > scores[last]).sum()) + 1
    kept = kept_at(session, last)
    kept_count = int(kept[positions].sum())
    cuts = np.array([keep_cut(session, view, t) for t in range(last + 1)])
    sources = ", ".join(f"{cell_name(analysis, int(p))} ({w:.2g})"
                        for p, w in list(zip(neighbors[shown], weights[shown]))[:SOURCES_LISTED])
    lines = [
        f"- **Degree** (tokens with cosine ≥ {analysis.config.threshold:g}, itself included): "
        f"**{int(selection.degree[token])}** of {len(positions)}",
        f"- **Score** after {last} iterations: {scores[-1]:.3g}, rank {rank:,} of {len(positions):,} "
        f"({'kept' if kept[token] else 'dropped'}: the top {kept_count:,} are kept at ρ = "
        f"{_ratio(session.keep_ratio)}); initial ‖x‖ ÷ degree {scores[0]:.3g}",
        f"- **Strongest sources** (cyan lines, width ∝ the share of their mass sent here; {int(shown.sum())} drawn): "
        f"{sources or 'none — an isolated token'}",
    ]
    title = f"{cell_name(analysis, token)}: G-Prune score by iteration"
    trace = viz.score_trace_plot(scores, title, cuts=cuts, note=toy_note(analysis))
    return highlight, trace, lines


def _fate(session: Session, method: str, token: int) -> str:
    """`ToMe: merged into r3 c7 (a group of 3)`: what `method` did with `token` at the session's ratio."""
    analysis = session.analysis
    selection = selection_at(session, method)
    n = analysis.layout.n_tokens
    if selection.groups is None:
        return f"{METHOD_LABELS[method]}: {'kept' if selection.kept_mask(n)[token] else 'dropped'}"
    owner = selection.group_of(n)[token]
    representative = int(selection.kept_positions[owner])
    size = len(selection.groups[owner])
    if size == 1:
        return f"{METHOD_LABELS[method]}: kept (not merged)"
    if representative == token:
        return f"{METHOD_LABELS[method]}: kept, representing a group of {size}"
    return f"{METHOD_LABELS[method]}: merged into {cell_name(analysis, representative)} (a group of {size})"


# -------------------------------------------------------------------------------------------------- learn


def similarity_picture(analysis: Analysis, view: str, dpi: int = viz.DPI) -> Image.Image:
    """Histogram of the view's token-pair cosine similarities with G-Prune's edge threshold."""
    if analysis.features is None:  # restored from a precomputed bundle: the sample the features gave
        sample = analysis.precomputed.similarity[view]
    else:
        sample = pair_similarities(analysis.features, view_positions(analysis, view))
    return viz.similarity_histogram(sample, analysis.config.threshold, dpi=dpi, note=toy_note(analysis),
                                    title=f"Cosine similarity of {SIMILARITY_PAIRS:,} random token pairs, {VIEW_SHORT[view]}")


def score_picture(session: Session, view: str, iteration: int, dpi: int = viz.DPI) -> Image.Image:
    """Histogram of the view's G-Prune scores after `iteration` iterations, kept and dropped, with the cut."""
    analysis = session.analysis
    iteration = check_iteration(analysis, iteration)
    positions = view_positions(analysis, view)
    scores = gprune_result(analysis).selection.scores[iteration, positions]
    title = f"G-Prune scores after iteration {iteration}, {VIEW_SHORT[view]}, ρ = {_ratio(session.keep_ratio)}"
    return viz.score_histogram(scores, keep_cut(session, view, iteration), title=title, dpi=dpi,
                               note=toy_note(analysis))


def graph_facts(analysis: Analysis, view: str) -> str:
    """One line about the view's graph: mean degree and how many tokens it has."""
    gprune = analysis.results.get("gprune")
    if gprune is None or gprune.selection.degree is None:
        return ""
    positions = view_positions(analysis, view)
    degree = gprune.selection.degree[positions]
    return (f"{VIEW_NAMES[view]}: {len(positions):,} nodes; mean degree {degree.mean():.1f} "
            f"(median {np.median(degree):.0f}, max {degree.max():.0f}) at threshold {analysis.config.threshold:g}.")


# -------------------------------------------------------------------------------------------------- sweep


def stability_picture(stability: dict, analysis: Analysis, dpi: int = viz.DPI) -> Image.Image:
    curves = {METHOD_LABELS.get(m, m): np.asarray(v) for m, v in stability["curves"].items()}
    answer = analysis.reference.answer
    return viz.stability_plot(np.asarray(stability["keep_ratios"]), curves, f"unpruned answer: {answer!r}",
                              note=toy_note(analysis), dpi=dpi)


# ------------------------------------------------------------------------------------------------- export


def reproduce_command(analysis: Analysis) -> str:
    """The CLI call that redoes this analysis on `input.png` (the exact pixels the model saw)."""
    c = analysis.config
    return " ".join([
        "python -m gprune input.png", shlex.quote(analysis.question), f"--model {shlex.quote(analysis.model_name)}",
        f"--methods {','.join(c.methods)}", f"--keep-ratio {c.keep_ratio:g}", f"--iterations {c.iterations}",
        f"--threshold {c.threshold:g}", f"--temperature {c.temperature:g}", f"--fastv-layer {c.fastv_layer}",
        f"--max-new-tokens {c.max_new_tokens}", f"--seed {c.seed}", f"--system-prompt {c.system_prompt}",
    ])


def file_stem(name: str) -> str:
    """`Grace Hopper (1).JPG` → `grace-hopper-1`: lower-case letters, digits and dashes, at most 40."""
    stem = re.sub(r"[^a-z0-9]+", "-", Path(name).stem.lower()).strip("-")[:40].strip("-")
    return stem or "image"


def export_name(session: Session, suffix: str, today: datetime.date | None = None) -> str:
    """`gprune-astronaut-keep0.25-2026-11-30.zip`: image, the run's keep ratio and the date (and the colour
    mode when it is not the default, since the figures depend on it)."""
    day = (today or datetime.date.today()).isoformat()
    return (f"gprune-{file_stem(session.image_name)}-keep{_ratio(session.analysis.config.keep_ratio)}-{day}"
            f"{_colour_suffix(session)}{suffix}")


def gif_name(session: Session, view: str) -> str:
    return (f"gprune-{file_stem(session.image_name)}-{view}-iterations-keep{_ratio(session.keep_ratio)}"
            f"{_colour_suffix(session)}.gif")


def _colour_suffix(session: Session) -> str:
    return "" if session.colour_mode == COLOUR_MODES[0] else f"-{session.colour_mode}"


def _png(picture) -> bytes:
    """PNG at zlib level 3: a third of level 6's CPU for files a few percent larger (the export's main cost)."""
    image = picture if isinstance(picture, Image.Image) else Image.fromarray(picture)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def slide_figures(session: Session) -> dict[str, Image.Image]:
    """Every figure of the run, slide-ready: pictures 1280 px wide, plots 1144, with title, legend and toy note.

    Drawn at the run's keep ratio (so they match the answers) on a canvas up to `EXPORT_MAX_SIDE` pixels.
    """
    analysis = session.analysis
    big = Session(analysis, prepare_canvas(analysis, EXPORT_MAX_SIDE), session.image_name,
                  colour_mode=session.colour_mode)
    note, ratio = toy_note(analysis), _ratio(analysis.config.keep_ratio)
    source = f"{file_stem(session.image_name)}, ρ = {ratio}"
    figures = {}
    for view in VIEWS:
        short = VIEW_SHORT[view]
        if "gprune" in analysis.results:
            last = iteration_count(analysis)
            heatmap, mask, _ = iteration_pictures(big, view, last)
            figures[f"{view}-gprune-iteration-{last}-scores.png"] = viz.slide(
                heatmap, f"G-Prune scores after {last} iterations · {short} · {source}",
                legends=(heatmap_legend(big, view, last),), note=note)
            figures[f"{view}-gprune-iteration-{last}-kept.png"] = viz.slide(
                mask, f"Tokens G-Prune keeps after {last} iterations · {short} · {source}", legends=(mask_legend(last),),
                note=note)
            figures[f"{view}-gprune-score-histogram.png"] = score_picture(big, view, last, dpi=viz.SLIDE_DPI)
        for method in analysis.results:
            legend = tome_legend() if method == "tome" else mask_legend(0, f"Kept by {METHOD_LABELS[method]}")
            figures[f"{view}-{method}-kept.png"] = viz.slide(
                method_overlay(big, method, view), f"{method_title(big, method, view)} · {short} · {file_stem(session.image_name)}",
                legends=(legend,), note=note)
        figures[f"{view}-similarity-histogram.png"] = similarity_picture(analysis, view, dpi=viz.SLIDE_DPI)
    if session.stability is not None:
        figures["answer-stability-sweep.png"] = stability_picture(session.stability, analysis, dpi=viz.SLIDE_DPI)
    return figures


def export_zip(session: Session) -> bytes:
    """Slide-ready figures (PNG, GIF), scores and kept indices (NPZ + JSON via the CLI's `save`), answers, config."""
    analysis = session.analysis
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with tempfile.TemporaryDirectory() as folder:
            for path in save_analysis(analysis, Path(folder)):
                archive.write(path, path.name)
        archive.writestr("input.png", _png(analysis.image), zipfile.ZIP_STORED)  # pictures are compressed already
        config = {
            "model": analysis.model_name,
            "random_weights": analysis.random_weights,
            "question": analysis.question,
            "image_size": [analysis.layout.image_width, analysis.layout.image_height],
            "config": asdict(analysis.config),
            "reproduce": reproduce_command(analysis),
        }
        archive.writestr("config.json", json.dumps(config, indent=2))
        answers = {"unpruned": analysis.reference.answer, **{m: r.answer for m, r in analysis.results.items()}}
        archive.writestr("answers.json", json.dumps(answers, indent=2, ensure_ascii=False))
        archive.writestr("comparison.html", f"<meta charset='utf-8'>{comparison_html(analysis)}")
        for name, figure in slide_figures(session).items():
            archive.writestr(f"figures/{name}", _png(figure), zipfile.ZIP_STORED)
        if "gprune" in analysis.results:
            at_run_ratio = Session(analysis, session.canvas, session.image_name, colour_mode=session.colour_mode)
            for view in VIEWS:
                archive.writestr(f"figures/{view}-gprune-iterations.gif", iterations_gif(at_run_ratio, view),
                                 zipfile.ZIP_STORED)
        if session.stability is not None:
            archive.writestr("stability.json", json.dumps(session.stability, indent=2))
        archive.writestr("README.txt", (
            "G-Prune Explorer export\n\n"
            "summary.json   answers, token counts, FLOPs, timings and the configuration (gprune CLI format)\n"
            "tokens.npz     per-method kept positions, scores, degrees, ToMe groups, token layout\n"
            "answers.json   every answer; config.json the exact configuration\n"
            "input.png      the exact image the model saw\n"
            "figures/       slide-ready PNGs (titles and legends in the picture) and the iteration GIFs,\n"
            f"               all at the keep ratio that was run (ρ = {_ratio(analysis.config.keep_ratio)})\n"
            + (f"\n{toy_note(analysis)}.\n" if is_toy(analysis) else "")
            + f"\nReproduce:\n  {reproduce_command(analysis)}\n"
        ))
    return buffer.getvalue()
