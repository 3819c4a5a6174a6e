"""Rank of feature maps (METHOD A1): what Stage 1 uses to split token budgets across encoders.

Three measures, never in bf16/fp16 (unreliable SVDs; A13) — the nuclear norm in float64, the
numerical ranks in float32 with its default tolerance:

* ``nuclear`` (project default) — the supplement's diversity measure: rows of the token matrix
  A (n × D) L2-normalised, ``r = ‖Â‖_* / n`` (sum of singular values over n). For n ≤ D,
  ``1/√n ≤ r ≤ 1``: n identical tokens give 1/√n, n orthonormal tokens give 1.
* ``hrank`` — HRank's measure: the mean, over channels, of the numerical rank of each channel's
  H×W map.
* ``matrix-rank`` — numerical rank of the n × D token matrix (usually near full; ablation only).

Encoders have different grids (EVA 64×64 vs CLIP 32×32), and ``r`` depends on n, so every map
is first resampled bilinearly to a common grid (default 32×32, EAGLE's) — a METEOR-style default.

Per-image values are accumulated with :class:`RunningStats`, whose shards merge exactly (Chan's
parallel algorithm), so ``meteor rank-estimate`` can run as a SLURM array and be merged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

RANK_METHODS = ("nuclear", "hrank", "matrix-rank")


def nuclear_rank(tokens: torch.Tensor) -> torch.Tensor:
    """Normalised nuclear norm of row-normalised tokens: (n, D) → scalar, (B, n, D) → (B,).

    >>> round(float(nuclear_rank(torch.ones(4, 8))), 6)   # 4 identical rows: 1/√4
    0.5
    >>> round(float(nuclear_rank(torch.eye(4, 8))), 6)    # orthonormal rows
    1.0
    """
    a = tokens.double()
    a = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.linalg.svdvals(a).sum(-1) / a.shape[-2]


def matrix_rank(tokens: torch.Tensor) -> torch.Tensor:
    """Numerical rank of the token matrix: (n, D) → scalar, (B, n, D) → (B,) (float)."""
    # float32 with its default tolerance: float64 would count float32 rounding noise as rank.
    return torch.linalg.matrix_rank(tokens.float()).double()


def hrank(fmap: torch.Tensor) -> torch.Tensor:
    """Mean per-channel numerical rank of the H×W maps: (B, C, H, W) → (B,)."""
    return torch.linalg.matrix_rank(fmap.float()).double().mean(-1)


def resample_to_grid(fmap: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, C, H, W) → (B, C, grid, grid), bilinear (align_corners=False), as EAGLE resizes maps."""
    if fmap.shape[-2:] == (grid, grid):
        return fmap
    return F.interpolate(fmap.float(), size=(grid, grid), mode="bilinear", align_corners=False)


def feature_rank(fmap: torch.Tensor, method: str = "nuclear", grid: int = 32) -> torch.Tensor:
    """Rank of each image's feature map (B, C, H, W) on the common grid → (B,) float64."""
    if method not in RANK_METHODS:
        raise ValueError(f"unknown rank method {method!r}; choose from {RANK_METHODS}")
    m = resample_to_grid(fmap, grid)
    if method == "hrank":
        return hrank(m)
    tokens = m.flatten(2).transpose(1, 2)  # (B, grid², C)
    return nuclear_rank(tokens) if method == "nuclear" else matrix_rank(tokens)


@dataclass
class RunningStats:
    """Count, mean and sum of squared deviations (M2) of a stream; shards merge exactly.

    ``std`` is the population standard deviation (divides by n).
    """

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def update(self, values: torch.Tensor | list[float]) -> None:
        vals = torch.as_tensor(values, dtype=torch.float64).flatten()
        if len(vals):
            self.merge(RunningStats(len(vals), float(vals.mean()), float(((vals - vals.mean()) ** 2).sum())))

    def merge(self, other: RunningStats) -> RunningStats:
        if other.n:
            n = self.n + other.n
            delta = other.mean - self.mean
            self.mean += delta * other.n / n
            self.m2 += other.m2 + delta * delta * self.n * other.n / n
            self.n = n
        return self

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.n) if self.n else 0.0

    def to_dict(self) -> dict[str, float]:
        return {"n": self.n, "mean": self.mean, "m2": self.m2}

    @classmethod
    def from_dict(cls, d: dict[str, float]) -> RunningStats:
        return cls(int(d["n"]), float(d["mean"]), float(d["m2"]))


__all__ = ["RANK_METHODS", "RunningStats", "feature_rank", "hrank", "matrix_rank", "nuclear_rank", "resample_to_grid"]
