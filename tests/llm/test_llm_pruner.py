"""Stage 3 inside an unmodified HF Llama: equivalences the method depends on."""

from __future__ import annotations

import pytest
import torch

from meteor_cli.errors import UsageError
from meteor_cli.pruning.llm_policies import FastVPolicy, FixedPolicy, MeteorPolicy, PDropPolicy, default_layers
from meteor_cli.pruning.llm_pruner import LLMPruner

from .conftest import make_inputs, tiny_llama


def forward(model, embeds, mask, pruner=None, starts=None, lens=None, **kw):
    with torch.no_grad():
        if pruner is None:
            return model(inputs_embeds=embeds, attention_mask=mask).logits, None
        with pruner.session(starts, lens, attention_mask=mask, **kw) as sess:
            return model(inputs_embeds=embeds, attention_mask=mask).logits, sess


def test_huge_lambda_gives_the_unpruned_logits(llama):
    embeds, mask, starts, lens = make_inputs(llama, [(5, 7)])
    ref, _ = forward(llama, embeds, mask)
    pruner = LLMPruner(llama, MeteorPolicy(layers=[1, 3, 4], lam=1e9))
    out, sess = forward(llama, embeds, mask, pruner, starts, lens)
    assert torch.equal(out, ref)
    assert [len(k[0]) for k in sess.kept.values()] == [24, 24, 24]
    pruner.remove()
    assert torch.equal(forward(llama, embeds, mask)[0], ref)


def test_pruning_drops_tokens_and_keeps_sorted_unique_indices(llama):
    embeds, mask, starts, lens = make_inputs(llama, [(5, 7)])
    pruner = LLMPruner(llama, MeteorPolicy(layers=[1, 3], heads=2, lam=4.0))
    out, sess = forward(llama, embeds, mask, pruner, starts, lens)
    k1, k3 = sess.kept[1][0], sess.kept[3][0]
    assert 1 <= len(k3) <= len(k1) < 24 and sess.entering[3] == [len(k1)]
    for k in (k1, k3):
        assert torch.equal(k, torch.sort(torch.unique(k)).values)
    assert out.shape[1] == embeds.shape[1] - (24 - len(k3))  # logits only for the tokens that remain


def test_keep_count_follows_lambda_times_vav():
    pol = MeteorPolicy(layers=[1], heads=2, lam=10.0, scale=0.5)
    attn = torch.zeros(4, 3, 8)  # (H, Q, N)
    attn[0, :, :4] = 0.2  # head 0: VAV 0.8
    attn[1, :, 4:] = 0.05  # head 1: VAV 0.2
    attn[2, :, 0] = 0.3  # head 2: VAV 0.3
    attn[3, :, 7] = 0.01
    kept = pol.select(1, attn, 8, None, 0)
    # heads {0, 2} (VAV 0.8, 0.3): K = round(0.5·10·1.1) = 6; scores: token0 = (0.2+0.3)/2, tokens 1-3 = 0.1
    assert kept.tolist() == [0, 1, 2, 3, 4, 5]  # tokens 4.. tie at 0 → lower index first
    assert pol.keep_count(torch.tensor([0.8, 0.3]), 8) == 6 and pol.keep_count(torch.tensor([100.0]), 8) == 8
    assert pol.keep_count(torch.tensor([0.0]), 8) == 1  # K_min


def test_eager_and_sdpa_keep_the_same_tokens():
    embeds, mask, starts, lens = make_inputs(tiny_llama("eager"), [(5, 7), (3, 9)])
    results = {}
    for attn in ("eager", "sdpa"):
        model = tiny_llama(attn)
        pruner = LLMPruner(model, MeteorPolicy(layers=[1, 3], heads=2, lam=6.0))
        results[attn] = forward(model, embeds, mask, pruner, starts, lens)
    (le, se), (ls, ss) = results["eager"], results["sdpa"]
    for p in se.kept:
        for a, b in zip(se.kept[p], ss.kept[p]):
            assert torch.equal(a, b)
    valid = mask.bool()[:, -le.shape[1]:] if le.shape[1] == mask.shape[1] else None
    assert le.shape == ls.shape
    assert torch.allclose(le[:, -1], ls[:, -1], atol=1e-5)


def test_batch_of_three_equals_three_singles(llama):
    prompts = [(5, 7), (2, 4), (8, 11)]
    embeds, mask, starts, lens = make_inputs(llama, prompts)
    pruner = LLMPruner(llama, MeteorPolicy(layers=[1, 3], heads=2, lam=5.0))
    batched, bsess = forward(llama, embeds, mask, pruner, starts, lens)
    for b in range(3):
        e1, m1, s1, l1 = make_inputs(llama, prompts)  # same rows; take sample b unpadded
        keep = m1[b].bool()
        single, ssess = forward(llama, e1[b:b + 1, keep], None, pruner, [s1[b] - int((~keep).sum())], [24])
        for p in bsess.kept:
            assert torch.equal(bsess.kept[p][b], ssess.kept[p][0]), (b, p)
        assert torch.allclose(batched[b, -1], single[0, -1], atol=1e-4)


