"""Long `meteor eval` runs: per-sample files derived from --out, resume after a kill, exact shard merges."""

from __future__ import annotations

import json

import pytest

from meteor_cli.data.synthvqa import generate
from meteor_cli.errors import ExitCode

BASE = ("eval", "--model", "tiny-synthvqa", "--data", "sv", "--batch-size", "4", "--max-new-tokens", "4",
        "--device", "cpu")


@pytest.fixture
def synth(tmp_path):
    generate(tmp_path / "sv", n_train=0, n_eval=8, seed=0)
    return tmp_path


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def _strip(rows):
    # time (and the run id of a shard) are the only fields allowed to differ between equal runs
    return [{k: v for k, v in r.items() if k not in ("seconds", "run")} for r in rows]


def _scores(path):
    body = json.loads(path.read_text())
    return [(r["label"], r["metrics"], r["tokens"]) for r in body["results"]]


def test_per_sample_file_derives_from_out_and_shards_merge_exactly(cli, synth):
    res = cli(*BASE, "--out", "full.json")
    assert res.exit_code == 0, res.output
    assert "sample/s" in res.stderr  # progress with a rate (and tqdm's ETA)
    assert (synth / "full.samples.jsonl").is_file() and not (synth / "samples.jsonl").exists()
    for k in range(3):  # three shards in one directory: three per-sample files, nothing overwritten
        res = cli(*BASE, "--num-chunks", "3", "--chunk-idx", str(k), "--out", f"m{k}.json")
        assert res.exit_code == 0, res.output
    assert [len(_rows(synth / f"m{k}.samples.jsonl")) for k in range(3)] == [3, 3, 2]
    res = cli("eval", "merge", "m0.json", "m1.json", "m2.json", "--out", "merged.json")
    assert res.exit_code == 0, res.output
    # POPE's F1 (hallucination family) is recomputed from the rows, not averaged over shards
    assert _scores(synth / "merged.json") == _scores(synth / "full.json")
    assert _strip(_rows(synth / "merged.samples.jsonl")) == _strip(_rows(synth / "full.samples.jsonl"))
    rows = _rows(synth / "full.samples.jsonl")
    assert all({"answer", "category", "subcategory", "parsed", "correct", "text"} <= set(r) for r in rows)

    bad = [(("m0.json", "m2.json"), "shard(s) 1 of 3 missing"),
           (("m0.json", "m1.json", "m1.json", "m2.json"), "given twice"),
           (("m0.json", "m1.json", "full.json"), "different runs: num_chunks")]
    for parts, message in bad:
        res = cli("eval", "merge", *parts, "--out", "x.json")
        assert res.exit_code == ExitCode.INVALID_INPUT and message in res.stderr, (parts, res.stderr)
    lines = (synth / "m1.samples.jsonl").read_text().splitlines(keepends=True)
    (synth / "m1.samples.jsonl").write_text("".join(lines[:2]))
    res = cli("eval", "merge", "m0.json", "m1.json", "m2.json", "--out", "x.json")
    assert res.exit_code == ExitCode.INVALID_INPUT and "incomplete (2 of 3 samples)" in res.stderr
    assert not (synth / "x.json").exists()


def test_killed_run_resumes_after_the_last_finished_sample(cli, synth):
    assert cli(*BASE, "--out", "full.json").exit_code == 0
    full = (synth / "full.samples.jsonl").read_text().splitlines(keepends=True)
    # what a kill leaves: the batches flushed so far, the next row cut mid-write, no metrics file
    (synth / "m.samples.jsonl").write_text("".join(full[:4]) + full[4][:40])
    res = cli(*BASE, "--out", "m.json")
    assert res.exit_code == 0, res.output
    assert "resuming m.samples.jsonl: 4 of 8 samples done, 4 to go" in res.stderr
    assert _scores(synth / "m.json") == _scores(synth / "full.json")
    assert _strip(_rows(synth / "m.samples.jsonl")) == _strip(_rows(synth / "full.samples.jsonl"))
    # a finished run reruns without generating anything, and scores the same
    res = cli(*BASE, "--out", "m.json")
    assert res.exit_code == 0 and "8 of 8 samples done, 0 to go" in res.stderr
    assert _scores(synth / "m.json") == _scores(synth / "full.json")
    # rows of another run (here: another --max-new-tokens) are refused, --restart starts over
    res = cli(*BASE[:-4], "--max-new-tokens", "2", "--device", "cpu", "--out", "m.json")
    assert res.exit_code == ExitCode.INVALID_INPUT and "of another run" in res.stderr
    res = cli(*BASE[:-4], "--max-new-tokens", "2", "--device", "cpu", "--out", "m.json", "--restart")
    assert res.exit_code == 0 and len(_rows(synth / "m.samples.jsonl")) == 8


def test_stdout_output_keeps_no_stray_samples_file(cli, synth):
    res = cli(*BASE, "--limit", "2", "--out", "-")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["n"] == 2 and not list(synth.glob("*.jsonl"))
    assert "per-sample rows are not kept" in res.stderr
    res = cli(*BASE, "--out", "-", "--samples-out", "-")
    assert res.exit_code == ExitCode.USAGE and "both write to stdout" in res.stderr
    res = cli(*BASE, "--limit", "2", "--out", "m.json", "--samples-out", "-", "-q")
    assert res.exit_code == 0 and [json.loads(x)["pos"] for x in res.stdout.splitlines()[:2]] == [0, 1]
