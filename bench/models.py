"""Random-weight LLaVA-NeXT models of chosen sizes for the prefill benchmarks.

gprune/tiny.py's `build_config`, tokenizer and processor are reused; only the width/depth of the two towers
change. The packed layout, placeholder counts and chat template are therefore exactly the tiny model's,
which are the real checkpoints' (CLIP-336/14, llava-hf pinpoints).
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch
from PIL import Image, ImageDraw
from transformers import LlavaNextForConditionalGeneration

from gprune.loading import LoadedModel
from gprune.tiny import TextShape, VisionShape, build_config, build_processor, build_tokenizer


# The CPU benchmark's model: the LLM dominates (the vision tower keeps only the real geometry).
MID_TEXT = TextShape(hidden=1024, layers=8, heads=16, kv_heads=4, intermediate=2816, max_positions=8192)
SMALL_VISION = VisionShape(hidden=32, layers=2, heads=2, intermediate=64, projection=32)
# LLaVA-NeXT-7B (llava-hf/llava-v1.6-mistral-7b-hf): Mistral-7B text + CLIP-L/336.
MISTRAL_7B_TEXT = TextShape(hidden=4096, layers=32, heads=32, kv_heads=8, intermediate=14336, vocab=32064,
                            family="mistral", rope_theta=1_000_000.0, max_positions=32768)
CLIP_L_336 = VisionShape(hidden=1024, layers=24, heads=16, intermediate=4096, projection=768)


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
