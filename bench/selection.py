"""Selection cost of every method on real LLaVA-NeXT packed layouts, side by side.

    python -m bench.selection            # real sizes (d = 4096, three layouts): 2 min quiet, up to 15 min busy
    python -m bench.selection --quick    # tiny sizes, one round: the CI smoke test

Cases, all timed in the same interleaved rounds on the same inputs (fp32, CPU):
- `gprune`: `gprune.graph.gprune_keep` (what the pipeline's selection computes, without the UI's
  neighbour lists); `gprune_app`: `gprune_select` with the UI's 16 strongest sources per token.
- `published`: G-Prune as the published code formulates it (matrix power, −5000 fill, softmax),
  re-implemented in bench/reference_impl.py.
- `floor`: normalise + `X̂X̂ᵀ` of both graphs, the physical floor of any G-Prune implementation.
- `fastv`: FastV's scoring (`query_attention` on a 7B-sized attention: hidden 4096, 32 heads,
  8 KV heads, the whole prompt) + its top-k; `tome`, `l2norm`, `random`: the project's selectors.

Goals (2,340-token layout): G-Prune ≥ 1.8× faster than the published formulation and ≤ 1.2× the floor.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

from gprune.baselines import l2norm_select, random_select
from gprune.graph import gprune_keep, gprune_select
from gprune.layout import token_layout
from gprune.llm import query_attention
from gprune.packed import block_positions, keep_top_per_view
from gprune.tiny import GRID_PINPOINTS
from gprune.tome import tome_select

from .common import (Quiet, contention_line, interleaved, machine, machine_line, markdown_table, median, ms, packed_features,
                     paired_ratio, spread, write_results)
from .reference_impl import cosine_floor, published_keep

COLUMNS = ["layout", "tokens", "method", "median ms", "IQR ms", "min ms", "× floor", "× floor (mins)",
           "published ÷ this", "published ÷ this (mins)"]
GOAL_VS_PUBLISHED, GOAL_VS_FLOOR = 1.8, 1.2
TEXT_BEFORE, TEXT_AFTER = 5, 20  # prompt tokens around the image, for FastV's sequence


@dataclass(frozen=True)
class Layout:
    name: str
    rows: int
    cols: int
    base_tokens: int = 576

    @property
    def n(self) -> int:
        return self.base_tokens + self.rows * (self.cols + 1)


def real_layouts() -> list[Layout]:
    """Three real LLaVA-NeXT layouts, from the project's own geometry (gprune.layout.token_layout)."""
    layouts = []
    for name, (height, width) in (("640×480", (480, 640)), ("672×672", (672, 672)), ("300×1000 (tall)", (1000, 300))):
        layout = token_layout((height, width), GRID_PINPOINTS)
        layouts.append(Layout(name, layout.rows, layout.cols, layout.base_tokens))
    return layouts


QUICK_LAYOUTS = [Layout("quick 4×6", 4, 6, 16), Layout("quick 6×3", 6, 3, 16)]


def fastv_scorer(hidden: int, heads: int, kv_heads: int, seq: int, seed: int = 0):
    """A real-size attention block + RoPE + normed hidden states of a `seq`-token prompt."""
    config = LlamaConfig(hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         intermediate_size=4 * hidden, num_hidden_layers=1, vocab_size=16,
                         max_position_embeddings=max(4096, seq))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        attention = LlamaAttention(config, layer_idx=0).eval()
        normed = torch.randn(1, seq, hidden)
    rotary = LlamaRotaryEmbedding(config)
    position_embeddings = rotary(normed, torch.arange(seq)[None])
    return attention, normed, position_embeddings


