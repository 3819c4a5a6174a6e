"""Every registered encoder family at tiny sizes: segments equal the upstream forward, positions
survive pruning, batches equal singles, local weights round-trip; EVA-02's RoPE follows the kept
tokens; the new families run inside the VLM under Stage 1; the eagle-x4 preset's sizes."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import torch

from meteor_cli.config import EncoderConfig, LLMConfig, ModelConfig
from meteor_cli.errors import ConfigError, InputNotFoundError
from meteor_cli.model.encoders import build_encoder
from meteor_cli.model.presets import llama_config, synthvqa_tokenizer
from meteor_cli.model.vlm import MultiEncoderVLM
from meteor_cli.pruning.stage1 import Stage1
from meteor_cli.registry import ENCODERS, PRESETS, load_builtins_and_plugins

TINY = {
    "vit": EncoderConfig("vit", "vit", image_size=32, patch=8, depth=3, width=32, heads=2),
    "clip": EncoderConfig("clip", "clip", image_size=32, patch=8, depth=3, width=32, heads=2),
    "siglip": EncoderConfig("siglip", "siglip", image_size=32, patch=8, depth=3, width=32, heads=2, has_cls=False),
    "eva02": EncoderConfig("eva02", "eva02", image_size=32, patch=8, depth=3, width=32, heads=2, mlp_ratio=8 / 3),
    "convnext": EncoderConfig("convnext", "convnext", image_size=64, patch=32, depth=4, width=32, has_cls=False,
                              dims=[8, 16, 24, 32], stage_depths=[1, 1, 1, 1]),
    "pix2struct": EncoderConfig("pix2struct", "pix2struct", image_size=48, patch=8, depth=3, width=48, heads=4,
                                mlp_ratio=2.5, has_cls=False),
    # grid 8 → 2×2 windows in blocks 0 and 1, global attention in block 2; transformer 48 wide, neck 32
    "sam": EncoderConfig("sam", "sam", image_size=64, patch=8, depth=3, width=32, heads=2, has_cls=False,
                         dims=[48, 32]),
}
WITH_CLS = {"vit", "clip", "eva02"}
HF_FAMILIES = {"clip", "siglip", "pix2struct", "sam"}
FAMILIES = sorted(TINY)


def tiny(family: str, **changes) -> EncoderConfig:
    cfg = replace(TINY[family], **changes)
    cfg.validate(f"encoders[{family}]")
    return cfg


def make(family: str, seed: int = 0, **changes):
    torch.manual_seed(seed)
    return build_encoder(tiny(family, **changes)).eval()


def pixels(enc, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return enc.preprocess(torch.rand(batch, 3, 40, 40, generator=g))


def test_every_builtin_family_is_covered():
    load_builtins_and_plugins()
    builtin = {e.name for e in ENCODERS.entries()  # EAGLE's towers: tests/model/test_eagle_checkpoint.py
               if e.module.startswith("meteor_cli.") and not e.module.startswith("meteor_cli.model.eagle")}
    assert builtin == set(TINY)


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_shapes(family):
    enc = make(family)
    cfg = enc.cfg
    x = pixels(enc)
    with torch.no_grad():
        out = enc.forward_segments(x)
        ref = enc.forward_features(x)
    p = 1 if family in WITH_CLS else 0
    assert out.x.shape == (2, cfg.num_tokens, cfg.width)
    assert (out.prefix is None) == (p == 0) and (p == 0 or out.prefix.shape == (2, 1, cfg.width))
    assert ref.shape == (2, p + cfg.num_tokens, cfg.width)
    assert torch.equal(out.pos, torch.arange(cfg.num_tokens).expand(2, -1))
    assert enc.feature_map(out).shape == (2, cfg.width, cfg.grid, cfg.grid)


@pytest.mark.parametrize("family", FAMILIES)
def test_segments_equal_the_upstream_forward(family):
    enc = make(family)
    x = pixels(enc)
    bounds = [0, 1, 2, enc.depth]  # three segments
    with torch.no_grad():
        state = enc.embed(x)
        for start, end in zip(bounds, bounds[1:]):
            state = enc.run_blocks(state, start, end)
        seg = enc.finalize(state).tokens()
        ref = enc.forward_features(x)
    assert seg.shape == ref.shape
    assert (seg - ref).abs().max().item() <= 1e-6


@pytest.mark.parametrize("family", FAMILIES)
def test_gather_after_a_segment_keeps_positions(family):
    enc = make(family)
    n = enc.num_tokens
    b = enc.prune_points[0]
    with torch.no_grad():
        st = enc.run_blocks(enc.embed(pixels(enc)), 0, b + 1)
        k = n // 2
        idx = torch.stack([torch.randperm(n, generator=torch.Generator().manual_seed(s))[:k].sort().values
                           for s in (1, 2)])
        kept = st.gather(idx)
        assert torch.equal(kept.pos, idx) and torch.equal(kept.x[1, -1], st.x[1, idx[1, -1]])
        fmap = enc.feature_map(kept)
        h, w = divmod(int(idx[0, 0]), enc.cfg.grid)
        assert torch.equal(fmap[0, :, h, w], st.x[0, idx[0, 0]])
        assert int(fmap[0].abs().sum(0).count_nonzero()) == k
        out = enc.finalize(enc.run_blocks(kept, b + 1, enc.depth))
    assert out.x.shape == (2, k, enc.width) and torch.equal(out.pos, idx)


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_of_two_equals_two_singles(family):
    enc = make(family)
    x = pixels(enc)
    with torch.no_grad():
        both = enc.forward_segments(x).tokens()
        singles = torch.cat([enc.forward_segments(x[i:i + 1]).tokens() for i in range(2)])
    assert torch.allclose(both, singles, rtol=1e-5, atol=1e-5)  # float32 kernels may block a batch differently


@pytest.mark.parametrize("family", FAMILIES)
def test_local_weights_round_trip(family, tmp_path):
    enc = make(family, seed=0)
    if family in HF_FAMILIES:
        path = tmp_path / "hf"
        enc.net.save_pretrained(path)
    else:
        from safetensors.torch import save_file

        path = tmp_path / "weights.safetensors"
        save_file(enc.net.state_dict(), str(path))
    loaded = make(family, seed=1, weights=str(path))
    fresh = make(family, seed=1)
    x = pixels(enc)
    with torch.no_grad():
        ref = enc.forward_features(x)
        assert torch.equal(loaded.forward_features(x), ref)
        assert torch.equal(loaded.forward_segments(x).tokens(), enc.forward_segments(x).tokens())
        assert not torch.allclose(fresh.forward_features(x), ref)  # the weights did come from the file


@pytest.mark.parametrize("family", FAMILIES)
def test_missing_weights_name_the_path(family, tmp_path):
    absent = tmp_path / "no-such-weights"
    with pytest.raises(InputNotFoundError, match="no-such-weights"):
        make(family, weights=str(absent))


@pytest.mark.parametrize("family", sorted(HF_FAMILIES))
def test_hf_weights_that_disagree_with_the_config_name_the_field(family, tmp_path):
    make(family).net.save_pretrained(tmp_path / "hf")
    with pytest.raises(ConfigError, match="depth is 2 but the weights .* have 3"):
        make(family, depth=2, weights=str(tmp_path / "hf"))


@pytest.mark.parametrize("family", FAMILIES)
def test_cls_attention_only_where_a_cls_exists(family):
    enc = make(family)
    b = enc.prune_points[1]
    with torch.no_grad():
        st = enc.run_blocks(enc.embed(pixels(enc)), 0, b + 1)
        a = enc.cls_attention(st, b)
    if family not in WITH_CLS:
        assert a is None
        return
    assert a.shape == (2, enc.num_tokens) and torch.all(a >= 0) and torch.all(a.sum(-1) < 1)


def eva_block_attention(enc, block: int, tokens: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """(B, H, L, L) attention probabilities of an EVA block, captured from timm's own unfused path."""
    attn = enc.net.blocks[block].attn
    seen = []
    handle = attn.attn_drop.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    attn.fused_attn = False
    try:
        enc.net.blocks[block](tokens, rope=rope)
    finally:
        attn.fused_attn = True
        handle.remove()
    return seen[0]


