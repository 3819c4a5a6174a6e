"""SparseVLM+ (v2) as a Stage-3 policy: raters, the RoPE bias, the kept set against a brute-force
reference from the model's own attention maps, schedules, and the CLI budgets."""

from __future__ import annotations

import json
import math

import pytest
import torch

from meteor_cli.eval.methods import sparsevlm_setting
from meteor_cli.pruning.llm_pruner import LLMPruner, apply_rope
from meteor_cli.pruning.schedule import layer_averaged_tokens
from meteor_cli.pruning.sparsevlm import REFERENCE_COUNTS, SparseVLMPolicy, raters, rope_bias, sparsevlm_layers

from .conftest import make_inputs, tiny_llama
from .test_llm_pruner import forward
from .test_prune_llm_cli import llm_dir  # noqa: F401  (fixture)


def test_raters_are_the_text_tokens_the_image_attends_to_above_the_mean():
    d = 4
    hidden = torch.zeros(1, 6, d)
    hidden[0, 0:3] = torch.tensor([5.0, 0, 0, 0])  # visual tokens, all along e0
    hidden[0, 3] = torch.tensor([1.0, 0, 0, 0])  # text aligned with the image: rater
    hidden[0, 4] = torch.tensor([0, 1.0, 0, 0])
    hidden[0, 5] = torch.tensor([0, 0, 1.0, 0])
    visual = torch.tensor([[True] * 3 + [False] * 3])
    text = torch.tensor([[False] * 3 + [True] * 3])
    assert raters(hidden, visual, text).tolist() == [[False] * 3 + [True, False, False]]
    one = torch.tensor([[False] * 5 + [True]])  # one text token: R equals its mean; it rates alone
    assert raters(hidden, visual, one).tolist() == one.tolist()


def test_rope_bias_is_the_logit_of_rotated_all_ones_vectors(llama):
    pos = torch.tensor([[0, 3, 7, 40]])
    h = torch.zeros(1, 4, 64)
    cos, sin = llama.model.rotary_emb(h, position_ids=pos)
    dh = cos.shape[-1]
    ones = torch.ones(1, 1, 4, dh)
    r = apply_rope(ones, cos, sin)[0, 0]  # (4, dh): what the reference builds with new_ones + apply_rotary_pos_emb
    expected = r[[1, 3]] @ r.T / math.sqrt(dh)
    got = rope_bias((cos, sin), torch.tensor([[1, 3]]), 1)[0]
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(got[0, 1], torch.tensor(dh / math.sqrt(dh)), atol=1e-4)  # same position: |1|² / √d


def test_first_stage_matches_a_brute_force_reference(llama):
    """Before any pruning, layer K-1's eager attention maps are the reference's attention."""
    embeds, mask, starts, lens = make_inputs(llama, [(5, 9)])
    s, n = starts[0], lens[0]
    with torch.no_grad():
        att = llama(inputs_embeds=embeds, attention_mask=mask, output_attentions=True).attentions
    L = embeds.shape[1]
    vis, text = torch.zeros(1, L, dtype=torch.bool), torch.zeros(1, L, dtype=torch.bool)
    vis[0, s:s + n], text[0, s + n:] = True, True
    rows = torch.nonzero(raters(embeds, vis, text)[0]).flatten()
    cos, sin = llama.model.rotary_emb(embeds, position_ids=torch.arange(L)[None])
    a = att[1][0][:, rows][:, :, s:s + n] / rope_bias((cos, sin), rows[None], 1)[0][:, s:s + n]  # (H, Q, N)
    heads = torch.topk(a.sum((1, 2)), 3).indices
    score = a[heads].mean(0).mean(0)
    expected = torch.sort(torch.topk(score, 10).indices).values

    pol = SparseVLMPolicy(layers=[2, 4], keep=[10, 5], heads=3)
    _, sess = forward(llama, embeds, mask, LLMPruner(llama, pol), starts, lens)
    assert 0 < len(rows) < 9
    assert torch.equal(sess.kept[2][0], expected)
    assert [len(sess.kept[p][0]) for p in (2, 4)] == [10, 5] and sess.entering[4] == [10]


def test_consecutive_layers_score_what_survives_the_layer_before(llama):
    """Layers [1, 2, 3]: layer 2's scores come from layer 1 AFTER layer 1's pruning (else indices
    would point past the tokens that are left)."""
    embeds, mask, starts, lens = make_inputs(llama, [(5, 7), (2, 9)])
    pol = SparseVLMPolicy(layers=[1, 2, 3], keep=[12, 6, 3], heads=2)
    out, sess = forward(llama, embeds, mask, LLMPruner(llama, pol), starts, lens)
    assert sess.entering[2] == [12, 12] and sess.entering[3] == [6, 6]
    assert all(len(k) == c for p, c in ((1, 12), (2, 6), (3, 3)) for k in sess.kept[p])
    assert all(int(k.max()) < sess.entering[p][b] for p in (2, 3) for b, k in enumerate(sess.kept[p]))


