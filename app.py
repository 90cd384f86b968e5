"""G-Prune Explorer: see how G-Prune, FastV, ToMe and two baselines prune LLaVA-NeXT's visual tokens.

    python app.py [--model auto|shapes|tiny|HUB_ID|LOCAL_DIR] (or GPRUNE_MODEL=...; port from GRADIO_SERVER_PORT / PORT)
    python app.py --bundles-only [--model NAME]              (or GPRUNE_BUNDLES_ONLY=1: precomputed examples, no model)
                  [--runs DIR]                              (or GPRUNE_RUNS=DIR: evaluation runs for the Failures tab;
                                                             the shapes model defaults to its shipped assets/runs/)

Precomputed examples (`python -m gprune precompute`) are read from assets/precomputed/ (assets/precomputed/shapes/
for the shapes model) or GPRUNE_BUNDLES; a Run
whose image, question and settings match one of the model's bundles is served from it, with no model call.

Session limits from the environment: GPRUNE_SESSION_TTL_S (seconds a session's results are kept after a
run, default 7200), GPRUNE_MAX_SESSIONS (sessions holding results at once, default 64) and
GPRUNE_SESSION_MEMORY_MB (the memory all sessions' results may take, default 4096); upload quotas
GPRUNE_UPLOAD_MB_PER_CLIENT (per client address, default 400) and GPRUNE_UPLOAD_MB_TOTAL (default 4096), over 2 h.

This file only wires the UI to `gprune` (the model and the methods) and `app_views` (pure rendering). What a
client sends is checked by `app_inputs` (values) and `app_guard` (requests); files are written by `app_files`
into the private folders of `app_folders`. The model is loaded once at import and only read afterwards;
everything a user computes is kept for that browser session by `app_sessions` (keyed by Gradio's session id,
bounded by age, count and bytes). One model call per Run (and per sweep);
stepping, inspecting, comparing and exporting afterwards are CPU-only redraws of stored results.
"""

from __future__ import annotations

from app_folders import private_folders

DOWNLOADS = private_folders()  # first: Gradio (which `spaces` imports) reads its folder's location at import
FAILURE_IMAGES = DOWNLOADS / "failures"  # the Failures tab's copies of run images (private, served by Gradio)
FAILURE_IMAGES.mkdir(mode=0o700)

# Hugging Face ZeroGPU: one GPU lease per `@spaces.GPU` call. It must be imported before torch; outside
# ZeroGPU `spaces.GPU` returns the function unchanged.
import spaces  # noqa: E402

import argparse
import functools
import json
import math
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
from PIL import Image
from starlette.middleware import Middleware

import app_failures
import app_views as views
import viz
import zerogpu
from app_bundles import Bundles
from app_files import SessionFiles, write_gradio_cache_atomically
from app_guard import GuardedBlocks, RequestGuard, UploadQuota
from app_inputs import (MAX_QUESTION_CHARS, UNUSABLE, ImageUpload, MethodChoice, Setting, Upload, pixel_coordinates,
                        read_question)
from app_sessions import EVICTED, SessionStore
from gprune import (METHOD_LABELS, METHODS, Analysis, AnalysisConfig, analyze, answer_stability, encode, load_model,
                    token_layout)
from gprune.bundle import model_family
from gprune.loading import SHAPES, resolve_model_name
from gprune.images import MODEL_MAX_SIDE, fit_image, load_image


def env_setting(name: str, default, kind=float, minimum=1, environ=os.environ):
    """`kind(environ[name])` if set (e.g. GPRUNE_SESSION_TTL_S=600), else `default`; must be finite and >= minimum."""
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a {'whole ' if kind is int else ''}number >= {minimum:g}, got {text!r}")
    return value


MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 40_000_000  # checked from the header, before any decoding ...
MAX_DECODED_BYTES = 120_000_000  # ... as is the memory the decoded pixels take (30 megapixels of colour)
# Every decode (a Run, an example click) takes this: one image in memory at a time, whichever queue it came by.
DECODING = threading.BoundedSemaphore(1)
try:
    # A session's results are dropped this long after the Run (or sweep) that stored them ...
    SESSION_TTL_S = env_setting("GPRUNE_SESSION_TTL_S", 2 * 3600, float, minimum=1)
    # ... or when more than this many sessions hold results, or they take more than this much memory (the
    # least recently used are dropped). Requests that store nothing never count.
    MAX_SESSIONS = env_setting("GPRUNE_MAX_SESSIONS", 64, int, minimum=1)
    SESSION_MEMORY_MB = env_setting("GPRUNE_SESSION_MEMORY_MB", 4096, float, minimum=1)
    # Upload quotas over the 2 hours Gradio may keep an upload (it deletes them hourly once an hour old).
    UPLOAD_MB_PER_CLIENT = env_setting("GPRUNE_UPLOAD_MB_PER_CLIENT", 400, float, minimum=1)
    UPLOAD_MB_TOTAL = env_setting("GPRUNE_UPLOAD_MB_TOTAL", 4096, float, minimum=1)
except ValueError as error:
    sys.exit(f"error: {error}")
SESSIONS = SessionStore(SESSION_TTL_S, MAX_SESSIONS, int(SESSION_MEMORY_MB * 2**20))
SESSIONS.purge_every(min(60.0, SESSION_TTL_S / 4))
UPLOAD_QUOTA = UploadQuota(int(UPLOAD_MB_PER_CLIENT * 2**20), int(UPLOAD_MB_TOTAL * 2**20), window_s=2 * 3600)
# Gradio's own per-session entries (UI values only: the play flag, a run's slider range) are made for every
# session id it sees; they hold no results, so its cap only bounds their memory.
GRADIO_SESSION_CAPACITY = 500  # ~80 kB each (bench/session_memory.py)
ASSETS = Path(__file__).resolve().parent / "assets"
SHIPPED_RUNS = ASSETS / "runs"  # evaluation runs of the `shapes` model
DEFAULT_QUESTION = "What is in the image?"
STEP_CONCURRENCY = 8
# Runs and sweeps waiting for the model (one per session); per client address configurable, since visitors
# behind one proxy share an address.
MAX_QUEUED_RUNS = 16
MAX_QUEUED_RUNS_PER_CLIENT = env_setting("GPRUNE_QUEUED_RUNS_PER_CLIENT", 3, int, minimum=1)
MAX_UI_ITERATIONS = 20
TIMING_ROUNDS = 3  # "Measure timings": one warm-up, then this many timed rounds of every method


