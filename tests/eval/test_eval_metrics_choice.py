"""Golden cases for the exact-match, yes/no and multiple-choice metrics (GQA, POPE, MME,
ScienceQA, AI2D, SEED, MMBench). Every expected number is worked out by hand in a comment, from
the rules of the evaluation conventions (EVAL.md §1), so a change in any rule shows up as a
failing line."""

from __future__ import annotations

import json

import pytest

from meteor_cli.errors import InvalidInputError, UsageError
from meteor_cli.eval import metrics as M


# -- result type -------------------------------------------------------------------------------


def test_metric_result_to_dict_has_the_eval_md_fields_and_is_json():
    r = M.gqa_accuracy(["a"], ["a"], qids=["q1"])
    d = r.to_dict(samples=False)
    assert {"metric", "value", "protocol", "n", "n_failed_parse", "split", "prompt_suffix"} <= set(d)
    assert "per_sample" not in d and r.to_dict()["per_sample"] == [{"qid": "q1", "parsed": "a", "correct": True}]
    json.dumps(r.to_dict())
    assert r.summary() == "gqa_accuracy = 100.00 (llava, n=1, 0 unparsed)"


def test_bad_protocol_and_length_mismatch_are_user_errors():
    with pytest.raises(UsageError, match="protocol"):
        M.gqa_accuracy(["a"], ["a"], protocol="vlmevalkit")
    with pytest.raises(UsageError):
        M.ai2d_accuracy(["A"], [0], protocol="llava")  # AI2D only has the lmms definition
    with pytest.raises(InvalidInputError, match="predictions=2, answers=1"):
        M.gqa_accuracy(["a", "b"], ["a"])


# -- GQA ---------------------------------------------------------------------------------------


def test_gqa_both_protocols():
    preds = ["Yes.", "no", " red", "Red..", "t-shirt."]
    gts = ["yes", "No", "red", "red", "t-shirt"]
    # llava: rstrip('.').lower() on p only → "yes"✓ "no"≠"No"✗ " red"✗(space) "red"✓ "t-shirt"✓ → 3/5
    r = M.gqa_accuracy(preds, gts)
    assert r.value == pytest.approx(60.0) and r.protocol == "llava" and r.n == 5
    assert [s["parsed"] for s in r.per_sample] == ["yes", "no", " red", "red", "t-shirt"]
    # lmms: lower + delete punctuation on both → ✓ ✓ ✗(" red" keeps its space) ✓ ✓("tshirt") → 4/5
    assert M.gqa_accuracy(preds, gts, protocol="lmms").value == pytest.approx(80.0)


# -- POPE --------------------------------------------------------------------------------------

POPE_PREDS = ["Yes, there is.", "There is no dog.", "No", "I think so",           # random
              "Yes", "No.", "Not at all", "No dog. There is a cat."]              # adversarial
POPE_LABELS = ["yes", "yes", "no", "no", "yes", "no", "no", "no"]
POPE_CATS = ["random"] * 4 + ["adversarial"] * 4


def test_pope_llava_word_parse():
    assert M.parse_pope_llava("Yes, there is.") == "yes"
    assert M.parse_pope_llava("There is no dog.") == "no"
    assert M.parse_pope_llava("Not at all") == "yes"  # "Not" (capital) is not a no-word
    assert M.parse_pope_llava("There is a cat. No dog.") == "yes"  # only the first sentence counts
    assert M.parse_pope_llava("No dog. There is a cat.") == "no"
    assert M.parse_pope_llava("no,") == "no"  # commas are deleted before splitting
    assert M.parse_pope_llava("yes\nno") == "yes"  # words split on " " only


def test_pope_llava_per_category_and_headline():
    r = M.pope_metrics(POPE_PREDS, POPE_LABELS, categories=POPE_CATS)
    # random: parsed yes,no,no,yes vs yes,yes,no,no → TP1 FN1 TN1 FP1: P=R=F1=1/2, acc 2/4, yes 2/4
    rnd = r.breakdown["categories"]["random"]
    assert (rnd["tp"], rnd["fn"], rnd["tn"], rnd["fp"]) == (1, 1, 1, 1)
    assert rnd["f1"] == pytest.approx(50.0) and rnd["accuracy"] == pytest.approx(50.0)
    assert rnd["yes_ratio"] == pytest.approx(50.0)
    # adversarial: parsed yes,no,yes("Not"),no vs yes,no,no,no → TP1 TN2 FP1 FN0:
    # P=1/2, R=1, F1=2·(1/2)·1/(3/2)=2/3, acc 3/4, yes_ratio 2/4
    adv = r.breakdown["categories"]["adversarial"]
    assert adv["f1"] == pytest.approx(200 / 3) and adv["accuracy"] == pytest.approx(75.0)
    assert adv["precision"] == pytest.approx(50.0) and adv["recall"] == pytest.approx(100.0)
    assert adv["yes_ratio"] == pytest.approx(50.0)
    # headline (LLaVA-1.5): mean F1 over categories = (50 + 66.67)/2
    assert r.metric == "pope_f1" and r.value == pytest.approx((50 + 200 / 3) / 2)
    # pooled: TP2 FP2 TN3 FN1 → P=1/2, R=2/3, F1=4/7, acc 5/8
    assert r.breakdown["overall"]["f1"] == pytest.approx(400 / 7)
    assert r.breakdown["overall"]["accuracy"] == pytest.approx(62.5)
    # "I think so" and "Not at all" have no yes/no word: counted as failed parses (scored "yes")
    assert r.n_failed_parse == 2
    # accuracy headline: mean of 50 and 75
    assert M.pope_metrics(POPE_PREDS, POPE_LABELS, categories=POPE_CATS, headline="accuracy").value == 62.5


