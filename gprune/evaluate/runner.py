"""One process of an evaluation run: its share of the examples, each through the model once, into shards.

Processes come from accelerate (`PartialState`: rank, world size, device; one model per process). They
split the remaining rows round-robin (data.ProcessShare), never talk except at three barriers, and meet
in the run folder (store.RunFolder):

1. process 0 takes the folder's lock first, so a busy folder is refused before any setup;
2. every process opens the dataset and checks the folder's settings and the dataset's fingerprint
   (before loading the model);
3. process 0 removes temporaries of a crash and records run.json — barrier;
4. every process reads which rows the shards already hold — barrier (nobody writes before all have read);
5. each evaluates its share: `gprune.encode` once per example (the vision tower once), then
   `gprune.run_grid` (the unpruned reference once, every method × keep ratio); whole examples go into
   atomically written shards, and each process counts its finished examples for process 0's bar
   (progress.RunProgress) — barrier;
6. process 0 merges the shards into results.parquet and writes summary.json and the table.

Determinism: every process builds the same model and runs an example alone (batch of one), with
`threads` torch CPU threads; the random baseline is seeded per run. So which process evaluates a row,
and how many there are, does not change its results (timings aside) at equal `threads`.
"""

from __future__ import annotations

import contextlib
import datetime
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from tqdm import tqdm

from ..analysis import AnalysisConfig, run_grid
from ..images import fit_image, load_image
from ..loading import LoadedModel, load_model
from ..pipeline import encode
from ..result import PruneResult
from .data import DatasetSpec, Example, ProcessShare, open_split
from .metric import score, same_answer
from .progress import RunProgress
from .report import format_table, summarize
from .store import UNPRUNED, MergeReport, RunFolder, result_schema, write_json

# Processes that finish their share early wait this long at the last barrier for the slowest one.
BARRIER_TIMEOUT = datetime.timedelta(hours=24)
# Per-example failures that are the example's fault (bad image, empty or invalid question, a too large
# image for the device); anything else is a bug and stops the run (a re-run resumes).
EXAMPLE_ERRORS = (ValueError, torch.OutOfMemoryError)
MAX_ERROR_CHARS = 500


@dataclass(frozen=True)
class Settings:
    """Everything that decides the result rows; recorded in run.json, and a re-run must match it."""

    model: str
    dataset: DatasetSpec
    prompt_suffix: str
    metric: str
    keep_ratios: tuple[float, ...]
    analysis: AnalysisConfig

    def to_json(self, fingerprint: str) -> dict:
        """The settings as run.json records them, with the opened dataset's `fingerprint`."""
        analysis = self.analysis
        return {
            "model": self.model, "dataset": {**self.dataset.describe(), "fingerprint": fingerprint},
            "prompt_suffix": self.prompt_suffix,
            "metric": self.metric, "methods": list(analysis.methods), "keep_ratios": list(self.keep_ratios),
            "iterations": analysis.iterations, "threshold": analysis.threshold, "temperature": analysis.temperature,
            "fastv_layer": analysis.fastv_layer, "max_new_tokens": analysis.max_new_tokens, "seed": analysis.seed,
        }

    @property
    def keys_per_example(self) -> int:
        return 1 + len(self.analysis.methods) * len(self.keep_ratios)


@dataclass(frozen=True)
class Execution:
    """How to run (free to change between re-runs): how many rows, CPU threads per process, shard size."""

    limit: int | None = None
    threads: int = 1
    examples_per_shard: int = 8
    progress: bool = True
    command: str = ""


def process_state() -> PartialState:
    """accelerate's view of this process; on the CPU when asked (`accelerate launch --cpu`) or without CUDA."""
    use_cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
    return PartialState(cpu=use_cpu, timeout=BARRIER_TIMEOUT)


