"""Run every chosen pruning method on one image + question at the same token budget.

`analyze` returns an `Analysis`: the unpruned reference and one `PruneResult` per method, all of the
same type so that callers (CLI, app) treat them alike.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import numpy as np
import torch
from PIL import Image

from .baselines import l2norm_select, random_select
from .checks import check_iterations, check_keep_ratio, check_temperature, check_threshold
from .flops import prefill_flops
from .graph import gprune_select
from .layout import TokenLayout
from .limits import MAX_NEW_TOKENS
from .llm import FastVPlan
from .loading import LoadedModel
from .packed import keep_top_per_view
from .pipeline import EncodedPrompt, answer_log_probability, encode, generate, kept_sequence
from .prompts import TEMPLATE, check_system_prompt
from .result import PruneResult, Selection
from .tome import tome_select

METHODS = ("gprune", "fastv", "tome", "l2norm", "random")
METHOD_LABELS = {
    "unpruned": "Unpruned",
    "gprune": "G-Prune",
    "fastv": "FastV",
    "tome": "ToMe",
    "l2norm": "L2-norm",
    "random": "Random",
}
MAX_TIMING_ROUNDS = 10

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class AnalysisConfig:
    """Everything that decides an analysis; defaults are the papers' (G-Prune s=0.5, τ=0.03, I=5; FastV K=2)."""

    methods: tuple[str, ...] = METHODS
    keep_ratio: float = 0.5
    iterations: int = 5
    threshold: float = 0.5
    temperature: float = 0.03
    fastv_layer: int = 2
    max_new_tokens: int = 32
    seed: int = 0
    timing_rounds: int = 0  # > 0: time selection and prefill of every method this many times after a warm-up
    system_prompt: str = TEMPLATE  # "template": the checkpoint's chat template; "llava": LLaVA's training system prompt first

    def validate(self, num_layers: int) -> "AnalysisConfig":
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"methods must be a non-empty subset of {', '.join(METHODS)}; got {list(self.methods)}")
        check_keep_ratio(self.keep_ratio)
        check_iterations(self.iterations)
        check_threshold(self.threshold)
        check_temperature(self.temperature)
        if isinstance(self.fastv_layer, bool) or not isinstance(self.fastv_layer, int) or not 1 <= self.fastv_layer < num_layers:
            raise ValueError(f"fastv_layer (K) must be a whole number from 1 to {num_layers - 1} for this model, got {self.fastv_layer!r}")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise ValueError(f"max_new_tokens must be from 1 to {MAX_NEW_TOKENS}, got {self.max_new_tokens!r}")
        if isinstance(self.timing_rounds, bool) or not isinstance(self.timing_rounds, int) or not 0 <= self.timing_rounds <= MAX_TIMING_ROUNDS:
            raise ValueError(f"timing_rounds must be a whole number from 0 to {MAX_TIMING_ROUNDS}, got {self.timing_rounds!r}")
        check_system_prompt(self.system_prompt)
        return self


@dataclass
class Analysis:
    """The reference run and every method's result for one image + question.

    `features` is the `(n, d)` float32 packed block, kept on the CPU for graph views in the UI.
    """

    config: AnalysisConfig
    model_name: str
    random_weights: bool
    question: str
    image: Image.Image
    layout: TokenLayout
    features: np.ndarray
    reference: PruneResult
    results: dict[str, PruneResult] = field(default_factory=dict)
    system_text: str | None = None  # what `config.system_prompt` put before the chat template

    def summary(self) -> dict:
        return {
            "model": self.model_name,
            "random_weights": self.random_weights,
            "question": self.question,
            "image_size": [self.layout.image_width, self.layout.image_height],
            "grid": {"rows": self.layout.rows, "cols": self.layout.cols, "visual_tokens": self.layout.n_tokens},
            "config": asdict(self.config),
            "prompt": {"system_prompt": self.config.system_prompt, "system_text": self.system_text},
            "reference": self.reference.summary(),
            "results": {name: result.summary() for name, result in self.results.items()},
        }


def select_before_llm(method: str, encoded: EncodedPrompt, config: AnalysisConfig, keep_ratio: float) -> Selection:
    """Selection of a method that prunes the packed features before the language model."""
    features, layout = encoded.packed_features, encoded.layout
    rows, cols, base = layout.rows, layout.cols, layout.base_tokens
    if method == "gprune":
        return gprune_select(features, rows, cols, keep_ratio, iterations=config.iterations,
                             threshold=config.threshold, temperature=config.temperature, base_tokens=base)
    if method == "tome":
        return tome_select(features, rows, cols, keep_ratio, base_tokens=base)
    if method == "l2norm":
        return l2norm_select(features, rows, cols, keep_ratio, base_tokens=base)
    if method == "random":
        return random_select(features.shape[0], rows, cols, keep_ratio, seed=config.seed, base_tokens=base)
    raise ValueError(f"{method!r} does not prune before the language model")


def fastv_plan(encoded: EncodedPrompt, config: AnalysisConfig, keep_ratio: float) -> FastVPlan:
    """FastV at layer K, scored by the last prompt token's head-averaged attention, G-Prune's budget split."""
    layout = encoded.layout

    def choose(image_attention: torch.Tensor) -> torch.Tensor:
        return keep_top_per_view(image_attention, layout.rows, layout.cols, keep_ratio, layout.base_tokens)

    return FastVPlan(config.fastv_layer, encoded.length - 1, encoded.image_start, encoded.image_end, choose)