def test_eva02_cls_attention_equals_the_blocks_attention_after_pruning():
    enc = make("eva02")
    idx = torch.tensor([[0, 2, 5, 7, 8, 13], [1, 3, 4, 9, 14, 15]])
    with torch.no_grad():
        st = enc.run_blocks(enc.embed(pixels(enc)), 0, 1).gather(idx)
        st = enc.run_blocks(st, 1, 2)  # block_input = the pruned tokens entering block 1
        ours = enc.cls_attention(st, 1)
        full = eva_block_attention(enc, 1, st.block_input, enc.rope(st))
    assert torch.allclose(ours, full[:, :, 0, 1:].mean(1), atol=1e-6)


def test_eva02_pruned_tokens_keep_their_rope():
    """Running the survivors alone (RoPE rows gathered by position) equals running every token with
    the pruned ones masked out as keys (the full RoPE table): each survivor keeps its phase."""
    enc = make("eva02")
    net = enc.net
    idx = torch.tensor([[0, 3, 5, 6, 9, 10, 12, 15], [1, 2, 4, 7, 8, 11, 13, 14]])
    with torch.no_grad():
        for blk in net.blocks:  # sharper attention than at random init, so that phases matter
            blk.attn.q_proj.weight.mul_(20)
            blk.attn.k_proj.weight.mul_(20)
        st = enc.run_blocks(enc.embed(pixels(enc)), 0, 1)
        pruned = enc.finalize(enc.run_blocks(st.gather(idx), 1, enc.depth))

        t = st.tokens()
        B, L, D = t.shape
        keys = torch.zeros(B, L, dtype=torch.bool)
        keys[:, 0] = True  # CLS
        keys.scatter_(1, idx + 1, True)
        mask = keys[:, None, None, :].expand(B, 1, L, L)
        table = net.rope.get_embed()
        for blk in net.blocks[1:]:
            t = blk(t, rope=table, attn_mask=mask)
        t = net.norm(t)
        ref = torch.gather(t[:, 1:], 1, idx.unsqueeze(-1).expand(-1, -1, D))

        naive = st.gather(idx).tokens()  # the wrong way: the first k rows of the table
        for blk in net.blocks[1:]:
            naive = blk(naive, rope=table[:idx.shape[1]])
    assert torch.allclose(pruned.x, ref, atol=1e-5) and torch.allclose(pruned.prefix, t[:, :1], atol=1e-5)
    assert (net.norm(naive)[:, 1:] - ref).abs().max() > 1e-2


