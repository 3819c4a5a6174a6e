"""POPE, GQA and TextVQA in both on-disk layouts (LLaVA playground files, lmms-eval parquet), run through
`meteor eval` with the embedded model on SynthVQA images, scores worked out by hand (see benchfix.SYNTH)."""

from __future__ import annotations

import json

import pytest
from benchfix import SHORT, SYNTH, copy_images, synth_png, write_jsonl, write_parquet

from meteor_cli.errors import ExitCode

RUN = ("eval", "--model", "tiny-synthvqa", "--batch-size", "6", "--max-new-tokens", "4", "--device", "cpu")


def _run(cli, *args):
    res = cli(*RUN, *args)
    assert res.exit_code == 0, res.output
    return res


def _body(path):
    return json.loads(path.read_text())


def _texts(path):
    return [json.loads(x)["text"] for x in path.read_text().splitlines()]


# -- POPE ----------------------------------------------------------------------------------------

# order within the file: (pos, category, label); the model answers yes, no, yes, no, no, yes
POPE = [(1, "random", "yes"), (13, "random", "yes"), (5, "popular", "no"), (3, "popular", "no"),
        (9, "adversarial", "no"), (15, "adversarial", "yes")]


def _pope_llava(synth_dir, root):
    names = copy_images(synth_dir, root / "val2014", [p for p, _, _ in POPE], ".jpg")
    write_jsonl(root / "llava_pope_test.jsonl", [
        {"question_id": i + 1, "image": n, "text": SYNTH[p][0] + SHORT, "category": c}
        for i, ((p, c, _), n) in enumerate(zip(POPE, names))])
    for cat in ("random", "popular", "adversarial"):  # labels by order within the category, as LLaVA pairs them
        write_jsonl(root / "coco" / f"coco_pope_{cat}.json", [
            {"question_id": k + 1, "image": f"{p}.jpg", "text": SYNTH[p][0], "label": lab}
            for k, (p, _, lab) in enumerate(x for x in POPE if x[1] == cat)])


def _pope_lmms(synth_dir, root):
    write_parquet(root / "data" / "test-00000-of-00001.parquet",
                  {"question_id": [str(i) for i in range(len(POPE))], "question": [SYNTH[p][0] for p, _, _ in POPE],
                   "answer": [lab for _, _, lab in POPE], "category": [c for _, c, _ in POPE]},
                  [synth_png(synth_dir, p) for p, _, _ in POPE])


def test_pope_both_layouts_both_protocols(cli, tmp_path, synth_dir):
    _pope_llava(synth_dir, tmp_path / "pope")
    _pope_lmms(synth_dir, tmp_path / "hub" / "datasets--lmms-lab-encoder--POPE" / "snapshots" / "abc")
    # random: TP+FN → P 100, R 50, F1 66.7; popular: FP+TN → F1 0; adversarial: TN+TP → F1 100
    f1 = {"random": 200 / 3, "popular": 0.0, "adversarial": 100.0}
    for data, out in (("pope", "a.json"), ("hub", "b.json")):
        _run(cli, "--benchmark", "pope", "--data", data, "--out", out)
        m = _body(tmp_path / out)["metrics"]
        assert _texts(tmp_path / out.replace(".json", ".samples.jsonl")) == ["yes", "no", "yes", "no", "no", "yes"]
        assert m["value"] == pytest.approx(sum(f1.values()) / 3)  # 55.56: mean F1 over the categories
        assert {c: v["score"] for c, v in m["categories"].items()} == pytest.approx(f1)
        assert m["overall"] == pytest.approx(400 / 6) and m["n_unparsed"] == 0  # pooled accuracy 4/6
    assert _body(tmp_path / "a.json")["data"]["layout"] == "llava"
    assert _body(tmp_path / "b.json")["data"]["layout"] == "lmms"
    # lmms pools: TP 2, FP 1, FN 1, TN 2 → F1 = 2/3; the yes-ratio comes from the ground truth (3 of 6)
    _run(cli, "--benchmark", "pope", "--data", "pope", "--protocol", "lmms", "--out", "c.json")
    m = _body(tmp_path / "c.json")["metrics"]
    assert m["value"] == pytest.approx(200 / 3) and m["breakdown"]["overall"]["yes_ratio"] == 50.0
    _run(cli, "--benchmark", "pope", "--data", "hub", "--variant", "random", "--out", "d.json")
    assert _body(tmp_path / "d.json")["metrics"]["value"] == pytest.approx(200 / 3)


