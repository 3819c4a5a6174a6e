"""Stage 1 on LLaVA-NeXT's anyres tiles (issue #16): every tile through the CLIP tower with the
allocation's budgets, ``pack_image_features`` rebuilt with the kept tokens only.

The tiny LLaVA-NeXT of hf_vlm_builders: CLIP 32 px / patch 8 (a 4x4 patch grid per tile),
``vision_feature_layer=-2`` (2 tower layers run, points [0, 0, 1]), pinpoints 32x64 / 64x32 /
64x64. A 50x40 (W x H) image gets 1 + 4 tiles (an 8x8 grid whose top and bottom rows are
padding); a 30x60 one 1 + 2 tiles (an 8x4 grid, no padding).
"""

from __future__ import annotations

import json

import pytest
import torch

from .hf_vlm_builders import images
from .test_hf_vlm_stage1 import PROMPTS, Recorder, _allocation, _logits, check_meteor_at_a_per_crop_budget, synth  # noqa: F401 (synth: a fixture)

SIZES = [(50, 40), (30, 60)]
TILES = [5, 3]


@pytest.fixture(scope="module")
def nxt(hf_vlm_dirs):
    from meteor_cli.model.hf_vlm import load_hf_vlm

    return load_hf_vlm(hf_vlm_dirs["llava_next"])


def _installed(vlm, alloc):
    from meteor_cli.eval.runner import install_pruning

    install_pruning(vlm, alloc, None)
    rec = Recorder(vlm.stage1)
    vlm.stage1 = rec
    return rec


def _oracle(z, pos, image_size, tiles, side, newline):
    """pack_image_features' own steps (transformers' view/permute/unpad_image) on a grid where the
    pruned tokens are marked absent; each kept row followed by a newline."""
    from transformers.models.llava_next.modeling_llava_next import unpad_image

    nh, nw = tiles
    d = z.shape[-1]
    grid = torch.zeros(nh * nw, side * side, d + 1, dtype=z.dtype)
    for t in range(nh * nw):
        grid[t, pos[1 + t], :d] = z[1 + t]
        grid[t, pos[1 + t], d] = 1  # kept mark
    g = grid.view(nh, nw, side, side, d + 1).permute(4, 0, 2, 1, 3).flatten(1, 2).flatten(2, 3)
    g = unpad_image(g, list(image_size))
    out = [z[0][torch.argsort(pos[0])]]
    rows = 0
    for r in range(g.shape[1]):
        keep = g[d, r] > 0
        if keep.any():
            out += [g[:d, r][:, keep].T, newline[None]]
            rows += 1
    return torch.cat(out), rows


def test_pack_tiles_matches_transformers_steps_on_pruned_grids():
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

    from meteor_cli.model.hf_vlm.llava_next import pack_tiles, unpadded_grid

    from .hf_vlm_builders import PINPOINTS

    gen = torch.Generator().manual_seed(0)
    newline = torch.randn(6, generator=gen)
    for h, w in [(40, 50), (60, 30), (50, 40), (33, 64), (64, 64), (20, 64)]:
        tiles = get_anyres_image_grid_shape([h, w], PINPOINTS, 32)
        n_tiles = 1 + tiles[0] * tiles[1]
        for k in (16, 7, 2):
            pos = torch.stack([torch.randperm(16, generator=gen)[:k] for _ in range(n_tiles)])
            z = torch.randn(n_tiles, k, 6, generator=gen)
            got, owners = pack_tiles(z, pos, (h, w), tiles, 4, newline)
            rows = owners.count(None)
            want, want_rows = _oracle(z, pos, (h, w), tiles, 4, newline)
            assert torch.equal(got, want) and rows == want_rows, (h, w, k)
            # the owners place each grid token on the unpadded grid: the oracle on a grid of cell ids
            uh, uw = unpadded_grid(h, w, tiles[0] * 4, tiles[1] * 4)
            cell = torch.full((n_tiles, k, 1), -1.0)
            r0 = (tiles[0] * 4 - uh) // 2
            c0 = (tiles[1] * 4 - uw) // 2
            for t in range(1, n_tiles):
                tr, tc = divmod(t - 1, tiles[1])
                rr, cc = pos[t] // 4 + tr * 4 - r0, pos[t] % 4 + tc * 4 - c0
                cell[t, :, 0] = (rr * uw + cc).float()
            ids, _ = _oracle(cell, pos, (h, w), tiles, 4, torch.full((1,), -2.0))
            want_owners = [o for o in owners if o is None or o[0] == "tiles"]
            assert [None if v == -2 else ("tiles", int(v)) for v in ids[k:, 0].tolist()] == want_owners


