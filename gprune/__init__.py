"""G-Prune Explorer core: training-free visual-token pruning for LLaVA-NeXT, and the model plumbing to see it.

Pure methods: `gprune_scores`, `gprune_keep`, `gprune_select` (graph.py), `tome_select` (tome.py),
`l2norm_select`, `random_select` (baselines.py). Model plumbing: loading.py (with checkpoint.py's load-time
checks and prompts.py's chat prompts), pipeline.py, llm.py; `patch` / `unpatch` (patch.py) put any method into
stock transformers `generate`.
"""

from .analysis import METHOD_LABELS, METHODS, Analysis, AnalysisConfig, analyze, answer_stability, run_grid, run_method
from .baselines import l2norm_select, random_select
from .flops import LLAVA_NEXT_7B, LanguageModelShape, layer_flops, prefill_flops, prefill_flops_ratio
from .graph import gprune_keep, gprune_scores, gprune_select
from .layout import KIND_BASE, KIND_GRID, KIND_NEWLINE, TokenLayout, token_layout
from .loading import LoadedModel, load_model
from .packed import block_positions, keep_top_per_view, token_budget
from .patch import patch, selections, unpatch
from .pipeline import EncodedPrompt, encode
from .result import PruneResult, Selection
from .timing import Timing
from .tome import tome_select

__all__ = [
    "METHODS", "METHOD_LABELS", "Analysis", "AnalysisConfig", "analyze", "answer_stability", "run_grid", "run_method",
    "l2norm_select", "random_select", "LLAVA_NEXT_7B", "LanguageModelShape", "layer_flops", "prefill_flops",
    "prefill_flops_ratio", "gprune_keep", "gprune_scores",
    "gprune_select", "KIND_BASE", "KIND_GRID", "KIND_NEWLINE", "TokenLayout", "token_layout",
    "LoadedModel", "load_model", "block_positions", "keep_top_per_view", "token_budget", "EncodedPrompt",
    "encode", "PruneResult", "Selection", "Timing", "tome_select", "patch", "unpatch", "selections",
]
