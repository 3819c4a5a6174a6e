"""SynthVQA scoring end to end: hand-written eval files and predictions, the per-family rules,
the mean, file errors that name file and line, and a round trip through the real generator."""

from __future__ import annotations

import json

import pytest

from meteor_cli.errors import InputNotFoundError, InvalidInputError, UsageError
from meteor_cli.eval.benchmarks import SynthVQA, score_synthvqa
from meteor_cli.registry import BENCHMARKS

# (qid, family, subcategory, ground truth, prediction, correct?) — hand-checked per family rule
ROWS = [
    # general: GQA llava, p.rstrip('.').lower() == g            → 1/2 = 50%
    ("g1", "general", "color", "red", "Red.", True),
    ("g2", "general", "count", "3", "three", False),
    # hallucination: POPE LLaVA parse (first sentence has No/no/not → "no", else "yes")
    ("h1", "hallucination", "random", "yes", "Yes, there is.", True),          # TP
    ("h2", "hallucination", "random", "no", "No", True),                       # TN
    ("h3", "hallucination", "popular", "no", "Yes", False),                    # FP
    ("h4", "hallucination", "popular", "yes", "yes", True),                    # TP
    ("h5", "hallucination", "adversarial", "no", "There is no red circle.", True),  # TN
    ("h6", "hallucination", "adversarial", "yes", "No.", False),               # FN
    # ocr: lower-case, delete whitespace                          → 3/4 = 75%
    ("o1", "ocr", "word", "c a t", "cat", True),
    ("o2", "ocr", "number", "4 0 7", "4 0 7", True),
    ("o3", "ocr", "word", "d o g", "C A T", False),
    ("o4", "ocr", "word", "s u n", "Sun", True),
    # chart: ChartQA relaxed accuracy                             → 3/4 = 75%
    ("c1", "chart", "value", "5", "5", True),
    ("c2", "chart", "tallest", "B", "b", True),        # string compare ignores case
    ("c3", "chart", "compare", "yes", "Yes.", False),  # no cleaning of the output
    ("c4", "chart", "value", "7", "7.2", True),        # 0.2/7 ≈ 2.9% ≤ 5%
]


