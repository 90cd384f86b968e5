"""Evaluate every pruning method on a VQA benchmark, in one process or many (Hugging Face accelerate).

One module per job: `data` (datasets loading, column mapping, streaming, each process's share of the rows),
`normalize` (the answer normalisations of the VQA evaluations), `metric` (VQA accuracy as ours or as one
reference evaluation computes it, exact match), `runner` (the per-example loop and accelerate's process state),
`store` (the run folder: settings, atomic per-process shards, image copies, merge), `report` (summary.json and
the printed table), `progress` (one bar over the whole run, fed by every process), `launch` (N CPU processes from
`accelerate launch --cpu`; workers that end with their launcher). The CLI is `python -m gprune.evaluate`; see
README "Evaluate on a benchmark". Names are imported on first use, so the CLI checks its options before
datasets, pyarrow and torch are loaded.
"""

from ..lazy import make_lazy

EXPORTS = {
    **dict.fromkeys(("VQA_PROMPT_SUFFIX", "DatasetSpec", "Example", "ProcessShare", "open_split", "parse_columns",
                     "read_example"), ".data"),
    **dict.fromkeys(("METRICS", "exact_match", "lmms_vqav2_accuracy", "m4c_accuracy", "same_answer",
                     "score", "vqa_accuracy", "vqa_official_accuracy"), ".metric"),
    **dict.fromkeys(("evalai_answer", "normalize_answer"), ".normalize"),
    **dict.fromkeys(("format_table", "summarize"), ".report"),
    **dict.fromkeys(("RESULT_SCHEMA", "RunFolder"), ".store"),
}

__all__ = list(EXPORTS)

make_lazy(__name__)