def test_pope_bad_layouts_are_named(cli, tmp_path, synth_dir):
    _pope_llava(synth_dir, tmp_path / "pope")
    (tmp_path / "pope" / "coco" / "coco_pope_popular.json").unlink()
    res = cli(*RUN, "--benchmark", "pope", "--data", "pope", "--out", "x.json")
    assert res.exit_code == ExitCode.NOT_FOUND and "coco/coco_pope_popular.json" in res.stderr
    assert "llava_pope_test.jsonl" in res.stderr and "lmms-lab/POPE" in res.stderr  # the expected trees
    write_parquet(tmp_path / "bad" / "data" / "test-0.parquet", {"question_id": ["1"], "question": ["q"]},
                  [synth_png(synth_dir, 1)])
    res = cli(*RUN, "--benchmark", "pope", "--data", "bad", "--out", "x.json")
    assert res.exit_code == ExitCode.INVALID_INPUT and "'answer', 'category'" in res.stderr
    res = cli(*RUN, "--benchmark", "pope", "--data", "pope", "--variant", "rare", "--out", "x.json")
    assert res.exit_code == ExitCode.USAGE and "all, random, popular, adversarial" in res.stderr


# -- GQA -----------------------------------------------------------------------------------------

# model: circle, right, circle, bottom, c, d
GQA = [(0, "circle", "query"), (4, "right", "query"), (8, "square", "query"), (12, "top", "query"),
       (7, "C", "choose"), (11, "D", "choose")]


def test_gqa_both_layouts(cli, tmp_path, synth_dir):
    root = tmp_path / "gqa"
    names = copy_images(synth_dir, root / "data" / "images", [p for p, _, _ in GQA], ".jpg")
    write_jsonl(root / "llava_gqa_testdev_balanced.jsonl", [
        {"question_id": f"q{p}", "image": n, "text": SYNTH[p][0] + SHORT} for (p, _, _), n in zip(GQA, names)])
    ann = {f"q{p}": {"answer": a, "imageId": str(p), "types": {"structural": t, "semantic": "attr"}} for p, a, t in GQA}
    (root / "data" / "testdev_balanced_questions.json").write_text(json.dumps(ann))
    lm = tmp_path / "GQA"
    write_parquet(lm / "testdev_balanced_instructions" / "testdev-00000-of-00001.parquet",
                  {"id": [f"q{p}" for p, _, _ in GQA], "imageId": [f"n{p}" for p, _, _ in GQA],
                   "question": [SYNTH[p][0] for p, _, _ in GQA], "answer": [a for _, a, _ in GQA]})
    write_parquet(lm / "testdev_balanced_images" / "testdev-00000-of-00001.parquet",  # another order: joined on id
                  {"id": [f"n{p}" for p, _, _ in reversed(GQA)]}, [synth_png(synth_dir, p) for p, _, _ in reversed(GQA)])
    # llava keeps the ground truth as is: "c" != "C" → 2 of 6; query 2/4 = 50, choose 0 → category mean 25
    _run(cli, "--benchmark", "gqa", "--data", "gqa", "--out", "a.json")
    m = _body(tmp_path / "a.json")["metrics"]
    assert _texts(tmp_path / "a.samples.jsonl") == ["circle", "right", "circle", "bottom", "c", "d"]
    assert m["value"] == pytest.approx(200 / 6) and m["category_mean"] == 25.0
    # lmms lower-cases both sides: 4 of 6
    for data, out in (("gqa", "b.json"), ("GQA", "c.json")):
        _run(cli, "--benchmark", "gqa", "--data", data, "--protocol", "lmms", "--out", out)
        assert _body(tmp_path / out)["metrics"]["value"] == pytest.approx(400 / 6)
    assert _texts(tmp_path / "c.samples.jsonl") == ["circle", "right", "circle", "bottom", "c", "d"]
    # a question id absent from the annotations: counted, refused above --max-missing
    ann.pop("q12")
    (root / "data" / "testdev_balanced_questions.json").write_text(json.dumps(ann))
    res = cli(*RUN, "--benchmark", "gqa", "--data", "gqa", "--out", "x.json")
    assert res.exit_code == ExitCode.INVALID_INPUT and "'q12'" in res.stderr
    _run(cli, "--benchmark", "gqa", "--data", "gqa", "--max-missing", "1", "--out", "y.json")
    assert _body(tmp_path / "y.json")["data"]["n_missing"] == 1 and _body(tmp_path / "y.json")["n"] == 5


