"""The benchmarks still run (tiny sizes, one round) and print the tables the README quotes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("floor", "gprune", "published", "gprune_app", "fastv", "tome", "l2norm", "random")


def table_rows(text: str, first_column: str) -> list[list[str]]:
    """Markdown table rows (header first) of the table whose first header cell is `first_column`."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    start = next(i for i, line in enumerate(lines) if line.strip("| ").startswith(first_column))
    rows = []
    for line in lines[start:]:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not set("".join(cells)) <= set("-"):
            rows.append(cells)
    return rows


def test_selection_benchmark_quick_prints_every_method():
    done = subprocess.run([sys.executable, "-m", "bench.selection", "--quick", "--no-write"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    from bench.selection import COLUMNS

    rows = table_rows(done.stdout, "layout")
    assert rows[0] == COLUMNS
    body = rows[1:]
    assert {row[2] for row in body} == set(METHODS)
    for row in body:
        assert all(float(row[i]) >= 0 for i in (3, 5, 6, 7)) and float(row[8]) > 0 and float(row[9]) > 0
    assert "Kept tokens differing from gprune_keep" in done.stdout


def test_prefill_benchmark_quick_runs_the_pipeline(capsys):
    from bench.prefill import COLUMNS, main

    assert main(["--quick", "--no-write"]) == 0
    rows = table_rows(capsys.readouterr().out, "method")
    assert rows[0] == COLUMNS
    assert [row[0] for row in rows[1:]] == ["unpruned", "gprune", "fastv", "tome", "l2norm", "random"]
    for row in rows[1:]:
        assert float(row[4]) >= 1.0 and float(row[5]) > 0  # FLOPs speedup ≥ 1, measured speedup positive


def test_batched_run_benchmark_quick_compares_both_paths(capsys):
    from bench.batched_run import COLUMNS, main

    assert main(["--quick", "--no-write"]) == 0
    rows = table_rows(capsys.readouterr().out, "model")
    assert rows[0] == COLUMNS and rows[1][0] == "tiny"
    ratio, limit = float(rows[1][5]), float(rows[1][7])
    assert ratio > 0 and 0 < limit <= 1 and rows[1][-1] == "yes"  # the batched answers are the sequential ones
