"""G-Prune Explorer: see how G-Prune, FastV, ToMe and two baselines prune LLaVA-NeXT's visual tokens.

    python app.py [--model auto|tiny|HUB_ID|LOCAL_DIR]     (or GPRUNE_MODEL=...; port from GRADIO_SERVER_PORT / PORT)
                  [--runs DIR]                            (or GPRUNE_RUNS=DIR: evaluation runs for the Failures tab)

Session limits from the environment: GPRUNE_SESSION_TTL_S (seconds a session's results are kept after a
run, default 7200) and GPRUNE_MAX_SESSIONS (sessions holding results at once, default 64).

This file only wires the UI to `gprune` (the model and the methods) and `app_views` (pure rendering). The
model is loaded once at import and only read afterwards; everything a user computes lives in that
browser session's `gr.State`. One model call per Run (and per sweep); stepping, inspecting, comparing and
exporting afterwards are CPU-only redraws of stored results.
"""

from __future__ import annotations

try:  # Hugging Face Spaces ZeroGPU (one GPU lease per decorated call); imported before torch, as it requires.
    import spaces
except ImportError:
    spaces = None

import argparse
import contextlib
import functools
import json
import math
import os
import sys
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path

import gradio as gr
from gradio import component_meta
from PIL import Image

import app_failures
import app_views as views
from gprune import METHOD_LABELS, METHODS, Analysis, AnalysisConfig, analyze, answer_stability, encode, load_model
from gprune.images import UNDECODABLE, fit_image, load_image


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


MAX_QUESTION_CHARS = 500
MAX_UPLOAD_SIZE = "20mb"
MAX_PIXELS = 40_000_000  # checked from the header, before any decoding
MODEL_MAX_SIDE = 1344  # larger uploads are downscaled before the model (LLaVA-NeXT's largest tile canvas is 1008)
try:
    # A session's results are dropped this long after the Run (or sweep) that stored them ...
    SESSION_TTL_S = env_setting("GPRUNE_SESSION_TTL_S", 2 * 3600, float, minimum=1)
    # ... or when more than this many sessions hold results (the least recently used are dropped).
    MAX_SESSIONS = env_setting("GPRUNE_MAX_SESSIONS", 64, int, minimum=1)
except ValueError as error:
    sys.exit(f"error: {error}")
REMEMBERED_SESSIONS = 10_000  # ids (only) of sessions that ran, to tell "expired" from "never ran"
GPU_SECONDS = 180
ASSETS = Path(__file__).resolve().parent / "assets"
EXPORT_DIR = Path(tempfile.gettempdir()) / "gprune-explorer"
DEFAULT_QUESTION = "What is in the image?"
STEP_CONCURRENCY = 8
MAX_UI_ITERATIONS = 20


def gpu(function):
    return spaces.GPU(duration=GPU_SECONDS)(function) if spaces is not None else function


def model_name(argv: list[str], environ=os.environ) -> str:
    """`--model` on the command line, else `GPRUNE_MODEL`, else `auto` (7B on CUDA, offline `tiny` otherwise)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--model", default=None)
    args, _ = parser.parse_known_args(argv)
    return args.model or environ.get("GPRUNE_MODEL") or "auto"


try:
    RUNS_DIR = app_failures.runs_folder(sys.argv[1:] if __name__ == "__main__" else [])
except ValueError as error:
    sys.exit(f"error: {error}")
try:
    LOADED = load_model(model_name(sys.argv[1:] if __name__ == "__main__" else []))
except ValueError as error:
    sys.exit(f"error: {error}")
NUM_LAYERS = LOADED.model.config.text_config.num_hidden_layers
DEFAULT_FASTV_LAYER = min(2, NUM_LAYERS - 1)


# ------------------------------------------------------------------------------------------ GPU calls


def reporter(progress: gr.Progress):
    return lambda fraction, message: progress(fraction, desc=message)


# The gr.Progress object itself is passed in (not a wrapper): ZeroGPU relays it from its GPU worker.
@gpu
def run_model(image, question: str, config: AnalysisConfig, progress: gr.Progress) -> Analysis:
    """The only place Run touches the model; returns CPU data only."""
    return analyze(LOADED, image, question, config, progress=reporter(progress))


@gpu
def run_sweep(image, question: str, answer_token_ids: list[int], keep_ratios: list[float], config: AnalysisConfig,
              progress: gr.Progress) -> dict:
    """log p(reference answer) per method and keep ratio; returns plain lists."""
    encoded = encode(LOADED, image, question)
    curves = answer_stability(LOADED, encoded, answer_token_ids, keep_ratios, config, progress=reporter(progress))
    return {method: [float(v) for v in values] for method, values in curves.items()}


# ----------------------------------------------------------------------------------------- input checks


@contextlib.contextmanager
def no_stub_files():
    """Gradio writes a `.pyi` stub next to the source of every Component subclass; don't litter the app folder."""
    original = getattr(component_meta, "create_or_modify_pyi", None)
    if original is not None:
        component_meta.create_or_modify_pyi = lambda *args, **kwargs: None
    try:
        yield
    finally:
        if original is not None:
            component_meta.create_or_modify_pyi = original


