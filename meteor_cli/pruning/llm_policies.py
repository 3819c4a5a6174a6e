"""Stage-3 policies: which visual tokens to keep at each pruning layer of the LLM.

A policy is a small object with no model code in it; :class:`~meteor_cli.pruning.llm_pruner.LLMPruner`
calls it with the attention that the chosen query rows pay to the visual tokens::

    layers                 the 0-based layers to prune *before* (METHOD A10)
    score_layer(p)         which layer's input and weights score the prune before layer p
    query_rows(after, …)   which prompt tokens are the queries (B, L) bool
    select(p, attn, n, s, b)  sample b: attn (H, Q, n) float32 probabilities → sorted kept indices (k,)

Registered policies (``meteor list policies``):

- ``meteor`` — METEOR's instance-adaptive, text-guided pruning (METHOD A8–A9): per instance and
  layer, the top-k heads by Visual Attention Value ``VAV_h = Σ_i ā_{h,i}`` (ā = attention of the
  text after the image, averaged over those queries); token score = mean over those heads;
  keep ``K = clamp(round(c·λ·Σ_{h∈H*} VAV_h), K_min, N_p)``. The query set, the mean over
  queries and the scale ``c`` are METEOR-style defaults (the paper is silent; see docs/method.md §5.4).
- ``fixed`` — a fixed count (or ratio of the visual tokens entering the first pruning layer) per
  layer, scored with the top-k heads (Table 3's "fixed ratio, head filter").
- ``all-heads`` — ``fixed`` without head filtering (mean over all heads; Table 3's first rows).
- ``fastv`` — FastV (K, R): at layer K keep ``round(N·(1−R))`` tokens by the last prompt
  token's head-mean attention *of layer K−1*, recomputed from that layer's q/k (never by running
  it twice).
- ``pdrop`` — PyramidDrop: layers [8, 16, 24] of 32 (scaled to the depth), keep
  ``int(N0·ratio)`` for ratios [0.5, 0.25, 0.125] of the original count N0, scored by the last
  instruction token's head-mean attention at the pruning layer. Unlike PDrop's code, position
  ids are not compacted (meteor keeps original ids for every policy; docs/method.md §8.2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from meteor_cli.errors import UsageError
from meteor_cli.registry import register_policy

QUERIES = ("text", "last", "last-instruction")


def default_layers(num_layers: int, base: Sequence[int] = (4, 12, 20), of: int = 32) -> list[int]:
    """METEOR's pruning layers scaled to the depth: round(L·{4,12,20}/32) (METHOD A10)."""
    return sorted({min(num_layers - 1, max(0, round(num_layers * b / of))) for b in base})


def top_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores, ties broken by the lower index, returned ascending (A13)."""
    order = torch.sort(scores.float(), descending=True, stable=True).indices[:k]
    return torch.sort(order).values


def last_query(after: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, L) bool marking each sample's last prompt token (the last ``after`` token, else the last valid)."""
    src = torch.where(after.any(1, keepdim=True), after, valid)
    L = src.shape[1]
    last = L - 1 - torch.argmax(src.flip(1).to(torch.int8), dim=1)
    out = torch.zeros_like(src)
    out[torch.arange(src.shape[0]), last] = True
    return out & src


