"""Examples per second of `python -m gprune.evaluate` with 1 and with 2 processes (one torch thread each).

    python -m bench.evaluate_scaling           # 24 examples × five methods × keep 0.5/0.25/0.11, 3 rounds (~5 min)
    python -m bench.evaluate_scaling --quick   # 4 examples, one method, one ratio, one round (smoke test)

Each case is the real command on the tiny model into a fresh run folder: `python -m gprune.evaluate --threads 1`
and `accelerate launch --num_processes 2 --cpu -m gprune.evaluate --threads 1`, on a 24-row VQA split built
from assets/ (save_to_disk, lmms-lab schema). Throughput = examples ÷ seconds of the evaluation loop, which
process 0 measures from the barrier after every process loaded the model to the barrier after all finished
(summary.json `invocation`); the end-to-end wall time (interpreter start, imports, model, merge) is reported
next to it. The two cases run in interleaved rounds (order alternating); the speedup is taken inside each
round, median over rounds. Both runs of a round must give identical result rows (timings aside).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .common import Quiet, contention_line, machine, machine_line, markdown_table, median, paired_ratio, write_results

ROOT = Path(__file__).resolve().parents[1]
GOAL_SPEEDUP = 1.6
EXTRA_QUESTIONS = ("What is in the image?", "What colour is the largest object?", "How many objects are there?")
NOT_COMPARED = ("prefill_seconds", "selection_seconds", "process")
COLUMNS = ["processes", "examples/s (loop)", "loop s", "end-to-end s", "speedup (loop)", "speedup (mins)",
           "speedup (end-to-end)"]


def build_dataset(folder: Path, rows: int) -> Path:
    """`rows` VQA rows (lmms-lab schema): the bundled images, each with its own question and three generic ones."""
    import datasets

    assets = ROOT / "assets"
    examples = json.loads((assets / "examples.json").read_text())
    questions = [(e["file"], [e["question"], *EXTRA_QUESTIONS]) for e in examples]
    pairs = [(file, asked[round_]) for round_ in range(1 + len(EXTRA_QUESTIONS)) for file, asked in questions]
    records = [{"image": {"bytes": (assets / file).read_bytes(), "path": None}, "question": question,
                "answers": ["yes"] * 10, "question_id": f"q{index}"} for index, (file, question) in enumerate(pairs[:rows])]
    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                  "answers": datasets.List(datasets.Value("string")), "question_id": datasets.Value("string")})
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(records, features=features)}).save_to_disk(str(folder))
    return folder


def command(processes: int, dataset: Path, out: Path, methods: str, ratios: str, new_tokens: int) -> list[str]:
    options = ["--model", "tiny", "--dataset", str(dataset), "--methods", methods, "--keep-ratios", ratios,
               "--max-new-tokens", str(new_tokens), "--threads", "1", "--no-progress", "--out", str(out)]
    if processes == 1:
        return [sys.executable, "-m", "gprune.evaluate", *options]
    return [str(Path(sys.executable).parent / "accelerate"), "launch", "--num_processes", str(processes), "--cpu",
            "-m", "gprune.evaluate", *options]


def run_case(argv: list[str], out: Path) -> dict:
    """One run into an empty `out` (a re-run of the same call must not resume a finished run)."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return json.loads((out / "summary.json").read_text())


