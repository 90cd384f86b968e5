"""`patch(model, method=...)`: any of our pruning methods inside stock transformers `generate` for LLaVA-NeXT.

    from gprune import patch, selections, unpatch
    patch(model, method="gprune", keep_ratio=0.25)
    inputs = processor(images=[img_a, img_b], text=[prompt_a, prompt_b], padding=True, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=32, do_sample=False)
    kept = selections(model)          # one `Selection` per row of the last prefill
    unpatch(model)                    # the stock model again

The patch replaces the forward of `model.model` (the `LlavaNextModel`) on this instance only. At prefill it
prunes each row's image exactly as the explorer does (same selection functions, same budgets; ToMe feeds
its merged features; FastV prunes after layer K by the last prompt token's attention), drops the padding,
left-pads the pruned rows again and runs the language model through `gprune.llm`, the loop the explorer's
Run and the evaluator use: kept tokens keep their original position ids and generated token t of a row sits
at L + t, whatever the padding side. `generate` itself is wrapped only to refuse the modes we cannot serve.

Called directly (`model(**inputs)`), the patched model returns its outputs in the caller's layout: column j
of `logits` belongs to `input_ids[:, j]` whatever the padding side, and columns of pruned tokens and of
padding hold zeros (`kept_mask(model)` says which columns hold outputs). Inside `generate` the prefill keeps
the pruned, left-padded layout, whose last column is every row's last prompt token, as `generate` reads it.
The model's own `forward` is wrapped too, to score `labels` on the kept tokens. The patch is inference-only:
its prefill runs under `no_grad`, so a call that could want gradients is refused, and so is `torch.compile`.
"""

from __future__ import annotations

import contextvars
import inspect
import types
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import LlavaNextForConditionalGeneration
from transformers.models.llava_next.modeling_llava_next import LlavaNextModelOutputWithPast

from .analysis import METHODS, AnalysisConfig, fastv_choose, fastv_selection, select_before_llm
from .llm import FastVPlan, Rows, check_attention, decode_step, prefill
from .pipeline import splice_image
from .result import Selection

STATE = "_gprune_patch"
IGNORE_INDEX = -100  # transformers' label of a position the loss skips
# True while `generate` of a patched model runs: its prefill then returns the pruned, left-padded layout.
_GENERATING = contextvars.ContextVar("gprune_generating", default=False)


@dataclass
class PatchState:
    """The settings of a patched model and what its last prefill decided.

    `selections`: per row of the last prefill, what the method kept (None for rows without an image).
    `kept`: `(B, L)` bool over the last prefill's `input_ids`: True where that token reached the last layer.
    `replaced`: the instance's own attributes before patching (`model.model.forward`, `model.forward`,
    `model.generate`; e.g. hooks), restored by `unpatch`. Decoding state is not kept here but on the cache `generate` passes along (`GrowingCache`), so it
    is freed with it and two `generate` calls never share it."""

    method: str
    config: AnalysisConfig
    selections: list[Selection | None] = field(default_factory=list)
    kept: torch.Tensor | None = None
    replaced: dict = field(default_factory=dict)