def test_keeping_everything_gives_the_unpruned_logits_and_batches_equal_singles(llama):
    prompts = [(5, 7), (2, 4), (8, 11)]
    embeds, mask, starts, lens = make_inputs(llama, prompts)
    ref, _ = forward(llama, embeds, mask)
    full, _ = forward(llama, embeds, mask, LLMPruner(tiny_llama(), SparseVLMPolicy(keep=[1.0, 1.0, 1.0])), starts, lens)
    assert torch.equal(full, ref)
    pol = SparseVLMPolicy(heads=3, keep=[0.5, 0.25, 0.125])
    pruner = LLMPruner(llama, pol)
    _, bsess = forward(llama, embeds, mask, pruner, starts, lens)
    for b, (pre, q) in enumerate(prompts):
        e, m, st, ln = make_inputs(llama, prompts)
        one = e[b:b + 1, mask[b].bool()], torch.ones(1, int(mask[b].sum()), dtype=torch.long)
        _, sess = forward(llama, one[0], one[1], pruner, [pre], [24])
        for p in pol.layers:
            assert torch.equal(sess.kept[p][0], bsess.kept[p][b])


def test_eager_and_sdpa_keep_the_same_tokens():
    embeds, mask, starts, lens = make_inputs(tiny_llama("eager"), [(5, 7), (3, 9)])
    kept = {}
    for attn in ("eager", "sdpa"):
        model = tiny_llama(attn)
        kept[attn] = forward(model, embeds, mask, LLMPruner(model, SparseVLMPolicy(heads=3, keep=[12, 6, 3])),
                             starts, lens)[1].kept
    assert all(torch.equal(a, b) for p in kept["eager"] for a, b in zip(kept["eager"][p], kept["sdpa"][p]))


def test_defaults_scale_to_the_depth_and_heads():
    assert sparsevlm_layers(32) == [3, 7, 16] and sparsevlm_layers(6) == [1, 2, 3] and sparsevlm_layers(8) == [1, 2, 4]
    pol = SparseVLMPolicy()
    pol.validate(32, 32)
    assert pol.heads == 14 and pol.layers == [3, 7, 16]
    assert [round(k * 576) for k in pol.keep] == REFERENCE_COUNTS[192]
    small = SparseVLMPolicy()
    small.validate(6, 8)
    assert small.heads == 4  # round(14·8/32)


@pytest.mark.parametrize("n,target,layers,points", [(576, 64, 32, [3, 7, 16]), (576, 128, 32, [3, 7, 16]),
                                                    (576, 192, 32, [3, 7, 16]), (96, 24, 8, [1, 2, 4]),
                                                    (96, 48, 8, [1, 2, 4]), (576, 64, 16, [1, 4, 8])])
def test_eval_budget_averages_the_target(n, target, layers, points):
    pts, ratios = sparsevlm_setting(n, target, layers)
    kept = [max(1, round(r * n)) for r in ratios]
    assert pts == points  # its own layers, or from layer 1 where those let too many through (576 at 16 layers)
    assert layer_averaged_tokens(n, pts, kept, layers) == pytest.approx(target, abs=0.5)
    assert kept == sorted(kept, reverse=True)  # the reference's shape: fewer at every stage


def test_prune_llm_budgets_through_the_cli(cli, llm_dir):
    res = cli("prune-llm", "--model", llm_dir, "--method", "sparsevlm", "--visual-tokens", "64", "--out", "-",
              "--device", "cpu")
    assert res.exit_code == 0, res.output
    body = json.loads(res.stdout)
    assert body["keep"] == [66, 34, 20] and body["query"] == "raters" and body["heads"] == 4  # 8-head LLM
    res = cli("prune-llm", "--model", llm_dir, "--method", "sparsevlm", "--heads", "2", "--out", "-", "--device", "cpu")
    assert json.loads(res.stdout)["heads"] == 2
    res = cli("prune-llm", "--model", llm_dir, "--method", "sparsevlm", "--visual-tokens", "50", "--device", "cpu")
    assert res.exit_code == 2 and "64, 96, 128, 192" in res.stderr


def test_correction_can_be_turned_off_from_the_cli(cli, llm_dir):
    res = cli("prune-llm", "--model", llm_dir, "--method", "sparsevlm", "--option", "correct=false", "--out", "-",
              "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["correct"] is False


def test_query_rows_given_on_the_cli_win_over_the_policy_default(cli, llm_dir):
    def query(*args):
        res = cli("prune-llm", "--model", llm_dir, *args, "--out", "-", "--device", "cpu")
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout)["query"]

    assert query("--method", "sparsevlm") == "raters" and query("--method", "sparsevlm", "--query", "text") == "text"
    assert query("--method", "fastv") == "last" and query("--method", "fastv", "--query", "text") == "text"
    assert query("--method", "pdrop") == "last-instruction" and query("--method", "meteor") == "text"