def run_method(loaded: LoadedModel, encoded: EncodedPrompt, method: str, config: AnalysisConfig) -> PruneResult:
    """Select (or plan) with `method`, run the model on the result, and measure it. `"unpruned"` = reference."""
    text = loaded.model.config.text_config
    fastv = None
    if method == "unpruned":
        selection = Selection(kept_positions=np.arange(encoded.packed_features.shape[0]))
    elif method == "fastv":
        fastv = fastv_plan(encoded, config, config.keep_ratio)
        selection = Selection(kept_positions=np.arange(encoded.packed_features.shape[0]))
    else:
        selection = select_before_llm(method, encoded, config, config.keep_ratio)
    sequence_index, embeds = kept_sequence(encoded, selection)
    generation = generate(loaded, encoded, sequence_index, embeds, max_new_tokens=config.max_new_tokens, fastv=fastv)
    if fastv is not None:
        image_part = generation.sequence_index[(generation.sequence_index >= encoded.image_start) & (generation.sequence_index < encoded.image_end)]
        selection = Selection(
            kept_positions=(image_part - encoded.image_start).cpu().numpy(),
            scores=generation.image_attention[None].numpy(),
            seconds=generation.fastv_selection_seconds,
        )
    n_visual = encoded.packed_features.shape[0]
    sequence_after = encoded.length - n_visual + len(selection.kept_positions)
    shape = dict(hidden=text.hidden_size, ffn=text.intermediate_size, layers=text.num_hidden_layers)
    return PruneResult(
        method=method,
        keep_ratio=1.0 if method == "unpruned" else config.keep_ratio,
        selection=selection,
        tokens_before=n_visual,
        tokens_after=len(selection.kept_positions),
        sequence_before=encoded.length,
        sequence_after=sequence_after,
        flops=prefill_flops(encoded.length, sequence_after, prune_layer=config.fastv_layer if fastv else 0, **shape),
        flops_unpruned=prefill_flops(encoded.length, encoded.length, **shape),
        prefill_seconds=generation.prefill_seconds,
        decode_seconds_per_token=generation.decode_seconds_per_token,
        answer=generation.answer,
        answer_token_ids=generation.answer_token_ids,
    )


def analyze(
    loaded: LoadedModel, image: Image.Image, question: str, config: AnalysisConfig = AnalysisConfig(),
    progress: Progress | None = None,
) -> Analysis:
    """The unpruned reference, then each method in `config.methods`, on one image + question."""
    config.validate(loaded.model.config.text_config.num_hidden_layers)
    report = progress or (lambda fraction, message: None)
    report(0.0, "encoding image")
    encoded = encode(loaded, image, question, system_prompt=config.system_prompt)
    steps = 1 + len(config.methods)
    report(1 / (steps + 1), "running the unpruned model")
    reference = run_method(loaded, encoded, "unpruned", config)
    features = encoded.packed_features.detach().float().cpu().numpy()
    analysis = Analysis(config, loaded.name, loaded.random_weights, question, image, encoded.layout, features, reference,
                        system_text=loaded.system_text(config.system_prompt))
    for index, method in enumerate(config.methods):
        report((index + 2) / (steps + 1), f"running {METHOD_LABELS[method]}")
        analysis.results[method] = run_method(loaded, encoded, method, config)
    report(1.0, "done")
    return analysis


def run_grid(
    loaded: LoadedModel, encoded: EncodedPrompt, config: AnalysisConfig, keep_ratios: list[float],
) -> tuple[PruneResult, dict[tuple[str, float], PruneResult]]:
    """The unpruned reference once, then every method of `config.methods` at every keep ratio, on one
    encoded prompt (the vision tower ran once, in `encode`). Returns `(reference, {(method, ratio): result})`."""
    config.validate(loaded.model.config.text_config.num_hidden_layers)
    ratios = [check_keep_ratio(r) for r in keep_ratios]
    reference = run_method(loaded, encoded, "unpruned", config)
    results = {}
    for ratio in ratios:
        at_ratio = replace(config, keep_ratio=ratio)
        for method in config.methods:
            results[(method, ratio)] = run_method(loaded, encoded, method, at_ratio)
    return reference, results


def answer_stability(
    loaded: LoadedModel, encoded: EncodedPrompt, answer_token_ids: list[int], keep_ratios: list[float],
    config: AnalysisConfig = AnalysisConfig(), progress: Progress | None = None,
) -> dict[str, np.ndarray]:
    """log p(unpruned answer | pruned prompt) for each method and keep ratio (one prefill each).

    Returns `{method: (len(keep_ratios),) float64}` plus `"unpruned"`: the reference log-probability
    repeated, for a flat line in plots.
    """
    config.validate(loaded.model.config.text_config.num_hidden_layers)
    ratios = [check_keep_ratio(r) for r in keep_ratios]
    report = progress or (lambda fraction, message: None)
    full = Selection(kept_positions=np.arange(encoded.packed_features.shape[0]))
    full_index, full_embeds = kept_sequence(encoded, full)
    reference = answer_log_probability(loaded, encoded, full_index, full_embeds, answer_token_ids)
    curves = {"unpruned": np.full(len(ratios), reference)}
    total = len(config.methods) * len(ratios)
    for m, method in enumerate(config.methods):
        values = []
        for r, ratio in enumerate(ratios):
            report((m * len(ratios) + r) / total, f"{METHOD_LABELS[method]} at keep ratio {ratio:g}")
            if method == "fastv":
                index, embeds, fastv = full_index, full_embeds, fastv_plan(encoded, config, ratio)
            else:
                index, embeds = kept_sequence(encoded, select_before_llm(method, encoded, config, ratio))
                fastv = None
            values.append(answer_log_probability(loaded, encoded, index, embeds, answer_token_ids, fastv))
        curves[method] = np.array(values)
    return curves
