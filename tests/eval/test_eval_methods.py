"""``meteor eval --method a,b --sweep ...``: methods side by side at equal budgets, one model load."""

from __future__ import annotations

import json

import pytest

from meteor_cli import artifacts as A
from meteor_cli.data.synthvqa import generate
from meteor_cli.devices import rank_device_index
from meteor_cli.errors import ExitCode, UsageError
from meteor_cli.eval import methods as M
from meteor_cli.pruning.schedule import layer_averaged_tokens

BASE = ("eval", "--model", "tiny-synthvqa", "--data", "sv", "--batch-size", "4", "--max-new-tokens", "2",
        "--device", "cpu", "-q")


@pytest.fixture
def synth(tmp_path):
    generate(tmp_path / "sv", n_train=0, n_eval=4, seed=3)
    return tmp_path


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def _strip(rows):  # time and the run id are the only fields two equal runs may differ in
    return [{k: v for k, v in r.items() if k not in ("seconds", "run")} for r in rows]


def _body(path):
    return json.loads(path.read_text())


def _results(path):
    return {r["label"]: r for r in _body(path)["results"]}


def _same(a, b):  # score, tokens and FLOPs of one result row
    return (a["metrics"], a["tokens"], a["flops"]) == (b["metrics"], b["tokens"], b["flops"])


def test_two_methods_in_one_run_equal_two_single_method_runs(cli, synth):
    res = cli(*BASE, "--method", "fastv,separate", "--visual-tokens", "40", "--out", "both.json")
    assert res.exit_code == 0, res.output
    for m in ("fastv", "separate"):
        res = cli(*BASE, "--method", m, "--visual-tokens", "40", "--out", f"{m}.json")
        assert res.exit_code == 0, res.output
    both = _results(synth / "both.json")
    assert list(both) == ["fastv@40", "separate@40"]
    for m in ("fastv", "separate"):
        assert _same(both[f"{m}@40"], _results(synth / f"{m}.json")[f"{m}@40"]), m
        alone = _strip(_rows(synth / f"{m}.samples.jsonl"))
        assert [r for r in _strip(_rows(synth / "both.samples.jsonl")) if r["method"] == m] == alone
        assert {r["setting"] for r in alone} == {f"{m}@40"} and len(alone) == 4
    # the method path builds what an artifact of `meteor prune-llm` gives the single-setting path
    k, r = M.fastv_setting(96, 40, 4)
    assert cli("prune-llm", "--model", "tiny-synthvqa", "--method", "fastv", "--layers", str(k), "--drop-ratio",
               str(round(r, 4)), "--out", "fastv.prune-llm.json", "-q").exit_code == 0
    assert cli(*BASE, "--prune-llm", "fastv.prune-llm.json", "--out", "art.json").exit_code == 0
    art, fv = _body(synth / "art.json")["results"][0], both["fastv@40"]
    assert art["label"] == "custom" and (art["metrics"], art["tokens"]) == (fv["metrics"], fv["tokens"])
    assert [r["text"] for r in _rows(synth / "art.samples.jsonl")] == \
        [r["text"] for r in _rows(synth / "fastv.samples.jsonl")]


