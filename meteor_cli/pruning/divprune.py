"""DivPrune as a Stage-2 policy: keep the most diverse visual tokens (greedy max-min distance).

Paper: Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models"
(CVPR 2025, arXiv 2503.02175). Code read at ``vbdi/divprune@799e2d9``
(``LLaVA/llava/model/llava_arch.py``: ``DivPrune``, ``pairwise_cosine_similarity`` and its call in
``prepare_inputs_labels_for_multimodal``); learned from, never copied.

What the reference does, once, on the projected visual tokens that enter the LLM (LLaVA-1.5's 576,
or LLaVA-1.6's whole image feature including newline tokens), batch 1:

1. distances ``D = 1 − cos(z_i, z_j)`` between every pair of visual tokens;
2. the first token kept is the most isolated one: the largest distance to its nearest other token
   (the second-smallest entry of its column of D, the smallest being its own 0);
3. then, ``round(ratio·n) − 1`` times, the token farthest from the kept set — the largest
   ``min over kept k of D[k, ·]`` (a greedy solution of the Max-Min Diversity Problem); ties go to
   the lower index (``argmax``);
4. the kept tokens go into the LLM in their original order (position ids are those of the shorter
   sequence, as for every method that prunes before the LLM).

How it runs here: the same selection on Stage 2's fused post-projection tokens, **all encoders as
one set** [inferred: the reference has one encoder] — diversity across encoders is what Stage 2 is
for, so a token that repeats another encoder's is as redundant as one that repeats its own. ``keep``
is the count (from the allocation's ``stage2.keep``, or ``--visual-tokens`` in ``meteor eval
--method divprune``). On LLaVA-NeXT Stage 2 runs per anyres tile, so DivPrune does too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from meteor_cli.pruning.stage2 import Stage2Result, _counts
from meteor_cli.registry import register_policy


def divprune_select(z: torch.Tensor, k: int) -> torch.Tensor:
    """One sample: ascending indices of the ``k`` tokens of ``z`` (n, d) DivPrune keeps."""
    n = z.shape[0]
    k = max(0, min(k, n))
    if k == 0:
        return torch.zeros(0, dtype=torch.long, device=z.device)
    if n == 1:
        return torch.zeros(1, dtype=torch.long, device=z.device)
    with torch.autocast(z.device.type, enabled=False):
        u = F.normalize(z.float(), dim=-1)
        dist = 1.0 - u @ u.T  # (n, n)
    chosen = torch.empty(k, dtype=torch.long, device=z.device)
    nearest = torch.topk(dist, 2, dim=0, largest=False).values[1]  # each token's distance to its nearest other
    chosen[0] = torch.argmax(nearest)
    to_kept = dist[chosen[0]].clone()  # distance of every token to the kept set
    for i in range(1, k):
        chosen[i] = torch.argmax(to_kept)
        to_kept = torch.minimum(to_kept, dist[chosen[i]])
    return torch.sort(chosen).values


@register_policy("divprune", stage=2, description="DivPrune baseline: the most diverse tokens, greedy max-min cosine "
                 "distance over all encoders' fused tokens")
def divprune(z: torch.Tensor, encoder_ids: torch.Tensor, keep: int) -> Stage2Result:
    """Stage-2 policy: per sample, DivPrune's ``keep`` tokens among the fused tokens ``z`` (B, N, d)."""
    idx = torch.stack([divprune_select(z[b], keep) for b in range(z.shape[0])])
    return Stage2Result(idx, None, _counts(idx, encoder_ids, int(encoder_ids.max()) + 1))


__all__ = ["divprune", "divprune_select"]