def test_full_budget_is_bit_identical_to_the_unmodified_model(nxt):
    ims = images(2, sizes=SIZES)
    ref, ref_inputs, ref_vis = _logits(nxt, ims, PROMPTS)
    with torch.no_grad():
        ref_feats = nxt.hf.model.get_image_features(ref_inputs.features["pixel_values"],
                                                    ref_inputs.features["image_sizes"]).pooler_output
    for alloc in (_allocation([16, 16, 16]), _allocation([16, 16, 16], "visionzip")):
        _installed(nxt, alloc)
        try:
            out, inputs, vis = _logits(nxt, ims, PROMPTS)
        finally:
            nxt.stage1 = nxt.stage2 = None
        assert "pixel_values" not in inputs.features
        feats = inputs.features["mm_encoder_outputs"]["image"].pooler_output
        assert all(torch.equal(a, b) for a, b in zip(feats, ref_feats, strict=True))
        assert torch.equal(inputs.input_ids, ref_inputs.input_ids)
        assert torch.equal(out, ref)
        assert vis.per_encoder == ref_vis.per_encoder == {"vision": [70, 56]}  # 16 + 6x8 + 6 ; 16 + 8x4 + 8


def test_kept_per_tile_newlines_and_batched_equals_single(nxt):
    ims = images(2, sizes=SIZES)
    rec = _installed(nxt, _allocation([12, 8, 5]))
    try:
        out, inputs, vis = _logits(nxt, ims, PROMPTS)
        # every tile of both images is one tower sample, each keeps what the allocation asks
        assert [(j, n) for j, n, _ in rec.calls] == [(0, [12] * 8), (1, [8] * 8), (2, [5] * 8)]
        final = rec.calls[-1][2]  # (8 tiles, 5) kept positions
        feats = inputs.features["mm_encoder_outputs"]["image"].pooler_output
        newline = nxt.hf.model.image_newline
        t0 = 0
        for b, n in enumerate(TILES):
            h, w = (int(v) for v in inputs.features["image_sizes"][b])
            nl = int((feats[b] == newline.to(feats[b])).all(-1).sum())
            mask = torch.zeros(n, 5, 1)
            from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

            tiles = get_anyres_image_grid_shape([h, w], nxt.hf.config.image_grid_pinpoints, 32)
            _, rows = _oracle(mask + 1, final[t0:t0 + n], (h, w), tiles, 4, torch.zeros(1))
            assert nl == rows > 0  # one newline per grid row that still has a kept token
            assert len(feats[b]) == inputs.visual_len[b] == vis.per_encoder["vision"][b]
            img = (inputs.input_ids[b] == nxt.image_token_id).nonzero().flatten().tolist()
            assert img == list(range(inputs.visual_start[b], inputs.visual_start[b] + len(feats[b])))
            t0 += n
        assert 5 + 10 + 1 <= inputs.visual_len[1] <= 5 + 10 + 8  # 30x60: base 5 + 2 tiles x 5 + rows (8x4, no padding)
        batched = [p for _, _, p in rec.calls]
        texts = nxt.generate(ims, PROMPTS, max_new_tokens=3)
        t0 = 0
        for b, n in enumerate(TILES):
            rec.calls.clear()
            one, inp1, _ = _logits(nxt, ims[b:b + 1], PROMPTS[b:b + 1])
            assert inp1.visual_len == [inputs.visual_len[b]]
            assert torch.allclose(one[0, -1], out[b, -1], atol=1e-5)
            assert all(torch.equal(p, q[t0:t0 + n]) for (_, _, p), q in zip(rec.calls, batched, strict=True))
            assert nxt.generate(ims[b:b + 1], PROMPTS[b:b + 1], max_new_tokens=3) == [texts[b]]
            t0 += n
    finally:
        nxt.stage1 = nxt.stage2 = None


