"""DART as a Stage-3 policy: drops duplicated tokens, keeps exactly the budget per sample in ragged
batches, deterministic, the same tokens under eager and SDPA, bad settings named."""

from __future__ import annotations

import pytest
import torch

from meteor_cli.errors import UsageError
from meteor_cli.pruning.dart import DartPolicy, dart_select
from meteor_cli.pruning.llm_pruner import LLMPruner

from .conftest import make_inputs, tiny_llama


# -- DART --------------------------------------------------------------------------------------


def test_dart_drops_the_duplicated_tokens():
    d = 6
    # visual: positions 0..5, tokens 2 and 3 duplicate token 1; text: 6 (about the same thing as 1) and 7
    hidden = torch.eye(d)[[0, 1, 1, 1, 2, 3, 1, 5]].float()
    visual, text = torch.arange(6), torch.tensor([6, 7])
    norms = torch.tensor([0.0, 10.0, 1.0, 1.0, 0.0, 0.0, 5.0, 0.0])  # image pivot: token 1; text pivot: 6
    kept = dart_select(hidden, norms, visual, text, k=4, pivot_image=1, pivot_text=1)
    assert kept.tolist() == [0, 1, 4, 5]  # the copies of the pivot (2, 3) go; the distinct tokens stay
    # quotas 2 + 2: only once every distinct token is kept does one copy come back (the lower index)
    assert dart_select(hidden, norms, visual, text, k=5, pivot_image=1, pivot_text=1).tolist() == [0, 1, 2, 4, 5]


def test_dart_keeps_exactly_the_budget_per_sample_in_a_ragged_batch():
    model = tiny_llama("eager", layers=4)
    embeds, mask, starts, lens = make_inputs(model, [(5, 7), (2, 3), (8, 1)], n_vis=24)
    pruner = LLMPruner(model, DartPolicy(layers=[2], keep=[7]))
    with torch.no_grad(), pruner.session(starts, lens, attention_mask=mask) as sess:
        model(inputs_embeds=embeds, attention_mask=mask)
    assert [len(k) for k in sess.kept[2]] == [7, 7, 7]
    for k in sess.kept[2]:
        assert torch.equal(k, torch.sort(torch.unique(k)).values)
    pruner.policy = DartPolicy(layers=[2], keep=[0.5])
    pruner.policy.validate(4, 8)
    with torch.no_grad(), pruner.session(starts, lens, attention_mask=mask) as again:
        model(inputs_embeds=embeds, attention_mask=mask)
    assert [len(k) for k in again.kept[2]] == [12, 12, 12]


def test_dart_is_deterministic_and_the_same_under_eager_and_sdpa():
    embeds, mask, starts, lens = make_inputs(tiny_llama("eager", layers=4), [(5, 7), (3, 9)])
    kept = {}
    for attn in ("eager", "sdpa", "sdpa"):
        model = tiny_llama(attn, layers=4)
        pruner = LLMPruner(model, DartPolicy(layers=[2], keep=[9]))
        with torch.no_grad(), pruner.session(starts, lens, attention_mask=mask) as sess:
            model(inputs_embeds=embeds, attention_mask=mask)
        kept.setdefault(attn, []).append(sess.kept[2])
    for runs in (kept["sdpa"][1:], kept["eager"]):
        for a, b in zip(kept["sdpa"][0], runs[0]):
            assert torch.equal(a, b)


@pytest.mark.parametrize("policy, message", [
    (DartPolicy(layers=[0]), "must lie in 1"), (DartPolicy(layers=[1, 2]), "prunes once"),
    (DartPolicy(keep=[4, 5]), "one positive count"), (DartPolicy(pivot_image=0), "pivot_image >= 1"),
    (DartPolicy(pivot_by="query"), "unknown pivot_by")])
def test_dart_bad_settings_are_rejected(policy, message):
    with pytest.raises(UsageError, match=message):
        policy.validate(4, 8)
