"""`python -m bench [--quick]`: every benchmark in turn (each in a fresh process), then the summary.

Writes bench/results/{selection,memory,prefill,batched_run,gpu_prefill,app_latency,evaluate_scaling,import_time}.{json,md},
speedup.png and summary.md. `--quick` runs the smoke-test sizes of the CPU benchmarks only and writes nothing.
Full run: about 25 minutes on 2 quiet CPU cores, up to 40 when other jobs share them (the benchmarks wait
for quiet moments, see bench/common.py `Quiet`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FULL = ["bench.selection", "bench.memory", "bench.prefill", "bench.batched_run", "bench.gpu_prefill", "bench.app_latency",
        "bench.evaluate_scaling", "bench.import_time", "bench.report"]
QUICK = ["bench.selection", "bench.memory", "bench.prefill", "bench.batched_run", "bench.evaluate_scaling"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", help="comma-separated subset, e.g. selection,prefill")
    args = parser.parse_args(argv)
    modules = QUICK if args.quick else FULL
    if args.only:
        wanted = {f"bench.{name.strip()}" for name in args.only.split(",")}
        modules = [m for m in modules if m in wanted]
    failed = []
    for module in modules:
        command = [sys.executable, "-m", module] + (["--quick", "--no-write"] if args.quick else [])
        print(f"\n=== {' '.join(command[1:])}", flush=True)
        start = time.perf_counter()
        if subprocess.run(command, cwd=ROOT, check=False).returncode != 0:
            failed.append(module)
        print(f"=== {module}: {time.perf_counter() - start:.0f} s", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
