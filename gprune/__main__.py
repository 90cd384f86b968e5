"""`python -m gprune IMAGE QUESTION`: analyse one image with the chosen methods, write JSON + NPZ.
`python -m gprune precompute …`: bundles of the examples for the explorer (see gprune/precompute.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .analysis import METHOD_LABELS, METHODS, Analysis, AnalysisConfig, analyze
from .images import load_image
from .loading import load_model
from .prompts import SYSTEM_PROMPTS, TEMPLATE


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gprune", description=__doc__)
    parser.add_argument("image", help="path of the image to analyse")
    parser.add_argument("question", help="question to ask about the image")
    parser.add_argument("--model", default="auto", help="'shapes' (offline, trained here on synthetic shapes), 'tiny' (offline, random weights), a hub id or a local path; 'auto' = 7B on CUDA, else shapes")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--keep-ratio", type=float, default=0.5)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--temperature", type=float, default=0.03)
    parser.add_argument("--fastv-layer", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random baseline")
    parser.add_argument("--timing-rounds", type=int, default=0,
                        help="time each method's selection and prefill this many more times after the answer run "
                             "(its warm-up) and print median [min–max]; 0 prints no timings")
    parser.add_argument("--system-prompt", choices=SYSTEM_PROMPTS, default=TEMPLATE,
                        help="'template': the checkpoint's chat template as it is; 'llava': LLaVA's training system "
                             "prompt first (Vicuna, Llama-3 and Qwen2 checkpoints)")
    parser.add_argument("--out", type=Path, default=Path("outputs"), help="folder for summary.json and tokens.npz")
    return parser.parse_args(argv)


def save(analysis: Analysis, out: Path) -> tuple[Path, Path]:
    """Write `summary.json` (answers, counts, timings, config) and `tokens.npz` (scores, kept positions, groups)."""
    out.mkdir(parents=True, exist_ok=True)
    arrays = {"layout_kind": analysis.layout.kind, "layout_cell": analysis.layout.cell, "layout_box": analysis.layout.box}
    for name, result in analysis.results.items():
        selection = result.selection
        arrays[f"{name}_kept"] = selection.kept_positions
        if selection.scores is not None:
            arrays[f"{name}_scores"] = selection.scores
        if selection.degree is not None:
            arrays[f"{name}_degree"] = selection.degree
        if selection.groups is not None:
            arrays[f"{name}_group_of"] = selection.group_of(analysis.layout.n_tokens)
    summary_path, arrays_path = out / "summary.json", out / "tokens.npz"
    summary_path.write_text(json.dumps(analysis.summary(), indent=2))
    np.savez_compressed(arrays_path, **arrays)
    return summary_path, arrays_path


def timing_text(timing) -> str:
    """`median [min–max]` in ms at a precision the spread supports, or "—" when not measured."""
    if timing is None:
        return "—"
    digits = 0 if timing.median >= 0.1 else 1
    return f"{timing.median * 1e3:.{digits}f} [{timing.low * 1e3:.{digits}f}–{timing.high * 1e3:.{digits}f}]"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["precompute"]:
        from .precompute import main as precompute

        return precompute(argv[1:])
    args = parse_args(argv)
    try:
        config = AnalysisConfig(
            methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()), keep_ratio=args.keep_ratio,
            iterations=args.iterations, threshold=args.threshold, temperature=args.temperature,
            fastv_layer=args.fastv_layer, max_new_tokens=args.max_new_tokens, seed=args.seed,
            timing_rounds=args.timing_rounds,
            system_prompt=args.system_prompt,
        )
        image = load_image(args.image)
        print(f"loading model {args.model} …", file=sys.stderr)
        loaded = load_model(args.model)
        analysis = analyze(loaded, image, args.question, config,
                           progress=lambda f, message: print(f"[{f:4.0%}] {message}", file=sys.stderr))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if analysis.random_weights:
        print("note: the tiny model has random weights: answers are meaningless and timings are of a toy model; "
              "the pruning itself (kept tokens, budgets, FLOPs formula) is real", file=sys.stderr)
    elif analysis.toy_note:
        print(f"note: {analysis.toy_note}: its answers mean something on such images only, and its timings are a "
              "small model's", file=sys.stderr)
    rows = [analysis.reference, *analysis.results.values()]
    timed = args.timing_rounds > 0
    print(f"{'method':<10} {'tokens':>11} {'FLOPs':>7} {'select ms':>17} {'prefill ms':>17}  answer")
    for result in rows:
        print(f"{METHOD_LABELS[result.method]:<10} {result.tokens_after:>5}/{result.tokens_before:<5} "
              f"{analysis.reported_flops_ratio(result):>6.1%} {timing_text(result.selection_timing):>17} "
              f"{timing_text(result.prefill_timing):>17}  {result.answer!r}")
    if analysis.toy_note:
        print(f"FLOPs: prefill FLOPs vs unpruned at {analysis.flops_label.removeprefix('FLOPs at ')} "
              "(the toy model's own widths would overstate attention)")
    if timed:
        print(f"timings: median [min–max] of {args.timing_rounds} rounds after a warm-up; FastV's selection is inside its prefill")
    for path in save(analysis, args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
