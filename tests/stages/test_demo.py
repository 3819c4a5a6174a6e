"""``meteor demo``: budgets solved per method, and the --quick path end to end through the CLI."""

from __future__ import annotations

import json

import pytest

from meteor_cli.cli import demo as D
from meteor_cli.eval import methods as M
from meteor_cli.errors import UsageError
from meteor_cli.pruning.schedule import layer_averaged_tokens


@pytest.mark.parametrize("n,target,layers,k", [(96, 48, 4, 1), (96, 24, 8, 1), (576, 192, 32, 2)])
def test_fastv_ratio_hits_the_layer_average(n, target, layers, k):
    r = M.fastv_ratio(n, target, layers, k)
    assert layer_averaged_tokens(n, [k], [n * (1 - r)], layers) == pytest.approx(target)


def test_fastv_setting_moves_k_earlier_only_when_it_must():
    assert M.fastv_setting(576, 192, 32)[0] == 2  # FastV's own K
    assert M.fastv_setting(96, 48, 4)[0] == 1  # K=2 of 4 layers cannot average 48 of 96
    with pytest.raises(UsageError, match="raise --budget"):
        M.fastv_setting(96, 10, 4)


@pytest.mark.parametrize("n,target,layers,points", [(96, 48, 4, [1, 2, 3]), (576, 192, 32, [8, 16, 24])])
def test_pdrop_ratio_hits_the_layer_average(n, target, layers, points):
    r = M.pdrop_ratio(n, target, layers, points)
    kept = [n * r ** (i + 1) for i in range(len(points))]
    assert layer_averaged_tokens(n, points, kept, layers) == pytest.approx(target, abs=0.05)
    with pytest.raises(UsageError, match="cannot average"):
        M.pdrop_ratio(96, 20, 4, [1, 2, 3])  # 96 tokens in layer 0 alone average 24


@pytest.mark.parametrize("n,target,layers,points", [
    (576, 192, 32, [8, 16, 24]),  # LLaVA-1.5-7B at 192: PyramidDrop's own layers reach it
    (576, 128, 32, [2, 12, 22]),  # ... at 128 and 64 they cannot (every token through 8 layers: >= 144)
    (576, 64, 32, [2, 12, 22]),
    (576, 64, 16, [1, 6, 11]),  # a 16-layer LLM: from layer 2 the floor is 72, from layer 1 it is 36
])
def test_pdrop_setting_moves_its_layers_earlier_only_when_it_must(n, target, layers, points):
    pts, r = M.pdrop_setting(n, target, layers)
    assert pts == points
    kept = [n * r ** (i + 1) for i in range(len(pts))]
    assert layer_averaged_tokens(n, pts, kept, layers) == pytest.approx(target, abs=0.05)


def test_pdrop_setting_names_the_least_budget_it_can_reach():
    with pytest.raises(UsageError, match="PyramidDrop cannot average 10 of 96") as e:
        M.pdrop_setting(96, 10, 4)
    assert "at least 24" in e.value.hint


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~2 minutes on an idle 2-core machine; subprocesses are slow under load
def test_quick_demo_end_to_end(cli, tmp_path):
    res = cli("demo", "--out", "d", "--quick", "--json")
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    methods = [r["method"] for r in result["rows"]]
    assert methods == list(D.METHODS)
    out = tmp_path / "d"
    for name in D.METHODS:  # every artifact validates
        from meteor_cli.artifacts import read_artifact

        assert read_artifact(out / f"{name}.metrics.json", "meteor.metrics")["n"] == D.QUICK.eval
        read_artifact(out / f"{name}.flops.json", "meteor.flops")
    rows = {r["method"]: r for r in result["rows"]}
    target = result["target_tokens"]
    for name in ("fastv", "pdrop", "random", "separate"):  # the budget each was given, measured by eval
        assert rows[name]["visual_tokens"] == pytest.approx(target, abs=1.0), name
    # METEOR's adaptive Stage 3 is calibrated on training images: near the target on eval images
    assert rows["meteor"]["visual_tokens"] == pytest.approx(target, rel=0.25)
    assert rows["meteor"]["into_llm"] < result["visual_tokens"]
    assert rows["unpruned"]["visual_tokens"] == result["visual_tokens"] and rows["unpruned"]["flops_ratio"] == 1.0
    report = (out / "report.md").read_text()
    assert "| meteor |" in report and "meteor prune-llm" in report and (out / "score_vs_tokens.png").stat().st_size > 0
    assert len((out / "answers.jsonl").read_text().splitlines()) == D.QUICK.eval
    again = cli("demo", "--out", "d", "--quick", "--resume", "--json")  # every step validates: all skipped
    assert again.exit_code == 0, again.output
    assert all(s["skipped"] for s in json.loads(again.stdout)["steps"])
