"""Legends, colour bars and titles for the pictures: as HTML next to a picture on screen, or drawn into it.

A legend is described once (`ColourBar` or `Swatches`) and rendered either way, so the page and the
exported slide say the same thing. Text is drawn with matplotlib's bundled DejaVu Sans (full Unicode:
ρ, ×, ≥), at a size that follows the picture's width, so it stays legible wherever the picture is scaled.
"""

from __future__ import annotations

import functools
import html
from dataclasses import dataclass

import matplotlib
import numpy as np
from matplotlib import font_manager
from PIL import Image, ImageDraw, ImageFont

NOTE_RGB = (178, 34, 34)  # toy-model warnings
BACKGROUND_RGB = (255, 255, 255)
TEXT_RGB = (20, 20, 20)
SLIDE_WIDTH = 1280
SLIDE_PICTURE_HEIGHT = 820


@dataclass(frozen=True)
class ColourBar:
    """A colour map from `low` to `high`, optionally with the keep/drop cut marked at `cut` (0..1)."""

    title: str
    cmap: str
    low: str
    high: str
    cut: float | None = None
    cut_label: str = ""


@dataclass(frozen=True)
class Swatches:
    """Coloured squares with labels; an `outline` colour draws the square as a frame of that colour."""

    title: str
    items: tuple[tuple[tuple[int, int, int], str], ...]
    outline: tuple[int, int, int] | None = None  # frame drawn around the first item's square


Legend = ColourBar | Swatches


# ------------------------------------------------------------------------------------------------- HTML


def legend_html(legend: Legend) -> str:
    """A small, self-contained HTML legend (inline styles; every text escaped)."""
    title = f'<span class="legend-title">{html.escape(legend.title)}</span>'
    if isinstance(legend, Swatches):
        items = []
        for index, (rgb, label) in enumerate(legend.items):
            frame = legend.outline if index == 0 and legend.outline is not None else (120, 120, 120)
            items.append(f'<span class="legend-item"><span class="legend-swatch" style="background:{_hex(rgb)};'
                         f'border:2px solid {_hex(frame)}"></span>{html.escape(label)}</span>')
        return f'<div class="gprune-legend">{title} {" ".join(items)}</div>'
    stops = ", ".join(f"{_hex(rgb)} {100 * i / 15:.0f}%" for i, rgb in enumerate(_cmap_colours(legend.cmap, 16)))
    marker = ""
    if legend.cut is not None:
        left = 100 * min(max(legend.cut, 0.0), 1.0)
        # The label is shifted left by the same share, so it never sticks out of the bar's ends.
        marker = (f'<span class="legend-cut" style="left:{left:.1f}%"></span>'
                  f'<span class="legend-cut-label" style="left:{left:.1f}%;transform:translateX(-{left:.1f}%)">'
                  f'{html.escape(legend.cut_label)}</span>')
    return (f'<div class="gprune-legend">{title}<div class="legend-bar-row">'
            f'<span class="legend-end">{html.escape(legend.low)}</span>'
            f'<span class="legend-bar" style="background:linear-gradient(to right, {stops})">{marker}</span>'
            f'<span class="legend-end">{html.escape(legend.high)}</span></div></div>')


# ---------------------------------------------------------------------------------------------- rasters


