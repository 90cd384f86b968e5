"""Pure rendering glue for the Gradio app: an `Analysis` + a view choice → numpy pictures, HTML, ZIP bytes.

Nothing here imports Gradio or runs the model, so every picture the app shows can be unit-tested without a
server. The drawing itself lives in `viz`; the pruning facts come from `gprune`. The expensive per-analysis
work (the display-size image and one pixel→token map per view) is done once in `prepare_canvas`; redrawing
an iteration afterwards is a few vectorised array passes.
"""

from __future__ import annotations

import html
import io
import json
import shlex
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import viz
from gprune import KIND_BASE, KIND_GRID, METHOD_LABELS, Analysis, keep_top_per_view
from gprune.__main__ import save as save_analysis
from gprune.images import fit_image

DISPLAY_MAX_SIDE = 768
VIEWS = ("grid", "base")
VIEW_KINDS = {"base": KIND_BASE, "grid": KIND_GRID}
VIEW_NAMES = {"base": "base view (24×24 over the whole image)", "grid": "high-resolution grid"}
SIMILARITY_PAIRS = 50_000
HEATMAP_PERCENTILES = (2.0, 98.0)
STABILITY_RATIOS = (1.0, 0.75, 0.5, 0.25, 0.11, 0.05)


@dataclass(frozen=True)
class Canvas:
    """The display-size picture of an analysed image and one pixel → token map per view.

    Attributes:
        image: `(H, W, 3)` uint8, the analysed image shrunk to at most `DISPLAY_MAX_SIDE` pixels.
        scale: `(sx, sy)` display pixels per original pixel.
        maps: view name → `(H, W)` int32 token positions (-1 = no token; newline tokens never appear).
    """

    image: np.ndarray
    scale: tuple[float, float]
    maps: dict[str, np.ndarray]


@dataclass
class Session:
    """Everything one browser session keeps between clicks (held in `gr.State`, never in a global)."""

    analysis: Analysis
    canvas: Canvas
    stability: dict | None = None  # {"keep_ratios": [...], "curves": {method: [...]}} after a sweep
    kept_cache: dict[int, np.ndarray] = field(default_factory=dict)


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


def new_session(analysis: Analysis) -> Session:
    return Session(analysis, prepare_canvas(analysis))


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


def kept_at(session: Session, iteration: int) -> np.ndarray:
    """`(n,)` bool: the tokens G-Prune would keep if it stopped after `iteration` iterations."""
    analysis = session.analysis
    iteration = check_iteration(analysis, iteration)
    if iteration not in session.kept_cache:
        scores = gprune_result(analysis).selection.scores
        layout = analysis.layout
        kept = keep_top_per_view(torch.from_numpy(scores[iteration]), layout.rows, layout.cols,
                                 analysis.config.keep_ratio, layout.base_tokens)
        mask = np.zeros(layout.n_tokens, dtype=bool)
        mask[kept.numpy()] = True
        session.kept_cache[iteration] = mask
    return session.kept_cache[iteration]


def method_kept(analysis: Analysis, method: str) -> np.ndarray:
    if method == "unpruned":
        return np.ones(analysis.layout.n_tokens, dtype=bool)
    if method not in analysis.results:
        ran = ", ".join(analysis.results)
        raise ValueError(f"{method!r} was not run in this analysis (ran: {ran}); pick one of those")
    return analysis.results[method].selection.kept_mask(analysis.layout.n_tokens)


def _percent(value: float) -> str:
    return f"{value:.1%}"


# -------------------------------------------------------------------------------------------- iteration


