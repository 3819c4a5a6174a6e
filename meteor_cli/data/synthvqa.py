"""SynthVQA: a synthetic visual-question benchmark that runs on a CPU.

No pretrained weights can be downloaded on the project machines, yet users must be able to see
METEOR's claims hold without a GPU. SynthVQA renders small images whose questions mirror the
paper's benchmark families, in LLaVA's own file formats so the real loaders are exercised:

===============  ==============================  ==================================================
family           stands for                      questions
===============  ==============================  ==================================================
``general``      GQA-like                        count, colour of the named shape, shape of the
                                                 named colour, left/right and top/bottom position
``hallucination``POPE-like yes/no existence      "Is there a red circle in the image?", half yes;
                                                 negatives ``random`` / ``popular`` /
                                                 ``adversarial`` as POPE builds them (below)
``ocr``          TextVQA/DocVQA-like             a short word or number printed small in clutter;
                                                 ``ocr_style="large"``: 1-3 bold glyphs (digits and
                                                 ten capitals), one per cell of a 4×4 grid
``chart``        ChartQA-like                    value of a bar, tallest bar, comparisons
===============  ==============================  ==================================================

Design constraint: ``ocr`` and ``chart`` depend on small glyphs (a font of about 1/11 of the
image side), so a low-resolution encoder alone cannot answer them and careless token dropping
hurts them more than it hurts ``general``.

POPE-style negatives. Objects are (colour, shape) pairs drawn from a skewed prior (some objects
are much more frequent) with a per-scene colour theme (objects of one colour co-occur). On a
fixed reference pool of scenes we count object frequencies and pairwise co-occurrences, then, as
POPE does: ``random`` picks an absent object uniformly; ``popular`` the most frequent absent
object; ``adversarial`` the absent object that co-occurs most with the objects present.

OCR answers are spelled with spaces ("c a t", "4 0 7"), which keeps a word-level vocabulary at a
few dozen tokens; the metric compares the normalised strings.

Every sample is generated from its own ``random.Random(f"{seed}/{split}/{index}")``, so files are
byte-identical for the same seed and Pillow version, and any sample can be regenerated alone.
Text is rendered with Pillow's built-in scalable font (no system fonts, no downloads).

Layout written by :func:`generate`::

    DIR/train.json                 LLaVA instruction data: id, image, conversations, category
    DIR/eval/questions.jsonl       question_id, image, text, category (+ subcategory)
    DIR/eval/answers.jsonl         question_id, text (ground truth), category, subcategory
    DIR/images/{train,eval}/*.png
    DIR/synthvqa.json              manifest: seed, sizes, counts per family, generator version
"""

from __future__ import annotations

import itertools
import json
import os
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from meteor_cli.errors import UsageError

#: 2: OCR training conversations may read glyph by glyph first.
#: 3: ``ocr`` text is drawn one glyph per cell of an 8×8 grid (``SynthConfig.ocr_style="cells"``);
#:    ``ocr_style="free"`` still draws version 2's free-placed small text, byte for byte.
#: 4: ``ocr_style="large"``: 1-3 bold glyphs (digits and ten capitals) of >= 20 px, one per cell of a
#:    4×4 grid (:func:`_ocr_large`). ``cells`` and ``free`` draw exactly what version 3 drew.
GENERATOR_VERSION = 4
OCR_STYLES = ("cells", "free", "large")
#: ``large`` OCR's alphabet: the digits and ten capitals that no digit or other capital resembles
#: in a bold sans-serif (no O/0, I/1, S/5, B/8, Z/2, G/6, D/0). Answers are lower-cased.
LARGE_ALPHABET = "0123456789AEFHKLMPTX"
FAMILIES = ("general", "hallucination", "ocr", "chart")
POPE_CATEGORIES = ("random", "popular", "adversarial")
SHORT_ANSWER = "\nAnswer the question using a single word or phrase."

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 215),
    "yellow": (225, 195, 30), "purple": (135, 60, 180), "orange": (240, 125, 20),
}
SHAPES = ("circle", "square", "triangle")
OBJECTS = [(c, s) for c in COLORS for s in SHAPES]
# A skewed prior over objects (fixed, seed-independent) so that "popular" negatives exist.
_PRIOR = [1.0 / (1 + i) ** 0.8 for i in range(len(OBJECTS))]
WORDS = ("cat", "dog", "sun", "map", "key", "box", "red", "fig", "jam", "owl", "bus", "cup", "pen",
         "tree", "bird", "fish", "lamp", "door", "moon", "star", "ship", "milk", "frog", "leaf",
         "rain", "salt", "wolf", "gold", "road", "kite")