def test_pix2struct_patches_and_standardisation_match_the_processor():
    from transformers.image_utils import SizeDict
    from transformers.models.pix2struct.image_processing_pix2struct import Pix2StructImageProcessor

    enc = make("pix2struct")
    proc = Pix2StructImageProcessor()
    images = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(3)) * 255
    x = enc.preprocess(images)
    assert torch.allclose(x, proc.normalize(images), atol=1e-5)
    p, g = enc.cfg.patch, enc.cfg.grid
    ref = proc.extract_flattened_patches(x, max_patches=g * g, patch_size=SizeDict(height=p, width=p))
    ours = enc.flatten_patches(x)
    assert ours.shape == (2, g * g, 2 + 3 * p * p)
    assert torch.equal(ours[..., :2], ref[..., :2]) and torch.allclose(ours, ref, atol=1e-5)


def test_output_pruned_families_prune_their_final_map():
    cfg = tiny("sam")
    assert cfg.prune_points == [2, 2, 2]
    with pytest.raises(ConfigError, match=r"encoders\[0\].prune_points: sam can only be pruned on its final map"):
        replace(TINY["sam"], prune_points=[0, 1, 2]).validate("encoders[0]")
    with pytest.raises(ConfigError, match=r"encoders\[0\].dims: SAM takes"):
        replace(TINY["sam"], dims=[48, 16]).validate("encoders[0]")
    assert tiny("sam", dims=None).prune_points == [2, 2, 2]
    assert make("sam", dims=None).net.config.hidden_size == 32


NEW = ["eva02", "siglip", "pix2struct", "sam"]


def vlm_with_new_families(fusion: str) -> MultiEncoderVLM:
    torch.manual_seed(0)
    tok = synthvqa_tokenizer()
    cfg = ModelConfig(encoders=[replace(TINY[f]) for f in NEW],
                      llm=LLMConfig(hf_config=llama_config(len(tok), 64, 2, 4, 2, 128)), fusion=fusion, grid=4)
    return MultiEncoderVLM(cfg, tok).eval()


@pytest.mark.parametrize("fusion", ["post-projection", "pre-projection"])
def test_vlm_runs_the_new_families(fusion):
    m = vlm_with_new_families(fusion)
    imgs = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        loss, n = m.loss_sum(imgs, ["<image>\nWhat color is the circle?"] * 2, ["red", "blue"])
        vis = m.encode_images(imgs)
    assert torch.isfinite(loss) and n > 0
    expected = {"eva02": 16, "siglip": 16, "pix2struct": 36, "sam": 64}
    if fusion == "post-projection":
        assert vis.per_encoder == {k: [v] * 2 for k, v in expected.items()}
    assert vis.z.shape == (2, sum(expected.values()) if fusion == "post-projection" else 16, 64)


def test_stage1_prunes_through_every_new_family():
    m = vlm_with_new_families("post-projection")
    budgets = {"eva02": [12, 8, 5], "siglip": [10, 6, 3], "pix2struct": [24, 12, 6], "sam": [32, 16, 8]}
    chosen: dict[str, list[torch.Tensor]] = {k: [] for k in budgets}
    policy = Stage1(budgets)

    def hook(name, j, state, adapter):
        idx = policy(name, j, state, adapter)
        chosen[name].append(idx)
        return idx

    m.stage1 = hook
    imgs = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        vis = m.encode_images(imgs)
        loss, _ = m.loss_sum(imgs, ["<image>\nhow many?"] * 2, ["2", "3"])
    assert vis.per_encoder == {k: [v[-1]] * 2 for k, v in budgets.items()} and torch.isfinite(loss)
    offset = 0
    for name, b in budgets.items():
        pos = vis.pos[:, offset:offset + b[-1]]
        offset += b[-1]
        assert torch.all(pos[:, 1:] > pos[:, :-1]) and int(pos.max()) < m.encoders[name].num_tokens
    # EVA-02: the model's pruned run equals the survivors run by hand with their own RoPE rows
    enc = m.encoders["eva02"]
    with torch.no_grad():
        st = enc.embed(enc.preprocess(imgs))
        start = 0
        for b, idx in zip(enc.prune_points, chosen["eva02"][:3]):
            st = enc.run_blocks(st, start, b + 1).gather(idx)
            start = b + 1
        ref = m.projectors["eva02"](enc.finalize(enc.run_blocks(st, start, enc.depth)).x)
    assert torch.allclose(vis.z[:, :5], ref, atol=1e-6)