def _write_set(root, rows=ROWS):
    ev = root / "eval"
    ev.mkdir(parents=True)
    q = [{"question_id": r[0], "image": f"images/eval/{r[0]}.png", "text": "Q?", "category": r[1],
          "subcategory": r[2]} for r in rows]
    a = [{"question_id": r[0], "text": r[3], "category": r[1], "subcategory": r[2]} for r in rows]
    (ev / "questions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in q))
    (ev / "answers.jsonl").write_text("".join(json.dumps(x) + "\n" for x in a))
    return ev


def test_registered_with_families():
    import meteor_cli.eval.benchmarks  # noqa: F401  (registration happens on import)

    cls = BENCHMARKS.get("synthvqa")
    assert cls is SynthVQA and cls().families == ("general", "hallucination", "ocr", "chart")
    assert "SynthVQA" in BENCHMARKS.entry("synthvqa").description


def test_score_hand_written_set(tmp_path):
    bench = SynthVQA()
    questions, answers = bench.load(_write_set(tmp_path))
    assert [q["question_id"] for q in questions] == [r[0] for r in ROWS] and set(answers) == {r[0] for r in ROWS}
    # outputs as plain strings and as LLaVA answers-file records
    preds = {r[0]: (r[4] if i % 2 else {"question_id": r[0], "text": r[4]}) for i, r in enumerate(ROWS)}
    rep = bench.score(answers, preds)
    fam = rep["families"]
    assert fam["general"]["accuracy"] == 50.0
    assert fam["general"]["subcategories"] == {"color": {"accuracy": 100.0, "n": 1}, "count": {"accuracy": 0.0, "n": 1}}
    # hallucination pooled: TP2 TN2 FP1 FN1 → acc 4/6; P = R = 2/3 → F1 2/3; predicted yes 3/6
    h = fam["hallucination"]
    assert h["accuracy"] == pytest.approx(200 / 3) and h["f1"] == pytest.approx(200 / 3)
    assert h["yes_ratio"] == pytest.approx(50.0)
    # random: TP1 TN1 → F1 100, acc 100; popular: TP1 FP1 → P 1/2, R 1, F1 2/3, acc 1/2;
    # adversarial: TN1 FN1 → TP 0 → F1 0, acc 1/2
    assert list(h["pope"]) == ["random", "popular", "adversarial"]
    assert (h["pope"]["random"]["f1"], h["pope"]["random"]["accuracy"]) == (100.0, 100.0)
    assert h["pope"]["popular"]["f1"] == pytest.approx(200 / 3) and h["pope"]["popular"]["accuracy"] == 50.0
    assert (h["pope"]["adversarial"]["f1"], h["pope"]["adversarial"]["accuracy"]) == (0.0, 50.0)
    assert fam["ocr"]["accuracy"] == 75.0 and fam["chart"]["accuracy"] == 75.0
    # mean over families: (50 + 66.67 + 75 + 75) / 4
    assert rep["mean"] == pytest.approx((50 + 200 / 3 + 75 + 75) / 4) and rep["value"] == rep["mean"]
    assert rep["n"] == len(ROWS) and rep["n_missing"] == 0
    # per-sample rows agree with the hand-checked column, in file order within each family
    got = {s["qid"]: s["correct"] for s in rep["per_sample"]}
    assert got == {r[0]: r[5] for r in ROWS}
    assert next(s for s in rep["per_sample"] if s["qid"] == "o1")["parsed"] == "cat"
    json.dumps(rep)


def test_load_accepts_root_or_eval_dir(tmp_path):
    _write_set(tmp_path)
    q1, a1 = SynthVQA().load(tmp_path)
    q2, a2 = SynthVQA().load(tmp_path / "eval")
    assert q1 == q2 and a1 == a2


def test_missing_and_unknown_predictions(tmp_path):
    _, answers = SynthVQA().load(_write_set(tmp_path))
    preds = {r[0]: r[4] for r in ROWS if r[1] != "chart"}
    with pytest.raises(InvalidInputError, match="4 of 16 questions have no prediction"):
        score_synthvqa(answers, preds)
    rep = score_synthvqa(answers, preds, missing="skip")  # e.g. --limit or one shard
    assert "chart" not in rep["families"] and rep["n_missing"] == 4 and rep["n"] == 12
    assert rep["mean"] == pytest.approx((50 + 200 / 3 + 75) / 3)
    with pytest.raises(InvalidInputError, match="no ground truth"):
        score_synthvqa(answers, {**preds, "zzz": "yes"}, missing="skip")
    with pytest.raises(UsageError):
        score_synthvqa(answers, preds, missing="wrong")
    with pytest.raises(InvalidInputError, match="not a string"):
        score_synthvqa(answers, {**{r[0]: r[4] for r in ROWS}, "g1": 3})


@pytest.mark.parametrize("line, message", [
    ("{not json", r"answers.jsonl:2: not valid JSON"),
    ("[1, 2]", r"answers.jsonl:2: a list, not a JSON object"),
    ('{"question_id": "x", "text": "1"}', r"answers.jsonl:2: missing field\(s\) 'category'"),
    ('{"question_id": "g1", "text": "1", "category": "general"}', r"answers.jsonl:2: question_id 'g1' repeats line 1"),
    ('{"question_id": "g9", "text": "1", "category": "poetry"}', r"category 'poetry'"),
])
def test_malformed_answers_name_file_and_line(tmp_path, line, message):
    ev = _write_set(tmp_path, ROWS[:1])
    with (ev / "answers.jsonl").open("a") as f:
        f.write(line + "\n")
    with pytest.raises(InvalidInputError, match=message):
        SynthVQA().load(tmp_path)


def test_question_and_answer_files_must_match(tmp_path):
    ev = _write_set(tmp_path, ROWS[:2])
    (ev / "answers.jsonl").write_text((ev / "answers.jsonl").read_text().splitlines()[0] + "\n")
    with pytest.raises(InvalidInputError, match="'g2' has no answer"):
        SynthVQA().load(tmp_path)


def test_missing_files_are_not_found_errors(tmp_path):
    with pytest.raises(InputNotFoundError, match="no such directory"):
        SynthVQA().load(tmp_path / "nope")
    with pytest.raises(InputNotFoundError, match="no questions.jsonl"):
        SynthVQA().load(tmp_path)
    ev = _write_set(tmp_path / "s")
    (ev / "answers.jsonl").unlink()
    with pytest.raises(InputNotFoundError, match="answers.jsonl: no such file"):
        SynthVQA().load(tmp_path / "s")


def test_generated_set_scores_100_with_ground_truth_outputs(tmp_path):
    """Round trip with the real generator: GT as output scores 100 in every family, and OCR
    answers written without spaces still count."""
    pytest.importorskip("PIL")
    from meteor_cli.data.synthvqa import generate

    generate(tmp_path / "synth", n_train=0, n_eval=16, seed=0)
    bench = SynthVQA()
    _, answers = bench.load(tmp_path / "synth")
    preds = {q: a["text"].replace(" ", "") if a["category"] == "ocr" else a["text"] for q, a in answers.items()}
    rep = bench.score(answers, preds)
    assert set(rep["families"]) == set(bench.families) and rep["mean"] == 100.0
    assert rep["families"]["hallucination"]["accuracy"] == 100.0


def test_score_from_a_llava_answers_file(tmp_path):
    _, answers = SynthVQA().load(_write_set(tmp_path))
    merged = tmp_path / "merge.jsonl"
    merged.write_text("".join(json.dumps({"question_id": r[0], "prompt": "Q?", "text": r[4], "answer_id": "x",
                                          "model_id": "m", "metadata": {}}) + "\n" for r in ROWS))
    rep = SynthVQA().score(answers, merged)
    assert rep["mean"] == pytest.approx((50 + 200 / 3 + 75 + 75) / 4)
    # two shards that overlap are caught, with the line
    merged.write_text(merged.read_text() + json.dumps({"question_id": "g1", "text": "red"}) + "\n")
    with pytest.raises(InvalidInputError, match=r"merge.jsonl:17: question_id 'g1' repeats line 1"):
        SynthVQA().score(answers, merged)
