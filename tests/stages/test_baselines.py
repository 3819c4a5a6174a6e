"""VisionZip (Stage 1) and pool (Stage 2) baselines: exact budgets, determinism, hand-computed
selections on inputs where the answer is obvious, and the CLI options that reach every new
baseline (DART included; its own tests are in tests/llm/test_dart.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from meteor_cli import artifacts as A
from meteor_cli.errors import ExitCode, UsageError
from meteor_cli.model.checkpoint import load_model
from meteor_cli.model.encoders.base import TokenState
from meteor_cli.pruning.pool import pool_prune, pooled_grid
from meteor_cli.pruning.stage1 import build_stage1, policy_options
from meteor_cli.pruning.stage2 import Stage2
from meteor_cli.pruning.visionzip import VisionZip, split_budget, visionzip_select

ALLOC = {"strategy": "rank", "stage1": {"totals": [96, 96, 30], "encoders": {
    "vit": {"points": [0, 1, 2], "keep": [16, 16, 8]}, "clip": {"points": [0, 1, 2], "keep": [64, 64, 16]},
    "convnext": {"points": [3, 3, 3], "keep": [16, 16, 6]}}}, "stage2": {"keep": 40}}  # tiny: 16, 64, 16 tokens


@pytest.fixture(scope="module")
def vlm():
    return load_model("tiny")


# -- VisionZip ---------------------------------------------------------------------------------


def test_visionzip_dominant_set_is_the_highest_attention_tokens_and_contextual_tokens_merge_by_hand():
    x = torch.zeros(1, 8, 2)
    x[0, :, 0] = torch.arange(8.0) + 1  # distinct tokens
    x[0, :, 1] = torch.tensor([1.0, 1, -1, -1, 1, 1, -1, -1])
    attn = torch.tensor([[0.05, 0.3, 0.05, 0.05, 0.25, 0.1, 0.1, 0.1]])
    keep, vals = visionzip_select(x, attn, dominant=2, contextual=2)
    # dominant: tokens 1 and 4; remaining R = [0,2,3,5,6,7], step 3 → targets at 0 and 3 → tokens 0 and 5
    assert keep.tolist() == [[0, 1, 4, 5]]
    assert torch.equal(vals[0, 1], x[0, 1]) and torch.equal(vals[0, 2], x[0, 4])  # dominant tokens unchanged
    # members 2,3,6,7 join the most similar target (cosine): 2,3 (second coordinate −1) ... compute by hand
    t = torch.nn.functional.normalize(x[0, [0, 5]], dim=-1)
    owners = {m: int(torch.argmax(torch.nn.functional.normalize(x[0, m], dim=-1) @ t.T)) for m in (2, 3, 6, 7)}
    for slot, tok in ((0, 0), (1, 5)):
        members = [m for m, o in owners.items() if o == slot]
        expect = x[0, tok] + (x[0, members].mean(0) if members else 0)
        assert torch.allclose(vals[0, [0, 3][slot]], expect)


def test_visionzip_split_follows_the_reference_ratio_or_the_given_counts():
    assert split_budget(64) == (54, 10) and split_budget(16) == (14, 2)
    assert split_budget(16, dominant=10) == (10, 6) and split_budget(16, contextual=3) == (13, 3)
    assert split_budget(16, 5, 1) == (5, 1)


def _counting_hook(hook):
    calls = []

    def rec(name, j, state, adapter):
        out = hook(name, j, state, adapter)
        calls.append((name, j, out))
        return out
    return rec, calls


def test_visionzip_keeps_the_final_budget_exactly_at_the_last_point_only(vlm):
    hook, calls = _counting_hook(VisionZip({n: e["keep"] for n, e in ALLOC["stage1"]["encoders"].items()}))
    vlm.stage1 = hook
    try:
        with torch.no_grad():
            a = vlm.encode_images(torch.rand(3, 3, 128, 128, generator=torch.Generator().manual_seed(0)))
            b = vlm.encode_images(torch.rand(3, 3, 128, 128, generator=torch.Generator().manual_seed(0)))
    finally:
        vlm.stage1 = None
    assert {n: v[0] for n, v in a.per_encoder.items()} == {"vit": 8, "clip": 16, "convnext": 6}
    assert all(out is None for _, j, out in calls if j < 2)  # nothing pruned before the last point
    for _, j, out in calls:
        if out is not None:
            idx = out[0]
            assert torch.equal(idx, torch.sort(idx, dim=1).values) and len(torch.unique(idx[0])) == idx.shape[1]
    assert torch.equal(a.z, b.z) and torch.equal(a.pos, b.pos)  # deterministic


def test_visionzip_dominant_tokens_come_from_cls_attention_in_the_model(vlm):
    """With contextual=0, the kept CLIP tokens are exactly the top-k of the adapter's CLS attention."""
    seen = {}
    vz = VisionZip({n: e["keep"] for n, e in ALLOC["stage1"]["encoders"].items()}, dominant=5, contextual=0)

    def hook(name, j, state, adapter):
        out = vz(name, j, state, adapter)
        if name == "clip" and out is not None:
            seen["attn"], seen["keep"] = adapter.cls_attention(state, adapter.prune_points[j]), out[0]
        return out
    vlm.stage1 = hook
    try:
        with torch.no_grad():
            vlm.encode_images(torch.rand(2, 3, 128, 128))
    finally:
        vlm.stage1 = None
    top = torch.sort(torch.topk(seen["attn"], 5, dim=1).indices, dim=1).values
    assert torch.equal(seen["keep"], top)


