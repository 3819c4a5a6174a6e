"""SparseVLM+ as a Stage-3 policy: text raters, their top heads, gravity-corrected attention.

Paper: Zhang et al., "SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model
Inference" (ICML 2025) — METEOR's main-paper comparison, with FastV. Code read at
``Gumpest/SparseVLMs@26a5f48`` (``llava/model/language_model/modelling_sparse_llama.py`` and
``score.py``, ``USE_VERSION=2_0``, the "SparseVLM+" version); learned from, never copied. Version 2
is the one that fits METEOR's harness: no token recycling, original position ids kept. Its head
selection (the top 14 heads by rater→visual attention) is the closest public analogue of METEOR's
top-k heads by Visual Attention Value (docs/method.md §8.5).

What the reference does at prefill (batch 1, LLaVA-1.5-7B, 576 visual tokens):

1. **raters**: from the LLM's input embeddings, ``R = softmax_t(V·Tᵀ)`` averaged over the visual
   tokens V, for every text token t after the image; the raters are the text tokens whose R is
   above R's mean;
2. after decoder layers 2, 6 and 15, that layer's attention probabilities (all heads) are divided
   element-wise by a **RoPE bias** — the attention logit ``q·k/√d_h`` of all-ones q and k rotated
   at their positions ("text-visual attention gravity correction");
3. the **14 heads** with the largest summed rater→visual corrected attention are kept; a visual
   token's score is its corrected attention averaged over those heads and over the raters;
4. the top-scoring visual tokens are kept: ``[66, 34, 20]`` for the 64-token setting, ``[246, 54,
   28]`` for 96, ``[238, 108, 60]`` for 128, ``[300, 200, 118]`` for 192 (v2's ``sparse_token_list``).

How it runs here:

* **layers**: pruning happens before layers ``[3, 7, 16]`` (the reference prunes the OUTPUT of 2, 6,
  15, i.e. what enters 3, 7, 16), scored from the layer before each — recomputed from that layer's
  own ``input_layernorm``, q/k projections and rotary embedding at the tokens' ids, as every
  Stage-3 policy here, so eager, SDPA and flash attention keep the same tokens. Other depths:
  ``round(L·{3,7,16}/32)``, at least layer 1, strictly increasing;
* **heads**: 14 of 32, scaled to the LLM (``round(14·H/32)``, at least 1) unless ``heads`` is set;
* **keep**: one count (or ratio of the visual tokens entering the first pruning layer) per layer;
  default the 192-token list as ratios of 576;
* **batches**: raters, heads and counts per sample (the reference runs batch 1);
* [inferred] a sample whose text tokens all have the same R (one token, say) uses all of them as
  raters (the reference would average over none); the RoPE bias is clamped at 1e-6 before the
  division (the reference divides unguarded).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from meteor_cli.errors import UsageError
from meteor_cli.pruning.llm_policies import QUERIES, _Base, _check_heads, scheduled_count, top_indices
from meteor_cli.registry import register_policy

#: v2's ``sparse_token_list`` of SparseVLMs' score.py: kept counts after layers 2, 6, 15 of 576.
REFERENCE_COUNTS: dict[int, list[int]] = {64: [66, 34, 20], 96: [246, 54, 28], 128: [238, 108, 60], 192: [300, 200, 118]}
REFERENCE_TOKENS = 576
REFERENCE_LAYERS = (3, 7, 16)  # of 32: the layers the kept tokens enter
REFERENCE_HEADS = 14  # of 32


def sparsevlm_layers(num_layers: int) -> list[int]:
    """``round(L·{3,7,16}/32)``, at least 1, strictly increasing, below ``num_layers``."""
    out: list[int] = []
    for b in REFERENCE_LAYERS:
        x = max(1, round(num_layers * b / 32), out[-1] + 1 if out else 1)
        if x < num_layers:
            out.append(x)
    return out


def raters(hidden: torch.Tensor, visual: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: SparseVLM's text raters among ``text`` from the layer-0 ``hidden`` states."""
    out = torch.zeros_like(text)
    for b in range(hidden.shape[0]):
        v, t = hidden[b, visual[b]].float(), hidden[b, text[b]].float()
        if len(t) == 0:
            continue
        if len(v) == 0:
            out[b] = text[b]
            continue
        r = torch.softmax(v @ t.T, dim=-1).mean(0)  # (T,)
        chosen = r > r.mean()
        if not chosen.any():
            chosen = torch.ones_like(chosen)
        pos = torch.nonzero(text[b]).flatten()
        out[b, pos[chosen]] = True
    return out


