"""SynthVQA generator v4's ``--ocr-style large``: big bold glyphs, one per cell of a 4×4 grid.

The other styles' bytes are pinned in tests/data/test_synthvqa.py (``free``) and here (``cells``).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from meteor_cli.data import synthvqa as S

LARGE = S.SynthConfig(ocr_style="large")
OCR_ONLY = S.SynthConfig(ocr_style="large", families=("ocr",))
INK = 100  # glyph ink is <= 60 per channel; band >= 235, clutter >= 150, background >= 230


def _ink(item) -> np.ndarray:
    return np.asarray(item.image.convert("L"), dtype=np.int32) <= INK


def _cells(item):
    """(char, ink mask of its 32-px cell) for each glyph of an OCR item, left to right."""
    mask, cell = _ink(item), item.image.size[0] // item.meta["grid"]
    r, c = item.meta["row"], item.meta["col"]
    return [(ch, mask[r * cell:(r + 1) * cell, (c + k) * cell:(c + k + 1) * cell])
            for k, ch in enumerate(item.meta["glyphs"])]


@lru_cache(maxsize=None)
def _template(ch: str, size: int = 128) -> np.ndarray:
    """The ink mask of ``ch`` drawn alone, centred in one cell, with the generator's font and stroke."""
    from PIL import Image, ImageDraw

    cell = size // S.LARGE_GRID
    im = Image.new("L", (cell, cell), 255)
    draw = ImageDraw.Draw(im)
    px, stroke = S.large_font_px(size)
    font = S._font(px)
    x0, y0, x1, y1 = draw.textbbox((0, 0), ch, font=font, stroke_width=stroke)
    draw.text((cell / 2 - (x0 + x1) / 2, cell / 2 - (y0 + y1) / 2), ch, fill=0, font=font, stroke_width=stroke,
              stroke_fill=0)
    return np.asarray(im) <= INK


def _best_match(mask: np.ndarray) -> tuple[str, float, float]:
    """Template matching over +-3 px shifts: (best character, its IoU, the runner-up's IoU)."""
    shifts = [(dy, dx) for dy in range(-3, 4) for dx in range(-3, 4)]
    shifted = np.stack([np.roll(mask, (dy, dx), (0, 1)) for dy, dx in shifts])  # (49, cell, cell)
    scores = {}
    for ch in S.LARGE_ALPHABET:
        t = _template(ch)[None]
        scores[ch] = float(((shifted & t).sum((1, 2)) / np.maximum(1, (shifted | t).sum((1, 2)))).max())
    ranked = sorted(scores, key=scores.get, reverse=True)
    return ranked[0], scores[ranked[0]], scores[ranked[1]]


def _ocr_items(seed: int, n: int, cfg: S.SynthConfig = OCR_ONLY):
    return [S.make_item(seed, "eval", i, cfg) for i in range(n)]


def test_large_is_deterministic_per_seed_and_differs_across_seeds():
    a = _ocr_items(11, 12)
    b = _ocr_items(11, 12)
    c = _ocr_items(12, 12)
    assert [x.image.tobytes() for x in a] == [x.image.tobytes() for x in b]
    assert [(x.question, x.answer, x.meta) for x in a] == [(x.question, x.answer, x.meta) for x in b]
    assert sum(x.image.tobytes() != y.image.tobytes() for x, y in zip(a, c)) == 12


def test_each_glyph_is_large_bold_inked_and_alone_in_its_cell():
    for item in _ocr_items(3, 40):
        assert item.family == "ocr" and item.question == "What is written in the image?"
        glyphs, text = item.meta["glyphs"], item.meta["text"]
        assert 1 <= len(glyphs) <= 3 and set(glyphs) <= set(S.LARGE_ALPHABET) and text == glyphs.lower()
        assert 0 <= item.meta["col"] <= S.LARGE_GRID - len(glyphs) and item.subcategory == f"len{len(glyphs)}"
        cells = _cells(item)
        for ch, mask in cells:
            rows = np.flatnonzero(mask.any(axis=1))
            assert rows.size and rows[-1] - rows[0] + 1 >= 20, (item.meta, ch)  # >= 20 px tall
            # Strokes >= 3 px: a 3x3 erosion keeps a good part of the ink (a 1-px font would vanish).
            eroded = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
            assert eroded.sum() >= 0.25 * mask.sum(), (item.meta, ch)
        # No dark pixel outside the text's cells: the answer's length is what is drawn.
        outside = _ink(item).copy()
        cell = item.image.size[0] // S.LARGE_GRID
        r, c = item.meta["row"], item.meta["col"]
        outside[r * cell:(r + 1) * cell, c * cell:(c + len(glyphs)) * cell] = False
        assert not outside.any(), item.meta


