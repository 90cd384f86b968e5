"""How long each ZeroGPU call of the app may hold the GPU: a cost model from the loaded model's sizes.

ZeroGPU charges the *requested* duration against a visitor's daily quota (2 minutes signed out, 5 signed in)
and queues long requests behind short ones, so each call asks for what its own work needs, not a fixed
maximum. The constants are estimates from FLOP and byte counts, not measurements: no GPU was available.
Replace them with measured figures (the calls' durations on the Space) when there are some.

Assumptions, for LLaVA-NeXT-7B in bf16 on the GPU `spaces` 0.51.3 sizes durations for (a ZeroGPU H200
slice, 60 of the H200's 132 SMs ≈ 450 TFLOP/s bf16 peak; on the default half RTX PRO 6000 Blackwell `spaces`
grants 1.5× the requested time):
- prefill runs at 100 TFLOP/s (~22 % of peak: eager transformers layers, our layer-by-layer loop);
- a Run decodes all its answers as one batch: each decode step reads every weight once and every row's KV
  cache at 1 TB/s and pays 0.3 ms per layer of Python and kernel launches (our decode loop is not
  CUDA-graphed): (15 GB + 6 rows × 3.5k tokens × 128 kB) / 1 TB/s + 32 × 0.3 ms ≈ 27 ms per step;
- 10 s fixed per call: the lease, the first call's kernel selection, copying results back;
- everything variable is multiplied by a safety factor of 1.5.
"""

from __future__ import annotations

import math

from PIL import Image

from gprune import AnalysisConfig, LoadedModel, token_layout
from gprune.limits import MAX_PROMPT_TEXT_TOKENS

PREFILL_FLOP_PER_SECOND = 100e12
DECODE_BYTES_PER_SECOND = 1.0e12
DECODE_SECONDS_PER_LAYER = 0.3e-3
FIXED_SECONDS = 10.0
SAFETY = 1.5


class CostModel:
    """Seconds of GPU work for one loaded model, from its parameter counts and shapes."""

    def __init__(self, loaded: LoadedModel):
        model = loaded.model
        text = model.config.text_config
        language_model = model.model.language_model
        embedding = language_model.get_input_embeddings().weight.numel()
        # Every weight of the decoder multiplies each token, except the embedding table (a lookup).
        self.decoder_parameters = sum(p.numel() for p in language_model.parameters()) - embedding
        self.head_parameters = model.lm_head.weight.numel()
        self.vision_parameters = sum(p.numel() for p in model.model.vision_tower.parameters())
        self.layers, self.hidden = text.num_hidden_layers, text.hidden_size
        self.bytes_per_parameter = model.dtype.itemsize
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        self.kv_bytes_per_token = 2 * self.layers * text.num_key_value_heads * head_dim * self.bytes_per_parameter
        vision = model.config.vision_config
        self.tile_tokens = (vision.image_size // vision.patch_size) ** 2 + 1
        self.pinpoints, self.tile, self.patch = model.config.image_grid_pinpoints, vision.image_size, vision.patch_size

    def prompt_tokens(self, image: Image.Image) -> int:
        """Upper bound on the prompt length for `image`: its visual tokens + the library's text-token limit."""
        layout = token_layout((image.height, image.width), self.pinpoints, self.tile, self.patch)
        return layout.n_tokens - 1 + MAX_PROMPT_TEXT_TOKENS

    def prefill_seconds(self, tokens: int) -> float:
        flops = 2 * self.decoder_parameters * tokens + 2 * self.layers * tokens**2 * self.hidden
        return flops / PREFILL_FLOP_PER_SECOND

    def decode_seconds_per_step(self, rows: int, cached_tokens: int) -> float:
        """One decode step of a batch of `rows`, each attending to `cached_tokens` cached tokens."""
        weight_bytes = (self.decoder_parameters + self.head_parameters) * self.bytes_per_parameter
        cache_bytes = rows * cached_tokens * self.kv_bytes_per_token
        return (weight_bytes + cache_bytes) / DECODE_BYTES_PER_SECOND + self.layers * DECODE_SECONDS_PER_LAYER

    def vision_seconds(self) -> float:
        """The vision tower over the base view and the tiles of the largest grid pinpoint."""
        tiles = 1 + max(height * width for height, width in self.pinpoints) // self.tile**2
        return 2 * self.vision_parameters * tiles * self.tile_tokens / PREFILL_FLOP_PER_SECOND

    def analysis_seconds(self, image: Image.Image, config: AnalysisConfig) -> int:
        """One Run: the unpruned reference and every method, each a prefill (plus `timing_rounds` repeats when
        timing; the answer run is their warm-up), then up to `max_new_tokens` steps decoding every answer as one
        batch. Pruned prefills and caches are counted unpruned."""
        runs = 1 + len(config.methods)
        prefills = runs * (1 + config.timing_rounds)
        tokens = self.prompt_tokens(image)
        decode = config.max_new_tokens * self.decode_seconds_per_step(runs, tokens + config.max_new_tokens)
        work = self.vision_seconds() + prefills * self.prefill_seconds(tokens) + decode
        return math.ceil(FIXED_SECONDS + SAFETY * work)

    def sweep_seconds(self, image: Image.Image, answer_tokens: int, keep_ratios: int, config: AnalysisConfig) -> int:
        """One sweep: encoding again, then one teacher-forced prefill of prompt + answer for the reference and
        for every method at every keep ratio."""
        prefills = 1 + len(config.methods) * keep_ratios
        work = self.vision_seconds() + prefills * self.prefill_seconds(self.prompt_tokens(image) + answer_tokens)
        return math.ceil(FIXED_SECONDS + SAFETY * work)
