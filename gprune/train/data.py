"""Training data for the `shapes` model: easy-VQA and the generated scenes, as LLaVA-style conversations.

An item is one image with all of its questions as one multi-turn conversation (as LLaVA's own instruction
data is), so the ~1,200–2,900 visual tokens are paid once for ~10 answers. The first turn is exactly the
prompt the explorer and the evaluator build (`gprune.prompts.chat_prompt`), later turns follow the chat
template; only answer tokens (and their `</s>`) are trained. Evaluation items are single questions, so the
measured accuracy is the one a user sees.

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
    scene_count: int = 4000
    seed: int = 0


class ConversationSet(torch.utils.data.Dataset):
    """Training items: every easy-VQA train image (minus the held-out ones) `easy_vqa_epochs` times and
    `scene_count` scenes, each a conversation over all its questions in an order drawn from the item."""

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
    """Tokenise conversations: `input_ids`, `attention_mask` (right-padded), `labels` (−100 but on answers),
    `pixel_values` `(B, max_patches, 3, 336, 336)` zero-padded on patches, `image_sizes`."""

    def __init__(self, processor: LlavaNextProcessor, text_model_type: str):
        self.processor = processor
        self.text_model_type = text_model_type
        self.tokenizer = processor.tokenizer

    def _pieces(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def __call__(self, features: list[dict]) -> dict:
        sequences, labels, pixel_values, image_sizes = [], [], [], []
        for feature in features:
            (first_question, first_answer), *later = feature["turns"]
            prompt = chat_prompt(self.processor, self.text_model_type, first_question)
            encoded = self.processor(images=feature["image"], text=prompt, return_tensors="pt")
            ids = encoded["input_ids"][0].tolist()
            target = [-100] * len(ids)
            for index, (question, answer) in enumerate([(None, first_answer)] + later):
                if question is not None:
                    turn = self._pieces(self._user_turn(question))
                    ids += turn
                    target += [-100] * len(turn)
                reply = self._pieces(f" {answer}{self.tokenizer.eos_token}")
                ids += reply
                target += reply
            sequences.append(ids)
            labels.append(target)
            pixel_values.append(encoded["pixel_values"][0])
            image_sizes.append(encoded["image_sizes"][0])
        length = max(len(ids) for ids in sequences)
        patches = max(p.shape[0] for p in pixel_values)
        pad = self.tokenizer.pad_token_id
        return {
            "input_ids": torch.tensor([ids + [pad] * (length - len(ids)) for ids in sequences]),
            "attention_mask": torch.tensor([[1] * len(ids) + [0] * (length - len(ids)) for ids in sequences]),
            "labels": torch.tensor([t + [-100] * (length - len(t)) for t in labels]),
            "pixel_values": torch.stack([torch.cat([p, p.new_zeros((patches - p.shape[0], *p.shape[1:]))]) for p in pixel_values]),
            "image_sizes": torch.stack(image_sizes),
        }

    def _user_turn(self, question: str) -> str:
        """A later user turn as the chat template renders it (text only)."""
        messages = [{"role": "user", "content": [{"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)