with no_stub_files():

    class ImageUpload(gr.Image):
        """`gr.Image` (same front end) whose uploads are decoded by `gprune.images.load_image`, not by Gradio.

        Gradio's own preprocessing opens the file with PIL and turns a corrupt upload into an unexplained
        server error; here the uploaded file's path (already checked to be in Gradio's upload folder) is
        passed on as is, and `read_image` says exactly what is wrong with it. A subclass (not a patched
        instance) so that Gradio's per-session copies of the component, e.g. after an example click, keep it.
        """

        is_template = True  # same Svelte component as gr.Image

        def preprocess(self, payload):
            if payload is not None and payload.path and not (payload.url or "").startswith("data:"):
                return payload.path
            try:
                return super().preprocess(payload)
            except gr.Error:
                raise
            except Exception:  # anything PIL raises on a bad data: URL
                raise gr.Error(f"That upload cannot be used: the data {UNDECODABLE}.") from None

    class Setting(gr.Slider):
        """`gr.Slider` that names itself when an API call sends a value it cannot take.

        Gradio's own check says "Value 0 is less than minimum value 0.01" without saying which setting, lets
        NaN through, and fails with an unexplained server error on a missing value or a string.
        """

        is_template = True  # same Svelte component as gr.Slider

        def preprocess(self, payload):
            number = payload if isinstance(payload, (int, float)) and not isinstance(payload, bool) else None
            whole = all(float(v).is_integer() for v in (self.minimum, self.step))
            if (number is None or not math.isfinite(number) or not self.minimum <= number <= self.maximum
                    or (whole and not float(number).is_integer())):
                raise gr.Error(f"{self.label} must be a {'whole ' if whole else ''}number from {self.minimum:g} to "
                               f"{self.maximum:g}; got {payload!r}.")
            return super().preprocess(payload)

    class MethodChoice(gr.CheckboxGroup):
        """`gr.CheckboxGroup` of method names that accepts one name as a string and names unknown methods."""

        is_template = True  # same Svelte component as gr.CheckboxGroup

        def preprocess(self, payload):
            if isinstance(payload, str):
                payload = [payload]
            if not isinstance(payload, list) or not all(isinstance(m, str) for m in payload):
                raise gr.Error(f"methods must be a list of method names from {', '.join(METHODS)}; got {payload!r}.")
            unknown = [m for m in payload if m not in METHODS]
            if unknown:
                raise gr.Error(f"Unknown method{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}: "
                               f"methods must be a non-empty subset of {', '.join(METHODS)}.")
            return super().preprocess(payload)


def read_image(path) -> Image.Image:
    if not path:
        raise gr.Error("Upload an image (or click one of the examples) first.")
    try:
        image = load_image(path, max_pixels=MAX_PIXELS)
    except ValueError as error:
        raise gr.Error(f"That upload cannot be used: {error}.") from None
    return fit_image(image, MODEL_MAX_SIDE)


def read_question(question) -> str:
    if not isinstance(question, str) or not question.strip():
        raise gr.Error("Type a question about the image, e.g. “What is in the image?”.")
    question = question.strip()
    if len(question) > MAX_QUESTION_CHARS:
        raise gr.Error(f"The question is {len(question)} characters long; shorten it to at most {MAX_QUESTION_CHARS}.")
    return question


def _whole(value):
    return int(value) if isinstance(value, float) and value.is_integer() else value


