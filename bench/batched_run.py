"""Model time of one Run (reference + all five methods, 32 new tokens): answers decoded as one batch ÷ one
after another, next to the physical limit of batching.

    python -m bench.batched_run            # the tiny model and the mid-size CPU model of bench.prefill (~5 min)
    python -m bench.batched_run --gpu      # LLaVA-NeXT-7B shapes (Mistral-7B + CLIP-L/336), random bf16, on CUDA
    python -m bench.batched_run --quick    # the tiny model, one round, 4 new tokens (smoke test)

Both sides run the same code (`gprune.analysis.run_methods`, the path of the app's Run and of `patch`): the
vision tower once, each method's selection, each prompt's prefill alone; then the answers are decoded either
as one batch of six rows (`batched=True`) or row by row (`batched=False`). The cases run in interleaved rounds
and the ratio is taken inside each round (median over rounds).

Physical limit: decoding is memory-bound, so a batch of six rows should cost about one row's decode. The
limit is what a Run would cost if the six rows' decode cost exactly one row's: (vision + selections +
prefills + the decode steps of one row) ÷ the sequential Run, from the sequential run's own timings.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from gprune.analysis import METHODS, AnalysisConfig, run_methods
from gprune.loading import load_model
from gprune.pipeline import encode

from .common import Quiet, contention_line, machine, machine_line, markdown_table, paired_ratio, write_results
from .models import CLIP_L_336, MID_TEXT, MISTRAL_7B_TEXT, SMALL_VISION, build_random_llava, describe, synthetic_image

QUESTION = "What is shown in this image? Describe the picture in detail."
GOAL = 0.5
COLUMNS = ["model", "visual tokens", "new tokens", "sequential Run s", "batched Run s", "batched ÷ sequential",
           "(mins)", "physical limit", "decode ms/step: 1 row → 6 rows", "answers identical"]


def one_run(loaded, image, config: AnalysisConfig, batched: bool):
    """encode + every method's selection, prefill and answers: `(results, seconds, encode seconds)`."""
    start = time.perf_counter()
    encoded = encode(loaded, image, QUESTION)
    encoded_at = time.perf_counter()
    jobs = [("unpruned", 1.0)] + [(method, config.keep_ratio) for method in config.methods]
    results = run_methods(loaded, encoded, jobs, config, batched=batched)
    return results, time.perf_counter() - start, encoded_at - start


def measure(loaded, image, *, rounds: int, new_tokens: int, keep_ratio: float, quiet: Quiet) -> dict:
    config = AnalysisConfig(keep_ratio=keep_ratio, max_new_tokens=new_tokens, fastv_layer=2)
    one_run(loaded, image, config, True)  # warm-up of both paths
    one_run(loaded, image, config, False)
    samples = {"sequential": [], "batched": []}
    limits, identical, step_single, step_batch, foreign = [], True, [], [], []
    for round_index in range(rounds):
        order = ["sequential", "batched"] if round_index % 2 == 0 else ["batched", "sequential"]
        outputs = {}
        for case in order:
            (results, seconds, encode_seconds), _, share = quiet.run(
                lambda: one_run(loaded, image, config, case == "batched"))
            samples[case].append(seconds)
            foreign.append(share)
            outputs[case] = (results, encode_seconds)
        sequential, encode_seconds = outputs["sequential"]
        batched = outputs["batched"][0]
        identical &= all(a.answer_token_ids == b.answer_token_ids for a, b in zip(sequential, batched))
        steps = max(len(r.answer_token_ids) for r in sequential) - 1
        single_step = statistics.median(r.decode_seconds_per_token for r in sequential if r.decode_seconds_per_token)
        floor = (encode_seconds + sum(r.selection.seconds for r in sequential if r.method not in ("unpruned", "fastv"))
                 + sum(r.prefill_seconds for r in sequential) + steps * single_step)
        limits.append(floor / samples["sequential"][-1])
        step_single.append(single_step)
        step_batch.append(batched[0].decode_seconds_per_token)
    return {
        "rounds": rounds, "new_tokens": new_tokens, "keep_ratio": keep_ratio,
        "sequential_s": samples["sequential"], "batched_s": samples["batched"],
        "ratio": paired_ratio(samples["batched"], samples["sequential"]),
        "ratio_of_minima": min(samples["batched"]) / min(samples["sequential"]),
        "physical_limit": statistics.median(limits),
        "decode_step_one_row_s": statistics.median(step_single), "decode_step_six_rows_s": statistics.median(step_batch),
        "answers_identical": identical, "foreign_cpu_share": foreign,
        "visual_tokens": sequential[0].tokens_before, "quiet": quiet.summary(),
    }


