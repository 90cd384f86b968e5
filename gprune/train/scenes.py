"""A seeded generator of synthetic scenes that make visual-token pruning matter.

Each scene is a light canvas of 336–1008 px (aspect ratios that reach all five llava-hf grid pinpoints and
the anyres unpadding) holding 2–6 non-overlapping shapes of easy-VQA's names (circle, rectangle, triangle in
its eight colours), some of them small enough to cover only a few of the 24×24 base-view tokens, and often
one digit printed small. Every question has a one-word answer: how many shapes, the colour of the one
circle, the shape of the one red object, whether an object is on the left or the right, whether a coloured
shape is present, and which digit is printed (the TextVQA-like case, legible only in the high-resolution
grid). `scene(seed)` is a pure function of its seed, so train and test are disjoint by seed range.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

SHAPES = ("circle", "rectangle", "triangle")
COLORS = {
    "red": (220, 30, 30), "green": (30, 150, 40), "blue": (30, 60, 220), "yellow": (235, 205, 20),
    "teal": (0, 140, 140), "brown": (140, 80, 30), "black": (20, 20, 20), "gray": (128, 128, 128),
}
DIGITS = tuple(str(d) for d in range(10))
# (width, height): square, 2:1, 1:2, 3:1, 1:3 and 4:3 canvases, so every pinpoint and both unpadding axes occur.
CANVASES = ((336, 336), (448, 448), (672, 672), (896, 896), (1008, 1008), (672, 336), (336, 672), (896, 448),
            (448, 896), (1008, 336), (336, 1008), (800, 600), (600, 800), (960, 720))
MIN_OBJECTS, MAX_OBJECTS = 2, 6
TRAIN_SEEDS = range(0, 1_000_000)
TEST_SEEDS = range(1_000_000, 1_001_000)  # disjoint from training by construction
VALIDATION_SEEDS = range(2_000_000, 2_000_200)


@dataclass(frozen=True)
class Shape:
    kind: str  # one of SHAPES
    color: str  # a key of COLORS
    cx: float
    cy: float
    radius: float  # half the side of the bounding square


@dataclass(frozen=True)
class Scene:
    image: Image.Image
    shapes: tuple[Shape, ...]
    digit: str | None
    questions: tuple[tuple[str, str], ...]  # (question, one-word answer)
    kinds: tuple[str, ...]  # the question family of each question, for per-kind accuracy


def scene(seed: int) -> Scene:
    """The scene of `seed`: image, objects and every question that has a unique answer in it."""
    rng = random.Random(seed)
    width, height = rng.choice(CANVASES)
    background = tuple(rng.randint(225, 250) for _ in range(3))
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    short = min(width, height)
    placed: list[tuple[float, float, float]] = []  # (cx, cy, r) incl. the digit's box, for overlap tests
    shapes: list[Shape] = []
    for _ in range(rng.randint(MIN_OBJECTS, MAX_OBJECTS)):
        # Log-uniform sizes: a third of the objects span under ~1.5 base-view tokens (14 px at 336).
        radius = short * math.exp(rng.uniform(math.log(0.035), math.log(0.16)))
        spot = _free_spot(rng, width, height, radius, placed)
        if spot is None:
            continue
        shape = Shape(rng.choice(SHAPES), rng.choice(tuple(COLORS)), spot[0], spot[1], radius)
        placed.append((spot[0], spot[1], radius))
        shapes.append(shape)
        _draw_shape(draw, shape)
    digit = None
    if rng.random() < 0.5:
        size = max(12, round(short * rng.uniform(0.05, 0.08)))
        spot = _free_spot(rng, width, height, size * 0.8, placed)
        if spot is not None:
            digit = rng.choice(DIGITS)
            font = ImageFont.load_default(size=size)
            draw.text(spot, digit, fill=(15, 15, 15), font=font, anchor="mm")
    questions, kinds = _questions(rng, shapes, digit, width)
    return Scene(image, tuple(shapes), digit, tuple(questions), tuple(kinds))


def _free_spot(rng: random.Random, width: int, height: int, radius: float,
               placed: list[tuple[float, float, float]]) -> tuple[float, float] | None:
    margin = radius + 4
    for _ in range(50):
        cx, cy = rng.uniform(margin, width - margin), rng.uniform(margin, height - margin)
        if all(math.hypot(cx - x, cy - y) > (radius + r) * 1.5 + 6 for x, y, r in placed):
            return cx, cy
    return None


def _draw_shape(draw: ImageDraw.ImageDraw, shape: Shape) -> None:
    x, y, r, fill = shape.cx, shape.cy, shape.radius, COLORS[shape.color]
    if shape.kind == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif shape.kind == "rectangle":
        draw.rectangle((x - r, y - 0.7 * r, x + r, y + 0.7 * r), fill=fill)
    else:
        draw.polygon(((x, y - r), (x - r, y + 0.8 * r), (x + r, y + 0.8 * r)), fill=fill)


def _questions(rng: random.Random, shapes: list[Shape], digit: str | None, width: int) -> tuple[list, list]:
    questions: list[tuple[str, str]] = []
    kinds: list[str] = []

    def ask(kind: str, question: str, answer: str) -> None:
        questions.append((question, answer))
        kinds.append(kind)

    ask("count", "how many shapes are there?", str(len(shapes)))
    for kind_name in SHAPES:
        same = [s for s in shapes if s.kind == kind_name]
        if len(same) == 1:
            ask("color", f"what color is the {kind_name}?", same[0].color)
    for color in COLORS:
        same = [s for s in shapes if s.color == color]
        if len(same) == 1:
            ask("shape", f"what shape is the {color} object?", same[0].kind)
    for shape in shapes:
        unique = sum(s.kind == shape.kind and s.color == shape.color for s in shapes) == 1
        if unique and abs(shape.cx - width / 2) > 0.08 * width:
            side = "left" if shape.cx < width / 2 else "right"
            ask("side", f"is the {shape.color} {shape.kind} on the left or on the right?", side)
    present = {(s.color, s.kind) for s in shapes}
    shown = rng.choice(sorted(present))
    ask("presence", f"is there a {shown[0]} {shown[1]}?", "yes")
    absent = sorted({(c, k) for c in COLORS for k in SHAPES} - present)
    missing = rng.choice(absent)
    ask("presence", f"is there a {missing[0]} {missing[1]}?", "no")
    if digit is not None:
        ask("digit", "what number is written in the image?", digit)
    return questions, kinds


def looks_like_flat_shapes(image: Image.Image, colours: int = 10, share: float = 0.9) -> bool:
    """Whether `image` is like the `shapes` model's training images: at least `share` of its pixels (on a
    64×64 thumbnail, 4 bits per channel) fall into its `colours` most common colours. Flat shapes on a flat
    background pass; photographs, with their gradients and textures, do not."""
    thumbnail = image.convert("RGB").resize((64, 64), Image.Resampling.NEAREST)
    counts: dict[tuple[int, int, int], int] = {}
    for r, g, b in thumbnail.get_flattened_data():
        key = (r >> 4, g >> 4, b >> 4)
        counts[key] = counts.get(key, 0) + 1
    top = sorted(counts.values(), reverse=True)[:colours]
    return sum(top) >= share * 64 * 64
