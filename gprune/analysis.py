"""Run every chosen pruning method on one image + question at the same token budget.

`analyze` returns an `Analysis`: the unpruned reference and one `PruneResult` per method, all of the
same type so that callers (CLI, app) treat them alike.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
from PIL import Image

from .baselines import l2norm_select, random_select
from .checks import check_iterations, check_keep_ratio, check_temperature, check_threshold
from .flops import LLAVA_NEXT_7B, prefill_flops, prefill_flops_ratio
from .graph import gprune_select
from .layout import TokenLayout
from .limits import MAX_NEW_TOKENS
from .loading import LoadedModel, toy_model_note
from .packed import keep_top_per_view
from .pipeline import (EncodedPrompt, Generation, Prompt, answer_log_probabilities, encode, generate_many, kept_sequence,
                       prefill_prompt)
from .prompts import TEMPLATE, check_system_prompt
from .result import Precomputed, PruneResult, Selection
from .timing import Timing
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
DEFAULT_SWEEP_RATIOS = (1.0, 0.75, 0.5, 0.25, 0.11, 0.05)

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

    `features` is the `(n, d)` float32 packed block, kept on the CPU for graph views in the UI; an analysis
    restored from a precomputed bundle has none, and `precomputed` holds what the views derive from them.
    `origin` is None for a live run, else where the analysis came from ("precomputed on MODEL at DATE").
    """

    config: AnalysisConfig
    model_name: str
    random_weights: bool
    question: str
    image: Image.Image
    layout: TokenLayout
    features: np.ndarray | None
    reference: PruneResult
    results: dict[str, PruneResult] = field(default_factory=dict)
    system_text: str | None = None  # what `config.system_prompt` put before the chat template
    precomputed: Precomputed | None = None
    origin: str | None = None

    @property
    def toy_note(self) -> str | None:
        """What every figure of this run must say about its model (random weights, or the small `shapes`
        model); None for a real checkpoint."""
        return toy_model_note(self.model_name, self.random_weights)

    def reported_flops_ratio(self, result: PruneResult) -> float:
        """Prefill FLOPs ratio to report: the model's own, or at LLaVA-NeXT-7B shapes for a toy-size model.

        A toy model's tiny hidden width makes the quadratic attention term dominate (and FastV's K unpruned
        layers a large share of its few), so its own ratio says nothing about the checkpoint it stands in for.
        The token counts are the run's; FastV keeps its configured K.
        """
        if self.toy_note is None:
            return result.flops_ratio
        prune_layer = self.config.fastv_layer if result.method == "fastv" else 0
        return prefill_flops_ratio(result.sequence_before, result.sequence_after, LLAVA_NEXT_7B, prune_layer)

    @property
    def flops_label(self) -> str:
        return f"FLOPs at {LLAVA_NEXT_7B.name} shapes" if self.toy_note else "FLOPs"

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
            **({"origin": self.origin} if self.origin else {}),
        }


def select_before_llm(method: str, packed_features: torch.Tensor, rows: int, cols: int, base_tokens: int,
                      config: AnalysisConfig, keep_ratio: float) -> Selection:
    """Selection of a method that prunes one image's packed features `(n, d)` before the language model."""
    if method == "gprune":
        return gprune_select(packed_features, rows, cols, keep_ratio, iterations=config.iterations,
                             threshold=config.threshold, temperature=config.temperature, base_tokens=base_tokens)
    if method == "tome":
        return tome_select(packed_features, rows, cols, keep_ratio, base_tokens=base_tokens)
    if method == "l2norm":
        return l2norm_select(packed_features, rows, cols, keep_ratio, base_tokens=base_tokens)
    if method == "random":
        return random_select(packed_features.shape[0], rows, cols, keep_ratio, seed=config.seed, base_tokens=base_tokens)
    raise ValueError(f"{method!r} does not prune before the language model")