def patch(model: LlavaNextForConditionalGeneration, method: str = "gprune", keep_ratio: float = 0.5, *,
          iterations: int = 5, threshold: float = 0.5, temperature: float = 0.03, fastv_layer: int = 2,
          seed: int = 0) -> LlavaNextForConditionalGeneration:
    """Make `model.generate` (and `model(...)`) prune every prompt's image with `method`; returns `model`.

    Parameters are validated with the library's messages (`ValueError`); patching a patched model replaces
    its settings. Defaults are the papers' (G-Prune s = 0.5, τ = 0.03, I = 5; FastV K = 2; ρ = 0.5).
    """
    if not isinstance(model, LlavaNextForConditionalGeneration):
        raise ValueError(f"patch needs a LlavaNextForConditionalGeneration, got {type(model).__name__}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    text_config = model.config.text_config
    config = AnalysisConfig(methods=(method,), keep_ratio=keep_ratio, iterations=iterations, threshold=threshold,
                            temperature=temperature, fastv_layer=fastv_layer, seed=seed)
    config.validate(text_config.num_hidden_layers)
    check_attention(text_config)
    if model.config.vision_feature_select_strategy != "default":
        raise ValueError("pruning needs vision_feature_select_strategy='default' (CLS dropped), as in the llava-hf "
                         f"checkpoints; this model has {model.config.vision_feature_select_strategy!r}")
    previous = getattr(model.model, STATE, None)
    replaced = previous.replaced if previous else {
        (owner, name): vars(target).get(name) for owner, target, name in _replaced_attributes(model)}
    setattr(model.model, STATE, PatchState(method, config, replaced=replaced))
    model.model.forward = types.MethodType(_pruned_forward, model.model)
    model.forward = types.MethodType(_labelled_forward, model)
    model.generate = types.MethodType(_checked_generate, model)
    return model


def unpatch(model: LlavaNextForConditionalGeneration) -> LlavaNextForConditionalGeneration:
    """Remove the patch: the class's own `forward` and `generate` serve the instance again."""
    if not is_patched(model):
        raise ValueError("this model is not patched; call gprune.patch(model, ...) first")
    replaced = getattr(model.model, STATE).replaced
    for owner, target, name in _replaced_attributes(model):
        if replaced[owner, name] is None:
            delattr(target, name)
        else:
            setattr(target, name, replaced[owner, name])
    delattr(model.model, STATE)
    return model


def _replaced_attributes(model):  # noqa: N802 — the attributes `patch` replaces, as (owner's name, owner, attribute)
    return (("model.model", model.model, "forward"), ("model", model, "forward"), ("model", model, "generate"))


def is_patched(model) -> bool:
    return isinstance(model, LlavaNextForConditionalGeneration) and hasattr(model.model, STATE)


def selections(model: LlavaNextForConditionalGeneration) -> list[Selection | None]:
    """What the last prefill of a patched model kept, per row of its batch (None for a row without an image).

    `kept_positions` index each row's packed image block `[576 base | rows × (cols + 1)]`; for FastV,
    `seconds` is the whole batch's scoring time (the rows are scored together)."""
    if not is_patched(model):
        raise ValueError("this model is not patched; call gprune.patch(model, ...) first")
    return list(getattr(model.model, STATE).selections)


def kept_mask(model: LlavaNextForConditionalGeneration) -> torch.Tensor:
    """`(B, L)` bool over the `input_ids` of a patched model's last prefill: True where that token reached the
    last layer (its output in `model(**inputs)` is real), False for pruned tokens and padding."""
    if not is_patched(model):
        raise ValueError("this model is not patched; call gprune.patch(model, ...) first")
    kept = getattr(model.model, STATE).kept
    if kept is None:
        raise ValueError("this patched model has not run a prefill yet")
    return kept.clone()


def _checked_generate(self, *args, **kwargs):
    """Stock `generate`, after refusing what a pruned prompt cannot serve."""
    state: PatchState = getattr(self.model, STATE)
    generation_config = kwargs.get("generation_config") or self.generation_config
    setting = lambda name: kwargs.get(name, getattr(generation_config, name, None))  # noqa: E731
    if kwargs.get("assistant_model") is not None or setting("prompt_lookup_num_tokens"):
        raise ValueError("assisted / prompt-lookup decoding is not supported on a patched model: the candidate "
                         "tokens would be verified against a prompt of another length; use plain decoding")
    if setting("cache_implementation") not in (None, "dynamic"):
        raise ValueError(f"cache_implementation={setting('cache_implementation')!r} is not supported on a patched model; "
                         "pruned rows need the dynamic cache (leave cache_implementation unset)")
    if setting("prefill_chunk_size"):
        raise ValueError("chunked prefill is not supported on a patched model: pruning needs each row's whole "
                         "image at once; leave prefill_chunk_size unset")
    if kwargs.get("past_key_values") is not None:
        raise ValueError("a patched model starts every generate from an empty cache; do not pass past_key_values")
    if state.method == "fastv" and setting("use_cache") is False:
        raise ValueError("FastV prunes once, at prefill, by the last prompt token's attention; without a KV cache "
                         "every step would prune again by another token. Use use_cache=True (the default)")
    generating = _GENERATING.set(True)
    try:
        return type(self).generate(self, *args, **kwargs)
    finally:
        _GENERATING.reset(generating)


def _labelled_forward(self, *args, **kwargs):
    """The model's own forward; `labels` are scored only where the predicting token was kept.

    The loss is transformers' own (`self.loss_function`) on the caller-layout logits, so it equals the stock
    loss whenever every counted label follows a token the pruned prompt still holds; a label after a pruned
    token (or padding) has no prediction and is refused rather than scored against zero logits."""
    bound = inspect.signature(type(self).forward).bind(self, *args, **kwargs)
    labels = bound.arguments.pop("labels", None)
    outputs = type(self).forward(*bound.args, **bound.kwargs)
    if labels is None:
        return outputs
    kept = getattr(self.model, STATE).kept
    if labels.shape != kept.shape or outputs.logits.shape[1] != kept.shape[1]:
        raise ValueError(f"labels must have the shape of input_ids {tuple(kept.shape)} and every position's logits "
                         f"(logits_to_keep unset); got labels {tuple(labels.shape)}")
    counted = labels[:, 1:] != IGNORE_INDEX
    unpredicted = counted & ~kept[:, :-1].to(labels.device)
    if bool(unpredicted.any()):
        row, column = (int(i) for i in unpredicted.nonzero()[0])
        raise ValueError(f"labels count token {column + 1} of row {row}, but the token before it was pruned (or is "
                         f"padding), so the pruned prompt predicts nothing there; set labels to {IGNORE_INDEX} on the "
                         "image (and the prompt, as LLaVA's training does) and count only tokens after the image")
    outputs.loss = self.loss_function(logits=outputs.logits, labels=labels,
                                      vocab_size=self.config.text_config.vocab_size)
    return outputs


# `generate` checks its keyword arguments against the signature of `model.forward`: keep the stock one.
_labelled_forward.__signature__ = inspect.signature(LlavaNextForConditionalGeneration.forward)


def grid_shape(packed_features: torch.Tensor, image_newline: torch.Tensor, base_tokens: int) -> tuple[int, int]:
    """`(rows, cols)` of a packed block `[base | rows × (cols + 1)]`, read from where the learned newline
    embedding sits (the packer appends it to every grid row), so no image size is needed."""
    grid = packed_features[base_tokens:]
    newline_at = (grid == image_newline.to(grid.dtype)).all(dim=-1).nonzero().flatten()
    rows = len(newline_at)
    cols = grid.shape[0] // rows - 1 if rows else 0
    expected = torch.arange(rows, device=grid.device) * (cols + 1) + cols
    if rows == 0 or grid.shape[0] != rows * (cols + 1) or not torch.equal(newline_at, expected):
        raise ValueError("this image's features are not a LLaVA-NeXT anyres block [base | rows × (cols + 1)] with a "
                         "newline token ending each row; only the llava-hf packing ('spatial_unpad') is supported")
    return rows, cols


def _image_features(self, pixel_values, image_sizes, vision_feature_layer, vision_feature_select_strategy,
                    mm_encoder_outputs) -> list[torch.Tensor]:
    """Packed features of every image in the batch, in order: from `generate`'s pre-encoded outputs or the tower."""
    encoded = (mm_encoder_outputs or {}).get("image")
    if encoded is None and pixel_values is not None and pixel_values.size(0) > 0:
        encoded = self.get_image_features(pixel_values, image_sizes, vision_feature_layer=vision_feature_layer,
                                          vision_feature_select_strategy=vision_feature_select_strategy, return_dict=True)
    return list(encoded.pooler_output) if encoded is not None else []


def _pruned_forward(self, input_ids=None, pixel_values=None, image_sizes=None, attention_mask=None, position_ids=None,
                    past_key_values=None, inputs_embeds=None, vision_feature_layer=None,
                    vision_feature_select_strategy=None, use_cache=None, mm_encoder_outputs=None, **kwargs):
    """`LlavaNextModel.forward` with pruning: prefill prunes and starts a decode state; later calls decode."""
    state: PatchState = getattr(self, STATE)
    _check_inference(self, pixel_values)
    if kwargs.get("output_attentions") or kwargs.get("output_hidden_states"):
        raise ValueError("a patched model does not return attentions or hidden states (the sequence is pruned)")
    language_model = self.language_model
    decode = getattr(past_key_values, "decode_state", None)  # set on the cache this forward's prefill returned
    if decode is not None:
        if input_ids is None or input_ids.shape[1] != 1:
            raise ValueError("a patched model decodes one new token per row and step")
        hidden = decode_step(language_model, self.get_input_embeddings()(input_ids), decode)
        return LlavaNextModelOutputWithPast(last_hidden_state=hidden, past_key_values=decode.cache)
    if past_key_values is not None and past_key_values.get_seq_length() > 0:
        raise ValueError("a patched model cannot continue from a cache it did not fill; start from an empty one")
    if input_ids is None:
        raise ValueError("a patched model needs input_ids (to find each row's <image> placeholders), not inputs_embeds")

    features = _image_features(self, pixel_values, image_sizes, vision_feature_layer, vision_feature_select_strategy,
                               mm_encoder_outputs)
    real = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
    embeds = self.get_input_embeddings()(input_ids)
    base_tokens = (self.config.vision_config.image_size // self.config.vision_config.patch_size) ** 2
    config = state.config
    row_embeds, row_positions, spans, choosers, row_selections = [], [], [], [], []
    next_image = 0
    for row in range(input_ids.shape[0]):
        ids, tokens = input_ids[row][real[row]], embeds[row][real[row]]
        placeholders = (ids == self.config.image_token_id).nonzero().flatten()
        sequence_index = torch.arange(len(ids), device=ids.device)
        span, choose, selection = None, None, None
        if len(placeholders):
            start, end = int(placeholders[0]), int(placeholders[-1]) + 1
            packed = features[next_image] if next_image < len(features) else None
            next_image += 1
            if end - start != len(placeholders) or packed is None or packed.shape[0] != end - start:
                raise ValueError(f"row {row} must hold exactly one image (one contiguous run of <image> placeholders "
                                 f"matching its features); pruning handles one image per prompt")
            rows, cols = grid_shape(packed, self.image_newline, base_tokens)
            if state.method == "fastv":  # every image token enters the LLM; FastV selects after layer K − 1
                span, choose = (start, end), fastv_choose(rows, cols, base_tokens, config.keep_ratio)
                sequence_index, tokens = splice_image(tokens, start, end, packed, Selection(np.arange(end - start)))
            else:
                selection = select_before_llm(state.method, packed, rows, cols, base_tokens, config, config.keep_ratio)
                sequence_index, tokens = splice_image(tokens, start, end, packed, selection)
        row_embeds.append(tokens)
        row_positions.append(sequence_index)  # index among the row's real tokens = its original position id
        spans.append(span)
        choosers.append(choose)
        row_selections.append(selection)
    if next_image != len(features):
        raise ValueError(f"the batch has {len(features)} images but {next_image} rows with <image> placeholders")

    fastv = None
    if state.method == "fastv":
        queries = tuple(len(p) - 1 for p in row_positions)
        fastv = FastVPlan(config.fastv_layer, tuple(spans), queries, lambda row, attention: choosers[row](attention))
    out = prefill(language_model, Rows.pad(row_embeds, row_positions), fastv)
    if fastv is not None:
        row_selections = [fastv_selection(seen, *span, attention, out.selection_seconds) if span else None
                          for span, seen, attention in zip(spans, out.seen, out.image_attention)]
    state.selections = row_selections
    hidden, state.kept = caller_layout(out.hidden, real, row_positions, out.seen)
    return LlavaNextModelOutputWithPast(last_hidden_state=out.hidden if _GENERATING.get() else hidden,
                                        past_key_values=out.state.cache if use_cache is not False else None)


def caller_layout(hidden: torch.Tensor, real: torch.Tensor, row_positions: list[torch.Tensor],
                  seen: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The prefill's left-padded `(B, L', d)` hidden states moved to the caller's columns.

    Args:
        real: `(B, L)` the caller's attention mask (False on padding, either side).
        row_positions: per row, the original index among its real tokens of each token given to the LLM.
        seen: per row, indices into that row's LLM input of the tokens the last layer saw (all but FastV's pruned).
    Returns:
        `(B, L, d)` hidden states (zeros where no token reached the last layer) and the `(B, L)` bool mask of
        the columns that hold one.
    """
    batch, length = real.shape
    aligned = hidden.new_zeros(batch, length, hidden.shape[-1])
    kept = torch.zeros_like(real)
    for row in range(batch):
        columns = real[row].nonzero().flatten()[row_positions[row][seen[row]]]
        aligned[row, columns] = hidden[row, hidden.shape[1] - len(columns):]
        kept[row, columns] = True
    return aligned, kept


@torch.compiler.disable  # dynamo runs it eagerly instead of tracing it, so its error reaches the caller
def _refuse_compile():
    raise ValueError("torch.compile cannot compile a patched model: pruning chooses data-dependent token counts in "
                     "Python, so nothing of the pruned prefill would compile; run the patched model uncompiled")


def _check_inference(self, pixel_values) -> None:
    """Refuse calls that could want gradients, and tracing by torch.compile: the pruned prefill serves neither."""
    if torch.compiler.is_compiling():  # True only while dynamo traces; a `raise` there would fall back to eager
        _refuse_compile()
    if torch.is_grad_enabled() and (any(p.requires_grad for p in self.parameters())
                                    or (pixel_values is not None and pixel_values.requires_grad)):
        raise ValueError("a patched model is inference-only: its prefill runs under no_grad (top-k pruning), so no "
                         "gradient would reach the weights or pixel_values. Call it under torch.no_grad() or "
                         "torch.inference_mode() (generate does), or unpatch(model) to train or take gradients")

