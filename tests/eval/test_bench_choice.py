"""ScienceQA-IMG, MMBench (CircularEval), SEED-Bench-image and AI2D in both on-disk layouts.

Each fixture is written by the test (LLaVA playground / official files, lmms-eval parquet with pyarrow,
small SynthVQA PNGs), loaded through the benchmark module, and scored on recorded outputs
(benchfix.score_outputs) against values worked out by hand from the reference scorers' rules.
"""

from __future__ import annotations

import base64
import csv
import json

import pytest
from benchfix import copy_images, decodes, score_outputs, synth_png, write_jsonl, write_parquet

from meteor_cli.eval.benchmarks.ai2d import AI2D
from meteor_cli.eval.benchmarks.mmbench import MMBench
from meteor_cli.eval.benchmarks.scienceqa import ScienceQA
from meteor_cli.eval.benchmarks.seedbench import SeedBench

MC = "\nAnswer with the option's letter from the given choices directly."


# -- ScienceQA-IMG ---------------------------------------------------------------------------------

# id → (image?, split, choices, answer index, subject, hint, recorded output)
SQA = {"1": (True, "test", ["cat", "dog"], 0, "natural science", "", "A"),
       "2": (True, "test", ["red", "blue", "green"], 2, "natural science", "Look.", "The answer is C."),
       "3": (True, "test", ["up", "down"], 1, "social science", "", "b"),
       "4": (True, "test", ["cat", "dog"], 1, "social science", "", "B. dog"),
       "5": (False, "test", ["x", "y"], 0, "language science", "", None),   # no image: not in IMG
       "6": (True, "val", ["x", "y"], 0, "language science", "", None)}     # not in the test split


def _sqa_llava(synth_dir, root):
    for qid, (img, *_rest) in SQA.items():
        if img:
            (root / "images" / "test" / qid).mkdir(parents=True)
            (root / "images" / "test" / qid / "image.png").write_bytes(synth_png(synth_dir, int(qid)))
    recs = []
    for qid, (img, _, ch, _, _, hint, _) in SQA.items():
        lines = "\n".join(f"{'ABCDE'[i]}. {c}" for i, c in enumerate(ch))
        value = ("<image>\n" if img else "") + f"Context: {hint or 'N/A'}\nWhich one?\n{lines}"
        recs.append({"id": qid, **({"image": f"{qid}/image.png"} if img else {}),
                     "conversations": [{"from": "human", "value": value}, {"from": "gpt", "value": "A"}]})
    (root / "llava_test_CQM-A.json").write_text(json.dumps(recs))
    (root / "problems.json").write_text(json.dumps({q: {"answer": a, "choices": ch, "subject": s}
                                                    for q, (_, _, ch, a, s, _, _) in SQA.items()}))
    (root / "pid_splits.json").write_text(json.dumps({"test": [q for q, v in SQA.items() if v[1] == "test"],
                                                      "val": ["6"]}))


