"""The Failures tab: browse the runs of `python -m gprune.evaluate` and open a failed example in the explorer.

Runs are read only from the server-side runs folder the operator chose (`python app.py --runs DIR` or
`GPRUNE_RUNS`): the browser picks a run by name from that folder's listing, never a path, and no symlink in
it is followed. A run folder keeps a copy of every evaluated image (store.RunFolder), so an example opens
without the dataset, the hub or its cache. A run is read, checked and summarised (vectorised) once per version
of its files (cached by their identity), and each listing of its failures is computed once, vectorised. Everything a run's data puts
into Markdown is escaped. Pure functions (`list_runs`, `load_run`, `accuracy_table`, `failure_table`,
`example_view`) are tested without a server; `build_failures_tab` adds the tab and fills the explorer's inputs
on a click.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from app_inputs import RawNumber, shown
from gprune import METHOD_LABELS, METHODS
from gprune.evaluate.metric import METRIC_LABELS
from gprune.evaluate.report import summarize
from gprune.evaluate.store import UNPRUNED, RunFolder
from gprune.files import write_atomically

RUNS_ENV = "GPRUNE_RUNS"
ALL, DROPPED, DIFFER = "all", "dropped", "differ"
FILTERS = {ALL: "all examples", DROPPED: "unpruned right, pruned wrong (accuracy dropped)", DIFFER: "answers differ"}
MAX_LISTED = 500
# What the tab needs of run.json's settings (as `python -m gprune.evaluate` writes them), and of each result row.
SETTING_KINDS = {"model": str, "dataset": dict, "prompt_suffix": str, "metric": str, "methods": list, "keep_ratios": list,
                 "iterations": int, "threshold": (int, float), "temperature": (int, float), "fastv_layer": int,
                 "max_new_tokens": int}
RESULT_COLUMNS = ("row", "question_id", "method", "keep_ratio", "question", "answers", "answer", "accuracy",
                  "matches_unpruned", "image", "error")
FAILURE_COLUMNS = ["row", "question", "human answers", "unpruned answer", "pruned answer", "unpruned accuracy %",
                   "pruned accuracy %", "drop (points)"]
ACCURACY_COLUMNS = ["keep ratio", "method", "accuracy %", "% of unpruned", "same answer %", "tokens kept", "FLOPs %",
                    "examples"]


def runs_folder(argv: list[str], environ=os.environ) -> Path | None:
    """`--runs DIR` on the command line, else `GPRUNE_RUNS`, else None (no Failures data); must be a folder."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--runs", default=None)
    args, _ = parser.parse_known_args(argv)
    text = args.runs or environ.get(RUNS_ENV, "").strip()
    if not text:
        return None
    folder = Path(text).expanduser().resolve()
    if not folder.is_dir():
        raise ValueError(f"the runs folder {text!r} (--runs or {RUNS_ENV}) is not a folder; give the folder holding "
                         "the run folders of `python -m gprune.evaluate --out DIR/NAME`")
    return folder


def _plain_file(path: Path) -> bool:
    """A regular file that is not a symlink (a planted link could point anywhere on the server)."""
    return not path.is_symlink() and path.is_file()


def list_runs(runs_dir: Path) -> list[str]:
    """Names of the finished runs in `runs_dir`: sub-folders (not symlinks) with run.json and results.parquet
    (regular files, not symlinks)."""
    names = []
    for child in sorted(runs_dir.iterdir()) if runs_dir.is_dir() else []:
        folder = RunFolder(child)
        if not child.is_symlink() and child.is_dir() and _plain_file(folder.run_json) and _plain_file(folder.results):
            names.append(child.name)
    return names