BAR_LABELS = ("A", "B", "C", "D", "E")


@dataclass(frozen=True)
class SynthConfig:
    """What to generate. Defaults give 128-px images with up to 6 shapes per scene."""

    image_size: int = 128
    #: Fewest / most shapes per scene (general, hallucination). A curriculum can start at 1.
    min_objects: int = 1
    max_objects: int = 6
    families: tuple[str, ...] = FAMILIES
    #: OCR/chart glyph height as a fraction of the image side (smaller = needs more resolution).
    text_scale: float = 1 / 11
    #: How ``ocr`` text is drawn: ``cells`` (v3 default) puts one glyph in each cell of an 8×8
    #: grid (a cell is one 16-px patch of a 128-px image), ``free`` is version 2's small text at any
    #: position, ``large`` (v4) 1-3 bold glyphs of >= 20 px, one per cell of a 4×4 grid.
    #: See :func:`_ocr` and :func:`_ocr_large`.
    ocr_style: str = "cells"

    def __post_init__(self) -> None:
        if self.image_size < 48:
            raise UsageError(f"--image-size {self.image_size} is too small to draw readable text",
                             "use 48 pixels or more (default 128)")
        if not 1 <= self.min_objects <= self.max_objects <= len(OBJECTS):
            raise UsageError(f"objects per scene must satisfy 1 <= min ({self.min_objects}) <= max "
                             f"({self.max_objects}) <= {len(OBJECTS)}", "adjust --min-objects/--max-objects")
        if self.ocr_style not in OCR_STYLES:
            raise UsageError(f"unknown OCR style {self.ocr_style!r}", f"choose from {', '.join(OCR_STYLES)}")
        bad = [f for f in self.families if f not in FAMILIES]
        if bad or not self.families:
            raise UsageError(f"unknown SynthVQA families {bad or '(none)'}", f"choose from {', '.join(FAMILIES)}")


@dataclass
class Item:
    """One generated sample (the image is a PIL image, not yet written)."""

    image: Any
    question: str
    answer: str
    family: str
    subcategory: str
    meta: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Scenes of shapes (general, hallucination)
# --------------------------------------------------------------------------------------------


def _sample_objects(rng: random.Random, k: int) -> list[tuple[str, str]]:
    """k distinct objects: half of the draws favour a scene colour theme, the rest the prior."""
    theme = rng.choice(list(COLORS))
    chosen: list[tuple[str, str]] = []
    while len(chosen) < k:
        if rng.random() < 0.5:
            obj = (theme, rng.choice(SHAPES))
        else:
            obj = rng.choices(OBJECTS, weights=_PRIOR)[0]
        if obj not in chosen:
            chosen.append(obj)
    return chosen


def _draw_shape(draw: Any, shape: str, box: tuple[int, int, int, int], fill: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)


def _render_scene(rng: random.Random, objects: Sequence[tuple[str, str]], size: int) -> tuple[Any, list[dict[str, Any]]]:
    """Place objects on distinct cells of a 4×4 grid with jitter; returns image and placements."""
    from PIL import Image, ImageDraw

    bg = tuple(rng.randint(225, 250) for _ in range(3))
    im = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(im)
    cell = size // 4
    cells = rng.sample([(r, c) for r in range(4) for c in range(4)], len(objects))
    placed = []
    for (color, shape), (r, c) in zip(objects, cells):
        s = rng.randint(int(cell * 0.55), int(cell * 0.8))
        x0 = c * cell + rng.randint(0, cell - s)
        y0 = r * cell + rng.randint(0, cell - s)
        _draw_shape(draw, shape, (x0, y0, x0 + s, y0 + s), COLORS[color])
        placed.append({"color": color, "shape": shape, "cx": x0 + s / 2, "cy": y0 + s / 2})
    return im, placed


def _general(rng: random.Random, cfg: SynthConfig) -> Item:
    k = rng.randint(cfg.min_objects, cfg.max_objects)
    objects = _sample_objects(rng, k)
    im, placed = _render_scene(rng, objects, cfg.image_size)
    q, a, sub = _general_question(rng, placed, cfg.image_size)
    return Item(im, q, a, "general", sub, {"objects": placed})


