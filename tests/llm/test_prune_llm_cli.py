"""`meteor prune-llm`: settings validated against the LLM, written as meteor.prune-llm/v1."""

from __future__ import annotations

import json

import pytest

from meteor_cli import artifacts as A
from meteor_cli.errors import ExitCode

from .conftest import tiny_llama


@pytest.fixture
def llm_dir(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "llm")
    return "llm"


def test_defaults_scale_layers_to_depth(cli, llm_dir, tmp_path):
    res = cli("prune-llm", "--model", llm_dir, "--device", "cpu")
    assert res.exit_code == 0, res.output
    art = A.read_artifact(tmp_path / "prune-llm.json", "meteor.prune-llm")
    assert art["method"] == "meteor" and art["layers"] == [1, 2, 4]
    assert (art["heads"], art["lam"], art["scale"], art["query"], art["agg"], art["k_min"]) == (5, 50.0, 1.0, "text", "mean", 1)
    assert art["model"]["num_layers"] == 6 and art["model"]["num_heads"] == 8


@pytest.mark.parametrize("args, expect", [
    (["--method", "fastv", "--layers", "2", "--drop-ratio", "0.75"], {"layers": [2], "k": 2, "r": 0.75, "query": "last"}),
    (["--method", "pdrop"], {"layers": [2, 3, 4], "ratios": [0.5, 0.25, 0.125], "query": "last-instruction"}),
    (["--method", "fixed", "--layers", "1,3", "--keep", "20,8"], {"keep": [20, 8], "heads": 5}),
    (["--method", "all-heads", "--layers", "1,3", "--keep", "0.5,0.25"], {"keep": [0.5, 0.25], "heads": None}),
])
def test_baseline_policies(cli, llm_dir, args, expect):
    res = cli("prune-llm", "--model", llm_dir, "--device", "cpu", "--out", "-", *args)
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    for k, v in expect.items():
        assert data[k] == v, k


@pytest.mark.parametrize("args, code, message", [
    (["--layers", "4,12,20"], ExitCode.USAGE, "must lie in 0..5"),
    (["--layers", "3,1"], ExitCode.USAGE, "strictly increasing"),
    (["--heads", "9"], ExitCode.USAGE, "--heads 9 must be in 1..8"),
    (["--heads", "9"], ExitCode.USAGE, "give --heads 5 or fewer on this model"),
    (["--method", "fixed", "--layers", "1", "--keep", "5", "--heads", "9"], ExitCode.USAGE, "--heads 9 must be in 1..8"),
    (["--lambda", "0"], ExitCode.USAGE, "--lambda 0.0 must be positive"),
    (["--method", "fastvv"], ExitCode.USAGE, "did you mean 'fastv'"),
    (["--method", "fixed", "--layers", "1,3", "--keep", "5"], ExitCode.USAGE, "1 keep values for 2 layers"),
    (["--calibrate"], ExitCode.USAGE, "--calibrate needs --data and --target-tokens"),
])
def test_bad_settings_write_nothing(cli, llm_dir, tmp_path, args, code, message):
    res = cli("prune-llm", "--model", llm_dir, "--device", "cpu", *args)
    assert res.exit_code == code, res.output
    assert message in res.stderr
    assert not (tmp_path / "prune-llm.json").exists()


def test_missing_model(cli):
    res = cli("prune-llm", "--model", "nowhere", "--device", "cpu")
    assert res.exit_code == ExitCode.NOT_FOUND


@pytest.mark.parametrize("method", ["dart", "sparsevlm"])
def test_policies_of_other_modules_in_a_fresh_process(llm_dir, tmp_path, method):
    """prune-llm --method dart was refused in a fresh process: only llm_policies' own policies were
    registered when make_policy looked the name up (in-process tests had loaded the rest)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "meteor_cli", "prune-llm", "--model", llm_dir, "--method", method,
                          "--out", "-", "--device", "cpu"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["method"] == method
