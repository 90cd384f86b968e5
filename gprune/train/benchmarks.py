"""The `shapes` model's test sets as evaluator datasets: `--dataset easy-vqa` and `--dataset shapes-scenes`.

Each also has a blank twin (`easy-vqa-blank`, `shapes-scenes-blank`): the same questions with every image
replaced by its plain background (the colour of its top-left pixel, which is always background in both
sets), for the ablation that shows the model answers from the image and not from the question alone.

Each is written once, deterministically, as a parquet file in the lmms-lab VQA schema (`image`, `question`,
`answers` = [the one answer], `question_id`, plus `kind`, the question family) under the cache folder
(`$GPRUNE_CACHE`, else `~/.cache/gprune`), and then read like any parquet file. Their metric is exact match.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image

from ..files import write_atomically

EASY_VQA = "easy-vqa"  # easy-VQA's test split: 1,000 images, 9,673 questions
SCENES = "shapes-scenes"  # the generated test scenes (seeds disjoint from training)
BLANK_SUFFIX = "-blank"
BENCHMARKS = (EASY_VQA, SCENES, EASY_VQA + BLANK_SUFFIX, SCENES + BLANK_SUFFIX)
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
    if name.endswith(BLANK_SUFFIX):
        return _blanked(rows(name.removesuffix(BLANK_SUFFIX)))
    if name == EASY_VQA:
        return _easy_vqa_rows()
    return _scenes_rows()


def blank_background(image: Image.Image) -> Image.Image:
    """`image`'s size, filled with the colour of its top-left pixel (the background in both test sets)."""
    rgb = image.convert("RGB")
    return Image.new("RGB", rgb.size, rgb.getpixel((0, 0)))


def _blanked(records: list[dict]) -> list[dict]:
    blanks: dict[bytes, bytes] = {}  # one blank per distinct image
    for record in records:
        if record["image"] not in blanks:
            buffer = io.BytesIO()
            blank_background(Image.open(io.BytesIO(record["image"]))).save(buffer, format="PNG")
            blanks[record["image"]] = buffer.getvalue()
    return [{**record, "image": blanks[record["image"]]} for record in records]


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
