"""Measured prefill speedup of every method next to its theoretical FLOPs speedup, on the CPU.

    python -m bench.prefill              # mid-size random-weight LLaVA-NeXT (8 × 1024 LLM), ~4 minutes
    python -m bench.prefill --quick      # the tiny model, one ratio, one round (smoke test)

What is timed is what the app runs: `gprune.pipeline.encode` once, then `gprune.analysis.run_method`
for the unpruned reference and for each method × keep ratio (selection, then `generate`: our
layer-by-layer prefill with original position ids, then greedy decoding of a few tokens).
`prefill_seconds` is the language model's prefill (FastV's in-LLM scoring included, pre-LLM selections
not); the selection of pre-LLM methods is reported separately and in an end-to-end column.
Cases run in interleaved rounds; each speedup is unpruned ÷ method inside a round, median over rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from gprune.analysis import METHODS, AnalysisConfig, run_method
from gprune.loading import LoadedModel
from gprune.pipeline import encode

from .common import RESULTS, Quiet, contention_line, machine, machine_line, markdown_table, median, paired_ratio, write_results
from .models import MID_TEXT, SMALL_VISION, TextShape, build_random_llava, describe, synthetic_image

QUESTION = "What is shown in this image? Describe the picture in detail."
RATIOS = (0.5, 0.25, 0.11)
GOAL_RATIO, GOAL_FRACTION = 0.25, 0.8
COLUMNS = ["method", "keep", "visual tokens", "sequence", "FLOPs speedup", "measured speedup", "measured ÷ FLOPs",
           "speedup (mins)", "model-FLOPs speedup", "measured ÷ model FLOPs", "prefill ms", "selection ms",
           "end-to-end speedup", "decode ms/token", "decode speedup"]


def model_flops(config, n_full: int, n_pruned: int, prune_layer: int = 0) -> float:
    """Matmul FLOPs of this decoder's prefill as it really runs: q/k/v/o with GQA widths, a gated (3-matrix)
    MLP, causal attention (QKᵀ and AV over the lower triangle, as SDPA's causal kernels compute it)."""
    d, m = config.hidden_size, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
    q_width, kv_width = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim

    def layer(n: int) -> float:
        projections = 2 * n * d * (2 * q_width + 2 * kv_width)
        mlp = 3 * 2 * n * d * m
        attention = 2 * 2 * (n * (n + 1) / 2) * q_width
        return projections + mlp + attention

    layers = config.num_hidden_layers
    return prune_layer * layer(n_full) + (layers - prune_layer) * layer(n_pruned)


def measure(loaded: LoadedModel, image, *, methods=METHODS, ratios=RATIOS, rounds: int = 5, warmup: int = 1,
            new_tokens: int = 8, fastv_layer: int = 2, progress: bool = True, quiet: Quiet | None = None) -> dict:
    """Interleaved runs of the reference and every (method, keep ratio); returns raw samples and medians.

    A round has one sub-round per keep ratio (ratios rotated across rounds); a sub-round runs the unpruned
    reference and every method at that ratio, in a rotated order. Each method's speedup is taken against
    the reference of its own sub-round (seconds apart), then the median over rounds.
    """
    encoded = encode(loaded, image, QUESTION)
    quiet = quiet or Quiet(enabled=False)
    cases = [("unpruned", 1.0)] + [(method, ratio) for ratio in ratios for method in methods]
    samples: dict[tuple[str, float], list] = {case: [] for case in cases}
    reference_of: dict[float, list] = {ratio: [] for ratio in ratios}  # the sub-round's unpruned sample
    foreign: dict[tuple[str, float], list[float]] = {case: [] for case in cases}
    for round_index in range(-warmup, rounds):
        ratio_order = list(ratios[round_index % len(ratios):]) + list(ratios[: round_index % len(ratios)])
        for ratio in ratio_order:
            sub_round = [("unpruned", 1.0)] + [(method, ratio) for method in methods]
            shift = round_index % len(sub_round)
            reference = None
            for method, case_ratio in sub_round[shift:] + sub_round[:shift]:
                config = AnalysisConfig(methods=tuple(methods), keep_ratio=case_ratio, max_new_tokens=new_tokens,
                                        fastv_layer=fastv_layer)
                if round_index < 0:
                    run_method(loaded, encoded, method, config)
                    continue
                result, _, share = quiet.run(lambda: run_method(loaded, encoded, method, config))
                samples[(method, case_ratio)].append(result)
                foreign[(method, case_ratio)].append(share)
                if method == "unpruned":
                    reference = result
            if round_index >= 0:
                reference_of[ratio].append(reference)
        if progress:
            label = "warm-up" if round_index < 0 else f"round {round_index + 1}/{rounds}"
            print(f"  {label} done", file=sys.stderr, flush=True)

    all_reference = samples[("unpruned", 1.0)]
    text_config = loaded.model.config.text_config
    rows = []
    for (method, ratio), results in samples.items():
        paired = all_reference if method == "unpruned" else reference_of[ratio]
        ref_prefill = [r.prefill_seconds for r in paired]
        prefill = [r.prefill_seconds for r in results]
        selection = [r.selection.seconds for r in results]
        # FastV's selection happens inside its prefill (already timed); pre-LLM selections come before it.
        outside = [0.0 if method == "fastv" else s for s in selection]
        decode = [r.decode_seconds_per_token for r in results]
        decode_pairs = [(a.decode_seconds_per_token, b) for a, b in zip(paired, decode)
                        if a.decode_seconds_per_token > 0 and b > 0]
        first = results[0]
        row = {
            "method": method, "keep_ratio": ratio,
            "tokens_before": first.tokens_before, "tokens_after": first.tokens_after,
            "sequence_before": first.sequence_before, "sequence_after": first.sequence_after,
            "flops_ratio": first.flops_ratio, "flops_speedup": 1.0 / first.flops_ratio,
            "prefill_s": median(prefill), "min_prefill_s": min(prefill), "selection_s": median(selection),
            "measured_speedup": paired_ratio(ref_prefill, prefill),
            "speedup_of_minima": min(r.prefill_seconds for r in all_reference) / min(prefill),
            "end_to_end_speedup": paired_ratio(ref_prefill, [p + s for p, s in zip(prefill, outside)]),
            "decode_s_per_token": median(decode) if any(decode) else None,
            "decode_speedup": statistics.median(a / b for a, b in decode_pairs) if decode_pairs else None,
            "prefill_samples_s": prefill, "reference_samples_s": ref_prefill, "decode_samples_s": decode,
            "foreign_cpu_share": foreign[(method, ratio)],
        }
        full = model_flops(text_config, first.sequence_before, first.sequence_before)
        pruned = model_flops(text_config, first.sequence_before, first.sequence_after,
                             prune_layer=fastv_layer if method == "fastv" else 0)
        row["model_flops_speedup"] = full / pruned
        row["measured_over_model_flops"] = row["measured_speedup"] / row["model_flops_speedup"]
        row["measured_over_flops"] = row["measured_speedup"] / row["flops_speedup"]
        row["minima_over_flops"] = row["speedup_of_minima"] / row["flops_speedup"]
        rows.append(row)
    return {"encoded": {"sequence": encoded.length, "visual_tokens": encoded.layout.n_tokens,
                        "rows": encoded.layout.rows, "cols": encoded.layout.cols,
                        "image_size": [encoded.layout.image_width, encoded.layout.image_height]},
            "rounds": rounds, "warmup": warmup, "new_tokens": new_tokens, "fastv_layer": fastv_layer,
            "quiet": {"enabled": quiet.enabled, "calls": quiet.calls, "re_runs": quiet.retried, "summary": quiet.summary()},
            "rows": rows}


def table(measurement: dict) -> str:
    out = []
    for row in measurement["rows"]:
        decode = "–" if row["decode_s_per_token"] is None else f"{row['decode_s_per_token'] * 1e3:.1f}"
        decode_speedup = "–" if row["decode_speedup"] is None else f"{row['decode_speedup']:.2f}"
        out.append([row["method"], f"{row['keep_ratio']:g}", f"{row['tokens_after']}/{row['tokens_before']}",
                    f"{row['sequence_after']}/{row['sequence_before']}", f"{row['flops_speedup']:.2f}",
                    f"{row['measured_speedup']:.2f}", f"{row['measured_over_flops']:.2f}",
                    f"{row['speedup_of_minima']:.2f}", f"{row['model_flops_speedup']:.2f}",
                    f"{row['measured_over_model_flops']:.2f}", f"{row['prefill_s'] * 1e3:.0f}", f"{row['selection_s'] * 1e3:.1f}",
                    f"{row['end_to_end_speedup']:.2f}", decode, decode_speedup])
    return markdown_table(COLUMNS, out)


def goal(measurement: dict, ratio: float = GOAL_RATIO) -> dict:
    """Measured ≥ 0.8 × FLOPs speedup at keep ratio 0.25, per method."""
    verdict = {}
    for row in measurement["rows"]:
        if row["keep_ratio"] == ratio and row["method"] != "unpruned":
            verdict[row["method"]] = {"measured_over_flops": row["measured_over_flops"],
                                      "minima_over_flops": row["minima_over_flops"],
                                      "met": row["measured_over_flops"] >= GOAL_FRACTION}
    return verdict


def plot(measurement: dict, path: Path, ratios) -> Path:
    from viz.plots import speedup_plot

    measured, flops = {}, {}
    for row in measurement["rows"]:
        if row["method"] == "unpruned":
            continue
        index = list(ratios).index(row["keep_ratio"])
        measured.setdefault(row["method"], [float("nan")] * len(ratios))[index] = row["measured_speedup"]
        flops.setdefault(row["method"], [float("nan")] * len(ratios))[index] = row["flops_speedup"]
    # Every pre-LLM method has G-Prune's FLOPs (same token count): one dashed line for them, one for FastV.
    flops = {method: values for method, values in flops.items() if method in ("gprune", "fastv")}
    image = speedup_plot(list(ratios), measured, flops)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.convert("P", palette=1, colors=64).save(path, optimize=True)  # adaptive palette: a small, commit-friendly PNG
    return path


def model_section(title: str, info: dict, model: dict, measurement: dict, verdict: dict) -> str:
    text = model["text"]
    lines = [f"# {title}", "", f"Machine: {machine_line(info)}.", "",
             f"Model: random weights, {model['dtype']} on {model['device']}, attention `{model['attn_implementation']}`; "
             f"LLM {text['family']} {text['layers']} layers × {text['hidden']} hidden, FFN {text['intermediate']}, "
             f"{text['heads']} heads / {text['kv_heads']} KV heads; vision tower {model['vision']['layers']} × "
             f"{model['vision']['hidden']} (CLIP-{model['vision']['image_size']}/{model['vision']['patch_size']} geometry); "
             f"{model['parameters'] / 1e6:.1f} M parameters.", "",
             f"Prompt: {measurement['encoded']['image_size'][0]}×{measurement['encoded']['image_size'][1]} image → "
             f"{measurement['encoded']['visual_tokens']} visual tokens (grid {measurement['encoded']['rows']}×"
             f"{measurement['encoded']['cols']}), {measurement['encoded']['sequence']} prompt tokens; FastV K = "
             f"{measurement['fastv_layer']}; {measurement['new_tokens']} new tokens; medians of {measurement['rounds']} "
             f"interleaved rounds (after {measurement['warmup']} warm-up); each speedup is paired with the unpruned run of "
             "its own sub-round; `speedup (mins)` divides the fastest runs, a cross-check that ignores slowed rounds. "
             + contention_line([v for row in measurement["rows"] for v in row["foreign_cpu_share"]])
             + " " + measurement["quiet"]["summary"], "",
             "`FLOPs speedup` is FastV's formula (gprune.flops, `PruneResult.flops_ratio`): 4nd² + 2n²d + 2ndm per "
             "layer. `model-FLOPs speedup` counts this decoder's matmuls as they run: GQA projections, a 3-matrix "
             "gated MLP and causal attention (bench.prefill.model_flops); it has a larger share linear in n, so "
             "pruning saves less than the formula says.", "",
             table(measurement), ""]
    if verdict:
        lines.append(f"Goal (keep ratio {GOAL_RATIO}: measured ≥ {GOAL_FRACTION} × FLOPs speedup): " + "; ".join(
            f"{m} {v['measured_over_flops']:.2f} {'met' if v['met'] else 'MISSED'} (fastest runs: {v['minima_over_flops']:.2f})"
            for m, v in verdict.items()) + ".")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.prefill", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model, keep ratio 0.25, one round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--ratios", default=",".join(map(str, RATIOS)))
    parser.add_argument("--new-tokens", type=int, default=8, help="greedy tokens per run (decode timing)")
    parser.add_argument("--layers", type=int, default=MID_TEXT.layers)
    parser.add_argument("--hidden", type=int, default=MID_TEXT.hidden)
    parser.add_argument("--intermediate", type=int, default=MID_TEXT.intermediate)
    parser.add_argument("--heads", type=int, default=MID_TEXT.heads)
    parser.add_argument("--kv-heads", type=int, default=MID_TEXT.kv_heads)
    parser.add_argument("--image", default="640x480", help="WIDTHxHEIGHT of the synthetic test image")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--no-quiet", action="store_true", help="time every call as it comes (no waiting for a quiet machine)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.warmup, args.ratios, args.new_tokens = 1, 0, "0.25", 3
    args.ratios = tuple(float(r) for r in args.ratios.split(","))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    info = machine()
    print(f"machine: {machine_line(info)}", file=sys.stderr, flush=True)
    if args.quick:
        from gprune.loading import load_model

        loaded = load_model("tiny", device="cpu")
    else:
        shape = TextShape(hidden=args.hidden, layers=args.layers, heads=args.heads, kv_heads=args.kv_heads,
                          intermediate=args.intermediate, max_positions=8192)
        loaded = build_random_llava(shape, SMALL_VISION, name="bench-mid")
    model = describe(loaded)
    width, height = (int(v) for v in args.image.lower().split("x"))
    measurement = measure(loaded, synthetic_image(width, height), ratios=args.ratios, rounds=args.rounds,
                          warmup=args.warmup, new_tokens=args.new_tokens,
                          quiet=Quiet(enabled=not args.no_quiet and not args.quick))
    verdict = goal(measurement) if GOAL_RATIO in args.ratios else {}
    markdown = model_section("Prefill speedup on the CPU", info, model, measurement, verdict)
    print(markdown)
    if not args.no_write:
        name = "prefill_quick" if args.quick else "prefill"
        data = {"machine": info, "model": model, "args": {k: v for k, v in vars(args).items()},
                "measurement": measurement, "goal": verdict}
        for path in write_results(name, data, markdown):
            print(f"wrote {path}", file=sys.stderr)
        if not args.quick:
            print(f"wrote {plot(measurement, RESULTS / 'speedup.png', args.ratios)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
