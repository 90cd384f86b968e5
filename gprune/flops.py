"""Theoretical prefill FLOPs, FastV's formula as used by the papers (METHOD.md §5)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LanguageModelShape:
    """The sizes the FLOPs formula needs: hidden width d, FFN width m, layer count L."""

    name: str
    hidden: int
    ffn: int
    layers: int


# LLaVA-NeXT-7B's language model (Mistral-7B), METHOD.md §5: what the app quotes FLOPs for when it runs a
# random-weight toy model, whose own tiny widths make the quadratic attention term dominate.
LLAVA_NEXT_7B = LanguageModelShape("LLaVA-NeXT-7B", hidden=4096, ffn=14336, layers=32)


def layer_flops(n_tokens: int, hidden: int, ffn: int) -> float:
    """`f(n) = 4nd² + 2n²d + 2ndm` for one transformer layer over n tokens."""
    n, d, m = float(n_tokens), float(hidden), float(ffn)
    return 4 * n * d * d + 2 * n * n * d + 2 * n * d * m


def prefill_flops(n_full: int, n_pruned: int, *, hidden: int, ffn: int, layers: int, prune_layer: int = 0) -> float:
    """Layers before `prune_layer` see `n_full` tokens, the rest `n_pruned` (0 = pruned before the LLM)."""
    if not 0 <= prune_layer <= layers:
        raise ValueError(f"prune_layer must be in [0, {layers}], got {prune_layer}")
    return prune_layer * layer_flops(n_full, hidden, ffn) + (layers - prune_layer) * layer_flops(n_pruned, hidden, ffn)


def prefill_flops_ratio(n_full: int, n_pruned: int, shape: LanguageModelShape, prune_layer: int = 0) -> float:
    """Pruned over unpruned prefill FLOPs of a prompt of `n_full` tokens cut to `n_pruned` in a model of `shape`."""
    sizes = dict(hidden=shape.hidden, ffn=shape.ffn, layers=shape.layers)
    return (prefill_flops(n_full, n_pruned, prune_layer=prune_layer, **sizes)
            / prefill_flops(n_full, n_full, **sizes))