def test_answer_is_what_is_drawn_by_template_matching():
    """Each cell's ink matches the answer's character best among all 20, by a clear margin."""
    checked = Counter()
    for item in _ocr_items(5, 24):
        assert item.answer == S.spell(item.meta["text"])
        for (ch, mask), said in zip(_cells(item), item.answer.split(" ")):
            best, iou, runner_up = _best_match(mask)
            assert best == ch and said == ch.lower(), (item.meta, best, ch)
            assert iou >= 0.6 and iou - runner_up >= 0.05, (ch, iou, runner_up)  # measured: >= 0.88, >= 0.105
            checked[ch] += 1
    assert sum(checked.values()) >= 30 and len(checked) >= 12


def test_lengths_alphabet_and_reading_questions():
    items = _ocr_items(0, 600)
    assert set(Counter(len(it.meta["text"]) for it in items)) == {1, 2, 3}
    assert set("".join(it.meta["glyphs"] for it in items)) == set(S.LARGE_ALPHABET)
    assert len({it.answer for it in items}) > 300  # no constant answer can score
    for i, it in enumerate(items[:80]):
        text = it.meta["text"]
        more = S.follow_up_questions(0, "eval", i, it, 7)
        assert more and len({q for q, _ in more}) == len(more)
        for q, a in more:
            want = str(len(text)) if q.startswith("How many") else \
                text[{"first": 0, "second": 1, "last": -1}[q.split()[3]]]
            assert a == want
        if len(text) == 1:
            assert all("second" not in q for q, _ in more) and S.reading_kinds(text) == ("first", "last", "length")
    with pytest.raises(ValueError, match="no 'second'"):
        S.reading_question("7", "second")


def test_questions_use_only_words_the_shipped_tokenizer_knows():
    """Fine-tuning ``tiny-synthvqa`` (or a model grown from it) on ``large`` needs no new words."""
    from tokenizers import Tokenizer

    import meteor_cli

    tok = Tokenizer.from_file(str(Path(meteor_cli.__file__).parent / "assets" / "tiny-synthvqa" / "tokenizer.json"))
    unk = tok.token_to_id("<unk>")
    texts = []
    for i, it in enumerate(_ocr_items(0, 60)):
        texts += [it.question + S.SHORT_ANSWER, it.answer, *(t for qa in S.follow_up_questions(0, "eval", i, it, 4)
                                                           for t in qa)]
    unknown = {w for t in texts for w, i in zip(tok.encode(t).tokens, tok.encode(t).ids) if i == unk}
    assert unk is not None and unknown == set()
    assert tok.encode("What is written in the image?").ids.count(unk) == 0
    assert tok.encode("zebra").ids == [unk]  # the check can fail


def test_other_families_and_styles_are_unchanged():
    """``large`` changes OCR images only; ``cells`` still draws generator v3's bytes (pinned)."""
    cells = S.make_item(0, "eval", 2)
    assert hashlib.md5(cells.image.tobytes()).hexdigest() == "345540891b2cabbca2138d8e14313976"
    for i in (0, 1, 3, 4, 5, 7):  # general, hallucination, chart
        a, b = S.make_item(4, "train", i), S.make_item(4, "train", i, LARGE)
        assert a.family != "ocr" and a.image.tobytes() == b.image.tobytes()
        assert (a.question, a.answer) == (b.question, b.answer)
    assert S.make_item(4, "train", 2, LARGE).meta["grid"] == S.LARGE_GRID


def test_synth_cli_records_style_and_version_and_manifest_regenerates(cli, tmp_path):
    res = cli("synth", "--out", "big", "--train", "3", "--eval", "4", "--families", "ocr", "--ocr-style", "large",
              "--seed", "9", "--turns", "4", "-q", "--json")
    assert res.exit_code == 0, res.output
    manifest = json.loads(res.stdout)
    assert manifest["generator_version"] == S.GENERATOR_VERSION == 4
    assert manifest["config"]["ocr_style"] == "large" and manifest["config"]["families"] == ["ocr"]
    root = tmp_path / "big"
    on_disk = json.loads((root / "synthvqa.json").read_text())
    cfg = S.config_from_manifest(on_disk)
    assert cfg == OCR_ONLY
    answers = [json.loads(x) for x in (root / "eval" / "answers.jsonl").read_text().splitlines()]
    for i, rec in enumerate(answers):
        item = S.make_item(9, "eval", i, cfg)
        assert rec["text"] == item.answer and rec["subcategory"] == item.subcategory
        from PIL import Image

        with Image.open(root / "images" / "eval" / f"{i:06d}.png") as im:
            assert im.convert("RGB").tobytes() == item.image.tobytes()
    train = json.loads((root / "train.json").read_text())
    assert all(r["category"] == "ocr" and len(r["conversations"]) >= 4 for r in train)


def test_config_from_manifest_reads_old_manifests_and_refuses_unknown_fields():
    from meteor_cli.errors import UsageError

    v2 = {"generator_version": 2, "config": {"image_size": 128, "families": ["ocr"], "turns": 8}}
    assert S.config_from_manifest(v2) == S.SynthConfig(families=("ocr",), ocr_style="free")
    with pytest.raises(UsageError, match="glyph_font"):
        S.config_from_manifest({"config": {"glyph_font": "serif"}})