@dataclass(frozen=True)
class EvaluationRun:
    """A finished run: `settings` and facts from run.json, `rows` = results.parquet as a DataFrame, `table` =
    its paper-style entries (report.summarize), `examples` / `failed` = how many were evaluated / could not be.
    `listings` caches `failure_table`'s results (this object is cached per version of the run's files)."""

    name: str
    folder: RunFolder
    info: dict
    rows: pd.DataFrame
    table: list[dict]
    examples: int
    failed: int
    listings: dict = field(default_factory=dict, compare=False, repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    @property
    def settings(self) -> dict:
        return self.info["settings"]

    @property
    def keep_ratios(self) -> list[float]:
        return list(self.settings["keep_ratios"])

    @property
    def methods(self) -> list[str]:
        return list(self.settings["methods"])


def load_run(runs_dir: Path, name) -> EvaluationRun:
    """The run called `name` in `runs_dir`; ValueError unless it is one of `list_runs(runs_dir)` and readable."""
    if not isinstance(name, str) or name not in list_runs(runs_dir):
        raise ValueError(f"there is no finished run called {shown(name)} in the runs folder; pick one from the list")
    folder = RunFolder(runs_dir / name)
    identity = tuple((s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns)
                     for s in (os.stat(folder.run_json, follow_symlinks=False),
                               os.stat(folder.results, follow_symlinks=False)))
    return _read_run(name, str(folder.path), identity)


@functools.lru_cache(maxsize=8)
def _read_run(name: str, path: str, identity: tuple) -> EvaluationRun:
    """Read and check a run once per version of its files (`identity`: device, inode, size and mtime of run.json
    and results.parquet; a resumed run rewrites them). Messages name the run, never a server path."""
    folder = RunFolder(Path(path))
    try:
        info = json.loads(folder.run_json.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"run {name!r} cannot be opened: its run.json is not valid JSON") from None
    check_run_info(name, info)
    try:
        results = pq.read_table(folder.results)
    except (pa.ArrowException, OSError):
        raise ValueError(f"run {name!r} cannot be opened: its results.parquet is not a readable Parquet file") from None
    missing = [column for column in RESULT_COLUMNS if column not in results.column_names]
    if missing:
        raise ValueError(f"run {name!r} cannot be opened: its results have no column {', '.join(missing)}")
    settings = info["settings"]
    rows = results.to_pandas()
    unknown = sorted(set(rows["method"]) - {UNPRUNED, *settings["methods"]}, key=str)
    if unknown:
        raise ValueError(f"run {name!r} cannot be opened: its results hold methods {shown(unknown)} that its "
                         "settings do not list")
    try:
        table = summarize(rows, list(settings["methods"]), list(settings["keep_ratios"]))["table"]
    except (TypeError, ValueError, KeyError):  # e.g. an accuracy that is text
        raise ValueError(f"run {name!r} cannot be opened: its results hold values of the wrong kind") from None
    evaluated = rows.drop_duplicates("row")
    return EvaluationRun(name, folder, info, rows, table, len(evaluated), int(evaluated["error"].notna().sum()))


def check_run_info(name: str, info) -> None:
    """ValueError unless run.json has the settings the tab uses, of the kinds `python -m gprune.evaluate` writes."""
    settings = info.get("settings") if isinstance(info, dict) else None
    if not isinstance(settings, dict):
        raise ValueError(f"run {name!r} cannot be opened: its run.json has no settings")
    for key, kind in SETTING_KINDS.items():
        value = settings.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"run {name!r} cannot be opened: its run.json has no valid setting {key!r}")
    methods, ratios = settings["methods"], settings["keep_ratios"]
    if not methods or not all(isinstance(m, str) and m in METHODS for m in methods):
        raise ValueError(f"run {name!r} cannot be opened: its methods {shown(methods)} are not among "
                         f"{', '.join(METHODS)}")
    if not ratios or not all(isinstance(r, (int, float)) and not isinstance(r, bool) and 0 < r <= 1 for r in ratios):
        raise ValueError(f"run {name!r} cannot be opened: its keep ratios {shown(ratios)} are not numbers in (0, 1]")
    if not all(isinstance(settings["dataset"].get(key), str) for key in ("source", "split")):
        raise ValueError(f"run {name!r} cannot be opened: its run.json has no dataset source and split")


MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~<>&])")