def test_pope_lmms_exact_match_and_pooling():
    r = M.pope_metrics(POPE_PREDS, POPE_LABELS, categories=POPE_CATS, protocol="lmms")
    # lower().strip() == label: only "no"(row 3) and "yes"(row 5) are exactly yes/no, both right;
    # "no." and "yes, there is." are wrong → accuracy 2/8
    assert r.breakdown["overall"]["accuracy"] == pytest.approx(25.0)
    # P/R count only exact yes/no outputs: TP1 TN1 → P=R=F1=1 — the pooled F1 headline is 100
    assert r.value == pytest.approx(100.0) and r.settings["aggregation"] == "pooled"
    assert r.n_failed_parse == 6
    # yes-ratio from GT (3 of 8 labels are yes), not from the predictions (1 exact "yes" of 8)
    assert r.breakdown["overall"]["yes_ratio"] == pytest.approx(37.5)
    assert r.breakdown["overall"]["yes_ratio_from_predictions"] == pytest.approx(12.5)
    assert "ground_truth" in r.settings["yes_ratio_source"]


def test_pope_yes_ratio_source_differs_between_protocols():
    # a model that always says "yes" on a balanced set: llava yes-ratio 100%, lmms (GT) 50%
    preds, labels = ["yes"] * 4, ["yes", "no", "yes", "no"]
    assert M.pope_metrics(preds, labels).breakdown["overall"]["yes_ratio"] == 100.0
    assert M.pope_metrics(preds, labels, protocol="lmms").breakdown["overall"]["yes_ratio"] == 50.0


def test_pope_empty_denominators_give_zero():
    # all "no" on positives: TP=FP=0 → precision 0/0 → 0 (LLaVA's script would raise)
    r = M.pope_metrics(["no", "no"], ["yes", "yes"])
    assert r.breakdown["overall"]["precision"] == 0.0 and r.value == 0.0


# -- MME ---------------------------------------------------------------------------------------


def test_mme_parse_rules():
    assert M.parse_mme("Yes, it is.") == "yes"
    assert M.parse_mme("Not sure") == "no"  # "no" is in the 4-char prefix "not "
    assert M.parse_mme("  yes") == "other" and M.parse_mme("  yes", "lmms") == "yes"  # lmms strips
    assert M.parse_mme("y") == "other" and M.parse_mme("n", "lmms") == "no"
    assert M.parse_mme("I don't know") == "other"


MME = dict(
    predictions=["Yes", "No, there isn't", "yes.", "I don't think so", "y", "  no"],
    answers=["Yes", "No", "Yes", "No", "Yes", "No"],
    subtasks=["existence"] * 4 + ["code_reasoning"] * 2,
    image_ids=["1.jpg", "1.jpg", "2.jpg", "2.jpg", "c.png", "c.png"],
)


def test_mme_scores_llava():
    r = M.mme_scores(**MME)
    # existence: ✓ ✓ | ✓("yes." prefix) ✗(other) → acc 3/4, acc+ 1/2 → 75 + 50 = 125
    ex = r.breakdown["subtasks"]["existence"]
    assert (ex["acc"], ex["acc_plus"], ex["score"]) == (75.0, 50.0, 125.0)
    # code_reasoning: "y" → other ✗, "  no"[:4] contains "no" ✓ → acc 1/2, acc+ 0 → 50
    assert r.breakdown["subtasks"]["code_reasoning"]["score"] == 50.0
    assert r.metric == "mme_perception" and r.value == 125.0
    assert (r.breakdown["cognition"], r.breakdown["total"]) == (50.0, 175.0)
    assert r.n_failed_parse == 2


def test_mme_scores_lmms():
    r = M.mme_scores(**MME, protocol="lmms")
    # existence unchanged (125); code_reasoning: "y" → yes ✓, "no" ✓ → 100 + 100 = 200
    assert r.value == 125.0 and r.breakdown["cognition"] == 200.0 and r.n_failed_parse == 1


def test_mme_rejects_unpaired_images_and_unknown_subtasks():
    with pytest.raises(InvalidInputError, match="has 1 question"):
        M.mme_scores(["yes"], ["yes"], ["existence"], ["1.jpg"])
    with pytest.raises(InvalidInputError, match="unknown subtask"):
        M.mme_scores(["yes", "no"], ["yes", "no"], ["existance"] * 2, ["1.jpg"] * 2)