# -- eagle-x4 -----------------------------------------------------------------------------------

# Published sizes (parameters) and why ours differ:
# * CLIP ViT-L/14 vision tower: 304 M (LLaVA / EAGLE). Ours at 448 px: 303,966,208 — 1025
#   position rows instead of 577 at 336 px (+0.46 M).
# * ConvNeXt-XXLarge: 846.47 M in timm's model card, with its 1000-class head (3.07 M); ours has
#   no head: 843,398,016.
# * EVA-02-L: 304 M (EVA-02 paper; 224 px / patch 14, 257 position rows incl. CLS). Ours is
#   EAGLE's det-1024 shape, patch 16 at 1024 px: 307,383,232, 1.1 % more — its 64×64 position
#   table has 3,839 more rows (+3,931,136), the 16×16 patch kernel +184,320, no CLS −1,024. EAGLE's
#   ViTDet-style tower stores only 197 rows and interpolates them at run time.
# * Pix2Struct-Large: 1.3 B published for the whole encoder-decoder (ours: 1,336,107,264 built
#   from the same config); its encoder alone, 512,812,032, is what EAGLE uses. No separate figure
#   is published, so the encoder figure below is the one derived from the config (hidden 1536,
#   18 layers, 24 heads, d_ff 3968, 4096-row row/column tables).
# * Vicuna-7B: 6,738,415,616 (6.74 B).
# * Projectors (computed): mlp2x_gelu per encoder, D·4096 + 4096 + 4096² + 4096.
PUBLISHED = {"clip": 304e6, "convnext": 846.47e6, "eva02": 304e6, "pix2struct": 512.8e6, "llm": 6.74e9}
OURS = {"clip": 303_966_208, "convnext": 843_398_016, "eva02": 307_383_232, "pix2struct": 512_812_032,
        "llm": 6_738_415_616}
EVA_EXTRA = 3_931_136 + 184_320 - 1_024  # position rows, patch kernel, no CLS (see above)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_eagle_x4_builds_on_meta_with_the_published_sizes():
    load_builtins_and_plugins()
    cfg = PRESETS.get("eagle-x4")()
    t0 = time.perf_counter()
    with torch.device("meta"):
        m = MultiEncoderVLM(cfg, None)
    assert time.perf_counter() - t0 < 30
    assert next(m.parameters()).device.type == "meta"
    counts = {name: n_params(e) for name, e in m.encoders.items()} | {"llm": n_params(m.llm)}
    assert counts == OURS
    projectors = {e.name: e.width * 4096 + 4096 + 4096 * 4096 + 4096 for e in cfg.encoders}
    assert {k: n_params(v) for k, v in m.projectors.items()} == projectors
    for name, published in PUBLISHED.items():
        ours = counts[name] - (EVA_EXTRA if name == "eva02" else 0)
        assert abs(ours - published) / published < 0.01, name
    total_published = sum(PUBLISHED.values()) + sum(projectors.values())
    assert abs(n_params(m) - total_published) / total_published < 0.01
    assert sum(e.num_tokens for e in cfg.encoders) == 1024 + 1024 + 4096 + 2025
    assert sum(e.width for e in cfg.encoders) == 6656 and cfg.grid == 32 and cfg.template == "vicuna_v1"


def test_pix2struct_large_matches_its_published_total():
    from transformers import Pix2StructConfig, Pix2StructForConditionalGeneration

    shape = {"hidden_size": 1536, "d_ff": 3968, "d_kv": 64}
    hf = Pix2StructConfig(vision_config={**shape, "num_attention_heads": 24, "num_hidden_layers": 18},
                          text_config={**shape, "num_heads": 24, "num_layers": 18, "vocab_size": 50244})
    with torch.device("meta"):
        full = Pix2StructForConditionalGeneration(hf)
    assert n_params(full.encoder) == OURS["pix2struct"]
    assert abs(n_params(full) - 1.3e9) / 1.3e9 < 0.03  # "1.3B", rounded in the paper
