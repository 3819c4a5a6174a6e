"""Stage 3 under flash-attention-style kernels (2-D key-padding masks), tested on the CPU.

FlashAttention itself needs a GPU. What Stage 3 must get right for it is the *mask contract*:
transformers gives flash kernels a 2-D (B, K) key-padding mask (or None when nothing is padded),
the kernel unpads and applies causal attention bottom-right within each sequence, and, for a
single sequence without a mask, it reads non-contiguous position ids as several packed
sequences. ``varlen_reference`` below implements that contract in plain torch and is registered
with transformers under its own name, wired to transformers' own ``flash_attention_mask``, so
the model builds its masks exactly as it does for ``flash_attention_2``. It refuses 4-D masks
and the packed-sequence trap, so a pruner that handed it the wrong mask fails here.
"""

from __future__ import annotations

import pytest
import torch

from meteor_cli.pruning.llm_policies import MeteorPolicy
from meteor_cli.pruning.llm_pruner import LLMPruner, takes_padding_masks

from .conftest import make_inputs, tiny_llama

NAME = "meteor_test_varlen"


def varlen_reference(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """FlashAttention-2 semantics as transformers drives it; q/k/v are (B, H, L, dh)."""
    from transformers.modeling_flash_attention_utils import _is_packed_sequence

    B, H, Lq, dh = query.shape
    K = key.shape[2]
    if attention_mask is not None and attention_mask.dim() != 2:
        raise AssertionError(f"flash kernels take 2-D key-padding masks, got shape {tuple(attention_mask.shape)}")
    if attention_mask is None and _is_packed_sequence(kwargs.get("position_ids"), B):
        raise AssertionError("no mask and gapped position ids: transformers would split this into packed sequences")
    valid = torch.ones(B, K, dtype=torch.bool) if attention_mask is None else attention_mask.bool()[:, -K:]
    qvalid = valid[:, -Lq:]
    key = key.repeat_interleave(H // key.shape[1], dim=1)
    value = value.repeat_interleave(H // value.shape[1], dim=1)
    krank, qrank = valid.cumsum(1) - 1, qvalid.cumsum(1) - 1
    shift = (valid.sum(1) - qvalid.sum(1))[:, None, None]  # bottom-right causal alignment
    allowed = valid[:, None, :] & (krank[:, None, :] <= shift + qrank[:, :, None]) & qvalid[:, :, None]
    logits = (query.float() @ key.float().transpose(-1, -2)) * (scaling or dh ** -0.5)
    probs = logits.masked_fill(~allowed[:, None], float("-inf")).softmax(-1).nan_to_num(0.0)
    out = (probs @ value.float()).to(query.dtype)
    return out.transpose(1, 2).contiguous(), None


@pytest.fixture(scope="module", autouse=True)
def registered():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(NAME, varlen_reference)
    AttentionMaskInterface.register(NAME, flash_attention_mask)
    yield
    AttentionInterface._global_mapping.pop(NAME, None)
    AttentionMaskInterface._global_mapping.pop(NAME, None)


def _run(model, embeds, mask, starts, lens, lam=5.0, new_tokens=5):
    pruner = LLMPruner(model, MeteorPolicy(layers=[1, 3], heads=2, lam=lam))
    with torch.no_grad(), pruner.session(starts, lens, attention_mask=mask) as sess:
        gen = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                             output_scores=True, return_dict_in_generate=True, pad_token_id=0)
    pruner.remove()
    return gen, sess


def test_the_reference_kernel_matches_sdpa_without_pruning():
    ref, flash = tiny_llama("sdpa"), tiny_llama(NAME)
    embeds, mask, _, _ = make_inputs(ref, [(5, 7), (2, 4)])
    with torch.no_grad():
        a = ref(inputs_embeds=embeds, attention_mask=mask).logits
        b = flash(inputs_embeds=embeds, attention_mask=mask).logits
    assert torch.allclose(a[mask.bool()], b[mask.bool()], atol=1e-5)


def test_flash_family_gets_padding_masks():
    assert takes_padding_masks(tiny_llama(NAME)) and not takes_padding_masks(tiny_llama("sdpa"))
    assert not takes_padding_masks(tiny_llama("eager"))


@pytest.mark.parametrize("prompts", [[(5, 7)], [(5, 7), (2, 4), (8, 11)]], ids=["single", "ragged-batch"])
def test_pruned_generation_equals_sdpa(prompts):
    """Same kept tokens, same step logits, same greedy tokens as SDPA, with and without padding."""
    ref, flash = tiny_llama("sdpa"), tiny_llama(NAME)
    embeds, mask, starts, lens = make_inputs(ref, prompts)
    g_ref, s_ref = _run(ref, embeds, mask, starts, lens)
    g_fl, s_fl = _run(flash, embeds, mask, starts, lens)
    assert any(len(k) < 24 for k in s_ref.kept[3])  # something was really pruned
    for p in s_ref.kept:
        for a, b in zip(s_ref.kept[p], s_fl.kept[p]):
            assert torch.equal(a, b)
    assert torch.equal(g_ref.sequences, g_fl.sequences)
    assert torch.allclose(torch.stack(g_ref.scores), torch.stack(g_fl.scores), atol=1e-4)
