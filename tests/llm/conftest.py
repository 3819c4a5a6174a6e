"""A tiny random Llama and multimodal-looking inputs for Stage-3 tests."""

from __future__ import annotations

import pytest
import torch


def tiny_llama(attn="eager", layers=6, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM._from_config(cfg, attn_implementation=attn).eval()


def make_inputs(model, prompts, n_vis=24, seed=1):
    """Left-padded batch of [pre-text][n_vis visual rows][question] embeddings.

    prompts: list of (pre_len, question_len). Returns embeds (B, L, d), mask (B, L), starts, lens.
    """
    g = torch.Generator().manual_seed(seed)
    emb = model.get_input_embeddings()
    rows, starts = [], []
    for pre, q in prompts:
        ids_pre = torch.randint(3, 96, (pre,), generator=g)
        ids_q = torch.randint(3, 96, (q,), generator=g)
        vis = torch.randn(n_vis, emb.weight.shape[1], generator=g) * emb.weight.std()
        with torch.no_grad():
            rows.append(torch.cat([emb(ids_pre), vis, emb(ids_q)]))
        starts.append(pre)
    L = max(r.shape[0] for r in rows)
    d = rows[0].shape[1]
    embeds = torch.zeros(len(rows), L, d)
    mask = torch.zeros(len(rows), L, dtype=torch.long)
    for b, r in enumerate(rows):
        embeds[b, L - len(r):] = r
        mask[b, L - len(r):] = 1
    starts = [s + (L - len(r)) for s, r in zip(starts, rows)]
    return embeds, mask, starts, [n_vis] * len(rows)


@pytest.fixture
def llama():
    return tiny_llama()