@dataclass
class _Base:
    layers: list[int] | None = None
    query: str = "text"
    #: The query kinds this policy takes (a class attribute, not a field).
    queries: ClassVar[tuple[str, ...]] = QUERIES

    def validate(self, num_layers: int, num_heads: int) -> None:
        if self.layers is None:
            self.layers = self._default_layers(num_layers)
        self.layers = [int(x) for x in self.layers]
        if not self.layers:
            raise UsageError("--layers is empty", "give at least one layer, e.g. --layers 4,12,20")
        if any(b <= a for a, b in zip(self.layers, self.layers[1:])):
            raise UsageError(f"--layers {self.layers} must be strictly increasing", "e.g. --layers 4,12,20")
        if self.layers[0] < self._min_layer() or self.layers[-1] >= num_layers:
            raise UsageError(f"--layers {self.layers} must lie in {self._min_layer()}..{num_layers - 1} "
                             f"(the LLM has {num_layers} layers)", f"default for this depth: {default_layers(num_layers)}")
        if self.query not in self.queries:
            raise UsageError(f"unknown query {self.query!r}", f"choose from {', '.join(self.queries)}")

    def _default_layers(self, num_layers: int) -> list[int]:
        return default_layers(num_layers)

    def _min_layer(self) -> int:
        return 0

    def score_layer(self, p: int) -> int:
        return p

    def query_rows(self, after: torch.Tensor, valid: torch.Tensor, session: Any) -> torch.Tensor:
        return after if self.query == "text" else last_query(after, valid)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def scheduled_count(keep: Sequence[float], layers: Sequence[int], p: int, n: int, session: Any, b: int) -> int:
    """Visual tokens sample ``b`` keeps at pruning layer ``p`` of a ``keep`` schedule: a count, or a
    ratio (float ≤ 1) of the visual tokens entering the first pruning layer; at least 1, at most ``n``."""
    v = keep[list(layers).index(p)]
    if isinstance(v, float) and v <= 1:
        v = int(round(v * session.entering[layers[0]][b]))
    return max(1, min(n, int(v))) if n else 0


def _check_heads(heads: int | None, num_heads: int) -> None:
    """Top-k heads must be a count the LLM has (the default 5 is for 7B-scale models with 32 heads)."""
    if heads is not None and not 1 <= heads <= num_heads:
        raise UsageError(f"--heads {heads} must be in 1..{num_heads} (the LLM has {num_heads} heads)",
                         f"give --heads {min(5, num_heads)} or fewer on this model")


def _head_scores(attn: torch.Tensor, heads: int | None, agg: str) -> tuple[torch.Tensor, torch.Tensor]:
    """attn (H, Q, N) → (ā (H, N) aggregated over queries, indices of the chosen heads)."""
    a = attn.float().mean(1) if agg == "mean" else attn.float().sum(1)  # (H, N)
    vav = a.sum(-1)  # (H,) Visual Attention Value per head
    H = a.shape[0]
    chosen = torch.arange(H) if heads is None or heads >= H else top_indices(vav, heads)
    return a, chosen


@register_policy("meteor", stage=3, description="METEOR: top-k heads by Visual Attention Value, K = c·λ·ΣVAV per instance")
@dataclass
class MeteorPolicy(_Base):
    heads: int | None = 5
    lam: float = 50.0
    scale: float = 1.0
    k_min: int = 1
    agg: str = "mean"

    def validate(self, num_layers: int, num_heads: int) -> None:
        super().validate(num_layers, num_heads)
        _check_heads(self.heads, num_heads)
        if self.lam <= 0:
            raise UsageError(f"--lambda {self.lam} must be positive", "the paper uses 25, 50 or 65")
        if self.scale <= 0 or self.k_min < 1:
            raise UsageError("scale must be positive and k_min at least 1")
        if self.agg not in ("mean", "sum"):
            raise UsageError(f"unknown agg {self.agg!r}", "choose mean or sum")

    def keep_count(self, vav_selected: torch.Tensor, n: int) -> int:
        """K = clamp(round(c·λ·Σ VAV over the chosen heads), K_min, N_p)."""
        k = round(float(self.scale * self.lam * vav_selected.sum()))
        return max(min(self.k_min, n), min(n, k))

    def select(self, p: int, attn: torch.Tensor, n: int, session: Any, b: int) -> torch.Tensor:
        if n == 0:
            return torch.zeros(0, dtype=torch.long)
        a, heads = _head_scores(attn, self.heads, self.agg)
        k = self.keep_count(a[heads].sum(-1), n)
        return top_indices(a[heads].mean(0), k)


