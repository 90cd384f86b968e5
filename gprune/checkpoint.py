"""What the loader checks in a LLaVA-NeXT checkpoint's config before it allocates anything: that the pipeline
runs it exactly, that its positions hold the largest prompt, and that it fits in the target device's memory.

Each refusal is a `ValueError` that says what to do instead of failing (or answering wrongly) later.
"""

from __future__ import annotations

import psutil
import torch
from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

from .layout import token_layout
from .limits import MAX_NEW_TOKENS, MAX_PROMPT_TEXT_TOKENS

GIB = 1024**3
# Activations of one layer at the worst-case length (the MLP's few L × ffn floats: 0.7 GB in fp32 for a 7B
# model), the vision tower's tiles, CUDA/MKL workspaces and allocator slack.
WORKING_MARGIN_BYTES = 1 * GIB
SUPPORTED = ("llava-hf/llava-v1.6-mistral-7b-hf, llava-hf/llava-v1.6-vicuna-7b-hf, llava-hf/llama3-llava-next-8b-hf "
             "or another llava-hf LLaVA-NeXT checkpoint")


def check_supported(config: LlavaNextConfig, name: str) -> None:
    """Refuse configs whose placeholder count, features or positions the pipeline would get wrong."""
    strategy = config.vision_feature_select_strategy
    if strategy != "default":
        raise ValueError(
            f"{name!r} selects vision features with {strategy!r}; only 'default' (CLS token dropped: 576 tokens per "
            f"tile) is supported, which the token layout, the processor's placeholder count and every budget assume. "
            f"Use {SUPPORTED}"
        )
    layer = config.vision_feature_layer
    if not isinstance(layer, int):  # transformers accepts a list of layers, whose features are concatenated
        raise ValueError(
            f"{name!r} takes vision features from {layer!r}; only a single layer (an integer, -2 in the llava-hf "
            f"checkpoints) is supported, as G-Prune's graph is built on one layer's projected features. Use {SUPPORTED}"
        )
    needed, available = worst_case_positions(config), config.text_config.max_position_embeddings
    if available < needed:
        raise ValueError(
            f"{name!r} has {available} positions (max_position_embeddings), fewer than the {needed} the largest "
            f"prompt needs ({max_visual_tokens(config)} visual tokens + up to {MAX_PROMPT_TEXT_TOKENS} text tokens "
            f"+ up to {MAX_NEW_TOKENS} new tokens); tokens past the last trained position would be answered wrongly. "
            f"Use a checkpoint with at least {needed} positions, e.g. {SUPPORTED}"
        )


def max_visual_tokens(config: LlavaNextConfig) -> int:
    """Visual tokens of the largest image layout: an image with a pinpoint's exact shape (nothing unpadded)."""
    vision = config.vision_config
    return max(token_layout((height, width), config.image_grid_pinpoints, vision.image_size, vision.patch_size).n_tokens
               for height, width in config.image_grid_pinpoints)


def worst_case_positions(config: LlavaNextConfig) -> int:
    """Positions of the largest prompt plus its answer (the `<image>` marker is replaced by the visual tokens)."""
    return max_visual_tokens(config) - 1 + MAX_PROMPT_TEXT_TOKENS + MAX_NEW_TOKENS


def parameter_count(config: LlavaNextConfig) -> int:
    """Parameters of the model `config` describes, counted on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        model = LlavaNextForConditionalGeneration(config)
    return sum(parameter.numel() for parameter in model.parameters())


def required_bytes(config: LlavaNextConfig, dtype: torch.dtype, parameters: int) -> int:
    """Memory to load the model (`parameters` of them) in `dtype` and run the largest prompt: the weights, the
    KV cache at the worst-case length and a fixed margin (SDPA never holds the L × L attention matrix)."""
    size = dtype.itemsize
    text = config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_cache = 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * worst_case_positions(config) * size
    return parameters * size + kv_cache + WORKING_MARGIN_BYTES


def available_memory(device: torch.device) -> int:
    """Free bytes on `device`: `torch.cuda.mem_get_info`, else (ZeroGPU emulates CUDA at start-up and cannot
    initialise it) the device's total memory; `psutil`'s available memory for the CPU."""
    if device.type == "cuda":
        try:
            return torch.cuda.mem_get_info(device)[0]
        except RuntimeError:
            return torch.cuda.get_device_properties(device).total_memory
    return psutil.virtual_memory().available


def choose_dtype(config: LlavaNextConfig, device: torch.device, available: int, name: str) -> torch.dtype:
    """bfloat16 on CUDA; on the CPU float32 when it fits in `available` bytes, else bfloat16. Raises
    `ValueError` with the estimate when even bfloat16 does not fit."""
    parameters = parameter_count(config)
    candidates = (torch.bfloat16,) if device.type == "cuda" else (torch.float32, torch.bfloat16)
    for dtype in candidates:
        if required_bytes(config, dtype, parameters) <= available:
            return dtype
    needed = required_bytes(config, torch.bfloat16, parameters)
    raise ValueError(
        f"{name!r} does not fit in memory: it needs about {needed / GIB:.1f} GiB in bfloat16 "
        f"({parameters / 1e9:.2f} B parameters + the KV cache of the largest prompt + {WORKING_MARGIN_BYTES / GIB:g} GiB), "
        f"but {device} has {available / GIB:.1f} GiB available. Use a device with more memory, a smaller "
        f"checkpoint, or 'tiny'"
    )
