"""bench/ocr_probe.py's summary, and bench/synthvqa_reading.py on OCR-only ``--ocr-style large`` sets."""

from __future__ import annotations

import json

import pytest

from meteor_cli.data.synthvqa import SynthConfig, generate, make_item, spell


def test_reading_set_of_an_ocr_only_large_set_is_true_and_the_probe_summarises_it(tmp_path, bench_module):
    reading, probe = bench_module("synthvqa_reading"), bench_module("ocr_probe")
    cfg = SynthConfig(ocr_style="large", families=("ocr",))
    generate(tmp_path / "sv", n_train=0, n_eval=10, seed=8, cfg=cfg)
    assert reading.build(tmp_path / "sv", tmp_path / "out", 10) == 10
    qs = [json.loads(x) for x in (tmp_path / "out" / "set" / "eval" / "questions.jsonl").read_text().splitlines()]
    answers = (tmp_path / "out" / "set" / "eval" / "answers.jsonl").read_text().splitlines()
    ans = {r["question_id"]: r["text"] for r in map(json.loads, answers)}
    texts = {i: make_item(8, "eval", i, cfg).meta["text"] for i in range(10)}
    assert {len(t) for t in texts.values()} >= {1, 3}  # one-glyph texts have no "second" question
    assert len(qs) == sum(5 if len(t) >= 2 else 4 for t in texts.values())
    for q in qs:
        base, kind = q["question_id"].split("/")
        text = texts[int(base.rsplit("-", 1)[1])]
        want = {"full": spell(text), "first": text[0], "last": text[-1], "length": str(len(text))}
        if len(text) >= 2:
            want["second"] = text[1]
        assert ans[q["question_id"]] == want[kind]
    # A model that reads every glyph right except the full read of one image, and answers "1" to lengths.
    with (tmp_path / "out" / "samples.jsonl").open("w") as f:
        for k, q in enumerate(qs):
            kind = q["question_id"].split("/")[1]
            said = "1" if kind == "length" else ("x" if k == 0 else ans[q["question_id"]])
            qid = q["question_id"]
            f.write(json.dumps({"question_id": qid, "text": said, "correct": said == ans[qid]}) + "\n")
    rows = probe.summarise(tmp_path / "out")
    assert list(rows) == ["full", "first", "second", "last", "length"]
    assert rows["full"]["n"] == 10 and rows["full"]["accuracy"] == 90.0
    assert rows["first"]["accuracy"] == 100.0
    assert rows["first"]["distinct_answers"] == len({t[0] for t in texts.values()})
    n1 = sum(len(t) == 1 for t in texts.values())
    assert rows["length"] == {"n": 10, "accuracy": 10.0 * n1, "distinct_answers": 1, "top_answer": "1",
                              "top_share": 100.0}
    text_table = probe.table({"start": rows, "fine-tuned": rows})
    assert text_table.splitlines()[1].split()[:2] == ["full", "10"] and len(text_table.splitlines()) == 6


def test_probe_refuses_an_evaluation_seed_used_for_training(tmp_path, capsys, bench_module):
    probe = bench_module("ocr_probe")
    with pytest.raises(SystemExit):
        probe.main(["--model", "tiny", "--out", str(tmp_path / "p"), "--train-seed", "3", "--eval-seed", "3"])
    assert "must differ" in capsys.readouterr().err and not (tmp_path / "p").exists()
