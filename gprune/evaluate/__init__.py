"""Evaluate every pruning method on a VQA benchmark, in one process or many (Hugging Face accelerate).

One module per job: `data` (datasets loading, column mapping, streaming, each process's share of the rows),
`metric` (VQA accuracy and answer normalisation), `runner` (the per-example loop and accelerate's process
state), `store` (the run folder: settings, atomic per-process shards, image copies, merge), `report`
(summary.json and the printed table), `launch` (N CPU processes from `accelerate launch --cpu`). The CLI is
`python -m gprune.evaluate`; see README "Evaluate on a benchmark".
"""

from .data import VQA_PROMPT_SUFFIX, DatasetSpec, Example, ProcessShare, open_split, parse_columns, read_example
from .metric import exact_match, normalize_answer, same_answer, vqa_accuracy
from .report import format_table, summarize
from .store import RESULT_SCHEMA, RunFolder

__all__ = [
    "VQA_PROMPT_SUFFIX", "DatasetSpec", "Example", "ProcessShare", "open_split", "parse_columns", "read_example",
    "exact_match", "normalize_answer", "same_answer", "vqa_accuracy", "format_table", "summarize", "RESULT_SCHEMA",
    "RunFolder",
]
