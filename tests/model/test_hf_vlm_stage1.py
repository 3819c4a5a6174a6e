"""Stage 1 (and VisionZip) on the CLIP tower of a transformers LLaVA-1.5 directory (issue #16 d, #17).

The tiny LLaVA of hf_vlm_builders: CLIP 32 px / patch 8 (16 patch tokens + CLS), 3 layers,
``vision_feature_layer=-2`` → the tower meteor runs has 2 layers, pruning points [0, 0, 1].
"""

from __future__ import annotations

import json

import pytest
import torch

from .hf_vlm_builders import images

PROMPTS = ["what is the color", "how many objects are there in the image on the left"]  # ragged: left padding


@pytest.fixture(scope="module")
def llava(hf_vlm_dirs):
    from meteor_cli.model.hf_vlm import load_hf_vlm

    return load_hf_vlm(hf_vlm_dirs["llava"])


def _allocation(keep: list[int], method: str = "meteor", **options) -> dict:
    from meteor_cli.pruning.allocation import build_allocation

    ranks = {"method": "test", "encoders": {"vision": {"tokens": 16, "points": [0, 0, 1], "rank": [1.0, 1.0, 1.0]}}}
    body = build_allocation(ranks, totals=keep, fusion_keep=keep[-1])
    body["stage1"]["method"] = method
    body["stage2"].update(method="meteor", score="zscore", floor=0.0)
    if options:
        body["stage1"]["options"] = options
    return body


class Recorder:
    """Wraps a Stage-1 hook: the kept count per sample and the kept grid positions at each point."""

    def __init__(self, hook):
        self.hook, self.calls = hook, []

    def __call__(self, name, j, state, adapter):
        out = self.hook(name, j, state, adapter)
        idx = out[0] if isinstance(out, tuple) else out
        pos = state.pos if idx is None else torch.gather(state.pos, 1, idx)
        self.calls.append((j, [int(r.numel()) for r in pos], pos.clone()))
        return out


def _logits(vlm, ims, prompts):
    inputs, vis = vlm.prepare(ims, prompts)
    with torch.no_grad():
        return vlm.prefill(inputs).logits, inputs, vis


def test_tower_is_the_models_own_up_to_the_feature_layer(llava):
    (adapter,) = llava.encoders.values()
    assert list(llava.encoders) == ["vision"]
    assert adapter.net is llava.hf.model.vision_tower  # the same module, not a copy
    assert adapter.depth == 2 and adapter.prune_points == [0, 0, 1] and adapter.num_tokens == 16


def test_full_budget_gives_identical_logits(llava):
    from meteor_cli.eval.runner import install_pruning

    ims = images(2, sizes=[(50, 40), (30, 60)])
    ref, ref_inputs, _ = _logits(llava, ims, PROMPTS)
    for alloc in (_allocation([16, 16, 16]), _allocation([16, 16, 16], "visionzip")):
        install_pruning(llava, alloc, None)
        try:
            out, inputs, vis = _logits(llava, ims, PROMPTS)
        finally:
            llava.stage1 = llava.stage2 = None
        assert "pixel_values" not in inputs.features and "mm_encoder_outputs" in inputs.features
        assert torch.equal(inputs.input_ids, ref_inputs.input_ids)
        assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()
        assert vis.per_encoder == {"vision": [16, 16]}


def test_kept_counts_per_point_ragged_batch_and_batched_equals_single(llava):
    from meteor_cli.eval.runner import install_pruning

    ims = images(2, sizes=[(50, 40), (30, 60)])
    install_pruning(llava, _allocation([12, 8, 5]), None)
    rec = Recorder(llava.stage1)
    llava.stage1 = rec
    try:
        out, inputs, vis = _logits(llava, ims, PROMPTS)
        assert [(j, n) for j, n, _ in rec.calls] == [(0, [12, 12]), (1, [8, 8]), (2, [5, 5])]
        assert inputs.visual_len == [5, 5] and vis.per_encoder == {"vision": [5, 5]}
        ids, mask = inputs.input_ids, inputs.attention_mask
        for b in range(2):  # exactly 5 placeholders, one contiguous run, left padding kept
            img = (ids[b] == llava.image_token_id).nonzero().flatten().tolist()
            assert img == list(range(inputs.visual_start[b], inputs.visual_start[b] + 5))
            real = mask[b].bool()
            assert not real[: int((~real).sum())].any()
        assert int((~mask[0].bool()).sum()) > 0  # the shorter prompt is padded on the left
        batched_pos = [p for _, _, p in rec.calls]
        texts = llava.generate(ims, PROMPTS, max_new_tokens=3)
        for b in range(2):
            rec.calls.clear()
            one, inp1, _ = _logits(llava, ims[b:b + 1], PROMPTS[b:b + 1])
            assert torch.allclose(one[0, -1], out[b, -1], atol=1e-5)
            assert all(torch.equal(p[0], q[b]) for (_, _, p), q in zip(rec.calls, batched_pos))
            assert llava.generate(ims[b:b + 1], PROMPTS[b:b + 1], max_new_tokens=3) == [texts[b]]
    finally:
        llava.stage1 = llava.stage2 = None


