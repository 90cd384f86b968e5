"""The `shapes` model before training: a LLaVA-NeXT of the real architecture at a size a CPU trains.

CLIP vision tower with the 336/14 geometry and layer −2 features, the two-layer projector, `image_newline`,
a Mistral decoder, the llava-hf pinpoints and anyres packing: `gprune.tiny.build_config` at the sizes below,
with a byte-level BPE tokenizer trained on the questions it will be asked. Saved in the hub's layout
(safetensors, config.json, processor and tokenizer files, chat template, generation config), so the
ordinary `load_model(path)` loads it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import GenerationConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor

from ..evaluate.data import VQA_PROMPT_SUFFIX
from ..tiny import CORPUS, TextShape, VisionShape, build_config, build_processor, build_tokenizer
from . import scenes
from .data import easy_vqa_questions

SHAPES_TEXT = TextShape(hidden=128, layers=4, heads=4, kv_heads=2, intermediate=384, family="mistral")
SHAPES_VISION = VisionShape(hidden=96, layers=3, heads=4, intermediate=384, projection=96)
SHAPES_VOCAB = 768


def tokenizer_corpus() -> str:
    """Every easy-VQA train question and answer, the scene questions, the instruction and general text."""
    lines = [f"{question} {answer}" for question, answer, _ in easy_vqa_questions("train")]
    for seed in range(200):
        lines += [f"{question} {answer}" for question, answer in scenes.scene(seed).questions]
    return "\n".join(lines + [VQA_PROMPT_SUFFIX.strip(), CORPUS])


def build_untrained(seed: int, text: TextShape = SHAPES_TEXT, vision: VisionShape = SHAPES_VISION,
                    vocab_size: int = SHAPES_VOCAB) -> tuple[LlavaNextForConditionalGeneration, LlavaNextProcessor]:
    """`(model, processor)` with weights drawn from `seed` (the caller's RNG state untouched), fp32, train mode."""
    tokenizer = build_tokenizer(tokenizer_corpus(), vocab_size)
    config = build_config(tokenizer, text, vision)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaNextForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        do_sample=False, max_new_tokens=16,
    )
    return model.to(torch.float32).train(), build_processor(tokenizer)


def save_checkpoint(model: LlavaNextForConditionalGeneration, processor: LlavaNextProcessor, folder: Path) -> None:
    """Write the hub layout: model.safetensors, config.json, generation_config.json and the processor's files."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
