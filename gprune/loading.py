"""Load a LLaVA-NeXT checkpoint (hub id or local directory), the shipped `shapes` model or the random-weight `tiny`.

Loading is a pure function: no global cache here, the app decides what to keep.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import (
    AutoConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
)

from . import prompts
from . import checkpoint
from .tiny import build_tiny

TINY = "tiny"
SHAPES = "shapes"
AUTO = "auto"
# The small LLaVA-NeXT trained here on synthetic shapes (gprune.train), shipped in the hub layout.
SHAPES_PATH = Path(__file__).resolve().parents[1] / "assets" / "models" / "shapes"
SHAPES_NOTE = "Small LLaVA-NeXT trained here on synthetic shapes (easy-VQA and generated scenes)"
DEFAULT_GPU_MODEL = "llava-hf/llava-v1.6-mistral-7b-hf"
KNOWN_MODELS = (
    "llava-hf/llava-v1.6-mistral-7b-hf",
    "llava-hf/llava-v1.6-vicuna-7b-hf",
    "llava-hf/llama3-llava-next-8b-hf",
)


@dataclass(frozen=True)
class LoadedModel:
    """A LLaVA-NeXT model in eval mode with the processor that matches it."""

    model: LlavaNextForConditionalGeneration
    processor: LlavaNextProcessor
    name: str
    random_weights: bool

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def prompt(self, question: str, system_prompt: str = prompts.TEMPLATE) -> str:
        """The checkpoint's own chat template applied to one image and `question`, generation prompt added;
        `system_prompt="llava"` puts LLaVA's training system prompt first (see `gprune.prompts`)."""
        return prompts.chat_prompt(self.processor, self.model.config.text_config.model_type, question, system_prompt)

    def system_text(self, system_prompt: str) -> str | None:
        """The system text `system_prompt` adds in front of the chat template (None for "template")."""
        return prompts.system_text(self.processor, self.model.config.text_config.model_type, system_prompt)


def resolve_model_name(name: str) -> str:
    """`"auto"` → the 7B default when CUDA is available, else the offline trained `"shapes"`; any other name is
    returned as is."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"model name must be 'auto', 'shapes', 'tiny', a Hugging Face Hub id or a local directory, got {name!r}")
    name = name.strip()
    if name == AUTO:
        return DEFAULT_GPU_MODEL if torch.cuda.is_available() else SHAPES
    return name


def toy_model_note(name: str, random_weights: bool) -> str | None:
    """What every figure of a model far smaller than LLaVA-NeXT-7B must say; None for a real checkpoint."""
    if random_weights:
        return "Toy model (random weights): not a trained LLaVA-NeXT"
    return SHAPES_NOTE if name == SHAPES else None


def load_model(name: str = AUTO, *, device: str | None = None, available_memory: int | None = None) -> LoadedModel:
    """Load `name` (`"auto"`, `"shapes"`, `"tiny"`, a hub id or a local directory) onto `device`.

    `device` defaults to CUDA when available, else CPU. Checkpoints load in bfloat16 on CUDA; on the CPU in
    float32 when that fits in memory, else in bfloat16. `available_memory` (bytes) replaces the device's free
    memory in that decision. `tiny` is always float32. Raises `ValueError` for anything that cannot be loaded,
    and, before any weight is read, for a checkpoint that would run wrongly or not fit (`gprune.checkpoint`).
    """
    name = resolve_model_name(name)
    target = _resolve_device(device)
    if name == TINY:
        model, processor = build_tiny()
        return LoadedModel(model.to(target), processor, TINY, random_weights=True)

    path = SHAPES_PATH if name == SHAPES else Path(name).expanduser()
    if path.is_dir():
        source = str(path)
    elif path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name:
        raise ValueError(_unreachable_message(name, "no such directory"))  # a path, not a hub id
    else:
        source = name
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise ValueError(_unreachable_message(name, _first_line(error))) from error
    except StrictDataclassError as error:  # transformers' own type check of the config fields
        raise ValueError(f"{name!r} has an invalid config.json ({' '.join(str(error).split())}); "
                         f"use one of {', '.join(KNOWN_MODELS)} or '{TINY}'") from error
    if not isinstance(config, LlavaNextConfig):
        raise ValueError(
            f"{name!r} is a {config.model_type!r} model, not LLaVA-NeXT (model_type 'llava_next'); "
            f"use one of {', '.join(KNOWN_MODELS)} or '{TINY}'"
        )
    if config.vision_config.model_type != "clip_vision_model":
        raise ValueError(
            f"{name!r} has a {config.vision_config.model_type!r} vision tower; only CLIP ('clip_vision_model'), "
            "as in the llava-hf LLaVA-NeXT checkpoints, is supported"
        )
    checkpoint.check_supported(config, name)
    if available_memory is None:
        available_memory = checkpoint.available_memory(target)
    dtype = checkpoint.choose_dtype(config, target, available_memory, name)
    try:
        # Loaded on the CPU, then moved: `device_map` would need `accelerate`.
        model = LlavaNextForConditionalGeneration.from_pretrained(
            source, config=config, dtype=dtype, attn_implementation="sdpa"
        )
        # Passing the PIL image processor explicitly: the default class needs torchvision.
        processor = LlavaNextProcessor.from_pretrained(
            source, image_processor=LlavaNextImageProcessorPil.from_pretrained(source)
        )
    except (OSError, ValueError) as error:
        raise ValueError(_unreachable_message(name, _first_line(error))) from error
    _align_processor(processor, config)
    return LoadedModel(model.to(target).eval(), processor, name, random_weights=False)


def _resolve_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from error
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but CUDA is not available; use 'cpu'")
    return target


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0].rstrip(".") if text else type(error).__name__


def _unreachable_message(name: str, reason: str) -> str:
    return (
        f"model {name!r} could not be loaded ({reason}). It is neither a local LLaVA-NeXT directory nor a "
        f"Hugging Face Hub id that is cached or reachable. Use '{SHAPES}' for the offline model trained on synthetic "
        f"shapes or '{TINY}' for the random-weight one, "
        f"or the path of a local directory holding a LLaVA-NeXT checkpoint (config.json, weights, processor files)."
    )


def _align_processor(processor: LlavaNextProcessor, config: LlavaNextConfig) -> None:
    """Make the processor's placeholder count equal the model's packed feature count.

    Older processor configs leave these unset (or at defaults that drop the CLS token twice), so the
    processor would insert a different number of `<image>` tokens than `pack_image_features` emits.
    """
    processor.patch_size = config.vision_config.patch_size
    processor.vision_feature_select_strategy = config.vision_feature_select_strategy
    processor.num_additional_image_tokens = 1  # CLIP's CLS token, counted here and dropped by "default"
    processor.image_processor.image_grid_pinpoints = config.image_grid_pinpoints
