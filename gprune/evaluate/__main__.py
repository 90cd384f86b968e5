"""`python -m gprune.evaluate`: every method at every keep ratio on a VQA split, in one or many processes.

    python -m gprune.evaluate --model tiny --dataset PATH_OR_HUB_ID --out runs/NAME [options]
    accelerate launch --num_processes 2 [--cpu] -m gprune.evaluate ...same options...

Writes OUT/results.parquet (one row per question × method × keep ratio, plus the unpruned reference),
OUT/summary.json and prints the accuracy table. Re-running the same command resumes; a larger --limit
evaluates only the new rows; other settings in the same OUT are refused.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ..analysis import METHODS, AnalysisConfig
from ..checks import check_keep_ratio
from ..loading import SHAPES, TINY, resolve_model_name
from ..train.benchmarks import BENCHMARKS, METRIC as BUILT_IN_METRIC
from .data import VQA_PROMPT_SUFFIX, DatasetSpec, parse_columns, resolve_source, resolve_split
from .launch import end_with_launcher, relaunch, requested_cpu_processes
from .metric import METRICS

DEFAULT_KEEP_RATIOS = "0.5,0.25,0.11"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gprune.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="auto", help="'shapes' (offline, trained here on synthetic shapes), 'tiny' (offline, random weights), a hub id or a local path; 'auto' = 7B on CUDA, else shapes")
    parser.add_argument("--dataset", required=True, help="hub id (e.g. lmms-lab/textvqa), save_to_disk folder, local data folder, parquet file, or a built-in "
                             f"test set of the shapes model ({', '.join(BENCHMARKS)})")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--columns", default="", help="ROLE=COLUMN pairs for image, question, answers, question_id, e.g. image=img,question=query")
    parser.add_argument("--prompt-suffix", default=VQA_PROMPT_SUFFIX, help="appended to every question (default: the standard VQA short-answer instruction)")
    parser.add_argument("--metric", choices=METRICS, default=None,
                        help="default: exact for the built-in datasets (one answer each), else vqa. VQA accuracy (10 human answers) as vqa: ours, every answer normalised alike; vqa-official: "
                             "vqaEval.py; m4c: LLaVA's m4c_evaluator = lmms-eval TextVQA; lmms-vqav2: lmms-eval VQAv2. "
                             "exact: normalised exact match (GQA, POPE). See README 'Metric'")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N rows of the split (default: all)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--keep-ratios", default=DEFAULT_KEEP_RATIOS, help="comma-separated keep ratios in (0, 1]")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--temperature", type=float, default=0.03)
    parser.add_argument("--fastv-layer", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random baseline")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads per process (default 1: scale with processes; equal --threads give identical rows whatever the number of processes)")
    parser.add_argument("--shard-size", type=int, default=8, help="examples per result shard (work lost at most on a crash)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--out", type=Path, required=True, help="run folder (created; re-run the same command to resume)")
    return parser.parse_args(argv)


def build(args: argparse.Namespace, command: str):
    """`(Settings, Execution)` from the parsed options; raises ValueError for bad values."""
    from .runner import Execution, Settings  # torch, accelerate: after the cheap checks and the relaunch

    ratios = []
    for part in args.keep_ratios.split(","):
        try:
            ratios.append(check_keep_ratio(float(part)))
        except ValueError:
            raise ValueError(f"--keep-ratios must be comma-separated numbers in (0, 1], e.g. 0.5,0.25,0.11; got {args.keep_ratios!r}") from None
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    analysis = AnalysisConfig(methods=tuple(m for m in METHODS if m in methods) if set(methods) <= set(METHODS) else tuple(methods),
                              iterations=args.iterations, threshold=args.threshold, temperature=args.temperature,
                              fastv_layer=args.fastv_layer, max_new_tokens=args.max_new_tokens, seed=args.seed)
    if args.fastv_layer < 1:
        raise ValueError(f"--fastv-layer (K) must be a whole number >= 1, got {args.fastv_layer}")
    analysis.validate(num_layers=args.fastv_layer + 1)  # now, not after loading the model; K's upper bound needs the model
    for name, value in (("--limit", args.limit), ("--threads", args.threads), ("--shard-size", args.shard_size)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value}")
    source = resolve_source(args.dataset)
    dataset = DatasetSpec(source, resolve_split(source, args.split), parse_columns(args.columns))
    model = resolve_model_name(args.model)
    if model not in (TINY, SHAPES) and Path(model).expanduser().is_dir():  # a local checkpoint: absolute, so a re-run from elsewhere matches
        model = str(Path(model).expanduser().resolve())
    metric = args.metric or (BUILT_IN_METRIC if args.dataset.strip() in BENCHMARKS else "vqa")
    settings = Settings(model, dataset, args.prompt_suffix, metric, tuple(sorted(set(ratios), reverse=True)), analysis)
    execution = Execution(limit=args.limit, threads=args.threads, examples_per_shard=args.shard_size,
                          progress=not args.no_progress, command=command)
    return settings, execution


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the real command, not a test calling main()
        end_with_launcher()
    arguments = sys.argv[1:] if argv is None else argv
    args = parse_args(arguments)
    command = shlex.join(["python", "-m", "gprune.evaluate", *arguments])
    try:
        settings, execution = build(args, command)
        processes = requested_cpu_processes() if argv is None else None
        if processes:
            relaunch(processes, "gprune.evaluate", arguments)
        from .runner import evaluate

        summary = evaluate(settings, execution, args.out)
    except ValueError as error:
        from .runner import process_state

        if process_state().is_main_process:
            print(f"error: {error}", file=sys.stderr)
        return 2
    if summary is None:  # not the main process: it prints nothing
        return 0
    merge = summary["merge"]
    if merge["missing_rows"] or merge["incomplete_rows"]:
        print(f"error: the merged results lack rows {merge['missing_rows'][:20]} or keys of rows "
              f"{merge['incomplete_rows'][:20]}; re-run the same command to evaluate them", file=sys.stderr)
        return 1
    print(f"wrote {args.out / 'results.parquet'} and {args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
