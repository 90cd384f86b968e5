"""Training data for the `shapes` model: easy-VQA and the generated scenes, packed per image.

An item is one image with all of its questions. The collator packs it as the image prefix once and one segment
per question, each segment seeing only the prefix and itself (`ConversationCollator`): every answer is trained
exactly as the single-question prompt the explorer and the evaluator build (`gprune.prompts.chat_prompt`),
while the ~1,200–2,900 visual tokens are paid once for ~10 answers. Only answer tokens (and their `</s>`) are
trained.

Randomness (question order, whether the short-answer instruction is appended) is a pure function of the
item, so a run resumed from a checkpoint sees exactly the data of an uninterrupted one.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from PIL import Image
from transformers import LlavaNextProcessor

from ..evaluate.data import VQA_PROMPT_SUFFIX
from ..prompts import chat_prompt
from . import scenes

EASY_VQA_VALIDATION_IMAGES = 200  # the last 200 train images are held out for the validation curve


@dataclass(frozen=True)
class ImageQuestions:
    """One image and its (question, answer) pairs; `kinds` names each question's family."""

    source: str  # "easy-vqa" or "scenes"
    key: int  # easy-VQA image id or scene seed
    questions: tuple[tuple[str, str], ...]
    kinds: tuple[str, ...]

    def image(self) -> Image.Image:
        if self.source == "scenes":
            return scenes.scene(self.key).image
        split, image_id = ("test", -1 - self.key) if self.key < 0 else ("train", self.key)
        with Image.open(easy_vqa_image_path(split, image_id)) as image:
            return image.convert("RGB")


def easy_vqa_root() -> Path:
    """The data folder the `easy-vqa` package ships (images and questions.json per split)."""
    import easy_vqa

    return Path(easy_vqa.__file__).parent / "data"


def easy_vqa_image_path(split: str, image_id: int) -> Path:
    return easy_vqa_root() / split / "images" / f"{image_id}.png"


def easy_vqa_questions(split: str) -> list[tuple[str, str, int]]:
    """`(question, answer, image_id)` rows of easy-VQA's `split` ("train" or "test"), in the file's order."""
    with open(easy_vqa_root() / split / "questions.json", encoding="utf-8") as file:
        return [(question, answer, int(image_id)) for question, answer, image_id in json.load(file)]


def easy_vqa_kind(question: str, answer: str) -> str:
    if answer in ("yes", "no"):
        return "yes/no"
    return "color" if "color" in question else "shape"


def easy_vqa_items(split: str) -> list[ImageQuestions]:
    """One item per easy-VQA image of `split`, its questions in file order. Test images get negative keys
    (−1 − id), so an item names its split unambiguously."""
    grouped: dict[int, list[tuple[str, str]]] = {}
    for question, answer, image_id in easy_vqa_questions(split):
        grouped.setdefault(image_id, []).append((question, answer))
    sign = (lambda i: i) if split == "train" else (lambda i: -1 - i)
    return [ImageQuestions("easy-vqa", sign(image_id), tuple(qas), tuple(easy_vqa_kind(q, a) for q, a in qas))
            for image_id, qas in sorted(grouped.items())]


def scene_items(seeds: range) -> list[ImageQuestions]:
    return [_scene_item(seed) for seed in seeds]


def _scene_item(seed: int) -> ImageQuestions:
    generated = scenes.scene(seed)
    return ImageQuestions("scenes", seed, generated.questions, generated.kinds)


class LazySceneItems:
    """`scene_items(seeds)` without generating every scene up front (only on access)."""

    def __init__(self, seeds: range):
        self.seeds = seeds

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, index: int) -> ImageQuestions:
        return _scene_item(self.seeds[index])


@dataclass(frozen=True)
class Recipe:
    """What a training run sees: how many passes over each source, and which scenes."""

    easy_vqa_epochs: int = 2
    scene_count: int = 1500
    seed: int = 0


