"""`meteor flops --count fvcore|both`: fvcore's FlopCountAnalysis on a real prefill with the pruning
hooks installed agrees with the analytic count within 1 % on `tiny` and `small`, pruned and
unpruned; and a calibrated Stage-3 schedule combined with an allocation says where its counts come from."""

from __future__ import annotations

import json
import warnings

import pytest

from meteor_cli import artifacts as A
from meteor_cli import flops as F
from meteor_cli.cli.flops import count, stage3_counts
from meteor_cli.errors import ExitCode, UsageError

TINY_ALLOC = {"strategy": "rank", "stage1": {"totals": [60, 40, 30], "encoders": {
    "vit": {"points": [0, 1, 2], "keep": [12, 10, 8]}, "clip": {"points": [0, 1, 2], "keep": [36, 24, 16]},
    "convnext": {"points": [3, 3, 3], "keep": [12, 6, 6]}}}, "stage2": {"keep": 20}}
SMALL_ALLOC = {"strategy": "rank", "stage1": {"totals": [340, 230, 130], "encoders": {
    "vit": {"points": [3, 7, 11], "keep": [150, 100, 60]}, "clip": {"points": [3, 7, 11], "keep": [150, 100, 50]},
    "convnext": {"points": [3, 3, 3], "keep": [40, 30, 20]}}}, "stage2": {"keep": 80}}
FIXED = {"method": "fixed", "layers": [1, 3], "keep": [12, 5], "heads": 5}


def _agree(measured: F.MeasuredFlops, analytic: dict, tol: float = 0.01) -> None:
    assert set(measured.components) == set(analytic["components"])
    for k, a in analytic["components"].items():
        assert abs(measured.components[k] - a) <= tol * a, (k, measured.components[k], a)
    total = sum(measured.components.values())
    assert abs(total - analytic["total"]) <= tol * analytic["total"]


def test_tiny_pruned_cli_both(cli, tmp_path):
    A.write_artifact(tmp_path / "a.json", A.make_artifact("meteor.allocation", TINY_ALLOC))
    A.write_artifact(tmp_path / "p.json", A.make_artifact("meteor.prune-llm", FIXED))
    res = cli("flops", "--model", "tiny", "--allocation", "a.json", "--prune-llm", "p.json", "--count", "both",
              "--text-tokens", "24", "--json")
    assert res.exit_code == 0, res.output
    body = json.loads(res.stdout)
    fv = body["fvcore"]
    assert fv["input"]["visual_tokens_into_llm"] == 20 and list(fv["input"]["stage3_kept"].values()) == [12, 5]
    for k, row in fv["components"].items():
        assert abs(row["difference"]) <= 0.01, (k, row)
        assert row["fvcore"] > 0
    assert abs(fv["total"]["difference"]) <= 0.01
    # the scoring of each pruning stage is measured, and kept apart from the compared components
    assert all(fv["pruning_scoring"][s] > 0 for s in ("stage1", "stage2", "stage3"))
    assert "scaled_dot_product_attention" in fv["sdpa"] and "aten::scaled_dot_product_attention" not in \
        fv["not_counted_by_fvcore"]
    # the analytic body (fastv convention) is still there, unchanged by --count
    assert body["convention"] == "fastv" and body["visual_tokens"]["stage3_source"] == "schedule"


def test_tiny_unpruned_and_small_pruned_and_unpruned():
    from meteor_cli.eval.runner import install_pruning
    from meteor_cli.model.checkpoint import load_model

    warnings.simplefilter("ignore")
    for preset, alloc, s3 in (("tiny", None, None), ("small", None, None),
                              ("small", SMALL_ALLOC, {**FIXED, "layers": [2, 5], "keep": [50, 20]})):
        vlm = load_model(preset)
        stage3 = install_pruning(vlm, alloc, s3)
        try:
            m = F.fvcore_macs(vlm, 16, stage3=stage3)
        finally:
            if stage3 is not None:
                stage3.remove()
        kept = list(m.stage3_kept.values()) if s3 else None
        analytic = count(vlm.cfg, vlm.cfg.llm.resolved_hf_config(), alloc, s3, "macs", 16, 0, kept)
        _agree(m, analytic)
        if s3:
            assert kept == [50, 20] and m.visual_tokens == 80
            assert m.components["encoder/vit"] < 0.8 * F.encoder_macs(vlm.cfg.encoders[0])  # Stage 1 saved work
        else:
            assert m.pruning == {"stage1": 0.0, "stage2": 0.0, "stage3": 0.0}
            assert m.visual_tokens == sum(e.num_tokens for e in vlm.cfg.encoders)
        del vlm