def row(name: str, m: dict) -> list:
    return [name, m["visual_tokens"], m["new_tokens"], f"{statistics.median(m['sequential_s']):.2f}",
            f"{statistics.median(m['batched_s']):.2f}", f"{m['ratio']:.2f}", f"{m['ratio_of_minima']:.2f}",
            f"{m['physical_limit']:.2f}",
            f"{m['decode_step_one_row_s'] * 1e3:.1f} → {m['decode_step_six_rows_s'] * 1e3:.1f}",
            "yes" if m["answers_identical"] else "NO"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.batched_run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model only, one round, 4 new tokens")
    parser.add_argument("--gpu", action="store_true", help="LLaVA-NeXT-7B shapes in bf16 on CUDA instead")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--keep-ratio", type=float, default=0.5, help="the app's default")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--no-quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.new_tokens = 1, 4
    info = machine()
    print(f"machine: {machine_line(info)}", file=sys.stderr, flush=True)
    if args.gpu:
        if not torch.cuda.is_available():
            print("skipped: --gpu needs CUDA", file=sys.stderr)
            return 0
        models = [("LLaVA-NeXT-7B shapes (bf16)", build_random_llava(MISTRAL_7B_TEXT, CLIP_L_336, device="cuda",
                                                                     dtype=torch.bfloat16, name="bench-7b"))]
    else:
        models = [("tiny", load_model("tiny", device="cpu"))]
        if not args.quick:
            models.append(("mid-size (bench.prefill)", build_random_llava(MID_TEXT, SMALL_VISION, name="bench-mid")))
    image = synthetic_image(640, 480)
    measurements, rows = {}, []
    for name, loaded in models:
        print(f"measuring {name} …", file=sys.stderr, flush=True)
        quiet = Quiet(enabled=not args.no_quiet and not args.quick)
        measurements[name] = {"model": describe(loaded), **measure(loaded, image, rounds=args.rounds,
                              new_tokens=args.new_tokens, keep_ratio=args.keep_ratio, quiet=quiet)}
        rows.append(row(name, measurements[name]))
    shares = [v for m in measurements.values() for v in m["foreign_cpu_share"]]
    verdict = "; ".join(f"{name} {m['ratio']:.2f} {'met' if m['ratio'] <= GOAL else 'MISSED'} (limit {m['physical_limit']:.2f})"
                        for name, m in measurements.items())
    markdown = "\n".join([
        "# Batched Run: one batch of answers ÷ one after another", "", f"Machine: {machine_line(info)}.", "",
        f"A Run = vision tower + reference + {', '.join(METHODS)} at keep ratio {args.keep_ratio:g}, "
        f"{args.new_tokens} new tokens, 640×480 image, {'bf16 on CUDA' if args.gpu else 'fp32 on the CPU'}, random "
        f"weights. Medians of {args.rounds} "
        "interleaved rounds after a warm-up of both paths; the ratio is taken inside each round; `(mins)` divides "
        "the fastest runs. " + contention_line(shares) + " " + next(iter(measurements.values()))["quiet"], "",
        markdown_table(COLUMNS, rows), "",
        f"Goal batched ÷ sequential ≤ {GOAL}: {verdict}. The physical limit assumes decoding six rows costs "
        "exactly one row's decode; what is left is the vision tower, the selections and six prefills, which batching "
        "cannot shrink (prefill is compute-bound).",
    ])
    print(markdown)
    if not args.no_write:
        data = {"machine": info, "args": vars(args), "measurements": measurements}
        name = "batched_run_quick" if args.quick else "batched_run_gpu" if args.gpu else "batched_run"
        for path in write_results(name, data, markdown):
            print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
