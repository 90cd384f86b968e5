"""`python -m gprune.train`: train the `shapes` LLaVA-NeXT from scratch on the CPU, then write its report.

    python -m gprune.train --out runs/train-shapes            # the shipped recipe (about an hour on 2 cores)
    python -m gprune.train --out runs/train-shapes            # run again: resumes from the newest checkpoint
    python -m gprune.train --out runs/train-shapes --install  # then copy the model to assets/models/shapes

Writes OUT/checkpoints/ (Trainer checkpoints, for resuming), OUT/model/ (the final model in the hub layout),
OUT/report.md, OUT/curves.png and OUT/report.json (loss and validation accuracy per step, wall time).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from .data import Recipe
from .loop import Schedule, train
from .report import write_report

SHIPPED = Path(__file__).resolve().parents[2] / "assets" / "models" / "shapes"


def parse_args(argv: list[str]) -> argparse.Namespace:
    recipe, schedule = Recipe(), Schedule()
    parser = argparse.ArgumentParser(prog="python -m gprune.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="run folder (re-run the same command to resume)")
    parser.add_argument("--easy-vqa-epochs", type=int, default=recipe.easy_vqa_epochs)
    parser.add_argument("--scenes", type=int, default=recipe.scene_count, help="generated training scenes")
    parser.add_argument("--seed", type=int, default=recipe.seed)
    parser.add_argument("--batch-size", type=int, default=schedule.batch_size)
    parser.add_argument("--accumulation", type=int, default=schedule.accumulation)
    parser.add_argument("--learning-rate", type=float, default=schedule.learning_rate)
    parser.add_argument("--max-steps", type=int, default=schedule.max_steps, help="stop after N optimiser steps (-1: the whole recipe)")
    parser.add_argument("--eval-steps", type=int, default=schedule.eval_steps)
    parser.add_argument("--save-steps", type=int, default=schedule.save_steps)
    parser.add_argument("--threads", type=int, default=schedule.threads)
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    parser.add_argument("--no-resume", action="store_true", help="start afresh even if OUT holds checkpoints")
    parser.add_argument("--install", action="store_true", help=f"copy OUT/model to {SHIPPED.relative_to(SHIPPED.parents[2])}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    for name in ("easy_vqa_epochs", "scenes", "batch_size", "accumulation", "eval_steps", "save_steps", "threads"):
        if getattr(args, name) < 1 and not (name == "easy_vqa_epochs" and getattr(args, name) == 0):
            print(f"error: --{name.replace('_', '-')} must be a whole number >= 1", file=sys.stderr)
            return 2
    recipe = Recipe(easy_vqa_epochs=args.easy_vqa_epochs, scene_count=args.scenes, seed=args.seed)
    schedule = Schedule(batch_size=args.batch_size, accumulation=args.accumulation, learning_rate=args.learning_rate,
                        eval_steps=args.eval_steps, save_steps=args.save_steps, threads=args.threads,
                        bf16=not args.fp32, max_steps=args.max_steps)
    started = time.perf_counter()
    trainer = train(args.out, recipe, schedule, resume=not args.no_resume)
    write_report(args.out, trainer.state.log_history, recipe, schedule, seconds=time.perf_counter() - started)
    if args.install:
        card = SHIPPED / "README.md"
        card_text = card.read_text(encoding="utf-8") if card.is_file() else None  # the model card is written by hand
        shutil.rmtree(SHIPPED, ignore_errors=True)
        shutil.copytree(args.out / "model", SHIPPED)
        shutil.copyfile(args.out / "curves.png", SHIPPED / "training-curves.png")
        if card_text is not None:
            card.write_text(card_text, encoding="utf-8")
        print(f"installed the model and its curves in {SHIPPED} (update the model card's figures)")
    print(f"wrote {args.out / 'model'}, {args.out / 'report.md'} and {args.out / 'curves.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