def test_cli_rank_estimate_allocate_eval_infer_flops(cli, hf_vlm_dirs, synth, tmp_path):
    d = str(hf_vlm_dirs["llava_next"])
    res = cli("rank-estimate", "--model", d, "--data", str(synth / "train.json"), "--count", "3", "--out", "r.json", "-q")
    assert res.exit_code == 0, res.output
    ranks = json.loads((tmp_path / "r.json").read_text())
    enc = ranks["encoders"]["vision"]
    assert ranks["n_images"] == 3 and enc["points"] == [0, 0, 1] and enc["tokens"] == 16
    assert enc["stats"][0]["n"] == 3 * 5  # 48x48 synth images: base + 2x2 tiles, each tile one sample
    res = cli("allocate", "--ranks", "r.json", "--total", "6", "--fusion-keep", "6", "--model", d, "--out", "a.json")
    assert res.exit_code == 0, res.output
    res = cli("eval", "--model", d, "--data", str(synth), "--limit", "4", "--batch-size", "2", "--allocation", "a.json",
              "--max-new-tokens", "2", "--out", "m.json", "-q")
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (tmp_path / "m.samples.jsonl").read_text().splitlines()]
    # square images, no padding: base 6 + 4 tiles x 6 + one newline per row with a kept token (1..8 rows)
    assert len(rows) == 4 and all(31 <= r["visual_tokens"] <= 38 for r in rows), [r["visual_tokens"] for r in rows]
    res = cli("infer", "--model", d, "--questions", str(synth / "eval" / "questions.jsonl"), "--image-root", str(synth),
              "--allocation", "a.json", "--max-new-tokens", "2", "--visualize", "viz", "--out", "a.jsonl", "-q")
    assert res.exit_code == 0, res.output
    for line in (tmp_path / "a.jsonl").read_text().splitlines():
        row = json.loads(line)
        meta = row["metadata"]  # the tokens the LLM got, on the base tile and on the unpadded grid
        assert meta["stage2"]["base"] == 6 and meta["stage2"]["tiles"] == 24
        assert 6 + 24 + 1 <= meta["visual_tokens"] <= 6 + 24 + 8
        assert (tmp_path / row["visualization"]).is_file()
    res = cli("flops", "--model", d, "--allocation", "a.json", "--image-size", "48", "--convention", "macs", "--json")
    assert res.exit_code == 0, res.output
    body = json.loads(res.stdout)
    unpruned = json.loads(cli("flops", "--model", d, "--image-size", "48", "--convention", "macs", "--json").stdout)
    per_token = 4 * 32 * 32 + 2 * 32 * 64
    blocks = body["stage1"]["per_block"]
    tower = 16 * 32 * 3 * 8 * 8 + sum((n + 1) * per_token + 2 * (n + 1) ** 2 * 32 for n in blocks)
    assert body["components"]["encoder/vision"] == 5 * tower  # 5 tiles, each pruned the same way
    assert body["stage1"]["tiles_per_image"] == 5 and body["stage1"]["newline_tokens"] == 8
    assert body["visual_tokens"]["into_llm"] == 6 + 24 + 8  # base + 8x8 grid at 6/16 + newline upper bound
    assert unpruned["visual_tokens"]["into_llm"] == 16 + 64 + 8 and body["total"] < unpruned["total"]
    full = _allocation([16, 16, 16])
    from meteor_cli.artifacts import make_artifact, write_artifact

    write_artifact(tmp_path / "full.json", make_artifact("meteor.allocation", full))
    res = cli("flops", "--model", d, "--allocation", "full.json", "--image-size", "48", "--json")
    assert json.loads(res.stdout)["visual_tokens"]["into_llm"] == 16 + 64 + 8  # exact with nothing pruned


