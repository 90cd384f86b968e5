"""What `import gprune` costs: each statement in a fresh interpreter, the cases side by side in rounds.

    python -m bench.import_time            # 5 rounds (~2 min on 2 cores)
    python -m bench.import_time --quick    # one round, no files written

Cases: `import torch` (the floor of every tensor method), `import gprune`, `from gprune import gprune_scores`
(a pure method), `from gprune import patch` (the model plumbing) and `from gprune import *` (every public name:
what `import gprune` cost when the package imported everything up front). Each child times its own statement
(interpreter start excluded) and lists which heavy libraries it loaded; the ratio to `from gprune import *`
is taken inside each round, median over rounds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from .common import (Quiet, contention_line, machine, machine_line, markdown_table, median, ms, paired_ratio,
                     write_results)

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "accelerate", "datasets", "pyarrow", "cv2", "matplotlib")
CASES = {
    "import torch": "import torch",
    "import gprune": "import gprune",
    "from gprune import gprune_scores": "from gprune import gprune_scores",
    "from gprune import patch": "from gprune import patch",
    "from gprune import * (everything)": "from gprune import *",
}
EVERYTHING = "from gprune import * (everything)"
COLUMNS = ["statement", "median ms", "min ms", "÷ everything", "heavy libraries loaded"]
CHILD = """
import json, sys, time
start = time.perf_counter()
exec({statement!r})
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "loaded": [m for m in {heavy!r} if m in sys.modules]}}))
"""


def run_case(statement: str) -> dict:
    code = CHILD.format(statement=statement, heavy=HEAVY)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.import_time", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    quiet = Quiet(enabled=not args.quick, include_children=True)
    names = list(CASES)
    seconds = {name: [] for name in names}
    loaded, foreign = {}, []
    for round_index in range(-1, rounds):  # one warm-up round (page cache)
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            result, _, share = quiet.run(lambda: run_case(CASES[name]))
            if round_index >= 0:
                seconds[name].append(result["seconds"])
                loaded[name] = result["loaded"]
                foreign.append(share)
    rows = [[name, ms(median(seconds[name])), ms(min(seconds[name])),
             f"{paired_ratio(seconds[name], seconds[EVERYTHING]):.2g}", ", ".join(loaded[name]) or "none"]
            for name in names]
    info = machine()
    markdown = "\n\n".join([
        f"Import time, fresh interpreter per statement, {rounds} round(s) after a warm-up.",
        markdown_table(COLUMNS, rows), quiet.summary(), contention_line(foreign), machine_line(info)])
    print(markdown)
    if not args.no_write:
        write_results("import_time", {"machine": info, "seconds": seconds, "loaded": loaded, "foreign": foreign},
                      markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