# -- TextVQA -------------------------------------------------------------------------------------

# model: circle, right, circle, bottom. Soft scores: 2 of 10 annotators → 0.6; 10 → 1; 3 ("Circle." normalises
# to circle) → (3·2/3 + 7)/10 = 0.9; 0 → 0. Mean 62.5.
TEXTVQA = [(0, ["circle"] * 2 + ["round"] * 8), (4, ["right"] * 10), (8, ["Circle."] * 3 + ["square"] * 7),
           (12, ["top"] * 10)]


def test_textvqa_both_layouts(cli, tmp_path, synth_dir):
    root = tmp_path / "textvqa"
    names = copy_images(synth_dir, root / "train_images", [p for p, _ in TEXTVQA], ".jpg")
    write_jsonl(root / "llava_textvqa_val_v051_ocr.jsonl", [  # question_id is the IMAGE id, as in LLaVA's file
        {"question_id": f"img{p}", "image": n, "text": f"{SYNTH[p][0]}\nReference OCR token: A, b{SHORT}"}
        for (p, _), n in zip(TEXTVQA, names)])
    (root / "TextVQA_0.5.1_val.json").write_text(json.dumps({"data": [
        {"image_id": f"img{p}", "question": SYNTH[p][0], "question_id": 100 + p, "answers": a} for p, a in TEXTVQA]}))
    write_parquet(tmp_path / "tv" / "data" / "validation-00000-of-00001.parquet",
                  {"question_id": [100 + p for p, _ in TEXTVQA], "question": [SYNTH[p][0] for p, _ in TEXTVQA],
                   "answers": [a for _, a in TEXTVQA], "ocr_tokens": [["A", "b"]] * len(TEXTVQA)},
                  [synth_png(synth_dir, p) for p, _ in TEXTVQA])
    for data, out in (("textvqa", "a.json"), ("tv", "b.json")):
        _run(cli, "--benchmark", "textvqa", "--data", data, "--variant", "no-ocr", "--out", out)
        body = _body(tmp_path / out)
        assert _texts(tmp_path / out.replace(".json", ".samples.jsonl")) == ["circle", "right", "circle", "bottom"]
        assert body["metrics"]["value"] == pytest.approx(62.5)
        assert body["data"]["prompt"]["ocr_tokens"] is False
    rows = [json.loads(x) for x in (tmp_path / "a.samples.jsonl").read_text().splitlines()]
    assert [r["question_id"] for r in rows] == [100, 104, 108, 112]  # the annotation's ids, not the image ids
    # with OCR tokens (the default) the prompt carries them, in both layouts alike
    for data, out in (("textvqa", "c.json"), ("tv", "d.json")):
        _run(cli, "--benchmark", "textvqa", "--data", data, "--limit", "1", "--out", out)
        row = json.loads((tmp_path / out.replace(".json", ".samples.jsonl")).read_text().splitlines()[0])
        assert row["prompt"] == f"{SYNTH[0][0]}\nReference OCR token: A, b{SHORT}"
        assert _body(tmp_path / out)["metrics"]["settings"]["ocr_tokens_in_prompt"] is True