def startup_options(argv: list[str], environ=os.environ) -> argparse.Namespace:
    """`--model` (else `GPRUNE_MODEL`, else `auto`: 7B on CUDA, the offline trained `shapes` otherwise) and `--bundles-only`
    (else `GPRUNE_BUNDLES_ONLY=1`): serve the model's precomputed examples without loading it."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--model", default=None)
    parser.add_argument("--bundles-only", action="store_true")
    args, _ = parser.parse_known_args(argv)
    args.model = args.model or environ.get("GPRUNE_MODEL") or "auto"
    args.bundles_only = args.bundles_only or environ.get("GPRUNE_BUNDLES_ONLY", "").strip() == "1"
    return args


OPTIONS = startup_options(sys.argv[1:] if __name__ == "__main__" else [])
try:
    LOADED = None if OPTIONS.bundles_only else load_model(OPTIONS.model)
    MODEL_NAME = LOADED.name if LOADED else resolve_model_name(OPTIONS.model)
    # The shipped `shapes` model brings its own precomputed examples and evaluation runs (the Failures tab).
    RUNS_DIR = app_failures.runs_folder(sys.argv[1:] if __name__ == "__main__" else []) or (
        SHIPPED_RUNS if MODEL_NAME == SHAPES and SHIPPED_RUNS.is_dir() else None)
except ValueError as error:
    sys.exit(f"error: {error}")
BUNDLES = Bundles(Path(os.environ.get("GPRUNE_BUNDLES") or ASSETS / "precomputed" / ("shapes" if MODEL_NAME == SHAPES else "")),
                  model_family(MODEL_NAME),
                  layers=LOADED.model.config.text_config.num_hidden_layers if LOADED else None,
                  random_weights=LOADED.random_weights if LOADED else None)
if LOADED is None and not len(BUNDLES):
    sys.exit(f"error: --bundles-only, but there are no precomputed examples of {MODEL_NAME!r} to serve; make them "
             f"with `python -m gprune precompute --model {MODEL_NAME}` (or start without --bundles-only)")
NUM_LAYERS = LOADED.model.config.text_config.num_hidden_layers if LOADED else BUNDLES.layers()
DEFAULT_FASTV_LAYER = min(2, NUM_LAYERS - 1)
GPU_COST = zerogpu.CostModel(LOADED) if LOADED else None
RANDOM_WEIGHTS = LOADED.random_weights if LOADED else next(iter(BUNDLES.by_key.values())).meta["model"]["random_weights"]
SHAPES_MODEL = MODEL_NAME == SHAPES
BUNDLES_ONLY = ("This server shows precomputed examples only (no model is loaded): click one of the examples and "
                "keep the default settings, or run the app with a model for other images and settings.")
try:
    if LOADED is None:
        raise ValueError("not available: this server runs without a model")
    LLAVA_SYSTEM_TEXT, NO_LLAVA_SYSTEM = LOADED.system_text("llava"), None
except ValueError as reason:  # e.g. Mistral: trained without one
    LLAVA_SYSTEM_TEXT, NO_LLAVA_SYSTEM = None, str(reason)


# ------------------------------------------------------------------------------------------ GPU calls


def reporter(progress: gr.Progress):
    return lambda fraction, message: progress(fraction, desc=message)


# ZeroGPU calls each duration function with the decorated function's arguments and reserves that many seconds.
def run_model_seconds(image, question: str, config: AnalysisConfig, progress: gr.Progress) -> int:
    return GPU_COST.analysis_seconds(image, config)


# The gr.Progress object itself is passed in (not a wrapper): ZeroGPU relays it from its GPU worker.
@spaces.GPU(duration=run_model_seconds)
def run_model(image, question: str, config: AnalysisConfig, progress: gr.Progress) -> Analysis:
    """The only place Run touches the model; returns CPU data only."""
    return analyze(LOADED, image, question, config, progress=reporter(progress))


def run_sweep_seconds(image, question: str, answer_token_ids: list[int], keep_ratios: list[float],
                      config: AnalysisConfig, progress: gr.Progress) -> int:
    return GPU_COST.sweep_seconds(image, len(answer_token_ids), len(keep_ratios), config)


@spaces.GPU(duration=run_sweep_seconds)
def run_sweep(image, question: str, answer_token_ids: list[int], keep_ratios: list[float], config: AnalysisConfig,
              progress: gr.Progress) -> dict:
    """log p(reference answer) per method and keep ratio; returns plain lists."""
    encoded = encode(LOADED, image, question, system_prompt=config.system_prompt)
    curves = answer_stability(LOADED, encoded, answer_token_ids, keep_ratios, config, progress=reporter(progress))
    return {method: [float(v) for v in values] for method, values in curves.items()}


# ----------------------------------------------------------------------------------------- input checks


def read_image(upload: Upload | None) -> Image.Image:
    """The uploaded image as the model will see it: decoded, checked, downscaled to `MODEL_MAX_SIDE`."""
    if upload is None:
        raise gr.Error("Upload an image (or click one of the examples) first.")
    with DECODING:
        try:
            image = load_image(upload.data, max_pixels=MAX_PIXELS, max_bytes=MAX_DECODED_BYTES)
        except ValueError as error:
            raise gr.Error(f"{UNUSABLE}{error}.") from None
        fitted, (width, height) = fit_image(image, MODEL_MAX_SIDE), image.size
        del image  # only the downscaled copy leaves the bounded section
    if LOADED is None:  # only precomputed examples are served: no grid to check
        return fitted
    # Checked here, before the model, to quote the size of the upload rather than of its downscaled copy.
    vision = LOADED.model.config.vision_config
    grid = token_layout((fitted.height, fitted.width), LOADED.model.config.image_grid_pinpoints, vision.image_size,
                        vision.patch_size)
    if grid.rows == 0 or grid.cols == 0:
        raise gr.Error(f"{UNUSABLE}a {width}×{height} image is too thin: its high-resolution grid has no "
                       "cells; crop or pad it to an aspect ratio of at most about 1:100.")
    return fitted


def _whole(value):
    return int(value) if isinstance(value, float) and value.is_integer() else value


def make_config(keep_ratio, threshold, temperature, iterations, fastv_layer, methods, max_new_tokens,
                system_prompt="template", timing_rounds=0) -> AnalysisConfig:
    if isinstance(methods, str):
        methods = [methods]
    methods = list(methods or [])
    ordered = tuple(m for m in METHODS if m in methods) if set(methods) <= set(METHODS) else tuple(methods)
    try:
        config = AnalysisConfig(
            methods=ordered, keep_ratio=keep_ratio, iterations=_whole(iterations), threshold=threshold,
            temperature=temperature, fastv_layer=_whole(fastv_layer), max_new_tokens=_whole(max_new_tokens),
            system_prompt=system_prompt, timing_rounds=timing_rounds,
        )
        return config.validate(NUM_LAYERS)
    except (ValueError, TypeError) as error:
        raise gr.Error(f"Invalid setting: {error}.") from None


def duration_text(seconds: float) -> str:
    for unit, size in (("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= size or unit == "second":
            value = round(seconds / size, 1)
            return f"{value:g} {unit}{'' if value == 1 else 's'}"


def session_id(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None)


def stored_session(request: gr.Request | None) -> StoredSession | None:
    """This session's stored results, or None (no Run yet, or dropped)."""
    return SESSIONS.get(session_id(request))