def _general_question(rng: random.Random, placed: list[dict[str, Any]], size: int) -> tuple[str, str, str]:
    """(question, answer, subcategory) of one GQA-like question about a scene."""
    shapes = Counter(o["shape"] for o in placed)
    colors = Counter(o["color"] for o in placed)
    kinds = ["count"]
    if any(n == 1 for n in shapes.values()):
        kinds.append("color")
    if any(n == 1 for n in colors.values()):
        kinds.append("shape")
    kinds.append("position")
    kind = rng.choice(kinds)
    if kind == "count":
        return "How many shapes are there?", str(len(placed)), "count"
    if kind == "color":
        shape = rng.choice(sorted(s for s, n in shapes.items() if n == 1))
        obj = next(o for o in placed if o["shape"] == shape)
        return f"What color is the {shape}?", obj["color"], "color"
    if kind == "shape":
        color = rng.choice(sorted(c for c, n in colors.items() if n == 1))
        obj = next(o for o in placed if o["color"] == color)
        return f"What shape is the {color} object?", obj["shape"], "shape"
    obj = rng.choice(placed)
    half = size / 2
    if rng.random() < 0.5:
        q = f"Is the {obj['color']} {obj['shape']} on the left or on the right?"
        a = "left" if obj["cx"] < half else "right"
    else:
        q = f"Is the {obj['color']} {obj['shape']} at the top or at the bottom?"
        a = "top" if obj["cy"] < half else "bottom"
    return q, a, "position"


@lru_cache(maxsize=1)
def object_statistics(pool: int = 4000) -> tuple[dict[tuple[str, str], int], dict[tuple[tuple[str, str], tuple[str, str]], int]]:
    """Object frequencies and pairwise co-occurrence counts on a fixed reference pool of scenes.

    The pool uses its own seed, independent of the user's, so "popular" and "adversarial" mean
    the same thing in every generated set (as POPE's statistics come from COCO, not the split).
    """
    rng = random.Random("synthvqa/object-statistics")
    freq: Counter[tuple[str, str]] = Counter()
    cooc: Counter[tuple[tuple[str, str], tuple[str, str]]] = Counter()
    for _ in range(pool):
        objs = _sample_objects(rng, rng.randint(2, 6))
        freq.update(objs)
        for a, b in itertools.permutations(objs, 2):
            cooc[(a, b)] += 1
    return dict(freq), dict(cooc)


def _negative(rng: random.Random, present: list[tuple[str, str]], category: str) -> tuple[str, str]:
    absent = [o for o in OBJECTS if o not in present]
    if category == "random":
        return rng.choice(absent)
    freq, cooc = object_statistics()
    if category == "popular":
        return max(absent, key=lambda o: (freq.get(o, 0), -OBJECTS.index(o)))
    return max(absent, key=lambda o: (sum(cooc.get((p, o), 0) for p in present), -OBJECTS.index(o)))


