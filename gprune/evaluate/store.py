"""The run folder: settings, per-process result shards written atomically, image copies, and the merge.

    OUT/run.json             settings that decide the rows (a re-run must match them) + facts about the run
    OUT/shards/*.parquet     each holds whole examples (every row of an example), written by one process
    OUT/images/<sha256>.ext  each evaluated image once, byte for byte as the dataset stored it
    OUT/progress/p<rank>     how many examples each process finished in the current invocation (for the bar)
    OUT/results.parquet      the merge: one row per (row, method, keep_ratio), sorted
    OUT/summary.json         written by report.py

Every file is written to a hidden temporary name in its folder and renamed into place (`os.replace`), so a
crash or `kill -9` leaves either the whole file or none of it; temporaries are removed at the next start.
An example is done when a shard holds it, so a re-run skips it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from ..analysis import METHODS
from ..files import write_atomically

UNPRUNED = "unpruned"
METHOD_ORDER = (UNPRUNED, *METHODS)
RESULT_SCHEMA = pa.schema([
    ("question_id", pa.string()),  # as in the dataset: result_schema(pa.int64()) for integer ids
    ("row", pa.int64()),  # index of the example in the split: the key, with method and keep_ratio
    ("method", pa.string()),  # "unpruned" (keep_ratio 1) or one of gprune.METHODS
    ("keep_ratio", pa.float64()),
    ("question", pa.string()),  # as in the dataset, stripped (the prompt adds run.json's prompt_suffix)
    ("answers", pa.list_(pa.string())),  # reference answers; null without any
    ("answer", pa.string()),  # the model's greedy answer; null on error
    ("accuracy", pa.float64()),  # run.json's metric; null without reference answers or on error
    ("matches_unpruned", pa.bool_()),  # same answer as the unpruned model after VQA normalisation
    ("visual_tokens", pa.int64()),
    ("visual_tokens_kept", pa.int64()),
    ("flops_ratio", pa.float64()),  # theoretical prefill FLOPs ÷ unpruned
    ("prefill_seconds", pa.float64()),
    ("selection_seconds", pa.float64()),
    ("image", pa.string()),  # the image copy, relative to the run folder; null on error
    ("error", pa.string()),  # why the example could not be evaluated; null when it was
    ("process", pa.int32()),  # the process that evaluated it
])
KEY_COLUMNS = ("row", "method", "keep_ratio")
IMAGE_SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}


def result_schema(question_id_type: pa.DataType) -> pa.Schema:
    """RESULT_SCHEMA with `question_id` of the dataset's type (data.OpenedSplit.question_id_type)."""
    return RESULT_SCHEMA.set(RESULT_SCHEMA.get_field_index("question_id"), pa.field("question_id", question_id_type))


def parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def write_json(path: Path, data: dict) -> None:
    write_atomically(path, (json.dumps(data, indent=2) + "\n").encode())


@dataclass
class MergeReport:
    """The merged table and what the merge checked: keys dropped as duplicates, rows below `rows_expected`
    that no shard holds, and rows present with fewer than every (method, keep_ratio) key."""

    table: pa.Table
    duplicates_dropped: int
    missing_rows: list[int]
    incomplete_rows: list[int]

    @property
    def complete(self) -> bool:
        return not self.missing_rows and not self.incomplete_rows


