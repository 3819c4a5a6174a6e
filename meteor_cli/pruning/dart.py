"""DART as a Stage-3 policy: keep the visual tokens least duplicated with a few pivot tokens.

Paper: Wen et al., "Stop Looking for Important Tokens in Multimodal Language Models: Duplication
Matters More", arXiv 2502.11494 (EMNLP 2025). Public code: ``ZichenWen1/DART`` — only its README
could be read from this workplace (commit ``0c888673198b0f2784053a5686f95a519ceef209``: defaults
``pruned_layer=2``, ``pivot_image_token=4``, ``pivot_text_token=4``, ``max_num_trunction=128``,
reduction ratio 0.778 on LLaVA-1.5's 576 tokens); the selection itself (``get_retained_image_token``
and the ``DART_K_norm`` decoder of its LLaVA code) was read in a public copy of that file found
with the code search, not at a commit of the official repository. Learned from, never copied.

What the reference does, before LLM layer K (default 2), once, at prefill:

1. **pivots**: the L1 norm of each token's key states of layer K−1 (all heads concatenated); the
   ``pivot_image_token`` visual tokens and the ``pivot_text_token`` text tokens after the image
   with the largest norms are the pivots;
2. **duplication**: the hidden states entering layer K, passed through the model's final norm,
   are compared by cosine; for each pivot in turn, the ``TOKEN_TOPK = budget // (pivots)`` not yet
   chosen visual tokens LEAST similar to it are kept (and leave the candidate pool);
3. kept visual tokens = the visual pivots + every pivot's picks; text pivots are never dropped
   (text is never pruned).

How it runs here (restated in ``docs/baselines.md``):

* **budget**: ``keep`` — a count, or a ratio of the visual tokens entering layer K (default
  128/576, the paper's 77.8 % reduction) — is met EXACTLY per sample (ragged batches are
  Stage 3's normal case): the visual pivots count towards it (at most ``keep`` of them) and the
  rest is split over all pivots, ``rest // P`` each and one more for the first ``rest % P``
  (the reference's integer division can keep a few tokens more or fewer than asked);
* **pivot order** (a Python set in the reference, i.e. arbitrary): visual pivots by descending
  norm, then text pivots by descending norm; ties everywhere to the lower index;
* **keys**: recomputed from layer K−1's own ``input_layernorm``, ``k_proj`` and rotary embedding
  at the tokens' position ids (``pivot_by="key"``; ``"value"`` uses ``v_proj``, no rotary), so
  nothing depends on the attention kernel: eager, SDPA and flash attention keep the same tokens;
* **text tokens** for the text pivots: the prompt after the image (``query="text"``); a sample
  without such text uses visual pivots only;
* several encoders: the visual tokens are all encoders' tokens after Stage 2, treated as one set
  (DART is encoder-agnostic inside the LLM).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from meteor_cli.errors import UsageError
from meteor_cli.pruning.llm_policies import _Base
from meteor_cli.registry import register_policy


def dart_select(hidden: torch.Tensor, norms: torch.Tensor, visual: torch.Tensor, text: torch.Tensor, k: int,
                pivot_image: int = 4, pivot_text: int = 4) -> torch.Tensor:
    """One sample: indices (ascending, into ``visual``) of the ``k`` visual tokens DART keeps.

    Args:
        hidden: (L, d) normalised hidden states entering the pruning layer.
        norms: (L,) pivot scores (key L1 norms of the previous layer).
        visual: (n,) positions of the visual tokens; text: (t,) positions of the text tokens.
        k: visual tokens to keep (1 ≤ k ≤ n).
    """
    n = len(visual)
    k = max(0, min(k, n))
    if k == 0:
        return torch.zeros(0, dtype=torch.long)
    h = torch.nn.functional.normalize(hidden.float(), dim=-1)
    vis_norm = norms[visual].float()
    img_piv = torch.sort(vis_norm, descending=True, stable=True).indices[: min(pivot_image, k)]  # local, by norm
    txt_piv = text[torch.sort(norms[text].float(), descending=True, stable=True).indices[:pivot_text]] \
        if len(text) else text[:0]
    pivots = [h[visual[i]] for i in img_piv] + [h[t] for t in txt_piv]
    chosen = torch.zeros(n, dtype=torch.bool, device=hidden.device)
    chosen[img_piv] = True
    rest = k - len(img_piv)
    P = len(pivots)
    hv = h[visual]  # (n, d)
    for i, piv in enumerate(pivots):
        q = rest // P + (1 if i < rest % P else 0)
        if q == 0:
            continue
        sim = hv @ piv  # (n,)
        sim = sim.masked_fill(chosen, float("inf"))  # never pick a chosen token twice
        pick = torch.sort(sim, stable=True).indices[:q]  # least similar first, ties to the lower index
        chosen[pick] = True
    return torch.nonzero(chosen).flatten().cpu()


@register_policy("dart", stage=3, description="DART baseline: keep the visual tokens least similar to key-norm pivot "
                 "tokens at layer K (default 2)")
@dataclass
class DartPolicy(_Base):
    """DART: one pruning layer K; ``keep`` = [count or ratio]; pivots by key (or value) L1 norm of layer K−1."""

    keep: list[float] = field(default_factory=lambda: [128 / 576])
    pivot_image: int = 4
    pivot_text: int = 4
    pivot_by: str = "key"

    def _default_layers(self, num_layers: int) -> list[int]:
        return [min(2, num_layers - 1)]

    def _min_layer(self) -> int:
        return 1  # pivots come from the keys of layer K−1

    def validate(self, num_layers: int, num_heads: int) -> None:
        super().validate(num_layers, num_heads)
        if len(self.layers or []) != 1:
            raise UsageError(f"DART prunes once: one layer K, got --layers {self.layers}", "e.g. --layers 2")
        if len(self.keep) != 1 or not self.keep[0] > 0:
            raise UsageError(f"DART keeps one positive count or ratio, got --keep {self.keep}", "e.g. --keep 0.222 or --keep 24")
        if self.pivot_image < 1 or self.pivot_text < 0:
            raise UsageError(f"DART needs pivot_image >= 1 and pivot_text >= 0 (got {self.pivot_image}, {self.pivot_text})",
                             "the paper uses 4 and 4")
        if self.pivot_by not in ("key", "value"):
            raise UsageError(f"unknown pivot_by {self.pivot_by!r}", "choose key or value")

    def score_layer(self, p: int) -> int:
        return p - 1

    def count(self, n: int) -> int:
        v = self.keep[0]
        k = round(v * n) if isinstance(v, float) and v <= 1 else int(v)
        return max(1, min(n, k)) if n else 0

    # -- the state-based hooks of LLMPruner (no attention probabilities needed) -----------------

    def score_states(self, layer: Any, hidden: torch.Tensor, pos_emb: tuple[torch.Tensor, torch.Tensor],
                     session: Any) -> torch.Tensor:
        """(B, L) L1 norms of layer ``layer``'s keys (post-rotary) or values, heads concatenated."""
        from meteor_cli.pruning.llm_pruner import apply_rope

        attn = layer.self_attn
        B, L, _ = hidden.shape
        dh = attn.head_dim
        with torch.no_grad():
            h = layer.input_layernorm(hidden)
            if self.pivot_by == "value":
                states = attn.v_proj(h).float()
            else:
                cos, sin = (t.expand(B, -1, -1) for t in pos_emb)
                k = attn.k_proj(h).view(B, L, -1, dh).transpose(1, 2)
                states = apply_rope(k.float(), cos.float(), sin.float())
                states = states.transpose(1, 2).reshape(B, L, -1)
        return states.abs().sum(-1)

    def select_states(self, p: int, norms: torch.Tensor, hidden: torch.Tensor, session: Any,
                      decoder: Any) -> list[torch.Tensor]:
        """Per sample, the kept indices into its visual tokens entering layer ``p``."""
        st = session.state
        with torch.no_grad():
            normed = decoder.norm(hidden) if hasattr(decoder, "norm") else hidden
        out = []
        for b in range(hidden.shape[0]):
            vis = torch.nonzero(st.visual[b]).flatten()
            txt = torch.nonzero(st.query[b]).flatten()
            out.append(dart_select(normed[b], norms[b], vis, txt, self.count(len(vis)), self.pivot_image, self.pivot_text))
        return out

    def select(self, p: int, attn: torch.Tensor, n: int, session: Any, b: int) -> torch.Tensor:
        raise RuntimeError("DART selects from hidden states (select_states); LLMPruner calls that hook")


__all__ = ["DartPolicy", "dart_select"]