def test_sdpa_handle_counts_like_eager():
    import torch
    from fvcore.nn import FlopCountAnalysis

    class Attn(torch.nn.Module):
        def forward(self, q, k, v):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    class Eager(torch.nn.Module):
        def forward(self, q, k, v):
            return (q @ k.transpose(-1, -2)).softmax(-1) @ v

    q, k, v = torch.randn(2, 4, 7, 8), torch.randn(2, 4, 9, 8), torch.randn(2, 4, 9, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fca = FlopCountAnalysis(Attn(), (q, k, v)).unsupported_ops_warnings(False)
        fca.set_op_handle("aten::scaled_dot_product_attention", F.sdpa_flop_jit)
        eager = FlopCountAnalysis(Eager(), (q, k, v)).unsupported_ops_warnings(False).total()
    assert fca.total() == eager == 2 * 4 * 7 * 9 * (8 + 6)


def test_too_large_for_fvcore_is_refused(cli):
    res = cli("flops", "--model", "eagle-x4", "--count", "fvcore")
    assert res.exit_code == ExitCode.USAGE and "--count analytic" in res.stderr


def test_calibrated_schedule_with_allocation_names_its_source(cli, tmp_path):
    cal = {"method": "meteor", "layers": [1, 3], "heads": 4, "lam": 50.0,
           "calibration": {"scale": 0.5, "target": 40, "achieved": 40.0, "n": 8, "per_layer_mean": [48.0, 24.0]}}
    # no allocation: the calibration's means, as measured
    layers, kept, src = stage3_counts(cal, 96, None, n_unpruned=96)
    assert kept == [48.0, 24.0] and src.startswith("calibration")
    # an allocation the calibration did not see: scaled to the 20 tokens it lets in (96 → 20), and said so
    layers, kept, src = stage3_counts(cal, 20, None, allocation_sha="abc", n_unpruned=96)
    assert kept == pytest.approx([10.0, 5.0]) and src.startswith("derived")
    # a calibration measured with this very allocation: used as is
    same = {**cal, "calibration": {**cal["calibration"], "allocation": {"path": "a.json", "sha256": "abc"},
                                   "stage2_visual": 20.0, "per_layer_mean": [12.0, 6.0]}}
    assert stage3_counts(same, 20, None, allocation_sha="abc", n_unpruned=96)[1:] == (
        [12.0, 6.0], "calibration (measured with this allocation on 8 samples)")

    A.write_artifact(tmp_path / "a.json", A.make_artifact("meteor.allocation", TINY_ALLOC))
    A.write_artifact(tmp_path / "p.json", A.make_artifact("meteor.prune-llm", cal))
    res = cli("flops", "--model", "tiny", "--allocation", "a.json", "--prune-llm", "p.json", "--json")
    assert res.exit_code == 0, res.output
    vt = json.loads(res.stdout)["visual_tokens"]
    assert vt["into_llm"] == 20 and vt["layer_averaged"] == pytest.approx((20 + 10 + 10 + 5) / 4)
    assert vt["stage3_source"].startswith("derived") and "warning: Stage-3 kept counts derived" in res.stderr
    res = cli("flops", "--model", "tiny", "--prune-llm", "p.json", "--json")
    assert json.loads(res.stdout)["visual_tokens"]["layer_averaged"] == pytest.approx((96 + 48 + 48 + 24) / 4)


def test_keep_schedules_of_every_policy_count_and_the_rest_name_the_fix():
    """sparsevlm (and any policy with a `keep` list) counts from it; `meteor flops` refused it before."""
    sv = {"method": "sparsevlm", "layers": [1, 2, 4], "keep": [0.7679, 0.5119, 0.302], "heads": 4}
    assert stage3_counts(sv, 96, None) == ([1, 2, 4], [74, 49, 29], "schedule")  # what eval measured at 48 of 96
    with pytest.raises(UsageError, match="'mine' Stage-3 policy") as e:
        stage3_counts({"method": "mine", "layers": [1]}, 96, None)
    assert "--stage3-kept" in e.value.hint and "calibrate" not in e.value.hint
