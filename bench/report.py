"""`python -m bench.report`: one summary (bench/results/summary.md) of whatever results exist, goals first."""

from __future__ import annotations

import json
import sys

from .common import RESULTS, machine_line, markdown_table


def _load(name: str):
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def goals_table(selection, prefill, memory=None, scaling=None) -> str:
    rows = []
    if selection and selection.get("goals"):
        g = selection["goals"]
        rows.append([f"G-Prune vs published formulation ({g['layout']})", f"≥ {g['goal_speedup_vs_published']}×",
                     f"{g['gprune_vs_published_speedup']:.2f}×", "met" if g["met_published"] else "missed"])
        rows.append([f"G-Prune ÷ bare cosine GEMM ({g['layout']})", f"≤ {g['goal_max_vs_floor']}×",
                     f"{g['gprune_vs_floor']:.2f}×", "met" if g["met_floor"] else "missed"])
    if memory:
        units = {c["iterations"]: c["nn_units"] for c in memory["cases"] if c["case"] == "gprune"}
        if units:
            spread = max(units.values()) - min(units.values())
            rows.append([f"G-Prune peak extra memory, I = {' / '.join(map(str, sorted(units)))} "
                         f"({memory['layout']['label']}, n×n fp32 units)", "a couple, flat in I",
                         " / ".join(f"{units[i]:.2f}" for i in sorted(units)),
                         "flat" if spread < 0.25 else "grows with I"])
    if prefill and prefill.get("goal"):
        for method, verdict in prefill["goal"].items():
            rows.append([f"{method}: measured ÷ FLOPs prefill speedup at keep 0.25", "≥ 0.8",
                         f"{verdict['measured_over_flops']:.2f}", "met" if verdict["met"] else "missed"])
    if scaling:
        figures = scaling["results"]
        rows.append(["evaluation examples/s, 2 vs 1 processes (one thread each, tiny model)", "≥ 1.6×",
                     f"{figures['speedup']:.2f}×", "met" if figures["met"] else "missed"])
    return markdown_table(["goal", "target", "measured", "verdict"], rows) if rows else "(no results yet)"


def main(argv=None) -> int:
    selection, memory, prefill = _load("selection"), _load("memory"), _load("prefill")
    app, scaling = _load("app_latency"), _load("evaluate_scaling")
    lines = ["# Benchmark summary", ""]
    machine = next((r["machine"] for r in (selection, prefill, memory, app) if r), None)
    if machine:
        lines += [f"Machine: {machine_line(machine)}.", ""]
    lines += ["## Goals", "", goals_table(selection, prefill, memory, scaling), ""]
    for name, title in (("selection", "Selection cost"), ("memory", "Memory"), ("prefill", "Prefill"),
                        ("batched_run", "Batched Run"), ("gpu_prefill", "GPU prefill"), ("app_latency", "App latency"),
                        ("evaluate_scaling", "Evaluation throughput"), ("import_time", "Import time")):
        path = RESULTS / f"{name}.md"
        if path.exists():
            text = path.read_text().split("## torch.profiler")[0].rstrip()
            lines += [f"## {title} (bench/results/{name}.md)", "", text.replace("\n# ", "\n### ").lstrip("# "), ""]
        elif name == "gpu_prefill":
            lines += ["## GPU prefill", "", "Not measured: no CUDA device in the run that wrote these results.", ""]
    out = RESULTS / "summary.md"
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines).rstrip() + "\n")
    print(out.read_text())
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
