"""Theoretical prefill FLOPs, FastV's formula as used by the papers (METHOD.md §5)."""

from __future__ import annotations


def layer_flops(n_tokens: int, hidden: int, ffn: int) -> float:
    """`f(n) = 4nd² + 2n²d + 2ndm` for one transformer layer over n tokens."""
    n, d, m = float(n_tokens), float(hidden), float(ffn)
    return 4 * n * d * d + 2 * n * n * d + 2 * n * d * m


def prefill_flops(n_full: int, n_pruned: int, *, hidden: int, ffn: int, layers: int, prune_layer: int = 0) -> float:
    """Layers before `prune_layer` see `n_full` tokens, the rest `n_pruned` (0 = pruned before the LLM)."""
    if not 0 <= prune_layer <= layers:
        raise ValueError(f"prune_layer must be in [0, {layers}], got {prune_layer}")
    return prune_layer * layer_flops(n_full, hidden, ffn) + (layers - prune_layer) * layer_flops(n_pruned, hidden, ffn)
