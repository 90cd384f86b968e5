"""The language model run layer by layer on a (possibly pruned) sequence — the one place that knows
transformers' decoder internals (Llama / Mistral layout: `embed_tokens`, `layers`, `norm`, `rotary_emb`).

Why our own loop instead of `language_model(...)`: FastV changes the sequence between layers, and each
layer then keeps its own KV-cache length (layers < K cache every token, layers ≥ K only the kept ones).
Kept tokens always carry their original position ids and every mask is explicit (METHOD.md §6).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.models.llama.modeling_llama import repeat_kv, rotate_half


@dataclass(frozen=True)
class FastVPlan:
    """Prune the sequence after decoder layer `layer − 1` (FastV's K) by one attention row.

    Attributes:
        layer: K ≥ 1; layers 0..K−1 see every token.
        query_index: sequence index whose attention row scores the image tokens (the last prompt token).
        image_start, image_end: the image span `[image_start, image_end)` in the sequence.
        choose: maps the image span's attention `(n_image,)` (fp32, CPU) to sorted kept positions inside
            the span.
    """

    layer: int
    query_index: int
    image_start: int
    image_end: int
    choose: object


@dataclass
class PrefillOutput:
    """`hidden`: `(1, L', d)` final-norm hidden states of the tokens the last layer saw;
    `sequence_index`: `(L',)` their indices in the input sequence; `image_attention`: FastV's
    `(n_image,)` scoring row (else None) and `selection_seconds` the time spent scoring and choosing;
    `cache`: the KV cache to decode from."""

    hidden: torch.Tensor
    sequence_index: torch.Tensor
    cache: DynamicCache
    image_attention: torch.Tensor | None
    selection_seconds: float


def last_token_attention(attention: torch.nn.Module, normed_hidden: torch.Tensor, position_embeddings, query_index: int) -> torch.Tensor:
    """Head-averaged attention probabilities of one query row, recomputed from the layer's input.

    Costs O(heads · n) memory instead of eager attention's O(heads · n²) for the whole layer.

    Args:
        attention: the layer's `self_attn` (q/k projections, `head_dim`, `scaling`, GQA groups).
        normed_hidden: `(1, L, d)` the layer's input after `input_layernorm`.
        position_embeddings: `(cos, sin)`, each `(1, L, head_dim)`.
    Returns:
        `(query_index + 1,)` fp32 probabilities over keys 0..query_index (causal).
    """
    keys_hidden = normed_hidden[:, : query_index + 1]
    query = attention.q_proj(normed_hidden[:, query_index : query_index + 1])
    key = attention.k_proj(keys_hidden)
    query = query.view(1, 1, -1, attention.head_dim).transpose(1, 2).float()
    key = key.view(1, query_index + 1, -1, attention.head_dim).transpose(1, 2).float()
    cos, sin = (e[:, : query_index + 1, None].transpose(1, 2).float() for e in position_embeddings)
    query = query * cos[:, :, -1:] + rotate_half(query) * sin[:, :, -1:]
    key = repeat_kv(key * cos + rotate_half(key) * sin, attention.num_key_value_groups)
    logits = (query @ key.transpose(2, 3)) * attention.scaling
    return logits.softmax(dim=-1).mean(dim=1)[0, 0]


def _causal_mask(language_model, hidden: torch.Tensor):
    # An explicit all-ones 2D mask: with gapped position ids and no mask, transformers would treat the
    # gaps as packed sequences (METHOD.md §6). No cache is passed: prefill starts from an empty one.
    ones = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
    return create_causal_mask(config=language_model.config, inputs_embeds=hidden, attention_mask=ones, past_key_values=None)


@torch.no_grad()
def prefill(language_model, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, fastv: FastVPlan | None = None) -> PrefillOutput:
    """Run every decoder layer over `inputs_embeds (1, L, d)` at `position_ids (1, L)`, filling a new cache."""
    cache = DynamicCache(config=language_model.config)
    hidden = inputs_embeds
    sequence_index = torch.arange(hidden.shape[1], device=hidden.device)
    mask = _causal_mask(language_model, hidden)
    position_embeddings = language_model.rotary_emb(hidden, position_ids=position_ids)
    image_attention = None
    selection_seconds = 0.0
    for layer_index, layer in enumerate(language_model.layers):
        if fastv is not None and layer_index == fastv.layer - 1:
            start = time.perf_counter()
            row = last_token_attention(layer.self_attn, layer.input_layernorm(hidden), position_embeddings, fastv.query_index)
            image_attention = row[fastv.image_start : fastv.image_end].cpu()
            selection_seconds += time.perf_counter() - start
        hidden = layer(hidden, attention_mask=mask, position_ids=position_ids, past_key_values=cache,
                       use_cache=True, position_embeddings=position_embeddings)
        if image_attention is not None and layer_index == fastv.layer - 1:
            start = time.perf_counter()
            kept_in_span = torch.as_tensor(fastv.choose(image_attention), device=hidden.device) + fastv.image_start
            keep = torch.cat([sequence_index[: fastv.image_start], kept_in_span, sequence_index[fastv.image_end :]])
            selection_seconds += time.perf_counter() - start
            hidden, position_ids, sequence_index = hidden[:, keep], position_ids[:, keep], sequence_index[keep]
            mask = _causal_mask(language_model, hidden)
            position_embeddings = language_model.rotary_emb(hidden, position_ids=position_ids)
    return PrefillOutput(language_model.norm(hidden), sequence_index, cache, image_attention, selection_seconds)


@torch.no_grad()
def decode_step(language_model, embeds: torch.Tensor, position: int, cache: DynamicCache) -> torch.Tensor:
    """One new token `(1, 1, d)` at `position` attending to everything cached; returns its final hidden state.

    No mask is needed for a single query that may see all cached keys, whatever each layer's cache length.
    """
    position_ids = torch.tensor([[position]], device=embeds.device)
    position_embeddings = language_model.rotary_emb(embeds, position_ids=position_ids)
    hidden = embeds
    for layer in language_model.layers:
        hidden = layer(hidden, attention_mask=None, position_ids=position_ids, past_key_values=cache,
                       use_cache=True, position_embeddings=position_embeddings)
    return language_model.norm(hidden)
