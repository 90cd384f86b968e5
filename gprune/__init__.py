"""G-Prune Explorer core: training-free visual-token pruning for LLaVA-NeXT, and the model plumbing to see it.

Pure methods: `gprune_scores`, `gprune_keep`, `gprune_select` (graph.py), `tome_select` (tome.py),
`l2norm_select`, `random_select` (baselines.py). Model plumbing: loading.py (with checkpoint.py's load-time
checks and prompts.py's chat prompts), pipeline.py, llm.py; `patch` / `unpatch` (patch.py) put any method into
stock transformers `generate`.

Every name below is imported on first use (gprune/lazy.py): `import gprune` loads no submodule, and the pure
methods need torch only.
"""

from .lazy import make_lazy

# Public name → the submodule that defines it.
EXPORTS = {
    **dict.fromkeys(("METHODS", "METHOD_LABELS", "Analysis", "AnalysisConfig", "analyze", "answer_stability",
                     "run_grid", "run_method"), ".analysis"),
    **dict.fromkeys(("l2norm_select", "random_select"), ".baselines"),
    **dict.fromkeys(("LLAVA_NEXT_7B", "LanguageModelShape", "layer_flops", "prefill_flops", "prefill_flops_ratio"),
                    ".flops"),
    **dict.fromkeys(("gprune_keep", "gprune_scores", "gprune_select"), ".graph"),
    **dict.fromkeys(("KIND_BASE", "KIND_GRID", "KIND_NEWLINE", "TokenLayout", "token_layout"), ".layout"),
    **dict.fromkeys(("LoadedModel", "load_model"), ".loading"),
    **dict.fromkeys(("block_positions", "keep_top_per_view", "token_budget"), ".packed"),
    **dict.fromkeys(("patch", "unpatch", "selections", "kept_mask"), ".patch"),
    **dict.fromkeys(("EncodedPrompt", "encode"), ".pipeline"),
    **dict.fromkeys(("PruneResult", "Selection"), ".result"),
    "Timing": ".timing",
    "tome_select": ".tome",
}

__all__ = list(EXPORTS)

make_lazy(__name__)
