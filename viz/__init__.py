"""Pictures of visual-token pruning, from plain numpy arrays.

Knows nothing of models or UI: inputs are images `(H, W, 3)` uint8, token boxes `(n, 4)` and per-token
values; outputs are numpy images, PIL images, GIF bytes and HTML strings. Start with `token_index_map`
(once per view), then redraw any overlay cheaply per iteration.
"""

from .animate import gif_bytes
from .overlay import difference_overlay, draw_label, groups_overlay, heatmap_overlay, highlight_tokens, mask_overlay
from .plots import score_histogram, score_trace_plot, similarity_histogram, speedup_plot, stability_plot
from .text import word_diff_counts, word_diff_html
from .tokenmap import paint_tokens, token_at, token_index_map, tokens_shown

__all__ = [
    "difference_overlay",
    "draw_label",
    "gif_bytes",
    "groups_overlay",
    "heatmap_overlay",
    "highlight_tokens",
    "mask_overlay",
    "paint_tokens",
    "score_histogram",
    "score_trace_plot",
    "similarity_histogram",
    "speedup_plot",
    "stability_plot",
    "token_at",
    "token_index_map",
    "tokens_shown",
    "word_diff_counts",
    "word_diff_html",
]
