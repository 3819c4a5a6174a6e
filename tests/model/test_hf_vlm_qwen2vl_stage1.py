"""Stage 1 inside Qwen2-VL's vision tower (issue #16): whole merge windows, original M-RoPE ids.

The tiny Qwen2-VL of hf_vlm_builders: a 2-block ViT (patch 14, 2x2 merge, width 32), pixel
limits 4..16 merged tokens, so the 448x448 reference resizes to 112x112 (8x8 patches, 16
windows = the encoder's "native tokens"); pruning points [0, 0, 1]. A 112x84 (W x H) image has
a 6x8 patch grid (12 windows), a 56x112 one 8x4 (8 windows).
"""

from __future__ import annotations

import json

import pytest
import torch

from .hf_vlm_builders import images
from .test_hf_vlm_stage1 import PROMPTS, _allocation, check_meteor_at_a_per_crop_budget

SIZES = [(112, 84), (56, 112)]


@pytest.fixture(scope="module")
def qwen(hf_vlm_dirs):
    from meteor_cli.model.hf_vlm import load_hf_vlm

    return load_hf_vlm(hf_vlm_dirs["qwen2_vl"])


def _install(vlm, alloc):
    from meteor_cli.eval.runner import install_pruning

    install_pruning(vlm, alloc, None)


def _llm_positions(vlm):
    """Records the position_ids the text model gets at every call (prefill, then each decode step)."""
    seen = []

    def hook(module, args, kwargs):
        seen.append(kwargs["position_ids"].clone())

    return seen, vlm.hf.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)


def _prefill(vlm, ims, prompts=PROMPTS):
    inputs, vis = vlm.prepare(ims, prompts)
    with torch.no_grad():
        return vlm.prefill(inputs).logits, inputs, vis


def test_tower_is_the_models_own_visual_in_merge_windows(qwen):
    (adapter,) = qwen.encoders.values()
    assert adapter.net is qwen.hf.model.visual  # the same module, not a copy
    assert adapter.num_tokens == 16 and adapter.prune_points == [0, 0, 1] and adapter.m2 == 4


def test_full_budget_is_bit_identical_to_the_unmodified_model(qwen):
    ims = images(2, sizes=SIZES)
    ref, ref_inputs, ref_vis = _prefill(qwen, ims)
    f = ref_inputs.features
    with torch.no_grad():
        ref_feats = qwen.hf.model.get_image_features(f["pixel_values"], f["image_grid_thw"]).pooler_output
    rope, _ = qwen.hf.model.get_rope_index(f["input_ids"], mm_token_type_ids=f["mm_token_type_ids"],
                                           image_grid_thw=f["image_grid_thw"], attention_mask=f["attention_mask"])
    for alloc in (_allocation([16, 16, 16]), _allocation([16, 16, 16], "visionzip")):
        _install(qwen, alloc)
        try:
            out, inputs, vis = _prefill(qwen, ims)
        finally:
            qwen.stage1 = qwen.stage2 = None
        assert "pixel_values" not in inputs.features
        feats = inputs.features["mm_encoder_outputs"]["image"].pooler_output
        assert all(torch.equal(a, b) for a, b in zip(feats, ref_feats, strict=True))
        assert torch.equal(inputs.input_ids, ref_inputs.input_ids)
        assert torch.equal(inputs.features["position_ids"][1:], rope)
        assert torch.equal(out, ref)
        assert vis.per_encoder == ref_vis.per_encoder == {"vision": [12, 8]}


