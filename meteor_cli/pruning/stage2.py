"""Stage 2: collaborative pruning of the fused, post-projection visual tokens (METHOD A6–A7).

After each encoder's projector the tokens live in one space (the LLM's), so redundancy *across*
encoders can be measured directly. For token i of encoder j::

    R_i = Σ_{tokens m of every OTHER encoder} cos(z_i, z_m)        (score="sum", the paper's)

and the ``keep`` tokens with the LOWEST R are kept, jointly over all encoders — so how many
tokens each encoder contributes varies per image. Output order: grouped by encoder, raster order
inside (ascending indices of the encoder-grouped input).

The paper's raw sum puts encoders with different token counts and similarity scales on
different footings: a token of a 16-token encoder is compared with 80 tokens of the others, a
token of the 64-token encoder with 32, and projectors that map their encoder into a tighter cone
score higher everywhere. Normalised variants, all **[inferred]** (not in the paper), selected by
``score`` (``meteor allocate --stage2-score``, recorded in the allocation):

* ``mean`` — R_i divided by the number of other-encoder tokens;
* ``encoder-mean`` — the mean over the other encoders of the mean similarity to each one's
  tokens (every other encoder weighs the same, whatever its token count);
* ``zscore`` — the paper's sum standardised within each encoder, per sample ((R - mean) / std
  over that encoder's tokens): a token competes by how redundant it is *for its encoder*;

and ``floor`` (``--stage2-floor F``): each encoder first keeps its ``floor(F · quota)`` least
redundant tokens (quota ∝ its token count, as ``separate`` uses), the rest of the budget is
chosen jointly. ``floor=0`` is the paper's joint selection.

``meteor allocate`` records the paper's ``sum`` with a floor of 0.5 by default
(``meteor_cli.pruning.DEFAULT_SCORE``, ``DEFAULT_FLOOR``): on ``tiny-synthvqa-v2`` (a model that
reads) at 24 of 96 tokens it scored 62.5 on the development seed, where it was chosen (tied with
``mean`` and ``mean`` + floor 0.5, broken towards the paper's score), against 51.0 for ``zscore``, the default chosen earlier on
v1, which read nothing, and 43.0 for ``sum`` alone; held out: 62.0 / 59.5 against 53.0 / 51.0 and
37.0 / 40.0 (docs/synthvqa.md, "Stage-2 redundancy scores"). ``Stage2`` and allocations that name
no score keep ``sum`` without a floor: an artifact means what it meant when written.

Memory: one (rows × N) float32 block per sample at a time; rows = N unless N·N·4 bytes exceeds
``max_bytes``, then row chunks (EAGLE-X4 unpruned reaches N ≈ 8k: 256 MB per full matrix).
Chunking does not change a single score bit-for-bit beyond float summation order, and the
selection is tested to be identical.

Registered Stage-2 policies: ``meteor`` (collaborative, with the ``score``/``floor`` options above), ``separate`` (intra-encoder
redundancy with per-encoder quotas), ``random`` (seeded per sample); plugins add more.

A Stage-2 policy is registered as a function ``policy(z (B, N, d), encoder_ids (N,), keep, **options)
-> Stage2Result`` (a bare (B, K) index tensor is accepted too). :class:`Stage2` looks the name up in
the registry (:func:`resolve_stage2_method`: an unknown name is a :class:`UsageError` listing the
registered ones) and passes each of its options (``score``, ``floor``, ``seed``, ``max_bytes``, ``grids``
— each encoder's native (h, w) — and the tokens' grid positions ``pos``) only to a policy whose
signature takes it. A result with ``values`` replaces the kept tokens' values (``pool``).
``pre-projection`` is registered for discovery but is a fusion
architecture, not a token selection (meta ``fusion=True``), so it cannot run as a Stage-2 policy.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from meteor_cli.errors import UsageError
from meteor_cli.registry import register_policy


@dataclass
class Stage2Result:
    indices: torch.Tensor  # (B, K) ascending
    scores: torch.Tensor | None  # (B, N) redundancy (lower = kept), None for random
    per_encoder: torch.Tensor  # (B, C) tokens kept per encoder
    #: (B, K, d) new token values for policies that merge or pool (``pool``); None = select ``indices``.
    values: torch.Tensor | None = None


def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    order = torch.sort(scores, dim=1, stable=True).indices[:, :k]  # lowest first, ties to lower index
    return torch.sort(order, dim=1).values


#: Redundancy scores of the ``meteor`` Stage-2 policy (see the module docstring); ``sum`` is the paper's.
SCORES = ("sum", "mean", "encoder-mean", "zscore")


def redundancy(z: torch.Tensor, encoder_ids: torch.Tensor, *, same: bool = False, reduce: str = "sum",
               max_bytes: int = 256 << 20) -> torch.Tensor:
    """(B, N, d) → (B, N): cosine similarity to the tokens of the other encoders (``same=True``:
    to the other tokens of the same encoder), reduced as ``reduce`` says: ``sum``, ``mean`` (over
    those tokens), ``encoder-mean`` (mean over encoders of the mean over each one's tokens) or
    ``zscore`` (``sum``, standardised within each encoder)."""
    if reduce not in SCORES:
        raise UsageError(f"unknown Stage-2 redundancy score {reduce!r}", f"choose from {', '.join(SCORES)}")
    B, N, _ = z.shape
    zn = torch.nn.functional.normalize(z.float(), dim=-1)
    ids = encoder_ids.to(z.device)
    c = int(ids.max()) + 1
    onehot = torch.nn.functional.one_hot(ids, c).float()  # (N, C)
    rows = N if N * N * 4 <= max_bytes else max(1, max_bytes // (4 * N))
    out = torch.empty(B, N, dtype=torch.float32, device=z.device)
    for b in range(B):
        for r0 in range(0, N, rows):
            sim = zn[b, r0:r0 + rows] @ zn[b].T  # (rows, N): the only N-wide matrix alive
            mask = ids[r0:r0 + rows, None] == ids[None, :]
            if same:
                mask = mask & ~torch.eye(N, dtype=torch.bool, device=z.device)[r0:r0 + rows]
            else:
                mask = ~mask
            if reduce == "encoder-mean":
                per_enc = (sim * mask) @ onehot  # (rows, C): summed similarity to each encoder
                n_enc = mask.float() @ onehot  # how many of each encoder's tokens were summed
                present = n_enc > 0
                s = (per_enc / n_enc.clamp_min(1)).sum(-1) / present.sum(-1).clamp_min(1)
            else:
                s = (sim * mask).sum(-1)
                if reduce == "mean":
                    s = s / mask.sum(-1).clamp_min(1)
            out[b, r0:r0 + rows] = s
    if reduce == "zscore":
        for e in range(c):
            cols = ids == e
            part = out[:, cols]
            mu = part.mean(1, keepdim=True)
            sd = part.std(1, keepdim=True, unbiased=False).clamp_min(1e-6)
            out[:, cols] = (part - mu) / sd
    return out


def _counts(idx: torch.Tensor, encoder_ids: torch.Tensor, c: int) -> torch.Tensor:
    kept = encoder_ids.to(idx.device)[idx]  # (B, K)
    return torch.stack([(kept == i).sum(1) for i in range(c)], dim=1)


def collaborative_prune(z: torch.Tensor, encoder_ids: torch.Tensor, keep: int, *, score: str = "sum",
                        floor: float = 0.0, reduce: str | None = None,
                        max_bytes: int = 256 << 20) -> Stage2Result:
    """Keep the ``keep`` tokens least redundant with the other encoders (jointly).

    ``score`` picks the redundancy (``SCORES``; ``reduce`` is its older name); ``floor`` > 0
    first gives every encoder ``floor(floor · quota)`` of its own least redundant tokens.
    """
    B, N, _ = z.shape
    c = int(encoder_ids.max()) + 1
    if keep >= N:
        idx = torch.arange(N, device=z.device).expand(B, N)
        return Stage2Result(idx, None, _counts(idx, encoder_ids, c))
    if not 0.0 <= floor <= 1.0:
        raise UsageError(f"Stage-2 floor {floor} is outside [0, 1]", "pass --stage2-floor between 0 and 1")
    r = redundancy(z, encoder_ids, reduce=reduce or score, max_bytes=max_bytes)
    if floor <= 0:
        idx = _lowest(r, keep)
        return Stage2Result(idx, r, _counts(idx, encoder_ids, c))
    ids = encoder_ids.to(z.device)
    counts = [int((ids == i).sum()) for i in range(c)]
    # Per sample: each encoder's floor tokens are forced in (score -inf), then the lowest of the rest.
    forced = torch.zeros(B, N, dtype=torch.bool, device=z.device)
    for i, q in enumerate(quotas(counts, keep)):
        n_floor = int(floor * q)
        if n_floor:
            members = torch.nonzero(ids == i).flatten()
            picked = members[_lowest(r[:, members], n_floor)]  # (B, n_floor)
            forced.scatter_(1, picked, True)
    idx = _lowest(torch.where(forced, torch.full_like(r, float("-inf")), r), keep)
    return Stage2Result(idx, r, _counts(idx, encoder_ids, c))


def quotas(counts: list[int], keep: int) -> list[int]:
    """Per-encoder quotas ∝ their token counts, summing exactly to ``keep`` (largest remainder)."""
    total = sum(counts)
    share = [keep * n / total for n in counts]
    q = [int(s) for s in share]
    for i in sorted(range(len(q)), key=lambda i: (-(share[i] - q[i]), i))[: keep - sum(q)]:
        q[i] += 1
    return q


def separate_prune(z: torch.Tensor, encoder_ids: torch.Tensor, keep: int, *, max_bytes: int = 256 << 20) -> Stage2Result:
    """Baseline: prune each encoder by intra-encoder redundancy, to quotas ∝ its token count."""
    B, N, _ = z.shape
    c = int(encoder_ids.max()) + 1
    if keep >= N:
        return collaborative_prune(z, encoder_ids, keep)
    r = redundancy(z, encoder_ids, same=True, max_bytes=max_bytes)
    counts = [int((encoder_ids == i).sum()) for i in range(c)]
    parts = []
    for i, q in enumerate(quotas(counts, keep)):
        members = torch.nonzero(encoder_ids == i).flatten().to(z.device)
        parts.append(members[_lowest(r[:, members], q)])
    idx = torch.sort(torch.cat(parts, dim=1), dim=1).values
    return Stage2Result(idx, r, _counts(idx, encoder_ids, c))


def random_prune(z: torch.Tensor, encoder_ids: torch.Tensor, keep: int, *, seed: int = 0,
                 sample_ids: list[int] | None = None) -> Stage2Result:
    """Baseline: a uniform random subset per sample, reproducible from (seed, sample id). The model
    passes each image's content key as its id (:func:`~meteor_cli.model.vlm.sample_keys`), so the
    picks do not depend on batch size, order or sharding; without ids, the row in the batch."""
    B, N, _ = z.shape
    c = int(encoder_ids.max()) + 1
    sample_ids = list(range(B)) if sample_ids is None else sample_ids
    rows = []
    for b in range(B):
        g = torch.Generator().manual_seed((seed * 1_000_003 + int(sample_ids[b])) % (1 << 63))
        rows.append(torch.sort(torch.randperm(N, generator=g)[: min(keep, N)]).values)
    idx = torch.stack(rows).to(z.device)
    return Stage2Result(idx, None, _counts(idx, encoder_ids, c))


def resolve_stage2_method(allocation: Mapping[str, Any] | None = None, method: str | None = None) -> str:
    """The Stage-2 policy to run: ``method`` if given, else the allocation's ``stage2.method``, else
    ``meteor`` — checked against the registry (plugins included). An unknown name, or a registered
    Stage-2 entry that is not a token selection (``pre-projection``), is a :class:`UsageError`
    naming the registered Stage-2 policies."""
    import difflib

    from meteor_cli.registry import POLICIES, load_builtins_and_plugins

    name = method or ((allocation or {}).get("stage2") or {}).get("method") or "meteor"
    load_builtins_and_plugins()
    entries = [e for e in POLICIES.entries() if e.meta.get("stage") == 2]
    selections = sorted(e.name for e in entries if not e.meta.get("fusion"))
    if any(e.name == name and e.meta.get("fusion") for e in entries):
        raise UsageError(f"{name} is a fusion architecture, not a Stage-2 token selection",
                         f"set fusion = \"{name}\" in the model config instead; Stage-2 policies: {', '.join(selections)}")
    if name not in selections:
        close = difflib.get_close_matches(name, selections, n=3)
        guess = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        raise UsageError(f"unknown Stage-2 pruning policy {name!r}",
                         f"{guess}registered Stage-2 policies: {', '.join(selections)} (`meteor list policies`)")
    return name


def _options_for(policy: Callable[..., Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of ``options`` that ``policy``'s signature accepts (all of them with ``**kwargs``)."""
    try:
        params = inspect.signature(policy).parameters.values()
    except (TypeError, ValueError):  # no introspectable signature: pass nothing optional
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return dict(options)
    names = {p.name for p in params if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)}
    return {k: v for k, v in options.items() if k in names}


