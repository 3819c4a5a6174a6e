"""`meteor train` on SynthVQA files: from a preset, resume, Stage 1-2 in the loop, bad records."""

from __future__ import annotations

import json

import pytest
import torch

from meteor_cli import artifacts as A
from meteor_cli.data.synthvqa import generate
from meteor_cli.errors import ExitCode
from meteor_cli.model.checkpoint import load_checkpoint

BASE = ["--data", "sv/train.json", "--lr", "1e-3", "--batch-size", "4", "--device", "cpu", "-q"]


@pytest.fixture
def synth(tmp_path):
    generate(tmp_path / "sv", n_train=16, n_eval=0, seed=0)


def test_train_from_preset_then_resume_is_exact(cli, synth, tmp_path):
    res = cli("train", "--model", "tiny", *BASE, "--max-steps", "4", "--save-every", "2", "--out", "full", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["steps"] == 4
    full = load_checkpoint(tmp_path / "full")
    assert len(full.tokenizer) < 200 and full.llm.config.vocab_size == len(full.tokenizer)
    assert len((tmp_path / "full" / "train_log.jsonl").read_text().splitlines()) == 4
    # The same run, interrupted after step 2 (its later checkpoint removed), then resumed: identical weights.
    assert cli("train", "--model", "tiny", *BASE, "--max-steps", "4", "--save-every", "2", "--out", "cut2").exit_code == 0
    import shutil

    shutil.rmtree(tmp_path / "cut2" / "checkpoints" / "step-0000004")
    res = cli("train", "--model", "tiny", *BASE, "--max-steps", "4", "--save-every", "2", "--out", "cut2", "--resume", "--json")
    assert json.loads(res.stdout)["resumed_from"] == 2
    again = load_checkpoint(tmp_path / "cut2")
    for (k, a), (_, b) in zip(full.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k


def test_allocation_in_the_loop(cli, synth, tmp_path):
    alloc = {"strategy": "rank", "stage1": {"totals": [60, 40, 30], "encoders": {
        "vit": {"points": [0, 1, 2], "keep": [12, 10, 8]}, "clip": {"points": [0, 1, 2], "keep": [36, 24, 16]},
        "convnext": {"points": [3, 3, 3], "keep": [12, 6, 6]}}}, "stage2": {"keep": 20}}
    A.write_artifact(tmp_path / "allocation.json", A.make_artifact("meteor.allocation", alloc))
    res = cli("train", "--model", "tiny", *BASE, "--max-steps", "2", "--allocation", "allocation.json", "--out", "m")
    assert res.exit_code == 0, res.output


def test_bad_records(cli, synth, tmp_path):
    recs = json.loads((tmp_path / "sv" / "train.json").read_text())
    (tmp_path / "sv" / recs[3]["image"]).unlink()
    res = cli("train", "--model", "tiny", *BASE, "--max-steps", "1", "--max-failed", "0.1", "--out", "m", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["n_skipped"] == 1
    recs[5]["conversations"] = recs[5]["conversations"][:1]
    (tmp_path / "sv" / "bad.json").write_text(json.dumps(recs))
    res = cli("train", "--model", "tiny", *BASE[2:], "--data", "sv/bad.json", "--max-failed", "0.1", "--out", "m2")
    assert res.exit_code == ExitCode.INVALID_INPUT and f"record {recs[5]['id']} has no gpt turn" in res.stderr
    res = cli("train", "--model", "tiny", *BASE, "--freeze", "vision", "--out", "m3")
    assert res.exit_code == ExitCode.USAGE and "unknown part" in res.stderr


def test_multi_turn_records_train(cli, tmp_path):
    generate(tmp_path / "mt", n_train=8, n_eval=0, seed=0, turns=4)
    res = cli("train", "--model", "tiny", *BASE[2:], "--data", "mt/train.json", "--max-steps", "2", "--out", "m",
              "--json")
    assert res.exit_code == 0, res.output
    log = [json.loads(line) for line in (tmp_path / "m" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(r["loss"] > 0 for r in log)