def test_visionzip_dominant_tokens_are_the_top_cls_attention_of_the_feature_layer(hf_vlm_dirs):
    """Checked against transformers' own eager attention of the selected layer (not meteor's recomputation)."""
    from meteor_cli.eval.runner import install_pruning
    from meteor_cli.model.hf_vlm import load_hf_vlm

    vlm = load_hf_vlm(hf_vlm_dirs["llava"], attn_implementation="eager")
    ims = images(2, seed=3)
    inputs = vlm.process(ims, PROMPTS)
    with torch.no_grad():
        out = vlm.hf.model.vision_tower(inputs["pixel_values"], output_attentions=True)
    layer = vlm.encoders["vision"].depth - 1  # the layer whose output is hidden_states[-2]
    cls_row = out.attentions[layer][:, :, 0, 1:].float().mean(1)  # (B, 16)
    top = torch.sort(torch.topk(cls_row, 6, dim=1).indices, dim=1).values
    install_pruning(vlm, _allocation([16, 16, 6], "visionzip", dominant=6, contextual=0), None)
    rec = Recorder(vlm.stage1)
    vlm.stage1 = rec
    vlm.prepare(ims, PROMPTS)
    (j, counts, pos), = [c for c in rec.calls if c[0] == 2]
    assert counts == [6, 6] and torch.equal(pos, top)
    # with contextual tokens: 4 dominant (the top 4) + 2 merged, 6 into the LLM
    install_pruning(vlm, _allocation([16, 16, 6], "visionzip", dominant=4, contextual=2), None)
    rec = Recorder(vlm.stage1)
    vlm.stage1 = rec
    inputs, vis = vlm.prepare(ims, PROMPTS)
    (_, counts, pos), = [c for c in rec.calls if c[0] == 2]
    top4 = torch.topk(cls_row, 4, dim=1).indices
    assert counts == [6, 6] and vis.per_encoder == {"vision": [6, 6]}
    assert all(set(top4[b].tolist()) <= set(pos[b].tolist()) for b in range(2))


def test_flops_allocation_counts_the_pruned_tower(cli, hf_vlm_dirs, tmp_path):
    d = str(hf_vlm_dirs["llava"])
    from meteor_cli.artifacts import make_artifact, write_artifact

    write_artifact(tmp_path / "a.json", make_artifact("meteor.allocation", _allocation([12, 8, 5])))
    res = cli("flops", "--model", d, "--allocation", "a.json", "--convention", "macs", "--json")
    assert res.exit_code == 0, res.output
    body = json.loads(res.stdout)
    per_token = 4 * 32 * 32 + 2 * 32 * 64  # q, k, v, out + fc1, fc2 (width 32, MLP 64)
    embed = 16 * 32 * 3 * 8 * 8  # 16 patches x the 8x8x3 -> 32 convolution
    blocks = [16, 8]  # patch tokens into layers 0 and 1 (points [0, 0, 1], keep [12, 8, 5])
    hand = embed + sum((n + 1) * per_token + 2 * (n + 1) ** 2 * 32 for n in blocks)
    assert body["components"]["encoder/vision"] == hand
    assert body["visual_tokens"]["into_llm"] == 5 and body["stage1"]["per_block"] == blocks
    assert body["total"] < body["unpruned_total"]
    unpruned = 16 * 32 * 3 * 8 * 8 + 3 * (17 * per_token + 2 * 17 ** 2 * 32)  # all 3 layers, as transformers runs them
    res = cli("flops", "--model", d, "--convention", "macs", "--json")
    assert json.loads(res.stdout)["components"]["encoder/vision"] == unpruned


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from typer.testing import CliRunner

    from meteor_cli.cli.app import app

    out = tmp_path_factory.mktemp("sv1") / "sv"
    res = CliRunner().invoke(app, ["synth", "--out", str(out), "--train", "6", "--eval", "4", "--image-size", "48", "-q"])
    assert res.exit_code == 0, res.output
    return out