class Stage2:
    """The ``stage2`` hook of :class:`~meteor_cli.model.vlm.MultiEncoderVLM`: runs the Stage-2
    policy registered as ``method`` (built-in or from a plugin) with budget ``keep``.

    Raises:
        UsageError: ``method`` is not a registered Stage-2 token-selection policy.
    """

    def __init__(self, keep: int, method: str = "meteor", *, score: str = "sum", floor: float = 0.0, seed: int = 0,
                 max_bytes: int = 256 << 20, grids: list[tuple[int, int]] | None = None) -> None:
        from meteor_cli.registry import POLICIES

        check_score_options(score, floor)
        self.keep, self.score, self.floor, self.seed, self.max_bytes = keep, score, floor, seed, max_bytes
        self.method = resolve_stage2_method(None, method)
        self.policy: Callable[..., Any] = POLICIES.get(self.method, stage=2)
        opts: dict[str, Any] = {"score": score, "floor": floor, "seed": seed, "max_bytes": max_bytes}
        if grids is not None:
            opts["grids"] = grids
        self.options = _options_for(self.policy, opts)
        self.takes_pos = "pos" in _options_for(self.policy, {"pos": None})
        #: the policy draws per sample (``random``): the model passes each image's key (:func:`~meteor_cli.model.vlm.sample_keys`)
        self.takes_sample_ids = "sample_ids" in _options_for(self.policy, {"sample_ids": None})
        self.last: Stage2Result | None = None

    def __call__(self, z: torch.Tensor, encoder_ids: torch.Tensor, pos: torch.Tensor,
                 sample_ids: list[int] | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None:
        if self.keep >= z.shape[1]:
            return None
        extra: dict[str, Any] = {"pos": pos} if self.takes_pos else {}
        if self.takes_sample_ids and sample_ids is not None:
            extra["sample_ids"] = sample_ids
        res = self.policy(z, encoder_ids, self.keep, **self.options, **extra)
        if isinstance(res, torch.Tensor):  # a policy that returns only the kept indices
            res = Stage2Result(res, None, _counts(res, encoder_ids, int(encoder_ids.max()) + 1))
        idx = res.indices
        if idx.dim() != 2 or idx.shape[0] != z.shape[0]:
            raise ValueError(f"Stage-2 policy {self.method!r} returned indices of shape {tuple(idx.shape)}; "
                             f"expected ({z.shape[0]}, k)")
        self.last = res
        return idx if res.values is None else (idx, res.values)


def check_score_options(score: str, floor: float) -> None:
    """Refuse an unknown redundancy ``score`` or a ``floor`` outside [0, 1] (named as the allocation records them)."""
    if score not in SCORES:
        raise UsageError(f"unknown Stage-2 redundancy score {score!r} (stage2.score)",
                         f"choose from {', '.join(SCORES)} (`meteor allocate --stage2-score`)")
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0.0 <= floor <= 1.0:
        raise UsageError(f"Stage-2 floor {floor!r} (stage2.floor) is not a number in [0, 1]",
                         "pass --stage2-floor between 0 and 1 to `meteor allocate`")


def build_stage2(allocation: Mapping[str, Any], method: str | None = None, *, seed: int = 0,
                 grids: list[tuple[int, int]] | None = None) -> Stage2:
    """The Stage-2 hook for ``allocation``'s ``stage2`` (keep, score, floor), running the policy
    :func:`resolve_stage2_method` picks. Allocations written before ``score``/``floor`` existed
    get the paper's ``sum`` and no floor. ``grids``: each encoder's native (h, w), for policies that
    rebuild the maps (``pool``)."""
    s2 = allocation["stage2"]
    return Stage2(int(s2["keep"]), resolve_stage2_method(allocation, method), score=s2.get("score", "sum"),
                  floor=s2.get("floor", 0.0), seed=seed, grids=grids)


register_policy("meteor", stage=2, description="collaborative: lowest similarity to the OTHER encoders' tokens "
                "(--stage2-score sum|mean|encoder-mean|zscore, --stage2-floor)")(
    collaborative_prune)
register_policy("separate", stage=2, description="intra-encoder redundancy, per-encoder quotas (baseline)")(separate_prune)
register_policy("random", stage=2, description="uniform random tokens, seeded per sample (baseline)")(random_prune)


@register_policy("pre-projection", stage=2, fusion=True,
                 description="EAGLE's channel-concatenation fusion (baseline); set fusion = \"pre-projection\" in the model config")
def pre_projection_fusion() -> str:
    """Pre-projection fusion is a model architecture, not a token selection: every encoder's final
    map is resampled to the common grid, channels are concatenated and one projector maps them
    (``MultiEncoderVLM.encode_images`` with ``ModelConfig.fusion == "pre-projection"``). It is
    listed here so that every Stage-2 alternative of the supplement's Table 2 is discoverable."""
    return "pre-projection"
