"""The language model run layer by layer on left-padded batches of (possibly pruned) prompts — the one place
that knows transformers' decoder internals (Llama / Mistral / Qwen2 layout: `embed_tokens`, `layers`,
`norm`, `rotary_emb`, `self_attn.q_proj / k_proj`).

Why our own loop instead of `language_model(...)`:
- FastV changes the sequence between layers, so layers < K and layers ≥ K keep KV caches of different
  lengths, each with its own mask;
- kept tokens carry their original position ids, which have gaps, so masks (padding, sliding windows)
  are built from position ids, never from sequence indices (METHOD.md §6).
Every batch is left-padded: the last position of each row is its last real token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer
from transformers.masking_utils import create_causal_mask
from transformers.models.llama.modeling_llama import repeat_kv, rotate_half

SUPPORTED_ATTENTION = ("sdpa", "eager")
SPARE_TOKENS = 64


class GrowingLayer(DynamicLayer):
    """A `DynamicLayer` whose keys and values live in buffers with spare room: appending a token writes in place.

    `DynamicLayer` concatenates, copying the whole cache for every decoded token; with a batch of rows that copy,
    not the model, dominates a small model's decode step. Spare room is a quarter of the length (at least
    `SPARE_TOKENS`), so appends cost amortised O(1).
    """

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.get_seq_length()
        needed = length + key_states.shape[-2]
        buffers = getattr(self, "_buffers", None)
        # Beam search and batch selection replace `keys` with a new tensor: then the buffers start from it.
        if buffers is None or self.keys is not buffers[2] or needed > buffers[0].shape[-2]:
            shape = (*key_states.shape[:-2], needed + max(SPARE_TOKENS, needed // 4), key_states.shape[-1])
            key_buffer, value_buffer = key_states.new_empty(shape), value_states.new_empty(shape)
            if length:
                key_buffer[..., :length, :] = self.keys
                value_buffer[..., :length, :] = self.values
        else:
            key_buffer, value_buffer = buffers[:2]
        key_buffer[..., length:needed, :] = key_states
        value_buffer[..., length:needed, :] = value_states
        self.keys, self.values = key_buffer[..., :needed, :], value_buffer[..., :needed, :]
        self._buffers = (key_buffer, value_buffer, self.keys)
        return self.keys, self.values


class GrowingCache(DynamicCache):
    """A `DynamicCache` (what `generate` expects) of `GrowingLayer`s, one per decoder layer, never cropped.

    `decode_state` is the `DecodeState` this cache belongs to, so that a patched model's forward finds it from
    the cache `generate` hands back (and it goes when the cache does)."""

    def __init__(self, layers: list[GrowingLayer] | None = None):
        Cache.__init__(self, layers=layers, layer_class_to_replicate=None if layers else GrowingLayer)
        self.decode_state: DecodeState | None = None


@dataclass
class Rows:
    """A left-padded batch of prompts.

    Attributes:
        embeds: `(B, L, d)` input embeddings.
        positions: `(B, L)` int64 position ids (original positions of kept tokens; 0 on padding).
        real: `(B, L)` bool, False on padding.
    """

    embeds: torch.Tensor
    positions: torch.Tensor
    real: torch.Tensor

    @classmethod
    def pad(cls, embeds: list[torch.Tensor], positions: list[torch.Tensor]) -> "Rows":
        """Left-pad rows of `(L_b, d)` embeddings and `(L_b,)` position ids into one batch."""
        real = [torch.ones(len(p), dtype=torch.bool, device=p.device) for p in positions]
        return cls(pad_left(embeds), pad_left(positions), pad_left(real))


def pad_left(rows: list[torch.Tensor], length: int | None = None, dim: int = 0) -> torch.Tensor:
    """Stack tensors that differ only in size along `dim`, zero-padded at the start of `dim` to `length`."""
    length = max(row.shape[dim] for row in rows) if length is None else length
    padded = []
    for row in rows:
        shape = list(row.shape)
        shape[dim] = length - row.shape[dim]
        padded.append(torch.cat([row.new_zeros(shape), row], dim=dim))
    return torch.stack(padded)


@dataclass(frozen=True)
class FastVPlan:
    """Prune rows after decoder layer `layer − 1` (FastV's K) by one query token's attention.

    Attributes:
        layer: K ≥ 1; layers 0..K−1 see every token.
        image_spans: per row, `(start, end)` of the image span among that row's real tokens, or None
            (the row is not pruned).
        queries: per row, the index among its real tokens of the token whose attention row scores the image
            (FastV: the last prompt token).
        choose: `(row, image_attention (n_image,) fp32 CPU) → sorted kept positions inside the span`.
    """

    layer: int
    image_spans: tuple
    queries: tuple
    choose: Callable[[int, torch.Tensor], torch.Tensor]


@dataclass
class DecodeState:
    """What decoding continues from.

    Attributes:
        cache: one full (never cropped) KV layer per decoder layer; sliding windows live in the masks.
        group_real / group_positions: for each group of layers whose caches hold the same tokens, `(B, kv)`
            bool (False on padding) and int64 position ids of the cached tokens.
        layer_group: the group of each decoder layer.
        next_positions: `(B,)` position id of each row's next token (L + t for generated token t).
    """

    cache: GrowingCache
    group_real: list[torch.Tensor]
    group_positions: list[torch.Tensor]
    layer_group: list[int]
    next_positions: torch.Tensor

    def __post_init__(self):
        self.cache.decode_state = self


@dataclass
class PrefillOutput:
    """`hidden`: `(B, L', d)` final-norm hidden states of the tokens the last layer saw (left-padded);
    `seen`: per row, indices among its input's real tokens that the last layer saw; `image_attention`: per
    row, FastV's `(n_image,)` scoring row (None where FastV did not prune); `selection_seconds`: time spent
    scoring and choosing inside the LLM; `state`: what decoding continues from."""

    hidden: torch.Tensor
    state: DecodeState
    seen: list[torch.Tensor]
    image_attention: list[torch.Tensor | None]
    selection_seconds: float


def check_attention(config) -> None:
    if config._attn_implementation not in SUPPORTED_ATTENTION:
        raise ValueError(f"attention implementation {config._attn_implementation!r} is not supported for pruning; "
                         f"load the model with attn_implementation='sdpa' (or 'eager')")


def layer_windows(config) -> list[int | None]:
    """Sliding-window size of each decoder layer (None = full attention): Mistral's `sliding_window` applies
    to every layer, Qwen2's only to the layers `layer_types` marks "sliding_attention"."""
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if window is None:
        return [None] * config.num_hidden_layers
    if types is None:
        return [window] * config.num_hidden_layers
    return [window if kind == "sliding_attention" else None for kind in types]


def attention_mask(config, embeds: torch.Tensor, q_positions: torch.Tensor, kv_positions: torch.Tensor,
                   kv_real: torch.Tensor, window: int | None):
    """The mask of queries that are the last `q` of `kv` cached tokens, in the format of the attention kernel.

    A query attends to a key at or before it in the row, not on padding, and (with a window) whose position id
    is less than `window` before its own. Padding queries attend to themselves only, so no softmax row is
    empty. Without padding or an active window, the same mask transformers itself would use (None for SDPA).

    Args:
        embeds: `(B, q, d)` the queries' hidden states (batch size, length, dtype, device).
        q_positions: `(B, q)`; kv_positions, kv_real: `(B, kv)`.
    """
    batch, q = q_positions.shape
    kv = kv_positions.shape[1]
    windowed = window is not None and bool((q_positions.amax() - kv_positions.amin()) >= window)
    if bool(kv_real.all()) and not windowed:
        if q == 1:
            return None  # one query that may see every cached key
        if q == kv:  # an unpadded prefill: exactly transformers' own causal mask
            ones = torch.ones(batch, q, dtype=torch.long, device=embeds.device)
            return create_causal_mask(config=config, inputs_embeds=embeds, attention_mask=ones, past_key_values=None)
    offset = kv - q
    query_index = torch.arange(q, device=embeds.device) + offset
    key_index = torch.arange(kv, device=embeds.device)
    allowed = (key_index[None, :] <= query_index[:, None])[None] & kv_real[:, None, :]
    if windowed:
        allowed &= (q_positions[:, :, None] - kv_positions[:, None, :]) < window
    allowed[:, torch.arange(q, device=embeds.device), query_index] = True
    allowed = allowed[:, None]  # (B, 1, q, kv)
    if config._attn_implementation == "sdpa":  # else "eager" (`prefill` refuses the others)
        return allowed
    return torch.zeros(allowed.shape, dtype=embeds.dtype, device=embeds.device).masked_fill_(
        ~allowed, torch.finfo(embeds.dtype).min)


def query_attention(attention: torch.nn.Module, normed_hidden: torch.Tensor, position_embeddings,
                    positions: torch.Tensor, real: torch.Tensor, query_index: torch.Tensor,
                    window: int | None) -> torch.Tensor:
    """Head-averaged attention probabilities of one query per row, recomputed from the layer's input.

    Costs O(heads · L) memory per row instead of eager attention's O(heads · L²) for the whole layer.

    Args:
        attention: the layer's `self_attn` (q/k projections, `head_dim`, `scaling`, GQA groups).
        normed_hidden: `(B, L, d)` the layer's input after `input_layernorm`.
        position_embeddings: `(cos, sin)`, each `(B, L, head_dim)`.
        positions, real: `(B, L)`; query_index: `(B,)` the query's index in each (padded) row.
    Returns:
        `(B, L)` fp32 probabilities over the keys each query may see (0 elsewhere).
    """
    batch, length = real.shape
    rows = torch.arange(batch, device=real.device)
    query = attention.q_proj(normed_hidden[rows, query_index][:, None])
    key = attention.k_proj(normed_hidden)
    query = query.view(batch, 1, -1, attention.head_dim).transpose(1, 2).float()
    key = key.view(batch, length, -1, attention.head_dim).transpose(1, 2).float()
    cos, sin = (e[:, None].float() for e in position_embeddings)
    query_cos, query_sin = cos[rows, :, query_index][:, :, None], sin[rows, :, query_index][:, :, None]
    query = query * query_cos + rotate_half(query) * query_sin
    key = repeat_kv(key * cos + rotate_half(key) * sin, attention.num_key_value_groups)
    logits = (query @ key.transpose(2, 3)) * attention.scaling  # (B, heads, 1, L)
    allowed = real & (torch.arange(length, device=real.device)[None] <= query_index[:, None])
    if window is not None:
        allowed &= (positions[rows, query_index][:, None] - positions) < window
    logits = logits.masked_fill(~allowed[:, None, None, :], float("-inf"))
    return logits.softmax(dim=-1).mean(dim=1)[:, 0]


def _fastv_prune(fastv: FastVPlan, attention: torch.Tensor, hidden, positions, real, seen):
    """Keep, per row, its non-image tokens and the image tokens `fastv.choose` picks; re-pad the batch."""
    length = real.shape[1]
    kept_rows, image_attention = [], []
    for row, span in enumerate(fastv.image_spans):
        padding = length - int(real[row].sum())
        keep = torch.arange(padding, length, device=real.device)
        if span is None:
            image_attention.append(None)
        else:
            start, end = span[0] + padding, span[1] + padding
            row_attention = attention[row, start:end].cpu()
            kept = torch.as_tensor(fastv.choose(row, row_attention), device=real.device) + start
            keep = torch.cat([keep[: start - padding], kept, keep[end - padding :]])
            image_attention.append(row_attention)
        kept_rows.append(keep)
    hidden = pad_left([hidden[row, keep] for row, keep in enumerate(kept_rows)])
    positions = pad_left([positions[row, keep] for row, keep in enumerate(kept_rows)])
    real = pad_left([real[row, keep] for row, keep in enumerate(kept_rows)])
    seen = [row_seen[keep - (length - len(row_seen))] for row_seen, keep in zip(seen, kept_rows)]
    return hidden, positions, real, seen, image_attention


def _synced_clock(tensor: torch.Tensor) -> float:
    """`time.perf_counter()` once the device of `tensor` finished its queued work (CUDA runs asynchronously)."""
    if tensor.is_cuda:
        torch.cuda.synchronize(tensor.device)
    return time.perf_counter()


@torch.no_grad()
def prefill(language_model, rows: Rows, fastv: FastVPlan | None = None) -> PrefillOutput:
    """Run every decoder layer over a left-padded batch, filling a new cache (FastV prunes rows after layer K−1)."""
    config = language_model.config
    check_attention(config)
    if fastv is not None and not 1 <= fastv.layer < len(language_model.layers):
        raise ValueError(f"FastV's layer K must be from 1 to {len(language_model.layers) - 1}, got {fastv.layer!r}")
    windows = layer_windows(config)
    cache = GrowingCache()  # full layers: sliding windows are applied by the position-based masks
    hidden, positions, real = rows.embeds, rows.positions, rows.real
    seen = [torch.arange(int(n), device=real.device) for n in real.sum(dim=1)]
    group_real, group_positions, layer_group = [real], [positions], []
    position_embeddings = language_model.rotary_emb(hidden, position_ids=positions)
    masks: dict[int | None, object] = {}
    image_attention: list[torch.Tensor | None] = [None] * hidden.shape[0]
    scoring_row = None  # FastV's query attention at layer K − 1, used to prune before layer K
    selection_seconds = 0.0
    for index, layer in enumerate(language_model.layers):
        if fastv is not None and index == fastv.layer:
            start = _synced_clock(hidden)
            hidden, positions, real, seen, image_attention = _fastv_prune(fastv, scoring_row, hidden, positions, real, seen)
            selection_seconds += _synced_clock(hidden) - start
            group_real.append(real)
            group_positions.append(positions)
            position_embeddings = language_model.rotary_emb(hidden, position_ids=positions)
            masks = {}
        if fastv is not None and index == fastv.layer - 1:
            start = _synced_clock(hidden)
            padding = real.shape[1] - real.sum(dim=1)
            query_index = torch.as_tensor(fastv.queries, device=real.device) + padding
            scoring_row = query_attention(layer.self_attn, layer.input_layernorm(hidden), position_embeddings,
                                          positions, real, query_index, windows[index])
            selection_seconds += _synced_clock(hidden) - start
        window = windows[index]
        if window not in masks:
            masks[window] = attention_mask(config, hidden, positions, positions, real, window)
        hidden = layer(hidden, attention_mask=masks[window], position_ids=positions, past_key_values=cache,
                       use_cache=True, position_embeddings=position_embeddings)
        layer_group.append(len(group_real) - 1)
    # Rows are left-padded, so the last column holds each row's last token, at position L − 1.
    state = DecodeState(cache, group_real, group_positions, layer_group, positions[:, -1] + 1)
    return PrefillOutput(language_model.norm(hidden), state, seen, image_attention, selection_seconds)


@torch.no_grad()
def decode_step(language_model, embeds: torch.Tensor, state: DecodeState) -> torch.Tensor:
    """One new token per row, `embeds (B, 1, d)` at `state.next_positions`, attending to everything its
    layer cached (within the window); updates `state` and returns the `(B, 1, d)` final hidden states."""
    config = language_model.config
    windows = layer_windows(config)
    positions = state.next_positions[:, None]
    new_real = torch.ones_like(positions, dtype=torch.bool)
    state.group_real = [torch.cat([real, new_real], dim=1) for real in state.group_real]
    state.group_positions = [torch.cat([cached, positions], dim=1) for cached in state.group_positions]
    position_embeddings = language_model.rotary_emb(embeds, position_ids=positions)
    masks: dict[tuple[int, int | None], object] = {}
    hidden = embeds
    for index, layer in enumerate(language_model.layers):
        key = (state.layer_group[index], windows[index])
        if key not in masks:
            masks[key] = attention_mask(config, embeds, positions, state.group_positions[key[0]],
                                        state.group_real[key[0]], key[1])
        hidden = layer(hidden, attention_mask=masks[key], position_ids=positions, past_key_values=state.cache,
                       use_cache=True, position_embeddings=position_embeddings)
    state.next_positions = state.next_positions + 1
    return language_model.norm(hidden)


def merge_states(states: list[DecodeState]) -> DecodeState:
    """One batch from several decode states (e.g. rows prefilled separately): every layer's keys and values,
    and the padding flags and position ids of its group, are left-padded to the longest cache of that layer,
    then stacked along the batch."""
    layers = len(states[0].layer_group)
    layers_out, groups, layer_group = [], {}, []
    for index in range(layers):
        cached = [state.cache.layers[index] for state in states]
        length = max(layer.keys.shape[2] for layer in cached)
        keys = torch.cat([pad_left([layer.keys[b] for b in range(layer.keys.shape[0])], length, dim=1) for layer in cached])
        values = torch.cat([pad_left([layer.values[b] for b in range(layer.values.shape[0])], length, dim=1) for layer in cached])
        layer = GrowingLayer()
        layer.update(keys, values)
        layers_out.append(layer)
        key = tuple(state.layer_group[index] for state in states)
        if key not in groups:
            groups[key] = len(groups)
        layer_group.append(groups[key])
    group_real, group_positions = [None] * len(groups), [None] * len(groups)
    for key, group in groups.items():
        reals = [list(state.group_real[g]) for state, g in zip(states, key)]
        positions = [list(state.group_positions[g]) for state, g in zip(states, key)]
        length = max(len(row) for rows in reals for row in rows)
        group_real[group] = pad_left([row for rows in reals for row in rows], length)
        group_positions[group] = pad_left([row for rows in positions for row in rows], length)
    next_positions = torch.cat([state.next_positions for state in states])
    return DecodeState(GrowingCache(layers_out), group_real, group_positions, layer_group, next_positions)
