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


EAGLE_RANKS = {"method": "nuclear", "grid": 32, "encoders": {
    "clip": {"points": [7, 15, 23], "rank": [0.60, 0.50, 0.40], "std": [0.01] * 3, "n_images": 10, "tokens": 1024},
    "convnext": {"points": [3, 3, 3], "rank": [0.30, 0.30, 0.30], "std": [0.01] * 3, "n_images": 10, "tokens": 1024},
    "eva02": {"points": [7, 15, 23], "rank": [0.20, 0.25, 0.10], "std": [0.01] * 3, "n_images": 10, "tokens": 4096},
    "pix2struct": {"points": [5, 11, 17], "rank": [0.45, 0.35, 0.50], "std": [0.01] * 3, "n_images": 10,
                   "tokens": 2025}}}


def test_eagle_x4_per_encoder_counts_without_building_anything(cli, tmp_path, monkeypatch):
    """Analytic from the config: no module (let alone 8.8 B parameters) is built; every encoder is
    counted by its own family's cost model, and Stage-1 budgets shrink all but ConvNeXt."""
    from meteor_cli.model.encoders.base import EncoderAdapter
    from meteor_cli.model.vlm import MultiEncoderVLM
    from meteor_cli.pruning.allocation import build_allocation
    from meteor_cli.registry import PRESETS, load_builtins_and_plugins

    def refuse(*a, **k):
        raise AssertionError("meteor flops must not build modules")

    monkeypatch.setattr(EncoderAdapter, "__init__", refuse)
    monkeypatch.setattr(MultiEncoderVLM, "__init__", refuse)
    load_builtins_and_plugins()
    cfg = PRESETS.get("eagle-x4")().validate()
    res = cli("flops", "--model", "eagle-x4", "--convention", "macs", "--json")
    assert res.exit_code == 0, res.output
    full = json.loads(res.stdout)
    for e in cfg.encoders:
        assert full["components"][f"encoder/{e.name}"] == F.encoder_macs(e)
    assert full["visual_tokens"]["into_llm"] == 8169
    # EVA-02 (SwiGLU) and Pix2Struct (gated GELU) have a third MLP matrix the plain ViT formula missed
    eva = cfg.encoders[2]
    assert full["components"]["encoder/eva02"] > F.vit_macs([4096] * 24, 1024, 2730, patch=16, n_embed=4096)

    body = build_allocation(EAGLE_RANKS, total=1193, keep_ratio=None, fusion_keep=576, strategy="rank", totals=None)
    A.write_artifact(tmp_path / "a.json", A.make_artifact("meteor.allocation", body))
    res = cli("flops", "--model", "eagle-x4", "--allocation", "a.json", "--convention", "macs", "--json")
    assert res.exit_code == 0, res.output
    pruned = json.loads(res.stdout)
    for e in cfg.encoders:
        keep = body["stage1"]["encoders"][e.name]["keep"]
        got = pruned["components"][f"encoder/{e.name}"]
        assert got == F.encoder_macs(e, keep)
        assert (got == full["components"][f"encoder/{e.name}"]) == (e.family == "convnext")
        assert pruned["visual_tokens"]["per_encoder"][e.name] == keep[-1]
    assert pruned["notes"]["encoder/convnext"].startswith("pruned only on its final map")
    assert pruned["visual_tokens"]["into_llm"] == 576 and 0 < pruned["ratio"] < 1 and eva.depth == 24
    human = cli("flops", "--model", "eagle-x4", "--allocation", "a.json")
    assert human.exit_code == 0 and all(f"encoder/{e.name}" in human.stdout for e in cfg.encoders)