def _hallucination(rng: random.Random, cfg: SynthConfig, index: int) -> Item:
    k = rng.randint(max(2, cfg.min_objects), max(2, cfg.max_objects))
    objects = _sample_objects(rng, k)
    im, placed = _render_scene(rng, objects, cfg.image_size)
    category = POPE_CATEGORIES[(index // 4) % 3]  # balanced over the three POPE splits
    q, answer = _existence_question(rng, objects, category)
    return Item(im, q, answer, "hallucination", category, {"objects": placed})


def _existence_question(rng: random.Random, objects: list[tuple[str, str]], category: str) -> tuple[str, str]:
    """A POPE-like yes/no question: half present objects, half ``category`` negatives."""
    if rng.random() < 0.5:
        color, shape = rng.choice(objects)
        answer = "yes"
    else:
        color, shape = _negative(rng, objects, category)
        answer = "no"
    return f"Is there a {color} {shape} in the image?", answer


# --------------------------------------------------------------------------------------------
# Text and charts (ocr, chart)
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _font(px: int) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=px)


def _clutter(rng: random.Random, draw: Any, size: int, n: int) -> None:
    for _ in range(n):
        col = tuple(rng.randint(150, 215) for _ in range(3))
        x0, y0 = rng.randint(0, size), rng.randint(0, size)
        if rng.random() < 0.5:
            draw.line((x0, y0, rng.randint(0, size), rng.randint(0, size)), fill=col, width=rng.randint(1, 2))
        else:
            s = rng.randint(4, size // 6)
            _draw_shape(draw, rng.choice(SHAPES), (x0, y0, x0 + s, y0 + s), col)


def spell(text: str) -> str:
    """OCR answers are spelled character by character: ``"cat"`` → ``"c a t"``."""
    return " ".join(text)


def _ocr_text(rng: random.Random) -> tuple[str, str, str]:
    """(text, subcategory, question): a word from WORDS or a number of 2-4 digits, half each."""
    if rng.random() < 0.5:
        return rng.choice(WORDS), "word", "What word is written in the image?"
    return str(rng.randint(10, 9999)), "number", "What number is written in the image?"


def _ocr(rng: random.Random, cfg: SynthConfig) -> Item:
    """A word or number printed in clutter; drawn as ``cfg.ocr_style`` says.

    ``cells`` (version 3): the grid is 8×8 cells (16 px on a 128-px image: one CLIP/ViT patch of
    the ``tiny`` presets' detail encoder). The text occupies consecutive cells of one row, one
    glyph centred in each (jittered by up to 1/8 of a cell), on a plain band that clutter never
    covers. Why: version 2's small text at any sub-patch offset was never learned by the 3-block
    encoders of ``tiny`` within a CPU budget (OCR 0-3 % after 15k steps, every reading
    sub-question answered by a constant). With one glyph per patch, reading is per-token glyph
    classification plus ordering: learnable, yet still fine detail — a glyph is 13 px on a 128-px
    image, below what the 64-px ViT (8-px glyphs in 16-px patches of a 4×4 grid) or the ConvNeXt's
    32-px patches resolve, so it depends on the high-resolution encoder's tokens, and dropping a
    glyph's token loses the answer.
    """
    from PIL import Image, ImageDraw

    if cfg.ocr_style == "large":
        return _ocr_large(rng, cfg)
    size = cfg.image_size
    im = Image.new("RGB", (size, size), tuple(rng.randint(230, 250) for _ in range(3)))
    draw = ImageDraw.Draw(im)
    _clutter(rng, draw, size, rng.randint(6, 12))
    text, sub, q = _ocr_text(rng)
    if cfg.ocr_style == "free":
        font = _font(max(7, round(size * cfg.text_scale)))
        x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
        x = rng.randint(0, max(0, size - (x1 - x0) - 1)) - x0
        y = rng.randint(0, max(0, size - (y1 - y0) - 1)) - y0
        draw.text((x, y), text, fill=tuple(rng.randint(0, 70) for _ in range(3)), font=font)
        return Item(im, q, spell(text), "ocr", sub, {"text": text})
    ink = tuple(rng.randint(0, 70) for _ in range(3))
    grid = 8
    cell = size / grid
    row, col = rng.randrange(grid), rng.randint(0, grid - len(text))
    band = tuple(rng.randint(240, 255) for _ in range(3))
    draw.rectangle((col * cell, row * cell, (col + len(text)) * cell - 1, (row + 1) * cell - 1), fill=band)
    font = _font(max(7, round(cell * 0.9)))
    jitter = max(1, round(cell / 8))
    for k, ch in enumerate(text):
        x0, y0, x1, y1 = draw.textbbox((0, 0), ch, font=font)
        cx = (col + k + 0.5) * cell + rng.randint(-jitter, jitter)
        cy = (row + 0.5) * cell + rng.randint(-jitter, jitter)
        draw.text((cx - (x0 + x1) / 2, cy - (y0 + y1) / 2), ch, fill=ink, font=font)
    return Item(im, q, spell(text), "ocr", sub, {"text": text, "row": row, "col": col})


#: The ``large`` style's grid: 4×4 cells, 32 px on a 128-px image.
LARGE_GRID = 4


def large_font_px(size: int) -> tuple[int, int]:
    """(font size, stroke width) of ``large`` glyphs on a ``size``-px image: capitals 21 px tall at 128."""
    cell = size / LARGE_GRID
    return round(cell * 0.85), max(1, round(cell / 32))


def _ocr_large(rng: random.Random, cfg: SynthConfig) -> Item:
    """Version 4's ``large`` OCR: 1-3 bold glyphs, one per cell of a 4×4 grid, on a plain light band.

    The text is 1-3 characters drawn uniformly from :data:`LARGE_ALPHABET` (digits and ten capitals
    that do not resemble each other), set in Pillow's built-in font at 0.85 of a cell (capitals and
    digits 21 px tall on a 128-px image) with a 1-px stroke in the ink colour (strokes ~4 px), dark
    (0-60) on a light band (235-255) over consecutive cells of one random row; +-2 px of jitter per
    glyph; clutter is drawn before the band, so none crosses it. The answer is the text lower-cased
    and spelled ("k 7 a"): the models' word tokenizers lower-case anyway.

    Why: a 4.6M-parameter model trained on version 3's ``cells`` (10-px thin glyphs in 16-px cells)
    answered every word "s t a r" and every number "9 0 0 1" (first-character questions 0-18 %),
    while it learned the other families. Here a glyph fills one ConvNeXt token (32-px patch) and
    2×2 CLIP tokens (16-px patches) at full contrast, so reading is per-token classification of 20
    classes plus ordering. It still depends on fine detail: each glyph lives in 1/16 of the image
    and in a few tokens of each encoder, so pruning those tokens loses that character (the answer).
    """
    from PIL import Image, ImageDraw

    size = cfg.image_size
    im = Image.new("RGB", (size, size), tuple(rng.randint(230, 250) for _ in range(3)))
    draw = ImageDraw.Draw(im)
    _clutter(rng, draw, size, rng.randint(4, 8))
    n = rng.randint(1, 3)
    glyphs = "".join(rng.choice(LARGE_ALPHABET) for _ in range(n))
    text = glyphs.lower()
    cell = size / LARGE_GRID
    row, col = rng.randrange(LARGE_GRID), rng.randint(0, LARGE_GRID - n)
    band = tuple(rng.randint(235, 255) for _ in range(3))
    draw.rectangle((col * cell, row * cell, (col + n) * cell - 1, (row + 1) * cell - 1), fill=band)
    ink = tuple(rng.randint(0, 60) for _ in range(3))
    px, stroke = large_font_px(size)
    font = _font(px)
    jitter = max(1, round(cell / 16))
    for k, ch in enumerate(glyphs):
        x0, y0, x1, y1 = draw.textbbox((0, 0), ch, font=font, stroke_width=stroke)
        cx = (col + k + 0.5) * cell + rng.randint(-jitter, jitter)
        cy = (row + 0.5) * cell + rng.randint(-jitter, jitter)
        draw.text((cx - (x0 + x1) / 2, cy - (y0 + y1) / 2), ch, fill=ink, font=font, stroke_width=stroke,
                  stroke_fill=ink)
    return Item(im, "What is written in the image?", spell(text), "ocr", f"len{n}",
                {"text": text, "glyphs": glyphs, "row": row, "col": col, "grid": LARGE_GRID})


def _chart(rng: random.Random, cfg: SynthConfig) -> Item:
    from PIL import Image, ImageDraw

    size = cfg.image_size
    im = Image.new("RGB", (size, size), (250, 250, 250))
    draw = ImageDraw.Draw(im)
    n = rng.randint(3, 5)
    labels = list(BAR_LABELS[:n])
    values = [rng.randint(1, 8) for _ in range(n)]
    tallest = rng.randrange(n)  # a unique tallest bar keeps "which is tallest" well posed
    values[tallest] = rng.randint(max(v for k, v in enumerate(values) if k != tallest) + 1, 9)
    top = values[tallest]
    font = _font(max(7, round(size * cfg.text_scale)))
    left, bottom, top_px = size * 0.16, size * 0.86, size * 0.06
    unit = (bottom - top_px) / 10
    for v in range(0, 11, 2):  # y gridlines and tick labels
        y = bottom - v * unit
        draw.line((left, y, size - 2, y), fill=(210, 210, 210))
        draw.text((1, y - font.size / 2), str(v), fill=(60, 60, 60), font=font)
    slot = (size - 2 - left) / n
    color = tuple(rng.randint(30, 160) for _ in range(3))
    for i, (lab, v) in enumerate(zip(labels, values)):
        x0 = left + i * slot + slot * 0.2
        draw.rectangle((x0, bottom - v * unit, x0 + slot * 0.6, bottom), fill=color)
        draw.text((x0 + slot * 0.15, bottom + 1), lab, fill=(30, 30, 30), font=font)
    q, a, sub = _chart_question(rng, labels, values)
    return Item(im, q, a, "chart", sub, {"values": dict(zip(labels, values))})


def _chart_question(rng: random.Random, labels: list[str], values: list[int]) -> tuple[str, str, str]:
    """(question, answer, subcategory) of one ChartQA-like question about a bar chart."""
    n = len(labels)
    kind = rng.choice(["value", "value", "tallest", "compare"])
    if kind == "value":
        i = rng.randrange(n)
        return f"What is the value of bar {labels[i]}?", str(values[i]), "value"
    if kind == "tallest":
        return "Which bar is the tallest?", labels[values.index(max(values))], "tallest"
    i = rng.randrange(n)
    j = rng.choice([k for k in range(n) if values[k] != values[i]])  # never a tie
    return f"Is bar {labels[i]} taller than bar {labels[j]}?", "yes" if values[i] > values[j] else "no", "compare"


def make_item(seed: int, split: str, index: int, cfg: SynthConfig = SynthConfig()) -> Item:
    """Generate sample ``index`` of ``split``; families rotate so every split is balanced."""
    rng = random.Random(f"{seed}/{split}/{index}")
    family = cfg.families[index % len(cfg.families)]
    if family == "general":
        return _general(rng, cfg)
    if family == "hallucination":
        return _hallucination(rng, cfg, index)
    if family == "ocr":
        return _ocr(rng, cfg)
    return _chart(rng, cfg)


READING_KINDS = ("first", "second", "last", "length")


def reading_kinds(text: str) -> tuple[str, ...]:
    """The reading sub-questions that ``text`` has: all of READING_KINDS, without ``second`` for one glyph."""
    return READING_KINDS if len(text) >= 2 else tuple(k for k in READING_KINDS if k != "second")


def reading_question(text: str, kind: str) -> tuple[str, str]:
    """The (question, answer) of reading sub-question ``kind`` (one of :func:`reading_kinds`) about ``text``."""
    if kind not in reading_kinds(text):
        raise ValueError(f"{text!r} has no {kind!r} reading question; ask one of {reading_kinds(text)}")
    if kind == "length":
        return "How many characters does the text have?", str(len(text))
    char = text[{"first": 0, "second": 1, "last": -1}[kind]]
    return f"What is the {kind} character of the text?", char


def _reading_question(rng: random.Random, text: str) -> tuple[str, str]:
    """One sub-question of reading ``text``: a character at a position, or its length."""
    return reading_question(text, rng.choice(reading_kinds(text)))


def follow_up_questions(seed: int, split: str, index: int, item: Item, n: int) -> list[tuple[str, str]]:
    """Up to ``n`` more (question, answer) pairs about ``item``'s image, distinct from its question.

    Scenes of shapes get GQA-like and POPE-like (random negatives) questions alike, charts other
    chart questions, OCR images reading sub-questions (first, second or last character, length),
    which teach reading one glyph at a time. Drawn from their own
    ``random.Random(f"{seed}/{split}/{index}/more")``, so the first question and the image are the
    same as without follow-ups. Training sets use them as multi-turn conversations (``--turns``):
    the image is encoded once for several supervised answers.
    """
    rng = random.Random(f"{seed}/{split}/{index}/more")
    seen = {item.question}
    out: list[tuple[str, str]] = []
    for _ in range(8 * n):
        if len(out) >= n:
            break
        if "objects" in item.meta:
            placed = item.meta["objects"]
            if rng.random() < 0.5:
                q, a, _ = _general_question(rng, placed, item.image.size[0])
            else:
                q, a = _existence_question(rng, [(o["color"], o["shape"]) for o in placed], "random")
        elif "values" in item.meta:
            labels, values = list(item.meta["values"]), list(item.meta["values"].values())
            q, a, _ = _chart_question(rng, labels, values)
        elif "text" in item.meta:
            q, a = _reading_question(rng, item.meta["text"])
        else:
            break
        if q not in seen:
            seen.add(q)
            out.append((q, a))
    return out


def conversation(seed: int, split: str, index: int, item: Item, turns: int) -> list[tuple[str, str]]:
    """The (question, answer) turns of training record ``index``: its question, then follow-ups.

    One exception: half of the OCR records (a coin drawn from
    ``random.Random(f"{seed}/{split}/{index}/order")``) ask the reading sub-questions *before*
    the full read. Asked after it, "What is the first character of the text?" is answered by
    copying from the conversation, not by looking at the image; asked first, each one is a
    one-glyph reading task. The other half keeps the evaluation's order (full read first).
    """
    first = (item.question, item.answer)
    more = follow_up_questions(seed, split, index, item, turns - 1) if turns > 1 else []
    if more and item.family == "ocr" and random.Random(f"{seed}/{split}/{index}/order").random() < 0.5:
        return [*more, first]
    return [first, *more]


# --------------------------------------------------------------------------------------------
# Writing the benchmark
# --------------------------------------------------------------------------------------------


def _jsonl(records: Sequence[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def config_from_manifest(manifest: dict[str, Any]) -> SynthConfig:
    """The :class:`SynthConfig` a set was generated with, from its ``synthvqa.json`` manifest.

    With it, ``make_item(manifest["seed"], split, i, config_from_manifest(manifest))`` regenerates
    sample ``i`` (its text, objects, values) exactly, for OCR-only sets and every OCR style alike.
    Manifests from before ``ocr_style`` was recorded (generator ≤ 2) mean ``free``.
    """
    raw = dict(manifest.get("config") or {})
    raw.pop("turns", None)
    raw.setdefault("ocr_style", "free")
    if "families" in raw:
        raw["families"] = tuple(raw["families"])
    known = {f for f in SynthConfig.__dataclass_fields__}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UsageError(f"SynthVQA manifest has config fields this generator does not know: {', '.join(unknown)}",
                         "regenerate the set with this version of `meteor synth`")
    return SynthConfig(**raw)


def generate(
    out: str | os.PathLike[str],
    *,
    n_train: int,
    n_eval: int,
    seed: int = 0,
    cfg: SynthConfig = SynthConfig(),
    overwrite: bool = False,
    turns: int = 1,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Write a SynthVQA set to ``out`` and return its manifest.

    ``turns`` > 1 makes each training record a conversation of up to ``turns`` questions about
    its image (:func:`follow_up_questions`); evaluation questions are always single.

    The set is built in a temporary sibling directory and renamed into place at the end, so an
    interrupted run never leaves a half-written benchmark behind. ``progress(n)`` is called after
    every ``n`` images.
    """
    target = Path(out)
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise UsageError(f"{target} already exists and is not empty", "pass --overwrite or choose another --out")
    from meteor_cli.artifacts import atomic_dir

    with atomic_dir(target) as tmp:
        counts: dict[str, Counter[str]] = {}
        train, questions, answers = [], [], []
        for split, n in (("train", n_train), ("eval", n_eval)):
            (tmp / "images" / split).mkdir(parents=True)
            counts[split] = Counter()
            for i in range(n):
                item = make_item(seed, split, i, cfg)
                rel = f"images/{split}/{i:06d}.png"
                item.image.save(tmp / rel, format="PNG")
                counts[split][item.family] += 1
                qid = f"{split}-{i:06d}"
                if split == "train":
                    conv = []
                    for q, a in conversation(seed, split, i, item, turns):
                        conv += [{"from": "human", "value": f"{q}{SHORT_ANSWER}"}, {"from": "gpt", "value": a}]
                    conv[0]["value"] = "<image>\n" + conv[0]["value"]
                    train.append({"id": qid, "image": rel, "category": item.family, "subcategory": item.subcategory,
                                  "conversations": conv})
                else:
                    questions.append({"question_id": qid, "image": rel, "text": f"{item.question}{SHORT_ANSWER}",
                                      "category": item.family, "subcategory": item.subcategory})
                    answers.append({"question_id": qid, "text": item.answer, "category": item.family,
                                    "subcategory": item.subcategory})
                if progress is not None:
                    progress(1)
        (tmp / "eval").mkdir()
        (tmp / "train.json").write_text(json.dumps(train, indent=1) + "\n")
        (tmp / "eval" / "questions.jsonl").write_text(_jsonl(questions))
        (tmp / "eval" / "answers.jsonl").write_text(_jsonl(answers))
        manifest = {
            "benchmark": "synthvqa", "generator_version": GENERATOR_VERSION, "seed": seed,
            "config": {**asdict(cfg), "families": list(cfg.families), "turns": turns},
            "counts": {s: dict(sorted(c.items())) for s, c in counts.items()},
        }
        (tmp / "synthvqa.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


__all__ = ["FAMILIES", "LARGE_ALPHABET", "OCR_STYLES", "POPE_CATEGORIES", "READING_KINDS", "SynthConfig", "Item",
           "config_from_manifest", "conversation", "large_font_px", "reading_kinds",
           "follow_up_questions", "generate", "make_item", "object_statistics", "reading_question", "spell"]
