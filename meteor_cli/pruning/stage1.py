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
``random`` (seeded uniform choice), for ablations, ``prumerge+`` (:class:`PruMergePlus`, the
PruMerge+ baseline: IQR outliers + spatial samples, pruned tokens merged into kept ones) and
``visionzip`` (:mod:`meteor_cli.pruning.visionzip`).

Policy options (``merge=mean``, ``dominant=54``) are the factory's keyword parameters
(:func:`policy_options`): ``meteor allocate --stage1-option NAME=VALUE`` records them in the
allocation (``stage1.options``); ``eval``, ``infer`` and ``train`` take the same option.

A Stage-1 policy is registered as a factory ``factory(budgets, *, seed) -> hook`` where
``budgets`` maps encoder name → tokens kept per pruning point; :func:`build_stage1` picks one by
name for an allocation. The hook returns kept indices ``(B, k)``, or ``(indices, x)`` where ``x``
(B, k, D) are new values of the kept tokens (merging policies), or None to prune nothing.
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


def allocation_budgets(allocation: Mapping[str, Any], encoders: Mapping[str, Any]) -> dict[str, list[int]]:
    """encoder name → Stage-1 budgets of an allocation body, checked against the model's encoders."""
    from meteor_cli.pruning.allocation import check_allocation_fits

    check_allocation_fits(allocation, encoders)
    enc = allocation["stage1"]["encoders"]
    return {n: list(e["keep"]) for n, e in enc.items()}


def resolve_stage1_method(allocation: Mapping[str, Any] | None, method: str | None = None) -> str:
    """The Stage-1 policy to run: ``method`` if given, else the allocation's ``stage1.method``
    (or its older ``criterion``), else ``meteor`` — checked against the registry (plugins included): a :class:`UsageError`
    with suggestions for an unknown name."""
    from meteor_cli.registry import POLICIES, load_builtins_and_plugins

    s1 = (allocation or {}).get("stage1", {})
    name = method or s1.get("method") or s1.get("criterion") or "meteor"
    load_builtins_and_plugins()
    POLICIES.entry(name, stage=1)
    return name


