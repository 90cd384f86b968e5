"""Per-token pictures drawn over the image: heatmaps, kept/dropped masks, merge groups, diffs, neighbourhoods.

Every function takes the `(H, W, 3)` uint8 RGB image, the view's `(H, W)` index map from
`token_index_map` and per-token arrays indexed by token position, and returns a new `(H, W, 3)` uint8 image.
Pixels no token covers are left as they are. Colours are computed per token and gathered per pixel
(`paint_tokens`), so no function loops over tokens or pixels in Python.
"""

from __future__ import annotations

import unicodedata

import cv2
import matplotlib
import numpy as np
from matplotlib.colors import hsv_to_rgb

from .tokenmap import paint_tokens, tokens_shown

OUTLINE_RGB = (80, 255, 120)
GROUP_BORDER_RGB = (255, 255, 255)
A_ONLY_RGB = (255, 140, 0)  # orange / blue: distinguishable with the common colour-vision deficiencies
B_ONLY_RGB = (0, 150, 255)
NEIGHBOUR_RGB = (0, 220, 255)
FOCUS_RGB = (255, 40, 40)
GOLDEN_RATIO_CONJUGATE = 0.6180339887498949


def heatmap_overlay(
    image: np.ndarray,
    index_map: np.ndarray,
    values: np.ndarray,
    *,
    alpha: float = 0.55,
    cmap: str = "inferno",
    vmin: float | None = None,
    vmax: float | None = None,
) -> np.ndarray:
    """Colour each covered pixel by its token's value and blend the colours over the image.

    Args:
        values: `(n,)` float per token position; NaN (or ±inf) tokens are left uncoloured.
        alpha: weight of the colour in the blend, in [0, 1].
        cmap: a matplotlib colormap name.
        vmin, vmax: colour range; each defaults to the min / max of the finite values of the tokens this
            view shows, so the range adapts to the view rather than to tokens that are not drawn.
    """
    _check_image(image, index_map)
    _check_fraction(alpha, "alpha")
    values = _per_token(values, "values").astype(np.float64)
    finite = np.isfinite(values)
    shown_finite = values[finite & tokens_shown(index_map, len(values))]
    if shown_finite.size == 0:
        return image.copy()
    low = float(shown_finite.min()) if vmin is None else float(vmin)
    high = float(shown_finite.max()) if vmax is None else float(vmax)
    if not high >= low:
        raise ValueError(f"vmax must be >= vmin, got vmin={low}, vmax={high}")
    span = high - low
    normalised = np.clip((values - low) / span, 0.0, 1.0) if span > 0 else np.full_like(values, 0.5)
    try:
        colormap = matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(f"unknown colormap {cmap!r}") from None
    token_rgb = (colormap(np.where(finite, normalised, 0.0))[:, :3] * 255).round().astype(np.uint8)
    return _blend_where(image, paint_tokens(index_map, finite, False), paint_tokens(index_map, token_rgb, 0), alpha)


def mask_overlay(
    image: np.ndarray, index_map: np.ndarray, kept: np.ndarray, *, dim: float = 0.25, outline: bool = True
) -> np.ndarray:
    """Show kept tokens as they are and dropped tokens darkened and desaturated.

    Args:
        kept: `(n,)` bool per token position.
        dim: brightness left to dropped tokens, in [0, 1] (0 is black).
        outline: draw a thin line around every kept cell, so single kept cells stand out.
    """
    _check_image(image, index_map)
    _check_fraction(dim, "dim")
    kept = _per_token(kept, "kept", bool)
    kept_pixels = paint_tokens(index_map, kept, False)
    dropped_pixels = paint_tokens(index_map, ~kept, False)
    out = _select(dropped_pixels, _dimmed(image, dim), image)
    if outline:
        _draw_edges(out, _label_edges(index_map, touching=kept_pixels), OUTLINE_RGB, strength=0.6)
    return out


def groups_overlay(image: np.ndarray, index_map: np.ndarray, group_of: np.ndarray, *, alpha: float = 0.5) -> np.ndarray:
    """Colour each merge group distinctly and outline where the group changes.

    Args:
        group_of: `(n,)` int group id per token position, -1 for none. Groups with a single token (nothing
            merged into them) are left uncoloured and unbordered, like -1, so the merges stand out.
        alpha: weight of the group colour in the blend, in [0, 1].

    Colours are a deterministic function of the group id (golden-ratio hue steps), so a group keeps its
    colour across redraws and nearby ids get well-separated hues.
    """
    _check_image(image, index_map)
    _check_fraction(alpha, "alpha")
    group_of = _per_token(group_of, "group_of")
    if not np.issubdtype(group_of.dtype, np.integer):
        raise ValueError(f"group_of must be integer, got {group_of.dtype}")
    ids, sizes = np.unique(group_of[group_of >= 0], return_counts=True)
    label = np.where(np.isin(group_of, ids[sizes > 1]), group_of, -1)
    hue = (label * GOLDEN_RATIO_CONJUGATE) % 1.0
    hsv = np.stack([hue, np.full_like(hue, 0.75), np.full_like(hue, 0.95)], -1)
    token_rgb = (hsv_to_rgb(hsv) * 255).round().astype(np.uint8)
    label_pixels = paint_tokens(index_map, label, -1)
    out = _blend_where(image, label_pixels >= 0, paint_tokens(index_map, token_rgb, 0), alpha)
    _draw_edges(out, _label_edges(label_pixels), GROUP_BORDER_RGB, strength=0.9)
    return out


