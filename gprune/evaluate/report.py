"""The paper-style table of a run: per method × keep ratio, accuracy, agreement with the unpruned answer,
kept tokens and FLOPs, computed from the merged result rows (`summary.json` and the printed table)."""

from __future__ import annotations

import statistics

from ..analysis import METHOD_LABELS
from .metric import METRIC_LABELS
from .store import UNPRUNED


def _mean(values: list) -> float | None:
    return statistics.fmean(values) if values else None


def summarize(rows: list[dict], methods: list[str], keep_ratios: list[float]) -> dict:
    """Counts and one entry per (method, keep ratio), the unpruned reference first.

    `rows` are result rows (store.RESULT_SCHEMA). Rows of failed examples are counted, never averaged.
    Each entry: `examples` evaluated, `scored` (with reference answers), `accuracy` (mean, 0..1, None
    without answers), `relative_accuracy` (÷ unpruned accuracy on the same examples), `same_answer`
    (share agreeing with the unpruned answer), mean `visual_tokens` / `visual_tokens_kept` / `flops_ratio`,
    and the median `prefill_seconds`.
    """
    groups: dict[tuple[str, float], list[dict]] = {}
    for row in rows:
        if row["error"] is None:
            groups.setdefault((row["method"], row["keep_ratio"]), []).append(row)
    entries = []
    for method, ratio in [(UNPRUNED, 1.0)] + [(m, r) for r in keep_ratios for m in methods]:
        group = groups.get((method, ratio), [])
        scores = [row["accuracy"] for row in group if row["accuracy"] is not None]
        entries.append({
            "method": method,
            "keep_ratio": ratio,
            "examples": len(group),
            "scored": len(scores),
            "accuracy": _mean(scores),
            "same_answer": _mean([float(row["matches_unpruned"]) for row in group]),
            "visual_tokens": _mean([row["visual_tokens"] for row in group]),
            "visual_tokens_kept": _mean([row["visual_tokens_kept"] for row in group]),
            "flops_ratio": _mean([row["flops_ratio"] for row in group]),
            "prefill_seconds": statistics.median([row["prefill_seconds"] for row in group]) if group else None,
        })
    reference = entries[0]["accuracy"]
    for entry in entries:
        entry["relative_accuracy"] = entry["accuracy"] / reference if entry["accuracy"] is not None and reference else None
    examples = {row["row"] for row in rows}
    failed = {row["row"] for row in rows if row["error"] is not None}
    scored = {row["row"] for row in rows if row["error"] is None and row["answers"]}
    return {"examples": len(examples), "failed_examples": len(failed), "examples_with_answers": len(scored),
            "table": entries}


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