def evaluate(settings: Settings, execution: Execution, out: Path) -> dict | None:
    """Run (or resume) the evaluation into `out`; process 0 returns the summary, the others None.

    Raises `ValueError` for bad settings, an unreadable dataset or a folder holding another run.
    """
    state = process_state()
    main = state.is_main_process
    folder = RunFolder(out)
    with folder.exclusive() if main else contextlib.nullcontext():
        opened = open_split(settings.dataset)
        recorded = settings.to_json(opened.fingerprint)
        folder.check_settings(recorded)
        torch.set_num_threads(execution.threads)
        loaded = load_model(settings.model, device="cpu" if state.device.type == "cpu" else str(state.device))
        settings.analysis.validate(loaded.model.config.text_config.num_hidden_layers)
        if main:
            folder.remove_temporaries()
            folder.clear_progress()
            folder.write_run_info({
                "settings": recorded, "model_name": loaded.name, "random_weights": loaded.random_weights,
                "limit": execution.limit, "command": execution.command,
                "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            })
        state.wait_for_everyone()
        done = folder.done_rows()
        state.wait_for_everyone()
        share = ProcessShare(opened, settings.dataset, limit=execution.limit, done=done,
                             rank=state.process_index, world=state.num_processes)
        if main and share.done_in_run:
            left = "" if share.run_size is None else f", {share.run_size - share.done_in_run} left"
            print(f"resuming: {share.done_in_run} done{left}", file=sys.stderr)
        schema = result_schema(opened.question_id_type)
        writer = folder.shard_writer(state.process_index, execution.examples_per_shard, schema)
        started = time.perf_counter()
        bar = (RunProgress(folder, share.run_size, share.done_in_run, state.num_processes)
               if main and execution.progress else contextlib.nullcontext())
        with bar:
            for finished, example in enumerate(share, start=1):
                writer.add(evaluate_example(loaded, example, settings, folder, state.process_index))
                if execution.progress:
                    folder.record_progress(state.process_index, finished)
            writer.flush()
            state.wait_for_everyone()
        seconds = time.perf_counter() - started
        if not main:
            return None
        merged = folder.merge(share.rows_seen, settings.keys_per_example, schema)
        evaluated = len(set(merged.table["row"].to_pylist()) - done)
        invocation = {"processes": state.num_processes, "threads": execution.threads, "device": str(state.device),
                      "examples_evaluated": evaluated, "seconds": seconds,
                      "examples_per_second": evaluated / seconds if seconds > 0 else None}
        summary = run_summary(recorded, loaded, merged, share.rows_seen, invocation)
        write_json(folder.summary, summary)
        print(format_table(summary))
        return summary


def run_summary(settings: dict, loaded: LoadedModel, merged: MergeReport, rows_expected: int, invocation: dict) -> dict:
    """summary.json: what ran on what (`settings` as run.json records them), the report's counts and table,
    the merge checks, this invocation."""
    return {
        "model": loaded.name, "random_weights": loaded.random_weights, "dataset": settings["dataset"],
        "metric": settings["metric"], "prompt_suffix": settings["prompt_suffix"],
        **summarize(merged.table.to_pylist(), settings["methods"], settings["keep_ratios"]),
        "merge": {"rows_expected": rows_expected, "duplicates_dropped": merged.duplicates_dropped,
                  "missing_rows": merged.missing_rows, "incomplete_rows": merged.incomplete_rows},
        "invocation": invocation,
    }


def evaluate_example(loaded: LoadedModel, example: Example, settings: Settings, folder: RunFolder,
                     process: int) -> list[dict]:
    """Every result row of one example (store.RESULT_SCHEMA): the reference, then method × keep ratio."""
    if example.problem:
        return error_rows(example, example.problem, settings, process)
    try:
        image = fit_image(load_image(example.image_bytes))  # as the explorer decodes it, so a failure reopens alike
        encoded = encode(loaded, image, example.question + settings.prompt_suffix)
        reference, results = run_grid(loaded, encoded, settings.analysis, list(settings.keep_ratios))
    except EXAMPLE_ERRORS as error:
        return error_rows(example, str(error) or type(error).__name__, settings, process)
    image_path = folder.save_image(example.image_bytes)
    ordered = [reference] + [results[(method, ratio)] for ratio in settings.keep_ratios for method in settings.analysis.methods]
    return [_result_row(example, result, reference, settings, image_path, process) for result in ordered]


def _base_row(example: Example, process: int) -> dict:
    return {"question_id": example.question_id, "row": example.row, "question": example.question,
            "answers": example.answers, "process": process}


def _result_row(example: Example, result: PruneResult, reference: PruneResult, settings: Settings, image: str,
                process: int) -> dict:
    return {
        **_base_row(example, process),
        "method": result.method, "keep_ratio": result.keep_ratio, "answer": result.answer,
        "accuracy": score(settings.metric, result.answer, example.answers) if example.answers else None,
        "matches_unpruned": same_answer(result.answer, reference.answer),
        "visual_tokens": result.tokens_before, "visual_tokens_kept": result.tokens_after,
        "flops_ratio": result.flops_ratio, "prefill_seconds": result.prefill_seconds,
        "selection_seconds": result.selection.seconds, "image": image, "error": None,
    }


def error_rows(example: Example, message: str, settings: Settings, process: int) -> list[dict]:
    """The rows of an example that could not be evaluated: every key, no answer, the reason in `error`."""
    message = message.strip()[:MAX_ERROR_CHARS]
    tqdm.write(f"row {example.row} (question_id {example.question_id}) skipped: {message}", file=sys.stderr)
    keys = [(UNPRUNED, 1.0)] + [(method, ratio) for ratio in settings.keep_ratios for method in settings.analysis.methods]
    return [{**_base_row(example, process), "method": method, "keep_ratio": ratio, "error": message} for method, ratio in keys]