def test_cli_rank_estimate_allocate_eval_allocation(cli, hf_vlm_dirs, synth, tmp_path):
    d = str(hf_vlm_dirs["llava"])
    res = cli("rank-estimate", "--model", d, "--data", str(synth / "train.json"), "--count", "3", "--out", "r.json", "-q")
    assert res.exit_code == 0, res.output
    ranks = json.loads((tmp_path / "r.json").read_text())
    assert list(ranks["encoders"]) == ["vision"] and ranks["encoders"]["vision"]["points"] == [0, 0, 1]
    res = cli("allocate", "--ranks", "r.json", "--total", "6", "--fusion-keep", "6", "--model", d, "--out", "a.json")
    assert res.exit_code == 0, res.output
    keep = json.loads((tmp_path / "a.json").read_text())["stage1"]["encoders"]["vision"]["keep"]
    assert keep[-1] == 6
    res = cli("eval", "--model", d, "--data", str(synth), "--limit", "4", "--batch-size", "2", "--allocation", "a.json",
              "--max-new-tokens", "2", "--out", "m.json", "-q")
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (tmp_path / "m.samples.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["visual_tokens"] == 6 and r["per_encoder"] == {"vision": 6} for r in rows)
    result = json.loads((tmp_path / "m.json").read_text())["results"][0]
    assert result["tokens"]["stage1_per_encoder"] == {"vision": 6}
    res = cli("infer", "--model", d, "--questions", str(synth / "eval" / "questions.jsonl"), "--image-root", str(synth),
              "--allocation", "a.json", "--max-new-tokens", "2", "--out", "a.jsonl", "-q")
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "a.jsonl").read_text().splitlines()[0])["metadata"]
    assert meta["visual_tokens"] == 6 and meta["stage2"] == {"vision": 6}


def test_cli_methods_side_by_side_at_one_budget(cli, hf_vlm_dirs, synth, tmp_path):
    d = str(hf_vlm_dirs["llava"])
    res = cli("eval", "--model", d, "--data", str(synth), "--limit", "2", "--method", "unpruned,visionzip,fastv",
              "--visual-tokens", "8", "--max-new-tokens", "2", "--out", "m.json", "-q")
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (tmp_path / "m.samples.jsonl").read_text().splitlines()]
    vis = {r["method"]: r["visual_tokens"] for r in rows}
    assert vis == {"unpruned": 16, "visionzip": 8, "fastv": 16}
    results = {r["label"]: r for r in json.loads((tmp_path / "m.json").read_text())["results"]}
    assert results["visionzip@8"]["flops"]["ratio"] < 1.0 and results["fastv@8"]["flops"]["ratio"] < 1.0


def test_stage1_refused_with_the_reason_where_there_is_no_adapter(cli, hf_vlm_dirs, synth, monkeypatch):
    from meteor_cli.model.hf_vlm.qwen2_vl import Qwen2VL

    # every shipped family has a Stage-1 adapter now: a family without one (stage1_missing set) is refused by name
    monkeypatch.setattr(Qwen2VL, "stage1_missing", "its tower needs its own Stage-1 adapter (test)")
    q = str(hf_vlm_dirs["qwen2_vl"])
    res = cli("rank-estimate", "--model", q, "--data", str(synth / "train.json"), "--out", "r.json")
    assert res.exit_code == 2 and "own Stage-1 adapter" in res.output
    res = cli("eval", "--model", q, "--data", str(synth), "--method", "visionzip", "--visual-tokens", "4", "--out", "m.json")
    assert res.exit_code == 2 and "own Stage-1 adapter" in res.output and "prune-llm" in res.output


def check_meteor_at_a_per_crop_budget(cli, model: str, data, tmp_path, t: int, count: int = 4) -> list[dict]:
    """``eval --method meteor --visual-tokens t`` on a model whose span depends on the image (LLaVA-NeXT
    tiles, Qwen2-VL): Stage 1-2 keep round(1.25 t) per tile / image, Stage 3's scale is calibrated
    so the layer-averaged tokens are t / round(1.25 t) of each span on average (on the run's own
    questions here, so the rows hit it). Returns the per-sample rows."""
    res = cli("rank-estimate", "--model", model, "--data", str(data / "train.json"), "--count", "3", "--out", "r.json",
              "-q")
    assert res.exit_code == 0, res.output
    assert cli("prune-llm", "--model", model, "--heads", "2", "--out", "p.json", "-q").exit_code == 0
    res = cli("eval", "--model", model, "--data", str(data), "--limit", str(count), "--batch-size", "2", "--method",
              "meteor", "--visual-tokens", str(t), "--ranks", "r.json", "--prune-llm", "p.json", "--max-new-tokens", "2",
              "--calibrate-count", str(count), "--out", "mt.json", "--json")
    assert res.exit_code == 0, res.output
    (result,) = json.loads(res.stdout)["results"]
    s2 = round(1.25 * t)
    cal = result["stage3_calibration"]
    assert cal["unit"] == "fraction of each span" and cal["target"] == pytest.approx(t / s2)
    assert cal["achieved"] == pytest.approx(t / s2, rel=0.02) and cal["n"] == count
    rows = [json.loads(x) for x in (tmp_path / "mt.samples.jsonl").read_text().splitlines()]
    assert len(rows) == count
    ratios = [r["stage3"]["layer_averaged"] / r["visual_tokens"] for r in rows]
    assert sum(ratios) / len(ratios) == pytest.approx(cal["achieved"], abs=1e-6)  # eval measures what was fitted
    return rows
