"""`meteor eval`: all three stages from artifacts, metrics.json + metrics.samples.jsonl with token counts."""

from __future__ import annotations

import json

from meteor_cli import artifacts as A
from meteor_cli.data.synthvqa import generate
from meteor_cli.errors import ExitCode
from meteor_cli.model.checkpoint import load_model, save_checkpoint


def test_eval_with_all_stages(cli, tmp_path):
    generate(tmp_path / "sv", n_train=0, n_eval=4, seed=0)
    save_checkpoint(load_model("tiny"), tmp_path / "ck")
    alloc = {"strategy": "rank", "stage1": {"totals": [60, 40, 30], "encoders": {
        "vit": {"points": [0, 1, 2], "keep": [12, 10, 8]}, "clip": {"points": [0, 1, 2], "keep": [36, 24, 16]},
        "convnext": {"points": [3, 3, 3], "keep": [12, 6, 6]}}}, "stage2": {"keep": 20}}
    A.write_artifact(tmp_path / "allocation.json", A.make_artifact("meteor.allocation", alloc))
    assert cli("prune-llm", "--model", "ck", "--method", "fixed", "--layers", "1,3", "--keep", "12,5",
               "--device", "cpu", "-q").exit_code == 0
    res = cli("eval", "--model", "ck", "--data", "sv", "--allocation", "allocation.json", "--prune-llm",
              "prune-llm.json", "--batch-size", "2", "--device", "cpu", "-q", "--json", "--max-new-tokens", "3")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["schema"] == "meteor.metrics/v1" and data["n"] == 4
    assert set(data["metrics"]["families"]) == {"general", "hallucination", "ocr", "chart"}
    assert data["tokens"]["stage2_visual"] == 20
    # fixed schedule: 20 tokens enter layers 0, 12 layers 1-2, 5 layer 3 → (20 + 2·12 + 5) / 4
    assert data["tokens"]["stage3_layer_averaged"] == (20 + 24 + 5) / 4
    rows = [json.loads(x) for x in (tmp_path / "metrics.samples.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(sum(r["per_encoder"].values()) == 20 for r in rows)
    assert all(r["stage3"]["kept"] == [12, 5] and isinstance(r["correct"], bool) for r in rows)
    assert data["settings"]["prune_llm"]["method"] == "fixed"


def test_eval_needs_inputs(cli):
    assert cli("eval", "--device", "cpu").exit_code == ExitCode.USAGE
    res = cli("eval", "--model", "tiny", "--data", "nowhere", "--device", "cpu")
    assert res.exit_code == ExitCode.NOT_FOUND


def test_infer_single_image_and_question_file(cli, tmp_path):
    generate(tmp_path / "sv", n_train=0, n_eval=2, seed=0)
    res = cli("infer", "--model", "tiny", "--image", "sv/images/eval/000000.png", "--prompt", "what shape ?",
              "--max-new-tokens", "2", "--device", "cpu", "-q")
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout)
    assert row["question_id"] == 0 and row["metadata"]["visual_tokens"] == 96
    res = cli("infer", "--model", "tiny", "--questions", "sv/eval/questions.jsonl", "--max-new-tokens", "2",
              "--out", "answers.jsonl", "--device", "cpu", "-q")  # images found by the one rule: sv/eval/.. = sv
    assert res.exit_code == 0, res.output
    lines = (tmp_path / "answers.jsonl").read_text().splitlines()
    assert [json.loads(x)["question_id"] for x in lines] == ["eval-000000", "eval-000001"]
    assert cli("infer", "--model", "tiny", "--device", "cpu").exit_code == ExitCode.USAGE
    res = cli("infer", "--model", "tiny", "--questions", "sv/eval/questions.jsonl", "--image-root", "sv/images",
              "--device", "cpu")  # wrong root
    errors = [json.loads(x) for x in res.stdout.splitlines()]  # one inline error per request, none answered
    assert res.exit_code == ExitCode.PARTIAL and [e["question_id"] for e in errors] == ["eval-000000", "eval-000001"]
    assert all("does not exist" in e["error"] for e in errors)


def test_prune_llm_calibration_hits_its_target(cli, tmp_path):
    generate(tmp_path / "sv", n_train=8, n_eval=0, seed=0)
    res = cli("prune-llm", "--model", "tiny", "--calibrate", "--data", "sv/train.json", "--target-tokens", "40",
              "--count", "8", "--heads", "4", "--device", "cpu", "-q", "--json")
    assert res.exit_code == 0, res.output
    cal = json.loads(res.stdout)["calibration"]
    assert abs(cal["achieved"] - 40) / 40 <= 0.02 and cal["n"] == 8 and len(cal["per_layer_mean"]) == 2
    res = cli("flops", "--model", "tiny", "--prune-llm", "prune-llm.json", "--json")
    assert res.exit_code == 0 and abs(json.loads(res.stdout)["visual_tokens"]["layer_averaged"] - cal["achieved"]) < 2