class ConversationSet(torch.utils.data.Dataset):
    """Training items: every easy-VQA train image (minus the held-out ones) `easy_vqa_epochs` times and
    `scene_count` scenes, each with all its questions in an order drawn from the item."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.easy = easy_vqa_items("train")[:-EASY_VQA_VALIDATION_IMAGES]
        self.scenes = LazySceneItems(range(scenes.TRAIN_SEEDS.start, scenes.TRAIN_SEEDS.start + recipe.scene_count))

    def __len__(self) -> int:
        return len(self.easy) * self.recipe.easy_vqa_epochs + len(self.scenes)

    def __getitem__(self, index: int) -> dict:
        easy_total = len(self.easy) * self.recipe.easy_vqa_epochs
        item = self.easy[index % len(self.easy)] if index < easy_total else self.scenes[index - easy_total]
        rng = random.Random(f"{self.recipe.seed}:{index}")
        order = list(item.questions)
        rng.shuffle(order)
        suffixes = [rng.random() < 0.5 for _ in order]
        return {"image": item.image(), "turns": [(q + (VQA_PROMPT_SUFFIX if s else ""), a) for (q, a), s in zip(order, suffixes)]}


class QuestionSet(torch.utils.data.Dataset):
    """Single-question items (the user's case), with the evaluator's short-answer instruction."""

    def __init__(self, items: list[ImageQuestions], limit: int | None = None, seed: int = 0):
        rows = [(item, q, a, kind) for item in items for (q, a), kind in zip(item.questions, item.kinds)]
        if limit is not None and limit < len(rows):
            rows = random.Random(seed).sample(rows, limit)
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        item, question, answer, _ = self.rows[index]
        return {"image": item.image(), "turns": [(question + VQA_PROMPT_SUFFIX, answer)]}

    @cached_property
    def kinds(self) -> list[str]:
        return [f"{item.source}/{kind}" for item, _, _, kind in self.rows]


def validation_set(limit_per_source: int) -> QuestionSet:
    easy = QuestionSet(easy_vqa_items("train")[-EASY_VQA_VALIDATION_IMAGES:], limit_per_source)
    generated = QuestionSet(scene_items(scenes.VALIDATION_SEEDS), limit_per_source)
    merged = QuestionSet([])
    merged.rows = easy.rows + generated.rows
    return merged


class ConversationCollator:
    """Tokenise items as shared-prefix packs: the image prefix once, then one segment per question.

    Each segment is exactly the single-question prompt's text after the image (question, `[/INST]`) plus the
    answer and `</s>`; it attends to the prefix and to itself only, at the position ids a single-question
    prompt would give it. So every answer is trained as the user's case, one question about the image, while
    the ~1,200–2,900 visual tokens are paid once per image. (A plain multi-turn conversation lets the model read
    answers off the earlier turns, e.g. "What is the blue shape?" gives away the colour, and it learned that
    shortcut instead of looking at the image.)

    Returns `input_ids`, `labels` (−100 but on answers) and `position_ids` `(B, L)`, right-padded; a boolean
    `attention_mask` `(B, 1, L, L)` (True: may attend); `pixel_values` `(B, max_patches, 3, 336, 336)`
    zero-padded on patches; `image_sizes` `(B, 2)`.
    """

    def __init__(self, processor: LlavaNextProcessor, text_model_type: str):
        self.processor = processor
        self.text_model_type = text_model_type
        self.tokenizer = processor.tokenizer
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(processor.image_token)

    def pack(self, feature: dict) -> tuple[torch.Tensor, list[list[int]], list[list[int]]]:
        """`(encoded, segments, segment_labels)` of one item: the processor's output for the first question
        (its `input_ids` cut after the last image token is the shared prefix), and each question's segment."""
        segments, segment_labels = [], []
        encoded = None
        for question, answer in feature["turns"]:
            prompt = chat_prompt(self.processor, self.text_model_type, question)
            if encoded is None:
                encoded = self.processor(images=feature["image"], text=prompt, return_tensors="pt")
            # The image placeholder is a special token, so the text after it tokenises on its own.
            after_image = prompt.split(self.processor.image_token, 1)[1]
            question_ids = self.tokenizer(after_image, add_special_tokens=False)["input_ids"]
            reply = self.tokenizer(f" {answer}{self.tokenizer.eos_token}", add_special_tokens=False)["input_ids"]
            segments.append(question_ids + reply)
            segment_labels.append([-100] * len(question_ids) + reply)
        return encoded, segments, segment_labels

    def __call__(self, features: list[dict]) -> dict:
        rows, pixel_values, image_sizes = [], [], []
        for feature in features:
            encoded, segments, segment_labels = self.pack(feature)
            ids = encoded["input_ids"][0].tolist()
            prefix = ids[: max(i for i, token in enumerate(ids) if token == self.image_token_id) + 1]
            rows.append((prefix, segments, segment_labels))
            pixel_values.append(encoded["pixel_values"][0])
            image_sizes.append(encoded["image_sizes"][0])
        length = max(len(prefix) + sum(map(len, segments)) for prefix, segments, _ in rows)
        input_ids = torch.full((len(rows), length), self.tokenizer.pad_token_id)
        labels = torch.full((len(rows), length), -100)
        position_ids = torch.zeros((len(rows), length), dtype=torch.long)
        # Padding rows attend to themselves only, so that no attention row is empty (softmax of nothing is NaN).
        attention_mask = torch.eye(length, dtype=torch.bool).repeat(len(rows), 1, 1, 1)
        for row, (prefix, segments, segment_labels) in enumerate(rows):
            p = len(prefix)
            input_ids[row, :p] = torch.tensor(prefix)
            position_ids[row, :p] = torch.arange(p)
            attention_mask[row, 0, :p, :p] = torch.ones(p, p, dtype=torch.bool).tril()
            start = p
            for segment, target in zip(segments, segment_labels):
                end = start + len(segment)
                input_ids[row, start:end] = torch.tensor(segment)
                labels[row, start:end] = torch.tensor(target)
                position_ids[row, start:end] = torch.arange(p, p + len(segment))
                attention_mask[row, 0, start:end, :p] = True
                attention_mask[row, 0, start:end, start:end] = torch.ones(len(segment), len(segment), dtype=torch.bool).tril()
                start = end
        patches = max(p.shape[0] for p in pixel_values)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "labels": labels,
            "pixel_values": torch.stack([torch.cat([p, p.new_zeros((patches - p.shape[0], *p.shape[1:]))]) for p in pixel_values]),
            "image_sizes": torch.stack(image_sizes),
        }