def _option_value(text: Any) -> Any:
    """``"54"`` → 54, ``"0.5"`` → 0.5, ``"none"`` → None, ``"true"``/``"false"`` → bool, anything else unchanged."""
    if not isinstance(text, str):
        return text
    if text.lower() in ("none", "null"):
        return None
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def policy_options(method: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Options for the Stage-1 policy ``method``, checked against what its registered factory takes.

    The accepted names are the factory's keyword parameters (``budgets`` and ``seed`` aside), so a
    policy — built-in or from a plugin — declares its options just by its signature. String values
    (from ``--stage1-option NAME=VALUE``) become int, float or None where they parse as such.

    Raises:
        UsageError: a name the policy does not take (the message lists the ones it does).
    """
    import inspect

    from meteor_cli.errors import UsageError
    from meteor_cli.registry import POLICIES

    if not options:
        return {}
    factory = POLICIES.get(method, stage=1)
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
        params = []
    accepted = sorted(p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
                      and p.name not in ("budgets", "seed", "self"))
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise UsageError(f"Stage-1 policy {method!r} takes no option {', '.join(map(repr, unknown))}",
                         f"its options: {', '.join(accepted) or 'none'}")
    return {k: _option_value(v) for k, v in options.items()}


def build_stage1(allocation: Mapping[str, Any], encoders: Mapping[str, Any], method: str | None = None,
                 *, seed: int = 0, options: Mapping[str, Any] | None = None) -> Any:
    """The Stage-1 hook for ``allocation``'s budgets, from the registered policy :func:`resolve_stage1_method` picks.

    Options: the allocation's ``stage1.options`` when the policy run is the allocation's own, then
    ``options`` (``--stage1-option``) over them, checked by :func:`policy_options`.
    """
    from meteor_cli.registry import POLICIES

    name = resolve_stage1_method(allocation, method)
    s1 = allocation.get("stage1", {})
    merged = dict(s1.get("options") or {}) if name == (s1.get("method") or s1.get("criterion") or "meteor") else {}
    merged.update(options or {})
    factory = POLICIES.get(name, stage=1)
    return factory(allocation_budgets(allocation, encoders), seed=seed, **policy_options(name, merged))


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
        return cls(allocation_budgets(allocation, encoders), **kw)

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


def attention_surrogate(x: torch.Tensor) -> torch.Tensor:
    """(B, n) stand-in for a CLS attention row where the encoder has no CLS token:
    ``(1 − cos(x_i, x̄)) / Σ_t (1 − cos(x_t, x̄))`` — mean-token dissimilarity, non-negative and
    summing to 1 like an attention row (uniform when every token equals the mean)."""
    d = (1.0 + mean_similarity_scores(x)).clamp_min(0.0)  # 1 − cos ∈ [0, 2]
    total = d.sum(1, keepdim=True)
    return torch.where(total > 0, d / total.clamp_min(torch.finfo(d.dtype).tiny), 1.0 / d.shape[1])


def prumerge_plus_select(attn: torch.Tensor, k: int) -> torch.Tensor:
    """PruMerge+'s token choice at a fixed budget: (B, n) attention → (B, k) sorted indices.

    Per sample: the IQR outliers ``a_i > Q3 + 1.5·IQR`` (quartiles linearly interpolated, as
    ``np.percentile``) are the PruMerge tokens; PruMerge+ adds the spatially uniform indices
    ``arange(0, n − 1, step)``, ``step = max(1, ⌊⌊n/c⌋/3⌋)`` for c outliers (c counted as ≥ 1),
    as the reference code does. The budget k is then met exactly: outliers first, then the
    uniform samples, then the remaining tokens — by attention within each group (highest first,
    ties to the lower index). Outliers beyond k are the lowest-attention ones dropped.
    """
    a = attn.float()
    B, n = a.shape
    q1, q3 = torch.quantile(a, torch.tensor([0.25, 0.75], device=a.device), dim=1)  # per sample (A12)
    outlier = a > (q3 + 1.5 * (q3 - q1)).unsqueeze(1)
    c = outlier.sum(1).clamp_min(1)
    step = ((n // c) // 3).clamp_min(1)
    i = torch.arange(n, device=a.device)
    uniform = (i.unsqueeze(0) % step.unsqueeze(1) == 0) & (i < n - 1).unsqueeze(0)
    tier = torch.where(outlier, 0, torch.where(uniform, 1, 2))
    order = torch.sort(a, dim=1, descending=True, stable=True).indices  # by attention, ties to the lower index
    order = torch.gather(order, 1, torch.sort(torch.gather(tier, 1, order), dim=1, stable=True).indices)
    return torch.sort(order[:, :k], dim=1).values


def prumerge_merge(x: torch.Tensor, attn: torch.Tensor, keep: torch.Tensor, *, mode: str = "prumerge",
                   neighbours: int = 32) -> torch.Tensor:
    """New values (B, k, D) of the kept tokens ``keep`` (B, k) of ``x`` (B, n, D), attention ``attn`` (B, n).

    Similarity is the cosine of the tokens themselves, weights are the attentions (treated as
    constants, as the selection is); all in float32, autocast off, cast back to ``x.dtype``.

    * ``prumerge`` (the reference code, METHOD §8.3): ``x_i ← x_i + Σ_j a_j x_j`` over the
      ``neighbours`` tokens most similar to ``x_i`` among all others, kept or pruned (raw
      weights, not renormalised; ties to the lower index);
    * ``mean``: every pruned token joins its most similar kept token (ties to the lower index)
      and ``x_i ← (a_i x_i + Σ_{j→i} a_j x_j) / (a_i + Σ_{j→i} a_j)`` — attention-weighted average.
    """
    if mode not in ("prumerge", "mean"):
        raise ValueError(f"merge mode must be 'prumerge' or 'mean', got {mode!r}")
    B, n, D = x.shape
    k = keep.shape[1]
    with torch.autocast(x.device.type, enabled=False):
        xf = x.float()
        a = attn.float().detach()
        kept_x = torch.gather(xf, 1, keep.unsqueeze(-1).expand(-1, -1, D))
        xn = torch.nn.functional.normalize(xf, dim=-1)
        sim = torch.gather(xn, 1, keep.unsqueeze(-1).expand(-1, -1, D)) @ xn.transpose(1, 2)  # (B, k, n)
        w = torch.zeros(B, k, n, device=x.device)  # w[b, i, j]: weight of token j in kept token i
        if mode == "prumerge":
            sim.scatter_(2, keep.unsqueeze(-1), float("-inf"))  # never its own neighbour
            m = min(neighbours, n - 1)
            nb = torch.sort(sim, dim=2, descending=True, stable=True).indices[:, :, :m]
            w.scatter_(2, nb, torch.gather(a, 1, nb.flatten(1)).view(B, k, m))
            return (kept_x + w @ xf).to(x.dtype)
        owner = torch.argmax(sim, dim=1)  # (B, n): the most similar kept token (the first on ties)
        owner.scatter_(1, keep, torch.arange(k, device=x.device).expand(B, k))  # a kept token owns itself
        w.scatter_(1, owner.unsqueeze(1), a.unsqueeze(1))
        total = w.sum(-1, keepdim=True)
        merged = (w @ xf) / total.clamp_min(torch.finfo(torch.float32).tiny)
        return torch.where(total > 0, merged, kept_x).to(x.dtype)


class PruMergePlus(Stage1):
    """PruMerge+ (Shang et al.; LLaVA-PruMerge code) as a Stage-1 baseline at METEOR's budgets.

    At every pruning point: attention = the CLS row of that block (``cls_attention``, head mean)
    or, where there is no CLS row (encoders without a CLS token such as ConvNeXt, or a point
    that follows another at the same block), :func:`attention_surrogate`; tokens chosen by
    :func:`prumerge_plus_select` (IQR outliers, spatial samples, then attention, to exactly the
    budget so batches stay rectangular); the kept tokens' values updated by
    :func:`prumerge_merge`, returned with the indices. Departures from the reference code,
    which prunes once, after the last layer, with an adaptive count: budgets come from the
    allocation; quartiles are per sample (the code shares them over the batch); similarity is
    measured on the tokens (adapters expose no key projection for patch tokens); the extra
    token holding ``Σ_{pruned} a_j x_j`` is not appended (it has no grid position).

    Args:
        budgets: encoder name → tokens kept after each pruning point.
        seed: unused (the policy is deterministic); accepted like every Stage-1 factory.
        merge: "prumerge" (the reference rule) or "mean" (attention-weighted average).
        neighbours: how many nearest tokens the "prumerge" rule adds (32 in the code, for 576 tokens).
    """

    def __init__(self, budgets: Mapping[str, list[int]], *, seed: int = 0, merge: str = "prumerge",
                 neighbours: int = 32) -> None:
        if merge not in ("prumerge", "mean"):
            raise ValueError(f"merge mode must be 'prumerge' or 'mean', got {merge!r}")
        super().__init__(budgets, "prumerge+", seed)
        self.merge, self.neighbours = merge, neighbours

    def scores(self, j: int, state: Any, adapter: Any) -> torch.Tensor:
        cls_attn = adapter.cls_attention(state, adapter.prune_points[j])
        return cls_attn.float() if cls_attn is not None else attention_surrogate(state.x)

    def __call__(self, name: str, j: int, state: Any, adapter: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
        k = self.budgets[name][j]
        if k >= state.x.shape[1]:
            return None
        attn = self.scores(j, state, adapter)
        keep = prumerge_plus_select(attn, k)
        return keep, prumerge_merge(state.x, attn, keep, mode=self.merge, neighbours=self.neighbours)


# One literal call per policy, so `meteor list` reads them without importing torch (meteor_cli.catalog).
register_policy("meteor", stage=1, description="mean-token similarity at the first point, CLS attention later "
                "(rank-guided budgets)")(lambda budgets, **kw: Stage1(budgets, "meteor", **kw))
register_policy("similarity", stage=1, description="mean-token similarity at every point")(
    lambda budgets, **kw: Stage1(budgets, "similarity", **kw))
register_policy("random", stage=1, description="seeded uniform choice (ablation)")(
    lambda budgets, **kw: Stage1(budgets, "random", **kw))
register_policy("prumerge+", stage=1, description="PruMerge+ baseline: IQR outliers of CLS attention + spatial samples, "
                "pruned tokens merged into kept ones")(PruMergePlus)