def escape_markdown(value) -> str:
    """`value` as literal text in Markdown: no link, image, HTML tag or emphasis a dataset could smuggle in."""
    return MARKDOWN_SPECIAL.sub(r"\\\1", str(value)).replace("\n", " ")


def dataset_label(source: str) -> str:
    """A dataset source as visitors may see it: a hub id as it is, a local path by its last part only."""
    path = Path(source).expanduser()
    return f"{path.name} (a local dataset)" if path.is_absolute() or source.startswith((".", "~")) else source


def metric_description(metric: str) -> str:
    """A run's metric for visitors: its name and, for the metrics of this version, what it computes."""
    label = METRIC_LABELS.get(metric)
    return escape_markdown(metric if label is None else f"{metric} ({label})")


def run_description(run: EvaluationRun, app_model: str) -> str:
    settings, dataset = run.settings, run.settings["dataset"]
    model = escape_markdown(settings["model"])
    lines = [f"**{escape_markdown(run.name)}**: model {model} on {escape_markdown(dataset_label(dataset['source']))} "
             f"({escape_markdown(dataset['split'])}), {run.examples} examples ({run.failed} could not be evaluated), "
             f"metric {metric_description(settings['metric'])}."]
    if run.info.get("random_weights"):
        lines.append("⚠️ Random-weight toy model: its answers and accuracies are meaningless.")
    if settings["model"] != app_model:
        lines.append(f"⚠️ This server runs `{app_model}`, not the run's {model}: the explorer's answers will differ "
                     "from the run's.")
    return "\n\n".join(lines)


def _percent(value) -> float | None:
    return None if value is None or pd.isna(value) else round(100 * float(value), 1)


def accuracy_table(run: EvaluationRun) -> pd.DataFrame:
    """The run's paper-style table (report.summarize): one row per method × keep ratio, unpruned first."""
    table = [[entry["keep_ratio"], METHOD_LABELS[entry["method"]], _percent(entry["accuracy"]),
              _percent(entry["relative_accuracy"]), _percent(entry["same_answer"]),
              None if entry["visual_tokens_kept"] is None else round(entry["visual_tokens_kept"]),
              _percent(entry["flops_ratio"]), entry["examples"]] for entry in run.table]
    return pd.DataFrame(table, columns=ACCURACY_COLUMNS)


def _answers_text(answers) -> str:
    """Human answers with counts, most frequent first: "yes ×7, no ×3"."""
    if answers is None or len(answers) == 0:
        return ""
    counts = pd.Series(list(answers)).value_counts(sort=True)
    return ", ".join(f"{answer} ×{count}" for answer, count in counts.items())


def failure_table(run: EvaluationRun, method, keep_ratio, kind=DROPPED) -> pd.DataFrame:
    """Examples of `method` at `keep_ratio`, worst first: by accuracy drop against the unpruned answer, then
    answers that differ, then row. `kind` filters: all, dropped (unpruned more accurate), differ. Computed once
    per run, method, ratio and filter (vectorised; only the rows listed get their human answers counted)."""
    if not isinstance(method, str) or method not in run.methods:
        raise ValueError(f"method must be one of {', '.join(run.methods)} (this run's methods), got {shown(method)}")
    keep_ratio = _run_ratio(run, keep_ratio)
    if not isinstance(kind, str) or kind not in FILTERS:
        raise ValueError(f"filter must be one of {', '.join(FILTERS)}, got {shown(kind)}")
    key = (method, keep_ratio, kind)
    with run.lock:
        if key not in run.listings:
            run.listings[key] = _failure_table(run, method, keep_ratio, kind)
        return run.listings[key].copy()


