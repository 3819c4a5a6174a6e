"""`meteor flops`: per-component counts, pruned vs unpruned, stated convention."""

from __future__ import annotations

import json

from meteor_cli import artifacts as A
from meteor_cli import flops as F
from meteor_cli.errors import ExitCode
from meteor_cli.model.presets import tiny

ALLOC = {"strategy": "rank", "stage1": {"totals": [60, 40, 30], "encoders": {
    "vit": {"points": [0, 1, 2], "keep": [12, 10, 8]}, "clip": {"points": [0, 1, 2], "keep": [36, 24, 16]},
    "convnext": {"points": [3, 3, 3], "keep": [12, 6, 6]}}}, "stage2": {"keep": 20}}


def test_unpruned_components(cli):
    res = cli("flops", "--model", "tiny", "--convention", "macs", "--json", "--text-tokens", "10")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    cfg = tiny()
    vit = cfg.encoders[0]
    assert data["components"]["encoder/vit"] == F.vit_macs([17, 17, 17], 96, 384, patch=16, n_embed=16)
    dims = F.LLMDims.from_hf_config(cfg.llm.hf_config)
    assert data["components"]["llm/prefill"] == F.llm_prefill(dims, 10, [96.0] * 4)
    assert data["ratio"] == 1.0 and data["visual_tokens"]["into_llm"] == 96 and vit.num_tokens == 16


def test_pruned_schedule_and_artifact(cli, tmp_path):
    A.write_artifact(tmp_path / "a.json", A.make_artifact("meteor.allocation", ALLOC))
    A.write_artifact(tmp_path / "p.json", A.make_artifact("meteor.prune-llm", {"method": "fixed", "layers": [1, 3],
                                                                               "keep": [12, 5], "heads": 5}))
    res = cli("flops", "--model", "tiny", "--allocation", "a.json", "--prune-llm", "p.json", "--out", "f.json", "-q")
    assert res.exit_code == 0, res.output
    art = A.read_artifact(tmp_path / "f.json", "meteor.flops")
    assert art["convention"] == "fastv" and art["visual_tokens"]["into_llm"] == 20
    assert art["visual_tokens"]["layer_averaged"] == (20 + 12 + 12 + 5) / 4 and 0 < art["ratio"] < 0.8
    assert art["components"]["encoder/convnext"] == F.convnext_macs(128, [1, 1, 2, 1], [32, 48, 64, 128])


def test_adaptive_schedule_needs_counts(cli, tmp_path):
    A.write_artifact(tmp_path / "p.json", A.make_artifact("meteor.prune-llm", {"method": "meteor", "layers": [1, 3]}))
    res = cli("flops", "--model", "tiny", "--prune-llm", "p.json")
    assert res.exit_code == ExitCode.USAGE and "--stage3-kept" in res.stderr
    assert cli("flops", "--model", "tiny", "--prune-llm", "p.json", "--stage3-kept", "50,20").exit_code == 0