# -- ScienceQA, AI2D, SEED ----------------------------------------------------------------------

SQA_PREDS = ["A", "B. cat", "B.cat", "The answer is C.", "The answer is C. The answer is D.", "b", "E"]
SQA_ANSWERS = [0, 1, 1, 2, 3, 1, "E"]


def test_scienceqa_llava():
    r = M.scienceqa_accuracy(SQA_PREDS, SQA_ANSWERS)
    # parsed A, B, FAILED("B.cat": no ". "), C, FAILED(two "The answer is"), FAILED("b"), E
    assert [s["parsed"] for s in r.per_sample] == ["A", "B", None, "C", None, None, "E"]
    assert r.value == pytest.approx(400 / 7) and r.n_failed_parse == 3  # 4 of 7 right
    assert M.extract_scienceqa("The answer is B!") == "B"  # the regex's final "." matches any char


def test_scienceqa_lmms():
    r = M.scienceqa_accuracy(SQA_PREDS, SQA_ANSWERS, protocol="lmms")
    # A ✓, "B." ✓, "B." ✓, "The..." ✗, ✗, "b" (case-insensitive) ✓, E ✓ → 5/7
    assert r.value == pytest.approx(500 / 7) and r.n_failed_parse == 2


def test_ai2d_filter_then_exact_match_ignoring_case_and_punctuation():
    preds = ["  C. leaf", "(c)", "C is right", "B", "b."]
    # parsed C, "(c)"→"c", "c is right"✗, B, "b." (filter needs upper case) → "b" → 4/5
    r = M.ai2d_accuracy(preds, [2, 2, 2, 1, "B"])
    assert r.value == pytest.approx(80.0) and r.settings == {"variant": "ai2d"}
    assert [s["parsed"] for s in r.per_sample] == ["C", "(c)", "C is right", "B", "b."]


def test_seed_both_protocols_and_question_types():
    preds, gts = ["B", " B", "b", "B. dog"], ["B"] * 4
    r = M.seed_accuracy(preds, gts, question_types=[1, 1, 2, 2])
    # llava: exact string → only "B" → 25%; type 1: 1/2, type 2: 0/2
    assert r.value == 25.0
    assert r.breakdown["question_types"] == {"1": {"accuracy": 50.0, "n": 2}, "2": {"accuracy": 0.0, "n": 2}}
    # lmms: strip, first char, ignore case → all four
    assert M.seed_accuracy(preds, gts, protocol="lmms").value == 100.0


# -- MMBench -----------------------------------------------------------------------------------

OPTS = {"A": "cat", "B": "dog", "C": "fish"}


@pytest.mark.parametrize("text, expected", [
    ("B", ("B", "letter")),
    ("(B)", ("B", "letter")),
    ("Answer:C", ("C", "letter")),            # ":" is a separator → tokens Answer, C
    ("A", ("A", "letter")),                   # one token: not an article
    ("A and B", (None, "failed")),            # two letters; no text; no static pattern
    ("A cat or a fish", (None, "failed")),    # "A" with >3 tokens may be the article; two texts
    ("I think it is a dog", ("B", "text")),   # no capital letter token; one option text
    ("The answer is A", ("A", "static")),     # 4 tokens → article rule; no text; "answer is X"
    ("B) a dog or a cat", ("B", "letter")),
    ("A. the cat or the dog", ("A", "static")),  # article rule, two texts, leading "A."
])
def test_mmbench_extractor(text, expected):
    assert M.extract_mmbench(text, OPTS) == expected


def test_mmbench_circular_eval():
    opts = [{"A": "x", "B": "y"}, {"A": "y", "B": "x"}] * 2 + [{"A": "p", "B": "q", "C": "r"}]
    preds = ["A", "B", "A", "I am not sure", "C"]
    answers = ["A", "B", "A", "B", "C"]
    indices = [1, 1_000_001, 2, 1_000_002, 3]
    r = M.mmbench_circular_eval(preds, answers, opts, indices, categories=["ocr", "ocr", "ocr", "ocr", "count"])
    # Q1: both rotations right → hit; Q2: rotation unparsable → miss; Q3 (no copies) right → hit
    assert r.n == 3 and r.value == pytest.approx(200 / 3)
    assert r.breakdown["categories"] == {"ocr": {"accuracy": 50.0, "n": 2}, "count": {"accuracy": 100.0, "n": 1}}
    assert r.breakdown["single_pass_accuracy"] == pytest.approx(80.0)  # 4 of 5 rows right
    assert r.n_failed_parse == 1 and r.per_sample[3]["method"] == "failed"


def test_mmbench_ignores_empty_options():
    # D is NaN (pandas' empty cell): "D" is not a valid choice, and "nan" is no option text
    opts = {"A": "cat", "B": "dog", "C": "", "D": float("nan")}
    assert M.extract_mmbench("D", opts) == (None, "failed")
    assert M.extract_mmbench("nan or dog", opts) == ("B", "text")