def make_config(keep_ratio, threshold, temperature, iterations, fastv_layer, methods, max_new_tokens) -> AnalysisConfig:
    if isinstance(methods, str):
        methods = [methods]
    methods = list(methods or [])
    ordered = tuple(m for m in METHODS if m in methods) if set(methods) <= set(METHODS) else tuple(methods)
    try:
        config = AnalysisConfig(
            methods=ordered, keep_ratio=keep_ratio, iterations=_whole(iterations), threshold=threshold,
            temperature=temperature, fastv_layer=_whole(fastv_layer), max_new_tokens=_whole(max_new_tokens),
        )
        return config.validate(NUM_LAYERS)
    except (ValueError, TypeError) as error:
        raise gr.Error(f"Invalid setting: {error}.") from None


def duration_text(seconds: float) -> str:
    for unit, size in (("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= size or unit == "second":
            value = round(seconds / size, 1)
            return f"{value:g} {unit}{'' if value == 1 else 's'}"


_ran_sessions: OrderedDict[str, float] = OrderedDict()  # session hash → time of its last Run; no results here
_ran_lock = threading.Lock()


def remember_run(request: gr.Request | None) -> None:
    key = getattr(request, "session_hash", None)
    if key:
        with _ran_lock:
            _ran_sessions[key] = time.time()
            _ran_sessions.move_to_end(key)
            while len(_ran_sessions) > REMEMBERED_SESSIONS:
                _ran_sessions.popitem(last=False)


def need_session(session, request: gr.Request | None = None) -> views.Session:
    """The session's stored analysis, or a gr.Error saying whether none was run yet or its results expired."""
    if session is not None:
        return session
    kept = (f"results are kept for {duration_text(SESSION_TTL_S)} after a run, for at most {MAX_SESSIONS} "
            "sessions at once")
    with _ran_lock:
        ran = getattr(request, "session_hash", None) in _ran_sessions
    if ran:
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


def temp_file(suffix: str, data: bytes) -> str:
    """Write `data` under the app's temp folder (served via gradio's cache); files older than an hour are removed."""
    EXPORT_DIR.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - 3600
    for old in EXPORT_DIR.iterdir():
        try:
            if old.stat().st_mtime < cutoff:
                old.unlink()
        except OSError:
            pass
    path = EXPORT_DIR / f"gprune-{uuid.uuid4().hex[:12]}{suffix}"
    path.write_bytes(data)
    return str(path)


# ------------------------------------------------------------------------------------------- handlers


def analyze_image(image, question, keep_ratio=0.5, threshold=0.5, temperature=0.03, iterations=5,
                  fastv_layer=DEFAULT_FASTV_LAYER, methods=METHODS, max_new_tokens=32, view="grid",
                  progress=gr.Progress(), request: gr.Request = None):
    """Run the unpruned model and every chosen method once; keep the results in this session."""
    picture = read_image(image)
    question = read_question(question)
    config = make_config(keep_ratio, threshold, temperature, iterations, fastv_layer, methods, max_new_tokens)
    view = shown(views.check_view)(view)
    try:
        analysis = run_model(picture, question, config, progress)
    except gr.Error:
        raise
    except ValueError as error:
        raise gr.Error(str(error)) from None
    session = views.new_session(analysis)
    remember_run(request)
    heatmap, mask = (None, None)
    if "gprune" in analysis.results:
        heatmap, mask, _ = views.iteration_pictures(session, view, config.iterations)
    return (session, heatmap, mask, views.method_pictures(session, view), views.comparison_html(analysis),
            analysis.summary())


@shown
def after_analyze(session, view):
    """Sync every view-dependent control after a run (UI only)."""
    session = need_session(session)
    analysis = session.analysis
    iterations = views.iteration_count(analysis)
    has_gprune = "gprune" in analysis.results
    choices = [(METHOD_LABELS[m], m) for m in ("unpruned", *analysis.results)]
    ran = list(analysis.results)
    a = "gprune" if has_gprune else ran[0]
    b = next((m for m in ("fastv", *ran) if m != a and m in ran), "unpruned")
    difference, counts = views.difference_picture(session, a, b, view)
    caption = views.iteration_pictures(session, view, iterations)[2] if has_gprune else "G-Prune was not run."
    return (
        gr.Slider(minimum=0, maximum=iterations, value=iterations, step=1, interactive=has_gprune),
        caption,
        gr.Dropdown(choices=choices, value=a), gr.Dropdown(choices=choices, value=b), difference, counts,
        *learn_pictures(session, view, iterations),
        None, None, "Click a cell of the heatmap or the mask to inspect that token.",
        status_text(analysis),
    )


def status_text(analysis: Analysis) -> str:
    layout = analysis.layout
    return (f"Analysed a {layout.image_width}×{layout.image_height} image: {layout.n_tokens:,} visual tokens "
            f"(576 base + {layout.rows}×{layout.cols} grid + {layout.rows} newlines); keep ratio "
            f"{analysis.config.keep_ratio:g} on model `{analysis.model_name}`.")


def learn_pictures(session: views.Session, view: str, iteration: int):
    analysis = session.analysis
    similarity = views.similarity_picture(analysis, view)
    score = views.score_picture(session, view, iteration) if "gprune" in analysis.results else None
    return similarity, score, views.graph_facts(analysis, view)


@shown
def step(session, view="grid", iteration=0, request: gr.Request = None):
    """Redraw G-Prune's heatmap and kept mask after `iteration` iterations (stored scores, no model call)."""
    return views.iteration_pictures(need_session(session, request), view, iteration)


@shown
def step_score(session, view, iteration):
    session = need_session(session)
    if "gprune" not in session.analysis.results:
        return None
    return views.score_picture(session, view, iteration)


@shown
def change_view(session, view, iteration, method_a, method_b, request: gr.Request = None):
    """Redraw everything for the other view (UI only)."""
    session = need_session(session, request)
    analysis = session.analysis
    if "gprune" in analysis.results:
        heatmap, mask, caption = views.iteration_pictures(session, view, iteration)
    else:
        heatmap, mask, caption = None, None, "G-Prune was not run."
    difference, counts = views.difference_picture(session, method_a, method_b, view)
    return (heatmap, mask, caption, views.method_pictures(session, view), difference, counts,
            *learn_pictures(session, view, iteration))


@shown
def difference(session, method_a="gprune", method_b="fastv", view="grid", request: gr.Request = None):
    """Tokens kept by method A but not B (orange), by B but not A (blue)."""
    return views.difference_picture(need_session(session, request), method_a, method_b, view)


@shown
def inspect(session, view="grid", x=0.0, y=0.0, request: gr.Request = None):
    """The token under pixel (x, y) of the analysed image: score trace, strongest neighbours, who kept it."""
    session = need_session(session, request)
    try:
        x, y = float(x), float(y)
    except (TypeError, ValueError):
        x = y = math.nan
    if not (math.isfinite(x) and math.isfinite(y)):
        raise gr.Error("Give the pixel coordinates x and y of the token to inspect as numbers (or click the picture).")
    found = views.inspect_token(session, view, x, y)
    return found.highlight, found.trace, found.markdown


@shown
def inspect_click(session, view, evt: gr.SelectData, request: gr.Request = None):
    """A click on a picture (display pixels) → the same as `inspect` at the original-image pixel."""
    session = need_session(session, request)
    sx, sy = session.canvas.scale
    x, y = round(evt.index[0] / sx, 1), round(evt.index[1] / sy, 1)
    return (x, y, *inspect(session, view, x, y))


@shown
def iterations_gif(session, view="grid", request: gr.Request = None):
    """Animated GIF of G-Prune's heatmap and kept mask over the iterations."""
    return temp_file(".gif", views.iterations_gif(need_session(session, request), view))


@shown
def export(session, request: gr.Request = None):
    """ZIP with every figure, the scores and kept indices, the answers and the exact configuration."""
    return temp_file(".zip", views.export_zip(need_session(session, request)))


def parse_ratios(text) -> list[float]:
    try:
        ratios = [float(part) for part in str(text).replace(";", ",").split(",") if part.strip()]
    except ValueError:
        raise gr.Error(f"Keep ratios must be comma-separated numbers in (0, 1], e.g. 1, 0.5, 0.25; got {text!r}.") from None
    if not 1 <= len(ratios) <= 12 or not all(0 < r <= 1 for r in ratios):
        raise gr.Error(f"Give 1 to 12 keep ratios in (0, 1], e.g. 1, 0.5, 0.25; got {text!r}.")
    return ratios


def sweep(session, keep_ratios=", ".join(f"{r:g}" for r in views.STABILITY_RATIOS), progress=gr.Progress(),
          request: gr.Request = None):
    """log p(unpruned answer | pruned prompt) for each method over keep ratios (one prefill each)."""
    session = need_session(session, request)
    ratios = parse_ratios(keep_ratios)
    analysis = session.analysis
    if not analysis.reference.answer_token_ids:
        raise gr.Error("The unpruned answer is empty, so there is nothing to score; ask another question.")
    try:
        curves = run_sweep(analysis.image, analysis.question, list(analysis.reference.answer_token_ids), ratios,
                           analysis.config, progress)
    except gr.Error:
        raise
    except ValueError as error:
        raise gr.Error(str(error)) from None
    session.stability = {"keep_ratios": ratios, "curves": curves}
    return session, views.stability_picture(session.stability, analysis.reference.answer), session.stability


# ---------------------------------------------------------------------------------------------- texts

BANNER_RANDOM = (
    "⚠️ **This server runs the offline `tiny` model with random weights** (no GPU or no checkpoint available). "
    "Its answers are meaningless; the pruning mechanics, token layout, budgets, FLOPs and timings are real. "
    "Start it with `--model llava-hf/llava-v1.6-mistral-7b-hf` (or `GPRUNE_MODEL`) on a GPU for real answers."
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
slider shows what it would keep if it stopped after t iterations (t = 0: norm ÷ degree).
**Click a cell** to inspect that token."""

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
4nd² + 2n²d + 2ndm; FastV pays K unpruned layers). **Prefill ms** is measured on this server. Answers are
word diffs against the unpruned answer: <del style="background:#fdd;color:#900">removed</del>,
<ins style="background:#dfd;color:#060;text-decoration:none">added</ins>."""

INSPECT_TEXT = """Click any cell of the heatmap, the mask or this picture (or type pixel coordinates of the
analysed image). The **red outline** is the token; **cyan** cells are the graph neighbours that send it the
largest share of their mass (stronger tint = larger weight). The plot is its G-Prune score after each
iteration."""

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

EXPORT_TEXT = """One ZIP with every figure (PNG + iteration GIFs), `summary.json` and `tokens.npz` (scores, kept
indices, degrees, ToMe groups, token layout; the CLI's format), `answers.json`, `config.json`, the exact input
image and the `python -m gprune …` command that reproduces the run."""


def example_rows() -> list[list[str]]:
    """Bundled examples: `assets/examples.json` (file + question) if present, else every image in assets/."""
    listing = ASSETS / "examples.json"
    if listing.is_file():
        try:
            entries = json.loads(listing.read_text())
            rows = [[str(ASSETS / e["file"]), e.get("question", DEFAULT_QUESTION)] for e in entries
                    if (ASSETS / e["file"]).is_file()]
            if rows:
                return rows
        except (ValueError, KeyError, TypeError):
            pass
    files = sorted(p for p in ASSETS.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    return [[str(p), DEFAULT_QUESTION] for p in files]


# ------------------------------------------------------------------------------------------------- UI

CSS = """
.gprune-compare { border-collapse: collapse; width: 100%; font-size: 0.9em; table-layout: fixed; }
.gprune-compare td, .gprune-compare th { border: 1px solid #8884; padding: 4px 6px; vertical-align: top; }
.gprune-compare th:last-child { width: 45%; }
.gprune-compare td, .gprune-answer { overflow-wrap: anywhere; }
.gprune-answer { margin: 4px 0 8px 0; }
"""


def build_demo() -> gr.Blocks:
    method_choices = [(METHOD_LABELS[m], m) for m in METHODS]
    with gr.Blocks(title="G-Prune Explorer", delete_cache=(3600, 3600)) as demo:
        session = gr.State(None, time_to_live=SESSION_TTL_S)
        gr.Markdown(INTRO)
        if LOADED.random_weights:
            gr.Markdown(BANNER_RANDOM, elem_id="random-weights-banner")
        else:
            gr.Markdown(f"Model: `{LOADED.name}` on {LOADED.device}.")
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                image = ImageUpload(label="Image", type="filepath", image_mode=None, sources=["upload", "clipboard"],
                                    elem_id="input-image", height=300)
                question = gr.Textbox(label="Question", value=DEFAULT_QUESTION, max_length=MAX_QUESTION_CHARS, lines=2)
                keep_ratio = Setting(0.01, 1.0, value=0.5, step=0.01, label="Keep ratio ρ",
                                     info="fraction of base and of grid tokens kept (newlines always kept)")
                methods = MethodChoice(method_choices, value=list(METHODS), label="Methods")
                with gr.Accordion("G-Prune, FastV and generation settings", open=False):
                    threshold = Setting(-1.0, 1.0, value=0.5, step=0.01, label="G-Prune threshold s",
                                        info="edge if cosine similarity ≥ s")
                    temperature = Setting(0.001, 1.0, value=0.03, step=0.001, label="G-Prune temperature τ",
                                          info="softmax(similarity / τ) over each token's edges")
                    iterations = Setting(0, MAX_UI_ITERATIONS, value=5, step=1, label="G-Prune iterations I")
                    fastv_layer = Setting(1, NUM_LAYERS - 1, value=DEFAULT_FASTV_LAYER, step=1, label="FastV layer K",
                                          info=f"prune after layer K−1 (this model has {NUM_LAYERS} layers)")
                    max_new_tokens = Setting(1, 128, value=32, step=1, label="Max new tokens")
                run = gr.Button("Run", variant="primary", elem_id="run-button")
                examples = example_rows()
                if examples:
                    gr.Examples(examples, inputs=[image, question], label="Examples (click one, then Run)")
            with gr.Column(scale=2):
                status = gr.Markdown("No analysis yet.", elem_id="status")
                view = gr.Radio([("High-resolution grid", "grid"), ("Base view (24×24)", "base")], value="grid",
                                label="View", info="which of the two token sets to draw (newlines are never drawn)")
                with gr.Tabs():
                    with gr.Tab("Iterations"):
                        # Maximum = the largest I the form allows, so API clients can step any run; a run narrows it.
                        iteration = Setting(0, MAX_UI_ITERATIONS, value=5, step=1, label="Iteration t", interactive=False,
                                            elem_id="iteration-slider")
                        with gr.Row():
                            heatmap = gr.Image(label="G-Prune score after iteration t", interactive=False,
                                               elem_id="heatmap", format="jpeg", buttons=["download", "fullscreen"])
                            mask = gr.Image(label="Kept (bright) / dropped (dimmed) after iteration t",
                                            interactive=False, elem_id="mask", format="jpeg", buttons=["download", "fullscreen"])
                        caption = gr.Markdown(label="Caption", elem_id="iteration-caption")
                        with gr.Row():
                            gif_button = gr.Button("Make GIF of all iterations", size="sm")
                            gif_file = gr.File(label="Iterations GIF", height=60)
                        gr.Markdown(ITERATIONS_TEXT)
                    with gr.Tab("Compare methods"):
                        answers = gr.HTML(label="Answers and costs", elem_id="answers")
                        gallery = gr.Gallery(label="Each method's kept tokens at the same budget", columns=3, format="jpeg",
                                             height="auto", object_fit="contain", elem_id="compare-gallery")
                        with gr.Row():
                            pair_choices = [(METHOD_LABELS["unpruned"], "unpruned"), *method_choices]
                            method_a = gr.Dropdown(pair_choices, value="gprune", label="Kept by A (orange)…")
                            method_b = gr.Dropdown(pair_choices, value="fastv", label="…but not by B (blue)")
                        difference_image = gr.Image(label="A-only / B-only tokens", interactive=False, format="jpeg", height=420)
                        difference_counts = gr.Markdown(label="Counts")
                        gr.Markdown(COMPARE_TEXT)
                    with gr.Tab("Inspect a token"):
                        gr.Markdown(INSPECT_TEXT)
                        with gr.Row():
                            x = gr.Number(label="x (pixels of the analysed image)", value=0)
                            y = gr.Number(label="y (pixels)", value=0)
                            inspect_button = gr.Button("Inspect", size="sm")
                        with gr.Row():
                            highlight = gr.Image(label="Token (red) and its strongest neighbours (cyan)",
                                                 interactive=False, elem_id="highlight", format="jpeg")
                            trace = gr.Image(label="Score across iterations", interactive=False)
                        token_info = gr.Markdown("Click a cell of the heatmap or the mask to inspect that token.", label="Token")
                    with gr.Tab("Keep-ratio sweep"):
                        gr.Markdown(SWEEP_TEXT)
                        ratios = gr.Textbox(", ".join(f"{r:g}" for r in views.STABILITY_RATIOS), label="Keep ratios")
                        sweep_button = gr.Button("Run sweep")
                        stability_plot = gr.Image(label="Answer stability", interactive=False, elem_id="stability-plot")
                        stability_json = gr.JSON(label="log p(unpruned answer) per method and keep ratio")
                    with gr.Tab("Learn: graph & scores"):
                        facts = gr.Markdown(label="Graph facts")
                        with gr.Row():
                            similarity_plot = gr.Image(label="Similarity distribution (threshold dashed)", interactive=False)
                            score_plot = gr.Image(label="Score distribution at iteration t (top-k cut dashed)", interactive=False)
                        gr.Markdown(LEARN_TEXT)
                    with gr.Tab("Export"):
                        gr.Markdown(EXPORT_TEXT)
                        export_button = gr.Button("Build ZIP")
                        export_file = gr.File(label="Export")
                    with gr.Tab("Summary (JSON)"):
                        summary = gr.JSON(label="Analysis summary")
                    app_failures.build_failures_tab(demo, RUNS_DIR, app_failures.ExplorerInputs(
                        image, question, keep_ratio, methods, threshold, temperature, iterations, fastv_layer,
                        max_new_tokens), LOADED.name)

        gpu_queue = dict(concurrency_limit=1, concurrency_id="gpu")
        cpu_queue = dict(concurrency_limit=STEP_CONCURRENCY)
        run.click(
            analyze_image,
            [image, question, keep_ratio, threshold, temperature, iterations, fastv_layer, methods, max_new_tokens, view],
            [session, heatmap, mask, gallery, answers, summary], api_name="analyze", **gpu_queue,
        ).success(
            after_analyze, [session, view],
            [iteration, caption, method_a, method_b, difference_image, difference_counts, similarity_plot, score_plot,
             facts, highlight, trace, token_info, status],
            api_visibility="private", **cpu_queue,
        )
        iteration.change(step, [session, view, iteration], [heatmap, mask, caption], api_name="step",
                         trigger_mode="always_last", show_progress="hidden", **cpu_queue
                         ).success(step_score, [session, view, iteration], score_plot, api_visibility="private",
                                   trigger_mode="always_last", show_progress="hidden", **cpu_queue)
        view.input(change_view, [session, view, iteration, method_a, method_b],
                   [heatmap, mask, caption, gallery, difference_image, difference_counts, similarity_plot, score_plot, facts],
                   api_visibility="private", **cpu_queue)
        gr.on([method_a.input, method_b.input], difference, [session, method_a, method_b, view],
              [difference_image, difference_counts], api_name="difference", **cpu_queue)
        for picture in (heatmap, mask, highlight):
            picture.select(inspect_click, [session, view], [x, y, highlight, trace, token_info],
                           api_visibility="private", **cpu_queue)
        inspect_button.click(inspect, [session, view, x, y], [highlight, trace, token_info], api_name="inspect", **cpu_queue)
        gif_button.click(iterations_gif, [session, view], gif_file, api_name="gif", **cpu_queue)
        export_button.click(export, [session], export_file, api_name="export", **cpu_queue)
        sweep_button.click(sweep, [session, ratios], [session, stability_plot, stability_json], api_name="sweep", **gpu_queue)
    return demo


def server_port() -> int | None:
    """`GRADIO_SERVER_PORT`, else `PORT` (hosting platforms), else Gradio's default (7860 or the next free one)."""
    value = os.environ.get("GRADIO_SERVER_PORT") or os.environ.get("PORT")
    return int(value) if value else None


demo = build_demo()
demo.queue(default_concurrency_limit=STEP_CONCURRENCY)

if __name__ == "__main__":
    demo.launch(server_port=server_port(), max_file_size=MAX_UPLOAD_SIZE, state_session_capacity=MAX_SESSIONS, css=CSS,
                footer_links=["api", "gradio"])
