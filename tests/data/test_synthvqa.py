"""SynthVQA: deterministic files, balanced families, POPE-style negatives, LLaVA formats."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import pytest

from meteor_cli.data import llava
from meteor_cli.data import synthvqa as S
from meteor_cli.errors import ExitCode, UsageError


def _digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    S.generate(tmp_path / "a", n_train=12, n_eval=8, seed=1)
    S.generate(tmp_path / "b", n_train=12, n_eval=8, seed=1)
    S.generate(tmp_path / "c", n_train=12, n_eval=8, seed=2)
    a, b, c = (_digest(tmp_path / x) for x in "abc")
    assert a == b
    assert a["images/train/000000.png"] != c["images/train/000000.png"]
    assert len([k for k in a if k.endswith(".png")]) == 20


def test_layout_and_llava_formats(tmp_path):
    manifest = S.generate(tmp_path / "sv", n_train=16, n_eval=8, seed=0)
    root = tmp_path / "sv"
    assert manifest["counts"] == {"train": {f: 4 for f in sorted(S.FAMILIES)}, "eval": {f: 2 for f in sorted(S.FAMILIES)}}
    train = list(llava.iter_json_records(root / "train.json"))
    assert len(train) == 16
    for rec in train:
        human, gpt = rec["conversations"]
        assert human["from"] == "human" and human["value"].startswith("<image>\n") and gpt["from"] == "gpt"
        assert (root / rec["image"]).is_file() and llava.load_image(root / rec["image"]).size == (128, 128)
    questions = list(llava.iter_json_records(root / "eval" / "questions.jsonl"))
    answers = list(llava.iter_json_records(root / "eval" / "answers.jsonl"))
    assert [q["question_id"] for q in questions] == [a["question_id"] for a in answers]
    assert {q["category"] for q in questions} == set(S.FAMILIES)
    assert set(questions[0]) == {"question_id", "image", "text", "category", "subcategory"}
    assert json.loads((root / "synthvqa.json").read_text())["seed"] == 0


def test_answers_match_what_is_drawn():
    for i in range(200):
        item = S.make_item(0, "train", i)
        if item.family == "ocr":
            assert item.answer == S.spell(item.meta["text"]) == " ".join(item.meta["text"])
        elif item.family == "chart" and item.subcategory == "tallest":
            vals = item.meta["values"]
            assert item.answer == max(vals, key=vals.get) and list(vals.values()).count(max(vals.values())) == 1
        elif item.family == "general" and item.subcategory == "count":
            assert item.answer == str(len(item.meta["objects"]))
        elif item.family == "hallucination":
            present = {(o["color"], o["shape"]) for o in item.meta["objects"]}
            asked = tuple(item.question.removeprefix("Is there a ").removesuffix(" in the image?").split(" "))
            assert item.answer == ("yes" if asked in present else "no")


def test_pope_negatives_follow_pope_definitions():
    import random

    freq, cooc = S.object_statistics()
    present = [("red", "circle"), ("red", "square")]
    absent = [o for o in S.OBJECTS if o not in present]
    popular = S._negative(random.Random(0), present, "popular")
    assert popular not in present and freq[popular] == max(freq[o] for o in absent)
    adversarial = S._negative(random.Random(0), present, "adversarial")
    score = lambda o: sum(cooc.get((p, o), 0) for p in present)  # noqa: E731
    assert score(adversarial) == max(score(o) for o in absent)
    assert adversarial == ("red", "triangle")  # the colour theme makes same-colour objects co-occur
    randoms = {S._negative(random.Random(s), present, "random") for s in range(50)}
    assert len(randoms) > 5 and not randoms & set(present)


def test_hallucination_is_balanced_over_answers_and_categories():
    items = [S.make_item(0, "eval", i) for i in range(1, 1200, 4)]
    assert {it.family for it in items} == {"hallucination"}
    assert Counter(it.subcategory for it in items) == {"random": 100, "popular": 100, "adversarial": 100}
    yes = sum(it.answer == "yes" for it in items) / len(items)
    assert 0.4 < yes < 0.6


def test_refuses_to_overwrite_and_validates_config(tmp_path):
    (tmp_path / "sv").mkdir()
    (tmp_path / "sv" / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="already exists"):
        S.generate(tmp_path / "sv", n_train=1, n_eval=1)
    assert (tmp_path / "sv" / "keep.txt").read_text() == "mine"
    with pytest.raises(UsageError, match="unknown SynthVQA families"):
        S.SynthConfig(families=("general", "maths"))
    with pytest.raises(UsageError):
        S.SynthConfig(min_objects=4, max_objects=2)


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = S.make_item

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(S, "make_item", flaky)
    with pytest.raises(KeyboardInterrupt):
        S.generate(tmp_path / "sv", n_train=10, n_eval=0)
    assert list(tmp_path.iterdir()) == []


def test_cli(cli, tmp_path):
    res = cli("synth", "--out", "sv", "--train", "8", "--eval", "4", "--seed", "3", "--json", "-q")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["seed"] == 3 and data["counts"]["eval"] == {"chart": 1, "general": 1, "hallucination": 1, "ocr": 1}
    again = cli("synth", "--out", "sv", "--train", "8")
    assert again.exit_code == ExitCode.USAGE and "--overwrite" in again.stderr
    only_ocr = cli("synth", "--out", "ocr", "--train", "3", "--eval", "0", "--families", "ocr", "-q", "--json")
    assert json.loads(only_ocr.stdout)["counts"]["train"] == {"ocr": 3}


def test_follow_up_questions_are_distinct_and_true():
    for i in range(120):
        item = S.make_item(0, "train", i)
        more = S.follow_up_questions(0, "train", i, item, 6)
        assert len({q for q, _ in more} | {item.question}) == len(more) + 1
        assert len(more) >= 3
        if item.family == "ocr":
            text = item.meta["text"]
            for q, a in more:
                assert a == (str(len(text)) if q.startswith("How many") else
                             {"first": text[0], "second": text[1], "last": text[-1]}[q.split()[3]])
            continue
        for q, a in more:
            if "objects" in item.meta:
                objs = item.meta["objects"]
                present = {(o["color"], o["shape"]) for o in objs}
                if q.startswith("Is there a "):
                    asked = tuple(q.removeprefix("Is there a ").removesuffix(" in the image?").split(" "))
                    assert a == ("yes" if asked in present else "no")
                elif q.startswith("How many"):
                    assert a == str(len(objs))
                elif q.startswith("What color is the "):
                    shape = q.removeprefix("What color is the ").removesuffix("?")
                    assert [o["color"] for o in objs if o["shape"] == shape] == [a]
            else:
                vals = item.meta["values"]
                if q.startswith("What is the value of bar "):
                    assert a == str(vals[q.removeprefix("What is the value of bar ").removesuffix("?")])
                elif q.startswith("Is bar "):
                    x, y = q.removeprefix("Is bar ").removesuffix("?").split(" taller than bar ")
                    assert a == ("yes" if vals[x] > vals[y] else "no")


def test_turns_make_conversations_without_changing_images_or_eval(tmp_path):
    one = S.generate(tmp_path / "one", n_train=8, n_eval=4, seed=3)
    many = S.generate(tmp_path / "many", n_train=8, n_eval=4, seed=3, turns=4)
    assert one["config"]["turns"] == 1 and many["config"]["turns"] == 4
    a, b = _digest(tmp_path / "one"), _digest(tmp_path / "many")
    assert {k: v for k, v in a.items() if k != "train.json" and k != "synthvqa.json"} == \
        {k: v for k, v in b.items() if k != "train.json" and k != "synthvqa.json"}
    recs1 = json.loads((tmp_path / "one" / "train.json").read_text())
    recs4 = json.loads((tmp_path / "many" / "train.json").read_text())
    for r1, r4 in zip(recs1, recs4):
        conv = r4["conversations"]
        n = len(conv) // 2
        assert n == 4
        assert [t["from"] for t in conv] == ["human", "gpt"] * n
        assert conv[0]["value"].startswith("<image>\n") and all("<image>" not in t["value"] for t in conv[1:])
        question, answer = r1["conversations"][0]["value"].removeprefix("<image>\n"), r1["conversations"][1]["value"]
        pairs = [(conv[k]["value"].removeprefix("<image>\n"), conv[k + 1]["value"]) for k in range(0, len(conv), 2)]
        # The single-turn question is the first turn, or for reading-first OCR records the last.
        assert pairs[0] == (question, answer) or (r4["category"] == "ocr" and pairs[-1] == (question, answer))


def test_half_the_ocr_conversations_read_glyph_by_glyph_before_the_full_read():
    """Asked after the full read, "first character" is a copy; asked first, it is a reading task."""
    firsts = []
    for i in range(2, 400, 4):  # OCR items
        item = S.make_item(0, "train", i)
        conv = S.conversation(0, "train", i, item, 5)
        assert item.family == "ocr" and len(conv) == 5 and (item.question, item.answer) in conv
        read_first = conv[0] == (item.question, item.answer)
        assert read_first or conv[-1] == (item.question, item.answer)
        firsts.append(read_first)
    assert 0.35 < sum(firsts) / len(firsts) < 0.65
    # Other families keep the evaluation's question first.
    item = S.make_item(0, "train", 0)
    assert S.conversation(0, "train", 0, item, 5)[0] == (item.question, item.answer)
    ocr = S.make_item(0, "train", 2)
    assert S.conversation(0, "train", 2, ocr, 1) == [(ocr.question, ocr.answer)]  # one turn: nothing to reorder


def test_ocr_cells_one_glyph_per_grid_cell_and_deterministic():
    """Generator v3: each OCR glyph sits in its own cell of an 8x8 grid, on one row, on a plain band."""
    import numpy as np

    assert S.GENERATOR_VERSION == 4  # v4 added the large style; cells draws what v3 drew
    seen = 0
    for i in range(2, 80, 4):  # eval indices 2, 6, ... are ocr
        item = S.make_item(7, "eval", i)
        assert item.family == "ocr"
        text, row, col = item.meta["text"], item.meta["row"], item.meta["col"]
        assert item.answer == S.spell(text) and 0 <= col <= 8 - len(text)
        px = np.asarray(item.image.convert("L"), dtype=np.int32)
        cell = item.image.size[0] // 8
        for k in range(len(text)):  # every glyph's cell has ink (text colours are <= 70)
            box = px[row * cell:(row + 1) * cell, (col + k) * cell:(col + k + 1) * cell]
            assert (box <= 90).sum() >= 4, (i, text, k)
        # the same (seed, split, index) gives the same bytes
        assert S.make_item(7, "eval", i).image.tobytes() == item.image.tobytes()
        seen += 1
    assert seen == 20


def test_ocr_free_style_reproduces_generator_v2_images():
    """``ocr_style="free"`` draws version 2's OCR images (pinned digest of one v2 image)."""
    free = S.make_item(0, "eval", 2, S.SynthConfig(ocr_style="free"))
    assert free.answer == "k i t e" and "row" not in free.meta
    assert hashlib.md5(free.image.tobytes()).hexdigest() == "80b59583f1a09aa03da7ec380548beb3"
    cells = S.make_item(0, "eval", 2)
    assert cells.answer == free.answer and cells.image.tobytes() != free.image.tobytes()  # same text, new drawing
    with pytest.raises(UsageError, match="unknown OCR style"):
        S.SynthConfig(ocr_style="handwritten")


def test_synth_records_the_generator_version_and_ocr_style(cli):
    res = cli("synth", "--out", "v2", "--train", "0", "--eval", "4", "--ocr-style", "free", "-q", "--json")
    manifest = json.loads(res.stdout)
    assert manifest["generator_version"] == 4 and manifest["config"]["ocr_style"] == "free"
