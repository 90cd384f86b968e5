"""Benchmark rows through Hugging Face `datasets`: open one split as a stream, map its columns, deal rows to processes.

A source is a hub id (cached or reachable), a folder written by `save_to_disk`, a local folder that
`load_dataset` reads (imagefolder + metadata, parquet files) or one parquet file. Rows are read one at a
time (a `save_to_disk` folder is memory-mapped), and images stay undecoded bytes until the process that
owns the row decodes them, so a large split never sits in memory.

Default columns are the lmms-lab VQA schema: `image` (an image), `question` (str), `answers` (list of str,
optional) and `question_id` (optional; else the row index). A row is identified by its index in the split.

Every opened split has a fingerprint, so that a run folder can tell when its dataset changed: for local
data a SHA-256 of the split's files (names relative to the source, and contents), for a hub id the
revision `datasets` resolved (the commit of the dataset repository).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import datasets
import pyarrow as pa
from datasets.data_files import SPLIT_KEYWORDS
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


FILE_SPLIT = "file"  # the split label of a parquet file whose name names no split


def resolve_split(source: str, split: str) -> str:
    """The split to record for `source`: `split` (--split), except for one parquet file, which holds one split
    whatever --split says: the split its name contains as a word, as `datasets` reads file names
    (`validation-00000-of-00001.parquet` → validation, `easy-vqa-test-v1.parquet` → test), else "file"."""
    path = Path(source)
    if not (path.suffix == ".parquet" and path.is_file()):
        return split
    words = re.split(r"[-._ 0-9]+", path.stem.lower())
    for word in words:
        for named_split, keywords in SPLIT_KEYWORDS.items():
            if word in keywords:
                return str(named_split)
    return FILE_SPLIT


@dataclass
class OpenedSplit:
    """A split as a stream of raw rows; `num_rows` when the source says how many it has, else None;
    `fingerprint` of its content (see the module docstring); `question_id_type`, the type the ids keep in
    the results: int64 for integer ids (and the row index, without an id column), else string."""

    rows: datasets.IterableDataset
    num_rows: int | None
    fingerprint: str
    question_id_type: pa.DataType


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
            # The arrow files hold the rows; state.json holds a fingerprint that changes with every save.
            fingerprint = content_fingerprint([Path(f["filename"]) for f in saved.cache_files], path)
        elif path.is_file():
            if path.suffix != ".parquet":
                raise ValueError(f"{spec.source} is a file but not a .parquet file; give a parquet file, a folder or a hub id")
            rows = datasets.load_dataset("parquet", data_files={spec.split: str(path)}, split=spec.split, streaming=True)
            fingerprint = content_fingerprint([path], path.parent)
        else:
            builder = datasets.load_dataset_builder(spec.source)  # what load_dataset(streaming=True) does, keeping the builder
            rows = builder.as_streaming_dataset(split=spec.split)
            split_info = (rows.info.splits or {}).get(spec.split)
            num_rows = split_info.num_examples if split_info is not None and split_info.num_examples else None
            if path.is_dir():  # the files `datasets` resolved for the split (e.g. images and metadata.jsonl)
                split_files = {str(name): files for name, files in builder.config.data_files.items()}[spec.split]
                fingerprint = content_fingerprint([Path(file) for file in split_files], path)
            else:  # a hub id: the dataset module's hash is the resolved commit of the repository
                fingerprint = f"revision:{builder.hash}"
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
    return OpenedSplit(rows, num_rows, fingerprint, _question_id_type(spec, rows))


def content_fingerprint(files: list[Path], root: Path) -> str:
    """"sha256:<hex>" of `files`: each one's name relative to `root` and its SHA-256, in name order; the same
    data copied elsewhere keeps its fingerprint, any changed, added, removed or renamed file changes it."""
    entries = []
    for file in files:
        digest = hashlib.sha256()
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        entries.append([Path(file).relative_to(root).as_posix(), digest.hexdigest()])
    return "sha256:" + hashlib.sha256(json.dumps(sorted(entries)).encode()).hexdigest()


def _question_id_type(spec: DatasetSpec, rows: datasets.IterableDataset) -> pa.DataType:
    if rows.features is None:  # features unknown until the first row (e.g. plain JSON): ids as text
        return pa.string()
    feature = rows.features.get(spec.column("question_id"))
    if feature is None:  # no id column: the row index stands in
        return pa.int64()
    return pa.int64() if isinstance(feature, datasets.Value) and pa.types.is_integer(feature.pa_type) else pa.string()


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
    `answers` are the reference answers (None when the dataset has none); `question` is stripped;
    `question_id` is the dataset's id as `OpenedSplit.question_id_type` says (int or str; the row index without one).
    """

    row: int
    question_id: int | str
    question: str
    answers: list[str] | None
    image_bytes: bytes | None
    problem: str | None = None


def read_example(row: int, raw: dict, spec: DatasetSpec, question_id_type: pa.DataType = pa.string()) -> Example:
    """Turn a raw row into an `Example`; a row whose image or question is unusable gets a `problem`."""
    for role in ("image", "question"):
        if spec.column(role) not in raw:
            raise ValueError(f"column {spec.column(role)!r} ({role}) is not in {spec.source}; its columns are "
                             f"{', '.join(raw)}. Map yours with --columns {role}=COLUMN")
    id_value = raw.get(spec.column("question_id"))
    question_id = row if id_value is None else id_value
    question_id = int(question_id) if pa.types.is_integer(question_id_type) else str(question_id)
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
    def run_size(self) -> int | None:
        """How many examples the whole run holds (rows up to the limit), when the number of rows is known."""
        known = [n for n in (self.limit, self.opened.num_rows) if n is not None]
        return min(known) if known else None

    @property
    def done_in_run(self) -> int:
        """How many of the run's examples were done before (by any earlier invocation)."""
        return len(self.done) if self.run_size is None else sum(1 for row in self.done if row < self.run_size)

    @property
    def size(self) -> int | None:
        """How many examples this process will get, when the number of rows is known."""
        if self.run_size is None:
            return None
        todo = [row for row in range(self.run_size) if row not in self.done]
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
                yield read_example(row, raw, self.spec, self.opened.question_id_type)
            position += 1


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0].rstrip(".") if text else type(error).__name__
