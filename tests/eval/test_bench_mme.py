"""MME in both layouts: pairs of questions per image, acc + acc+ per subtask, Perception next to Cognition."""

from __future__ import annotations

import json

import pytest
from benchfix import SHORT, copy_images, synth_png, write_jsonl, write_parquet

RUN = ("eval", "--model", "tiny-synthvqa", "--batch-size", "8", "--max-new-tokens", "4", "--device", "cpu")

# (subtask, synth image, question, ground truth); tiny-synthvqa answers: yes, no | no, no | no, yes | yes, no
MME = [("existence", 1, "Is there a green circle in the image?", "Yes"),
       ("existence", 1, "Is there a red square in the image?", "No"),
       ("existence", 9, "Is there a red circle in the image?", "No"),
       ("existence", 9, "Is there a green circle in the image?", "Yes"),
       ("count", 3, "Is bar B taller than bar D?", "No"),
       ("count", 3, "Is bar A taller than bar B?", "Yes"),
       ("commonsense_reasoning", 15, "Is bar A taller than bar B?", "Yes"),
       ("commonsense_reasoning", 15, "Is bar C taller than bar D?", "Yes")]
OUTPUTS = ["yes", "no", "no", "no", "no", "yes", "yes", "no"]


def _llava(synth_dir, root):
    rel = root / "MME_Benchmark_release_version"
    for sub, pos in {(s, p) for s, p, _, _ in MME}:
        if sub == "existence":  # the other layout of the release: images/ + questions_answers_YN/
            copy_images(synth_dir, rel / sub / "images", [pos], ".jpg")
            txt = rel / sub / "questions_answers_YN" / f"{pos}.txt"
        else:
            copy_images(synth_dir, rel / sub, [pos], ".jpg")
            txt = rel / sub / f"{pos}.txt"
        txt.parent.mkdir(parents=True, exist_ok=True)
        txt.write_text("".join(f"{q}\t{a}\n" for s, p, q, a in MME if (s, p) == (sub, pos)))
    write_jsonl(root / "llava_mme.jsonl", [
        {"question_id": f"{s}/{p}.jpg", "image": f"{s}/{p}.jpg", "text": q + SHORT, "category": s}
        for s, p, q, _ in MME])


def test_mme_both_layouts(cli, tmp_path, synth_dir):
    _llava(synth_dir, tmp_path / "MME")
    write_parquet(tmp_path / "lm" / "data" / "test-00000-of-00001.parquet",
                  {"question_id": [f"{p}.png" for _, p, _, _ in MME], "question": [q for _, _, q, _ in MME],
                   "answer": [a for *_, a in MME], "category": [s for s, *_ in MME]},
                  [synth_png(synth_dir, p) for _, p, _, _ in MME])
    for data, out in (("MME", "a.json"), ("lm", "b.json")):
        res = cli(*RUN, "--benchmark", "mme", "--data", data, "--out", out)
        assert res.exit_code == 0, res.output
        rows = [json.loads(x) for x in (tmp_path / out.replace(".json", ".samples.jsonl")).read_text().splitlines()]
        assert [r["text"] for r in rows] == OUTPUTS
        m = json.loads((tmp_path / out).read_text())["metrics"]
        # existence: acc 3/4 + acc+ 1/2 → 125; count: 200; perception 325. commonsense: acc 1/2, acc+ 0 → 50
        assert m["value"] == pytest.approx(325.0) and m["perception"] == pytest.approx(325.0)
        assert m["cognition"] == pytest.approx(50.0)
        assert m["categories"]["existence"]["mme_score"] == pytest.approx(125.0)
        assert m["overall"] == pytest.approx(75.0) and m["n_incomplete_pairs"] == 0
    # two shards never split an image's pair; merged they score as one run
    for k in range(3):
        res = cli(*RUN, "--benchmark", "mme", "--data", "lm", "--num-chunks", "3", "--chunk-idx", str(k),
                  "--out", f"s{k}.json")
        assert res.exit_code == 0, res.output
    res = cli("eval", "merge", "s0.json", "s1.json", "s2.json", "--out", "merged.json")
    assert res.exit_code == 0, res.output
    merged = json.loads((tmp_path / "merged.json").read_text())["metrics"]
    single = json.loads((tmp_path / "b.json").read_text())["metrics"]
    assert merged == single