def difference_overlay(
    image: np.ndarray, index_map: np.ndarray, kept_a: np.ndarray, kept_b: np.ndarray, *, alpha: float = 0.55, dim: float = 0.25
) -> tuple[np.ndarray, dict[str, int]]:
    """Compare two kept sets: A-only tokens orange, B-only blue, kept by both as they are, by neither dimmed.

    Args:
        kept_a, kept_b: `(n,)` bool per token position.
        alpha: weight of the A-only / B-only tint, in [0, 1].
        dim: brightness left to tokens neither keeps, in [0, 1].

    Returns:
        The picture and token counts `{"a_only", "b_only", "both", "neither"}` over the tokens this view shows.
    """
    _check_image(image, index_map)
    _check_fraction(alpha, "alpha")
    _check_fraction(dim, "dim")
    kept_a = _per_token(kept_a, "kept_a", bool)
    kept_b = _per_token(kept_b, "kept_b", bool)
    if kept_a.shape != kept_b.shape:
        raise ValueError(f"kept_a and kept_b must have the same shape, got {kept_a.shape} and {kept_b.shape}")
    a_only, b_only, neither = kept_a & ~kept_b, kept_b & ~kept_a, ~kept_a & ~kept_b
    token_rgb = np.zeros((len(kept_a), 3), np.uint8)
    token_rgb[a_only] = A_ONLY_RGB
    token_rgb[b_only] = B_ONLY_RGB
    out = _blend_where(image, paint_tokens(index_map, a_only | b_only, False), paint_tokens(index_map, token_rgb, 0), alpha)
    out = _select(paint_tokens(index_map, neither, False), _dimmed(image, dim), out)
    shown = tokens_shown(index_map, len(kept_a))
    counts = {
        "a_only": int((a_only & shown).sum()),
        "b_only": int((b_only & shown).sum()),
        "both": int((kept_a & kept_b & shown).sum()),
        "neither": int((neither & shown).sum()),
    }
    return out, counts


