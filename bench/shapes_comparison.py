"""The paper's comparison in miniature, on the `shapes` model: accuracy against keep ratio per method.

Reads the `summary.json` of evaluator runs (made with `python -m gprune.evaluate --model shapes ...`, see the
README) and writes bench/results/shapes_comparison.md (one table per run) and shapes_comparison.png (one
panel per run, as the paper's Figures 3 and 4). It measures nothing itself.

    python -m bench.shapes_comparison runs/shapes-easy-vqa runs/shapes-scenes
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from gprune.analysis import METHOD_LABELS
from gprune.evaluate.report import format_table
from viz import accuracy_plot

from .common import RESULTS

NOTE = "Small model trained here on synthetic shapes (not 7B)"


def panel(summary: dict):
    """The run's plot: accuracy % per method at each keep ratio, and the unpruned accuracy."""
    ratios = sorted({entry["keep_ratio"] for entry in summary["table"] if entry["method"] != "unpruned"}, reverse=True)
    by_key = {(entry["method"], entry["keep_ratio"]): entry for entry in summary["table"]}
    methods = list(dict.fromkeys(entry["method"] for entry in summary["table"] if entry["method"] != "unpruned"))
    accuracy = {METHOD_LABELS[m]: np.array([_percent(by_key.get((m, r))) for r in ratios]) for m in methods}
    title = f"{Path(summary['dataset']['source']).stem}: {summary['examples_with_answers']:,} questions"
    return accuracy_plot(np.array(ratios), accuracy, _percent(by_key[("unpruned", 1.0)]), title, note=NOTE)


def per_kind_table(run: Path, summary: dict) -> str:
    """Accuracy % per question family (the built-in test sets' `kind` column) for each method and keep ratio."""
    import pyarrow.parquet as pq

    kinds = pq.read_table(summary["dataset"]["source"], columns=["kind"])["kind"].to_pylist()
    results = pq.read_table(run / "results.parquet", columns=["row", "method", "keep_ratio", "accuracy"]).to_pylist()
    cells: dict[tuple[str, float], dict[str, list[float]]] = {}
    for result in results:
        if result["accuracy"] is not None:
            key = (result["method"], result["keep_ratio"])
            cells.setdefault(key, {}).setdefault(kinds[result["row"]], []).append(result["accuracy"])
    families = sorted({kind for by_kind in cells.values() for kind in by_kind})
    count = {kind: len(cells[("unpruned", 1.0)].get(kind, [])) for kind in families}
    lines = ["| keep ratio | method | " + " | ".join(f"{kind} ({count[kind]})" for kind in families) + " |",
             "|---|---|" + "---|" * len(families)]
    for entry in summary["table"]:
        by_kind = cells.get((entry["method"], entry["keep_ratio"]), {})
        values = [f"{100 * np.mean(by_kind[kind]):.1f}" if by_kind.get(kind) else "–" for kind in families]
        lines.append(f"| {entry['keep_ratio']:g} | {METHOD_LABELS[entry['method']]} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def _percent(entry: dict | None) -> float:
    return math.nan if entry is None or entry["accuracy"] is None else 100 * entry["accuracy"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.shapes_comparison", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="evaluator run folders (each with summary.json)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    summaries = [json.loads((run / "summary.json").read_text(encoding="utf-8")) for run in args.runs]
    pictures = [panel(summary) for summary in summaries]
    height = max(picture.height for picture in pictures)
    row = np.concatenate([np.pad(np.asarray(p.convert("RGB")), ((0, height - p.height), (0, 0), (0, 0)),
                                 constant_values=255) for p in pictures], axis=1)
    from PIL import Image

    args.out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(row).save(args.out / "shapes_comparison.png", optimize=True)
    text = [f"# {NOTE}", ""]
    for run, summary in zip(args.runs, summaries):
        command = json.loads((run / "run.json").read_text(encoding="utf-8")).get("command") if (run / "run.json").is_file() else None
        text += [f"## {run.name}", "", f"`{command}`" if command else "", "", format_table(summary), "",
                 "Accuracy % per question family (questions of each family in brackets):", "",
                 per_kind_table(run, summary), ""]
    (args.out / "shapes_comparison.md").write_text("\n".join(text), encoding="utf-8")
    print("\n".join(text))
    print(f"wrote {args.out / 'shapes_comparison.md'} and {args.out / 'shapes_comparison.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