def comparable_rows(results: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(results).drop_columns(list(NOT_COMPARED)).to_pylist()


def measure(dataset: Path, work: Path, *, rounds: int, warmup: int, methods: str, ratios: str, new_tokens: int,
            quiet: Quiet) -> dict:
    """Interleaved rounds of both cases; per case the loop and end-to-end seconds of every timed round."""
    cases = (1, 2)
    loop = {p: [] for p in cases}
    wall = {p: [] for p in cases}
    foreign = {p: [] for p in cases}
    examples = None
    identical = []
    for round_index in range(-warmup, rounds):
        order = cases if round_index % 2 == 0 else cases[::-1]
        outs = {}
        for processes in order:
            out = work / f"round{round_index + warmup}-p{processes}"
            outs[processes] = out
            argv = command(processes, dataset, out, methods, ratios, new_tokens)
            summary, seconds, share = quiet.run(lambda: run_case(argv, out))
            invocation = summary["invocation"]
            if invocation["processes"] != processes:
                raise RuntimeError(f"asked for {processes} processes, the run had {invocation['processes']}")
            examples = invocation["examples_evaluated"]
            if round_index >= 0:
                loop[processes].append(invocation["seconds"])
                wall[processes].append(seconds)
                foreign[processes].append(share)
        identical.append(comparable_rows(outs[1] / "results.parquet") == comparable_rows(outs[2] / "results.parquet"))
        label = "warm-up" if round_index < 0 else f"round {round_index + 1}/{rounds}"
        print(f"  {label}: 1 process {loop[1][-1] if round_index >= 0 else float('nan'):.1f} s, "
              f"2 processes {loop[2][-1] if round_index >= 0 else float('nan'):.1f} s (loop)", file=sys.stderr, flush=True)
    return {"examples": examples, "rounds": rounds, "warmup": warmup, "methods": methods, "keep_ratios": ratios,
            "new_tokens": new_tokens, "loop_seconds": loop, "wall_seconds": wall, "foreign_cpu_share": foreign,
            "rows_identical": identical,
            "quiet": {"enabled": quiet.enabled, "calls": quiet.calls, "re_runs": quiet.retried, "summary": quiet.summary()}}


def results(measurement: dict) -> dict:
    loop, wall, examples = measurement["loop_seconds"], measurement["wall_seconds"], measurement["examples"]
    speedup = paired_ratio(loop[1], loop[2])
    return {
        "examples_per_second": {p: examples / median(loop[p]) for p in (1, 2)},
        "loop_seconds": {p: median(loop[p]) for p in (1, 2)},
        "wall_seconds": {p: median(wall[p]) for p in (1, 2)},
        "speedup": speedup, "speedup_of_minima": min(loop[1]) / min(loop[2]),
        "end_to_end_speedup": paired_ratio(wall[1], wall[2]),
        "met": speedup >= GOAL_SPEEDUP,
    }


def section(info: dict, measurement: dict, figures: dict) -> str:
    rows = []
    for p in (1, 2):
        rows.append([str(p), f"{figures['examples_per_second'][p]:.2f}", f"{figures['loop_seconds'][p]:.1f}",
                     f"{figures['wall_seconds'][p]:.1f}", "1" if p == 1 else f"{figures['speedup']:.2f}",
                     "1" if p == 1 else f"{figures['speedup_of_minima']:.2f}",
                     "1" if p == 1 else f"{figures['end_to_end_speedup']:.2f}"])
    shares = [v for p in (1, 2) for v in measurement["foreign_cpu_share"][p]]
    return "\n".join([
        "# Evaluation throughput: 1 vs 2 processes", "",
        f"Machine: {machine_line(info)}.", "",
        f"`python -m gprune.evaluate` on the tiny model (random weights), {measurement['examples']} examples × methods "
        f"{measurement['methods']} × keep ratios {measurement['keep_ratios']} (+ the unpruned reference), "
        f"{measurement['new_tokens']} new tokens, `--threads 1` per process; 2 processes = `accelerate launch "
        f"--num_processes 2 --cpu`. Medians of {measurement['rounds']} interleaved rounds (after "
        f"{measurement['warmup']} warm-up); the speedup is paired inside each round. `loop` = the evaluation loop as "
        "process 0 measures it between barriers (model loaded → every process done); `end-to-end` adds interpreter "
        "start, imports, dataset, model and merge. " + contention_line(shares) + " " + measurement["quiet"]["summary"], "",
        markdown_table(COLUMNS, rows), "",
        f"Goal: ≥ {GOAL_SPEEDUP}× examples per second with 2 processes: {figures['speedup']:.2f}× "
        f"{'met' if figures['met'] else 'MISSED'}. Result rows of the two cases identical (timings aside) in "
        f"{sum(measurement['rows_identical'])} of {len(measurement['rows_identical'])} rounds.",
    ])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.evaluate_scaling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 examples, G-Prune only, keep 0.25, one round")
    parser.add_argument("--examples", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--methods", default="gprune,fastv,tome,l2norm,random")
    parser.add_argument("--ratios", default="0.5,0.25,0.11")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--no-quiet", action="store_true", help="time every call as it comes (no waiting for a quiet machine)")
    args = parser.parse_args(argv)
    if args.quick:
        args.examples, args.rounds, args.warmup, args.methods, args.ratios, args.new_tokens = 4, 1, 0, "gprune", "0.25", 2
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    info = machine()
    print(f"machine: {machine_line(info)}", file=sys.stderr, flush=True)
    quiet = Quiet(enabled=not args.no_quiet and not args.quick, retries=1, include_children=True)
    with tempfile.TemporaryDirectory(prefix="gprune-evaluate-scaling-") as work:
        dataset = build_dataset(Path(work) / "dataset", args.examples)
        measurement = measure(dataset, Path(work), rounds=args.rounds, warmup=args.warmup, methods=args.methods,
                              ratios=args.ratios, new_tokens=args.new_tokens, quiet=quiet)
    figures = results(measurement)
    markdown = section(info, measurement, figures)
    print(markdown)
    if not all(measurement["rows_identical"]):
        print("error: 1 and 2 processes gave different result rows", file=sys.stderr)
        return 1
    if not args.no_write:
        data = {"machine": info, "args": vars(args), "measurement": measurement, "results": figures}
        for path in write_results("evaluate_scaling_quick" if args.quick else "evaluate_scaling", data, markdown):
            print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
