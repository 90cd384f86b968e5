"""Pictures of visual-token pruning, from plain numpy arrays.

Knows nothing of models or UI: inputs are images `(H, W, 3)` uint8, token boxes `(n, 4)` and per-token
values; outputs are numpy images, PIL images, GIF bytes and HTML strings. Start with `token_index_map`
(once per view), then redraw any overlay cheaply per iteration.
"""

from .animate import gif_bytes
from .legend import ColourBar, Swatches, legend_html, legend_picture, slide, title_strip, titled
from .overlay import (
    A_ONLY_RGB,
    B_ONLY_RGB,
    ENTERED_RGB,
    FOCUS_RGB,
    KEPT_OUTLINE_RGB,
    LEFT_RGB,
    NEIGHBOUR_RGB,
    difference_overlay,
    group_colours,
    groups_overlay,
    heatmap_overlay,
    highlight_tokens,
    mask_overlay,
)
from .plots import DPI, SLIDE_DPI, accuracy_plot, score_histogram, score_trace_plot, similarity_histogram, speedup_plot, stability_plot
from .scales import COLOUR_MODES, Scale, fit_scale
from .text import word_diff_counts, word_diff_html
from .tokenmap import paint_tokens, token_at, token_centres, token_index_map, tokens_shown

__all__ = [
    "A_ONLY_RGB", "B_ONLY_RGB", "COLOUR_MODES", "ENTERED_RGB", "FOCUS_RGB", "KEPT_OUTLINE_RGB", "LEFT_RGB",
    "NEIGHBOUR_RGB", "DPI", "SLIDE_DPI", "ColourBar", "Scale", "Swatches",
    "accuracy_plot", "difference_overlay", "fit_scale", "gif_bytes", "group_colours", "groups_overlay", "heatmap_overlay", "highlight_tokens",
    "legend_html", "legend_picture", "mask_overlay", "paint_tokens", "score_histogram", "score_trace_plot",
    "similarity_histogram", "slide", "speedup_plot", "stability_plot", "title_strip", "titled", "token_at",
    "token_centres", "token_index_map", "tokens_shown", "word_diff_counts", "word_diff_html",
]
