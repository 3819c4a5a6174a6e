"""bench/synthvqa_reading.py builds true reading questions and summarises answer collapse."""

from __future__ import annotations

import json

from meteor_cli.data.synthvqa import generate, make_item, spell


def test_reading_questions_are_true_and_collapse_is_reported(tmp_path, bench_module):
    mod = bench_module("synthvqa_reading")
    generate(tmp_path / "sv", n_train=0, n_eval=12, seed=5)
    assert mod.build(tmp_path / "sv", tmp_path / "out", 2) == 2
    qs = [json.loads(x) for x in (tmp_path / "out" / "set" / "eval" / "questions.jsonl").open()]
    ans = {r["question_id"]: r["text"] for r in map(json.loads, (tmp_path / "out" / "set" / "eval" / "answers.jsonl").open())}
    assert len(qs) == 10 and [q["question_id"].split("/")[1] for q in qs[:5]] == list(mod.KINDS)
    for q in qs:
        base, kind = q["question_id"].split("/")
        text = make_item(5, "eval", int(base.rsplit("-", 1)[1])).meta["text"]
        want = {"full": spell(text), "first": text[0], "second": text[1], "last": text[-1], "length": str(len(text))}
        assert ans[q["question_id"]] == want[kind] and (tmp_path / "sv" / q["image"]).is_file()
    # A model that answers one constant: one distinct answer, top share 100 %.
    with (tmp_path / "out" / "samples.jsonl").open("w") as f:
        for q in qs:
            f.write(json.dumps({"question_id": q["question_id"], "text": "4", "correct": ans[q["question_id"]] == "4"}) + "\n")
    rows = mod.report(tmp_path / "out")
    first = [r for k, r in rows.items() if k.startswith("first/")]
    assert all(r["distinct_answers"] == 1 and r["top_answer"] == "4" and r["top_share"] == 100.0 for r in first)
    assert sum(r["n"] for r in rows.values()) == 10
