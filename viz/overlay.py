"""Per-token pictures drawn over the image: heatmaps, kept/dropped masks, merge groups, diffs, neighbourhoods.

Every function takes the `(H, W, 3)` uint8 RGB image, the view's `(H, W)` index map from
`token_index_map` and per-token arrays indexed by token position, and returns a new `(H, W, 3)` uint8 image.
Pixels no token covers are left as they are. Colours are computed per token and gathered per pixel
(`paint_tokens`), so no function loops over tokens or pixels in Python.
"""

from __future__ import annotations

import cv2
import matplotlib
import numpy as np
from matplotlib.colors import hsv_to_rgb

from .tokenmap import paint_tokens, token_centres, tokens_shown

KEPT_OUTLINE_RGB = (255, 255, 255)
ENTERED_RGB = (255, 214, 0)  # kept now, dropped one step before (yellow)
LEFT_RGB = (230, 0, 210)  # dropped now, kept one step before (magenta)
GROUP_BORDER_RGB = (255, 255, 255)
A_ONLY_RGB = (255, 140, 0)  # orange / blue: distinguishable with the common colour-vision deficiencies
B_ONLY_RGB = (0, 150, 255)
NEIGHBOUR_RGB = (0, 220, 255)
EDGE_RGB = (0, 235, 255)
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
    image: np.ndarray, index_map: np.ndarray, kept: np.ndarray, *, dim: float = 0.25, outline: bool = True,
    previous: np.ndarray | None = None, alpha: float = 0.6,
) -> np.ndarray:
    """Show kept tokens as they are and dropped tokens darkened and desaturated.

    Args:
        kept: `(n,)` bool per token position.
        dim: brightness left to dropped tokens, in [0, 1] (0 is black).
        outline: draw a thin white line around kept cells, so single kept cells stand out.
        previous: `(n,)` bool, the kept set one step before: tokens that entered it are tinted yellow
            (`ENTERED_RGB`), tokens that left it magenta (`LEFT_RGB`, over the darkened picture), at `alpha`.
    """
    _check_image(image, index_map)
    _check_fraction(dim, "dim")
    _check_fraction(alpha, "alpha")
    kept = _per_token(kept, "kept", bool)
    kept_pixels = paint_tokens(index_map, kept, False)
    dropped_pixels = paint_tokens(index_map, ~kept, False)
    out = _select(dropped_pixels, _dimmed(image, dim), image)
    if previous is not None:
        previous = _per_token(previous, "previous", bool)
        if previous.shape != kept.shape:
            raise ValueError(f"previous must have the shape of kept, got {previous.shape} and {kept.shape}")
        token_rgb = np.zeros((len(kept), 3), np.uint8)
        token_rgb[kept & ~previous] = ENTERED_RGB
        token_rgb[previous & ~kept] = LEFT_RGB
        changed_pixels = paint_tokens(index_map, kept != previous, False)
        colour_pixels = paint_tokens(index_map, token_rgb, 0)
        out = _blend_where(out, changed_pixels, colour_pixels, alpha)
    if outline:
        _draw_edges(out, _label_edges(index_map, touching=kept_pixels), KEPT_OUTLINE_RGB, strength=0.5)
    if previous is not None:  # changed cells framed in their full colour, drawn last so they stay visible
        frame = _label_edges(index_map, touching=changed_pixels) & changed_pixels
        frame |= cv2.dilate(frame.astype(np.uint8), np.ones((2, 2), np.uint8)).astype(bool) & changed_pixels
        out[frame] = colour_pixels[frame]
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
    token_rgb = group_colours(label)
    label_pixels = paint_tokens(index_map, label, -1)
    out = _blend_where(image, label_pixels >= 0, paint_tokens(index_map, token_rgb, 0), alpha)
    _draw_edges(out, _label_edges(label_pixels), GROUP_BORDER_RGB, strength=0.9)
    return out


def group_colours(group_ids: np.ndarray) -> np.ndarray:
    """`(m, 3)` uint8 colour of each group id: golden-ratio hue steps, so nearby ids get distinct hues."""
    hue = (np.asarray(group_ids) * GOLDEN_RATIO_CONJUGATE) % 1.0
    hsv = np.stack([hue, np.full_like(hue, 0.75, dtype=np.float64), np.full_like(hue, 0.95, dtype=np.float64)], -1)
    return (hsv_to_rgb(hsv) * 255).round().astype(np.uint8)


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
    image: np.ndarray, index_map: np.ndarray, focus: int, neighbors: np.ndarray, weights: np.ndarray,
    *, max_line_width: int | None = None,
) -> np.ndarray:
    """Outline the `focus` token, tint its neighbours and draw its graph edges, line width ∝ edge weight.

    Args:
        focus: token position of the selected token (drawn only if this view shows it).
        neighbors: `(m,)` int token positions; -1 entries (padding) are ignored.
        weights: `(m,)` float edge weights; negative weights count as 0, the largest gets the full tint and
            the widest line (`max_line_width`, by default 1/80 of the shorter image side, at least 3 px).
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
    np.maximum.at(token_alpha, neighbors[valid], 0.6 * strength.astype(np.float32))
    pixel_alpha = paint_tokens(index_map, token_alpha, 0.0)
    tint = np.empty_like(image)
    tint[:] = NEIGHBOUR_RGB
    out = cv2.blendLinear(image, tint, 1.0 - pixel_alpha, pixel_alpha)

    focus_pixels = (index_map == focus).astype(np.uint8)
    if focus_pixels.any():
        widest = max_line_width or max(3, round(min(index_map.shape) / 80))
        centres = token_centres(index_map, np.concatenate([[focus], neighbors[valid]]))
        start = tuple(int(v) for v in np.round(centres[0]))
        for end, share in zip(centres[1:], strength):
            if share > 0 and np.isfinite(end).all():
                width = max(1, round(widest * share))
                end = tuple(int(v) for v in np.round(end))
                cv2.line(out, start, end, (0, 0, 0), width + 2, cv2.LINE_AA)  # dark rim: visible on light areas
                cv2.line(out, start, end, EDGE_RGB, width, cv2.LINE_AA)
        thickness = max(2, round(min(index_map.shape) / 300))
        kernel = np.ones((2 * thickness + 1, 2 * thickness + 1), np.uint8)
        ring = cv2.dilate(focus_pixels, kernel).astype(bool) & ~focus_pixels.astype(bool)
        out[ring] = FOCUS_RGB
    return out


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
