"""A small VQA split in the lmms-lab schema built from assets/, and the evaluation commands the tests run on it.

Rows: the six bundled images with their questions, plus two bad examples: row 3 holds bytes that are no
image, row 5 an empty question. Answers are ten strings per row (VQAv2/TextVQA style). Also: the processes
of a running command, from /proc (Linux).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
UNDECODABLE_ROW, EMPTY_QUESTION_ROW = 3, 5
BAD_ROWS = (UNDECODABLE_ROW, EMPTY_QUESTION_ROW)
METHODS = ("gprune", "fastv", "tome", "l2norm", "random")
KEEP_RATIOS = (0.5, 0.11)
MAX_NEW_TOKENS = 4
PNG_SIGNATURE = b"\x89PNG"
OPTIONS = ["--model", "tiny", "--methods", ",".join(METHODS), "--keep-ratios", ",".join(map(str, KEEP_RATIOS)),
           "--max-new-tokens", str(MAX_NEW_TOKENS)]
# Options that make a run cheap where only the run folder's bookkeeping is tested (later options win).
CHEAP = ("--methods", "gprune", "--keep-ratios", "0.5")
# Columns that depend on the machine or on which process ran a row, not on the model.
NOT_COMPARED = ("prefill_seconds", "selection_seconds", "process")
FEATURES = datasets.Features({
    "image": datasets.Image(), "question": datasets.Value("string"),
    "answers": datasets.List(datasets.Value("string")), "question_id": datasets.Value("string"),
})
INTEGER_ID_FEATURES = datasets.Features({**FEATURES, "question_id": datasets.Value("int64")})


def vqa_rows(answers: dict[int, list[str]] | None = None) -> list[dict]:
    """The rows (image as `{"bytes", "path"}`, string ids); `answers[row]` replaces the default ten answers of a row."""
    examples = json.loads((ASSETS / "examples.json").read_text())
    rows = [{"image": {"bytes": (ASSETS / e["file"]).read_bytes(), "path": None}, "question": e["question"],
             "answers": ["yes"] * 6 + ["no"] * 4, "question_id": f"q{e['file'].split('.')[0]}"} for e in examples]
    rows.insert(UNDECODABLE_ROW, {"image": {"bytes": b"these bytes are not an image", "path": None},
                                  "question": "What is this?", "answers": ["nothing"] * 10, "question_id": "qbroken"})
    rows.insert(EMPTY_QUESTION_ROW, {**rows[EMPTY_QUESTION_ROW], "question": "   ", "question_id": "qempty"})
    for row, replacement in (answers or {}).items():
        rows[row] = {**rows[row], "answers": replacement}
    return rows


def save_to_disk(rows: list[dict], folder: Path, features: datasets.Features = FEATURES) -> Path:
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows, features=features)}).save_to_disk(str(folder))
    return folder


def save_parquet(rows: list[dict], folder: Path, renamed: dict[str, str] | None = None) -> Path:
    """One parquet file named after the split (as on the hub), columns optionally renamed."""
    folder.mkdir(parents=True, exist_ok=True)
    table = datasets.Dataset.from_list(rows, features=FEATURES)
    if renamed:
        table = table.rename_columns(renamed)
    table.to_parquet(str(folder / "validation-00000-of-00001.parquet"))
    return folder


def save_imagefolder(rows: list[dict], folder: Path) -> Path:
    """imagefolder + metadata.jsonl in a `validation/` folder (one image file per row)."""
    split = folder / "validation"
    split.mkdir(parents=True)
    with open(split / "metadata.jsonl", "w") as metadata:
        for index, row in enumerate(rows):
            name = f"{index:02d}{'.png' if row['image']['bytes'].startswith(PNG_SIGNATURE) else '.jpg'}"
            (split / name).write_bytes(row["image"]["bytes"])
            fields = {key: row[key] for key in ("question", "answers", "question_id")}
            metadata.write(json.dumps({"file_name": name, **fields}) + "\n")
    return folder


def environment() -> dict:
    """The test environment for subprocesses: offline hub, unbuffered output."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def evaluate_command(dataset: Path, out: Path, *extra: str, processes: int = 1, progress: bool = False) -> list[str]:
    """`python -m gprune.evaluate …`, or `accelerate launch --num_processes N --cpu -m gprune.evaluate …`."""
    options = ["--dataset", str(dataset), *OPTIONS, *([] if progress else ["--no-progress"]), "--out", str(out), *extra]
    if processes == 1:
        return [sys.executable, "-m", "gprune.evaluate", *options]
    accelerate = Path(sys.executable).parent / "accelerate"
    return [str(accelerate), "launch", "--num_processes", str(processes), "--cpu", "-m", "gprune.evaluate", *options]


def run_evaluate(dataset: Path, out: Path, *extra: str, processes: int = 1, progress: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(evaluate_command(dataset, out, *extra, processes=processes, progress=progress), cwd=ROOT,
                          env=environment(), capture_output=True, text=True, timeout=300)


def comparable_rows(results: Path) -> list[dict]:
    """The rows of a results.parquet without the columns that may differ between equal runs."""
    return pq.read_table(results).drop_columns(list(NOT_COMPARED)).to_pylist()


def shard_rows(shards: list[Path]) -> set[int]:
    return {row for path in shards for row in pq.read_table(path, columns=["row"])["row"].to_pylist()}


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first, then the parent's pid); None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # the name, in parentheses, may hold spaces


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (children, their children, …)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        fields = _stat_fields(int(entry.name)) if entry.name.isdigit() else None
        if fields is not None:
            parents[int(entry.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def running(pid: int) -> bool:
    """Whether `pid` still runs (a zombie has ended; it only waits to be reaped)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"
