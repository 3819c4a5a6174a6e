"""`meteor rank-estimate`: a real model over real image files; shards merge exactly; bad images."""

from __future__ import annotations

import json

import pytest

from meteor_cli import artifacts as A
from meteor_cli.data.synthvqa import generate
from meteor_cli.errors import ExitCode

ARGS = ["--model", "tiny", "--data", "sv/train.json", "--grid", "8", "--device", "cpu", "-q"]


@pytest.fixture
def synth(tmp_path):
    generate(tmp_path / "sv", n_train=24, n_eval=0, seed=0)


def test_estimate_and_allocate(cli, synth, tmp_path):
    res = cli("rank-estimate", *ARGS, "--count", "9", "--batch-size", "4")
    assert res.exit_code == 0, res.output
    art = A.read_artifact(tmp_path / "ranks.json", "meteor.ranks")
    assert art["n_images"] == 9 and art["n_failed"] == 0 and len(art["sample"]["ids"]) == 9
    enc = art["encoders"]
    assert list(enc) == ["vit", "clip", "convnext"]
    assert enc["clip"]["tokens"] == 64 and enc["clip"]["points"] == [0, 1, 2] and enc["convnext"]["points"] == [3, 3, 3]
    for e in enc.values():  # maps are resampled to 8×8 = 64 tokens of width ≥ 64: 1/√64 ≤ r ≤ 1
        assert all(1 / 8 - 1e-9 <= r <= 1 + 1e-9 for r in e["rank"])
    res = cli("allocate", "--ranks", "ranks.json", "--total", "40", "--fusion-keep", "24")
    assert res.exit_code == 0, res.output


def test_batching_does_not_change_the_result(cli, synth, tmp_path):
    cli("rank-estimate", *ARGS, "--count", "6", "--batch-size", "1", "--out", "b1.json")
    cli("rank-estimate", *ARGS, "--count", "6", "--batch-size", "6", "--out", "b6.json")
    a, b = (A.read_artifact(tmp_path / f, "meteor.ranks")["encoders"] for f in ("b1.json", "b6.json"))
    for name in a:
        assert a[name]["rank"] == pytest.approx(b[name]["rank"], rel=1e-6)  # float32 batched kernels


def test_three_shards_merge_to_the_unsharded_run(cli, synth, tmp_path):
    assert cli("rank-estimate", *ARGS, "--count", "10", "--out", "all.json").exit_code == 0
    for k in range(3):
        res = cli("rank-estimate", *ARGS, "--count", "10", "--num-chunks", "3", "--chunk-idx", str(k), "--out", f"p{k}.json")
        assert res.exit_code == 0, res.output
    res = cli("rank-estimate", "merge", "p0.json", "p1.json", "p2.json", "--out", "merged.json", "-q")
    assert res.exit_code == 0, res.output
    whole = A.read_artifact(tmp_path / "all.json")
    merged = A.read_artifact(tmp_path / "merged.json")
    assert merged["sample"]["ids"] == whole["sample"]["ids"] and merged["n_images"] == 10
    for name, e in whole["encoders"].items():
        assert merged["encoders"][name]["rank"] == pytest.approx(e["rank"], rel=1e-12)
        assert merged["encoders"][name]["std"] == pytest.approx(e["std"], rel=1e-9, abs=1e-12)


def test_corrupt_images_are_skipped_and_counted(cli, synth, tmp_path):
    recs = json.loads((tmp_path / "sv" / "train.json").read_text())
    (tmp_path / "sv" / recs[0]["image"]).write_bytes(b"not a png")
    (tmp_path / "sv" / recs[1]["image"]).unlink()
    res = cli("rank-estimate", *ARGS, "--sample", "1.0", "--max-failed", "0.1")
    assert res.exit_code == 0, res.output
    art = A.read_artifact(tmp_path / "ranks.json")
    assert art["n_failed"] == 2 and art["n_images"] == 22 and set(art["failed"]) == {recs[0]["id"], recs[1]["id"]}
    res = cli("rank-estimate", *ARGS, "--sample", "1.0", "--out", "strict.json")  # default 1 % threshold
    assert res.exit_code == ExitCode.INVALID_INPUT and "2 of 24 images could not be read" in res.stderr
    assert not (tmp_path / "strict.json").exists()


def test_missing_inputs(cli, tmp_path):
    assert cli("rank-estimate", "--device", "cpu").exit_code == ExitCode.USAGE
    res = cli("rank-estimate", "--model", "tiny", "--data", "none.json", "--device", "cpu")
    assert res.exit_code == ExitCode.NOT_FOUND
    res = cli("rank-estimate", "--model", "huge", "--data", "none.json", "--device", "cpu")
    assert res.exit_code in (ExitCode.NOT_FOUND, ExitCode.USAGE)


def _torchrun(*args: str, timeout: int = 240):
    """``torchrun --nproc_per_node 2 -m meteor_cli ARGS`` on the CPU (gloo), one thread per process."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "meteor_cli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_torchrun_two_ranks_merge_to_the_single_process_run(cli, synth, tmp_path):
    # One unreadable image of 10: within --max-failed 0.1 for the whole sample, but 1 of 5 on its
    # rank's shard — the limit must judge the whole sample, as one process does.
    recs = json.loads((tmp_path / "sv" / "train.json").read_text())
    assert cli("rank-estimate", *ARGS, "--count", "10", "--batch-size", "3", "--out", "single.json",
               "--max-failed", "0.1").exit_code == 0
    single = A.read_artifact(tmp_path / "single.json")
    bad = single["sample"]["ids"][3]
    (tmp_path / "sv" / next(r["image"] for r in recs if r["id"] == bad)).write_bytes(b"not a png")
    assert cli("rank-estimate", *ARGS, "--count", "10", "--batch-size", "3", "--out", "single.json",
               "--max-failed", "0.1").exit_code == 0
    single = A.read_artifact(tmp_path / "single.json")
    assert single["n_failed"] == 1 and single["failed"] == [bad]

    res = _torchrun("rank-estimate", *ARGS, "--count", "10", "--batch-size", "3", "--max-failed", "0.1",
                    "--out", "ranks.json")
    assert res.returncode == 0, res.stderr[-3000:]
    merged = A.read_artifact(tmp_path / "ranks.json", "meteor.ranks")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ranks.json", "single.json", "sv"]  # parts removed
    assert merged["n_images"] == 9 and merged["n_failed"] == 1 and merged["failed"] == [bad]
    assert sorted(merged["sample"]["ids"]) == sorted(single["sample"]["ids"]) and merged["sample"]["num_chunks"] == 2
    assert list(merged["encoders"]) == list(single["encoders"])
    for name, e in single["encoders"].items():
        m = merged["encoders"][name]
        assert m["n_images"] == 9 and m["points"] == e["points"]
        assert m["rank"] == pytest.approx(e["rank"], rel=1e-6)  # float32 kernels on other batch shapes
        assert m["std"] == pytest.approx(e["std"], rel=1e-5, abs=1e-9)
