"""The Failures tab: browse the runs of `python -m gprune.evaluate` and open a failed example in the explorer.

Runs are read only from the server-side runs folder the operator chose (`python app.py --runs DIR` or
`GPRUNE_RUNS`): the browser picks a run by name from that folder's listing, never a path. A run folder keeps
a copy of every evaluated image (store.RunFolder), so an example opens without the dataset, the hub or its
cache. Pure functions (`list_runs`, `load_run`, `accuracy_table`, `failure_table`, `example_view`) are
tested without a server; `build_failures_tab` adds the tab and fills the explorer's inputs on a click.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd
import pyarrow.parquet as pq

from gprune import METHOD_LABELS
from gprune.evaluate.report import summarize
from gprune.evaluate.store import UNPRUNED, RunFolder

RUNS_ENV = "GPRUNE_RUNS"
ALL, DROPPED, DIFFER = "all", "dropped", "differ"
FILTERS = {ALL: "all examples", DROPPED: "unpruned right, pruned wrong (accuracy dropped)", DIFFER: "answers differ"}
MAX_LISTED = 500
SERVED_IMAGES = Path(tempfile.gettempdir()) / "gprune-explorer" / "failures"
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


def list_runs(runs_dir: Path) -> list[str]:
    """Names of the finished runs in `runs_dir` (sub-folders with run.json and results.parquet, inside it)."""
    root = runs_dir.resolve()
    names = []
    for child in sorted(runs_dir.iterdir()) if runs_dir.is_dir() else []:
        folder = RunFolder(child)
        if folder.run_json.is_file() and folder.results.is_file() and child.resolve().parent == root:
            names.append(child.name)
    return names


@dataclass(frozen=True)
class EvaluationRun:
    """A finished run: `settings` and facts from run.json, `rows` = results.parquet as a DataFrame, `table` =
    its paper-style entries (report.summarize)."""

    name: str
    folder: RunFolder
    info: dict
    rows: pd.DataFrame
    table: list[dict]

    @property
    def settings(self) -> dict:
        return self.info["settings"]

    @property
    def keep_ratios(self) -> list[float]:
        return list(self.settings["keep_ratios"])

    @property
    def methods(self) -> list[str]:
        return list(self.settings["methods"])


def load_run(runs_dir: Path, name: str) -> EvaluationRun:
    """The run called `name` in `runs_dir`; ValueError unless it is one of `list_runs(runs_dir)`."""
    if not isinstance(name, str) or name not in list_runs(runs_dir):
        raise ValueError(f"there is no finished run called {name!r} in the runs folder; pick one from the list")
    folder = RunFolder(runs_dir / name)
    return _read_run(name, str(folder.path), folder.results.stat().st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _read_run(name: str, path: str, results_mtime_ns: int) -> EvaluationRun:
    """Cached per results.parquet version (a resumed run rewrites it, which changes its mtime)."""
    folder = RunFolder(Path(path))
    info = json.loads(folder.run_json.read_text())
    results = pq.read_table(folder.results)
    settings = info["settings"]
    table = summarize(results.to_pylist(), list(settings["methods"]), list(settings["keep_ratios"]))["table"]
    return EvaluationRun(name, folder, info, results.to_pandas(), table)


def run_description(run: EvaluationRun, app_model: str) -> str:
    settings, dataset = run.settings, run.settings["dataset"]
    evaluated = run.rows.drop_duplicates("row")
    failed = int(evaluated["error"].notna().sum())
    lines = [f"**{run.name}**: model `{settings['model']}` on `{dataset['source']}` ({dataset['split']}), "
             f"{len(evaluated)} examples ({failed} could not be evaluated), metric {settings['metric']}."]
    if run.info.get("random_weights"):
        lines.append("⚠️ Random-weight toy model: its answers and accuracies are meaningless.")
    if settings["model"] != app_model:
        lines.append(f"⚠️ This server runs `{app_model}`, not the run's `{settings['model']}`: the explorer's answers "
                     "will differ from the run's.")
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


def failure_table(run: EvaluationRun, method: str, keep_ratio: float, kind: str = DROPPED) -> pd.DataFrame:
    """Examples of `method` at `keep_ratio`, worst first: by accuracy drop against the unpruned answer, then
    answers that differ, then row. `kind` filters: all, dropped (unpruned more accurate), differ."""
    if method not in run.methods:
        raise ValueError(f"method must be one of {', '.join(run.methods)} (this run's methods), got {method!r}")
    keep_ratio = _run_ratio(run, keep_ratio)
    if kind not in FILTERS:
        raise ValueError(f"filter must be one of {', '.join(FILTERS)}, got {kind!r}")
    rows = run.rows[run.rows["error"].isna()]
    pruned = rows[(rows["method"] == method) & (rows["keep_ratio"] == keep_ratio)].set_index("row")
    reference = rows[rows["method"] == UNPRUNED].set_index("row").reindex(pruned.index)
    drop = (reference["accuracy"] - pruned["accuracy"]).fillna(0.0)
    table = pd.DataFrame({
        "row": pruned.index, "question": pruned["question"], "human answers": pruned["answers"].map(_answers_text),
        "unpruned answer": reference["answer"], "pruned answer": pruned["answer"],
        "unpruned accuracy %": (100 * reference["accuracy"]).round(1), "pruned accuracy %": (100 * pruned["accuracy"]).round(1),
        "drop (points)": (100 * drop).round(1), "differs": ~pruned["matches_unpruned"].astype(bool),
    }).reset_index(drop=True)
    if kind == DROPPED:
        table = table[table["drop (points)"] > 0]
    elif kind == DIFFER:
        table = table[table["differs"]]
    table = table.sort_values(["drop (points)", "differs", "row"], ascending=[False, False, True], kind="stable")
    return table[FAILURE_COLUMNS].head(MAX_LISTED).reset_index(drop=True)


def _run_ratio(run: EvaluationRun, keep_ratio) -> float:
    try:
        value = float(keep_ratio)
    except (TypeError, ValueError):
        value = None
    if value not in run.keep_ratios:
        raise ValueError(f"keep ratio must be one of {', '.join(f'{r:g}' for r in run.keep_ratios)} (this run's), "
                         f"got {keep_ratio!r}")
    return value


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


def example_view(run: EvaluationRun, row, method: str, keep_ratio) -> ExampleView:
    """The example at `row`, as `method` saw it at `keep_ratio`; ValueError for a row the run did not evaluate."""
    keep_ratio = _run_ratio(run, keep_ratio)
    try:
        row = int(row)
    except (TypeError, ValueError):
        raise ValueError(f"row must be the row number of an example, got {row!r}") from None
    rows = run.rows[(run.rows["row"] == row) & run.rows["error"].isna()]
    if rows.empty:
        raise ValueError(f"row {row} was not evaluated in run {run.name!r}")
    image = (run.folder.path / rows["image"].iloc[0]).resolve()
    if not image.is_relative_to(run.folder.path.resolve()) or not image.is_file():
        raise ValueError(f"the image of row {row} is missing from run {run.name!r}")
    settings = run.settings
    first = rows.iloc[0]
    lines = [f"**Row {row}** (question id `{first['question_id']}`): {first['question']}", "",
             f"Human answers: {_answers_text(first['answers']) or '(none)'}", "",
             "| method | keep ratio | answer | accuracy % |", "|---|---|---|---|"]
    shown = rows[(rows["method"] == UNPRUNED) | (rows["keep_ratio"] == keep_ratio)]
    for _, result in shown.iterrows():
        label = METHOD_LABELS[result["method"]] + (" ◀" if result["method"] == method else "")
        accuracy = "–" if pd.isna(result["accuracy"]) else f"{100 * result['accuracy']:.0f}"
        answer = str(result["answer"]).replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {label} | {result['keep_ratio']:g} | {answer} | {accuracy} |")
    return ExampleView(image, first["question"] + settings["prompt_suffix"], keep_ratio, list(settings["methods"]),
                       settings["threshold"], settings["temperature"], settings["iterations"], settings["fastv_layer"],
                       settings["max_new_tokens"], "\n".join(lines))


def served_copy(image: Path) -> str:
    """A copy of a run's image in the app's temp folder, which Gradio may serve (the runs folder is not exposed)."""
    SERVED_IMAGES.mkdir(parents=True, exist_ok=True)
    copy = SERVED_IMAGES / image.name  # names are content hashes
    if not copy.is_file():
        shutil.copyfile(image, copy)
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


def build_failures_tab(demo: gr.Blocks, runs_dir: Path | None, explorer: ExplorerInputs, app_model: str) -> None:
    """Add the Failures tab (inside the caller's `gr.Tabs` of `demo`) and wire a click on an example to `explorer`;
    each page load re-lists the runs and opens the first. Without a runs folder there is no tab (a public demo
    has no runs; an empty tab would only crowd a phone's tab bar)."""
    if runs_dir is None:
        return
    with gr.Tab("Failures"):
        gr.Markdown(FAILURES_TEXT)
        names = list_runs(runs_dir)
        with gr.Row():
            run_choice = gr.Dropdown(names, value=names[0] if names else None, label="Run", elem_id="failures-run", scale=4)
            refresh = gr.Button("Refresh list", size="sm", scale=1)
        description = gr.Markdown(elem_id="failures-description")
        accuracy = gr.Dataframe(headers=ACCURACY_COLUMNS, label="Accuracy per method and keep ratio", interactive=False,
                                elem_id="failures-accuracy")
        with gr.Row():
            method = gr.Dropdown([], label="Method", elem_id="failures-method")
            keep_ratio = gr.Dropdown([], label="Keep ratio", elem_id="failures-keep")
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
            image = served_copy(view.image)
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
        row_number = gr.Number(visible=False)
        open_button.click(open_example, [run_choice, row_number, method, keep_ratio], targets, api_name="failure_example")
        demo.load(list_run_names, None, run_choice, api_visibility="private").then(
            open_run, run_choice, opened, api_visibility="private")