def test_sweep_gives_one_row_per_method_and_budget_at_the_asked_tokens(cli, synth):
    res = cli(*BASE, "--method", "unpruned,fastv,pdrop,dart,sparsevlm,random,pool,divprune,visionzip", "--sweep", "0.33,48",
              "--plot", "sweep.png", "--out", "sweep.json", "--json")
    assert res.exit_code == 0, res.output
    body = json.loads(res.stdout)
    labels = [r["label"] for r in body["results"]]
    methods = ("fastv", "pdrop", "dart", "sparsevlm", "random", "pool", "divprune", "visionzip")
    assert labels == ["unpruned"] + [f"{m}@{t}" for m in methods for t in (32, 48)]  # 0.33·96 → 32 tokens
    assert body["settings"]["methods"]["budgets"] == [32, 48] and body["settings"]["methods"]["visual_tokens"] == 96
    by = {r["label"]: r for r in body["results"]}
    for t in (32, 48):
        for m in ("random", "pool", "divprune", "visionzip"):  # Stages 1-2: exactly T tokens into the LLM, in every layer
            tok = by[f"{m}@{t}"]["tokens"]
            assert tok["stage2_visual"] == t and tok["stage3_layer_averaged"] == t, (m, t)
            assert sum(tok["per_encoder"].values()) == t
        assert by[f"visionzip@{t}"]["tokens"]["stage1_per_encoder"] == by[f"visionzip@{t}"]["tokens"]["per_encoder"]
        for m in ("fastv", "pdrop", "dart", "sparsevlm"):  # Stage 3: all 96 in, T averaged over the 4 layers (integer counts)
            tok = by[f"{m}@{t}"]["tokens"]
            assert tok["stage2_visual"] == 96 and tok["stage3_layer_averaged"] == pytest.approx(t, abs=0.5), (m, t)
            kept = [float(v) for v in tok["stage3_per_layer"].values()]
            assert layer_averaged_tokens(96, [int(p) for p in tok["stage3_per_layer"]], kept, 4) == \
                pytest.approx(tok["stage3_layer_averaged"])
    # FLOPs against the unpruned model: 1 for it, below 1 and growing with the budget for every method
    assert by["unpruned"]["flops"]["ratio"] == 1.0 and by["unpruned"]["score"] == by["unpruned"]["metrics"]["value"]
    for m in methods:
        lo, hi = by[f"{m}@32"]["flops"]["ratio"], by[f"{m}@48"]["flops"]["ratio"]
        assert 0 < lo < hi < 1, m
    # `meteor flops` on the same setting gives the same count (fastv at 32: K=1, R such that 11 are kept)
    k, r = M.fastv_setting(96, 32, 4)
    cli("prune-llm", "--model", "tiny-synthvqa", "--method", "fastv", "--layers", str(k), "--drop-ratio",
        str(round(r, 4)), "--out", "f.json", "-q")
    # at the prompt length this run measured (every setting asked the same questions)
    fl = by["fastv@32"]["flops"]
    assert fl["text_tokens_source"] == "measured" and fl["text_tokens"] == round(by["fastv@32"]["tokens"]["text"])
    assert len({r["tokens"]["text"] for r in body["results"]}) == 1 and 5 < fl["text_tokens"] < 64
    flops = json.loads(cli("flops", "--model", "tiny-synthvqa", "--prune-llm", "f.json", "--text-tokens",
                           str(fl["text_tokens"]), "--json").stdout)
    assert fl["ratio"] == pytest.approx(flops["ratio"])
    png = synth / "sweep.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    assert Image.open(png).size == (960, 410)
    rows = _rows(synth / "sweep.samples.jsonl")
    assert len(rows) == 4 * len(labels) and {r["setting"] for r in rows} == set(labels)


def test_meteor_method_calibrates_its_stage3_to_each_budget(cli, synth):
    ranks = {"method": "nuclear", "encoders": {
        "vit": {"tokens": 16, "points": [0, 1, 2], "rank": [0.14, 0.13, 0.13], "std": [0.0] * 3},
        "clip": {"tokens": 64, "points": [0, 1, 2], "rank": [0.18, 0.18, 0.18], "std": [0.0] * 3},
        "convnext": {"tokens": 16, "points": [3, 3, 3], "rank": [0.23, 0.23, 0.23], "std": [0.0] * 3}}}
    A.write_artifact(synth / "ranks.json", A.make_artifact("meteor.ranks", ranks))
    res = cli(*BASE, "--method", "meteor", "--budget", "0.5", "--out", "x.json")
    assert res.exit_code == ExitCode.USAGE and "--ranks and --prune-llm" in res.stderr
    assert cli("prune-llm", "--model", "tiny-synthvqa", "--out", "p.json", "-q").exit_code == 0
    res = cli(*BASE, "--method", "meteor", "--budget", "0.5", "--ranks", "ranks.json", "--out", "x.json")
    assert res.exit_code == ExitCode.USAGE and "needs --prune-llm" in res.stderr
    res = cli(*BASE, "--method", "meteor", "--sweep", "32,48", "--ranks", "ranks.json", "--prune-llm", "p.json",
              "--calibrate-count", "4", "--out", "m.json", "--json")
    assert res.exit_code == 0, res.output
    by = {r["label"]: r for r in json.loads(res.stdout)["results"]}
    for t in (32, 48):
        r = by[f"meteor@{t}"]
        ratio, s2 = M.meteor_stage12(t, 96)
        assert r["tokens"]["stage2_visual"] == s2  # Stage 2 keeps 1.25·T, Stage 3 the rest of the way
        # calibrated on the same 4 questions it is evaluated on: the layer average is the calibration's
        assert r["tokens"]["stage3_layer_averaged"] == pytest.approx(r["stage3_calibration"]["achieved"])
        assert r["stage3_calibration"]["achieved"] == pytest.approx(t, rel=0.1)
    assert by["meteor@32"]["stage3_calibration"]["scale"] < by["meteor@48"]["stage3_calibration"]["scale"]


