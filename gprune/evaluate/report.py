"""The paper-style table of a run: per method × keep ratio, accuracy, agreement with the unpruned answer,
kept tokens and FLOPs, computed from the merged result rows (`summary.json` and the printed table)."""

from __future__ import annotations

import pandas as pd

from ..analysis import METHOD_LABELS
from .metric import METRIC_LABELS
from .store import UNPRUNED

# Result columns that must hold numbers (or nulls); True/False count as 1/0.
NUMBER_COLUMNS = ("accuracy", "matches_unpruned", "visual_tokens", "visual_tokens_kept", "flops_ratio", "prefill_seconds")


def summarize(rows: pd.DataFrame | list[dict], methods: list[str], keep_ratios: list[float]) -> dict:
    """Counts and one entry per (method, keep ratio), the unpruned reference first; vectorised (pandas), so
    the Failures tab summarises its DataFrame of a run without a Python loop over the rows.

    `rows` are result rows (store.RESULT_SCHEMA), as a DataFrame or a list of dicts. Rows of failed examples
    are counted, never averaged. Each entry: `examples` evaluated, `scored` (with reference answers), `accuracy`
    (mean, 0..1, None without answers), `relative_accuracy` (÷ unpruned accuracy on the same examples),
    `same_answer` (share agreeing with the unpruned answer), mean `visual_tokens` / `visual_tokens_kept` /
    `flops_ratio`, and the median `prefill_seconds`. ValueError if a number column holds text.
    """
    frame = pd.DataFrame(rows, columns=["row", "method", "keep_ratio", "answers", "error", *NUMBER_COLUMNS])
    failed = frame["error"].notna()
    numbers = frame.loc[~failed, ["method", "keep_ratio"]].assign(
        **{column: pd.to_numeric(frame.loc[~failed, column]).astype(float) for column in NUMBER_COLUMNS})
    stats = numbers.groupby(["method", "keep_ratio"]).agg(
        examples=("method", "size"), scored=("accuracy", "count"), accuracy=("accuracy", "mean"),
        same_answer=("matches_unpruned", "mean"), visual_tokens=("visual_tokens", "mean"),
        visual_tokens_kept=("visual_tokens_kept", "mean"), flops_ratio=("flops_ratio", "mean"),
        prefill_seconds=("prefill_seconds", "median"))
    entries = []
    for method, ratio in [(UNPRUNED, 1.0)] + [(m, r) for r in keep_ratios for m in methods]:
        found = stats.loc[(method, ratio)] if (method, ratio) in stats.index else None
        entry = {"method": method, "keep_ratio": ratio}
        for key in ("examples", "scored"):
            entry[key] = 0 if found is None else int(found[key])
        for key in ("accuracy", "same_answer", "visual_tokens", "visual_tokens_kept", "flops_ratio", "prefill_seconds"):
            entry[key] = None if found is None or pd.isna(found[key]) else float(found[key])
        entries.append(entry)
    reference = entries[0]["accuracy"]
    for entry in entries:
        entry["relative_accuracy"] = entry["accuracy"] / reference if entry["accuracy"] is not None and reference else None
    with_answers = ~failed & (frame["answers"].astype(object).str.len() > 0)
    return {"examples": frame["row"].nunique(), "failed_examples": frame.loc[failed, "row"].nunique(),
            "examples_with_answers": frame.loc[with_answers, "row"].nunique(), "table": entries}


def _percent(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}"


def format_table(summary: dict) -> str:
    """The printed table: a title line, an optional warning, then a Markdown table (accuracies in %)."""
    dataset = summary["dataset"]
    lines = [f"{summary['model']} on {dataset['source']} ({dataset['split']}): {summary['examples']} examples, "
             f"{summary['failed_examples']} failed, {summary['examples_with_answers']} with reference answers; "
             f"{METRIC_LABELS[summary['metric']]}"]
    if summary["random_weights"]:
        lines.append("note: random-weight toy model: answers and accuracies are meaningless; token counts and "
                     "FLOPs are real")
    header = ["keep ratio", "method", "tokens kept", "FLOPs", "accuracy %", "% of unpruned", "same answer %",
              "prefill ms", "examples"]
    body = []
    for entry in summary["table"]:
        kept, total = entry["visual_tokens_kept"], entry["visual_tokens"]
        body.append([
            f"{entry['keep_ratio']:g}", METHOD_LABELS[entry["method"]],
            "–" if kept is None else f"{kept:,.0f} / {total:,.0f}",
            _percent(entry["flops_ratio"]), _percent(entry["accuracy"]), _percent(entry["relative_accuracy"]),
            _percent(entry["same_answer"]),
            "–" if entry["prefill_seconds"] is None else f"{entry['prefill_seconds'] * 1e3:.0f}",
            str(entry["examples"]),
        ])
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    table = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |" for row in [header, *body]]
    table.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(lines + table)
