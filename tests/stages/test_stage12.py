"""Stage 1 (in-encoder, allocation budgets) and Stage 2 (collaborative) on the real tiny model."""

from __future__ import annotations

import pytest
import torch

from meteor_cli.model.checkpoint import load_model
from meteor_cli.pruning import stage2 as S2
from meteor_cli.pruning.stage1 import Stage1, mean_similarity_scores, select_topk


@pytest.fixture(scope="module")
def vlm():
    return load_model("tiny")


def test_select_topk_ties_and_order():
    s = torch.tensor([[0.5, 0.9, 0.5, 0.1, 0.9]])
    assert select_topk(s, 3).tolist() == [[0, 1, 4]]  # 0.9, 0.9, then the first 0.5
    x = torch.tensor([[[1.0, 0.0], [1.0, 0.01], [0.0, 1.0]]])
    assert select_topk(mean_similarity_scores(x), 1).tolist() == [[2]]  # the odd one out is kept


def test_budgets_at_least_the_tokens_change_nothing(vlm):
    imgs = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        ref = vlm.encode_images(imgs).z
        vlm.stage1 = Stage1({"vit": [16, 16, 16], "clip": [64, 64, 64], "convnext": [16, 16, 16]})
        vlm.stage2 = S2.Stage2(keep=96)
        try:
            out = vlm.encode_images(imgs).z
        finally:
            vlm.stage1 = vlm.stage2 = None
    assert torch.equal(out, ref)


def test_allocation_budgets_reach_the_llm(vlm):
    alloc = {"stage1": {"encoders": {"vit": {"keep": [12, 10, 8]}, "clip": {"keep": [40, 30, 20]},
                                     "convnext": {"keep": [16, 12, 6]}}}, "stage2": {"keep": 20}}
    imgs = torch.rand(2, 3, 128, 128)
    vlm.stage1 = Stage1.from_allocation(alloc, vlm.encoders)
    try:
        with torch.no_grad():
            vis = vlm.encode_images(imgs)
        assert vis.per_encoder == {"vit": [8, 8], "clip": [20, 20], "convnext": [6, 6]}
        assert all(torch.equal(p, torch.sort(p).values) for p in vis.pos.split([8, 20, 6], dim=1))
        vlm.stage2 = S2.Stage2(keep=20)
        with torch.no_grad():
            vis = vlm.encode_images(imgs)
        assert vis.z.shape == (2, 20, 192) and [sum(v) for v in zip(*vis.per_encoder.values())] == [20, 20]
        # batch of 2 == two singles, through both stages
        with torch.no_grad():
            one = vlm.encode_images(imgs[1:2])
        assert torch.allclose(one.z[0], vis.z[1], atol=1e-5)
    finally:
        vlm.stage1 = vlm.stage2 = None


def test_planted_duplicates_are_removed_first():
    torch.manual_seed(0)
    z = torch.randn(1, 12, 512)  # wide: unrelated tokens are nearly orthogonal
    ids = torch.tensor([0] * 6 + [1] * 6)
    z[0, 8] = z[0, 2] * 2.0  # token 2 (encoder 0) and token 8 (encoder 1) carry the same content
    r = S2.collaborative_prune(z, ids, keep=10)
    assert sorted(set(range(12)) - set(r.indices[0].tolist())) == [2, 8]
    assert r.per_encoder.tolist() == [[5, 5]]


def test_keep_at_least_n_is_identity_and_chunking_is_exact():
    z = torch.randn(2, 50, 16)
    ids = torch.tensor([0] * 20 + [1] * 18 + [2] * 12)
    assert torch.equal(S2.collaborative_prune(z, ids, 50).indices, torch.arange(50).expand(2, 50))
    full = S2.collaborative_prune(z, ids, 17)
    chunked = S2.collaborative_prune(z, ids, 17, max_bytes=7 * 50 * 4)  # 7-row chunks
    assert torch.equal(full.indices, chunked.indices) and torch.allclose(full.scores, chunked.scores, atol=1e-5)
    mean = S2.collaborative_prune(z, ids, 17, score="mean")
    assert mean.indices.shape == (2, 17)


def test_batch_equals_singles_and_order():
    z = torch.randn(2, 30, 8)
    ids = torch.tensor([0] * 10 + [1] * 20)
    both = S2.collaborative_prune(z, ids, 11)
    for b in range(2):
        assert torch.equal(both.indices[b], S2.collaborative_prune(z[b:b + 1], ids, 11).indices[0])
    assert torch.equal(both.indices, torch.sort(both.indices, dim=1).values)  # grouped by encoder, raster inside


def test_separate_quotas_and_random_reproducible():
    z = torch.randn(2, 30, 8)
    ids = torch.tensor([0] * 10 + [1] * 20)
    sep = S2.separate_prune(z, ids, 12)
    assert sep.per_encoder.tolist() == [[4, 8], [4, 8]]
    assert S2.quotas([10, 20, 7], 12) == [3, 7, 2]
    a = S2.random_prune(z, ids, 9, seed=3, sample_ids=[5, 6])
    b = S2.random_prune(z[1:], ids, 9, seed=3, sample_ids=[6])
    assert torch.equal(a.indices[1], b.indices[0])
    assert not torch.equal(a.indices, S2.random_prune(z, ids, 9, seed=4, sample_ids=[5, 6]).indices)


def test_random_stage2_picks_do_not_depend_on_the_batch(vlm):
    """A sample's random Stage-2 picks follow its image, not its row: batched == alone, order-free."""
    imgs = torch.rand(3, 3, 128, 128)
    vlm.stage2 = S2.Stage2(keep=20, method="random", seed=1)
    try:
        with torch.no_grad():
            both = vlm.encode_images(imgs)
            alone = [vlm.encode_images(imgs[b:b + 1]) for b in range(3)]
            flipped = vlm.encode_images(imgs.flip(0))
    finally:
        vlm.stage2 = None
    for b in range(3):
        assert torch.equal(both.pos[b], alone[b].pos[0]) and torch.equal(both.encoder_ids[b], alone[b].encoder_ids[0])
        assert torch.equal(both.pos[b], flipped.pos[2 - b])
    assert not torch.equal(both.pos[0], both.pos[1])  # different images, different draws
