"""`--benchmark llava`: any LLaVA-format question file + answer file, scored with --metric, per category."""

from __future__ import annotations

import json
import shutil

import pytest
from benchfix import SYNTH, synth_image

from meteor_cli.errors import ExitCode

SHORT = "\nAnswer the question using a single word or phrase."
RUN = ("eval", "--model", "tiny-synthvqa", "--benchmark", "llava", "--batch-size", "6", "--max-new-tokens", "4",
       "--device", "cpu")


def _write_set(synth_dir, root, picks, answers, categories, *, image_dir="imgs"):
    (root / image_dir).mkdir(parents=True, exist_ok=True)
    qs, ans = [], []
    for i, pos in enumerate(picks):
        shutil.copy(synth_image(synth_dir, pos), root / image_dir / f"{pos}.png")
        qs.append({"question_id": i, "image": f"{image_dir}/{pos}.png", "text": SYNTH[pos][0] + SHORT})
        ans.append({"question_id": i, "answer": answers[i], "category": categories[i]})
    (root / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qs))
    (root / "answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in ans))


def _metrics(path):
    return json.loads(path.read_text())["metrics"]


def test_yesno_and_exact_with_categories(cli, tmp_path, synth_dir):
    # model says yes, yes, no, no, no, yes; the 4th ground truth is flipped to "yes"
    _write_set(synth_dir, tmp_path / "yn", [1, 5, 9, 13, 3, 15], ["yes", "yes", "no", "yes", "no", "yes"],
               ["pope"] * 4 + ["chart"] * 2)
    res = cli(*RUN, "--data", "yn/questions.jsonl", "--metric", "yesno", "--out", "yn.json")
    assert res.exit_code == 0, res.output
    m = _metrics(tmp_path / "yn.json")
    # 5 of 6 right; pope 3/4 = 75, chart 2/2 = 100, category mean 87.5
    assert m["value"] == pytest.approx(500 / 6) and m["overall"] == pytest.approx(500 / 6)
    assert m["categories"] == {"pope": {"score": 75.0, "n": 4}, "chart": {"score": 100.0, "n": 2}}
    assert m["category_mean"] == 87.5 and m["n_unparsed"] == 0
    # yes-class: TP 3, FP 0, FN 1 → precision 100, recall 75, F1 = 2·1·0.75/1.75
    assert m["breakdown"]["overall"]["f1"] == pytest.approx(100 * 1.5 / 1.75)
    rows = [json.loads(x) for x in (tmp_path / "yn.samples.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == ["yes", "yes", "no", "no", "no", "yes"]
    assert [r["correct"] for r in rows] == [True, True, True, False, True, True]

    # exact: circle✓ right✓ circle≠square ✗ bottom≠top ✗ c=C✓ d=D✓ → 4/6; answers in a separate file
    _write_set(synth_dir, tmp_path / "ex", [0, 4, 8, 12, 7, 11], ["Circle", "right", "square", "top", "C", "D."],
               ["general"] * 4 + ["chart"] * 2)
    (tmp_path / "ex" / "answers.jsonl").rename(tmp_path / "gt.jsonl")
    res = cli(*RUN, "--data", "ex/questions.jsonl", "--answers", "gt.jsonl", "--metric", "exact", "--out", "ex.json")
    assert res.exit_code == 0, res.output
    m = _metrics(tmp_path / "ex.json")
    assert m["value"] == pytest.approx(400 / 6) and m["categories"]["general"]["score"] == 50.0
    assert m["categories"]["chart"]["score"] == 100.0 and m["category_mean"] == 75.0


def test_bad_inputs_are_named(cli, tmp_path, synth_dir):
    _write_set(synth_dir, tmp_path / "s", [1, 5], ["yes", "yes"], ["a", "b"])
    res = cli(*RUN, "--data", "s/questions.jsonl", "--metric", "bleu", "--out", "x.json")
    assert res.exit_code == ExitCode.USAGE and "exact, vqa, relaxed, anls, yesno, choice" in res.stderr
    # a question without an answer: refused by default, evaluated without it under --max-missing
    (tmp_path / "s" / "answers.jsonl").write_text(json.dumps({"question_id": 0, "answer": "yes"}) + "\n")
    res = cli(*RUN, "--data", "s/questions.jsonl", "--metric", "yesno", "--out", "x.json")
    assert res.exit_code == ExitCode.INVALID_INPUT and "1 question(s) have no ground truth" in res.stderr
    res = cli(*RUN, "--data", "s/questions.jsonl", "--metric", "yesno", "--max-missing", "1", "--out", "x.json")
    assert res.exit_code == 0 and json.loads((tmp_path / "x.json").read_text())["n"] == 1
    # an image path leaving the image root is refused, naming it
    q = json.loads((tmp_path / "s" / "questions.jsonl").read_text().splitlines()[0])
    q["image"] = "../../etc/passwd"
    (tmp_path / "s" / "questions.jsonl").write_text(json.dumps(q) + "\n")
    res = cli(*RUN, "--data", "s/questions.jsonl", "--metric", "yesno", "--out", "x.json")
    assert res.exit_code == ExitCode.INVALID_INPUT and "outside the image root" in res.stderr
    # an unreadable image is skipped and counted, not fatal
    _write_set(synth_dir, tmp_path / "u", [1, 5], ["yes", "yes"], ["a", "a"])
    (tmp_path / "u" / "imgs" / "5.png").write_bytes(b"not a png")
    res = cli(*RUN, "--data", "u/questions.jsonl", "--metric", "yesno", "--out", "u.json")
    assert res.exit_code == 0, res.output
    m = _metrics(tmp_path / "u.json")
    assert m["n_skipped"] == 1 and m["n"] == 1 and m["value"] == 100.0