def iteration_pictures(session: Session, view: str, iteration: int) -> tuple[np.ndarray, np.ndarray, str]:
    """G-Prune's score heatmap and kept/dropped mask after `iteration` iterations, from stored scores.

    Returns `(heatmap, mask, caption)`; the pictures have the canvas size, so clicks map to tokens.
    """
    analysis, canvas = session.analysis, session.canvas
    iteration = check_iteration(analysis, iteration)
    index_map = canvas.maps[check_view(view)]
    scores = gprune_result(analysis).selection.scores[iteration]
    shown = scores[view_positions(analysis, view)]
    low, high = np.nanpercentile(shown, HEATMAP_PERCENTILES)
    heatmap = viz.heatmap_overlay(canvas.image, index_map, scores, vmin=float(low), vmax=max(float(high), float(low)))
    kept = kept_at(session, iteration)
    mask = viz.mask_overlay(canvas.image, index_map, kept)
    positions = view_positions(analysis, view)
    caption = (
        f"**Iteration {iteration} of {iteration_count(analysis)}** · {VIEW_NAMES[view]}: "
        f"kept {int(kept[positions].sum()):,} of {len(positions):,} tokens. "
        f"Colour = score (mass ÷ degree), {HEATMAP_PERCENTILES[0]:g}–{HEATMAP_PERCENTILES[1]:g}th percentile "
        "of this view; bright = important."
    )
    return heatmap, mask, caption


def iterations_gif(session: Session, view: str, duration_ms: int = 700) -> bytes:
    """Animated GIF, one frame per iteration: heatmap | kept mask, side by side, labelled."""
    frames = []
    for t in range(iteration_count(session.analysis) + 1):
        heatmap, mask, _ = iteration_pictures(session, view, t)
        frames.append(np.hstack([viz.draw_label(heatmap, f"G-Prune scores, iteration {t}"),
                                 viz.draw_label(mask, f"kept after iteration {t}")]))
    return viz.gif_bytes(frames, duration_ms=duration_ms)


# ----------------------------------------------------------------------------------------------- compare


def method_picture(session: Session, method: str, view: str) -> np.ndarray:
    """One method's decision on the image: kept mask, or merge groups for ToMe; labelled with its counts."""
    analysis, canvas = session.analysis, session.canvas
    index_map = canvas.maps[check_view(view)]
    positions = view_positions(analysis, view)
    if method == "unpruned":
        return viz.draw_label(canvas.image, f"Unpruned: {len(positions)} {view} tokens")
    result = analysis.results.get(method)
    if result is None:
        raise ValueError(f"{method!r} was not run in this analysis")
    selection = result.selection
    n = analysis.layout.n_tokens
    if selection.groups is not None:
        picture = viz.groups_overlay(canvas.image, index_map, selection.group_of(n))
    else:
        picture = viz.mask_overlay(canvas.image, index_map, selection.kept_mask(n))
    kept_count = int(selection.kept_mask(n)[positions].sum())
    label = (f"{METHOD_LABELS[method]}: {kept_count}/{len(positions)} {view} tokens | "
             f"FLOPs {_percent(result.flops_ratio)} | prefill {result.prefill_seconds * 1e3:.0f} ms")
    return viz.draw_label(picture, label)


def method_pictures(session: Session, view: str) -> list[tuple[np.ndarray, str]]:
    """`[(picture, caption)]` for every method of the run, in run order."""
    out = []
    for method, result in session.analysis.results.items():
        merged = " (colours = merge groups)" if result.selection.groups is not None else ""
        answer = result.answer if len(result.answer) <= 80 else result.answer[:79] + "…"
        out.append((method_picture(session, method, view), f"{METHOD_LABELS[method]}{merged}: “{answer}”"))
    return out


def comparison_html(analysis: Analysis) -> str:
    """Table of every method at the shared budget: tokens, FLOPs, timings and the answer as a word diff."""
    reference = analysis.reference
    rows = [
        "<tr>"
        f"<td><b>{METHOD_LABELS['unpruned']}</b></td>"
        f"<td>{reference.tokens_after:,}/{reference.tokens_before:,}</td>"
        f"<td>100%</td><td>–</td><td>{reference.prefill_seconds * 1e3:.0f}</td>"
        f"<td>{html.escape(reference.answer)}</td>"
        "</tr>"
    ]
    for method, result in analysis.results.items():
        rows.append(
            "<tr>"
            f"<td><b>{METHOD_LABELS[method]}</b></td>"
            f"<td>{result.tokens_after:,}/{result.tokens_before:,}</td>"
            f"<td>{_percent(result.flops_ratio)}</td>"
            f"<td>{result.selection.seconds * 1e3:.1f}</td>"
            f"<td>{result.prefill_seconds * 1e3:.0f}</td>"
            f"<td>{viz.word_diff_html(reference.answer, result.answer)}</td>"
            "</tr>"
        )
    header = ("<tr><th>method</th><th>visual tokens kept</th><th>prefill FLOPs (vs unpruned)</th>"
              "<th>selection ms</th><th>prefill ms</th><th>answer (diff vs unpruned)</th></tr>")
    return (
        f'<div class="gprune-answer"><b>Unpruned answer:</b> {html.escape(reference.answer)}</div>'
        f'<table class="gprune-compare">{header}{"".join(rows)}</table>'
    )