def build_cases(layout: Layout, features: torch.Tensor, args, scorer) -> dict:
    rows, cols, base = layout.rows, layout.cols, layout.base_tokens
    graph = dict(iterations=args.iterations, threshold=0.5, temperature=0.03, base_tokens=base)
    attention, normed, position_embeddings = scorer
    image_start = TEXT_BEFORE
    positions = torch.arange(normed.shape[1])[None]
    real = torch.ones_like(positions, dtype=torch.bool)
    query_index = torch.tensor([normed.shape[1] - 1])

    @torch.inference_mode()
    def fastv():
        row = query_attention(attention, normed, position_embeddings, positions, real, query_index, None)[0]
        return keep_top_per_view(row[image_start : image_start + layout.n], rows, cols, args.keep_ratio, base)

    cases = {
        "floor": lambda: cosine_floor(features, rows, cols, base),
        "gprune": lambda: gprune_keep(features, rows, cols, args.keep_ratio, **graph),
        "published": lambda: published_keep(features, rows, cols, args.keep_ratio, **graph),
        "gprune_app": lambda: gprune_select(features, rows, cols, args.keep_ratio, **graph),
        "fastv": fastv,
        "tome": lambda: tome_select(features, rows, cols, args.keep_ratio, base_tokens=base),
        "l2norm": lambda: l2norm_select(features, rows, cols, args.keep_ratio, base_tokens=base),
        "random": lambda: random_select(features.shape[0], rows, cols, args.keep_ratio, base_tokens=base),
    }
    return cases


def check_agreement(layout: Layout, features: torch.Tensor, args) -> dict:
    """The compared G-Prune implementations must keep the same tokens (up to float near-ties)."""
    graph = dict(iterations=args.iterations, threshold=0.5, temperature=0.03, base_tokens=layout.base_tokens)
    ours = gprune_keep(features, layout.rows, layout.cols, args.keep_ratio, **graph).numpy()
    out = {}
    for name, fn in (("published", published_keep),):
        other = fn(features, layout.rows, layout.cols, args.keep_ratio, **graph).numpy()
        out[name] = int(len(np.setdiff1d(ours, other)))
    return out


def breakdown(layout: Layout, features: torch.Tensor, args, rounds: int) -> dict[str, tuple[float, float]] | None:
    """(median, min) seconds of each step of gprune_keep, timed by calling gprune/graph.py's own building
    blocks (`unit_and_norm`, `edge_weights`, `propagate`) in the order gprune_select does. The GEMMs that
    `edge_weights` runs (upper block triangle) are also timed alone, to split it into GEMM and the rest.
    Returns None if graph.py no longer has those functions (the benchmark then shows the profile only)."""
    import gprune.graph as graph

    if not all(hasattr(graph, name) for name in ("unit_and_norm", "edge_weights", "propagate")):
        return None
    block = getattr(graph, "BLOCK_ROWS", None)
    rows, cols, base = layout.rows, layout.cols, layout.base_tokens
    steps: dict[str, list[float]] = {}

    def run_once():
        timings: dict[str, float] = {}

        def tick(name, start):
            now = time.perf_counter()
            timings[name] = timings.get(name, 0.0) + now - start
            return now

        t = time.perf_counter()
        scores = torch.full((features.shape[0],), float("nan"))
        for positions in block_positions(rows, cols, base)[:2]:
            view = features[positions]
            t = tick("gather graph rows (n×d copy)", t)
            unit, norm = graph.unit_and_norm(view)
            t = tick("unit_and_norm (norms, finiteness, normalised copy)", t)
            weights, row_sum, degree = graph.edge_weights(unit, 0.5, 0.03)
            t = tick("edge_weights (GEMM + threshold, exp, mask, sums)", t)
            n = unit.shape[0]
            for start in range(0, n, block or n):
                unit[start : start + (block or n)] @ unit[start:].T
            t = tick("  of which: its GEMMs alone (timed again)", t)
            scores[positions] = (graph.propagate(weights, row_sum, norm, args.iterations) / degree)[-1]
            t = tick(f"propagate ({args.iterations} mat-vec)", t)
            del weights, unit, view
            t = tick("free", t)
        keep_top_per_view(scores, rows, cols, args.keep_ratio, base)
        tick("top-k", t)
        return timings

    try:
        run_once()
    except (TypeError, ValueError):  # the internals changed signature: leave the breakdown out
        return None
    for _ in range(rounds):
        for name, value in run_once().items():
            steps.setdefault(name, []).append(value)
    return {name: (median(values), min(values)) for name, values in steps.items()}