def _failure_table(run: EvaluationRun, method: str, keep_ratio: float, kind: str) -> pd.DataFrame:
    rows = run.rows[run.rows["error"].isna()]
    pruned = rows[(rows["method"] == method) & (rows["keep_ratio"] == keep_ratio)].drop_duplicates("row").set_index("row")
    reference = rows[rows["method"] == UNPRUNED].drop_duplicates("row").set_index("row").reindex(pruned.index)
    drop = (100 * (reference["accuracy"] - pruned["accuracy"])).fillna(0.0).round(1)
    differs = ~pruned["matches_unpruned"].fillna(False).astype(bool)
    chosen = drop > 0 if kind == DROPPED else differs if kind == DIFFER else pd.Series(True, index=pruned.index)
    order = pd.DataFrame({"drop": -drop, "same": ~differs}, index=pruned.index)[chosen].sort_index(kind="stable")
    listed = order.sort_values(["drop", "same"], kind="stable").index[:MAX_LISTED]  # ties: by row
    pruned, reference = pruned.loc[listed], reference.loc[listed]
    return pd.DataFrame({
        "row": listed, "question": pruned["question"].to_numpy(),
        "human answers": [_answers_text(answers) for answers in pruned["answers"]],
        "unpruned answer": reference["answer"].to_numpy(), "pruned answer": pruned["answer"].to_numpy(),
        "unpruned accuracy %": (100 * reference["accuracy"]).round(1).to_numpy(),
        "pruned accuracy %": (100 * pruned["accuracy"]).round(1).to_numpy(), "drop (points)": drop.loc[listed].to_numpy(),
    }, columns=FAILURE_COLUMNS)


def _run_ratio(run: EvaluationRun, keep_ratio) -> float:
    """One of the run's keep ratios, given as a number or as its text ("0.25")."""
    try:
        value = None if isinstance(keep_ratio, bool) else float(keep_ratio)
    except (TypeError, ValueError):
        value = None
    if value not in run.keep_ratios:
        raise ValueError(f"keep ratio must be one of {', '.join(f'{r:g}' for r in run.keep_ratios)} (this run's), "
                         f"got {shown(keep_ratio)}")
    return value


def _row_number(row) -> int:
    """A row number given as a whole number (an integral float too, as JSON numbers may arrive), not a bool."""
    if isinstance(row, float) and math.isfinite(row) and row.is_integer():
        row = int(row)
    if isinstance(row, bool) or not isinstance(row, int):
        raise ValueError(f"row must be the whole row number of an example, got {shown(row)}")
    return row


@dataclass(frozen=True)
class ExampleView:
    """One example of a run, ready for the explorer: its image file (inside the run folder), the exact prompt
    the run asked, the explorer settings of the run at `keep_ratio`, and a Markdown description."""

    image: Path
    prompt: str
    keep_ratio: float
    methods: list[str]
    threshold: float
    temperature: float
    iterations: int
    fastv_layer: int
    max_new_tokens: int
    markdown: str


def example_view(run: EvaluationRun, row, method, keep_ratio) -> ExampleView:
    """The example at `row`, as `method` saw it at `keep_ratio`; ValueError for a row the run did not evaluate."""
    if not isinstance(method, str) or method not in run.methods:
        raise ValueError(f"method must be one of {', '.join(run.methods)} (this run's methods), got {shown(method)}")
    keep_ratio = _run_ratio(run, keep_ratio)
    row = _row_number(row)
    rows = run.rows[(run.rows["row"] == row) & run.rows["error"].isna()]
    if rows.empty:
        raise ValueError(f"row {row} was not evaluated in run {run.name!r}")
    image = _run_image(run, rows["image"].iloc[0])
    if image is None:
        raise ValueError(f"the image of row {row} is missing from run {run.name!r}")
    settings = run.settings
    first = rows.iloc[0]
    lines = [f"**Row {row}** (question id {escape_markdown(first['question_id'])}): {escape_markdown(first['question'])}",
             "", f"Human answers: {escape_markdown(_answers_text(first['answers'])) or '(none)'}", "",
             "| method | keep ratio | answer | accuracy % |", "|---|---|---|---|"]
    listed = rows[(rows["method"] == UNPRUNED) | (rows["keep_ratio"] == keep_ratio)]
    for _, result in listed.iterrows():
        label = METHOD_LABELS[result["method"]] + (" ◀" if result["method"] == method else "")
        accuracy = "–" if pd.isna(result["accuracy"]) else f"{100 * result['accuracy']:.0f}"
        lines.append(f"| {label} | {result['keep_ratio']:g} | {escape_markdown(result['answer'])} | {accuracy} |")
    return ExampleView(image, first["question"] + settings["prompt_suffix"], keep_ratio, list(settings["methods"]),
                       settings["threshold"], settings["temperature"], settings["iterations"], settings["fastv_layer"],
                       settings["max_new_tokens"], "\n".join(lines))


