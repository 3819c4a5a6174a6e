"""VQAv2-val, ChartQA-test, OCRBench and DocVQA-val in both on-disk layouts, scored on recorded outputs
(benchfix.score_outputs) against values worked out by hand from the reference scorers' rules."""

from __future__ import annotations

import json

import pytest
from benchfix import copy_images, decodes, score_outputs, synth_png, write_jsonl, write_parquet

from meteor_cli.eval.benchmarks.chartqa import ChartQA
from meteor_cli.eval.benchmarks.docvqa import DocVQA
from meteor_cli.eval.benchmarks.ocrbench import OCRBench
from meteor_cli.eval.benchmarks.vqav2 import VQAv2

SHORT = "\nAnswer the question using a single word or phrase."

# -- VQAv2 -----------------------------------------------------------------------------------------

# (qid, image id, answers, answer type, output). Soft scores: "Two" → 2, all 10 agree → 1; "yes" with 2 of 10
# → (2·1/3 + 8·2/3)/10 = 0.6; "red" → 0; "a cat" → cat with 3 of 10 → (3·2/3 + 7)/10 = 0.9. Mean 62.5.
VQA = [(11, 1, ["2"] * 10, "number", "Two"), (12, 3, ["yes"] * 2 + ["no"] * 8, "yes/no", "yes"),
       (13, 4, ["blue"] * 10, "other", "red"), (14, 5, ["cat"] * 3 + ["dog"] * 7, "other", "a cat")]
VQA_CATS = {"number": 100.0, "yes/no": 60.0, "other": 45.0}