def test_cli_per_tile_budgets_visionzip_and_stage3_ratios(cli, hf_vlm_dirs, synth, tmp_path):
    d = str(hf_vlm_dirs["llava_next"])
    res = cli("eval", "--model", d, "--data", str(synth), "--limit", "2", "--method", "unpruned,visionzip",
              "--visual-tokens", "8", "--max-new-tokens", "2", "--out", "m.json", "-q")
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (tmp_path / "m.samples.jsonl").read_text().splitlines()]
    vis = {r["method"]: r["visual_tokens"] for r in rows}
    assert vis["unpruned"] == 16 + 64 + 8 and 8 + 32 + 1 <= vis["visionzip"] <= 8 + 32 + 8
    # Stage-3 ratio schedules: 8 of a tile's 16 tokens = half of each span, averaged over the layers
    res = cli("eval", "--model", d, "--data", str(synth), "--limit", "2", "--method", "fastv,pdrop,dart,sparsevlm",
              "--visual-tokens", "8", "--max-new-tokens", "2", "--out", "s3.json", "--json")
    assert res.exit_code == 0, res.output
    for r in json.loads(res.stdout)["results"]:
        tok = r["tokens"]
        assert tok["stage2_visual"] == 88, r["label"]  # the whole span enters the LLM
        assert tok["stage3_layer_averaged"] == pytest.approx(44, abs=3), (r["label"], tok)
    res = cli("eval", "--model", d, "--data", str(synth), "--method", "all-heads", "--visual-tokens", "8", "--out", "f.json")
    assert res.exit_code == 2 and "anyres tile" in res.output and "prune-llm" in res.output


def test_cli_meteor_at_a_per_tile_budget(cli, hf_vlm_dirs, synth, tmp_path):
    rows = check_meteor_at_a_per_crop_budget(cli, str(hf_vlm_dirs["llava_next"]), synth, tmp_path, 8)
    # Stage 1-2 keep 10 of every tile's 16 (5 tiles) plus one newline per kept row: at most 50 + 8
    assert all(10 + 4 * 10 <= r["visual_tokens"] <= 50 + 8 for r in rows)


def test_stage2_keeps_its_count_in_every_tile(nxt):
    from meteor_cli.pruning.allocation import build_allocation

    ranks = {"method": "test", "encoders": {"vision": {"tokens": 16, "points": [0, 0, 1], "rank": [1.0, 1.0, 1.0]}}}
    alloc = build_allocation(ranks, totals=[12, 8, 6], fusion_keep=4)
    alloc["stage2"].update(method="meteor", score="zscore", floor=0.0)
    _installed(nxt, alloc)
    try:
        inputs, vis = nxt.prepare(images(2, sizes=SIZES), PROMPTS)
    finally:
        nxt.stage1 = nxt.stage2 = None
    for b, n in enumerate(TILES):
        owners = vis.kept_owners[b]
        assert sum(1 for o in owners if o is not None and o[0] == "base") == 4
        grid = sum(1 for o in owners if o is not None and o[0] == "tiles")
        assert grid <= 4 * (n - 1) and len(owners) == inputs.visual_len[b] == grid + 4 + owners.count(None)
    assert sum(1 for o in vis.kept_owners[1] if o is not None and o[0] == "tiles") == 8  # 30x60: no padding to drop