def test_visionzip_options_flow_through_the_allocation_and_are_checked(vlm):
    alloc = {**ALLOC, "stage1": {**ALLOC["stage1"], "method": "visionzip", "options": {"dominant": 3, "contextual": 1}}}
    hook = build_stage1(alloc, vlm.encoders)
    assert (hook.dominant, hook.contextual) == (3, 1)
    assert build_stage1(alloc, vlm.encoders, options={"contextual": "2"}).contextual == 2  # CLI over the allocation
    assert not hasattr(build_stage1(alloc, vlm.encoders, "prumerge+"), "dominant")  # other method: options not applied
    with pytest.raises(UsageError, match="takes no option 'dominnat'") as info:
        policy_options("visionzip", {"dominnat": "3"})
    assert "contextual, dominant" in str(info.value.hint)


# -- pool --------------------------------------------------------------------------------------


def test_pool_equals_avg_pool2d_on_a_full_map():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 64 + 16, 5, generator=g)  # encoder 0: 8×8, encoder 1: 4×4
    ids = torch.tensor([0] * 64 + [1] * 16)
    res = pool_prune(z, ids, 20, grids=[(8, 8), (4, 4)])  # quotas ∝ 64:16 → 16 and 4
    m0 = z[:, :64].transpose(1, 2).reshape(2, 5, 8, 8)
    m1 = z[:, 64:].transpose(1, 2).reshape(2, 5, 4, 4)
    expect = torch.cat([F.avg_pool2d(m0, 2).flatten(2).transpose(1, 2), F.avg_pool2d(m1, 2).flatten(2).transpose(1, 2)], 1)
    assert torch.allclose(res.values, expect, atol=1e-6)
    assert res.per_encoder.tolist() == [[16, 4], [16, 4]] and res.indices.shape == (2, 20)
    assert res.indices[0, :4].tolist() == [0, 2, 4, 6] and res.indices[0, 16].item() == 64  # first token of each window


def test_pool_non_square_budgets_and_masked_maps():
    assert pooled_grid(8, 4, 4)[:2] == (4, 2) and pooled_grid(32, 8, 8)[:2] == (8, 4) and pooled_grid(6, 4, 8)[:2] == (2, 3)
    a, b, cells = pooled_grid(7, 4, 4)  # prime, wider than the map: a near-square grid, 7 of its cells
    assert a * b >= 7 and len(cells) == 7 and len(set(cells.tolist())) == 7
    # Stage 1 kept only tokens 0, 1 and 5 of a 4×4 map: each 2×2 window averages what is there
    z = torch.arange(3.0).view(1, 3, 1) + 1
    res = pool_prune(z, torch.zeros(3, dtype=torch.long), 2, pos=torch.tensor([[0, 1, 5]]), grids=[(4, 4)])
    # quota 2 → 1×2 grid: left half holds tokens at 0, 1, 5 (mean 2); right half is empty → the encoder mean 2
    assert res.values.flatten().tolist() == [2.0, 2.0]
    for k in (1, 5, 7, 13):
        out = pool_prune(torch.randn(3, 32, 4), torch.tensor([0] * 16 + [1] * 16), k, grids=[(4, 4), (4, 4)])
        assert out.values.shape == (3, k, 4) and int(out.per_encoder.sum(1)[0]) == k


def test_pool_runs_as_the_stage2_hook_of_the_model(vlm):
    vlm.stage2 = Stage2(24, "pool", grids=[(a.cfg.grid, a.cfg.grid) for a in vlm.encoders.values()])
    try:
        with torch.no_grad():
            vis = vlm.encode_images(torch.rand(2, 3, 128, 128))
    finally:
        vlm.stage2 = None
    assert vis.z.shape[:2] == (2, 24) and vis.per_encoder == {"vit": [4, 4], "clip": [16, 16], "convnext": [4, 4]}


# -- the CLI -----------------------------------------------------------------------------------


