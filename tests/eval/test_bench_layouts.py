"""The eight benchmarks added with the shared Source reader: a directory in neither layout is refused
with the file looked for and both expected trees; parquet without the columns names them; and two of
them run end to end through `meteor eval` with the embedded model (scores equal the recorded-output path)."""

from __future__ import annotations

import base64
import csv
import json

import pytest
from benchfix import score_outputs, synth_png, write_parquet

from meteor_cli.errors import ExitCode, InputNotFoundError, InvalidInputError
from meteor_cli.registry import BENCHMARKS, load_builtins_and_plugins

# benchmark → the file its llava layout looks for first
FIRST_FILE = {"scienceqa": "llava_test_CQM-A.json", "mmbench": "mmbench_dev_20230712.tsv",
              "seedbench": "llava-seed-bench.jsonl", "vqav2": "llava_vqav2_mscoco_val2014.jsonl",
              "chartqa": "test_human.json", "ocrbench": "OCRBench.json", "docvqa": "val_v1.0_withQT.json",
              "ai2d": "questions"}


def _bench(name):
    load_builtins_and_plugins()
    return BENCHMARKS.get(name)()


@pytest.mark.parametrize("name", sorted(FIRST_FILE))
def test_wrong_layout_names_the_file_and_shows_the_trees(tmp_path, name):
    (tmp_path / "somewhere").mkdir()
    (tmp_path / "somewhere" / "notes.txt").write_text("not a benchmark")
    with pytest.raises(InputNotFoundError) as exc:
        _bench(name).load_items(tmp_path / "somewhere")
    assert FIRST_FILE[name] in exc.value.message and name in exc.value.message
    assert "llava layout:" in exc.value.hint and "lmms layout:" in exc.value.hint
    assert ".parquet" in exc.value.hint  # the lmms tree is shown too


def test_parquet_without_the_columns_names_them(tmp_path, synth_dir):
    write_parquet(tmp_path / "SEED-Bench" / "data" / "test-0.parquet", {"question_id": ["1"], "question": ["q"]},
                  [synth_png(synth_dir, 1)])
    with pytest.raises(InvalidInputError) as exc:
        _bench("seedbench").load_items(tmp_path / "SEED-Bench")
    assert "'choice_a'" in exc.value.message and "'data_type'" in exc.value.message


def test_unknown_variant_lists_the_known(tmp_path):
    from meteor_cli.errors import UsageError

    with pytest.raises(UsageError) as exc:
        _bench("chartqa").load_items(tmp_path, variant="test")
    assert "both, human, augmented" in exc.value.hint


RUN = ("eval", "--model", "tiny-synthvqa", "--batch-size", "8", "--max-new-tokens", "3", "--device", "cpu")


def test_mmbench_and_ai2d_through_meteor_eval(cli, tmp_path, synth_dir):
    root = tmp_path / "mmbench"
    root.mkdir()
    with (root / "mmbench_dev_20230712.tsv").open("w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image"])
        w.writerow([0, "Which bar is the tallest?", "", "bar A", "bar B", "bar C", "", "C", "attribute", "perception",
                    base64.b64encode(synth_png(synth_dir, 7)).decode()])
        w.writerow([1, "Is there a red circle?", "", "yes", "no", "", "", "A", "existence", "perception",
                    base64.b64encode(b"not an image").decode()])
    res = cli(*RUN, "--benchmark", "mmbench", "--data", "mmbench", "--out", "m.json")
    assert res.exit_code == 0, res.output
    body = json.loads((tmp_path / "m.json").read_text())
    every = [json.loads(x) for x in (tmp_path / "m.samples.jsonl").read_text().splitlines()]
    rows = [r for r in every if "skipped" not in r]
    # question 1's image is base64 of text, not an image: both its rotations are skipped and counted
    assert sorted(r["question_id"] for r in rows) == [0, 1_000_000, 2_000_000]
    assert sorted(r["question_id"] for r in every if "skipped" in r) == [1, 1_000_001]
    assert body["metrics"]["n_skipped"] == 2
    assert body["data"]["layout"] == "llava" and body["data"]["n_questions"] == 5
    loaded = _bench("mmbench").load_items(root)
    recorded = {r["question_id"]: r["text"] for r in rows}
    kept = type(loaded)([it for it in loaded.items if it.qid in recorded], loaded.layout)
    expect = score_outputs(_bench("mmbench"), kept, [recorded[it.qid] for it in kept.items])
    assert body["metrics"]["value"] == pytest.approx(expect["value"]) and body["metrics"]["n"] == 3

    write_parquet(tmp_path / "ai2d" / "data" / "test-00000-of-00001.parquet",
                  {"question": ["Which bar is the tallest?", "Is there a red circle?"],
                   "options": [["A", "B", "C", "D"], ["yes", "no"]], "answer": ["2", "0"]},
                  [synth_png(synth_dir, 7), synth_png(synth_dir, 5)])
    res = cli(*RUN, "--benchmark", "ai2d", "--data", "ai2d", "--out", "a.json")
    assert res.exit_code == 0, res.output
    body = json.loads((tmp_path / "a.json").read_text())
    texts = [json.loads(x)["text"] for x in (tmp_path / "a.samples.jsonl").read_text().splitlines()]
    loaded = _bench("ai2d").load_items(tmp_path / "ai2d")
    assert body["data"]["layout"] == "lmms" and len(texts) == 2
    assert body["metrics"]["value"] == pytest.approx(score_outputs(_bench("ai2d"), loaded, texts)["value"])


def test_wrong_layout_through_meteor_eval(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    res = cli(*RUN, "--benchmark", "docvqa", "--data", "empty", "--out", "x.json")
    assert res.exit_code == ExitCode.NOT_FOUND and "val_v1.0_withQT.json" in res.stderr
    assert "DocVQA/validation-*.parquet" in res.stderr


def test_list_benchmarks_shows_all_twelve_with_both_layouts(cli):
    res = cli("list", "benchmarks", "--json")
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.stdout)["benchmarks"]}
    twelve = {"gqa", "pope", "textvqa", "mme", *FIRST_FILE}
    assert len(twelve) == 12 and twelve <= set(rows)
    for name in twelve:
        assert "llava:" in rows[name]["layout"] and "lmms:" in rows[name]["layout"], name


def test_records_without_needed_fields_are_named(tmp_path):
    (tmp_path / "ChartQA" / "test").mkdir(parents=True)
    (tmp_path / "ChartQA" / "test" / "test_human.json").write_text(json.dumps([{"imgname": "a.png", "label": "1"}]))
    with pytest.raises(InvalidInputError) as exc:
        _bench("chartqa").load_items(tmp_path / "ChartQA", variant="human")
    assert "test_human.json" in exc.value.message and "'query'" in exc.value.message
    (tmp_path / "mmbench").mkdir()
    (tmp_path / "mmbench" / "mmbench_dev_20230712.tsv").write_text(
        "index\tquestion\tA\tB\tanswer\timage\n0\tq?\tx\ty\tZ\tAAAA\n")
    with pytest.raises(InvalidInputError) as exc:  # the answer letter is not an option
        _bench("mmbench").load_items(tmp_path / "mmbench")
    assert "mmbench_dev_20230712.tsv" in exc.value.message and "'Z' is not one of its options A, B" in exc.value.message