def rope_bias(pos_emb: tuple[torch.Tensor, torch.Tensor], q_idx: torch.Tensor, batch: int) -> torch.Tensor:
    """(B, Q, L) the attention logit of all-ones q and k rotated at the query rows' and keys' positions."""
    from meteor_cli.pruning.llm_pruner import apply_rope

    cos, sin = (t.expand(batch, -1, -1).float() for t in pos_emb)
    B, L, dh = cos.shape
    r = apply_rope(cos.new_ones(B, 1, L, dh), cos, sin)[:, 0]  # (B, L, dh): all-ones vectors, rotated
    rq = torch.gather(r, 1, q_idx.unsqueeze(-1).expand(-1, -1, dh))
    return rq @ r.transpose(1, 2) / math.sqrt(dh)


@register_policy("sparsevlm", stage=3, description="SparseVLM+ baseline: text raters' attention over their top 14/32 "
                 "heads, RoPE-bias corrected, at layers [3,7,16]/32, kept [300,200,118] of 576")
@dataclass
class SparseVLMPolicy(_Base):
    """SparseVLM v2 (see the module docstring). ``keep``: counts, or ratios of the first layer's tokens."""

    query: str = "raters"
    keep: list[float] = field(default_factory=lambda: [c / REFERENCE_TOKENS for c in REFERENCE_COUNTS[192]])
    heads: int | None = None
    correct: bool = True

    def _default_layers(self, num_layers: int) -> list[int]:
        return sparsevlm_layers(num_layers)

    def _min_layer(self) -> int:
        return 1  # scores come from the layer before

    queries: ClassVar[tuple[str, ...]] = (*QUERIES, "raters")

    def validate(self, num_layers: int, num_heads: int) -> None:
        super().validate(num_layers, num_heads)
        if self.heads is None:
            self.heads = max(1, round(REFERENCE_HEADS * num_heads / 32))
        _check_heads(self.heads, num_heads)
        if len(self.keep) != len(self.layers or []):
            raise UsageError(f"{len(self.keep)} keep values for {len(self.layers or [])} layers ({self.layers})",
                             "give one count or ratio per pruning layer, e.g. --keep 66,34,20")
        if any(not v > 0 for v in self.keep):
            raise UsageError(f"SparseVLM keeps positive counts or ratios, got --keep {self.keep}")

    def score_layer(self, p: int) -> int:
        return p - 1

    def query_rows(self, after: torch.Tensor, valid: torch.Tensor, session: Any) -> torch.Tensor:
        if self.query != "raters":
            return super().query_rows(after, valid, session)
        hidden, visual = session.layer0_input
        return raters(hidden, visual, after)

    def count(self, p: int, n: int, session: Any, b: int) -> int:
        return scheduled_count(self.keep, self.layers, p, n, session, b)  # type: ignore[arg-type]

    # -- the state-based hooks of LLMPruner: the correction needs the positions, not only probabilities --

    def score_states(self, layer: Any, hidden: torch.Tensor, pos_emb: tuple[torch.Tensor, torch.Tensor],
                     session: Any) -> list[torch.Tensor]:
        """Per sample, (H, Q_b, N_b) rater→visual attention of ``layer``, divided by the RoPE bias."""
        from meteor_cli.pruning.llm_pruner import query_attention, query_index

        st = session.state
        q_idx, q_valid = query_index(st.query)
        with torch.no_grad():
            probs = query_attention(layer, hidden, pos_emb, q_idx, q_valid, st.valid)  # (B, H, Q, L)
            if self.correct:
                probs = probs / rope_bias(pos_emb, q_idx, hidden.shape[0]).clamp_min(1e-6).unsqueeze(1)
        vis = session.visual_indices()
        return [probs[b][:, q_valid[b]][:, :, vis[b]] for b in range(len(vis))]

    def select_states(self, p: int, scores: list[torch.Tensor], hidden: torch.Tensor, session: Any,
                      decoder: Any) -> list[torch.Tensor]:
        """Per sample, the kept indices into its visual tokens entering layer ``p``."""
        out = []
        for b, a in enumerate(scores):
            n = a.shape[-1]
            if n == 0:
                out.append(torch.zeros(0, dtype=torch.long))
                continue
            if a.shape[1] == 0:  # no text after the image: no raters, no preference (the first tokens)
                score = torch.zeros(n)
            else:
                heads = top_indices(a.sum((1, 2)), min(int(self.heads or a.shape[0]), a.shape[0]))
                score = a[heads].mean(0).mean(0)
            out.append(top_indices(score, self.count(p, n, session, b)).cpu())
        return out

    def select(self, p: int, attn: torch.Tensor, n: int, session: Any, b: int) -> torch.Tensor:
        raise RuntimeError("SparseVLM selects with its own scores (select_states); LLMPruner calls that hook")


__all__ = ["REFERENCE_COUNTS", "SparseVLMPolicy", "raters", "rope_bias", "sparsevlm_layers"]