def profile_table(layout: Layout, features: torch.Tensor, args) -> str:
    from torch.profiler import ProfilerActivity, profile

    graph = dict(iterations=args.iterations, threshold=0.5, temperature=0.03, base_tokens=layout.base_tokens)
    gprune_keep(features, layout.rows, layout.cols, args.keep_ratio, **graph)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            gprune_keep(features, layout.rows, layout.cols, args.keep_ratio, **graph)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.selection", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round, no profile (CI smoke test)")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timed rounds (after one warm-up round)")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--keep-ratio", type=float, default=0.5)
    parser.add_argument("--dim", type=int, default=4096, help="feature width d (post-projector: 4096 for 7B/8B)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not write bench/results")
    parser.add_argument("--no-quiet", action="store_true", help="time every call as it comes (no waiting for a quiet machine)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.dim = 1, 64
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(0)
    info = machine()
    layouts = QUICK_LAYOUTS if args.quick else real_layouts()
    fastv_shape = (64, 4, 2) if args.quick else (4096, 32, 8)
    print(f"machine: {machine_line(info)}", flush=True)
    results, table_rows, goals = [], [], {}
    quiet = Quiet(enabled=not args.no_quiet and not args.quick)
    extras = {}
    for layout_index, layout in enumerate(layouts):
        features = packed_features(layout.rows, layout.cols, args.dim, layout.base_tokens, seed=layout_index)
        seq = TEXT_BEFORE + layout.n + TEXT_AFTER
        scorer = fastv_scorer(*fastv_shape, seq)
        agreement = check_agreement(layout, features, args)
        cases = build_cases(layout, features, args, scorer)
        print(f"{layout.name}: {layout.n} tokens (base {layout.base_tokens}, grid {layout.rows}×{layout.cols}), "
              f"{args.rounds} rounds …", file=sys.stderr, flush=True)
        load_before = os.getloadavg()
        times, foreign = interleaved(cases, rounds=args.rounds, warmup=1, quiet=quiet)
        entry = {"layout": layout.name, "rows": layout.rows, "cols": layout.cols, "base_tokens": layout.base_tokens,
                 "tokens": layout.n, "fastv_sequence": seq,
                 "load_average_before": load_before, "load_average_after": os.getloadavg(),
                 "kept_tokens_differing_from_gprune": agreement,
                 "seconds": times, "foreign_cpu_share": foreign, "methods": {}}
        for name, values in times.items():
            low, high = spread(values)
            stats = {"median_s": median(values), "q1_s": low, "q3_s": high, "min_s": min(values),
                     "vs_floor": paired_ratio(values, times["floor"]),
                     "vs_floor_of_minima": min(values) / min(times["floor"]),
                     "published_speedup": paired_ratio(times["published"], values),
                     "published_speedup_of_minima": min(times["published"]) / min(values)}
            entry["methods"][name] = stats
            table_rows.append([layout.name, layout.n, name, ms(stats["median_s"]), f"{ms(low)}–{ms(high)}",
                               ms(stats["min_s"]), f"{stats['vs_floor']:.2f}", f"{stats['vs_floor_of_minima']:.2f}",
                               f"{stats['published_speedup']:.2f}", f"{stats['published_speedup_of_minima']:.2f}"])
        results.append(entry)
        if layout_index == 0 and not args.quick:
            goals = {
                "layout": layout.name,
                "gprune_vs_published_speedup": entry["methods"]["gprune"]["published_speedup"],
                "gprune_vs_floor": entry["methods"]["gprune"]["vs_floor"],
                "gprune_vs_published_speedup_of_minima": entry["methods"]["gprune"]["published_speedup_of_minima"],
                "gprune_vs_floor_of_minima": entry["methods"]["gprune"]["vs_floor_of_minima"],
                "goal_speedup_vs_published": GOAL_VS_PUBLISHED,
                "goal_max_vs_floor": GOAL_VS_FLOOR,
            }
            goals["met_published"] = goals["gprune_vs_published_speedup"] >= GOAL_VS_PUBLISHED
            goals["met_floor"] = goals["gprune_vs_floor"] <= GOAL_VS_FLOOR
            print("profiling G-Prune steps …", file=sys.stderr, flush=True)
            steps = breakdown(layout, features, args, rounds=9)
            if steps is not None:
                extras["breakdown_ms"] = {k: {"median": m * 1e3, "min": low * 1e3} for k, (m, low) in steps.items()}
            extras["profile"] = profile_table(layout, features, args)
        del scorer

    lines = [f"# Selection cost (fp32, CPU, d = {args.dim}, I = {args.iterations}, keep ratio {args.keep_ratio})", "",
             f"Machine: {machine_line(info)}.", "",
             f"{args.rounds} interleaved rounds after one warm-up. `× floor` and `published ÷ this` are medians of "
             "per-round ratios (each round runs every case once, rotated); the `(mins)` columns divide the fastest "
             "run of each case, a cross-check that ignores rounds slowed by other jobs. 1-minute load average "
             "before / after each layout: " + "; ".join(
                 f"{e['layout']} {e['load_average_before'][0]:.2f} / {e['load_average_after'][0]:.2f}" for e in results) + ". "
             + contention_line([v for e in results for values in e["foreign_cpu_share"].values() for v in values])
             + " " + quiet.summary(), "",
             markdown_table(COLUMNS, table_rows)]
    if goals:
        lines += ["", f"Goals on {goals['layout']}: published ÷ G-Prune = {goals['gprune_vs_published_speedup']:.2f} "
                  f"(goal ≥ {GOAL_VS_PUBLISHED}: {'met' if goals['met_published'] else 'MISSED'}); "
                  f"G-Prune ÷ floor = {goals['gprune_vs_floor']:.2f} (goal ≤ {GOAL_VS_FLOOR}: "
                  f"{'met' if goals['met_floor'] else 'MISSED'}). Ratios of the fastest runs: "
                  f"{goals['gprune_vs_published_speedup_of_minima']:.2f} and {goals['gprune_vs_floor_of_minima']:.2f}."]
    for entry in results:
        lines.append(f"Kept tokens differing from gprune_keep on {entry['layout']}: {entry['kept_tokens_differing_from_gprune']}.")
    if "breakdown_ms" in extras:
        steps = extras["breakdown_ms"]
        counted = {k: v for k, v in steps.items() if not k.startswith(" ")}  # "of which" rows are inside others
        total = sum(v["median"] for v in counted.values())
        total_min = sum(v["min"] for v in counted.values())
        lines += ["", f"## Where gprune_keep's time goes ({results[0]['layout']}, both graphs, 9 runs)", "",
                  markdown_table(["step", "median ms", "share", "min ms", "share of mins"],
                                 [[k, f"{v['median']:.1f}", f"{v['median'] / total:.0%}", f"{v['min']:.1f}",
                                   f"{v['min'] / total_min:.0%}"] for k, v in steps.items()]
                                 + [["total", f"{total:.1f}", "100%", f"{total_min:.1f}", "100%"]]),
                  "", "## torch.profiler, 3 × gprune_keep", "", "```", extras["profile"].rstrip(), "```"]
    markdown = "\n".join(lines)
    print(markdown)
    if not args.no_write:
        data = {"machine": info, "args": vars(args), "layouts": results, "goals": goals,
                "quiet": {"enabled": quiet.enabled, "calls": quiet.calls, "re_runs": quiet.retried},
                "breakdown_ms": extras.get("breakdown_ms"), "profile": extras.get("profile")}
        for path in write_results("selection_quick" if args.quick else "selection", data, markdown):
            print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
