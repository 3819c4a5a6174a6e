"""The normalised Stage-2 redundancy scores ([inferred] variants of the paper's sum) and the floor."""

from __future__ import annotations

import pytest
import torch

import meteor_cli.pruning.stage2 as S2
from meteor_cli.errors import UsageError


def _cos(z: torch.Tensor) -> torch.Tensor:
    zn = torch.nn.functional.normalize(z, dim=-1)
    return zn @ zn.T


def test_scores_equal_hand_computed_values():
    torch.manual_seed(0)
    z = torch.randn(1, 9, 6)
    ids = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2])
    cos = _cos(z[0])
    other = ids[:, None] != ids[None, :]
    want_sum = (cos * other).sum(1)
    want_mean = want_sum / other.sum(1)
    want_enc = torch.stack([
        torch.stack([cos[i, ids == e].mean() for e in range(3) if e != int(ids[i])]).mean() for i in range(9)])
    got = {s: S2.redundancy(z, ids, reduce=s)[0] for s in S2.SCORES}
    assert torch.allclose(got["sum"], want_sum, atol=1e-6)
    assert torch.allclose(got["mean"], want_mean, atol=1e-6)
    assert torch.allclose(got["encoder-mean"], want_enc, atol=1e-6)
    for e in range(3):  # zscore: the sum standardised inside each encoder
        part = want_sum[ids == e]
        assert torch.allclose(got["zscore"][ids == e], (part - part.mean()) / part.std(unbiased=False), atol=1e-5)


def test_encoder_mean_ignores_token_counts_where_sum_does_not():
    # Encoder 0's token 0 duplicates ONE token of a 2-token encoder; token 1 is cos 0.707 with every
    # token of a 40-token encoder. The paper's sum calls token 1 28x as redundant as token 0 (28.3 vs
    # 1.0): the big encoder's count decides. Per encoder (mean of each other encoder's mean) they
    # are 0.354 vs 0.25: the duplicate is judged on what it duplicates, not on how many tokens look on.
    d = 64
    base = torch.eye(d)
    z = torch.zeros(1, 44, d)
    z[0, 0] = base[0]
    z[0, 1] = base[1]
    z[0, 2] = base[0]  # encoder 1 (2 tokens): a duplicate of token 0, and an unrelated token
    z[0, 3] = base[5]
    z[0, 4:] = base[1] + base[10:50]  # encoder 2 (40 tokens): each cos 0.707 with token 1
    ids = torch.tensor([0, 0, 1, 1] + [2] * 40)
    s = S2.redundancy(z, ids, reduce="sum")[0]
    e = S2.redundancy(z, ids, reduce="encoder-mean")[0]
    half = 0.5 ** 0.5
    assert s[0].item() == pytest.approx(1.0, abs=1e-5) and s[1].item() == pytest.approx(40 * half, abs=1e-4)
    assert e[0].item() == pytest.approx(0.25, abs=1e-5) and e[1].item() == pytest.approx(half / 2, abs=1e-5)


def test_floor_guarantees_each_encoder_its_share():
    torch.manual_seed(1)
    z = torch.randn(3, 40, 8)
    ids = torch.tensor([0] * 8 + [1] * 32)
    z[:, :8] += 5 * torch.randn(1, 1, 8)  # encoder 0's tokens all look alike and like nothing else
    keep = 10
    quota = S2.quotas([8, 32], keep)  # [2, 8]
    res = S2.collaborative_prune(z, ids, keep, floor=1.0)
    assert res.indices.shape == (3, keep)
    assert (res.per_encoder >= torch.tensor(quota)).all()
    half = S2.collaborative_prune(z, ids, keep, floor=0.5)
    assert (half.per_encoder >= torch.tensor([1, 4])).all() and half.indices.shape == (3, keep)
    assert torch.equal(S2.collaborative_prune(z, ids, keep, floor=0.0).indices, S2.collaborative_prune(z, ids, keep).indices)
    # batched == per sample
    for b in range(3):
        assert torch.equal(half.indices[b], S2.collaborative_prune(z[b:b + 1], ids, keep, floor=0.5).indices[0])


@pytest.mark.parametrize("score", S2.SCORES)
def test_every_score_keeps_exactly_the_budget_and_is_chunk_exact(score):
    torch.manual_seed(2)
    z = torch.randn(2, 50, 16)
    ids = torch.tensor([0] * 20 + [1] * 18 + [2] * 12)
    full = S2.collaborative_prune(z, ids, 17, score=score)
    chunked = S2.collaborative_prune(z, ids, 17, score=score, max_bytes=7 * 50 * 4)
    assert full.indices.shape == (2, 17) and torch.equal(full.indices, chunked.indices)


@pytest.mark.parametrize("stage2,match", [
    ({"keep": 5, "score": "median"}, "unknown Stage-2 redundancy score 'median'"),
    ({"keep": 5, "floor": 1.5}, "stage2.floor"),
    ({"keep": 5, "floor": True}, "stage2.floor"),
    ({"keep": 5, "floor": "0.5"}, "stage2.floor"),
])
def test_bad_allocation_options_are_named(stage2, match):
    with pytest.raises(UsageError, match=match):
        S2.build_stage2({"stage2": stage2})


def test_allocation_options_reach_the_policy():
    hook = S2.build_stage2({"stage2": {"keep": 5, "score": "zscore", "floor": 0.25}})
    assert hook.options == {"score": "zscore", "floor": 0.25, "max_bytes": 256 << 20}
    old = S2.build_stage2({"stage2": {"keep": 5}})  # allocations written before score/floor existed
    assert old.options["score"] == "sum" and old.options["floor"] == 0.0