def test_cached_greedy_generation_equals_an_uncached_replay(llama):
    embeds, mask, starts, lens = make_inputs(llama, [(5, 7), (3, 4)])
    pruner = LLMPruner(llama, MeteorPolicy(layers=[1, 3], heads=2, lam=5.0))
    with torch.no_grad(), pruner.session(starts, lens, attention_mask=mask) as sess:
        gen = llama.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=6, do_sample=False,
                             output_scores=True, return_dict_in_generate=True, pad_token_id=0)
    tokens = gen.sequences  # (B, 6): generated tokens only (inputs_embeds path)
    assert tokens.shape == (2, 6)
    # One forward without a cache over prompt + generated tokens, reusing the prefill's kept indices.
    with torch.no_grad():
        full = torch.cat([embeds, llama.get_input_embeddings()(tokens)], dim=1)
        full_mask = torch.cat([mask, torch.ones_like(tokens)], dim=1)
        prompt_len = [embeds.shape[1]] * 2
        with pruner.session(starts, lens, attention_mask=full_mask, prompt_len=prompt_len, replay=sess.kept):
            logits = llama(inputs_embeds=full, attention_mask=full_mask, use_cache=False).logits
    steps = torch.stack(gen.scores, dim=1)  # (B, 6, V): logits that chose each generated token
    assert torch.allclose(logits[:, -7:-1], steps, atol=1e-4)
    assert torch.equal(logits[:, -7:-1].argmax(-1), tokens)


def test_fastv_matches_output_attentions_of_layer_k_minus_1(llama):
    embeds, mask, starts, lens = make_inputs(llama, [(5, 7)])
    with torch.no_grad():
        att = llama(inputs_embeds=embeds, attention_mask=mask, output_attentions=True).attentions
    k, r = 2, 0.5
    scores = att[k - 1][0, :, -1, starts[0]:starts[0] + 24].mean(0)  # last token, head mean
    expected = torch.sort(torch.topk(scores, 12).indices).values
    pruner = LLMPruner(llama, FastVPolicy(k=k, r=r))
    _, sess = forward(llama, embeds, mask, pruner, starts, lens)
    assert torch.equal(sess.kept[k][0], expected)


def test_pdrop_first_stage_matches_output_attentions(llama):
    embeds, mask, starts, lens = make_inputs(llama, [(5, 7)])
    with torch.no_grad():
        att = llama(inputs_embeds=embeds, attention_mask=mask, output_attentions=True).attentions
    pol = PDropPolicy()
    pruner = LLMPruner(llama, pol)
    assert pol.layers == default_layers(6, base=(8, 16, 24)) == [2, 3, 4]
    _, sess = forward(llama, embeds, mask, pruner, starts, lens)
    scores = att[2][0, :, -1, starts[0]:starts[0] + 24].mean(0)
    assert torch.equal(sess.kept[2][0], torch.sort(torch.topk(scores, 12).indices).values)
    assert [len(sess.kept[p][0]) for p in (2, 3, 4)] == [12, 6, 3]


def test_fixed_schedule_counts(llama):
    embeds, mask, starts, lens = make_inputs(llama, [(5, 7)])
    pruner = LLMPruner(llama, FixedPolicy(layers=[1, 3, 4], keep=[16, 8, 3]))
    _, sess = forward(llama, embeds, mask, pruner, starts, lens)
    assert [len(sess.kept[p][0]) for p in (1, 3, 4)] == [16, 8, 3]


def test_default_layers_scale_with_depth():
    assert default_layers(32) == [4, 12, 20]
    assert default_layers(30) == [4, 11, 19]


@pytest.mark.parametrize("policy, message", [
    (MeteorPolicy(layers=[3, 1]), "strictly increasing"),
    (MeteorPolicy(layers=[1, 9]), "must lie in 0..5"),
    (MeteorPolicy(layers=[1], heads=9), "--heads 9 must be in 1..8"),
    (MeteorPolicy(layers=[1], lam=0), "--lambda"),
    (FastVPolicy(k=0), "must lie in 1..5"),
])
def test_bad_settings_are_rejected(llama, policy, message):
    with pytest.raises(UsageError, match=message):
        LLMPruner(llama, policy)


def test_prompt_without_visual_tokens_prunes_nothing_and_warns(llama):
    embeds, mask, starts, lens = make_inputs(llama, [(5, 7)], n_vis=0)
    pruner = LLMPruner(llama, MeteorPolicy(layers=[1], lam=1.0))
    ref, _ = forward(llama, embeds, mask)
    with pytest.warns(UserWarning, match="no visual tokens"):
        out, _ = forward(llama, embeds, mask, pruner, starts, [0])
    assert torch.equal(out, ref)


@pytest.mark.parametrize("family", ["qwen2", "mistral"])
def test_other_families_generate_consistently(family):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model(family, vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                               num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()
    embeds, mask, starts, lens = make_inputs(model, [(5, 7), (3, 4)])
    pruner = LLMPruner(model, MeteorPolicy(layers=[1, 2], heads=2, lam=5.0))
    with torch.no_grad(), pruner.session(starts, lens, attention_mask=mask) as sess:
        gen = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=4, do_sample=False,
                             output_scores=True, return_dict_in_generate=True, pad_token_id=0)
    assert all(len(k) < 24 for k in sess.kept[1])
    tokens = gen.sequences
    full = torch.cat([embeds, model.get_input_embeddings()(tokens).detach()], dim=1)
    full_mask = torch.cat([mask, torch.ones_like(tokens)], dim=1)
    with torch.no_grad(), pruner.session(starts, lens, attention_mask=full_mask, prompt_len=[embeds.shape[1]] * 2,
                                         replay=sess.kept):
        logits = model(inputs_embeds=full, attention_mask=full_mask, use_cache=False).logits
    assert torch.allclose(logits[:, -5:-1], torch.stack(gen.scores, dim=1), atol=1e-4)


def test_unsupported_family_is_named():
    from torch import nn

    class Odd(nn.Module):
        config = type("C", (), {"model_type": "gpt2", "num_attention_heads": 4})()

        def get_decoder(self):
            return nn.Module()

    with pytest.raises(UsageError, match="no adapter for model family 'gpt2'"):
        LLMPruner(Odd(), MeteorPolicy(layers=[1]))
