"""Feature-map rank (METHOD A1) against direct float64 SVDs, bounds, and exact shard merging."""

from __future__ import annotations

import doctest
import math

import pytest
import torch

from meteor_cli.pruning import rank as R


def direct(a):
    a = a.double()
    a = a / a.norm(dim=-1, keepdim=True)
    return float(torch.linalg.svdvals(a).sum() / a.shape[0])


@pytest.mark.parametrize("n, d, r", [(16, 32, None), (32, 64, 5), (8, 8, 1), (50, 20, None)])
def test_nuclear_rank_matches_direct_svd(n, d, r):
    g = torch.Generator().manual_seed(n * d)
    a = torch.randn(n, d, generator=g) if r is None else torch.randn(n, r, generator=g) @ torch.randn(r, d, generator=g)
    assert float(R.nuclear_rank(a)) == pytest.approx(direct(a), rel=1e-12)
    batch = torch.stack([a, a * 3])  # scale-invariant per row
    assert torch.allclose(R.nuclear_rank(batch), torch.tensor([direct(a)] * 2, dtype=torch.float64))


def test_exact_low_rank_values_and_bounds():
    assert float(R.nuclear_rank(torch.ones(9, 16))) == pytest.approx(1 / 3)  # identical rows: 1/√n
    q, _ = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64))
    assert float(R.nuclear_rank(q[:10])) == pytest.approx(1.0)  # orthonormal rows
    # two orthogonal directions, each shared by half the rows: σ = √(n/2) twice → r = 2·√(n/2)/n
    rows = torch.cat([torch.eye(8)[0].repeat(6, 1), torch.eye(8)[1].repeat(6, 1)])
    assert float(R.nuclear_rank(rows)) == pytest.approx(2 * math.sqrt(6) / 12)
    for _ in range(5):
        n = 12
        v = float(R.nuclear_rank(torch.randn(n, 40)))
        assert 1 / math.sqrt(n) - 1e-9 <= v <= 1 + 1e-9


def test_hrank_and_matrix_rank():
    fmap = torch.zeros(1, 3, 8, 8)
    fmap[0, 0] = torch.outer(torch.arange(8.0), torch.ones(8))  # rank 1
    fmap[0, 1] = torch.eye(8)  # rank 8
    assert float(R.hrank(fmap)[0]) == pytest.approx((1 + 8 + 0) / 3)
    assert float(R.matrix_rank(torch.randn(6, 3) @ torch.randn(3, 10))) == 3


def test_feature_rank_resamples_to_the_common_grid():
    fmap = torch.randn(2, 24, 16, 16)
    out = R.feature_rank(fmap, "nuclear", grid=8)
    tokens = R.resample_to_grid(fmap, 8).flatten(2).transpose(1, 2)
    assert out.shape == (2,) and float(out[1]) == pytest.approx(direct(tokens[1]))
    with pytest.raises(ValueError):
        R.feature_rank(fmap, "svd")


def test_running_stats_merge_equals_one_pass():
    vals = torch.randn(100, dtype=torch.float64) * 3 + 1
    whole = R.RunningStats()
    whole.update(vals)
    parts = [R.RunningStats() for _ in range(3)]
    for p, chunk in zip(parts, (vals[:17], vals[17:60], vals[60:])):
        p.update(chunk)
    merged = R.RunningStats.from_dict(parts[0].to_dict()).merge(parts[1]).merge(parts[2])
    assert merged.n == 100
    assert merged.mean == pytest.approx(float(vals.mean()), rel=1e-14)
    assert merged.std == pytest.approx(float(vals.std(unbiased=False)), rel=1e-12)
    assert whole.mean == pytest.approx(merged.mean, rel=1e-14) and whole.std == pytest.approx(merged.std, rel=1e-12)


def test_doctests():
    assert doctest.testmod(R).failed == 0
