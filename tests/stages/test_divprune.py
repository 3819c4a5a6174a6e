"""DivPrune as a Stage-2 policy: the greedy max-min selection against a direct transcription of the
reference's loop, what it keeps on hand-made inputs, and its Stage-2 bookkeeping."""

from __future__ import annotations

import pytest
import torch

from meteor_cli.pruning.divprune import divprune, divprune_select


def reference_loop(z: torch.Tensor, k: int) -> torch.Tensor:
    """The reference's loop, step for step: min over the kept ROWS of D, recomputed every step."""
    u = z / z.norm(dim=1, keepdim=True)
    dist = 1.0 - u @ u.T
    s: list[int] = []
    for i in range(k):
        if i == 0:
            scores = torch.topk(dist, 2, dim=0, largest=False).values[1, :]
        else:
            scores = torch.min(dist[torch.tensor(s)], dim=0).values
        s.append(int(torch.argmax(scores)))
    return torch.sort(torch.tensor(s)).values


@pytest.mark.parametrize("n,k,seed", [(16, 4, 0), (96, 24, 1), (64, 63, 2), (10, 1, 3)])
def test_incremental_selection_equals_the_reference_loop(n, k, seed):
    z = torch.randn(n, 8, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(divprune_select(z, k), reference_loop(z, k))


def test_duplicates_are_dropped_and_the_most_isolated_token_comes_first():
    e = torch.eye(4)
    z = torch.stack([e[0], e[0] + 0.01 * e[1], e[1], e[2], e[3] + 0.5 * e[2]])  # token 1 repeats token 0
    kept = divprune_select(z, 3)
    assert not {0, 1} <= set(kept.tolist())  # never both near-duplicates
    nearest = torch.topk(1 - torch.nn.functional.normalize(z) @ torch.nn.functional.normalize(z).T, 2, dim=0,
                         largest=False).values[1]
    assert int(torch.argmax(nearest)) in kept.tolist()
    assert divprune_select(z, 0).numel() == 0 and divprune_select(z, 9).tolist() == [0, 1, 2, 3, 4]


def test_stage2_policy_counts_per_encoder_and_batches_equal_singles():
    z = torch.randn(3, 20, 8, generator=torch.Generator().manual_seed(4))
    ids = torch.tensor([0] * 4 + [1] * 16)
    res = divprune(z, ids, 6)
    assert res.indices.shape == (3, 6) and res.per_encoder.sum(1).tolist() == [6, 6, 6]
    for b in range(3):
        assert torch.equal(res.indices[b], divprune(z[b:b + 1], ids, 6).indices[0])
        assert res.per_encoder[b].tolist() == [int((res.indices[b] < 4).sum()), int((res.indices[b] >= 4).sum())]
