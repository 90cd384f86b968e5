"""`python -m gprune IMAGE QUESTION`: analyse one image with the chosen methods, write JSON + NPZ."""

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
    parser.add_argument("--model", default="auto", help="'tiny' (offline, random weights), a hub id or a local path; 'auto' = 7B on CUDA, else tiny")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--keep-ratio", type=float, default=0.5)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--temperature", type=float, default=0.03)
    parser.add_argument("--fastv-layer", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random baseline")
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = AnalysisConfig(
            methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()), keep_ratio=args.keep_ratio,
            iterations=args.iterations, threshold=args.threshold, temperature=args.temperature,
            fastv_layer=args.fastv_layer, max_new_tokens=args.max_new_tokens, seed=args.seed,
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
        print("note: the tiny model has random weights; answers are meaningless, pruning and timings are real", file=sys.stderr)
    rows = [analysis.reference, *analysis.results.values()]
    print(f"{'method':<10} {'tokens':>11} {'FLOPs':>7} {'select':>8} {'prefill':>8}  answer")
    for result in rows:
        print(f"{METHOD_LABELS[result.method]:<10} {result.tokens_after:>5}/{result.tokens_before:<5} "
              f"{result.flops_ratio:>6.1%} {result.selection.seconds * 1e3:>6.1f}ms {result.prefill_seconds * 1e3:>6.0f}ms  {result.answer!r}")
    for path in save(analysis, args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