def test_scienceqa_both_layouts(tmp_path, synth_dir):
    _sqa_llava(synth_dir, tmp_path / "scienceqa")
    keep = [q for q, v in SQA.items() if v[0] and v[1] == "test"]
    outputs = [SQA[q][6] for q in keep]
    bench = ScienceQA()
    loaded = bench.load_items(tmp_path / "scienceqa")
    assert loaded.layout == "llava" and [it.qid for it in loaded.items] == keep and decodes(loaded)
    assert loaded.items[0].prompt == "Context: N/A\nWhich one?\nA. cat\nB. dog" + MC
    # llava: A ✓, "The answer is C." ✓, "b" FAILED, "B. dog" ✓ → 75; natural 2/2, social 1/2
    m = score_outputs(bench, loaded, outputs)
    assert m["value"] == 75.0 and m["n_unparsed"] == 1 and m["n"] == 4
    assert {c: v["score"] for c, v in m["categories"].items()} == {"natural science": 100.0, "social science": 50.0}
    write_parquet(tmp_path / "hub" / "datasets--lmms-lab--ScienceQA" / "snapshots" / "r1" / "ScienceQA-IMG" /
                  "test-00000-of-00001.parquet",
                  {"question": ["Which one?"] * 4, "hint": [SQA[q][5] for q in keep],
                   "choices": [SQA[q][2] for q in keep], "answer": [SQA[q][3] for q in keep],
                   "subject": [SQA[q][4] for q in keep]}, [synth_png(synth_dir, int(q)) for q in keep])
    lm = bench.load_items(tmp_path / "hub")
    assert lm.layout == "lmms" and len(lm.items) == 4 and decodes(lm)
    assert lm.items[1].prompt == "Context: Look.\nWhich one?\nA. red\nB. blue\nC. green" + MC
    assert lm.items[0].prompt == "Which one?\nA. cat\nB. dog" + MC  # no hint, no Context line
    # lmms: "A" ✓, "The answer is C." ✗ (neither a letter nor "X."), "b" ✓, "B. dog" ✓ → 75; natural 1/2, social 2/2
    m = score_outputs(bench, lm, outputs, "lmms")
    assert m["value"] == 75.0 and m["protocol"] == "lmms"
    assert {c: v["score"] for c, v in m["categories"].items()} == {"natural science": 50.0, "social science": 100.0}
    # llava rules on the lmms layout: the same answers as the llava layout
    assert score_outputs(bench, lm, outputs)["value"] == 75.0


# -- MMBench ---------------------------------------------------------------------------------------

def _b64(synth_dir, pos):
    return base64.b64encode(synth_png(synth_dir, pos)).decode()


