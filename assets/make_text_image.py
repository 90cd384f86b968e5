"""Render ``assets/receipt.png``: a text-rich synthetic image for OCR-style questions.

The image is an 800x600 shop receipt (shop name, address, line items with
quantities and unit prices, subtotal, tax, total, cash and change) drawn with
the DejaVu fonts that ship inside matplotlib (``mpl-data/fonts/ttf``), so the
script needs nothing beyond Pillow and matplotlib and uses no system fonts.

It is deterministic: no randomness, no timestamps, no PNG metadata.  Given the
same Pillow / FreeType / zlib builds it writes byte-identical output; other
builds may anti-alias glyphs slightly differently, so the checksum recorded in
``assets/ATTRIBUTION.md`` is that of the committed file, not a promise about
every re-render.

Usage::

    python assets/make_text_image.py            # writes assets/receipt.png
    python assets/make_text_image.py --out x.png

The expected answer to "What is the total on the receipt?" is ``TOTAL`` below
(USD 22.19).
"""

from __future__ import annotations

import argparse
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import matplotlib
from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 800, 600
HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "receipt.png"

SHOP = "CORNER BAKERY & CAFE"
ADDRESS = "12 Market Street, Springfield"
HEADER = ("Tel 555-0142", "Receipt #004817")
DATE = ("2024-03-14", "09:41")
# (quantity, description, unit price)
ITEMS = (
    (2, "Croissant", Decimal("2.50")),
    (1, "Cappuccino (L)", Decimal("4.20")),
    (1, "Blueberry muffin", Decimal("3.10")),
    (3, "Orange juice", Decimal("2.75")),
)
TAX_RATE = Decimal("0.08")
CASH = Decimal("30.00")
CENT = Decimal("0.01")

SUBTOTAL = sum((q * p for q, _, p in ITEMS), Decimal("0")).quantize(CENT)
TAX = (SUBTOTAL * TAX_RATE).quantize(CENT, rounding=ROUND_HALF_UP)
TOTAL = SUBTOTAL + TAX
CHANGE = CASH - TOTAL


def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name
    return ImageFont.truetype(str(path), size)


def render() -> Image.Image:
    """Return the receipt as an RGB PIL image of WIDTH x HEIGHT."""
    img = Image.new("RGB", (WIDTH, HEIGHT), (92, 74, 58))  # dark wooden counter
    draw = ImageDraw.Draw(img)

    # The paper slip, with a soft offset shadow.
    left, top, right, bottom = 150, 20, 650, 580
    draw.rectangle((left + 6, top + 6, right + 6, bottom + 6), fill=(60, 48, 38))
    draw.rectangle((left, top, right, bottom), fill=(250, 248, 240))

    title = _font("DejaVuSans-Bold.ttf", 30)
    mono = _font("DejaVuSansMono.ttf", 19)
    mono_bold = _font("DejaVuSansMono-Bold.ttf", 26)
    ink = (30, 30, 30)
    cols = 40  # characters per receipt line in the 19 px monospace font
    x0 = left + 20
    step = 27

    def centered(y: int, text: str, font: ImageFont.FreeTypeFont) -> None:
        w = draw.textlength(text, font=font)
        draw.text(((left + right - w) / 2, y), text, font=font, fill=ink)

    def line(y: int, text: str, font: ImageFont.FreeTypeFont = mono) -> None:
        draw.text((x0, y), text, font=font, fill=ink)

    def split(a: str, b: str, width: int = cols) -> str:
        return a + " " * max(1, width - len(a) - len(b)) + b

    y = top + 18
    centered(y, SHOP, title)
    y += 44
    centered(y, ADDRESS, mono)
    y += step
    line(y, split(*HEADER))
    y += step
    line(y, split(*DATE))
    y += step
    line(y, "-" * cols)
    y += step
    for qty, name, price in ITEMS:
        left_part = f"{qty} x {name:<16} @{price:>5}"
        line(y, split(left_part, f"{qty * price:.2f}"))
        y += step
    line(y, "-" * cols)
    y += step
    line(y, split("SUBTOTAL", f"{SUBTOTAL:.2f}"))
    y += step
    line(y, split(f"TAX {int(TAX_RATE * 100)}%", f"{TAX:.2f}"))
    y += step + 6
    # The total in a larger bold face, boxed, so it stands out for OCR questions.
    total_text = split("TOTAL", f"USD {TOTAL:.2f}", width=29)
    draw.rectangle((x0 - 8, y - 4, right - 12, y + 36), outline=ink, width=2)
    draw.text((x0, y), total_text, font=mono_bold, fill=ink)
    y += 48
    line(y, split("CASH", f"{CASH:.2f}"))
    y += step
    line(y, split("CHANGE", f"{CHANGE:.2f}"))
    y += step
    line(y, "-" * cols)
    y += step + 4
    centered(y, "THANK YOU - PLEASE COME AGAIN", mono)
    return img


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output PNG path")
    args = ap.parse_args()
    img = render()
    img.save(args.out, format="PNG", optimize=True)
    print(f"wrote {args.out} ({img.width}x{img.height}); total = USD {TOTAL:.2f}")


if __name__ == "__main__":
    main()
