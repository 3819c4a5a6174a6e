"""VisionZip as a Stage-1 policy: dominant tokens by CLS attention + contextual tokens merged by similarity.

Paper: Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models",
CVPR 2025, arXiv 2412.04467. Code read (never copied): ``dvlab-research/VisionZip`` at commit
``3151f6df4fca36a4cd1c985e5956e725b1f9ad02`` (``visionzip/clip_encoder.py``, ``visionzip/main.py``,
``visionzip/utils.py``).

What the reference does, on LLaVA's single CLIP tower, once, on the features LLaVA feeds the LLM
(the output of the penultimate layer, scored with that layer's attention):

1. **dominant** tokens: the patch tokens receiving the most CLS attention (attention row of the
   CLS token summed over heads), ``dominant − 1`` of them plus the CLS token itself
   (``visionzip(model, dominant=54, contextual=10)``: 53 patches + CLS + 10 contextual = 64);
2. **contextual** tokens: among the remaining tokens, ``contextual`` targets at uniformly spaced
   positions (``step = max(1, R // contextual)``, ``arange(0, R, step)[:contextual]``); every other
   remaining token joins its most similar target (cosine of the head-mean keys, argmax, first on
   ties) and each contextual token is ``x_target + mean(x of the tokens that joined it)``.

How it runs here (every choice below is restated in ``docs/baselines.md``):

* **where**: at each encoder's LAST Stage-1 pruning point only (earlier points prune nothing);
  for one-tower models that is the single tower, for multi-encoder models each tower separately;
* **counts**: meteor's budgets count patch tokens only (the CLS token is never a visual token
  here), so ``dominant`` counts patch tokens. By default each encoder keeps exactly the
  allocation's final budget ``k`` for it, split in VisionZip's default proportion 54 : 10
  (``contextual = round(k·10/64)``, ``dominant = k − contextual``), so every method compared
  at an allocation keeps the same number of tokens. ``dominant=D, contextual=C`` (both) replace
  that budget with D + C per encoder, like the reference API; one of them alone takes the rest
  of the allocation's budget. An encoder with no more than D + C tokens is not pruned;
* **attention**: the CLS row of the pruning point's block as the adapter recomputes it
  (``cls_attention``: head mean, the same ranking as the head sum); towers without a CLS token
  (ConvNeXt, SigLIP, EVA-02-det, Pix2Struct) or without attention (ConvNeXt) use
  :func:`~meteor_cli.pruning.stage1.attention_surrogate` (mean-token dissimilarity), the
  stand-in meteor's PruMerge+ baseline uses too;
* **similarity**: the cosine of the tokens themselves (adapters expose no key projection for
  patch tokens), in float32;
* tokens keep raster order (kept indices ascending); a contextual token takes its target's grid
  position.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from meteor_cli.errors import UsageError
from meteor_cli.pruning.stage1 import Stage1, attention_surrogate, select_topk
from meteor_cli.registry import register_policy

#: VisionZip's own example split (``visionzip(model, dominant=54, contextual=10)``).
DEFAULT_DOMINANT, DEFAULT_CONTEXTUAL = 54, 10


def split_budget(k: int, dominant: int | None = None, contextual: int | None = None) -> tuple[int, int]:
    """(dominant, contextual) for a budget of ``k`` tokens (see the module docstring)."""
    if dominant is not None and contextual is not None:
        return dominant, contextual
    if dominant is not None:
        return min(dominant, k), max(0, k - dominant)
    if contextual is not None:
        return max(0, k - contextual), min(contextual, k)
    c = round(k * DEFAULT_CONTEXTUAL / (DEFAULT_DOMINANT + DEFAULT_CONTEXTUAL))
    return k - c, c


def visionzip_select(x: torch.Tensor, attn: torch.Tensor, dominant: int, contextual: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept indices (B, d + c) ascending and their values (B, d + c, D) for tokens ``x`` (B, n, D).

    ``attn`` (B, n): the attention each token receives (higher = dominant). Needs d + c ≤ n.
    """
    B, n, D = x.shape
    if dominant + contextual > n or dominant < 0 or contextual < 0:
        raise ValueError(f"cannot keep {dominant} dominant + {contextual} contextual of {n} tokens")
    dom = select_topk(attn, dominant)  # (B, d) ascending, ties to the lower index
    ar = torch.arange(n, device=x.device).expand(B, n)
    is_dom = torch.zeros(B, n, dtype=torch.bool, device=x.device)
    is_dom.scatter_(1, dom, True)
    rest = torch.sort(torch.where(is_dom, ar + n, ar), dim=1).values[:, : n - dominant]  # (B, R) ascending
    R = n - dominant
    if contextual == 0 or R == 0:
        keep = dom
        return keep, torch.gather(x, 1, keep.unsqueeze(-1).expand(-1, -1, D))
    step = max(1, R // contextual)
    tpos = torch.arange(0, R, step, device=x.device)[:contextual]  # uniformly spaced, as the reference
    others = torch.ones(R, dtype=torch.bool, device=x.device)
    others[tpos] = False
    targets, members = rest[:, tpos], rest[:, others]  # (B, c), (B, R − c)
    with torch.autocast(x.device.type, enabled=False):
        xf = x.float()
        gx = lambda idx: torch.gather(xf, 1, idx.unsqueeze(-1).expand(-1, -1, D))  # noqa: E731
        tx, mx = gx(targets), gx(members)
        sim = torch.nn.functional.normalize(mx, dim=-1) @ torch.nn.functional.normalize(tx, dim=-1).transpose(1, 2)
        owner = torch.argmax(sim, dim=2)  # (B, R − c): most similar target, the first on ties
        agg = torch.zeros_like(tx).scatter_add_(1, owner.unsqueeze(-1).expand(-1, -1, D), mx)
        counts = torch.zeros(B, contextual, device=x.device).scatter_add_(1, owner, torch.ones_like(owner, dtype=torch.float32))
        ctx = tx + agg / counts.clamp_min(1).unsqueeze(-1)  # x_target + mean of its members
    full = x.clone()
    full.scatter_(1, targets.unsqueeze(-1).expand(-1, -1, D), ctx.to(x.dtype))
    keep = torch.sort(torch.cat([dom, targets], dim=1), dim=1).values
    return keep, torch.gather(full, 1, keep.unsqueeze(-1).expand(-1, -1, D))


class VisionZip(Stage1):
    """VisionZip (dominant + contextual tokens) at each encoder's last Stage-1 pruning point.

    Args:
        budgets: encoder name → tokens kept after each pruning point (only the last is used).
        seed: unused (deterministic); accepted like every Stage-1 factory.
        dominant: dominant (patch) tokens per encoder; None = the allocation's split (54 : 10).
        contextual: contextual (merged) tokens per encoder; None = likewise.
    """

    def __init__(self, budgets: Mapping[str, list[int]], *, seed: int = 0, dominant: int | None = None,
                 contextual: int | None = None) -> None:
        for name, v in (("dominant", dominant), ("contextual", contextual)):
            if v is not None and v < 0:
                raise UsageError(f"visionzip: {name}={v} must be ≥ 0", f"e.g. --stage1-option {name}=10")
        if dominant == 0 and contextual == 0:
            raise UsageError("visionzip: dominant=0 and contextual=0 keep no token", "keep at least one")
        super().__init__(budgets, "visionzip", seed)
        self.dominant, self.contextual = dominant, contextual

    def counts(self, name: str) -> tuple[int, int]:
        """(dominant, contextual) kept for encoder ``name``."""
        return split_budget(self.budgets[name][-1], self.dominant, self.contextual)

    def __call__(self, name: str, j: int, state: Any, adapter: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
        if j != len(self.budgets[name]) - 1:
            return None  # VisionZip prunes once, at the last point
        d, c = self.counts(name)
        n = state.x.shape[1]
        if d + c >= n:
            return None
        cls_attn = adapter.cls_attention(state, adapter.prune_points[j])
        attn = cls_attn.float() if cls_attn is not None else attention_surrogate(state.x)
        return visionzip_select(state.x, attn, d, c)


register_policy("visionzip", stage=1, description="VisionZip baseline: dominant tokens by CLS attention + contextual "
                "tokens merged by similarity, at each encoder's last point")(VisionZip)