def test_kept_counts_windows_and_gathered_mrope_positions(qwen):
    ims = images(2, sizes=SIZES)
    _, ref_inputs, _ = _prefill(qwen, ims)
    f = ref_inputs.features
    rope, _ = qwen.hf.model.get_rope_index(f["input_ids"], mm_token_type_ids=f["mm_token_type_ids"],
                                           image_grid_thw=f["image_grid_thw"], attention_mask=f["attention_mask"])
    adapter = qwen.encoders["vision"]
    counts = []
    run_blocks = adapter.run_blocks
    adapter.run_blocks = lambda state, s, e: counts.append((s, state.counts())) or run_blocks(state, s, e)
    seen, handle = _llm_positions(qwen)
    _install(qwen, _allocation([10, 6, 3]))
    try:
        _, inputs, vis = _prefill(qwen, ims)
    finally:
        qwen.stage1 = qwen.stage2 = None
        del adapter.run_blocks
        handle.remove()
    # patches of each image at every segment (points [0, 0, 1]: the second segment is empty): image 0 has
    # 12 windows (10 kept at point 0, 6 at point 1), image 1 has 8 (all 8 at point 0, 6 at point 1)
    assert counts == [(0, [48, 32]), (1, [40, 32]), (1, [24, 24])]
    assert inputs.visual_len == [3, 3] and vis.per_encoder == {"vision": [3, 3]}
    feats = inputs.features["mm_encoder_outputs"]["image"].pooler_output
    assert [len(x) for x in feats] == [3, 3]
    (pos,) = seen  # what the text model got: the kept tokens' ORIGINAL (t, h, w) ids, text offsets unchanged
    assert torch.equal(pos, inputs.features["position_ids"])
    for b in range(2):
        kept = torch.tensor([o[1] for o in vis.kept_owners[b]])
        assert kept.tolist() == sorted(set(kept.tolist())) and len(kept) == 3
        old = f["attention_mask"][b].bool()
        s0, n0 = ref_inputs.visual_start[b], ref_inputs.visual_len[b]
        keep = [i for i in range(len(old)) if old[i] and not (s0 <= i < s0 + n0)]
        keep = sorted(keep + (s0 + kept).tolist())
        new = inputs.attention_mask[b].bool()
        assert torch.equal(pos[1:, b][:, new], rope[:, b, keep])
        s1 = inputs.visual_start[b]
        assert torch.equal(pos[1:, b, s1:s1 + 3], rope[:, b, s0 + kept])
        img = (inputs.input_ids[b] == qwen.image_token_id).nonzero().flatten().tolist()
        assert img == list(range(s1, s1 + 3))