def _run_image(run: EvaluationRun, name) -> Path | None:
    """The stored image `images/<file>` of a run, a regular file reached without symlinks; None otherwise."""
    if not isinstance(name, str):
        return None
    images = run.folder.images
    image = run.folder.path / name
    if os.path.normpath(image.parent) != os.path.normpath(images) or images.is_symlink() or not _plain_file(image):
        return None
    return image


def served_copy(image: Path, folder: Path) -> str:
    """A copy of a run's image in `folder` (one of this process's private folders, which Gradio may serve; the
    runs folder is not exposed), written atomically."""
    copy = folder / image.name  # names are content hashes
    if not copy.is_file():
        write_atomically(copy, image.read_bytes())
    return str(copy)


# ------------------------------------------------------------------------------------------------ UI


@dataclass(frozen=True)
class ExplorerInputs:
    """The explorer's input components that a click on an example fills in."""

    image: gr.components.Component
    question: gr.components.Component
    keep_ratio: gr.components.Component
    methods: gr.components.Component
    threshold: gr.components.Component
    temperature: gr.components.Component
    iterations: gr.components.Component
    fastv_layer: gr.components.Component
    max_new_tokens: gr.components.Component

    def sliders(self) -> list:
        return [self.keep_ratio, self.threshold, self.temperature, self.iterations, self.fastv_layer, self.max_new_tokens]


FAILURES_TEXT = """**Find the failures of a benchmark run** (`python -m gprune.evaluate … --out RUNS/NAME`): the accuracy of
every method per keep ratio, then the examples of one method at one keep ratio, worst first (largest accuracy drop
against the unpruned model, then answers that differ). **Click an example** to load its image, its exact prompt and
the run's settings into the explorer on the left; press **Run** to see its tokens, heatmaps and answers."""