def fastv_choose(rows: int, cols: int, base_tokens: int, keep_ratio: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """FastV's choice from its `(n_image,)` attention row: G-Prune's budget split (fair comparison)."""
    return lambda image_attention: keep_top_per_view(image_attention, rows, cols, keep_ratio, base_tokens)


def method_prompt(encoded: EncodedPrompt, method: str, config: AnalysisConfig, keep_ratio: float) -> tuple[Prompt, Selection | None]:
    """The prompt a method runs (pruned before the LLM, or full with a FastV plan) and its selection
    (None for FastV, which selects inside the LLM; the unpruned reference keeps everything)."""
    layout, n = encoded.layout, encoded.packed_features.shape[0]
    if method in ("unpruned", "fastv"):
        selection = Selection(kept_positions=np.arange(n))
    else:
        selection = select_before_llm(method, encoded.packed_features, layout.rows, layout.cols, layout.base_tokens,
                                      config, keep_ratio)
    sequence_index, embeds = kept_sequence(encoded, selection)
    fastv = None
    if method == "fastv":
        fastv = (config.fastv_layer, (encoded.image_start, encoded.image_end),
                 fastv_choose(layout.rows, layout.cols, layout.base_tokens, keep_ratio))
    return Prompt(sequence_index, embeds, encoded.length, fastv), None if method == "fastv" else selection


def fastv_selection(seen: torch.Tensor, image_start: int, image_end: int, image_attention: torch.Tensor,
                    seconds: float) -> Selection:
    """FastV's decision as a `Selection`: the image tokens its last layer saw (`seen`: prompt indices) as
    packed positions, scored by its `(n_image,)` attention row."""
    kept = seen[(seen >= image_start) & (seen < image_end)] - image_start
    return Selection(kept_positions=kept.cpu().numpy().astype(np.int64), scores=image_attention[None].numpy(),
                     seconds=seconds)


def _result(loaded: LoadedModel, encoded: EncodedPrompt, method: str, config: AnalysisConfig, keep_ratio: float,
            selection: Selection | None, generation: Generation) -> PruneResult:
    if selection is None:
        selection = fastv_selection(generation.sequence_index, encoded.image_start, encoded.image_end,
                                    generation.image_attention, generation.fastv_selection_seconds)
    text = loaded.model.config.text_config
    n_visual = encoded.packed_features.shape[0]
    sequence_after = encoded.length - n_visual + len(selection.kept_positions)
    shape = dict(hidden=text.hidden_size, ffn=text.intermediate_size, layers=text.num_hidden_layers)
    return PruneResult(
        method=method,
        keep_ratio=1.0 if method == "unpruned" else keep_ratio,
        selection=selection,
        tokens_before=n_visual,
        tokens_after=len(selection.kept_positions),
        sequence_before=encoded.length,
        sequence_after=sequence_after,
        flops=prefill_flops(encoded.length, sequence_after, prune_layer=config.fastv_layer if method == "fastv" else 0, **shape),
        flops_unpruned=prefill_flops(encoded.length, encoded.length, **shape),
        prefill_seconds=generation.prefill_seconds,
        decode_seconds_per_token=generation.decode_seconds_per_token,
        answer=generation.answer,
        answer_token_ids=generation.answer_token_ids,
    )


def run_methods(loaded: LoadedModel, encoded: EncodedPrompt, jobs: list[tuple[str, float]], config: AnalysisConfig,
                *, batched: bool = True, report: Progress | None = None) -> list[PruneResult]:
    """Select with each `(method, keep_ratio)` job ("unpruned" = the reference), then generate every answer:
    each prompt is prefilled alone, and all are decoded as one batch (`batched=False`: one after another)."""
    report = report or (lambda fraction, message: None)
    share = 0.6 if config.timing_rounds else 1.0  # of the progress bar, before the timing rounds
    prompts, selections = [], []
    for index, (method, ratio) in enumerate(jobs):
        report(share * index / (len(jobs) + 1), f"selecting with {METHOD_LABELS[method]}")
        prompt, selection = method_prompt(encoded, method, config, ratio)
        prompts.append(prompt)
        selections.append(selection)
    report(share * len(jobs) / (len(jobs) + 1), f"generating {len(jobs)} answers" + (" as one batch" if batched else ""))
    generations = generate_many(loaded, prompts, max_new_tokens=config.max_new_tokens, batched=batched)
    results = [_result(loaded, encoded, method, config, ratio, selection, generation)
               for (method, ratio), selection, generation in zip(jobs, selections, generations)]
    if config.timing_rounds:
        report(share, f"timing {config.timing_rounds} rounds of every method")
        time_rounds(loaded, encoded, config, jobs, prompts, results)
    return results


def time_rounds(loaded: LoadedModel, encoded: EncodedPrompt, config: AnalysisConfig, jobs: list[tuple[str, float]],
                prompts: list[Prompt], results: list[PruneResult]) -> None:
    """Time every job's selection and prefill `config.timing_rounds` more times (the answer run was the
    warm-up), interleaved in rotating order so that a slow moment of the machine hits every method alike.
    FastV's selection happens inside its prefill, so its prefill time includes it."""
    selection_samples = [[] for _ in jobs]
    prefill_samples = [[] for _ in jobs]
    layout = encoded.layout
    for round_index in range(config.timing_rounds):
        order = list(range(len(jobs)))
        order = order[round_index % len(order):] + order[: round_index % len(order)]
        for i in order:
            method, ratio = jobs[i]
            if method not in ("unpruned", "fastv"):
                start = time.perf_counter()
                select_before_llm(method, encoded.packed_features, layout.rows, layout.cols, layout.base_tokens, config, ratio)
                selection_samples[i].append(time.perf_counter() - start)
            out, _, seconds = prefill_prompt(loaded, prompts[i])
            prefill_samples[i].append(seconds)
            if method == "fastv":
                selection_samples[i].append(out.selection_seconds)
    for result, selected, prefilled in zip(results, selection_samples, prefill_samples):
        result.selection_timing = Timing(tuple(selected)) if selected else None
        result.prefill_timing = Timing(tuple(prefilled))


def run_method(loaded: LoadedModel, encoded: EncodedPrompt, method: str, config: AnalysisConfig) -> PruneResult:
    """Select (or plan) with `method`, run the model on the result, and measure it. `"unpruned"` = reference."""
    return run_methods(loaded, encoded, [(method, config.keep_ratio)], config)[0]


def analyze(
    loaded: LoadedModel, image: Image.Image, question: str, config: AnalysisConfig = AnalysisConfig(),
    progress: Progress | None = None,
) -> Analysis:
    """The unpruned reference and each method of `config.methods` on one image + question: one vision pass,
    one prefill per method, every answer decoded in one batch."""
    config.validate(loaded.model.config.text_config.num_hidden_layers)
    report = progress or (lambda fraction, message: None)
    report(0.0, "encoding image")
    encoded = encode(loaded, image, question, system_prompt=config.system_prompt)
    analysis = analyze_encoded(loaded, encoded, image, question, config,
                               report=lambda f, message: report(0.1 + 0.9 * f, message))
    report(1.0, "done")
    return analysis


def analyze_encoded(loaded: LoadedModel, encoded: EncodedPrompt, image: Image.Image, question: str,
                    config: AnalysisConfig, report: Progress | None = None) -> Analysis:
    """`analyze` on a prompt already encoded (by `encode(loaded, image, question, system_prompt=…)`), for callers
    that reuse the encoding (the sweep of a precomputed example)."""
    jobs = [("unpruned", 1.0)] + [(method, config.keep_ratio) for method in config.methods]
    results = run_methods(loaded, encoded, jobs, config, report=report)
    features = encoded.packed_features.detach().float().cpu().numpy()
    analysis = Analysis(config, loaded.name, loaded.random_weights, question, image, encoded.layout, features, results[0],
                        system_text=loaded.system_text(config.system_prompt))
    analysis.results = {result.method: result for result in results[1:]}
    return analysis


def run_grid(
    loaded: LoadedModel, encoded: EncodedPrompt, config: AnalysisConfig, keep_ratios: list[float],
) -> tuple[PruneResult, dict[tuple[str, float], PruneResult]]:
    """The unpruned reference once, then every method of `config.methods` at every keep ratio, on one
    encoded prompt (the vision tower ran once, in `encode`); all answers are decoded as one batch.
    Returns `(reference, {(method, ratio): result})`."""
    config.validate(loaded.model.config.text_config.num_hidden_layers)
    ratios = [check_keep_ratio(r) for r in keep_ratios]
    jobs = [("unpruned", 1.0)] + [(method, ratio) for ratio in ratios for method in config.methods]
    results = run_methods(loaded, encoded, jobs, config)
    return results[0], {job: result for job, result in zip(jobs[1:], results[1:])}


def answer_stability(
    loaded: LoadedModel, encoded: EncodedPrompt, answer_token_ids: list[int], keep_ratios: list[float],
    config: AnalysisConfig = AnalysisConfig(), progress: Progress | None = None,
) -> dict[str, np.ndarray]:
    """log p(unpruned answer | pruned prompt) for each method and keep ratio (one teacher-forced prefill
    each; prompts of equal length are prefilled as one batch).

    Returns `{method: (len(keep_ratios),) float64}` plus `"unpruned"`: the reference log-probability
    repeated, for a flat line in plots.
    """
    config.validate(loaded.model.config.text_config.num_hidden_layers)
    ratios = [check_keep_ratio(r) for r in keep_ratios]
    report = progress or (lambda fraction, message: None)
    jobs = [("unpruned", 1.0)] + [(method, ratio) for method in config.methods for ratio in ratios]
    prompts = []
    for index, (method, ratio) in enumerate(jobs):
        report(index / (len(jobs) + 1), f"{METHOD_LABELS[method]} at keep ratio {ratio:g}")
        prompts.append(method_prompt(encoded, method, config, ratio)[0])
    report(len(jobs) / (len(jobs) + 1), f"scoring the answer under {len(jobs)} prompts")
    values = answer_log_probabilities(loaded, prompts, answer_token_ids)
    curves = {"unpruned": np.full(len(ratios), values[0])}
    for m, method in enumerate(config.methods):
        curves[method] = np.array(values[1 + m * len(ratios) : 1 + (m + 1) * len(ratios)])
    return curves
