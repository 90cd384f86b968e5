"""`python -m gprune precompute`: every example through every method at the default settings, plus the sweep,
written as bundles the explorer serves without a model, and a readable report.

    python -m gprune precompute --model llava-hf/llava-v1.6-mistral-7b-hf --examples assets/examples.json \\
        --out assets/precomputed/

writes `OUT/<example>.json` + `OUT/<example>.npz` per example (gprune/bundle.py) and `OUT/report.md` (answers,
kept counts, FLOPs and timings per method and example).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from .analysis import DEFAULT_SWEEP_RATIOS, METHOD_LABELS, Analysis, AnalysisConfig, analyze_encoded, answer_stability
from .bundle import write_bundle
from .images import fit_image, load_image
from .loading import load_model
from .pipeline import encode

PACKAGE = Path(__file__).resolve().parent


def code_version() -> str:
    """The git commit (when the code is a checkout) and a hash of gprune/*.py, which is what decides the numbers."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PACKAGE, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        head = ""
    return f"{head or 'no git'} gprune-sha256:{digest.hexdigest()[:12]}"


def read_examples(path: Path) -> list[tuple[Path, str]]:
    """`[(image file, question)]` from an examples.json (`[{"file": …, "question": …}]`, files beside it)."""
    try:
        entries = json.loads(Path(path).read_text(encoding="utf-8"))
        # Stripped, as the app reads a question: a bundle is found by the exact text.
        examples = [(Path(path).parent / entry["file"], entry["question"].strip()) for entry in entries]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} must be a JSON list of {{\"file\": …, \"question\": …}} entries ({error})") from None
    missing = [str(file) for file, _ in examples if not file.is_file()]
    if missing:
        raise ValueError(f"example images not found: {', '.join(missing)}")
    return examples


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gprune precompute", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="'shapes', 'tiny', a hub id or a local LLaVA-NeXT folder")
    parser.add_argument("--examples", type=Path, default=Path("assets/examples.json"))
    parser.add_argument("--out", type=Path, default=Path("assets/precomputed"))
    parser.add_argument("--device", default=None, help="'cpu', 'cuda' or 'cuda:N' (default: CUDA when available)")
    parser.add_argument("--timing-rounds", type=int, default=3,
                        help="timed rounds of each method's selection and prefill after the answer run (0: none)")
    return parser.parse_args(argv)


def report_markdown(rows: list[tuple[str, Analysis]], model: str, device: str, dtype: str, created: str, code: str) -> str:
    """Answers, kept counts, FLOPs and timings per example and method, as one markdown page."""
    lines = [f"# Precomputed examples: {model}", "",
             f"{created} · {device} · {dtype} · code {code}. Timings: median [min–max] of the timed rounds after a "
             "warm-up (the answer run); FastV's selection is inside its prefill.", ""]
    for name, analysis in rows:
        lines += [f"## {name}: “{analysis.question}”", "",
                  f"{analysis.layout.image_width}×{analysis.layout.image_height} image, {analysis.layout.n_tokens:,} "
                  f"visual tokens; keep ratio {analysis.config.keep_ratio:g}.", "",
                  "| method | visual tokens | FLOPs | selection ms | prefill ms | answer |", "|---|---|---|---|---|---|"]
        for result in [analysis.reference, *analysis.results.values()]:
            lines.append(f"| {METHOD_LABELS[result.method]} | {result.tokens_after:,}/{result.tokens_before:,} | "
                         f"{result.flops_ratio:.1%} | {_ms(result.selection_timing)} | {_ms(result.prefill_timing)} | "
                         f"{result.answer.replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines)


def _ms(timing) -> str:
    return "—" if timing is None else f"{timing.median * 1e3:.1f} [{timing.low * 1e3:.1f}–{timing.high * 1e3:.1f}]"


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        examples = read_examples(args.examples)
        print(f"loading model {args.model} …", file=sys.stderr)
        loaded = load_model(args.model, device=args.device)
        config = AnalysisConfig(timing_rounds=args.timing_rounds)
        config = replace(config, fastv_layer=min(config.fastv_layer, loaded.model.config.text_config.num_hidden_layers - 1))
        config.validate(loaded.model.config.text_config.num_hidden_layers)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    created = time.strftime("%Y-%m-%d")
    code = code_version()
    rows, failed = [], 0
    for file, question in examples:
        start = time.perf_counter()
        image_bytes = file.read_bytes()
        try:
            image = fit_image(load_image(image_bytes))
            encoded = encode(loaded, image, question, system_prompt=config.system_prompt)  # once: Run and sweep
            analysis = analyze_encoded(loaded, encoded, image, question, config)
            curves = answer_stability(loaded, encoded, analysis.reference.answer_token_ids, list(DEFAULT_SWEEP_RATIOS),
                                      config)
        except ValueError as error:  # one bad example: say so, make the others
            print(f"error: {file.name}: {error}", file=sys.stderr)
            failed += 1
            continue
        stability = {"keep_ratios": list(DEFAULT_SWEEP_RATIOS), "curves": {m: [float(v) for v in c] for m, c in curves.items()}}
        path = write_bundle(analysis, image_bytes, args.out, file.stem, created=created, code_version=code,
                            layers=loaded.model.config.text_config.num_hidden_layers, stability=stability)
        rows.append((file.stem, analysis))
        print(f"wrote {path} ({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    report = args.out / "report.md"
    report.write_text(report_markdown(rows, loaded.name, str(loaded.device), str(loaded.dtype), created, code) + "\n",
                      encoding="utf-8")
    print(f"wrote {report}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