def _shown(function):
    """ValueError → gr.Error with the same message."""
    @functools.wraps(function)
    def wrapped(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except ValueError as error:
            raise gr.Error(str(error)) from None
    return wrapped


def build_failures_tab(demo: gr.Blocks, runs_dir: Path | None, explorer: ExplorerInputs, app_model: str,
                       served_folder: Path) -> None:
    """Add the Failures tab (inside the caller's `gr.Tabs` of `demo`) and wire a click on an example to `explorer`;
    each page load re-lists the runs and opens the first. Without a runs folder there is no tab (a public demo
    has no runs; an empty tab would only crowd a phone's tab bar). Example images are copied into `served_folder`.

    The run, method and keep-ratio inputs take any value (`allow_custom_value`) and are checked here, so an API
    call works in any order, for any finished run (also one finished after start-up)."""
    if runs_dir is None:
        return
    with gr.Tab("Failures"):
        gr.Markdown(FAILURES_TEXT)
        names = list_runs(runs_dir)
        with gr.Row():
            run_choice = gr.Dropdown(names, value=names[0] if names else None, label="Run", elem_id="failures-run", scale=4,
                                     allow_custom_value=True)
            refresh = gr.Button("Refresh list", size="sm", scale=1)
        description = gr.Markdown(elem_id="failures-description")
        accuracy = gr.Dataframe(headers=ACCURACY_COLUMNS, label="Accuracy per method and keep ratio", interactive=False,
                                elem_id="failures-accuracy")
        with gr.Row():
            method = gr.Dropdown([], label="Method", elem_id="failures-method", allow_custom_value=True)
            keep_ratio = gr.Dropdown([], label="Keep ratio", elem_id="failures-keep", allow_custom_value=True)
            kind = gr.Radio([(label, key) for key, label in FILTERS.items()], value=DROPPED, label="Show",
                            elem_id="failures-filter")
        listing = gr.Dataframe(headers=FAILURE_COLUMNS, label="Examples, worst first — click one to load it into the explorer",
                               interactive=False, wrap=True, elem_id="failures-list",
                               column_widths=["7%", "25%", "14%", "14%", "14%", "9%", "9%", "8%"])
        with gr.Row():
            preview = gr.Image(label="Example", interactive=False, type="filepath", elem_id="failure-image", height=260)
            details = gr.Markdown("Click an example above.", elem_id="failure-details")

        @_shown
        def list_run_names():
            names = list_runs(runs_dir)
            return gr.Dropdown(choices=names, value=names[0] if names else None)

        @_shown
        def open_run(name):
            if not name:
                return ("No finished run in the runs folder yet.", None, gr.Dropdown(choices=[], value=None),
                        gr.Dropdown(choices=[], value=None), None)
            run = load_run(runs_dir, name)
            chosen = "gprune" if "gprune" in run.methods else run.methods[0]
            ratio = min(run.keep_ratios)
            return (run_description(run, app_model), accuracy_table(run),
                    gr.Dropdown(choices=[(METHOD_LABELS[m], m) for m in run.methods], value=chosen),
                    gr.Dropdown(choices=[(f"{r:g}", r) for r in run.keep_ratios], value=ratio),
                    failure_table(run, chosen, ratio, DROPPED))

        @_shown
        def list_failures(name, method_name, ratio, filter_kind):
            if not name or method_name is None or ratio is None:
                return None
            return failure_table(load_run(runs_dir, name), method_name, ratio, filter_kind)

        limits = [(slider.minimum, slider.maximum) for slider in explorer.sliders()]

        @_shown
        def open_example(name, row, method_name, ratio):
            """The example's image, prompt and run settings for the explorer's inputs (values clipped to their sliders)."""
            view = example_view(load_run(runs_dir, name), row, method_name, ratio)
            values = [view.keep_ratio, view.threshold, view.temperature, view.iterations, view.fastv_layer, view.max_new_tokens]
            clipped = [min(max(value, low), high) for value, (low, high) in zip(values, limits)]
            image = served_copy(view.image, served_folder)
            keep, threshold, temperature, iterations, fastv_layer, max_new_tokens = clipped
            return (image, view.markdown, image, view.prompt, keep, view.methods, threshold, temperature,
                    iterations, fastv_layer, max_new_tokens)

        def open_selected(name, method_name, ratio, event: gr.SelectData):
            if not event.row_value:  # not a cell of a row (e.g. a header)
                return [gr.skip()] * len(targets)
            return open_example(name, event.row_value[0], method_name, ratio)

        targets = [preview, details, explorer.image, explorer.question, explorer.keep_ratio, explorer.methods,
                   explorer.threshold, explorer.temperature, explorer.iterations, explorer.fastv_layer,
                   explorer.max_new_tokens]
        opened = [description, accuracy, method, keep_ratio, listing]
        refresh.click(list_run_names, None, run_choice, api_name="failure_runs")
        run_choice.change(open_run, run_choice, opened, api_name="failure_run")
        gr.on([method.input, keep_ratio.input, kind.input], list_failures, [run_choice, method, keep_ratio, kind], listing,
              api_name="failures")
        listing.select(open_selected, [run_choice, method, keep_ratio], targets, api_visibility="private")
        open_button = gr.Button(visible=False)  # carries the API endpoint of a click (gradio_client cannot select)
        row_number = RawNumber(visible=False)
        open_button.click(open_example, [run_choice, row_number, method, keep_ratio], targets, api_name="failure_example")
        demo.load(list_run_names, None, run_choice, api_visibility="private").then(
            open_run, run_choice, opened, api_visibility="private")
