"""Analytic FLOP counts: cross-checked against torch's FlopCounterMode on real tiny modules."""

from __future__ import annotations

import doctest

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from meteor_cli import flops as F


def counted(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def test_llama_prefill_matches_flop_counter():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                      num_attention_heads=8, num_key_value_heads=2)
    model = LlamaForCausalLM._from_config(cfg, attn_implementation="eager").eval()
    n = 37
    ids = torch.randint(0, 100, (1, n))
    with torch.no_grad():
        measured = counted(lambda: model(input_ids=ids, use_cache=False))
    dims = F.LLMDims.from_hf_config(cfg)
    ours = F.llm_prefill(dims, text=n - 20, visual=[20] * 3, convention="flops", lm_head_tokens=n)
    assert ours == measured


def test_vit_matches_flop_counter():
    import timm

    m = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2,
                                                         num_heads=4, mlp_ratio=2.0, num_classes=0,
                                                         class_token=True, global_pool="")
    for blk in m.blocks:
        blk.attn.fused_attn = False  # SDPA is invisible to the counter on the CPU
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        measured = counted(lambda: m.forward_features(x))
    ours = F.vit_macs([17, 17], 48, 96, patch=8, n_embed=16, convention="flops")
    assert ours == measured


def test_conventions_and_pruned_schedule():
    d = F.LLMDims(32, 4096, 11008, 32, 32, 32000)
    full = F.llm_prefill(d, 64, [576] * 32, convention="fastv")
    from meteor_cli.pruning.schedule import tokens_per_layer

    pruned = F.llm_prefill(d, 64, tokens_per_layer(576, [4, 12, 20], [396, 170, 76], 32), convention="fastv")
    assert 0.3 < pruned / full < 0.5
    assert F.llm_layer_macs(d, 10, convention="flops") == 2 * F.llm_layer_macs(d, 10, convention="macs")
    with pytest.raises(ValueError):
        F.llm_layer_macs(d, 10, convention="gflops")


def test_decode_grows_with_context():
    d = F.LLMDims(2, 64, 128, 4, 4, 100)
    one = F.llm_decode(d, [50, 50], 1)
    assert F.llm_decode(d, [50, 20], 1) < one < F.llm_decode(d, [50, 50], 2)


def test_report_and_doctests():
    r = F.FlopReport("macs")
    r.add("encoder/clip", 10)
    r.add("encoder/convnext", 5)
    r.add("llm/prefill", 100)
    assert r.total() == 115 and r.total("encoder/") == 15
    assert r.to_json()["formula"].startswith("multiply-accumulates")
    assert doctest.testmod(F).failed == 0


def test_convnext_matches_flop_counter():
    from timm.models.convnext import ConvNeXt

    m = ConvNeXt(depths=(1, 2, 1, 1), dims=(8, 16, 24, 32), num_classes=0).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        measured = counted(lambda: m.forward_features(x))
    assert F.convnext_macs(64, [1, 2, 1, 1], [8, 16, 24, 32], convention="flops") == measured
