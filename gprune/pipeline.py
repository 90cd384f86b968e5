"""Model plumbing: image + question → packed visual features, then any kept-token sequence → answer.

Pure pruning methods (gprune/graph.py, tome.py, baselines.py) never see the model; this module feeds
their `Selection` to the language model (gprune/llm.py) with the original position ids.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from PIL import Image

from .layout import TokenLayout, token_layout
from .llm import FastVPlan, decode_step, prefill
from .loading import LoadedModel
from .prompts import TEMPLATE
from .result import Selection


@dataclass
class EncodedPrompt:
    """One image + question, ready for the language model.

    Attributes:
        input_ids: `(1, L)` prompt token ids with `n` image placeholders.
        inputs_embeds: `(1, L, d)` text embeddings with the packed image features scattered in.
        image_start, image_end: the image span `[image_start, image_end)`, `image_end − image_start = n`.
        packed_features: `(n, d)` post-projector features `[base | rows × (cols + 1)]`.
        layout: per-token geometry of the packed block.
    """

    input_ids: torch.Tensor
    inputs_embeds: torch.Tensor
    image_start: int
    image_end: int
    packed_features: torch.Tensor
    layout: TokenLayout

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def encode(loaded: LoadedModel, image: Image.Image, question: str, *, system_prompt: str = TEMPLATE) -> EncodedPrompt:
    """Run the processor and the vision tower + projector once; find the image span from the ids.
    `system_prompt`: "template" (the checkpoint's chat template) or "llava" (LLaVA's training system prompt first)."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError("question must be a non-empty string, e.g. 'What is in the image?'")
    model, processor = loaded.model, loaded.processor
    vision = model.config.vision_config
    layout = token_layout((image.height, image.width), model.config.image_grid_pinpoints, vision.image_size, vision.patch_size)
    if layout.rows == 0 or layout.cols == 0:
        raise ValueError(
            f"a {image.width}×{image.height} image is too thin: its high-resolution grid has no cells; "
            "crop or pad it to an aspect ratio of at most about 1:100"
        )
    inputs = processor(images=image, text=loaded.prompt(question, system_prompt), return_tensors="pt").to(loaded.device)
    image_span = (inputs["input_ids"][0] == model.config.image_token_id).nonzero().flatten()
    image_start, image_end = int(image_span[0]), int(image_span[-1]) + 1
    if image_end - image_start != len(image_span) or len(image_span) != layout.n_tokens:
        raise ValueError(f"the prompt must hold one contiguous image of {layout.n_tokens} placeholders, got {len(image_span)}")
    image_outputs = model.model.get_image_features(
        pixel_values=inputs["pixel_values"].to(loaded.dtype), image_sizes=inputs["image_sizes"]
    )
    packed_features = image_outputs.pooler_output[0]
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    embeds[0, image_start:image_end] = packed_features.to(embeds.dtype)
    return EncodedPrompt(inputs["input_ids"], embeds, image_start, image_end, packed_features, layout)


@dataclass
class Generation:
    """Greedy answer of one run. `sequence_index`: prompt indices the last layer saw."""

    answer_token_ids: list[int]
    answer: str
    sequence_index: torch.Tensor
    image_attention: torch.Tensor | None
    fastv_selection_seconds: float
    prefill_seconds: float
    decode_seconds_per_token: float


def kept_sequence(encoded: EncodedPrompt, selection: Selection) -> tuple[torch.Tensor, torch.Tensor]:
    """The pruned prompt: `(sequence_index (L',), inputs_embeds (1, L', d))`, merged features swapped in."""
    device = encoded.inputs_embeds.device
    kept_in_span = torch.as_tensor(selection.kept_positions, device=device) + encoded.image_start
    sequence_index = torch.cat([
        torch.arange(encoded.image_start, device=device),
        kept_in_span,
        torch.arange(encoded.image_end, encoded.length, device=device),
    ])
    embeds = encoded.inputs_embeds[:, sequence_index]
    if selection.merged_features is not None:
        merged = torch.as_tensor(selection.merged_features).to(device=device, dtype=embeds.dtype)
        embeds[0, encoded.image_start : encoded.image_start + len(kept_in_span)] = merged
    return sequence_index, embeds


@torch.no_grad()
def generate(
    loaded: LoadedModel,
    encoded: EncodedPrompt,
    sequence_index: torch.Tensor,
    inputs_embeds: torch.Tensor,
    *,
    max_new_tokens: int,
    fastv: FastVPlan | None = None,
) -> Generation:
    """Greedy decoding from a (possibly pruned) prompt; position ids are the original indices and
    generated token t sits at `L_original + t` (METHOD.md §2.8)."""
    language_model = loaded.model.model.language_model
    embed_tokens = loaded.model.get_input_embeddings()
    eos_ids = set(_eos_ids(loaded))
    _sync(loaded.device)
    start = time.perf_counter()
    out = prefill(language_model, inputs_embeds, sequence_index[None], fastv)
    next_id = int(loaded.model.lm_head(out.hidden[:, -1]).argmax(-1))
    _sync(loaded.device)
    prefill_seconds = time.perf_counter() - start

    token_ids: list[int] = []
    decode_steps = 0
    start = time.perf_counter()
    while next_id not in eos_ids and len(token_ids) < max_new_tokens:
        token_ids.append(next_id)
        if len(token_ids) == max_new_tokens:
            break
        hidden = decode_step(language_model, embed_tokens(torch.tensor([[next_id]], device=loaded.device)),
                             encoded.length + len(token_ids) - 1, out.cache)
        decode_steps += 1
        next_id = int(loaded.model.lm_head(hidden[:, -1]).argmax(-1))
    _sync(loaded.device)
    decode_seconds = time.perf_counter() - start
    answer = loaded.processor.tokenizer.decode(token_ids, skip_special_tokens=True).strip()
    return Generation(token_ids, answer, out.sequence_index, out.image_attention, out.selection_seconds,
                      prefill_seconds, decode_seconds / decode_steps if decode_steps else 0.0)


@torch.no_grad()
def answer_log_probability(
    loaded: LoadedModel,
    encoded: EncodedPrompt,
    sequence_index: torch.Tensor,
    inputs_embeds: torch.Tensor,
    answer_token_ids: list[int],
    fastv: FastVPlan | None = None,
) -> float:
    """log p(answer | pruned prompt) by teacher forcing in one prefill (answer at positions L, L+1, …)."""
    if not answer_token_ids:
        return 0.0
    device = loaded.device
    answer = torch.tensor(answer_token_ids, device=device)
    answer_embeds = loaded.model.get_input_embeddings()(answer[None])
    embeds = torch.cat([inputs_embeds, answer_embeds.to(inputs_embeds.dtype)], dim=1)
    positions = torch.cat([sequence_index, encoded.length + torch.arange(len(answer), device=device)])
    out = prefill(loaded.model.model.language_model, embeds, positions[None], fastv)
    # The logits that predict the answer: from the last prompt token up to the last-but-one answer token.
    predicting = out.hidden[0, -len(answer) - 1 : -1]
    log_probs = loaded.model.lm_head(predicting).float().log_softmax(-1)
    return float(log_probs.gather(1, answer[:, None]).sum())


def _eos_ids(loaded: LoadedModel) -> list[int]:
    eos = loaded.model.generation_config.eos_token_id
    if eos is None:
        eos = loaded.processor.tokenizer.eos_token_id
    return [eos] if isinstance(eos, int) else list(eos or [])