def legend_picture(legend: Legend, width: int) -> np.ndarray:
    """The legend drawn as an `(h, width, 3)` uint8 strip (for exports, below the picture it explains)."""
    size = font_size(width)
    regular, bold = font(size), font(size, bold=True)
    pad = size // 2
    canvas = Image.new("RGB", (width, 4 * size + 4 * pad), BACKGROUND_RGB)
    draw = ImageDraw.Draw(canvas)
    x = pad
    draw.text((x, pad), legend.title, font=bold, fill=TEXT_RGB)
    y = pad + round(1.5 * size)
    if isinstance(legend, Swatches):
        box = size
        for index, (rgb, label) in enumerate(legend.items):
            label_width = draw.textlength(label, font=regular)
            if x + box + pad + label_width > width - pad and x > pad:  # wrap onto a new line
                x, y = pad, y + round(1.4 * size)
                canvas = _taller(canvas, y + box + pad)
                draw = ImageDraw.Draw(canvas)
            frame = legend.outline if index == 0 and legend.outline is not None else (120, 120, 120)
            draw.rectangle([x, y, x + box, y + box], fill=rgb, outline=frame, width=max(2, size // 8))
            draw.text((x + box + pad // 2, y), label, font=regular, fill=TEXT_RGB)
            x += round(box + pad + label_width + 1.5 * pad)
        return np.asarray(canvas.crop((0, 0, width, y + box + pad)))
    low_width = draw.textlength(legend.low, font=regular)
    high_width = draw.textlength(legend.high, font=regular)
    bar_left, bar_right = round(x + low_width + pad), round(width - 2 * pad - high_width)
    draw.text((x, y), legend.low, font=regular, fill=TEXT_RGB)
    draw.text((bar_right + pad, y), legend.high, font=regular, fill=TEXT_RGB)
    colours = _cmap_colours(legend.cmap, max(bar_right - bar_left, 1))
    bar = np.repeat(colours[None], size, axis=0)
    canvas.paste(Image.fromarray(bar), (bar_left, y))
    bottom = y + size + pad
    if legend.cut is not None:
        cut_x = bar_left + round(min(max(legend.cut, 0.0), 1.0) * (bar_right - bar_left))
        line = max(2, size // 6)
        draw.rectangle([cut_x - line // 2 - 1, y - pad // 2, cut_x + line // 2 + 1, y + size + pad // 2], fill=(255, 255, 255))
        draw.rectangle([cut_x - line // 2, y - pad // 2, cut_x + line // 2, y + size + pad // 2], fill=TEXT_RGB)
        label_width = draw.textlength(legend.cut_label, font=regular)
        label_x = min(max(cut_x - label_width / 2, pad), width - pad - label_width)
        draw.text((label_x, y + size + pad // 2), legend.cut_label, font=regular, fill=TEXT_RGB)
        bottom = y + 2 * size + pad
    return np.asarray(canvas.crop((0, 0, width, bottom + pad)))


def title_strip(text: str, width: int, *, note: str = "") -> np.ndarray:
    """An `(h, width, 3)` white strip with `text` in bold and an optional red `note` line, shrunk to fit."""
    size = font_size(width, larger=True)
    pad = size // 2
    lines = [(_fitted(text, size, True, width - 2 * pad), TEXT_RGB)]
    if note:
        lines.append((_fitted(note, round(size * 0.75), False, width - 2 * pad), NOTE_RGB))
    height = pad + sum(round(typeface.size * 1.3) for (_, typeface), _ in lines) + pad // 2
    canvas = Image.new("RGB", (width, height), BACKGROUND_RGB)
    draw = ImageDraw.Draw(canvas)
    y = pad
    for (line, typeface), colour in lines:
        draw.text((pad, y), line, font=typeface, fill=colour)
        y += round(typeface.size * 1.3)
    return np.asarray(canvas)


def titled(picture: np.ndarray, title: str, *, note: str = "") -> np.ndarray:
    """`picture` with a title strip above it (nothing drawn over the picture itself)."""
    return np.vstack([title_strip(title, picture.shape[1], note=note), picture])


def slide(picture: np.ndarray, title: str, *, legends: tuple[Legend, ...] = (), note: str = "",
          width: int = SLIDE_WIDTH, picture_height: int = SLIDE_PICTURE_HEIGHT) -> Image.Image:
    """A slide-ready figure `width` pixels wide: title (+ red note), the picture scaled to fit, legends below."""
    image = Image.fromarray(picture)
    scale = min(width / image.width, picture_height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resample = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.LANCZOS  # keep token cells crisp
    body = Image.new("RGB", (width, size[1]), BACKGROUND_RGB)
    body.paste(image.resize(size, resample), ((width - size[0]) // 2, 0))
    parts = [title_strip(title, width, note=note), np.asarray(body), *(legend_picture(l, width) for l in legends)]
    return Image.fromarray(np.vstack(parts))


# ------------------------------------------------------------------------------------------------ fonts


def font_size(width: int, *, larger: bool = False) -> int:
    """Text height for a picture `width` pixels wide: about 1/40 of it (1/24 for titles), 12–44 px."""
    return int(min(max(width / (24 if larger else 40), 12), 44))


@functools.lru_cache(maxsize=64)
def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    family = font_manager.FontProperties(family="DejaVu Sans", weight="bold" if bold else "normal")
    return ImageFont.truetype(font_manager.findfont(family), size)


def _fitted(text: str, size: int, bold: bool, room: int) -> tuple[str, ImageFont.FreeTypeFont]:
    """`text` and the largest font up to `size` (at least 8 px) in which it fits in `room` pixels."""
    typeface = font(size, bold)
    length = typeface.getlength(text)
    if length > room:
        typeface = font(max(8, int(size * room / length)), bold)
    return text, typeface


def _cmap_colours(name: str, count: int) -> np.ndarray:
    try:
        colormap = matplotlib.colormaps[name]
    except KeyError:
        raise ValueError(f"unknown colormap {name!r}") from None
    return (colormap(np.linspace(0, 1, count))[:, :3] * 255).round().astype(np.uint8)


def _hex(rgb) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb))


def _taller(canvas: Image.Image, height: int) -> Image.Image:
    if height <= canvas.height:
        return canvas
    grown = Image.new("RGB", (canvas.width, height), BACKGROUND_RGB)
    grown.paste(canvas, (0, 0))
    return grown
