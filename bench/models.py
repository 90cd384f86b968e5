"""Random-weight LLaVA-NeXT models of chosen sizes for the prefill benchmarks.

gprune/tiny.py builds its config with fixed tiny widths, so the geometry pieces it does expose (tokenizer,
processor, tile/patch size, grid pinpoints) are reused here and only the width/depth of the two towers
change. The packed layout, placeholder counts and chat template are therefore exactly the tiny model's,
which are the real checkpoints' (CLIP-336/14, llava-hf pinpoints).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw
from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration, MistralConfig

from gprune.loading import LoadedModel
from gprune.tiny import GRID_PINPOINTS, PATCH_SIZE, TILE_SIZE, build_processor, build_tokenizer


@dataclass(frozen=True)
class TextShape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int | None = None  # None: the tokenizer's size
    family: str = "llama"  # "llama" or "mistral" (same decoder layout; Mistral is LLaVA-NeXT-7B's)
    rope_theta: float = 10000.0
    max_positions: int = 8192


@dataclass(frozen=True)
class VisionShape:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    projection: int


# The CPU benchmark's model: the LLM dominates (the vision tower keeps only the real geometry).
MID_TEXT = TextShape(hidden=1024, layers=8, heads=16, kv_heads=4, intermediate=2816)
SMALL_VISION = VisionShape(hidden=32, layers=2, heads=2, intermediate=64, projection=32)
# LLaVA-NeXT-7B (llava-hf/llava-v1.6-mistral-7b-hf): Mistral-7B text + CLIP-L/336.
MISTRAL_7B_TEXT = TextShape(hidden=4096, layers=32, heads=32, kv_heads=8, intermediate=14336, vocab=32064,
                            family="mistral", rope_theta=1_000_000.0, max_positions=32768)
CLIP_L_336 = VisionShape(hidden=1024, layers=24, heads=16, intermediate=4096, projection=768)


def build_config(tokenizer, text: TextShape, vision: VisionShape) -> LlavaNextConfig:
    vision_config = CLIPVisionConfig(
        image_size=TILE_SIZE, patch_size=PATCH_SIZE, hidden_size=vision.hidden, intermediate_size=vision.intermediate,
        num_hidden_layers=vision.layers, num_attention_heads=vision.heads, projection_dim=vision.projection,
    )
    common = dict(
        vocab_size=text.vocab or len(tokenizer), hidden_size=text.hidden, intermediate_size=text.intermediate,
        num_hidden_layers=text.layers, num_attention_heads=text.heads, num_key_value_heads=text.kv_heads,
        max_position_embeddings=text.max_positions, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    if text.family == "mistral":
        text_config = MistralConfig(**common, sliding_window=None, rope_theta=text.rope_theta)
    else:
        text_config = LlamaConfig(**common, rope_theta=text.rope_theta)
    config = LlavaNextConfig(
        vision_config=vision_config, text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), image_grid_pinpoints=GRID_PINPOINTS,
        vision_feature_layer=-2, vision_feature_select_strategy="default", tie_word_embeddings=False,
    )
    config._attn_implementation = "sdpa"
    return config


def build_random_llava(text: TextShape, vision: VisionShape, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
                       seed: int = 0, name: str = "random") -> LoadedModel:
    """A random-weight LLaVA-NeXT allocated and initialised directly on `device` in `dtype`
    (a 7B model never exists in fp32 or on the CPU)."""
    tokenizer = build_tokenizer()
    config = build_config(tokenizer, text, vision)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        if torch.device(device).type == "cuda":
            torch.cuda.manual_seed(seed)
        model = LlavaNextForConditionalGeneration._from_config(config, dtype=dtype)
    return LoadedModel(model.eval(), build_processor(tokenizer), name, random_weights=True)


def describe(loaded: LoadedModel) -> dict:
    config = loaded.model.config
    text, vision = config.text_config, config.vision_config
    return {
        "name": loaded.name,
        "device": str(loaded.device),
        "dtype": str(loaded.dtype),
        "attn_implementation": text._attn_implementation,
        "text": {"family": text.model_type, "hidden": text.hidden_size, "layers": text.num_hidden_layers,
                 "heads": text.num_attention_heads, "kv_heads": text.num_key_value_heads,
                 "intermediate": text.intermediate_size, "vocab": text.vocab_size},
        "vision": {"hidden": vision.hidden_size, "layers": vision.num_hidden_layers, "heads": vision.num_attention_heads,
                   "intermediate": vision.intermediate_size, "image_size": vision.image_size, "patch_size": vision.patch_size},
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
    }


def shapes_dict(text: TextShape, vision: VisionShape) -> dict:
    return {"text": asdict(text), "vision": asdict(vision)}


def synthetic_image(width: int = 640, height: int = 480, seed: int = 0) -> Image.Image:
    """A deterministic photo-like test image: smooth gradient background, a few filled shapes, mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    background = np.stack([120 + 80 * x / width, 90 + 100 * y / height, 160 - 60 * x / width], axis=-1)
    image = Image.fromarray(np.clip(background + rng.normal(0, 6, background.shape), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = rng.integers(0, width - 40), rng.integers(0, height - 40)
        x1, y1 = x0 + rng.integers(30, width // 3), y0 + rng.integers(30, height // 3)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
    return image
