"""CPU time of a first export (`app_views.export_zip`) against the Run it exports, side by side in one process.

    python -m bench.export_cost            # 640×480 and 1344×1008 synthetic images, all five methods, defaults
    python -m bench.export_cost --quick    # 640×480 only; writes nothing

CPU time (`time.process_time`, all threads) of `gprune.analyze` on the tiny model, then of building the ZIP
of that run (slide figures as PNG, two iteration GIFs, the arrays), and the ZIP's size.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .common import machine, machine_line, markdown_table, write_results

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.export_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import app_views as views
    from gprune import AnalysisConfig, analyze, load_model

    from .models import synthetic_image

    info = machine()
    model = load_model("tiny")
    analyze(model, synthetic_image(160, 120), "Warm up?", AnalysisConfig(max_new_tokens=2))  # first-call costs
    sizes = [(640, 480)] if args.quick else [(640, 480), (1344, 1008)]
    rows, data = [], []
    for width, height in sizes:
        start = time.process_time()
        analysis = analyze(model, synthetic_image(width, height), "What is in the image?", AnalysisConfig())
        run_s = time.process_time() - start
        start = time.process_time()
        archive = views.export_zip(views.new_session(analysis))
        export_s = time.process_time() - start
        rows.append([f"{width}×{height}", f"{run_s:.1f}", f"{export_s:.1f}", f"{export_s / run_s:.1f}×",
                     f"{len(archive) / 2**20:.1f}"])
        data.append({"size": [width, height], "run_cpu_s": run_s, "export_cpu_s": export_s, "zip_bytes": len(archive)})
    markdown = "\n".join(["# Export cost (tiny model, all five methods, default settings)", "",
                          f"Machine: {machine_line(info)}.", "",
                          markdown_table(["image", "Run CPU s", "first export CPU s", "export / Run", "ZIP MB"], rows)])
    print(markdown)
    if not (args.no_write or args.quick):
        for path in write_results("export_cost", {"machine": info, "cases": data}, markdown):
            print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