def highlight_tokens(
    image: np.ndarray, index_map: np.ndarray, focus: int, neighbors: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """Outline the `focus` token strongly and tint its neighbours with intensity proportional to their weight.

    Args:
        focus: token position of the selected token (drawn only if this view shows it).
        neighbors: `(m,)` int token positions; -1 entries (padding) are ignored.
        weights: `(m,)` float edge weights; negative weights count as 0, the largest gets the full tint.
    """
    _check_image(image, index_map)
    if isinstance(focus, bool) or not isinstance(focus, (int, np.integer)) or focus < 0:
        raise ValueError(f"focus must be a non-negative token position, got {focus!r}")
    neighbors = np.asarray(neighbors)
    weights = np.asarray(weights, dtype=np.float64)
    if neighbors.ndim != 1 or not np.issubdtype(neighbors.dtype, np.integer) or weights.shape != neighbors.shape:
        raise ValueError(f"neighbors must be 1-D int and weights the same shape, got {neighbors.shape}, {weights.shape}")
    valid = neighbors >= 0
    if not np.isfinite(weights[valid]).all():
        raise ValueError("weights of valid neighbours must be finite")

    n_tokens = max(int(index_map.max()), int(neighbors.max(initial=-1)), int(focus)) + 1
    strength = np.clip(weights[valid], 0.0, None)
    if strength.size and strength.max() > 0:
        strength = strength / strength.max()
    token_alpha = np.zeros(n_tokens, np.float32)
    np.maximum.at(token_alpha, neighbors[valid], 0.75 * strength.astype(np.float32))
    pixel_alpha = paint_tokens(index_map, token_alpha, 0.0)
    tint = np.empty_like(image)
    tint[:] = NEIGHBOUR_RGB
    out = cv2.blendLinear(image, tint, 1.0 - pixel_alpha, pixel_alpha)

    focus_pixels = (index_map == focus).astype(np.uint8)
    if focus_pixels.any():
        thickness = max(2, round(min(index_map.shape) / 300))
        kernel = np.ones((2 * thickness + 1, 2 * thickness + 1), np.uint8)
        ring = cv2.dilate(focus_pixels, kernel).astype(bool) & ~focus_pixels.astype(bool)
        out[ring] = FOCUS_RGB
    return out


def draw_label(image: np.ndarray, text: str) -> np.ndarray:
    """Write `text` on a dark banner across the top of the image (same size, so pixel coordinates still match).

    OpenCV's Hershey fonts are ASCII-only, so typographic characters are transliterated (`·` → `|`, `×` → `x`).
    The font scales with the image width and shrinks further if the text would not fit.
    """
    _check_rgb(image)
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    text = _ascii(text)
    height, width = image.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = min(max(width / 1100, 0.35), 1.2)
    pad = max(2, round(6 * scale))
    (text_width, _), _ = cv2.getTextSize(text, font, scale, 1)
    if text_width > width - 2 * pad:
        scale *= (width - 2 * pad) / max(text_width, 1)
    thickness = max(1, round(1.6 * scale))
    (_, text_height), baseline = cv2.getTextSize(text, font, scale, thickness)
    banner_height = min(height, text_height + baseline + 2 * pad)

    out = image.copy()
    out[:banner_height] = (out[:banner_height] * 0.35).astype(np.uint8)
    cv2.putText(out, text, (pad, pad + text_height), font, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return out


_TRANSLITERATION = str.maketrans(
    {"·": "|", "•": "|", "×": "x", "–": "-", "—": "-", "−": "-", "≥": ">=", "≤": "<=", "→": "->", "…": "...",
     "‘": "'", "’": "'", "“": '"', "”": '"', "≈": "~", "±": "+/-"}
)


def _ascii(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.translate(_TRANSLITERATION))
    return "".join(c if c.isascii() else "" if unicodedata.combining(c) else "?" for c in decomposed)


def _dimmed(image: np.ndarray, dim: float) -> np.ndarray:
    """The whole image darkened to `dim` brightness and mostly desaturated (70 % grey)."""
    grey = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    return cv2.addWeighted(image, 0.3 * dim, grey, 0.7 * dim, 0.0)


def _blend_where(image: np.ndarray, where: np.ndarray, colour: np.ndarray, alpha: float) -> np.ndarray:
    """`image` with `colour` blended in at weight `alpha` on the `(H, W)` bool `where` pixels."""
    return _select(where, cv2.addWeighted(image, 1.0 - alpha, colour, alpha, 0.0), image)


def _select(where: np.ndarray, chosen: np.ndarray, otherwise: np.ndarray) -> np.ndarray:
    """`np.where(where[..., None], chosen, otherwise)` for `(H, W, 3)` uint8, via cv2 (many times faster)."""
    out = otherwise.copy()
    cv2.copyTo(chosen, np.ascontiguousarray(where).view(np.uint8), out)
    return out


def _label_edges(labels: np.ndarray, touching: np.ndarray | None = None) -> np.ndarray:
    """`(H, W)` bool: 1-pixel lines where `labels` changes to the right or below.

    With `touching` (`(H, W)` bool), only edges with a `touching` pixel on either side are kept, plus the
    image border of `touching` regions, so those regions are closed outlines.
    """
    horizontal = labels[:, 1:] != labels[:, :-1]
    vertical = labels[1:, :] != labels[:-1, :]
    if touching is not None:
        horizontal &= touching[:, 1:] | touching[:, :-1]
        vertical &= touching[1:, :] | touching[:-1, :]
    edges = np.zeros(labels.shape, bool)
    edges[:, :-1] |= horizontal
    edges[:-1, :] |= vertical
    if touching is not None:
        for border in (np.s_[0, :], np.s_[-1, :], np.s_[:, 0], np.s_[:, -1]):
            edges[border] |= touching[border]
    return edges


def _draw_edges(out: np.ndarray, edges: np.ndarray, rgb: tuple[int, int, int], strength: float) -> None:
    """Blend `rgb` into `out` (in place) on the `edges` pixels."""
    out[edges] = (out[edges] * (1.0 - strength) + np.asarray(rgb) * strength).round().astype(np.uint8)


def _check_rgb(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError("image must be an (H, W, 3) uint8 RGB array")


def _check_image(image: np.ndarray, index_map: np.ndarray) -> None:
    _check_rgb(image)
    if not isinstance(index_map, np.ndarray) or index_map.shape != image.shape[:2]:
        raise ValueError(f"index_map must have the image's shape {image.shape[:2]}")


def _check_fraction(value: float, name: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _per_token(values: np.ndarray, name: str, dtype=None) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per token position), got shape {values.shape}")
    if dtype is bool and values.dtype != bool:
        raise ValueError(f"{name} must be a bool array, got {values.dtype}")
    return values
