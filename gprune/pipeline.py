"""Model plumbing: image + question → packed visual features, then any kept-token sequence → answer.

Pure pruning methods (gprune/graph.py, tome.py, baselines.py) never see the model; this module feeds
their `Selection` to the language model (gprune/llm.py) with the original position ids.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from PIL import Image

from .layout import TokenLayout, token_layout
from .llm import DecodeState, FastVPlan, PrefillOutput, Rows, decode_step, merge_states, prefill
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


@dataclass(frozen=True)
class Prompt:
    """One (possibly pruned) prompt for the language model.

    Attributes:
        sequence_index: `(L',)` original index of each kept token in the unpruned prompt (= its position id).
        inputs_embeds: `(1, L', d)` embeddings of the kept tokens (merged features swapped in).
        length: L, the unpruned prompt's length: generated token t sits at position L + t.
        fastv: `(layer K, image span in these L' tokens, choose)` when FastV prunes this prompt inside the LLM.
    """

    sequence_index: torch.Tensor
    inputs_embeds: torch.Tensor
    length: int
    fastv: tuple[int, tuple[int, int], Callable[[torch.Tensor], torch.Tensor]] | None = None


@dataclass
class Generation:
    """Greedy answer of one prompt. `sequence_index`: prompt indices the last layer saw; `prefill_seconds`:
    this prompt's own prefill (one sample); `decode_seconds_per_token`: one decode step of the batch it was
    decoded in (shared by the batch's rows)."""

    answer_token_ids: list[int]
    answer: str
    sequence_index: torch.Tensor
    image_attention: torch.Tensor | None
    fastv_selection_seconds: float
    prefill_seconds: float
    decode_seconds_per_token: float


def splice_image(embeds: torch.Tensor, image_start: int, image_end: int, packed_features: torch.Tensor,
                 selection: Selection) -> tuple[torch.Tensor, torch.Tensor]:
    """A prompt with its image span `[image_start, image_end)` replaced by the selection's kept tokens.

    Args:
        embeds: `(L, d)` prompt embeddings (what the span holds does not matter).
        packed_features: `(n, d)` the image's packed features, `n = image_end − image_start`.
    Returns:
        `(sequence_index (L',), embeds (L', d))`; kept tokens take their packed features, or the
        selection's merged features (ToMe).
    """
    device = embeds.device
    kept = torch.as_tensor(selection.kept_positions, device=device)
    if selection.merged_features is not None:
        image = torch.as_tensor(selection.merged_features).to(device=device, dtype=embeds.dtype)
    else:
        image = packed_features[kept].to(embeds.dtype)
    sequence_index = torch.cat([torch.arange(image_start, device=device), kept + image_start,
                                torch.arange(image_end, embeds.shape[0], device=device)])
    return sequence_index, torch.cat([embeds[:image_start], image, embeds[image_end:]])


def kept_sequence(encoded: EncodedPrompt, selection: Selection) -> tuple[torch.Tensor, torch.Tensor]:
    """The pruned prompt: `(sequence_index (L',), inputs_embeds (1, L', d))`, merged features swapped in."""
    sequence_index, embeds = splice_image(encoded.inputs_embeds[0], encoded.image_start, encoded.image_end,
                                          encoded.packed_features, selection)
    return sequence_index, embeds[None]


def _fastv_plan(prompt: Prompt) -> FastVPlan | None:
    """The plan of a prompt FastV prunes (scored by its last prompt token), else None."""
    if prompt.fastv is None:
        return None
    layer, span, choose = prompt.fastv
    return FastVPlan(layer, (span,), (prompt.inputs_embeds.shape[1] - 1,), lambda row, attention: choose(attention))


def _rows(prompts: list[Prompt]) -> Rows:
    for prompt in prompts:  # decoding continues at the last kept position + 1, which must be L
        if int(prompt.sequence_index[-1]) + 1 != prompt.length:
            raise ValueError("a prompt must keep its last token (the text after the image)")
    return Rows.pad([p.inputs_embeds[0] for p in prompts], [p.sequence_index for p in prompts])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def eos_ids(loaded: LoadedModel) -> set[int]:
    """Stop tokens: the generation config's EOS ids and the tokenizer's EOS (checkpoints differ in which they set)."""
    ids = set()
    for eos in (loaded.model.generation_config.eos_token_id, loaded.processor.tokenizer.eos_token_id):
        ids.update([eos] if isinstance(eos, int) else list(eos or []))
    return ids


@torch.no_grad()
def prefill_prompt(loaded: LoadedModel, prompt: Prompt) -> tuple[PrefillOutput, torch.Tensor, float]:
    """Prefill one prompt alone: `(output, greedy first token (1,), wall seconds up to that token)`."""
    _sync(loaded.device)
    start = time.perf_counter()
    out = prefill(loaded.model.model.language_model, _rows([prompt]), _fastv_plan(prompt))
    first_id = loaded.model.lm_head(out.hidden[:, -1]).argmax(-1)
    _sync(loaded.device)
    return out, first_id, time.perf_counter() - start


@torch.no_grad()
def generate_many(loaded: LoadedModel, prompts: list[Prompt], *, max_new_tokens: int, batched: bool = True) -> list[Generation]:
    """Greedy answers of several prompts: each prompt is prefilled alone (so its prefill is timed alone), then
    all are decoded as one batch (`batched=False`: one after another). Positions are the original indices
    and generated token t sits at `L + t` (METHOD.md §2.8)."""
    stop = eos_ids(loaded)
    states, first_ids, facts = [], [], []
    for prompt in prompts:
        out, first_id, seconds = prefill_prompt(loaded, prompt)
        states.append(out.state)  # only the decode state is kept: the prefill's hidden states go now
        first_ids.append(first_id)
        facts.append((prompt.sequence_index[out.seen[0]], out.image_attention[0], out.selection_seconds, seconds))
    groups = [list(range(len(prompts)))] if batched else [[i] for i in range(len(prompts))]
    answers, step_seconds = [None] * len(prompts), [0.0] * len(prompts)
    for group in groups:
        state = merge_states([states[i] for i in group]) if len(group) > 1 else states[group[0]]
        for i in group:  # the merged state holds copies: free the per-prompt caches before decoding
            states[i] = None
        tokens, seconds = _greedy(loaded, state, torch.cat([first_ids[i] for i in group]), max_new_tokens, stop)
        for i, row_tokens in zip(group, tokens):
            answers[i], step_seconds[i] = row_tokens, seconds
    decode = loaded.processor.tokenizer.decode
    return [Generation(answers[i], decode(answers[i], skip_special_tokens=True).strip(), *facts[i], step_seconds[i])
            for i in range(len(prompts))]


def _greedy(loaded: LoadedModel, state: DecodeState, next_ids: torch.Tensor, max_new_tokens: int,
            stop: set[int]) -> tuple[list[list[int]], float]:
    """Greedy decoding of a batch from its first tokens `(B,)` until every row stopped (EOS or
    `max_new_tokens`); finished rows keep being computed but are no longer read. Returns the token ids of
    each row and the seconds per decode step."""
    language_model, embed_tokens = loaded.model.model.language_model, loaded.model.get_input_embeddings()
    tokens: list[list[int]] = [[] for _ in range(len(next_ids))]
    done = [False] * len(next_ids)
    steps = 0
    _sync(loaded.device)
    start = time.perf_counter()
    while True:
        for row, token in enumerate(next_ids.tolist()):
            if done[row]:
                continue
            if token in stop:
                done[row] = True
            else:
                tokens[row].append(token)
                done[row] = len(tokens[row]) == max_new_tokens
        if all(done):
            break
        hidden = decode_step(language_model, embed_tokens(next_ids[:, None]), state)
        steps += 1
        next_ids = loaded.model.lm_head(hidden[:, -1]).argmax(-1)
    _sync(loaded.device)
    return tokens, (time.perf_counter() - start) / steps if steps else 0.0


@torch.no_grad()
def generate(loaded: LoadedModel, encoded: EncodedPrompt, sequence_index: torch.Tensor, inputs_embeds: torch.Tensor,
             *, max_new_tokens: int, fastv=None) -> Generation:
    """Greedy decoding of one (possibly pruned) prompt; `fastv` as in `Prompt.fastv`."""
    prompt = Prompt(sequence_index, inputs_embeds, encoded.length, fastv)
    return generate_many(loaded, [prompt], max_new_tokens=max_new_tokens)[0]


@torch.no_grad()
def answer_log_probabilities(loaded: LoadedModel, prompts: list[Prompt], answer_token_ids: list[int]) -> list[float]:
    """log p(answer | prompt) for each prompt by teacher forcing (answer at positions L, L+1, …).

    Prompts of equal length without FastV are prefilled as one batch (no padding); others alone. FastV
    scores with the last *prompt* token's attention, as in generation.
    """
    if not answer_token_ids:
        return [0.0] * len(prompts)
    language_model = loaded.model.model.language_model
    device = loaded.device
    answer = torch.tensor(answer_token_ids, device=device)
    answer_embeds = loaded.model.get_input_embeddings()(answer[None])[0]
    batches: dict[tuple, list[int]] = {}
    for i, prompt in enumerate(prompts):  # FastV prompts alone: each scores by its own last prompt token
        key = (prompt.inputs_embeds.shape[1],) if prompt.fastv is None else ("fastv", i)
        batches.setdefault(key, []).append(i)
    log_probabilities = [0.0] * len(prompts)
    for members in batches.values():
        batch = [prompts[i] for i in members]
        rows = Rows.pad(
            [torch.cat([p.inputs_embeds[0], answer_embeds.to(p.inputs_embeds.dtype)]) for p in batch],
            [torch.cat([p.sequence_index, p.length + torch.arange(len(answer), device=device)]) for p in batch],
        )
        out = prefill(language_model, rows, _fastv_plan(batch[0]) if len(batch) == 1 else None)
        # The logits that predict the answer: from the last prompt token up to the last-but-one answer token.
        predicting = out.hidden[:, -len(answer) - 1 : -1]
        log_probs = loaded.model.lm_head(predicting).float().log_softmax(-1)
        totals = log_probs.gather(2, answer[None, :, None].expand(len(batch), -1, 1)).sum(dim=(1, 2))
        for i, total in zip(members, totals.tolist()):
            log_probabilities[i] = total
    return log_probabilities
