"""Peak extra memory of each selection, one fresh process per measurement.

    python -m bench.memory           # 672×672 layout (2,928 tokens, graphs of 576 and 2,304), ~4 minutes
    python -m bench.memory --quick   # a small layout, one process per case

torch's CPU allocations are invisible to tracemalloc, so each case runs in its own subprocess: load the
features (and, for FastV, the attention weights), warm the method up on a small input (libraries, thread
pools), reset the kernel's peak-RSS counter (`echo 5 > /proc/self/clear_refs`, so earlier peaks such as
imports cannot hide this one; `getrusage` `ru_maxrss` where that is not allowed), read the resident set
size, run the selection once and read the peak (`VmHWM`). Extra = peak − RSS just before. The children run with
`MALLOC_MMAP_THRESHOLD_=65536`, so every large buffer is its own mapping, returned on free: RSS then
follows the live tensors instead of glibc's free lists. The result is reported in units of one n×n fp32
matrix of the larger graph (n = 2,304 on this layout), for G-Prune at 1, 5 and 20 iterations.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from .common import machine, machine_line, markdown_table, median, packed_features, write_results

ITERATIONS = (1, 5, 20)
CASES = ([("floor", 0)] + [("gprune", i) for i in ITERATIONS] + [("published", i) for i in ITERATIONS]
         + [("gprune_app", 5), ("fastv", 0), ("tome", 0), ("l2norm", 0), ("random", 0)])
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS (Linux ≥ 4.0); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def _runner(case: str, iterations: int, d: int, keep_ratio: float, longest: int):
    """`run(features, rows, cols, base)` for one case; `longest`: the packed length FastV's prompt must hold."""
    from gprune.baselines import l2norm_select, random_select
    from gprune.graph import gprune_keep, gprune_select
    from gprune.tome import tome_select

    from .reference_impl import cosine_floor, published_keep

    graph = dict(iterations=iterations, threshold=0.5, temperature=0.03)
    if case == "floor":
        return lambda f, r, c, b: cosine_floor(f, r, c, b)
    if case == "gprune":
        return lambda f, r, c, b: gprune_keep(f, r, c, keep_ratio, base_tokens=b, **graph)
    if case == "gprune_app":
        return lambda f, r, c, b: gprune_select(f, r, c, keep_ratio, base_tokens=b, **graph)
    if case == "published":
        return lambda f, r, c, b: published_keep(f, r, c, keep_ratio, base_tokens=b, **graph)
    if case == "tome":
        return lambda f, r, c, b: tome_select(f, r, c, keep_ratio, base_tokens=b)
    if case == "l2norm":
        return lambda f, r, c, b: l2norm_select(f, r, c, keep_ratio, base_tokens=b)
    if case == "random":
        return lambda f, r, c, b: random_select(f.shape[0], r, c, keep_ratio, base_tokens=b)
    if case == "fastv":
        from gprune.llm import query_attention
        from gprune.packed import keep_top_per_view

        from .selection import TEXT_AFTER, TEXT_BEFORE, fastv_scorer

        heads = 32 if d >= 4096 else 4
        attention, normed, embeddings = fastv_scorer(d, heads, heads // 4, TEXT_BEFORE + longest + TEXT_AFTER)

        positions = torch.arange(normed.shape[1])[None]
        real = torch.ones_like(positions, dtype=torch.bool)

        @torch.inference_mode()
        def fastv(f, r, c, b):
            n = f.shape[0]
            query = torch.tensor([TEXT_BEFORE + n + TEXT_AFTER - 1])
            row = query_attention(attention, normed, embeddings, positions, real, query, None)[0]
            return keep_top_per_view(row[TEXT_BEFORE : TEXT_BEFORE + n], r, c, keep_ratio, b)

        return fastv
    raise ValueError(f"unknown case {case!r}")


def child(args) -> None:
    features = torch.from_numpy(np.load(args.features))
    run = _runner(args.child, args.iterations, features.shape[1], args.keep_ratio, features.shape[0])
    # Warm-up on a small block (16 base tokens, 4×4 grid) so that lazily loaded kernels and thread
    # pools are in the baseline, not in the measurement.
    run(features[: 16 + 4 * 5].clone(), 4, 4, 16)
    gc.collect()
    reset = _reset_peak()
    before = _status_kib("VmRSS") * 1024
    peak_before = (_status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    result = run(features, args.rows, args.cols, args.base)
    peak_after = (_status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    del result
    print(json.dumps({"case": args.child, "iterations": args.iterations, "rss_before": before,
                      "peak_before": peak_before, "peak_after": peak_after, "extra": peak_after - before,
                      "peak_counter": "VmHWM reset" if reset else "ru_maxrss",
                      "hidden": peak_after <= peak_before and peak_before > before}))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small layout, one process per case")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per case (median)")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--iterations", type=int, default=5, help=argparse.SUPPRESS)
    parser.add_argument("--features", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cols", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--base", type=int, default=576, help=argparse.SUPPRESS)
    parser.add_argument("--keep-ratio", type=float, default=0.5, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        child(args)
        return 0
    from gprune.layout import token_layout
    from gprune.tiny import GRID_PINPOINTS

    info = machine()
    if args.quick:
        rows, cols, base, d, repeats, label = 12, 12, 64, 256, 1, "quick 12×12"
    else:
        layout = token_layout((672, 672), GRID_PINPOINTS)
        rows, cols, base, d, repeats, label = layout.rows, layout.cols, layout.base_tokens, 4096, args.repeats, "672×672"
    features = packed_features(rows, cols, d, base, seed=1)
    n_graph = max(base, rows * cols)
    unit_nn = n_graph * n_graph * 4
    unit_nd = n_graph * d * 4
    cases = CASES
    samples: dict[tuple[str, int], list[dict]] = {case: [] for case in cases}
    env = {**os.environ, **CHILD_ENV}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "features.npy"
        np.save(path, features.numpy())
        for repeat in range(repeats):
            for case, iterations in cases:
                command = [sys.executable, "-m", "bench.memory", "--child", case, "--iterations", str(iterations),
                           "--features", str(path), "--rows", str(rows), "--cols", str(cols), "--base", str(base)]
                done = subprocess.run(command, capture_output=True, text=True, env=env,
                                      cwd=Path(__file__).resolve().parents[1], check=False)
                if done.returncode != 0:
                    raise RuntimeError(f"{case} (I={iterations}) failed:\n{done.stderr[-3000:]}")
                samples[(case, iterations)].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"  repeat {repeat + 1}/{repeats} done", file=sys.stderr, flush=True)

    rows_out, table_rows = [], []
    for (case, iterations), runs in samples.items():
        extra = median([r["extra"] for r in runs])
        hidden = any(r["hidden"] for r in runs)
        entry = {"case": case, "iterations": iterations, "extra_bytes": extra, "extra_mib": extra / 2**20,
                 "nn_units": extra / unit_nn, "nd_units": extra / unit_nd, "peak_hidden_by_earlier_peak": hidden,
                 "samples": runs}
        rows_out.append(entry)
        table_rows.append([case, iterations if case in ("gprune", "published", "gprune_app") else "–",
                           f"{'≤ ' if hidden else ''}{entry['extra_mib']:.1f}", f"{entry['nn_units']:.2f}",
                           f"{entry['nd_units']:.2f}"])
    lines = [f"# Peak extra memory of one selection ({label}: {features.shape[0]} tokens, d = {d}, fp32, CPU)", "",
             f"Machine: {machine_line(info)}.", "",
             f"Median of {repeats} fresh processes per case; extra = peak RSS − RSS before the call "
             f"(peak = VmHWM after resetting it; glibc `MALLOC_MMAP_THRESHOLD_=65536`). One n×n fp32 matrix of the larger graph "
             f"(n = {n_graph}) = {unit_nn / 2**20:.1f} MiB; that graph's n×d fp32 features = {unit_nd / 2**20:.1f} MiB.", "",
             markdown_table(["case", "iterations", "extra MiB", "× n×n fp32", "× n×d fp32"], table_rows)]
    markdown = "\n".join(lines)
    print(markdown)
    if not args.no_write:
        data = {"machine": info, "layout": {"label": label, "rows": rows, "cols": cols, "base": base, "d": d,
                                            "tokens": int(features.shape[0]), "largest_graph": n_graph},
                "unit_nn_bytes": unit_nn, "unit_nd_bytes": unit_nd, "child_env": CHILD_ENV, "cases": rows_out}
        for out in write_results("memory_quick" if args.quick else "memory", data, markdown):
            print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