def test_mmbench_generated_rotations_llava(tmp_path, synth_dir):
    root = tmp_path / "mmbench"
    root.mkdir()
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image"]
    rows = [[0, "Which bar is the tallest?", "nan", "bar A", "bar B", "bar C", "", "C", "attribute", "perception",
             _b64(synth_dir, 7)],
            [1, "Is there a red circle?", "Look closely.", "yes", "no", "", "", "A", "existence", "perception",
             _b64(synth_dir, 5)]]
    with (root / "mmbench_dev_20230712.tsv").open("w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(header)
        w.writerows(rows)
    bench = MMBench()
    loaded = bench.load_items(root)
    # no circular rows in the TSV: 3 + 2 rotations generated, option k moved to letter k - r
    assert [it.qid for it in loaded.items] == [0, 1_000_000, 2_000_000, 1, 1_000_001]
    assert [it.answer for it in loaded.items] == ["C", "B", "A", "A", "B"]
    assert [it.group for it in loaded.items] == [0, 0, 0, 1, 1] and decodes(loaded)
    assert loaded.items[1].prompt == "Which bar is the tallest?\nA. bar B\nB. bar C\nC. bar A" + MC
    assert loaded.items[4].prompt == "Look closely.\nIs there a red circle?\nA. no\nB. yes" + MC
    assert "generated" in loaded.prompt["circular"]
    # question 0 right in all 3 rotations; question 1 wrong in its second → CircularEval 50, single pass 4/5
    m = score_outputs(bench, loaded, ["C", "B", "A", "A", "A"])
    assert m["value"] == 50.0 and m["n"] == 5 and m["n_questions"] == 2
    assert m["breakdown"]["single_pass_accuracy"] == 80.0
    assert {c: v["score"] for c, v in m["categories"].items()} == {"attribute": 100.0, "existence": 0.0}
    # every rotation right → 100; an unreadable rotation leaves its question out, counted
    assert score_outputs(bench, loaded, ["C", "B", "A", "A", "B"])["value"] == 100.0
    rows_ = [{**it.record(), "text": t} for it, t in zip(loaded.items, ["C", "B", "A", "A", "B"])]
    m = bench.score_rows(rows_[:2] + rows_[3:], protocol="llava")
    assert m["n_incomplete_questions"] == 1 and m["n_questions"] == 1 and m["value"] == 100.0


def test_mmbench_rotations_from_parquet(tmp_path, synth_dir):
    # lmms-lab/MMBench en/dev holds the circular copies itself (index + 1e6): used as they are
    write_parquet(tmp_path / "MMBench" / "en" / "dev-00000-of-00001.parquet",
                  {"index": [0, 1_000_000, 1, 1_000_001],
                   "question": ["Which bar is the tallest?"] * 2 + ["Is there a red circle?"] * 2,
                   "hint": [None, None, "Look closely.", "Look closely."],
                   "A": ["bar A", "bar B", "yes", "no"], "B": ["bar B", "bar C", "no", "yes"],
                   "C": ["bar C", "bar A", None, None], "D": [None] * 4, "answer": ["C", "B", "A", "B"],
                   "category": ["attribute"] * 2 + ["existence"] * 2, "L2-category": ["perception"] * 4},
                  [synth_png(synth_dir, 7)] * 2 + [synth_png(synth_dir, 5)] * 2)
    bench = MMBench()
    loaded = bench.load_items(tmp_path / "MMBench")
    assert loaded.layout == "lmms" and [it.qid for it in loaded.items] == [0, 1_000_000, 1, 1_000_001]
    assert loaded.prompt["circular"] == "rotations from the data" and decodes(loaded)
    assert loaded.items[2].prompt == ("Look closely. Is there a red circle? There are several options:\nA. yes\nB. no\n"
                                      + MC)
    # "C" letter ✓; "it is bar c" has no upper-case letter token but only option B's text ✓ ("bar C" would
    # read the lone token C as the letter); "A" ✓; "no" is option A's text, answer B ✗ → question 1 wrong
    m = score_outputs(bench, loaded, ["C", "it is bar c", "A", "no"], "lmms")
    assert m["value"] == 50.0 and m["n_unparsed"] == 0
    assert [s["parsed"] for s in m["per_sample"]] == ["C", "B", "A", "A"]
    assert loaded.items[0].subcategory == "perception"


# -- SEED-Bench image --------------------------------------------------------------------------------

# (question_id, type id, answer, recorded output): llava exact → 1/4; lmms first char, any case → 3/4
SEED = [(101, 1, "B", "B"), (102, 1, "A", "a"), (103, 9, "C", "C. dog"), (104, 9, "D", "A")]


def _seed_text(qid):
    return f"Question {qid}?\nA. cat\nB. dog\nC. fish\nD. bird" + MC


def test_seedbench_both_layouts(tmp_path, synth_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "seed_bench"
    names = copy_images(synth_dir, root / "SEED-Bench-image", [0, 1, 3, 4, 5], ".jpg")
    write_jsonl(root / "llava-seed-bench.jsonl",
                [{"question_id": q, "image": f"SEED-Bench-image/{n}", "text": _seed_text(q)}
                 for (q, *_), n in zip(SEED, names)]
                + [{"question_id": 900, "image": f"SEED-Bench-image/{names[4]}", "text": _seed_text(900)}])
    (root / "SEED-Bench.json").write_text(json.dumps({
        "question_type": {"Scene Understanding": 1, "Text Understanding": 9, "Action Recognition": 10},
        "questions": [{"question_id": str(q), "answer": a, "question_type_id": t, "data_type": "image"}
                      for q, t, a, _ in SEED]
        + [{"question_id": "900", "answer": "A", "question_type_id": 10, "data_type": "video"}]}))
    outputs = [o for *_, o in SEED]
    bench = SeedBench()
    loaded = bench.load_items(root)
    assert [it.qid for it in loaded.items] == [101, 102, 103, 104] and decodes(loaded)  # the video question is out
    m = score_outputs(bench, loaded, outputs)
    assert m["value"] == 25.0
    assert {c: v["score"] for c, v in m["categories"].items()} == {"Scene Understanding": 50.0,
                                                                   "Text Understanding": 0.0}
    assert score_outputs(bench, loaded, outputs, "lmms")["value"] == 75.0
    # lmms parquet: the image column is a LIST of images (the first is used); video rows are left out
    png = [synth_png(synth_dir, p) for p in (0, 1, 3, 4, 5)]
    table = pa.table({"question_id": [str(q) for q, *_ in SEED] + ["900"],
                      "question": [f"Question {q}?" for q, *_ in SEED] + ["Question 900?"],
                      "choice_a": ["cat"] * 5, "choice_b": ["dog"] * 5, "choice_c": ["fish"] * 5,
                      "choice_d": ["bird"] * 5, "answer": [a for _, _, a, _ in SEED] + ["A"],
                      "data_type": ["image"] * 4 + ["video"], "question_type_id": [t for _, t, _, _ in SEED] + [10],
                      "image": [[{"bytes": b, "path": "x.png"}] for b in png]})
    (tmp_path / "SEED-Bench" / "data").mkdir(parents=True)
    pq.write_table(table, tmp_path / "SEED-Bench" / "data" / "test-00000-of-00001.parquet", row_group_size=2)
    lm = bench.load_items(tmp_path / "SEED-Bench")
    assert lm.layout == "lmms" and len(lm.items) == 4 and decodes(lm)
    assert [it.prompt for it in lm.items] == [_seed_text(q) for q, *_ in SEED]  # the same prompt as LLaVA's file
    m = score_outputs(bench, lm, outputs, "lmms")
    assert m["value"] == 75.0 and m["categories"]["Text Understanding"]["score"] == 50.0
    assert score_outputs(bench, lm, outputs)["value"] == 25.0


# -- AI2D --------------------------------------------------------------------------------------------

# (image, question, options, answer index, output): "C. a leaf" ✓, "(b)" ✓, "B is right" ✗, "A" ✗ → 50
AI2D_QS = [("0.png", "Which part is green?", ["root", "stem", "leaf"], 2, "C. a leaf"),
           ("0.png", "Which part is lowest?", ["leaf", "root"], 1, "(b)"),
           ("1.png", "What eats the grass?", ["hawk", "rabbit"], 1, "B is right"),
           ("1.png", "What comes last?", ["egg", "larva", "pupa", "adult"], 3, "A")]


def test_ai2d_both_layouts(tmp_path, synth_dir):
    root = tmp_path / "ai2d"
    for name, pos in (("0.png", 0), ("1.png", 1), ("2.png", 3)):
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "images" / name).write_bytes(synth_png(synth_dir, pos))
    (root / "questions").mkdir()
    for name in ("0.png", "1.png", "2.png"):
        qs = {q: {"answerTexts": o, "correctAnswer": a, "questionId": f"{name}-{i}", "abcLabel": False}
              for i, (n, q, o, a, _) in enumerate(AI2D_QS) if n == name} or {
            "Not in the test split?": {"answerTexts": ["a", "b"], "correctAnswer": 0, "questionId": "2.png-0"}}
        (root / "questions" / f"{name}.json").write_text(json.dumps({"imageName": name, "questions": qs}))
    (root / "ai2d_test_ids.csv").write_text("0\n1\n")
    outputs = [o for *_, o in AI2D_QS]
    bench = AI2D()
    loaded = bench.load_items(root)
    assert loaded.layout == "llava" and len(loaded.items) == 4 and decodes(loaded)
    assert loaded.items[0].prompt == "Which part is green?\nA. root\nB. stem\nC. leaf" + MC
    for protocol in ("llava", "lmms"):  # LLaVA has no AI2D scorer: lmms' rule either way, labelled
        m = score_outputs(bench, loaded, outputs, protocol)
        assert m["value"] == 50.0 and m["protocol"] == "lmms"
    write_parquet(tmp_path / "hub" / "datasets--lmms-lab-encoder--ai2d" / "snapshots" / "r" / "data" /
                  "test-00000-of-00001.parquet",
                  {"question": [q for _, q, *_ in AI2D_QS], "options": [o for _, _, o, _, _ in AI2D_QS],
                   "answer": [str(a) for *_, a, _ in AI2D_QS]}, [synth_png(synth_dir, 0)] * 4)
    lm = bench.load_items(tmp_path / "hub")
    assert lm.layout == "lmms" and [it.prompt for it in lm.items] == [it.prompt for it in loaded.items]
    assert decodes(lm) and score_outputs(bench, lm, outputs)["value"] == 50.0