def test_cli_options_reach_the_baselines(cli, tmp_path):
    from meteor_cli.data.synthvqa import generate

    ranks = {"method": "nuclear", "grid": 8, "encoders": {
        n: {"points": p, "rank": [0.5] * 3, "std": [0.0] * 3, "n_images": 1, "tokens": t}
        for n, p, t in (("vit", [0, 1, 2], 16), ("clip", [0, 1, 2], 64), ("convnext", [3, 3, 3], 16))}}
    A.write_artifact(tmp_path / "ranks.json", A.make_artifact("meteor.ranks", ranks))
    res = cli("allocate", "--ranks", "ranks.json", "--schedule", "explicit", "--totals", "96,96,30", "--fusion-keep", "30",
              "--stage1-method", "visionzip", "--stage1-option", "dominant=4", "--stage1-option", "contextual=2")
    assert res.exit_code == 0, res.output
    s1 = A.read_artifact(tmp_path / "allocation.json")["stage1"]
    assert s1["method"] == "visionzip" and s1["options"] == {"dominant": 4, "contextual": 2}
    res = cli("allocate", "--ranks", "ranks.json", "--schedule", "explicit", "--totals", "96,96,30", "--fusion-keep", "30",
              "--stage1-method", "visionzip", "--dominant", "4", "--contextual", "2", "--out", "literal.json")
    assert res.exit_code == 0, res.output  # VisionZip's own names are the same options
    assert A.read_artifact(tmp_path / "literal.json")["stage1"] == s1
    res = cli("allocate", "--ranks", "ranks.json", "--total", "30", "--dominant", "4", "--out", "y.json")
    assert res.exit_code == ExitCode.USAGE and "--stage1-method visionzip" in res.stderr
    res = cli("allocate", "--ranks", "ranks.json", "--total", "30", "--stage1-method", "visionzip",
              "--stage1-option", "dominnat=4", "--out", "x.json")
    assert res.exit_code == ExitCode.USAGE and "takes no option 'dominnat'" in res.stderr
    generate(tmp_path / "sv", n_train=0, n_eval=2, seed=0)
    infer = ["infer", "--model", "tiny", "--image", "sv/images/eval/000000.png", "--prompt", "what shape ?",
             "--max-new-tokens", "2", "--device", "cpu", "-q"]
    res = cli(*infer, "--allocation", "allocation.json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["metadata"]["per_encoder"] == {"vit": 6, "clip": 6, "convnext": 6}
    res = cli(*infer, "--allocation", "allocation.json", "--stage1-option", "contextual=0")
    assert json.loads(res.stdout)["metadata"]["per_encoder"] == {"vit": 4, "clip": 4, "convnext": 4}
    res = cli(*infer, "--stage1-option", "contextual=0")
    assert res.exit_code == ExitCode.USAGE and "needs --allocation" in res.stderr
    res = cli("allocate", "--ranks", "ranks.json", "--schedule", "explicit", "--totals", "96,96,96", "--fusion-keep", "24",
              "--stage2-method", "pool", "--out", "pool.json")
    assert res.exit_code == 0, res.output
    res = cli(*infer, "--allocation", "pool.json")
    assert json.loads(res.stdout)["metadata"]["per_encoder"] == {"vit": 4, "clip": 16, "convnext": 4}
    res = cli("prune-llm", "--model", "tiny", "--method", "dart", "--layers", "2", "--keep", "12",
              "--option", "pivot_text=2", "--out", "dart.json")
    assert res.exit_code == 0, res.output
    body = A.read_artifact(tmp_path / "dart.json")
    assert body["method"] == "dart" and body["keep"] == [12] and body["pivot_text"] == 2
    res = cli("prune-llm", "--model", "tiny", "--method", "dart", "--option", "pivots=2", "--out", "bad.json")
    assert res.exit_code == ExitCode.USAGE and "no setting 'pivots'" in res.stderr
    res = cli("eval", "--model", "tiny", "--data", "sv", "--prune-llm", "dart.json", "--max-new-tokens", "2",
              "--device", "cpu", "-q", "--json")
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in next(tmp_path.glob("*samples.jsonl")).read_text().splitlines()]
    assert all(r["stage3"]["kept"] == [12] for r in rows)


def test_train_with_visionzip_options(cli, tmp_path, monkeypatch):
    """``train --stage1-option`` reaches the policy installed in the training loop."""
    from meteor_cli.data.synthvqa import generate
    from meteor_cli.pruning import visionzip as VZ

    seen = []
    real = VZ.visionzip_select
    monkeypatch.setattr(VZ, "visionzip_select", lambda x, a, d, c: seen.append((d, c)) or real(x, a, d, c))
    generate(tmp_path / "sv", n_train=4, n_eval=0, seed=0)
    A.write_artifact(tmp_path / "plain.json", A.make_artifact("meteor.allocation", ALLOC))
    res = cli("train", "--model", "tiny", "--data", "sv/train.json", "--allocation", "plain.json", "--stage1-method",
              "visionzip", "--stage1-option", "dominant=3", "--stage1-option", "contextual=1", "--batch-size", "2",
              "--max-steps", "1", "--lr", "1e-3", "--out", "m", "--device", "cpu", "-q", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["steps"] == 1 and seen and set(seen) == {(3, 1)}
