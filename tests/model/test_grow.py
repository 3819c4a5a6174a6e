"""Depth up-scaling of a checkpoint's LLM (meteor_cli.model.grow): same function, more layers."""

from __future__ import annotations

import pytest
import torch

from meteor_cli.errors import UsageError
from meteor_cli.model.checkpoint import load_model, read_weights, save_checkpoint
from meteor_cli.model.grow import deepen


def test_deepened_llm_computes_exactly_what_the_shallow_one_did(tmp_path):
    vlm = load_model("tiny")
    for p in vlm.llm.parameters():  # a trained-looking model: no zero projections to begin with
        torch.nn.init.normal_(p, std=0.05)
    save_checkpoint(vlm, tmp_path / "four")
    deepen(tmp_path / "four", tmp_path / "eight", 8)
    deep = load_model(str(tmp_path / "eight"))
    assert deep.llm.config.num_hidden_layers == 8
    ids = torch.randint(5, vlm.llm.config.vocab_size, (2, 17))
    with torch.no_grad():
        want, got = vlm.llm(input_ids=ids).logits, deep.llm(input_ids=ids).logits
    assert torch.allclose(want, got, atol=1e-6)
    sd = read_weights(tmp_path / "eight")
    layer = "llm.model.layers.{}.{}"
    for new, old in ((2, 1), (3, 1), (6, 3)):
        q = sd[layer.format(new, "self_attn.q_proj.weight")]
        assert torch.equal(q, vlm.state_dict()[layer.format(old, "self_attn.q_proj.weight")])
    assert not sd[layer.format(3, "mlp.down_proj.weight")].any() and sd[layer.format(2, "mlp.down_proj.weight")].any()
    enc = [k for k in sd if not k.startswith("llm.")]
    assert enc and all(torch.equal(sd[k], vlm.state_dict()[k]) for k in enc)
    assert (tmp_path / "eight" / "tokenizer.json").is_file() == (tmp_path / "four" / "tokenizer.json").is_file()


@pytest.mark.parametrize("layers", [4, 6, 2])
def test_depth_must_be_a_larger_multiple(tmp_path, layers):
    save_checkpoint(load_model("tiny"), tmp_path / "four")
    with pytest.raises(UsageError, match="cannot deepen a 4-layer LLM"):
        deepen(tmp_path / "four", tmp_path / "x", layers)
    assert not (tmp_path / "x").exists()