def test_decoding_continues_the_unpruned_positions(qwen):
    ims = images(2, sizes=SIZES)
    tok = qwen.tokenizer
    runs = {}
    for name, alloc in (("unpruned", None), ("pruned", _allocation([10, 6, 3]))):
        if alloc is not None:
            _install(qwen, alloc)
        seen, handle = _llm_positions(qwen)
        try:
            inputs, _ = qwen.prepare(ims, PROMPTS)
            with torch.no_grad():
                qwen.hf.generate(**inputs.features, max_new_tokens=4, min_new_tokens=4, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        finally:
            qwen.stage1 = qwen.stage2 = None
            handle.remove()
        assert len(seen) == 4 and all(p.shape[-1] == 1 for p in seen[1:])
        runs[name] = [p[-3:] for p in seen[1:]]  # the M-RoPE rows of each decode step
    assert all(torch.equal(a, b) for a, b in zip(runs["pruned"], runs["unpruned"], strict=True))


def test_pruned_generation_same_under_eager_and_sdpa(hf_vlm_dirs):
    from meteor_cli.model.hf_vlm.qwen2_vl import Qwen2VL

    ims = images(2, sizes=SIZES)
    got = {}
    for impl in ("eager", "sdpa"):
        vlm = Qwen2VL.from_pretrained(hf_vlm_dirs["qwen2_vl"], attn_implementation=impl)
        _install(vlm, _allocation([10, 6, 3]))
        texts, inputs, vis, _ = vlm.generate(ims, PROMPTS, max_new_tokens=4, details=True)
        got[impl] = (texts, vis.kept_owners)
    assert got["eager"] == got["sdpa"]


def test_batched_equals_one_by_one(qwen):
    ims = images(2, sizes=SIZES)
    for alloc in (_allocation([10, 6, 3]), _allocation([10, 6, 3], "visionzip")):
        _install(qwen, alloc)
        try:
            out, inputs, vis = _prefill(qwen, ims)
            texts = qwen.generate(ims, PROMPTS, max_new_tokens=3)
            for b in range(2):
                one, inp1, vis1 = _prefill(qwen, ims[b:b + 1], PROMPTS[b:b + 1])
                assert vis1.kept_owners == [vis.kept_owners[b]]
                assert torch.allclose(one[0, -1], out[b, -1], atol=1e-5)
                assert qwen.generate(ims[b:b + 1], PROMPTS[b:b + 1], max_new_tokens=3) == [texts[b]]
        finally:
            qwen.stage1 = qwen.stage2 = None


@pytest.fixture(scope="module")
def synth112(tmp_path_factory):
    from typer.testing import CliRunner

    from meteor_cli.cli.app import app

    out = tmp_path_factory.mktemp("sv112") / "sv"  # 112x112 images: 16 windows each on the tiny Qwen2-VL
    res = CliRunner().invoke(app, ["synth", "--out", str(out), "--train", "4", "--eval", "4", "--image-size", "112", "-q"])
    assert res.exit_code == 0, res.output
    return out


def test_cli_rank_estimate_allocate_eval_infer_flops(cli, hf_vlm_dirs, synth112, tmp_path):
    d, synth = str(hf_vlm_dirs["qwen2_vl"]), synth112
    res = cli("rank-estimate", "--model", d, "--data", str(synth / "train.json"), "--count", "3", "--out", "r.json", "-q")
    assert res.exit_code == 0, res.output
    enc = json.loads((tmp_path / "r.json").read_text())["encoders"]["vision"]
    assert enc["points"] == [0, 0, 1] and enc["tokens"] == 16 and enc["stats"][0]["n"] == 3
    res = cli("allocate", "--ranks", "r.json", "--total", "6", "--fusion-keep", "6", "--model", d, "--out", "a.json")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "a.json").read_text())["stage1"]["encoders"]["vision"]["keep"][-1] == 6
    res = cli("eval", "--model", d, "--data", str(synth), "--limit", "4", "--batch-size", "2", "--allocation", "a.json",
              "--max-new-tokens", "2", "--out", "m.json", "-q")
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (tmp_path / "m.samples.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["visual_tokens"] == 6 and r["per_encoder"] == {"vision": 6} for r in rows)
    res = cli("infer", "--model", d, "--questions", str(synth / "eval" / "questions.jsonl"), "--image-root", str(synth),
              "--allocation", "a.json", "--max-new-tokens", "2", "--visualize", "viz", "--out", "a.jsonl", "-q")
    assert res.exit_code == 0, res.output
    for line in (tmp_path / "a.jsonl").read_text().splitlines():
        row = json.loads(line)
        assert row["metadata"]["visual_tokens"] == 6 and (tmp_path / row["visualization"]).is_file()
    res = cli("eval", "--model", d, "--data", str(synth), "--limit", "2", "--method", "unpruned,visionzip",
              "--visual-tokens", "4", "--max-new-tokens", "2", "--out", "v.json", "-q")
    assert res.exit_code == 0, res.output
    vis = {json.loads(x)["method"]: json.loads(x)["visual_tokens"] for x in (tmp_path / "v.samples.jsonl").read_text().splitlines()}
    assert vis == {"unpruned": 16, "visionzip": 4}
    res = cli("eval", "--model", d, "--data", str(synth), "--method", "all-heads", "--visual-tokens", "8", "--out", "f.json")
    assert res.exit_code == 2 and "prune-llm" in res.output  # no ratio to carry a per-image budget

    # flops: the tower exact per kept patch (4 per window), the merger per kept window
    from meteor_cli.artifacts import make_artifact, write_artifact

    write_artifact(tmp_path / "k.json", make_artifact("meteor.allocation", _allocation([10, 6, 3])))
    res = cli("flops", "--model", d, "--allocation", "k.json", "--image-size", "112x84", "--convention", "macs", "--json")
    assert res.exit_code == 0, res.output
    body = json.loads(res.stdout)
    per_patch = 32 * 96 + 32 * 32 + 32 * 128 + 128 * 32  # qkv, proj, fc1, fc2 (width 32, MLP 128)
    embed = 48 * 32 * 3 * 2 * 14 * 14  # 6x8 patches x the 2x14x14x3 -> 32 convolution
    patches = [48, 24]  # block 0: all 12 windows; block 1: 6 windows (points [0, 0, 1], keep [10, 6, 3])
    assert body["stage1"]["per_block"] == [12, 6]
    assert body["components"]["encoder/vision"] == embed + sum(n * per_patch + 2 * n * n * 32 for n in patches)
    assert body["components"]["projector/vision"] == 3 * (128 * 128 + 128 * 64)
    assert body["visual_tokens"]["into_llm"] == 3 and body["total"] < body["unpruned_total"]
    res = cli("flops", "--model", d, "--allocation", "k.json", "--image-size", "56x56", "--json")
    assert json.loads(res.stdout)["visual_tokens"]["into_llm"] == 3  # 4 windows, 3 kept
    write_artifact(tmp_path / "full.json", make_artifact("meteor.allocation", _allocation([16, 16, 16])))
    full = json.loads(cli("flops", "--model", d, "--allocation", "full.json", "--image-size", "112x84", "--json").stdout)
    plain = json.loads(cli("flops", "--model", d, "--image-size", "112x84", "--json").stdout)
    assert full["components"] == plain["components"]  # nothing pruned: the unpruned count, exactly


def test_pruned_tower_equals_transformers_loop_on_the_kept_patches(qwen):
    """Oracle: transformers' own tower forward, its block 1 fed (by a pre-hook) the kept patches'
    hidden states, their slices of ITS rotary embedding and the kept counts' cu_seqlens."""
    ims = images(2, sizes=SIZES)
    _install(qwen, _allocation([10, 10, 10]))  # prunes after block 0 only: image 0 keeps 10 of 12 windows
    try:
        _, inputs, vis = _prefill(qwen, ims)
    finally:
        qwen.stage1 = qwen.stage2 = None
    feats = inputs.features["mm_encoder_outputs"]["image"].pooler_output
    idx, counts, offset = [], [], 0
    for b, (_, h, w) in enumerate(inputs.features["image_grid_thw"].tolist()):
        wins = torch.tensor([o[1] for o in vis.kept_owners[b]])
        idx.append((wins[:, None] * 4 + torch.arange(4)).flatten() + offset)
        counts.append(4 * len(wins))
        offset += h * w
    idx = torch.cat(idx)
    assert counts == [40, 32]

    def feed_kept(module, args, kwargs):
        cos, sin = kwargs["position_embeddings"]
        kwargs["position_embeddings"] = (cos[idx], sin[idx])
        kwargs["cu_seqlens"] = torch.nn.functional.pad(torch.tensor(counts).cumsum(0, dtype=torch.int32), (1, 0))
        kwargs["max_seqlen"] = None
        return (args[0][idx],), kwargs

    _, ref_inputs, _ = _prefill(qwen, ims)
    f = ref_inputs.features
    handle = qwen.hf.model.visual.blocks[1].register_forward_pre_hook(feed_kept, with_kwargs=True)
    try:
        with torch.no_grad():
            want = qwen.hf.model.visual(f["pixel_values"], grid_thw=f["image_grid_thw"]).pooler_output
    finally:
        handle.remove()
    assert torch.equal(torch.cat(feats), want)


def test_cli_stage3_ratio_budgets_are_a_fraction_of_each_images_span(cli, hf_vlm_dirs, synth112, tmp_path):
    """--visual-tokens T with fastv/pdrop/dart: T of the 16 reference tokens = the same fraction of every
    image's own span (here half of 12, 8, 16 and 12 windows), averaged over the LLM's layers."""
    import shutil

    from PIL import Image

    sv = tmp_path / "sv"
    shutil.copytree(synth112, sv)
    spans = [12, 8, 16, 12]
    questions = [json.loads(x) for x in (sv / "eval" / "questions.jsonl").read_text().splitlines()]
    for q, size in zip(questions, [(112, 84), (56, 112), (112, 112), (84, 112)]):
        Image.open(sv / q["image"]).convert("RGB").resize(size).save(sv / q["image"])
    res = cli("eval", "--model", str(hf_vlm_dirs["qwen2_vl"]), "--data", str(sv), "--method", "fastv,pdrop,dart,sparsevlm",
              "--visual-tokens", "8", "--batch-size", "2", "--max-new-tokens", "2", "--out", "s3.json", "--json")
    assert res.exit_code == 0, res.output
    for r in json.loads(res.stdout)["results"]:
        assert r["tokens"]["stage2_visual"] == sum(spans) / 4, r["label"]  # the whole span enters the LLM
        assert r["tokens"]["stage3_layer_averaged"] == pytest.approx(sum(spans) / 8, abs=0.75), r["label"]
    rows = [json.loads(x) for x in (tmp_path / "s3.samples.jsonl").read_text().splitlines()]
    assert len(rows) == 16
    for row in rows:
        n = spans[row["pos"]]
        assert row["visual_tokens"] == n
        assert row["stage3"]["layer_averaged"] == pytest.approx(n / 2, abs=1.0), row


def test_cli_meteor_at_a_per_image_budget(cli, hf_vlm_dirs, synth112, tmp_path):
    rows = check_meteor_at_a_per_crop_budget(cli, str(hf_vlm_dirs["qwen2_vl"]), synth112, tmp_path, 8)
    assert all(r["visual_tokens"] == 10 for r in rows)  # 16 windows per 112x112 image, Stage 1-2 keep 10