def test_resume_and_shards_with_several_settings(cli, synth):
    # (not `random`: its Stage 2 seeds by a sample's place in its batch, which sharding changes)
    args = (*BASE, "--method", "unpruned,separate,fastv", "--visual-tokens", "40")
    assert cli(*args, "--out", "full.json").exit_code == 0
    for k in range(2):
        res = cli(*args, "--num-chunks", "2", "--chunk-idx", str(k), "--out", f"s{k}.json")
        assert res.exit_code == 0, res.output
    res = cli("eval", "merge", "s0.json", "s1.json", "--out", "merged.json", "--plot", "merged.png")
    assert res.exit_code == 0, res.output
    full, merged = _results(synth / "full.json"), _results(synth / "merged.json")
    assert list(merged) == ["unpruned", "separate@40", "fastv@40"]
    assert all(_same(full[k], merged[k]) for k in full)
    assert _strip(_rows(synth / "merged.samples.jsonl")) == _strip(_rows(synth / "full.samples.jsonl"))
    assert (synth / "merged.png").is_file()
    # a run killed after 5 of its 12 samples resumes to the uninterrupted result
    lines = (synth / "full.samples.jsonl").read_text().splitlines(keepends=True)
    (synth / "cut.samples.jsonl").write_text("".join(lines[:5]) + lines[5][:20])
    assert cli(*args, "--out", "cut.json").exit_code == 0
    assert _strip(_rows(synth / "cut.samples.jsonl")) == _strip(_rows(synth / "full.samples.jsonl"))
    cut = _results(synth / "cut.json")
    assert all(_same(full[k], cut[k]) for k in full)


def test_bad_method_and_budget_input(cli, synth):
    res = cli(*BASE, "--method", "fastv,visonzip", "--budget", "0.5")
    assert res.exit_code == ExitCode.USAGE
    assert "unknown method 'visonzip'" in res.stderr and "did you mean visionzip" in res.stderr
    for name in ("unpruned", "meteor", "fastv", "pdrop", "dart", "random", "separate", "pool", "prumerge+", "fixed"):
        assert name in res.stderr  # the known ones are listed, registered policies included
    bad = [(("--method", "fastv"), "needs a budget"),
           (("--method", "fastv", "--budget", "0.5", "--sweep", "16"), "both set the budget"),
           (("--method", "fastv", "--sweep", "16"), "FastV at layer 1 cannot average 16"),  # 96 in layer 0 alone: 24
           (("--method", "random", "--visual-tokens", "200"), "outside 1..96"),
           (("--budget", "0.5",), "add --method"),
           (("--method", "fastv", "--budget", "0.5", "--allocation", "a.json"), "--allocation and --stage1-method"),
           (("--method", "fastv", "--budget", "0.5", "--stage1-option", "dominant=3"), "names none")]
    for extra, message in bad:
        res = cli(*BASE, *extra)
        assert res.exit_code == ExitCode.USAGE and message in res.stderr, (extra, res.stderr)


def test_budget_parsing_and_setting_construction():
    assert M.parse_budgets(96, budget=0.5) == [48]
    assert M.parse_budgets(96, sweep="0.25, 32,0.5,24") == [24, 32, 48]
    with pytest.raises(UsageError, match="in \\(0, 1\\]"):
        M.parse_budgets(96, sweep="1.5")
    with pytest.raises(UsageError, match="not a number"):
        M.parse_budgets(96, sweep="a")
    shape = M.model_shape("tiny")
    assert (shape.visual_tokens, shape.layers) == (96, 4)
    fz = M.build_setting("visionzip", 30, shape, stage1_options={"dominant": "3"})
    assert fz.allocation["stage1"]["totals"] == [96, 96, 30] and fz.allocation["stage2"]["keep"] == 30
    assert fz.allocation["stage1"]["options"] == {"dominant": 3}
    # without --ranks, each encoder's share of a Stage-1 budget follows its native tokens (16:64:16)
    assert {n: e["keep"][-1] for n, e in fz.allocation["stage1"]["encoders"].items()} == \
        {"vit": 5, "clip": 20, "convnext": 5}
    pool = M.build_setting("pool", 30, shape)
    assert pool.allocation["stage1"]["totals"] == [96, 96, 96] and pool.allocation["stage2"]["method"] == "pool"
    dart = M.build_setting("dart", 32, shape)
    assert dart.prune_llm["layers"] == [1] and dart.prune_llm["keep"] == [11]  # (96 + 3·11) / 4 = 32.25
    with pytest.raises(UsageError, match="needs a budget"):
        M.build_setting("fastv", None, shape)


@pytest.mark.parametrize("kind,index,env,want", [
    ("cuda", None, {"LOCAL_RANK": "2", "WORLD_SIZE": "4"}, 2),   # torchrun, bare cuda
    ("cuda", 0, {"LOCAL_RANK": "3", "WORLD_SIZE": "4"}, 3),      # torchrun, one index for every rank
    ("npu", None, {"LOCAL_RANK": "1", "WORLD_SIZE": "1"}, 1),    # bare npu, a single rank
    ("cuda", 1, {"LOCAL_RANK": "0", "WORLD_SIZE": "1"}, 1),      # an explicit index, a single process
    ("cuda", None, {}, None),                                    # not under torchrun
    ("cpu", None, {"LOCAL_RANK": "2", "WORLD_SIZE": "4"}, None),  # the CPU has no index
])
def test_each_torchrun_rank_takes_its_local_device(kind, index, env, want):
    assert rank_device_index(kind, index, env) == want