def difference_picture(session: Session, method_a: str, method_b: str, view: str) -> tuple[np.ndarray, str]:
    """Tokens kept by A only (orange), by B only (blue), by both (as is), by neither (dimmed)."""
    analysis, canvas = session.analysis, session.canvas
    kept_a, kept_b = method_kept(analysis, method_a), method_kept(analysis, method_b)
    picture, counts = viz.difference_overlay(canvas.image, canvas.maps[check_view(view)], kept_a, kept_b)
    name_a, name_b = METHOD_LABELS[method_a], METHOD_LABELS[method_b]
    text = (f"{VIEW_NAMES[view]}: <span style='color:#ff8c00'>■</span> kept by {name_a} only: **{counts['a_only']}** · "
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
    """A token's score across iterations, its strongest graph neighbours, its degree and who kept it."""
    analysis, canvas = session.analysis, session.canvas
    token = token_under(session, view, x, y)
    layout = analysis.layout
    gprune = analysis.results.get("gprune")
    selection = gprune.selection if gprune is not None else None
    row, col = (int(v) for v in layout.cell[token])
    x0, y0, x1, y1 = layout.box[token]
    lines = [
        f"**Token {token}** of the packed block · {VIEW_NAMES[view]} cell (row {row}, col {col}) · "
        f"pixels x {x0:.0f}–{x1:.0f}, y {y0:.0f}–{y1:.0f}"
    ]
    if selection is not None and selection.neighbors is not None:
        neighbors, weights = selection.neighbors[token], selection.neighbor_weights[token]
        highlight = viz.highlight_tokens(canvas.image, canvas.maps[view], token, neighbors, weights)
        scores = selection.scores[:, token]
        positions = view_positions(analysis, view)
        final = selection.scores[-1, positions]
        rank = int((final > scores[-1]).sum()) + 1
        degree = int(selection.degree[token])
        strongest = ", ".join(f"{int(p)} ({w:.3g})" for p, w in zip(neighbors, weights) if p >= 0 and w > 0)
        lines += [
            f"- **Degree** (tokens with cosine ≥ {analysis.config.threshold:g}, itself included): **{degree}** of {len(positions)}",
            f"- **Score** after {len(scores) - 1} iterations: {scores[-1]:.4g} (rank {rank} of {len(positions)} in this view; "
            f"initial ‖x‖/degree {scores[0]:.4g})",
            f"- **Strongest sources** (token: share of its mass sent here): {strongest or 'none — an isolated token'}",
        ]
        trace = viz.score_trace_plot(scores, f"token {token} ({view} r{row} c{col}): G-Prune score by iteration")
    else:
        highlight = viz.highlight_tokens(canvas.image, canvas.maps[view], token, np.array([], int), np.array([]))
        trace = viz.score_trace_plot(np.full(1, np.nan), f"token {token}: G-Prune was not run")
        lines.append("- G-Prune was not run, so there is no graph to show.")
    kept_by = []
    n = layout.n_tokens
    for method, result in analysis.results.items():
        sel = result.selection
        if sel.groups is not None:
            owner = sel.group_of(n)[token]
            representative = int(sel.kept_positions[owner])
            size = len(sel.groups[owner])
            status = ("kept (its group's representative" if representative == token else
                      f"merged into token {representative} (") + f"group of {size})"
        else:
            status = "kept" if sel.kept_mask(n)[token] else "dropped"
        kept_by.append(f"{METHOD_LABELS[method]}: {status}")
    lines.append("- " + " · ".join(kept_by))
    return TokenInspection(token, highlight, trace, "\n".join(lines))


# -------------------------------------------------------------------------------------------------- learn


def similarity_sample(features: np.ndarray, positions: np.ndarray, pairs: int = SIMILARITY_PAIRS, seed: int = 0) -> np.ndarray:
    """Cosine similarities of `pairs` random distinct token pairs among `positions` (deterministic)."""
    features = np.asarray(features, dtype=np.float32)[positions]
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    rng = np.random.default_rng(seed)
    m = len(positions)
    if m < 2:
        raise ValueError("need at least two tokens to sample pairs")
    i = rng.integers(m, size=pairs)
    j = rng.integers(m - 1, size=pairs)
    j += j >= i
    return np.einsum("kd,kd->k", unit[i], unit[j])


def similarity_picture(analysis: Analysis, view: str) -> Image.Image:
    """Histogram of the view's token-pair cosine similarities with G-Prune's edge threshold."""
    sample = similarity_sample(analysis.features, view_positions(analysis, view))
    return viz.similarity_histogram(sample, analysis.config.threshold)


def score_picture(session: Session, view: str, iteration: int) -> Image.Image:
    """Histogram of the view's G-Prune scores after `iteration` iterations with the top-k cut."""
    analysis = session.analysis
    positions = view_positions(analysis, view)
    scores = gprune_result(analysis).selection.scores[check_iteration(analysis, iteration), positions]
    kept = kept_at(session, iteration)[positions]
    cut = float(scores[kept].min()) if kept.any() else float(np.nanmax(scores))
    return viz.score_histogram(scores, cut)


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


def stability_picture(stability: dict, reference_answer: str) -> Image.Image:
    curves = {METHOD_LABELS.get(m, m): np.asarray(v) for m, v in stability["curves"].items()}
    return viz.stability_plot(np.asarray(stability["keep_ratios"]), curves, f"unpruned answer: {reference_answer!r}")


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


def _png(picture) -> bytes:
    image = picture if isinstance(picture, Image.Image) else Image.fromarray(picture)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def export_zip(session: Session) -> bytes:
    """Every figure (PNG, GIF), scores and kept indices (NPZ + JSON via the CLI's `save`), answers, config."""
    analysis = session.analysis
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with tempfile.TemporaryDirectory() as folder:
            for path in save_analysis(analysis, Path(folder)):
                archive.write(path, path.name)
        archive.writestr("input.png", _png(analysis.image))
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
        for view in VIEWS:
            if "gprune" in analysis.results:
                last = iteration_count(analysis)
                heatmap, mask, _ = iteration_pictures(session, view, last)
                archive.writestr(f"figures/{view}_gprune_scores.png", _png(viz.draw_label(heatmap, f"G-Prune scores after {last} iterations")))
                archive.writestr(f"figures/{view}_gprune_kept.png", _png(viz.draw_label(mask, "G-Prune kept")))
                archive.writestr(f"figures/{view}_iterations.gif", iterations_gif(session, view))
                archive.writestr(f"figures/{view}_score_histogram.png", _png(score_picture(session, view, last)))
            for method in analysis.results:
                archive.writestr(f"figures/{view}_{method}.png", _png(method_picture(session, method, view)))
            archive.writestr(f"figures/{view}_similarity_histogram.png", _png(similarity_picture(analysis, view)))
        if session.stability is not None:
            archive.writestr("stability.json", json.dumps(session.stability, indent=2))
            archive.writestr("figures/stability.png", _png(stability_picture(session.stability, analysis.reference.answer)))
        archive.writestr("README.txt", (
            "G-Prune Explorer export\n\n"
            "summary.json   answers, token counts, FLOPs, timings and the configuration (gprune CLI format)\n"
            "tokens.npz     per-method kept positions, scores, degrees, ToMe groups, token layout\n"
            "answers.json   every answer; config.json the exact configuration\n"
            "input.png      the exact image the model saw\nfigures/       every picture (PNG) and the iteration GIFs\n\n"
            f"Reproduce:\n  {reproduce_command(analysis)}\n"
        ))
    return buffer.getvalue()
