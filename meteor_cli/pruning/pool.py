"""``pool``: the Stage-2 floor — 2-D average pooling of each encoder's map to the budget.

Not a published method but the baseline every token-reduction paper measures itself against
(LLaVA-style 2×2 pooling, e.g. the "Avg. Pooling" rows of VisionZip, arXiv 2412.04467, Table 1,
code read at ``dvlab-research/VisionZip@3151f6df4fca36a4cd1c985e5956e725b1f9ad02``; and of
DART, arXiv 2502.11494). No code to cite: the pooling is ``torch.nn.functional.adaptive_avg_pool2d``.

Choices (restated in ``docs/baselines.md``):

* **split across encoders**: the budget ``keep`` is shared in proportion to the tokens each
  encoder brings to Stage 2 (largest remainder, :func:`~meteor_cli.pruning.stage2.quotas`, the
  same split as the ``separate`` baseline); an encoder can get 0;
* **the map**: each encoder's post-projection tokens are put back on its native grid at their
  Stage-1 positions; cells that Stage 1 pruned are masked out, so a pooled token is the mean of
  the KEPT tokens in its window (``pool(z·m) / pool(m)``); a window holding none gets the mean of
  that encoder's kept tokens. Without Stage-1 pruning this is exactly ``F.avg_pool2d`` whenever the
  pooled grid divides the map;
* **non-square budgets**: a quota q becomes the ``a × b = q`` pooled grid whose aspect ratio is
  closest to the map's (``|log(a/b) − log(h/w)|``, then the larger a), with a ≤ h and b ≤ w
  (adaptive windows when they do not divide the map). When no such factorisation fits (q prime
  and larger than the map's sides), the smallest near-square grid with a·b ≥ q is pooled and
  q of its cells kept at evenly spaced raster indices;
* **bookkeeping**: pooled tokens come out grouped by encoder, in raster order of the pooled grid;
  each is reported at the grid position (and index) of the first kept token of its window.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from meteor_cli.pruning.stage2 import Stage2Result, quotas
from meteor_cli.registry import register_policy


def pooled_grid(q: int, h: int, w: int) -> tuple[int, int, torch.Tensor | None]:
    """(a, b, cells) for a quota of ``q`` tokens on an h×w map: the pooled grid and, when a·b > q,
    the raster indices of the q cells kept (else None)."""
    target = math.log(h / w)
    pairs = [(a, q // a) for a in range(1, q + 1) if q % a == 0 and a <= h and q // a <= w]
    if pairs:
        a, b = min(pairs, key=lambda p: (abs(math.log(p[0] / p[1]) - target), -p[0]))
        return a, b, None
    a = min(h, max(1, round(math.sqrt(q * h / w))))
    b = min(w, math.ceil(q / a))
    while a * b < q:  # q ≤ h·w, so growing the short side terminates
        if a < h:
            a += 1
        else:
            b += 1
    cells = torch.round(torch.linspace(0, a * b - 1, q)).long()
    return a, b, cells


def _windows(a: int, b: int, h: int, w: int) -> torch.Tensor:
    """(a·b, h·w) bool: the grid cells inside each adaptive pooling window (PyTorch's bounds)."""
    rows = torch.zeros(a, h, dtype=torch.bool)
    cols = torch.zeros(b, w, dtype=torch.bool)
    for i in range(a):
        rows[i, (i * h) // a: -((-(i + 1) * h) // a)] = True
    for j in range(b):
        cols[j, (j * w) // b: -((-(j + 1) * w) // b)] = True
    return (rows[:, None, :, None] & cols[None, :, None, :]).reshape(a * b, h * w)


def pool_encoder(z: torch.Tensor, pos: torch.Tensor, grid: tuple[int, int], q: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One encoder: tokens ``z`` (B, n, d) at raster positions ``pos`` (B, n) of an h×w grid →
    (values (B, q, d), local index (B, q) of each window's first kept token)."""
    B, n, d = z.shape
    h, w = grid
    a, b, cells = pooled_grid(q, h, w)
    with torch.autocast(z.device.type, enabled=False):
        zf = z.float()
        full = zf.new_zeros(B, h * w, d).scatter_(1, pos.unsqueeze(-1).expand(-1, -1, d), zf)
        mask = zf.new_zeros(B, h * w).scatter_(1, pos, 1.0)
        fmap = full.transpose(1, 2).reshape(B, d, h, w)
        num = F.adaptive_avg_pool2d(fmap, (a, b)).flatten(2).transpose(1, 2)  # (B, a·b, d)
        den = F.adaptive_avg_pool2d(mask.view(B, 1, h, w), (a, b)).flatten(1)  # (B, a·b)
        mean = zf.mean(1, keepdim=True)
        vals = torch.where(den.unsqueeze(-1) > 0, num / den.clamp_min(1e-12).unsqueeze(-1), mean)
    win = _windows(a, b, h, w).to(z.device)  # (a·b, h·w)
    inside = win[:, pos].permute(1, 0, 2)  # (B, a·b, n): token t of sample s lies in window c
    first = torch.where(inside, torch.arange(n, device=z.device), n).min(-1).values
    first = torch.where(first == n, 0, first)  # an empty window reports the encoder's first token
    if cells is not None:
        cells = cells.to(z.device)
        vals, first = vals[:, cells], first[:, cells]
    return vals.to(z.dtype), first


def pool_prune(z: torch.Tensor, encoder_ids: torch.Tensor, keep: int, *, pos: torch.Tensor | None = None,
               grids: list[tuple[int, int]] | None = None) -> Stage2Result:
    """Average-pool each encoder's map so that ``keep`` tokens remain in total.

    Args:
        z: (B, N, d) post-projection tokens, grouped by encoder.
        encoder_ids: (N,) encoder of each token.
        keep: tokens kept over all encoders.
        pos: (B, N) each token's raster position on its encoder's grid (None: 0..n−1 per encoder).
        grids: (h, w) of each encoder's native grid (None: square, side √n).
    """
    B, N, d = z.shape
    ids = encoder_ids.to(z.device)
    c = int(ids.max()) + 1
    members = [torch.nonzero(ids == i).flatten() for i in range(c)]
    counts = [len(m) for m in members]
    if pos is None:
        pos = torch.cat([torch.arange(n, device=z.device) for n in counts]).expand(B, N)
    vals, idx = [], []
    for i, (m, q) in enumerate(zip(members, quotas(counts, min(keep, N)))):
        if q == 0:
            continue
        if grids is not None:
            grid = tuple(grids[i])
        else:
            side = math.isqrt(counts[i])
            if side * side != counts[i]:
                raise ValueError(f"encoder {i} brings {counts[i]} tokens, not a square map: pass grids=")
            grid = (side, side)
        v, first = pool_encoder(z[:, m], pos[:, m], grid, q)  # type: ignore[arg-type]
        vals.append(v)
        idx.append(m[first])
    indices = torch.cat(idx, dim=1)
    per = torch.stack([(ids[indices] == i).sum(1) for i in range(c)], dim=1)
    return Stage2Result(indices, None, per, values=torch.cat(vals, dim=1))


register_policy("pool", stage=2, description="floor baseline: 2-D average pooling of each encoder's map to its share "
                "of the budget")(pool_prune)