@register_policy("fixed", stage=3, description="fixed count or ratio per layer, top-k heads (Table 3 'fixed ratio')")
@dataclass
class FixedPolicy(_Base):
    #: Per pruning layer: an absolute count (int ≥ 1) or a ratio of the visual tokens entering the
    #: first pruning layer (0 < float ≤ 1). Default: Table 3's [390, 172, 78] of 576.
    keep: list[float] = field(default_factory=lambda: [390 / 576, 172 / 576, 78 / 576])
    heads: int | None = 5
    agg: str = "mean"

    def validate(self, num_layers: int, num_heads: int) -> None:
        super().validate(num_layers, num_heads)
        _check_heads(self.heads, num_heads)
        if len(self.keep) != len(self.layers or []):
            raise UsageError(f"{len(self.keep)} keep values for {len(self.layers or [])} layers",
                             "give one count or ratio per pruning layer")

    def count(self, p: int, n: int, session: Any, b: int) -> int:
        return scheduled_count(self.keep, self.layers, p, n, session, b)  # type: ignore[arg-type]

    def select(self, p: int, attn: torch.Tensor, n: int, session: Any, b: int) -> torch.Tensor:
        if n == 0:
            return torch.zeros(0, dtype=torch.long)
        a, heads = _head_scores(attn, self.heads, self.agg)
        return top_indices(a[heads].mean(0), self.count(p, n, session, b))


@register_policy("all-heads", stage=3, description="fixed count or ratio per layer, mean over all heads (no head filter)")
@dataclass
class AllHeadsPolicy(FixedPolicy):
    heads: int | None = None


@register_policy("fastv", stage=3, description="FastV (K, R): last-token attention of layer K-1, drop ratio R at layer K")
@dataclass
class FastVPolicy(_Base):
    k: int = 2
    r: float = 0.5
    query: str = "last"

    def validate(self, num_layers: int, num_heads: int) -> None:
        if self.layers is None:
            self.layers = [self.k]
        super().validate(num_layers, num_heads)
        if len(self.layers) != 1 or not 0 <= self.r < 1:
            raise UsageError("FastV prunes once: one layer K >= 1 and a drop ratio 0 <= R < 1")

    def _min_layer(self) -> int:
        return 1  # scores come from layer K-1

    def score_layer(self, p: int) -> int:
        return p - 1

    def select(self, p: int, attn: torch.Tensor, n: int, session: Any, b: int) -> torch.Tensor:
        if n == 0:
            return torch.zeros(0, dtype=torch.long)
        s = attn.float().mean(1).mean(0)  # (N,): mean over the (single) query and the heads
        return top_indices(s, max(1, round(n * (1 - self.r))))


@register_policy("pdrop", stage=3, description="PyramidDrop: layers [8,16,24]/32, keep [0.5,0.25,0.125] of N0, last-instruction query")
@dataclass
class PDropPolicy(_Base):
    ratios: list[float] = field(default_factory=lambda: [0.5, 0.25, 0.125])
    query: str = "last-instruction"

    def _default_layers(self, num_layers: int) -> list[int]:
        return default_layers(num_layers, base=(8, 16, 24))

    def validate(self, num_layers: int, num_heads: int) -> None:
        super().validate(num_layers, num_heads)
        if len(self.ratios) != len(self.layers or []):
            raise UsageError(f"{len(self.ratios)} ratios for {len(self.layers or [])} layers", "one ratio per layer")

    def select(self, p: int, attn: torch.Tensor, n: int, session: Any, b: int) -> torch.Tensor:
        if n == 0:
            return torch.zeros(0, dtype=torch.long)
        n0 = session.entering[self.layers[0]][b]  # type: ignore[index]
        k = max(1, min(n, int(n0 * self.ratios[self.layers.index(p)])))  # type: ignore[union-attr]
        return top_indices(attn.float().mean(1).mean(0), k)


POLICY_FIELDS = {"meteor": MeteorPolicy, "fixed": FixedPolicy, "all-heads": AllHeadsPolicy,
                 "fastv": FastVPolicy, "pdrop": PDropPolicy}


def make_policy(method: str, **settings: Any) -> Any:
    """Build a Stage-3 policy by registered name, ignoring settings it does not take."""
    from dataclasses import fields

    from meteor_cli.registry import POLICIES, load_builtins_and_plugins

    load_builtins_and_plugins()  # policies of other modules (dart, sparsevlm) and plugins register on import
    cls = POLICIES.get(method, stage=3)
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in settings.items() if k in names and v is not None})


__all__ = ["AllHeadsPolicy", "FastVPolicy", "FixedPolicy", "MeteorPolicy", "PDropPolicy", "default_layers",
           "last_query", "make_policy", "scheduled_count", "top_indices"]