def need_session(request: gr.Request | None) -> StoredSession:
    """The session's stored analysis, or a gr.Error saying whether none was run yet or why its results went."""
    session = stored_session(request)
    if session is not None:
        return session
    kept = (f"results are kept for {duration_text(SESSION_TTL_S)} after a run, for at most {MAX_SESSIONS} "
            f"sessions and {SESSION_MEMORY_MB:,.0f} MB at once")
    reason = SESSIONS.dropped(session_id(request))
    if reason == EVICTED:
        raise gr.Error(f"This session's results were dropped to make room for newer sessions' ({kept}). Press Run again.")
    if reason is not None:
        raise gr.Error(f"This session expired: its results were dropped ({kept}). Press Run again.")
    raise gr.Error(f"Run an analysis first: upload an image, type a question, press Run ({kept}).")


def shown(function):
    """Re-raise `ValueError` from gprune / app_views as a `gr.Error` the user can read."""
    @functools.wraps(function)
    def wrapped(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except gr.Error:
            raise
        except ValueError as error:
            raise gr.Error(str(error)) from None
    return wrapped


@dataclass
class StoredSession(views.Session):
    """What the app keeps for a session: its results, and its downloads on disk, which go with them."""

    files: SessionFiles = field(default_factory=lambda: SessionFiles(DOWNLOADS))


# ------------------------------------------------------------------------------------------- handlers


def read_flag(value, label: str) -> bool:
    if not isinstance(value, bool):
        raise gr.Error(f"{label} must be true or false; got {value!r}.")
    return value


def read_run(image, question, keep_ratio, threshold, temperature, iterations, fastv_layer, methods, max_new_tokens,
             view, system_prompt, measure_timings):
    """The checked inputs of a Run: `(picture, question, config, view)`."""
    picture = read_image(image)
    question = read_question(question)
    rounds = TIMING_ROUNDS if read_flag(measure_timings, "Measure timings") else 0
    config = make_config(keep_ratio, threshold, temperature, iterations, fastv_layer, methods, max_new_tokens,
                         system_prompt, rounds)
    return picture, question, config, shown(views.check_view)(view)


def precomputed_analysis(image: Upload, picture: Image.Image, question: str, config: AnalysisConfig):
    """`(analysis, its stored sweep)` from the bundle matching this Run, or `(None, None)`."""
    bundle = BUNDLES.find(image.data, question, config)
    if bundle is None:
        return None, None
    try:
        analysis = BUNDLES.analysis(bundle, picture, config)
    except ValueError as error:  # e.g. decoded at another size by another version of the code: not served
        print(f"precomputed examples: {bundle.path.name} not served: {error}", file=sys.stderr)
        return None, None
    stored = bundle.meta["stability"]  # a copy per session, with the curves of the methods asked for
    stability = stored and {"keep_ratios": list(stored["keep_ratios"]),
                            "curves": {m: list(stored["curves"][m]) for m in ("unpruned", *config.methods)}}
    return analysis, stability


def analysis_outputs(analysis: Analysis, stability, image: Upload, view: str, request) -> tuple:
    """Keep `analysis` as this session's results and draw what a Run shows first."""
    session = StoredSession(**vars(views.new_session(analysis, image_name=image.name)))
    session.stability = stability
    try:
        SESSIONS.put(session_id(request), session)
    except ValueError as error:
        raise gr.Error(str(error)) from None
    heatmap, mask = (None, None)
    if "gprune" in analysis.results:
        heatmap, mask, _ = views.iteration_pictures(session, view, analysis.config.iterations)
    return (heatmap, mask, views.method_pictures(session, view), views.comparison_html(analysis),
            analysis.summary())


def analyze_image(image, question, keep_ratio=0.5, threshold=0.5, temperature=0.03, iterations=5,
                  fastv_layer=DEFAULT_FASTV_LAYER, methods=METHODS, max_new_tokens=32, view="grid",
                  system_prompt="template", measure_timings=False, progress=gr.Progress(), request: gr.Request = None):
    """Run the unpruned model and every chosen method once (or open the matching precomputed example); keep the
    results in this session."""
    picture, question, config, view = read_run(image, question, keep_ratio, threshold, temperature, iterations,
                                               fastv_layer, methods, max_new_tokens, view, system_prompt,
                                               measure_timings)
    analysis, stability = precomputed_analysis(image, picture, question, config)
    if analysis is None:
        if LOADED is None:
            raise gr.Error(BUNDLES_ONLY)
        try:
            analysis = run_model(picture, question, config, progress)
        except gr.Error:
            raise
        except ValueError as error:
            raise gr.Error(str(error)) from None
    return analysis_outputs(analysis, stability, image, view, request)


def open_example(image, question, keep_ratio, threshold, temperature, iterations, fastv_layer, methods,
                 max_new_tokens, view, system_prompt, measure_timings, request: gr.Request = None):
    """An example was clicked: show its precomputed result at once if one matches the settings; otherwise the
    example only fills the inputs (the model runs on Run, in the GPU queue, never here)."""
    picture, question, config, view = read_run(image, question, keep_ratio, threshold, temperature, iterations,
                                               fastv_layer, methods, max_new_tokens, view, system_prompt,
                                               measure_timings)
    analysis, stability = precomputed_analysis(image, picture, question, config)
    if analysis is None:  # stops the chain quietly: the inputs are filled, the user presses Run
        raise gr.Error("No precomputed result for these settings: press Run.", visible=False, print_exception=False)
    return analysis_outputs(analysis, stability, image, view, request)


@shown
def after_analyze(view, colour_mode, request: gr.Request = None):
    """Sync every view-dependent control after a run (UI only)."""
    session = need_session(request)
    views.set_display(session, colour_mode=colour_mode)
    analysis = session.analysis
    iterations = views.iteration_count(analysis)
    has_gprune = "gprune" in analysis.results
    choices = [(METHOD_LABELS[m], m) for m in ("unpruned", *analysis.results)]
    ran = list(analysis.results)
    a = "gprune" if has_gprune else ran[0]
    b = next((m for m in ("fastv", *ran) if m != a and m in ran), "unpruned")
    difference, counts = views.difference_picture(session, a, b, view)
    heatmap, caption = (views.heatmap_picture(session, view, iterations),
                        views.iteration_caption(session, view, iterations)) if has_gprune else (None, "G-Prune was not run.")
    return (
        gr.Slider(minimum=0, maximum=iterations, value=iterations, step=1, interactive=has_gprune),
        heatmap, caption, *iteration_legends(session, view, iterations),
        gr.Dropdown(choices=choices, value=a), gr.Dropdown(choices=choices, value=b), difference, counts,
        *learn_pictures(session, view, iterations),
        session.canvas.image, gr.Image(None, visible=False), INSPECT_PROMPT, status_text(analysis),
        views.ratio_notice(session), gr.File(visible=False),
    )


def status_text(analysis: Analysis) -> str:
    layout = analysis.layout
    origin = f" **Shown at once: {analysis.origin}** (no model call)." if analysis.origin else ""
    return (f"Analysed a {layout.image_width}×{layout.image_height} image: {layout.n_tokens:,} visual tokens "
            f"(576 base + {layout.rows}×{layout.cols} grid + {layout.rows} newlines); keep ratio "
            f"{analysis.config.keep_ratio:g} on model `{analysis.model_name}`.{origin}")


def iteration_legends(session: views.Session, view: str, iteration: int) -> tuple[str, str]:
    """HTML colour bar of the heatmap and legend of the mask (empty without G-Prune)."""
    if "gprune" not in session.analysis.results:
        return "", ""
    return (viz.legend_html(views.heatmap_legend(session, view, iteration)),
            viz.legend_html(views.mask_legend(iteration)))


def learn_pictures(session: views.Session, view: str, iteration: int):
    analysis = session.analysis
    similarity = views.similarity_picture(analysis, view)
    score = views.score_picture(session, view, iteration) if "gprune" in analysis.results else None
    return similarity, score, views.graph_facts(analysis, view)


@shown
def step(view="grid", iteration=0, request: gr.Request = None):
    """Redraw G-Prune's heatmap and kept mask after `iteration` iterations (stored scores, no model call)."""
    return views.iteration_pictures(need_session(request), view, iteration)


@shown
def step_details(view, iteration, request: gr.Request = None):
    """The legends and the Learn tab's score histogram for the iteration on display (UI only)."""
    session = need_session(request)
    if "gprune" not in session.analysis.results:
        return "", "", None
    return (*iteration_legends(session, view, iteration), views.score_picture(session, view, iteration))


@shown
def change_view(view, iteration, method_a, method_b, request: gr.Request = None):
    """Redraw everything for the other view (UI only)."""
    session = need_session(request)
    analysis = session.analysis
    if "gprune" in analysis.results:
        heatmap, mask, caption = views.iteration_pictures(session, view, iteration)
    else:
        heatmap, mask, caption = None, None, "G-Prune was not run."
    difference, counts = views.difference_picture(session, method_a, method_b, view)
    return (heatmap, mask, caption, *iteration_legends(session, view, iteration), views.method_pictures(session, view),
            difference, counts, *learn_pictures(session, view, iteration))


@shown
def change_colour(view, iteration, colour_mode, request: gr.Request = None):
    """Recolour the heatmap: rank, log or linear (UI only; no session yet: nothing to redraw)."""
    session = stored_session(request)
    if session is None:
        return gr.skip(), gr.skip()
    views.set_display(session, colour_mode=colour_mode)
    if "gprune" not in session.analysis.results:
        return None, ""
    return views.heatmap_picture(session, view, iteration), iteration_legends(session, view, iteration)[0]


@shown
def change_keep_ratio(view, iteration, keep_ratio, method_a, method_b, request: gr.Request = None):
    """Redraw every mask at another keep ratio from the stored scores: no model call (UI only).

    Before any run there is nothing to redraw and the slider only sets the next run's ratio."""
    session = stored_session(request)
    if session is None:
        return tuple(gr.skip() for _ in range(9))
    views.set_display(session, keep_ratio=keep_ratio)
    has_gprune = "gprune" in session.analysis.results
    mask = views.mask_picture(session, view, iteration) if has_gprune else None
    caption = views.iteration_caption(session, view, iteration) if has_gprune else "G-Prune was not run."
    difference, counts = views.difference_picture(session, method_a, method_b, view)
    score = views.score_picture(session, view, iteration) if has_gprune else None
    return (mask, caption, *iteration_legends(session, view, iteration), views.method_pictures(session, view),
            difference, counts, score, views.ratio_notice(session))


@shown
def difference(method_a="gprune", method_b="fastv", view="grid", request: gr.Request = None):
    """Tokens kept by method A but not B (orange), by B but not A (blue)."""
    return views.difference_picture(need_session(request), method_a, method_b, view)


@shown
def inspect(view="grid", x=0.0, y=0.0, request: gr.Request = None):
    """The token under pixel (x, y) of the analysed image: score trace, graph edges, who kept it."""
    session = need_session(request)
    x, y = pixel_coordinates(x, y)
    found = views.inspect_token(session, view, x, y)
    return found.highlight, found.trace, found.markdown


@shown
def inspect_click(view, evt: gr.SelectData, request: gr.Request = None):
    """A click on a picture (display pixels) → the same as `inspect` at the original-image pixel."""
    sx, sy = need_session(request).canvas.scale
    x, y = round(evt.index[0] / sx, 1), round(evt.index[1] / sy, 1)
    return (x, y, *inspect(view, x, y, request))


def toggle_play(playing, iteration, request: gr.Request = None):
    """▶ starts stepping the iteration slider once per tick (from 0 if it is at the end); ⏸ stops it."""
    session = stored_session(request)
    if session is None or "gprune" not in session.analysis.results:
        raise gr.Error("Run an analysis with G-Prune first: the play button steps through its iterations.")
    if playing:
        return False, gr.Timer(active=False), gr.Button(PLAY_LABEL), gr.skip()
    start = 0 if iteration >= views.iteration_count(session.analysis) else gr.skip()
    return True, gr.Timer(active=True), gr.Button(PAUSE_LABEL), start


def play_tick(iteration, request: gr.Request = None):
    """One animation step; at the last iteration the animation stops."""
    session = stored_session(request)
    last = views.iteration_count(session.analysis) if session is not None else 0
    if iteration >= last:
        return False, gr.Timer(active=False), gr.Button(PLAY_LABEL), gr.skip()
    following = iteration + 1
    stop = following >= last
    return (not stop, gr.Timer(active=not stop), gr.Button(PLAY_LABEL if stop else PAUSE_LABEL), following)


@shown
def iterations_gif(view="grid", request: gr.Request = None):
    """Animated GIF of G-Prune's heatmap and kept mask over the iterations (made once per run and display)."""
    session, view = need_session(request), views.check_view(view)
    return session.files.built(f"gif-{view}", views.gif_name(session, view), lambda: views.iterations_gif(session, view))


@shown
def export(request: gr.Request = None):
    """ZIP with slide-ready figures, the scores and kept indices, the answers and the exact configuration (made
    once per run and colour mode; a sweep adds to it)."""
    session = need_session(request)
    return session.files.built("zip", views.export_name(session, ".zip"), lambda: views.export_zip(session))


def reveal():
    """Show a component that stays hidden until it has something to show (UI only; API results stay plain)."""
    return gr.update(visible=True)


def parse_ratios(text) -> list[float]:
    try:
        ratios = [float(part) for part in str(text).replace(";", ",").split(",") if part.strip()]
    except ValueError:
        raise gr.Error(f"Keep ratios must be comma-separated numbers in (0, 1], e.g. 1, 0.5, 0.25; got {text!r}.") from None
    if not 1 <= len(ratios) <= 12 or not all(0 < r <= 1 for r in ratios):
        raise gr.Error(f"Give 1 to 12 keep ratios in (0, 1], e.g. 1, 0.5, 0.25; got {text!r}.")
    return ratios


def sweep(keep_ratios=", ".join(f"{r:g}" for r in views.STABILITY_RATIOS), progress=gr.Progress(),
          request: gr.Request = None):
    """log p(unpruned answer | pruned prompt) for each method over keep ratios (one prefill each)."""
    session = need_session(request)
    ratios = parse_ratios(keep_ratios)
    analysis = session.analysis
    if session.stability is not None and session.stability["keep_ratios"] == ratios:  # already computed (or precomputed)
        return views.stability_picture(session.stability, analysis), session.stability
    if not analysis.reference.answer_token_ids:
        raise gr.Error("The unpruned answer is empty, so there is nothing to score; ask another question.")
    if LOADED is None:
        raise gr.Error(f"{BUNDLES_ONLY} The precomputed sweep uses keep ratios "
                       f"{', '.join(f'{r:g}' for r in views.STABILITY_RATIOS)}.")
    try:
        curves = run_sweep(analysis.image, analysis.question, list(analysis.reference.answer_token_ids), ratios,
                           analysis.config, progress)
    except gr.Error:
        raise
    except ValueError as error:
        raise gr.Error(str(error)) from None
    session.stability = {"keep_ratios": ratios, "curves": curves}
    SESSIONS.renew(session_id(request), session)
    session.files.discard(views.export_name(session, ".zip"))  # the next export includes the sweep
    return views.stability_picture(session.stability, analysis), session.stability


# ---------------------------------------------------------------------------------------------- texts

BANNER_RANDOM = (
    "⚠️ **Toy model: this server runs the offline `tiny` LLaVA-NeXT with random weights** (no GPU or no checkpoint "
    "available). Its answers, scores and timings are a toy's; the pruning mechanics, token layout and budgets are "
    "real, and FLOPs are computed at LLaVA-NeXT-7B shapes. Figures and tables say so too. Start it with "
    "`--model llava-hf/llava-v1.6-mistral-7b-hf` (or `GPRUNE_MODEL`) on a GPU for real answers."
)

BANNER_RANDOM_PRECOMPUTED = (
    "⚠️ **Toy model: these precomputed results come from the offline `tiny` LLaVA-NeXT with random weights.** "
    "Their answers, scores and timings are a toy's; the pruning mechanics, token layout and budgets are real, and "
    "FLOPs are computed at LLaVA-NeXT-7B shapes."
)

BANNER_SHAPES = (
    "ℹ️ **Small model: this server runs `shapes`, a LLaVA-NeXT of the real architecture (CLIP-336/14, anyres grid) "
    "trained here from scratch on synthetic shapes** (easy-VQA and generated scenes). It really answers questions "
    "about such images (colour, shape, how many, left or right, the printed digit); on photos its answers mean "
    "nothing. Its timings are a small model's on a CPU; FLOPs are computed at LLaVA-NeXT-7B shapes."
)

INTRO = """# G-Prune Explorer
Training-free visual-token pruning for LLaVA-NeXT, made visible. LLaVA-NeXT turns one image into ~2,000–2,900
visual tokens: a **base view** (the whole image squashed to 336×336 → 24×24 = 576 tokens) and a
**high-resolution grid** (336-pixel tiles, rows × cols tokens, one learned *newline* token after each row).
Pruning drops most of them before (or inside) the language model. Upload an image, ask a question, press **Run**."""

ITERATIONS_TEXT = """**What the graph is.** G-Prune builds two graphs *before* the language model, one over the 576
base tokens and one over the grid tokens (newline tokens are never pruned and never drawn). Nodes are the
post-projector visual tokens; an edge joins two tokens whose cosine similarity is **≥ the threshold s**
(self-loops included). Each token's edge weights are a **softmax of similarity / temperature τ over its own
edges**, so they sum to 1.

**What an iteration does.** Every token starts with mass = the L2 norm of its feature. In each iteration every
token passes its mass on to its neighbours in proportion to the edge weights; **mass is conserved** (the
total never changes), it only flows towards tokens that many similar tokens point at.

**The score** after t iterations is **mass ÷ degree** (degree = number of edges), so hubs in large uniform
regions (sky, walls, table tops), which collect mass from many look-alikes, don't win everything. G-Prune
keeps the top ⌊ρ·576⌋ base and top ⌊ρ·rows·cols⌋ grid tokens by the final score, plus every newline. The
slider shows what it would keep if it stopped after t iterations (t = 0: norm ÷ degree); ▶ plays them.

**Reading the pictures.** The heatmap's default colour is the **rank** of each token's score within the view
(scores span several decades, so a linear scale would paint almost everything one colour); the ▲ on its colour
bar is the keep cut. In the mask, **yellow** tokens entered the kept set at this iteration and **magenta**
ones left it. **Click a cell** of either picture: the token, its graph edges (line width ∝ weight) and its
score against the keep cut appear below."""

COMPARE_TEXT = """**Same budget for everyone:** G-Prune's split, ⌊ρ·576⌋ base + ⌊ρ·rows·cols⌋ grid tokens + all
newline tokens. **FastV and ToMe are run at that split — a deviation from their papers, for fairness**
(FastV prunes a share of all image tokens at once; ToMe merges inside the vision transformer).

- **G-Prune** — graph propagation over the visual features, *before* the LLM; it never sees the question.
- **FastV** — prunes *inside* the LLM: layers 0…K−1 process every token; at layer K−1 it takes the
  **attention row of the last prompt token, averaged over heads**, ranks the image tokens by it and layers
  K… see only the kept ones. It needs the LLM's attention (so it depends on the question and pays K full
  layers); G-Prune needs none.
- **ToMe** — merges post-projector features in repeated bipartite soft-matching rounds (alternate tokens
  form sets A and B; each A token's most similar B token; the most similar pairs are averaged, weighted by
  size) until the budget is met; a merged token sits at its representative's position. **Coloured regions
  are merge groups**; uncoloured cells were not merged.
- **L2-norm** keeps the largest feature norms (G-Prune's starting mass, no graph); **Random** is a seeded draw.

**FLOPs** are the theoretical prefill FLOPs of the language model relative to the unpruned run (per layer
4nd² + 2n²d + 2ndm; FastV pays K unpruned layers); for a random-weight toy model they are computed at
LLaVA-NeXT-7B's shapes. **Timings** are shown only when measured (“Measure timings”): the median and spread of
3 rounds after a warm-up. Click an answer to unfold it as a word diff against the unpruned answer:
<del style="background:#fdd;color:#900">removed</del>, <ins style="background:#dfd;color:#060;text-decoration:none">added</ins>.
Moving the keep-ratio slider redraws these pictures at once from the stored scores (ToMe re-merges the
stored features); answers, FLOPs and timings stay those of the ratio that was run."""

INSPECT_PROMPT = ("**Inspect a token:** click a cell of the heatmap, the mask or the picture beside this text. Its "
                  "graph edges appear on the picture (line width ∝ weight) and its score against the keep cut here.")

SWEEP_TEXT = """How robust is each method? For every keep ratio this scores the **unpruned model's answer**
under the pruned prompt: log p(answer | pruned prompt), one prefill per method and ratio (no generation).
Flat lines near the unpruned value mean the pruned model would still give the same answer. This is a second
model call (slow on big models)."""

LEARN_TEXT = """**Similarity distribution** — cosine similarities of 50,000 random pairs of this view's
post-projector tokens; the dashed line is the edge threshold s, so the share right of it is the graph's
density. **Score distribution** — G-Prune's scores at the selected iteration with the top-k cut: everything
right of the line is kept.

**Why FastV needs the LLM and G-Prune does not.** FastV ranks tokens by how much attention the last prompt
token pays them at layer K−1, so it must run K layers of the language model on every token first (and its
choice depends on the question). G-Prune ranks tokens by where similarity mass accumulates in a graph of the
visual features alone: it runs before the LLM, costs no LLM layer, and is question-agnostic."""

EXPORT_TEXT = """One ZIP named after the image, keep ratio and date with **slide-ready figures** (PNG, 1,144–1,280 px wide,
title, legend and — for the toy model — its warning in the picture; iteration GIFs), `summary.json` and
`tokens.npz` (scores, kept indices, degrees, ToMe groups, token layout; the CLI's format), `answers.json`,
`config.json`, the exact input image and the `python -m gprune …` command that reproduces the run. Figures
are drawn at the keep ratio that was run."""

PLAY_LABEL, PAUSE_LABEL = "▶ Play", "⏸ Pause"
PLAY_SECONDS = 0.9


def example_rows() -> list[list[str]]:
    """Bundled examples (file + question): for the `shapes` model the easy-VQA and generated-scene images of
    `assets/examples-shapes.json` first, then the photos of `assets/examples.json`; if neither is readable,
    every image in assets/."""
    listings = (["examples-shapes.json"] if MODEL_NAME == SHAPES else []) + ["examples.json"]
    rows = []
    for listing in (ASSETS / name for name in listings):
        try:
            entries = json.loads(listing.read_text(encoding="utf-8"))
            rows += [[str(ASSETS / e["file"]), e.get("question", DEFAULT_QUESTION)] for e in entries
                     if (ASSETS / e["file"]).is_file()]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if rows:
        return rows
    files = sorted(p for p in ASSETS.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    return [[str(p), DEFAULT_QUESTION] for p in files]


# ------------------------------------------------------------------------------------------------- UI

CSS = """
/* Comparison table: a scrollable card on wide screens, one stacked card per method on phones. */
.gprune-table-wrap { overflow-x: auto; max-width: 100%; }
.gprune-compare { border-collapse: collapse; width: 100%; font-size: 0.9em; }
.gprune-compare td, .gprune-compare th { border: 1px solid #8884; padding: 4px 6px; vertical-align: top; text-align: left; }
.gprune-compare th { hyphens: none; word-break: normal; overflow-wrap: normal; }
.gprune-answer-cell { min-width: 16em; overflow-wrap: anywhere; }
.gprune-answer-fold summary { cursor: pointer; }
.gprune-answer-fold[open] summary { color: #888; }
.gprune-diffcount { color: #888; white-space: nowrap; }
.gprune-same { color: #888; }
.gprune-notes { font-size: 0.85em; margin-bottom: 6px; }
.gprune-toy { color: #b22222; }
/* Legends under the pictures. */
.gprune-legend { font-size: 0.85em; line-height: 1.5; padding: 2px 2px 1.6em 2px; }
.gprune-legend .legend-title { display: block; font-weight: 600; }
.gprune-legend .legend-bar-row { display: flex; align-items: center; gap: 6px; }
.gprune-legend .legend-bar { position: relative; flex: 1; height: 14px; border: 1px solid #8886; }
.gprune-legend .legend-cut { position: absolute; top: -4px; bottom: -4px; width: 3px; margin-left: -1.5px;
  background: #111; box-shadow: 0 0 0 1px #fff; }
.gprune-legend .legend-cut-label { position: absolute; top: 17px; white-space: nowrap; font-size: 0.95em; }
.gprune-legend .legend-item { display: inline-flex; align-items: center; gap: 4px; margin-right: 12px; }
.gprune-legend .legend-swatch { display: inline-block; width: 14px; height: 14px; flex: none; }
.figure-title p { font-weight: 600; margin: 0; }
#compare-gallery .grid-wrap { max-height: none; }
#compare-gallery .caption-label { display: none; }  /* each picture carries its title */
#compare-gallery .thumbnail-item { aspect-ratio: auto; }  /* full width, not a square thumbnail */
#compare-gallery .thumbnail-lg > img { height: auto; }
#inspect-panel { border: 1px solid #8884; border-radius: 8px; padding: 6px; }
/* Presentation mode (toggle or ?presentation=1): no explanations or settings, larger text and figures. */
body.presentation .explain, body.presentation #intro, body.presentation #settings-accordion { display: none !important; }
body.presentation .gradio-container { zoom: 1.2; }
body.presentation #controls { flex-grow: 0 !important; min-width: 240px !important; max-width: 280px; }
body.presentation .gprune-legend, body.presentation .gprune-compare { font-size: 1em; }
@media (max-width: 1100px) { #compare-gallery .grid-container { grid-template-columns: 1fr 1fr !important; } }
@media (max-width: 640px) {
  .gprune-compare thead { display: none; }
  .gprune-compare, .gprune-compare tbody, .gprune-compare tr, .gprune-compare td { display: block; width: auto; }
  .gprune-compare tr { border: 1px solid #8886; border-radius: 6px; margin-bottom: 8px; padding: 4px; }
  .gprune-compare td { border: none; padding: 2px 4px; min-width: 0; }
  .gprune-compare td::before { content: attr(data-label) ": "; font-weight: 600; }
  #compare-gallery .grid-container { grid-template-columns: 1fr !important; }
  .tab-wrapper .tab-container button { padding-left: 5px; padding-right: 5px; font-size: 0.85em; }  /* all tabs fit: no "⋯" */
}
"""

# Runs in the browser: scroll an element into view unless it already is (`start`: to the top of the screen,
# for the results after Run; `nearest`: as little as needed, so the clicked heatmap stays in sight).
SCROLL_TO = """() => {{
  const element = document.querySelector('{selector}');
  if (!element) return;
  const box = element.getBoundingClientRect();
  const seen = box.top >= 0 && ('{block}' === 'nearest' ? box.bottom <= window.innerHeight : box.top < window.innerHeight * 0.35);
  if (!seen) element.scrollIntoView({{behavior: 'smooth', block: '{block}'}});
}}"""
SCROLL_TO_RESULTS = SCROLL_TO.format(selector="#results", block="start")
SCROLL_TO_INSPECT = SCROLL_TO.format(selector="#inspect-panel", block="nearest")
TOGGLE_PRESENTATION = "(on) => { document.body.classList.toggle('presentation', on); }"
PRESENTATION_FROM_URL = "() => new URLSearchParams(window.location.search).get('presentation') === '1'"


def figure(picture_id: str, title: str, **options) -> tuple[gr.Image, gr.HTML]:
    """A clickable picture with its title above and its HTML legend below (no floating label over it)."""
    gr.Markdown(title, elem_classes=["figure-title"])
    picture = gr.Image(show_label=False, interactive=False, elem_id=picture_id, format="jpeg",
                       buttons=["download", "fullscreen"], **options)
    return picture, gr.HTML(elem_id=f"{picture_id}-legend")


def build_demo() -> gr.Blocks:
    method_choices = [(METHOD_LABELS[m], m) for m in METHODS]
    with GuardedBlocks(title="G-Prune Explorer", delete_cache=(3600, 3600)) as demo:
        playing = gr.State(False)
        gr.Markdown(INTRO, elem_id="intro")
        if RANDOM_WEIGHTS:
            gr.Markdown(BANNER_RANDOM if LOADED else BANNER_RANDOM_PRECOMPUTED, elem_id="random-weights-banner")
        elif SHAPES_MODEL:
            gr.Markdown(BANNER_SHAPES, elem_id="shapes-model-banner")
        elif LOADED is not None:
            gr.Markdown(f"Model: `{LOADED.name}` on {LOADED.device} in {str(LOADED.dtype).removeprefix('torch.')}.")
        if LOADED is None:
            gr.Markdown(f"ℹ️ **Precomputed examples only**: no model is loaded on this server; the {len(BUNDLES)} "
                        f"examples below show results computed on `{MODEL_NAME}`.", elem_id="bundles-only-banner")
        with gr.Row():
            with gr.Column(scale=1, min_width=300, elem_id="controls"):
                image = ImageUpload(label="Image", show_label=False, type="filepath", image_mode=None,
                                    sources=["upload", "clipboard"], elem_id="input-image", height=260)
                question = gr.Textbox(label="Question", value=DEFAULT_QUESTION, max_length=MAX_QUESTION_CHARS, lines=2,
                                      render=False)
                examples = example_rows()
                example_list = None
                if examples:  # right under the image, as thumbnails: above the fold on a laptop
                    label = ("Examples: click one; with the default settings its precomputed result opens at once"
                             if len(BUNDLES) else "Examples: click one (it sets the question too), then Run")
                    example_list = gr.Examples(examples, inputs=[image, question], visible_columns=[0], label=label,
                                               elem_id="examples")
                question.render()
                keep_ratio = Setting(0.01, 1.0, value=0.5, step=0.01, label="Keep ratio ρ", elem_id="keep-ratio",
                                     info="fraction of base and of grid tokens kept (newlines always kept); after a "
                                          "Run, moving it redraws the masks at once")
                methods = MethodChoice(method_choices, value=list(METHODS), label="Methods")
                measure_timings = gr.Checkbox(False, label=f"Measure timings (1 warm-up + {TIMING_ROUNDS} rounds per "
                                                           "method; slower)", elem_id="measure-timings")
                with gr.Accordion("G-Prune, FastV and generation settings", open=False, elem_id="settings-accordion"):
                    threshold = Setting(-1.0, 1.0, value=0.5, step=0.01, label="G-Prune threshold s",
                                        info="edge if cosine similarity ≥ s")
                    temperature = Setting(0.001, 1.0, value=0.03, step=0.001, label="G-Prune temperature τ",
                                          info="softmax(similarity / τ) over each token's edges")
                    iterations = Setting(0, MAX_UI_ITERATIONS, value=5, step=1, label="G-Prune iterations I")
                    fastv_layer = Setting(1, NUM_LAYERS - 1, value=DEFAULT_FASTV_LAYER, step=1, label="FastV layer K",
                                          info=f"prune after layer K−1 (this model has {NUM_LAYERS} layers)")
                    max_new_tokens = Setting(1, 128, value=32, step=1, label="Max new tokens")
                    system_prompt = gr.Radio(
                        [("The checkpoint's chat template", "template"), ("LLaVA's training system prompt first", "llava")],
                        value="template", label="System prompt", interactive=NO_LLAVA_SYSTEM is None,
                        info=f"LLaVA's: “{LLAVA_SYSTEM_TEXT}”" if NO_LLAVA_SYSTEM is None else NO_LLAVA_SYSTEM,
                    )
                run = gr.Button("Run", variant="primary", elem_id="run-button")
                presentation = gr.Checkbox(False, label="Presentation mode (bigger, no explanations; or ?presentation=1)",
                                           elem_id="presentation-toggle")
            with gr.Column(scale=2, elem_id="results"):
                status = gr.Markdown("No analysis yet.", elem_id="status")
                notice = gr.Markdown(elem_id="ratio-notice")
                with gr.Row():
                    view = gr.Radio([("High-resolution grid", "grid"), ("Base view (24×24)", "base")], value="grid",
                                    label="View (newline tokens are never drawn)", min_width=200)
                    colour_mode = gr.Radio([("Rank", "rank"), ("Log", "log"), ("Linear", "linear")], value="rank",
                                           label="Heatmap colour", elem_id="colour-mode", min_width=200)
                with gr.Tabs():
                    with gr.Tab("Iterations"):
                        with gr.Row():
                            # Maximum = the largest I the form allows, so API clients can step any run; a run narrows it.
                            iteration = Setting(0, MAX_UI_ITERATIONS, value=5, step=1, label="Iteration t",
                                                interactive=False, elem_id="iteration-slider", scale=4)
                            play = gr.Button(PLAY_LABEL, elem_id="play-button", scale=0, min_width=110)
                        timer = gr.Timer(PLAY_SECONDS, active=False)
                        with gr.Row():
                            with gr.Column(min_width=280):
                                heatmap, heatmap_legend = figure("heatmap", "G-Prune score after iteration t")
                            with gr.Column(min_width=280):
                                mask, mask_legend = figure("mask", "Kept / dropped after iteration t")
                        caption = gr.Markdown(elem_id="iteration-caption")
                        with gr.Row(elem_id="inspect-panel"):
                            with gr.Column(min_width=240):
                                highlight = gr.Image(show_label=False, interactive=False, elem_id="highlight",
                                                     format="jpeg", buttons=["download", "fullscreen"])
                            with gr.Column(min_width=240):
                                token_info = gr.Markdown(INSPECT_PROMPT, elem_id="token-info")
                            with gr.Column(min_width=240):
                                trace = gr.Image(show_label=False, interactive=False, elem_id="trace", visible=False,
                                                 buttons=["download", "fullscreen"])
                                with gr.Accordion("Inspect by pixel coordinates", open=False):
                                    with gr.Row():
                                        x = gr.Number(label="x (pixels of the analysed image)", value=0, min_width=120)
                                        y = gr.Number(label="y (pixels)", value=0, min_width=120)
                                    inspect_button = gr.Button("Inspect", size="sm")
                        with gr.Row():
                            gif_button = gr.Button("Make GIF of all iterations", size="sm")
                            gif_file = gr.File(label="Iterations GIF", visible=False, elem_id="gif-file")
                        gr.Markdown(ITERATIONS_TEXT, elem_classes=["explain"])
                    with gr.Tab("Compare"):
                        gallery = gr.Gallery(show_label=False, columns=3, format="jpeg", height="auto",
                                             buttons=["download", "fullscreen"],  # no "download all" over a title
                                             object_fit="contain", elem_id="compare-gallery")
                        gr.HTML(viz.legend_html(views.gallery_legend()))
                        answers = gr.HTML(elem_id="answers")
                        with gr.Row():
                            pair_choices = [(METHOD_LABELS["unpruned"], "unpruned"), *method_choices]
                            method_a = gr.Dropdown(pair_choices, value="gprune", label="Kept by A (orange)…")
                            method_b = gr.Dropdown(pair_choices, value="fastv", label="…but not by B (blue)")
                        difference_image = gr.Image(show_label=False, interactive=False, format="jpeg",
                                                    elem_id="difference", buttons=["download", "fullscreen"])
                        difference_counts = gr.Markdown()
                        gr.Markdown(COMPARE_TEXT, elem_classes=["explain"])
                    with gr.Tab("Sweep"):
                        gr.Markdown(SWEEP_TEXT, elem_classes=["explain"])
                        ratios = gr.Textbox(", ".join(f"{r:g}" for r in views.STABILITY_RATIOS), label="Keep ratios")
                        sweep_button = gr.Button("Run sweep")
                        stability_plot = gr.Image(show_label=False, interactive=False, elem_id="stability-plot",
                                                  buttons=["download", "fullscreen"])
                        with gr.Accordion("The numbers (JSON)", open=False):
                            stability_json = gr.JSON(label="log p(unpruned answer) per method and keep ratio")
                    with gr.Tab("Learn"):
                        facts = gr.Markdown()
                        with gr.Row():
                            similarity_plot = gr.Image(show_label=False, interactive=False, elem_id="similarity-plot",
                                                       buttons=["download", "fullscreen"], min_width=280)
                            score_plot = gr.Image(show_label=False, interactive=False, elem_id="score-plot",
                                                  buttons=["download", "fullscreen"], min_width=280)
                        gr.Markdown(LEARN_TEXT, elem_classes=["explain"])
                    with gr.Tab("Export"):
                        gr.Markdown(EXPORT_TEXT, elem_classes=["explain"])
                        export_button = gr.Button("Build ZIP")
                        export_file = gr.File(label="Export", visible=False, elem_id="export-file")
                    with gr.Tab("JSON"):
                        summary = gr.JSON(label="Analysis summary")
                    app_failures.build_failures_tab(demo, RUNS_DIR, app_failures.ExplorerInputs(
                        image, question, keep_ratio, methods, threshold, temperature, iterations, fastv_layer,
                        max_new_tokens), MODEL_NAME, FAILURE_IMAGES)

        gpu_queue = dict(concurrency_limit=1, concurrency_id="gpu")
        cpu_queue = dict(concurrency_limit=STEP_CONCURRENCY)
        redraw = dict(trigger_mode="always_last", show_progress="hidden", **cpu_queue)
        legends = [heatmap_legend, mask_legend]
        run_inputs = [image, question, keep_ratio, threshold, temperature, iterations, fastv_layer, methods,
                      max_new_tokens, view, system_prompt, measure_timings]
        run_outputs = [heatmap, mask, gallery, answers, summary]
        synced = [iteration, heatmap, caption, *legends, method_a, method_b, difference_image, difference_counts,
                  similarity_plot, score_plot, facts, highlight, trace, token_info, status, notice, gif_file]
        run.click(analyze_image, run_inputs, run_outputs, api_name="analyze", **gpu_queue).success(
            after_analyze, [view, colour_mode], synced, api_visibility="private", **cpu_queue,
        ).then(None, js=SCROLL_TO_RESULTS)
        if example_list is not None and len(BUNDLES):
            # A precomputed example needs neither the model nor the GPU queue: it opens on the click.
            example_list.load_input_event.then(open_example, run_inputs, run_outputs, api_visibility="private",
                                               **cpu_queue).success(
                after_analyze, [view, colour_mode], synced, api_visibility="private", **cpu_queue,
            ).then(None, js=SCROLL_TO_RESULTS)
        # Two listeners, each "always_last" (never two at once, the latest value last), so the legends can never
        # be left showing an older iteration than the pictures, as a chained event finishing late could.
        iteration.change(step, [view, iteration], [heatmap, mask, caption], api_name="step", **redraw)
        iteration.change(step_details, [view, iteration], [*legends, score_plot], api_visibility="private",
                         **redraw)
        play.click(toggle_play, [playing, iteration], [playing, timer, play, iteration], api_visibility="private")
        timer.tick(play_tick, [iteration], [playing, timer, play, iteration], api_visibility="private",
                   show_progress="hidden")
        keep_ratio.input(change_keep_ratio, [view, iteration, keep_ratio, method_a, method_b],
                         [mask, caption, *legends, gallery, difference_image, difference_counts, score_plot, notice],
                         api_visibility="private", **redraw)
        colour_mode.input(change_colour, [view, iteration, colour_mode], [heatmap, heatmap_legend],
                          api_visibility="private", **redraw)
        view.input(change_view, [view, iteration, method_a, method_b],
                   [heatmap, mask, caption, *legends, gallery, difference_image, difference_counts, similarity_plot,
                    score_plot, facts], api_visibility="private", **cpu_queue)
        gr.on([method_a.input, method_b.input], difference, [method_a, method_b, view],
              [difference_image, difference_counts], api_name="difference", **cpu_queue)
        for picture in (heatmap, mask, highlight):
            picture.select(inspect_click, [view], [x, y, highlight, trace, token_info],
                           api_visibility="private", **cpu_queue
                           ).success(reveal, None, trace, api_visibility="private", queue=False
                                     ).success(None, js=SCROLL_TO_INSPECT)
        inspect_button.click(inspect, [view, x, y], [highlight, trace, token_info], api_name="inspect", **cpu_queue
                             ).success(reveal, None, trace, api_visibility="private", queue=False)
        gif_button.click(iterations_gif, [view], gif_file, api_name="gif", **cpu_queue
                         ).success(reveal, None, gif_file, api_visibility="private", queue=False)
        export_button.click(export, None, export_file, api_name="export", **cpu_queue
                            ).success(reveal, None, export_file, api_visibility="private", queue=False)
        sweep_button.click(sweep, [ratios], [stability_plot, stability_json], api_name="sweep", **gpu_queue)
        presentation.change(None, presentation, js=TOGGLE_PRESENTATION)
        demo.load(None, None, presentation, js=PRESENTATION_FROM_URL)
    return demo


def server_port() -> int | None:
    """`GRADIO_SERVER_PORT`, else `PORT` (hosting platforms), else Gradio's default (7860 or the next free one)."""
    value = os.environ.get("GRADIO_SERVER_PORT") or os.environ.get("PORT")
    return int(value) if value else None


write_gradio_cache_atomically()
demo = build_demo()
demo.queue(default_concurrency_limit=STEP_CONCURRENCY)

if __name__ == "__main__":
    demo.launch(server_port=server_port(), max_file_size=MAX_UPLOAD_BYTES, state_session_capacity=GRADIO_SESSION_CAPACITY, css=CSS,
                footer_links=["api", "gradio"],
                app_kwargs={"middleware": [Middleware(RequestGuard, blocks=demo, max_upload_bytes=MAX_UPLOAD_BYTES, upload_quota=UPLOAD_QUOTA,
                                                       max_queued_runs=MAX_QUEUED_RUNS,
                                                       max_queued_runs_per_client=MAX_QUEUED_RUNS_PER_CLIENT)]})