class RunFolder:
    """One evaluation run on disk (see the module docstring for the layout)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.run_json = self.path / "run.json"
        self.shards = self.path / "shards"
        self.images = self.path / "images"
        self.progress = self.path / "progress"
        self.results = self.path / "results.parquet"
        self.summary = self.path / "summary.json"

    # ------------------------------------------------------------------------------------------ settings

    def read_run_info(self) -> dict | None:
        if not self.run_json.is_file():
            return None
        try:
            return json.loads(self.run_json.read_text())
        except ValueError as error:
            raise ValueError(f"{self.run_json} is not valid JSON ({error}); remove the folder or choose another --out") from error

    def check_settings(self, settings: dict) -> None:
        """Refuse a run folder that holds results of other settings (a re-run with the same ones resumes)."""
        info = self.read_run_info()
        if info is None:
            if self.shard_paths():
                raise ValueError(f"{self.path} holds result shards but no run.json; choose another --out")
            return
        recorded = info.get("settings")
        if recorded == settings:
            return
        if not isinstance(recorded, dict):
            raise ValueError(f"{self.run_json} has no settings; choose another --out")
        _check_fingerprint(recorded.get("dataset"), settings.get("dataset"))
        differences = [f"{key}: {json.dumps(recorded.get(key))} there, {json.dumps(settings.get(key))} now"
                       for key in sorted(set(recorded) | set(settings)) if recorded.get(key) != settings.get(key)]
        raise ValueError(f"{self.path} already holds a run with other settings ({'; '.join(differences)}). Re-run "
                         "with the same settings to resume it (--limit may grow), or choose another --out")

    def write_run_info(self, info: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.run_json, info)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the folder's lock for a whole run so that two commands never write into one folder at once."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ValueError(f"another evaluation is writing into {self.path} right now; wait for it or choose "
                                 "another --out") from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def remove_temporaries(self) -> None:
        """Half-written files of a crashed run (only ever under temporary names)."""
        for folder in (self.path, self.shards, self.images, self.progress):
            if folder.is_dir():
                for temporary in folder.glob(".*.tmp"):
                    temporary.unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------------ shards

    def shard_paths(self) -> list[Path]:
        """Finished shards in name order (names start with the time their run started)."""
        return sorted(self.shards.glob("[!.]*.parquet")) if self.shards.is_dir() else []

    def done_rows(self) -> set[int]:
        """Rows some shard holds (shards hold whole examples, so these need no more work)."""
        done: set[int] = set()
        for path in self.shard_paths():
            done.update(pq.read_table(path, columns=["row"])["row"].to_pylist())
        return done

    def shard_writer(self, process: int, examples_per_shard: int, schema: pa.Schema) -> "ShardWriter":
        self.shards.mkdir(parents=True, exist_ok=True)
        return ShardWriter(self.shards, process, examples_per_shard, schema)

    # ------------------------------------------------------------------------------------------ progress

    def clear_progress(self) -> None:
        """Forget the counts of an earlier invocation (process 0, before any process starts evaluating)."""
        for path in self.progress.glob("p*") if self.progress.is_dir() else []:
            path.unlink(missing_ok=True)

    def record_progress(self, process: int, examples: int) -> None:
        """`process` has finished `examples` examples in this invocation."""
        self.progress.mkdir(parents=True, exist_ok=True)
        write_atomically(self.progress / f"p{process:04d}", str(examples).encode())

    def progress_examples(self) -> int:
        """Examples every process has finished in this invocation, as far as their files say."""
        total = 0
        for path in self.progress.glob("p*") if self.progress.is_dir() else []:
            with contextlib.suppress(OSError, ValueError):  # replaced or removed while being read
                total += int(path.read_text())
        return total

    def save_image(self, data: bytes) -> str:
        """Keep one copy of an evaluated image, named by its content; returns its path relative to the folder."""
        with Image.open(io.BytesIO(data)) as image:  # header only: the format decides the suffix
            suffix = IMAGE_SUFFIXES.get(image.format or "", ".img")
        name = f"{hashlib.sha256(data).hexdigest()[:32]}{suffix}"
        path = self.images / name
        if not path.is_file():
            self.images.mkdir(parents=True, exist_ok=True)
            write_atomically(path, data)
        return f"images/{name}"

    # ------------------------------------------------------------------------------------------ merge

    def merge(self, rows_expected: int, keys_per_example: int, schema: pa.Schema) -> MergeReport:
        """Merge every shard (of `schema`) into `results.parquet` (atomically): duplicate keys dropped (first
        shard wins), rows sorted by (row, keep_ratio descending, method in METHOD_ORDER); checks that rows
        0..rows_expected−1 are there, each with `keys_per_example` rows."""
        tables = [pq.read_table(path, schema=schema) for path in self.shard_paths()]
        table = pa.concat_tables(tables) if tables else schema.empty_table()
        seen: set[tuple] = set()
        keep = []
        for index, key in enumerate(zip(*(table[column].to_pylist() for column in KEY_COLUMNS))):
            if key not in seen:
                seen.add(key)
                keep.append(index)
        duplicates = table.num_rows - len(keep)
        table = table.take(pa.array(keep, pa.int64()))
        order = pc.index_in(table["method"], value_set=pa.array(METHOD_ORDER))
        table = table.append_column("method_order", order)
        table = table.sort_by([("row", "ascending"), ("keep_ratio", "descending"), ("method_order", "ascending")])
        table = table.drop_columns(["method_order"])
        write_atomically(self.results, parquet_bytes(table))
        counts: dict[int, int] = {}
        for row in table["row"].to_pylist():
            counts[row] = counts.get(row, 0) + 1
        missing = [row for row in range(rows_expected) if row not in counts]
        incomplete = sorted(row for row, count in counts.items() if count != keys_per_example)
        return MergeReport(table, duplicates, missing, incomplete)


def _check_fingerprint(recorded: dict | None, current: dict | None) -> None:
    """Refuse the same dataset (source, split, columns) with other content: new rows would mix with old ones.
    The message names no path (only fingerprints), whoever shows it."""
    if not isinstance(recorded, dict) or not isinstance(current, dict):
        return
    without = {key: value for key, value in recorded.items() if key != "fingerprint"}
    if without != {key: value for key, value in current.items() if key != "fingerprint"}:
        return  # another dataset: check_settings lists the differences
    there, now = recorded.get("fingerprint"), current.get("fingerprint")
    if there is None:
        raise ValueError("this run folder records no dataset fingerprint (an older version wrote it), so whether its "
                         "rows come from the same data cannot be checked; choose another --out")
    if there != now:
        raise ValueError(f"the dataset's content is not the one this run folder's rows were evaluated on (fingerprint "
                         f"{there} there, {now} now), so new rows would mix with rows of other data. Evaluate it into "
                         "another --out, or restore the data the run started with to resume it")


class ShardWriter:
    """Buffers whole examples of one process and writes them as a shard every `examples_per_shard` examples."""

    def __init__(self, folder: Path, process: int, examples_per_shard: int, schema: pa.Schema):
        self.folder, self.process, self.examples_per_shard, self.schema = folder, process, examples_per_shard, schema
        # Unique across runs, processes and machines; starts with the time so that name order = age.
        self.prefix = f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(4)}-p{process:04d}"
        self.buffer: list[dict] = []
        self.examples = 0
        self.written = 0

    def add(self, rows: list[dict]) -> None:
        """Add every row of one example (RESULT_SCHEMA columns)."""
        self.buffer.extend(rows)
        self.examples += 1
        if self.examples >= self.examples_per_shard:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        table = pa.Table.from_pylist(self.buffer, schema=self.schema)
        path = self.folder / f"{self.prefix}-{self.written:05d}.parquet"
        write_atomically(path, parquet_bytes(table))
        self.written += 1
        self.buffer, self.examples = [], 0
