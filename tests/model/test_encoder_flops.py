"""The analytic encoder counts (``meteor_cli.flops.encoder_macs``, one cost model per registered
adapter) equal ``torch.utils.flop_counter.FlopCounterMode`` on the adapters' own forwards — exactly,
for every family: unpruned (upstream forward and segment API), under Stage-1 gathers through the
model's own ``run_encoder``, and at EAGLE-X4's real sizes on the meta device.

FlopCounterMode reports 0 for SDPA on the CPU (``aten._scaled_dot_product_flash_attention_for_cpu``
has no formula), so :func:`counted` adds torch's own SDPA formula for that op; the first test
also checks the adapters with eager attention, which the counter sees as plain matmuls.
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from meteor_cli import flops as F
from meteor_cli.config import EncoderConfig
from meteor_cli.model.encoders import build_encoder
from meteor_cli.model.vlm import MultiEncoderVLM
from meteor_cli.registry import ENCODERS, PRESETS, load_builtins_and_plugins

from .test_encoders import TINY as ENCODER_TINY

# The encoder configs of test_encoders.py, with a 2-block ConvNeXt stage so per-block counting is exercised.
TINY = {**ENCODER_TINY, "convnext": replace(ENCODER_TINY["convnext"], stage_depths=[1, 2, 1, 1])}
CASES = {
    **{f: {} for f in TINY},
    "vit-no-cls": {"family": "vit", "has_cls": False},
    "eva02-no-cls": {"family": "eva02", "has_cls": False},
    "clip-has-cls-false": {"family": "clip", "has_cls": False},  # CLIP keeps its CLS whatever the flag says
    "vit-shared-points": {"family": "vit", "depth": 4, "prune_points": [0, 0, 2]},
    "sam-padded": {"family": "sam", "image_size": 56},  # grid 7, window 2: padded to 8×8 in windowed blocks
    "sam-5-blocks": {"family": "sam", "depth": 5, "image_size": 72},  # global at 0, 1, 2, 4; grid 9 padded to 10
}
OUTPUT_PRUNED = {"convnext", "sam"}
aten = torch.ops.aten


def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def counted(fn) -> int:
    """FLOPs (2 per MAC) of ``fn()``, CPU SDPA included."""
    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa}
    with FlopCounterMode(display=False, custom_mapping=mapping) as fc:
        with torch.no_grad():
            fn()
    return fc.get_total_flops()


def config(case: str) -> EncoderConfig:
    changes = dict(CASES[case])
    family = changes.pop("family", case)
    cfg = replace(TINY[family], **{"prune_points": None, **changes})
    cfg.validate(f"encoders[{case}]")
    return cfg


def make(case: str, device: str = "cpu"):
    torch.manual_seed(0)
    with torch.device(device):
        return build_encoder(config(case)).eval()


def make_eager(enc):
    """The same adapter with eager attention (plain matmuls for the counter)."""
    fam = enc.cfg.family
    if fam in ("vit", "eva02"):
        for blk in enc.net.blocks:
            blk.attn.fused_attn = False
    elif fam in ("clip", "siglip", "pix2struct"):
        enc.net.set_attn_implementation("eager")
    elif fam == "sam":  # the attention class is chosen when the layers are built
        from transformers import SamVisionModel

        enc.net = SamVisionModel._from_config(enc.net.config, attn_implementation="eager").eval()
    return enc


def budgets(cfg: EncoderConfig) -> list[int]:
    n = cfg.num_tokens
    return [max(1, n * 3 // 4), max(1, n // 2), max(1, n // 4)]


def run_pruned(enc, pixels: torch.Tensor, keep: list[int]):
    """The model's own Stage-1 loop (``MultiEncoderVLM.run_encoder``) with a hook that gathers
    ``keep[j]`` seeded random tokens at point j."""
    g = torch.Generator().manual_seed(1)

    def hook(name, j, state, adapter):
        B, n = state.x.shape[:2]
        if keep[j] >= n:
            return None
        idx = torch.stack([torch.sort(torch.randperm(n, generator=g)[:keep[j]]).values for _ in range(B)])
        return idx.to(state.x.device)

    host = SimpleNamespace(encoders={"enc": enc}, stage1=hook)
    return MultiEncoderVLM.run_encoder(host, "enc", pixels)


def test_every_registered_family_is_covered():
    load_builtins_and_plugins()
    builtin = {e.name for e in ENCODERS.entries()  # EAGLE's towers: tests/model/test_eagle_checkpoint.py
               if e.module.startswith("meteor_cli.") and not e.module.startswith("meteor_cli.model.eagle")}
    assert builtin == set(TINY)


@pytest.mark.parametrize("case", sorted(CASES))
def test_unpruned_forward_equals_the_counter(case):
    enc = make(case)
    x = enc.preprocess(torch.rand(2, 3, 40, 40))
    ours = 2 * F.encoder_macs(enc.cfg, convention="flops")  # batch of 2
    assert counted(lambda: enc.forward_segments(x)) == ours  # as built (SDPA)
    make_eager(enc)
    assert counted(lambda: enc.forward_features(x)) == ours  # upstream forward, eager attention
    assert counted(lambda: enc.forward_segments(x)) == ours
    assert F.encoder_macs(enc.cfg, convention="macs") * 2 == F.encoder_macs(enc.cfg, convention="flops")


@pytest.mark.parametrize("case", sorted(CASES))
def test_stage1_pruned_forward_equals_the_counter(case):
    enc = make(case)
    cfg = enc.cfg
    keep = budgets(cfg)
    x = torch.rand(2, 3, 40, 40)  # run_encoder preprocesses (resizing and normalising count no FLOPs)
    out = {}
    measured = counted(lambda: out.setdefault("state", run_pruned(enc, x, keep)))
    assert out["state"].x.shape[1] == F.stage1_tokens(cfg.num_tokens, cfg.depth, cfg.prune_points, keep)[1] == keep[-1]
    ours = 2 * F.encoder_macs(cfg, keep, convention="flops")
    assert measured == ours
    unpruned = F.encoder_macs(cfg, convention="flops")
    if cfg.family in OUTPUT_PRUNED:
        assert ours == 2 * unpruned  # pruned on the final map only: nothing saved inside
    else:
        assert ours < 2 * unpruned


def test_stage1_tokens_follow_the_points():
    assert F.stage1_tokens(16, 4, [0, 0, 2], [12, 8, 4]) == ([16, 8, 8, 4], 4)
    assert F.stage1_tokens(64, 3, [2, 2, 2], [40, 20, 9]) == ([64, 64, 64], 9)
    assert F.stage1_tokens(16, 3, [0, 1, 2], None) == ([16, 16, 16], 16)
    with pytest.raises(ValueError):
        F.stage1_tokens(16, 3, [0, 1, 2], [4])


def test_cost_models_differ_where_the_modules_do():
    """EVA-02 and Pix2Struct are gated (three MLP matrices), SAM windowed: not the plain ViT formula."""
    vit_like = {}
    for fam in ("eva02", "pix2struct", "siglip"):
        cfg = config(fam)
        p = 1 if cfg.has_cls and fam == "eva02" else 0
        vit_like[fam] = F.vit_macs([cfg.num_tokens + p] * cfg.depth, cfg.width, int(cfg.width * cfg.mlp_ratio),
                                   patch=cfg.patch, n_embed=cfg.num_tokens)
        mlp_matrix = cfg.depth * (cfg.num_tokens + p) * cfg.width * int(cfg.width * cfg.mlp_ratio)
        assert F.encoder_macs(cfg) == vit_like[fam] + (mlp_matrix if fam != "siglip" else 0), fam
    sam = config("sam")
    assert F.encoder_macs(sam) != F.vit_macs([sam.num_tokens] * sam.depth, 48, 192, patch=8, n_embed=sam.num_tokens)


# EAGLE-X4's towers at full size on the meta device: shapes only, no memory, well under a second each.
EAGLE_KEEP = {"clip": [700, 400, 200], "convnext": [600, 300, 150], "eva02": [2400, 1200, 500],
              "pix2struct": [1300, 700, 300]}


@pytest.mark.parametrize("name", sorted(EAGLE_KEEP))
def test_eagle_x4_towers_on_meta_equal_the_counter(name):
    load_builtins_and_plugins()
    cfg = next(e for e in PRESETS.get("eagle-x4")().validate().encoders if e.name == name)
    with torch.device("meta"):
        enc = build_encoder(cfg).eval()
    x = torch.zeros(1, 3, cfg.image_size, cfg.image_size, device="meta")
    assert counted(lambda: enc.forward_segments(x)) == F.encoder_macs(cfg, convention="flops")
    keep = EAGLE_KEEP[name]

    def hook(_name, j, state, _adapter):
        return torch.arange(keep[j], device="meta").expand(state.x.shape[0], -1)

    host = SimpleNamespace(encoders={name: enc}, stage1=hook)
    assert counted(lambda: MultiEncoderVLM.run_encoder(host, name, x)) == F.encoder_macs(cfg, keep, convention="flops")


def test_sam_vit_b_on_meta_equals_the_counter():
    """SAM ViT-B at 1024 px (14×14 windows, padded 64 → 70; global blocks 2, 5, 8, 11): ≈ 486 GMACs."""
    cfg = EncoderConfig("sam", "sam", image_size=1024, patch=16, depth=12, width=256, heads=12, dims=[768, 256],
                        has_cls=False)
    cfg.validate("encoders[0]")
    with torch.device("meta"):
        enc = build_encoder(cfg).eval()
    x = torch.zeros(1, 3, 1024, 1024, device="meta")
    assert counted(lambda: enc.forward_features(x)) == F.encoder_macs(cfg, convention="flops")
    assert 480e9 < F.encoder_macs(cfg) < 490e9
