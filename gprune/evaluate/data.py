"""Benchmark rows through Hugging Face `datasets`: open one split as a stream, map its columns, deal rows to processes.

A source is a hub id (cached or reachable), a folder written by `save_to_disk`, a local folder that
`load_dataset` reads (imagefolder + metadata, parquet files) or one parquet file. Rows are read one at a
time (a `save_to_disk` folder is memory-mapped), and images stay undecoded bytes until the process that
owns the row decodes them, so a large split never sits in memory.

Default columns are the lmms-lab VQA schema: `image` (an image), `question` (str), `answers` (list of str,
optional) and `question_id` (optional; else the row index). A row is identified by its index in the split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import datasets
from datasets.utils.file_utils import xopen

from ..train.benchmarks import BENCHMARKS, benchmark_path

VQA_PROMPT_SUFFIX = "\nAnswer the question using a single word or phrase."
ROLES = ("image", "question", "answers", "question_id")
OPTIONAL_ROLES = ("answers", "question_id")


def parse_columns(text: str | None) -> dict[str, str]:
    """`"image=img,question=query"` → `{"image": "img", "question": "query"}`; roles not named keep their default."""
    mapping: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        role, sep, column = (piece.strip() for piece in part.partition("="))
        if not sep or not role or not column:
            raise ValueError(f"--columns takes ROLE=COLUMN pairs separated by commas, e.g. image=img,question=query; got {part.strip()!r}")
        if role not in ROLES:
            raise ValueError(f"unknown column role {role!r} in --columns; roles are {', '.join(ROLES)}")
        if role in mapping:
            raise ValueError(f"column role {role!r} is given twice in --columns")
        mapping[role] = column
    return mapping


@dataclass
class DatasetSpec:
    """Which rows to evaluate: `source` (hub id or absolute local path), `split`, and `columns` (role → column
    for the roles the user renamed; the others use their role name)."""

    source: str
    split: str = "validation"
    columns: dict[str, str] = field(default_factory=dict)

    def column(self, role: str) -> str:
        return self.columns.get(role, role)

    def describe(self) -> dict:
        return {"source": self.source, "split": self.split, "columns": {role: self.column(role) for role in ROLES}}


def resolve_source(source: str) -> str:
    """An existing local path made absolute (so a re-run from another folder finds it), a hub id as given."""
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"--dataset must be a hub id (e.g. lmms-lab/textvqa), a save_to_disk folder, a local folder, "
                         f"a parquet file or a built-in dataset ({', '.join(BENCHMARKS)})")
    source = source.strip()
    if source in BENCHMARKS:  # the `shapes` model's test sets, written once to the cache
        return str(benchmark_path(source))
    path = Path(source).expanduser()
    if path.exists():
        return str(path.resolve())
    if path.is_absolute() or source.startswith((".", "~")) or source.count("/") > 1 or "\\" in source:
        raise ValueError(f"no dataset at {source!r}: no such file or folder (a hub id looks like owner/name)")
    return source


@dataclass
class OpenedSplit:
    """A split as a stream of raw rows; `num_rows` when the source says how many it has, else None."""

    rows: datasets.IterableDataset
    num_rows: int | None


def open_split(spec: DatasetSpec) -> OpenedSplit:
    """Open `spec` as an `IterableDataset` whose image column yields undecoded `{"bytes", "path"}` values.

    Raises `ValueError` for a source that cannot be read, a missing split or a missing column.
    """
    path = Path(spec.source)
    num_rows = None
    try:
        if path.is_dir() and any((path / marker).is_file() for marker in ("dataset_dict.json", "state.json")):
            saved = datasets.load_from_disk(str(path))
            if isinstance(saved, datasets.DatasetDict):
                if spec.split not in saved:
                    raise ValueError(f"split {spec.split!r} is not in {spec.source} (it has {', '.join(saved)}); pass --split")
                saved = saved[spec.split]
            num_rows, rows = len(saved), saved.to_iterable_dataset()
        elif path.is_file():
            if path.suffix != ".parquet":
                raise ValueError(f"{spec.source} is a file but not a .parquet file; give a parquet file, a folder or a hub id")
            rows = datasets.load_dataset("parquet", data_files={spec.split: str(path)}, split=spec.split, streaming=True)
        else:
            rows = datasets.load_dataset(spec.source, split=spec.split, streaming=True)
            split_info = (rows.info.splits or {}).get(spec.split)
            num_rows = split_info.num_examples if split_info is not None and split_info.num_examples else None
    except ValueError as error:
        if "split" in str(error).lower():
            raise ValueError(f"split {spec.split!r} could not be opened in {spec.source}: {_first_line(error)}; pass --split") from error
        raise ValueError(f"dataset {spec.source} could not be read: {_first_line(error)}") from error
    except (OSError, ConnectionError) as error:  # datasets' not-found errors are FileNotFoundError subclasses
        raise ValueError(f"dataset {spec.source!r} could not be opened ({_first_line(error)}); give a cached or "
                         "reachable hub id, a save_to_disk folder, a local folder with data files or a parquet file") from error
    _check_columns(spec, rows.column_names)
    image_column = spec.column("image")
    if rows.features is not None and isinstance(rows.features.get(image_column), datasets.Image):
        rows = rows.cast_column(image_column, datasets.Image(decode=False))  # decoded only by the owning process
    return OpenedSplit(rows, num_rows)


def _check_columns(spec: DatasetSpec, available: list[str] | None) -> None:
    if available is None:  # unknown until the first row (e.g. plain JSON); `read_example` reports it then
        return
    for role in ROLES:
        column = spec.column(role)
        if column not in available and (role not in OPTIONAL_ROLES or role in spec.columns):
            raise ValueError(f"column {column!r} ({role}) is not in {spec.source} ({spec.split}); its columns are "
                             f"{', '.join(available)}. Map yours with --columns {role}=COLUMN")


@dataclass
class Example:
    """One benchmark row, ready for the model unless `problem` says why it cannot be evaluated.

    `image_bytes` are the encoded image exactly as stored in the dataset (decoded later, by the runner);
    `answers` are the reference answers (None when the dataset has none); `question` is stripped.
    """

    row: int
    question_id: str
    question: str
    answers: list[str] | None
    image_bytes: bytes | None
    problem: str | None = None


def read_example(row: int, raw: dict, spec: DatasetSpec) -> Example:
    """Turn a raw row into an `Example`; a row whose image or question is unusable gets a `problem`."""
    for role in ("image", "question"):
        if spec.column(role) not in raw:
            raise ValueError(f"column {spec.column(role)!r} ({role}) is not in {spec.source}; its columns are "
                             f"{', '.join(raw)}. Map yours with --columns {role}=COLUMN")
    id_value = raw.get(spec.column("question_id"))
    question_id = str(row) if id_value is None else str(id_value)
    question = raw[spec.column("question")]
    question = question.strip() if isinstance(question, str) else ""
    answers, answers_problem = _answers(raw.get(spec.column("answers")))
    image_bytes, image_problem = _image_bytes(raw[spec.column("image")])
    problem = image_problem or ("the question is empty" if not question else None) or answers_problem
    return Example(row, question_id, question, answers, image_bytes, problem)


def _answers(value) -> tuple[list[str] | None, str | None]:
    """Reference answers as a list of str: a list of str, a list of {"answer": …} (VQAv2) or one str (GQA)."""
    if value is None:
        return None, None
    if isinstance(value, str):
        return [value], None
    if isinstance(value, (list, tuple)):
        answers = [item.get("answer") if isinstance(item, dict) else item for item in value]
        if all(isinstance(answer, str) for answer in answers):
            return (answers or None), None
    return None, f"the answers must be a string or a list of strings, got {type(value).__name__}"


def _image_bytes(value) -> tuple[bytes | None, str | None]:
    """The encoded image of a row: `{"bytes", "path"}` (datasets' Image), raw bytes or a file path."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"]), None
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return (bytes(value), None) if value else (None, "the image is empty")
    if isinstance(value, str) and value:
        try:
            with xopen(value, "rb") as file:  # local or remote (hf://, zip://) path
                return file.read(), None
        except OSError as error:
            return None, f"the image file {value!r} could not be read ({_first_line(error)})"
    if value is None:
        return None, "the row has no image"
    return None, f"the image column holds a {type(value).__name__}, not an image"


class ProcessShare:
    """The examples one process evaluates: among the first `limit` rows (all when None), those not `done`,
    dealt round-robin in row order, so `world` processes split the remaining work evenly whatever was done
    before (by any number of processes). Iterating reads every row up to the limit (images undecoded) and
    leaves `rows_seen` = how many rows the split offered up to the limit."""

    def __init__(self, opened: OpenedSplit, spec: DatasetSpec, *, limit: int | None, done: set[int], rank: int, world: int):
        self.opened, self.spec, self.limit, self.done, self.rank, self.world = opened, spec, limit, done, rank, world
        self.rows_seen = 0

    @property
    def size(self) -> int | None:
        """How many examples this process will get, when the number of rows is known."""
        known = [n for n in (self.limit, self.opened.num_rows) if n is not None]
        if not known:
            return None
        todo = [row for row in range(min(known)) if row not in self.done]
        return len(todo[self.rank :: self.world])

    def __iter__(self) -> Iterator[Example]:
        position = 0  # index among the rows still to do
        for row, raw in enumerate(self.opened.rows):
            if self.limit is not None and row >= self.limit:
                break
            self.rows_seen = row + 1
            if row in self.done:
                continue
            if position % self.world == self.rank:
                yield read_example(row, raw, self.spec)
            position += 1


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0].rstrip(".") if text else type(error).__name__
