"""Stage 2 on the shared grid positions of pre-projection fusion (EAGLE releases).

In pre-projection fusion (EAGLE's channel concatenation, meteor's ``fusion = "pre-projection"``)
every encoder's final map is resampled to one shared g×g grid and the maps are concatenated on
channels, so a visual token IS a grid position: it is kept or dropped for all encoders at once.
METEOR's Stage 2 (collaborative redundancy across encoders, METHOD A7) is defined on per-encoder
tokens after per-encoder projectors; on a single shared projector this module carries it over
to positions. Every choice here is **[inferred]** (a METEOR-style default, docs/eagle.md):

* **Per-encoder view of a position.** The projector's first layer splits exactly by encoder:
  ``W0·x + b0 = Σ_e W0[:, cols_e]·x_e + b0``. The term ``c_e(p) = W0[:, cols_e]·x_e(p)`` is
  encoder e's contribution to position p in the projector's hidden space — the closest thing a
  shared projector has to METEOR's per-encoder projected token.
* **Redundancy** of (e, p): the cosine similarity of ``c_e(p)`` to the contributions of the OTHER
  encoders at every position they still cover, reduced as the allocation's ``stage2.score`` says
  (``sum``, the paper's; ``mean``; ``encoder-mean``; ``zscore`` within each encoder) — exactly
  :func:`meteor_cli.pruning.stage2.redundancy` on the (e, p) tokens, restricted to covered ones.
* **Fusion across encoders**: a position's score is the MEAN of its covering encoders'
  redundancies (lower = more unique = kept). A position no encoder covers any more (every
  encoder dropped all the tokens near it in Stage 1) ranks last.
* **Keep** the ``stage2.keep`` lowest, ties to the lower index, sorted ascending (raster order),
  the same count for every sample (A12).

``stage2.method`` ``random`` draws the positions uniformly (seeded per sample, covered positions
first). ``divprune`` runs DivPrune on what its reference runs it on, the tokens that enter the LLM:
the shared projector's output at every covered position (projected once; the kept ones are reused,
not projected again), then uncovered positions if the budget is larger. ``separate`` (per-encoder
quotas) has no meaning when a position is shared by all encoders: it is refused with a message. ``stage2.floor`` (each encoder first keeps a fraction of
its share, ``meteor allocate``'s default 0.5) is met by construction — a kept position keeps every
encoder's features there — so it changes nothing here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from meteor_cli.errors import UsageError

#: Stage-2 methods that have a meaning on shared positions.
POSITION_METHODS = ("meteor", "random", "divprune")


@dataclass
class PositionResult:
    indices: torch.Tensor  # (B, K) kept positions, ascending
    scores: torch.Tensor | None  # (B, P) position scores (lower = kept), None for random
    covered: torch.Tensor  # (B, E, P) which encoder still covers which position
    #: (B, K, d) projector output at the kept positions when the selection needed it (divprune), else None
    projected: torch.Tensor | None = None


def contributions(fused: torch.Tensor, widths: list[int], w0: torch.Tensor) -> torch.Tensor:
    """(B, P, ΣD) channel-concatenated maps → (B, E, P, d) float32: ``W0[:, cols_e]·x_e`` per encoder."""
    out, c0 = [], 0
    for w in widths:
        out.append(fused[..., c0:c0 + w].float() @ w0[:, c0:c0 + w].float().T)
        c0 += w
    return torch.stack(out, 1)


def position_scores(c: torch.Tensor, covered: torch.Tensor, score: str = "sum") -> torch.Tensor:
    """(B, E, P, d) contributions, (B, E, P) coverage → (B, P): mean over the covering encoders of
    each one's redundancy with the other encoders' covered contributions; +inf where none covers."""
    from meteor_cli.pruning.stage2 import SCORES

    if score not in SCORES:
        raise UsageError(f"unknown Stage-2 redundancy score {score!r} (stage2.score)", f"choose from {', '.join(SCORES)}")
    B, E, P, _ = c.shape
    out = torch.full((B, P), float("inf"), device=c.device)
    ids = torch.arange(E, device=c.device).repeat_interleave(P)  # (E·P,) encoder of each (e, p) token
    for b in range(B):
        cov = covered[b].flatten()  # (E·P,)
        zn = torch.nn.functional.normalize(c[b].flatten(0, 1).float(), dim=-1) * cov[:, None]
        other = (ids[:, None] != ids[None, :]) & cov[None, :]  # covered tokens of the other encoders
        sim = (zn @ zn.T) * other
        if score == "encoder-mean":
            onehot = torch.nn.functional.one_hot(ids, E).float()
            per_enc, n_enc = sim @ onehot, other.float() @ onehot
            r = (per_enc / n_enc.clamp_min(1)).sum(-1) / (n_enc > 0).sum(-1).clamp_min(1)
        else:
            r = sim.sum(-1)
            if score == "mean":
                r = r / other.sum(-1).clamp_min(1)
        r = r.view(E, P)
        cv = covered[b]
        if score == "zscore":
            for e in range(E):
                m = cv[e]
                if m.any():
                    part = r[e, m]
                    r[e, m] = (part - part.mean()) / part.std(unbiased=False).clamp_min(1e-6)
        n = cv.sum(0)
        mean = (r * cv).sum(0) / n.clamp_min(1)
        out[b] = torch.where(n > 0, mean, torch.full_like(mean, float("inf")))
    return out


def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    order = torch.sort(scores, dim=1, stable=True).indices[:, :k]  # lowest first, ties to the lower index
    return torch.sort(order, dim=1).values


def select_positions(stage2: Any, fused: torch.Tensor, covered: torch.Tensor, widths: list[int],
                     w0: torch.Tensor, sample_ids: list[int] | None = None,
                     project: Any = None) -> PositionResult | None:
    """The positions ``stage2`` (a :class:`~meteor_cli.pruning.stage2.Stage2`) keeps; None when it keeps all.
    ``project``: the shared projector (``divprune`` selects among its outputs)."""
    method = getattr(stage2, "method", None)
    keep = getattr(stage2, "keep", None)
    if keep is None or method is None:
        raise UsageError("pre-projection fusion needs a Stage-2 policy built from an allocation (stage2.keep, "
                         "stage2.method)", "pass --allocation; see docs/eagle.md")
    B, P, _ = fused.shape
    if keep >= P:
        return None
    if method not in POSITION_METHODS:
        raise UsageError(f"Stage-2 method {method!r} has no meaning on pre-projection fusion's shared positions",
                         f"use stage2.method {' or '.join(map(repr, POSITION_METHODS))} (`meteor allocate "
                         "--stage2-method`); docs/eagle.md explains why")
    if method == "random":
        seed = int(getattr(stage2, "seed", 0))
        ids = list(range(B)) if sample_ids is None else sample_ids
        rows = []
        for b in range(B):
            g = torch.Generator().manual_seed((seed * 1_000_003 + int(ids[b])) % (1 << 63))
            rank = torch.randperm(P, generator=g).float().to(fused.device)
            rows.append(rank + P * (~covered[b].any(0)).float())  # covered positions first
        scores = torch.stack(rows)
        return PositionResult(_lowest(scores, keep), None, covered)
    if method == "divprune":
        from meteor_cli.pruning.divprune import divprune_select

        if project is None:
            raise UsageError("divprune on shared positions needs the projector", "pass project= to select_positions")
        z = project(fused)  # (B, P, d): the tokens the LLM would get at every position
        rows = []
        for b in range(B):
            cov = torch.nonzero(covered[b].any(0)).flatten()
            pick = cov[divprune_select(z[b, cov], keep)]
            if len(pick) < keep:  # more budget than covered positions: the first uncovered ones
                rest = torch.nonzero(~covered[b].any(0)).flatten()[: keep - len(pick)]
                pick = torch.cat([pick, rest])
            rows.append(torch.sort(pick).values)
        idx = torch.stack(rows)
        return PositionResult(idx, None, covered, torch.gather(z, 1, idx.unsqueeze(-1).expand(-1, -1, z.shape[-1])))
    scores = position_scores(contributions(fused, widths, w0), covered, getattr(stage2, "score", "sum"))
    return PositionResult(_lowest(scores, keep), scores, covered)


__all__ = ["POSITION_METHODS", "PositionResult", "contributions", "position_scores", "select_positions"]
