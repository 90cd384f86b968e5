"""The `shapes` model's test sets as evaluator datasets: `--dataset easy-vqa` and `--dataset shapes-scenes`.

Each is written once, deterministically, as a parquet file in the lmms-lab VQA schema (`image`, `question`,
`answers` = [the one answer], `question_id`, plus `kind`, the question family) under the cache folder
(`$GPRUNE_CACHE`, else `~/.cache/gprune`), and then read like any parquet file. Their metric is exact match.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from ..files import write_atomically

EASY_VQA = "easy-vqa"  # easy-VQA's test split: 1,000 images, 9,673 questions
SCENES = "shapes-scenes"  # the generated test scenes (seeds disjoint from training)
BENCHMARKS = (EASY_VQA, SCENES)
METRIC = "exact"
FORMAT_VERSION = 1  # bump when the generator or the columns change, so a stale cached file is not reused


def cache_folder() -> Path:
    return Path(os.environ.get("GPRUNE_CACHE") or Path.home() / ".cache" / "gprune") / "datasets"


def benchmark_path(name: str) -> Path:
    """The parquet file of benchmark `name`, written on first use."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown built-in dataset {name!r}; built-in datasets are {', '.join(BENCHMARKS)}")
    path = cache_folder() / f"{name}-test-v{FORMAT_VERSION}.parquet"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        _table(rows(name)).to_parquet(buffer)
        write_atomically(path, buffer.getvalue())
    return path


def rows(name: str) -> list[dict]:
    """Every row of benchmark `name` with images as PNG bytes (question order as in the file)."""
    if name == EASY_VQA:
        return _easy_vqa_rows()
    return _scenes_rows()


def _easy_vqa_rows() -> list[dict]:
    from .data import easy_vqa_image_path, easy_vqa_kind, easy_vqa_questions

    images: dict[int, bytes] = {}
    result = []
    for index, (question, answer, image_id) in enumerate(easy_vqa_questions("test")):
        if image_id not in images:
            images[image_id] = easy_vqa_image_path("test", image_id).read_bytes()
        result.append({"image": images[image_id], "question": question, "answers": [answer],
                       "question_id": index, "kind": easy_vqa_kind(question, answer)})
    return result


def _scenes_rows() -> list[dict]:
    from . import scenes

    result = []
    for seed in scenes.TEST_SEEDS:
        generated = scenes.scene(seed)
        buffer = io.BytesIO()
        generated.image.save(buffer, format="PNG")
        for (question, answer), kind in zip(generated.questions, generated.kinds):
            result.append({"image": buffer.getvalue(), "question": question, "answers": [answer],
                           "question_id": len(result), "kind": kind})
    return result


def _table(records: list[dict]):
    import datasets

    features = datasets.Features({
        "image": datasets.Image(), "question": datasets.Value("string"),
        "answers": datasets.Sequence(datasets.Value("string")), "question_id": datasets.Value("int64"),
        "kind": datasets.Value("string"),
    })
    columns = {key: [record[key] for record in records] for key in features}
    columns["image"] = [{"bytes": image, "path": None} for image in columns["image"]]
    return datasets.Dataset.from_dict(columns, features=features)
