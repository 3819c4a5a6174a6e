"""Stage 1: progressive pruning inside each encoder, to the budgets of ``allocation.json``.

Scores (METHOD A5; the split between criteria is a METEOR-style default):

* first point — **mean-token similarity**: ``s_i = cos(x_i, x̄)`` over the patch tokens; the
  tokens most similar to the mean are the redundant background, so the LEAST similar are kept;
* later points — **CLS attention**: the CLS row of that block's attention (recomputed from the
  block's own q/k, never the full n×n map), highest kept — where the encoder has a CLS token;
  otherwise mean-token similarity again.

All scores in float32; ties broken by the lower index; kept indices sorted ascending (A13), so
raster order survives and every sample keeps the same count (A12: rectangular batches).

Registered Stage-1 policies: ``meteor`` (above), ``similarity`` (mean-similarity everywhere),
``random`` (seeded uniform choice), for ablations.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from meteor_cli.errors import InvalidInputError
from meteor_cli.registry import register_policy


def mean_similarity_scores(x: torch.Tensor) -> torch.Tensor:
    """Keep-scores (B, n) = −cos(x_i, mean token): higher = more distinctive = keep."""
    x = x.float()
    mean = x.mean(1, keepdim=True)
    return -torch.nn.functional.cosine_similarity(x, mean, dim=-1)


def select_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(B, n) → (B, k) indices of the k highest scores, ties to the lower index, sorted ascending."""
    order = torch.sort(scores.float(), dim=1, descending=True, stable=True).indices[:, :k]
    return torch.sort(order, dim=1).values


class Stage1:
    """The ``stage1`` hook of :class:`~meteor_cli.model.vlm.MultiEncoderVLM` for one allocation.

    Args:
        budgets: encoder name → tokens kept after each pruning point (``stage1.encoders.*.keep``).
        criterion: "meteor" (similarity, then CLS attention), "similarity", or "random".
        seed: for the random criterion.
    """

    def __init__(self, budgets: Mapping[str, list[int]], criterion: str = "meteor", seed: int = 0) -> None:
        self.budgets = {k: list(v) for k, v in budgets.items()}
        self.criterion = criterion
        self.seed = seed

    @classmethod
    def from_allocation(cls, allocation: Mapping[str, Any], encoders: Mapping[str, Any], **kw: Any) -> Stage1:
        """Budgets from an allocation body, checked against the model's encoders."""
        enc = allocation["stage1"]["encoders"]
        if sorted(enc) != sorted(encoders):
            raise InvalidInputError(f"the allocation covers encoders {sorted(enc)} but the model has {sorted(encoders)}",
                                    "run `meteor allocate` on ranks estimated with this model")
        for name, e in enc.items():
            if len(e["keep"]) != len(encoders[name].prune_points):
                raise InvalidInputError(f"allocation: encoder {name!r} has {len(e['keep'])} budgets for "
                                        f"{len(encoders[name].prune_points)} pruning points")
        return cls({n: e["keep"] for n, e in enc.items()}, **kw)

    def scores(self, j: int, state: Any, adapter: Any) -> torch.Tensor:
        if self.criterion == "random":
            g = torch.Generator().manual_seed(self.seed * 1009 + j)
            return torch.rand(state.x.shape[:2], generator=g).to(state.x.device)
        if self.criterion == "meteor" and j > 0:
            cls_attn = adapter.cls_attention(state, adapter.prune_points[j])
            if cls_attn is not None:
                return cls_attn
        return mean_similarity_scores(state.x)

    def __call__(self, name: str, j: int, state: Any, adapter: Any) -> torch.Tensor | None:
        k = self.budgets[name][j]
        if k >= state.x.shape[1]:
            return None  # budget ≥ tokens: nothing pruned, outputs identical to the unpruned run
        return select_topk(self.scores(j, state, adapter), k)


for _name, _desc in (("meteor", "mean-token similarity at the first point, CLS attention later (rank-guided budgets)"),
                     ("similarity", "mean-token similarity at every point"),
                     ("random", "seeded uniform choice (ablation)")):
    register_policy(_name, stage=1, description=_desc)(lambda budgets, _c=_name, **kw: Stage1(budgets, _c, **kw))