def test_vqav2_both_layouts(tmp_path, synth_dir):
    root = tmp_path / "vqav2"
    (root / "val2014").mkdir(parents=True)
    for _, img, *_ in VQA:
        (root / "val2014" / f"COCO_val2014_{img:012d}.jpg").write_bytes(synth_png(synth_dir, img))
    (root / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps({"questions": [
        {"question_id": q, "image_id": img, "question": f"Question {q}?"} for q, img, *_ in VQA]}))
    (root / "v2_mscoco_val2014_annotations.json").write_text(json.dumps({"annotations": [
        {"question_id": q, "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(ans)], "answer_type": t}
        for q, _, ans, t, _ in VQA]}))
    outputs = [o for *_, o in VQA]
    bench = VQAv2()
    loaded = bench.load_items(root)
    assert loaded.layout == "llava" and loaded.items[0].prompt == "Question 11?" + SHORT and decodes(loaded)
    for protocol in ("llava", "lmms"):
        m = score_outputs(bench, loaded, outputs, protocol)
        assert m["value"] == pytest.approx(62.5)
        assert {c: v["score"] for c, v in m["categories"].items()} == pytest.approx(VQA_CATS)
    # a LLaVA-format question file wins over the official one (prompt as it is in "text")
    write_jsonl(root / "llava_vqav2_mscoco_val2014.jsonl", [
        {"question_id": q, "image": f"COCO_val2014_{img:012d}.jpg", "text": f"Q{q}" + SHORT} for q, img, *_ in VQA])
    assert bench.load_items(root).items[1].prompt == "Q12" + SHORT
    write_parquet(tmp_path / "VQAv2" / "data" / "validation-00000-of-00001.parquet",
                  {"question_id": [q for q, *_ in VQA], "question": [f"Question {q}?" for q, *_ in VQA],
                   "answers": [[{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                                for i, a in enumerate(ans)] for _, _, ans, _, _ in VQA],
                   "answer_type": [t for *_, t, _ in VQA]},
                  [synth_png(synth_dir, img) for _, img, *_ in VQA])
    lm = bench.load_items(tmp_path / "VQAv2")
    assert lm.layout == "lmms" and [it.prompt for it in lm.items] == [it.prompt for it in loaded.items]
    assert decodes(lm) and score_outputs(bench, lm, outputs, "lmms")["value"] == pytest.approx(62.5)


# -- ChartQA ---------------------------------------------------------------------------------------

# human: "104" vs 100 (4 % off) ✓, "Yes." vs yes ✗ (no cleaning), "Blue" vs blue ✓ → 2/3
# augmented: "12%" = 0.12 vs 0.12 ✓, "0.0" vs 0 ✗ (a 0 target is compared as a string) → 1/2;  overall 3/5
CHART = {"human": [("a.png", "104", "100"), ("b.png", "Yes.", "yes"), ("c.png", "Blue", "blue")],
         "augmented": [("d.png", "12%", "0.12"), ("e.png", "0.0", "0")]}


def test_chartqa_both_layouts_and_variants(tmp_path, synth_dir):
    test = tmp_path / "ChartQA" / "test"
    (test / "png").mkdir(parents=True)
    for pos, (split, rows) in enumerate(CHART.items()):
        for i, (img, _, label) in enumerate(rows):
            (test / "png" / img).write_bytes(synth_png(synth_dir, pos * 4 + i))
        (test / f"test_{split}.json").write_text(json.dumps([{"imgname": img, "query": f"Value of {img}?",
                                                             "label": label} for img, _, label in rows]))
    bench = ChartQA()
    outputs = [o for rows in CHART.values() for _, o, _ in rows]
    for data in (tmp_path / "ChartQA", test):  # the release folder or its test/ folder
        loaded = bench.load_items(data)
        assert loaded.layout == "llava" and loaded.prompt["variant"] == "both" and decodes(loaded)
        assert loaded.items[0].prompt == "Value of a.png?\nAnswer the question with a single word."
        m = score_outputs(bench, loaded, outputs)
        assert m["value"] == pytest.approx(60.0)
        assert {c: v["score"] for c, v in m["categories"].items()} == pytest.approx({"human": 200 / 3,
                                                                                     "augmented": 50.0})
    human = bench.load_items(test, variant="human")
    assert score_outputs(bench, human, [o for _, o, _ in CHART["human"]])["value"] == pytest.approx(200 / 3)
    rows = [(split, img, o, label) for split, rs in CHART.items() for img, o, label in rs]
    write_parquet(tmp_path / "lm" / "data" / "test-00000-of-00001.parquet",
                  {"question": [f"Value of {img}?" for _, img, _, _ in rows], "answer": [g for *_, g in rows],
                   "type": [f"{s}_test" for s, *_ in rows]}, [synth_png(synth_dir, i) for i in range(len(rows))])
    lm = bench.load_items(tmp_path / "lm")
    assert lm.layout == "lmms" and score_outputs(bench, lm, outputs, "lmms")["value"] == pytest.approx(60.0)
    aug = bench.load_items(tmp_path / "lm", variant="augmented")
    assert [it.category for it in aug.items] == ["augmented"] * 2
    assert score_outputs(bench, aug, ["12%", "0.0"])["value"] == 50.0


# -- OCRBench --------------------------------------------------------------------------------------

# (type, dataset, answers, output): substring hits. HME100k drops spaces but keeps case; lmms folds full-width.
OCR = [("Regular Text Recognition", "IIIT5K", ["HELLO"], "the word is hello"),             # ✓
       ("Handwritten Mathematical Expression Recognition", "HME100k", ["x^{2}"], "x ^ { 2 }"),  # ✓
       ("Handwritten Mathematical Expression Recognition", "HME100k", ["X^{2}"], "x^{2}"),      # ✗ case kept
       ("Doc-oriented VQA", "docVQA", ["12", "twelve"], "Twelve"),                            # ✓ any answer
       ("Key Information Extraction", "FUNSD", ["ＡＢ"], "ab")]                                 # llava ✗, lmms ✓


def test_ocrbench_both_layouts(tmp_path, synth_dir):
    root = tmp_path / "OCRBench"
    names = copy_images(synth_dir, root / "OCRBench_Images" / "set", list(range(len(OCR))), ".png")
    (root / "OCRBench.json").write_text(json.dumps([
        {"id": i, "dataset_name": d, "question": f"What is written? ({i})", "answers": a if len(a) > 1 else a[0],
         "type": t, "image_path": f"set/{n}"} for i, ((t, d, a, _), n) in enumerate(zip(OCR, names))]))
    outputs = [o for *_, o in OCR]
    bench = OCRBench()
    loaded = bench.load_items(root)
    assert loaded.layout == "llava" and loaded.items[0].prompt == "What is written? (0)" and decodes(loaded)
    m = score_outputs(bench, loaded, outputs)
    assert m["value"] == 3 and m["hits"] == 3
    assert m["groups"] == {"Text Recognition": 1, "Scene Text-centric VQA": 0, "Doc-oriented VQA": 1,
                           "Key Information Extraction": 0, "Handwritten Mathematical Expression Recognition": 1}
    write_parquet(tmp_path / "hub" / "datasets--echo840--OCRBench" / "snapshots" / "s" / "data" /
                  "test-00000-of-00001.parquet",
                  {"question": [f"What is written? ({i}) " for i in range(len(OCR))],
                   "answer": [a for _, _, a, _ in OCR],
                   "dataset": [d for _, d, _, _ in OCR], "question_type": [t for t, *_ in OCR]},
                  [synth_png(synth_dir, i) for i in range(len(OCR))])
    lm = bench.load_items(tmp_path / "hub")
    assert lm.layout == "lmms" and lm.items[0].prompt == "What is written? (0)" and decodes(lm)
    m = score_outputs(bench, lm, outputs, "lmms")
    assert m["value"] == pytest.approx(4 / 1000) and m["groups"]["Key Information Extraction"] == 1


# -- DocVQA ----------------------------------------------------------------------------------------

# ANLS: "Total" = total → 1; "ab" vs "ac": NL = 1/2, on the threshold → 0 (llava, normalised lengths) or
# 0.5 (lmms, raw lengths); "1990s" vs 1990: NL = 1/5 → 0.8; " x " vs [y, x] → 1. llava 70.0, lmms 82.5.
DOC = [("Total", ["total"]), ("ab", ["ac"]), ("1990s", ["1990"]), (" x ", ["y", "x"])]


def test_docvqa_both_layouts(tmp_path, synth_dir):
    val = tmp_path / "DocVQA" / "val"
    names = copy_images(synth_dir, val / "documents", list(range(len(DOC))), ".png")
    (val / "val_v1.0_withQT.json").write_text(json.dumps({"dataset_split": "val", "data": [
        {"questionId": 500 + i, "question": f"What is field {i}?", "image": f"documents/{n}", "answers": a,
         "question_types": ["form"] if i < 2 else ["table/list"]} for i, ((_, a), n) in enumerate(zip(DOC, names))]}))
    outputs = [o for o, _ in DOC]
    bench = DocVQA()
    for data in (tmp_path / "DocVQA", val):
        loaded = bench.load_items(data)
        assert loaded.layout == "llava" and [it.qid for it in loaded.items] == [500, 501, 502, 503] and decodes(loaded)
        m = score_outputs(bench, loaded, outputs)
        assert m["value"] == pytest.approx(70.0) and m["settings"]["length"] == "normalized"
        assert {c: v["score"] for c, v in m["categories"].items()} == pytest.approx({"form": 50.0, "table/list": 90.0})
    write_parquet(tmp_path / "hub" / "datasets--lmms-lab--DocVQA" / "snapshots" / "s" / "DocVQA" /
                  "validation-00000-of-00001.parquet",
                  {"questionId": [str(500 + i) for i in range(len(DOC))],
                   "question": [f"What is field {i}?" for i in range(len(DOC))], "answers": [a for _, a in DOC]},
                  [synth_png(synth_dir, i) for i in range(len(DOC))])
    lm = bench.load_items(tmp_path / "hub")
    assert lm.layout == "lmms" and lm.items[0].prompt == "What is field 0?" + SHORT and decodes(lm)
    m = score_outputs(bench, lm, outputs, "lmms")
    assert m["value"] == pytest.approx(82.5) and m["settings"]["length"] == "raw"
