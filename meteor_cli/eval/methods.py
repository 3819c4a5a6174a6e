"""Pruning methods side by side at one visual-token budget (``meteor eval --method``, ``meteor demo``).

A *budget* ``T`` is a number of visual tokens, counted the way each method's paper counts it and
made comparable across stages by averaging over the LLM's layers (``pruning.schedule``):

* Stage-1 and Stage-2 methods let ``T`` tokens into the LLM (so ``T`` in every layer);
* Stage-3 methods let all ``N`` in and prune inside the LLM so that the *layer-averaged* count is
  ``T`` (FastV: the drop ratio R at its layer K, :func:`fastv_setting`; PyramidDrop: one geometric
  ratio r, keeping r, r², r³ of ``N``, :func:`pdrop_ratio`; DART and ``fixed``: a count at layer K);
* ``meteor`` runs all three stages as ``meteor demo`` does (:func:`meteor_budgets`): Stage 1 keeps
  ``min(0.9, 1.6·T/N)`` of the native tokens with rank-guided budgets (needs a ranks artifact),
  Stage 2 keeps ``round(1.25·T)``, and Stage 3 — the λ, heads and layers of a ``meteor`` prune-llm
  artifact — has its scale c re-calibrated so the layer-averaged count is ``T``
  (:func:`calibrate_meteor`, on the first questions of the run).

:func:`build_settings` turns method names and budgets into :class:`~meteor_cli.eval.runner.EvalSetting`
objects that one loaded model evaluates in turn; :func:`flops_for` counts each setting's cost with
``meteor flops``' analytic count at the token counts the run measured.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meteor_cli.errors import UsageError
from meteor_cli.pruning.schedule import layer_averaged_tokens

#: Methods with a built-in recipe for a budget (any other registered policy name works too).
BUILTIN_METHODS: dict[str, str] = {
    "unpruned": "no pruning (reference; one row whatever the budget)",
    "meteor": "Stages 1-3: rank-guided Stage 1, collaborative Stage 2, adaptive Stage 3 calibrated to T "
              "(needs --ranks and a meteor --prune-llm)",
    "fastv": "Stage 3: FastV at layer K (2, earlier on shallow LLMs) with the drop ratio R averaging T",
    "pdrop": "Stage 3: PyramidDrop at its layers with the geometric ratio averaging T",
    "dart": "Stage 3: DART at layer K (as FastV's) keeping the count that averages T",
    "sparsevlm": "Stage 3: SparseVLM+ at its layers [3,7,16]/32, its kept-count schedule scaled to average T",
    "random": "Stage 2: T uniformly random tokens into the LLM",
    "separate": "Stage 2: T tokens, per-encoder quotas by intra-encoder redundancy",
    "pool": "Stage 2: 2-D average pooling of each encoder's map to its share of T (the floor)",
    "divprune": "Stage 2: DivPrune's T most diverse fused tokens (greedy max-min cosine distance)",
    "visionzip": "Stage 1: VisionZip's dominant + contextual tokens, T in all, at each encoder's last point",
    "prumerge+": "Stage 1: PruMerge+, T in all, at each encoder's last point",
}
STAGE1_METHODS = ("visionzip", "prumerge+")
STAGE2_METHODS = ("random", "separate", "pool", "divprune")
#: Stage-3 methods whose schedule is a ratio of the visual span, so a budget per anyres tile or per
#: reference image (T of n tokens) means the same fraction T/n of any LLaVA-NeXT or Qwen2-VL span:
#: FastV's R and PDrop's r are solved for (n, T) and are ratios already; DART keeps a ratio
#: (``keep < 1``) there.
PER_TILE_STAGE3 = ("fastv", "pdrop", "dart", "sparsevlm")
#: Text tokens of the prompt in the FLOPs count (``meteor flops``' default).
FLOPS_TEXT_TOKENS = 64


# ------------------------------------------------------------------------------------------------
# Ratio solvers: equal layer-averaged budgets for the Stage-3 methods
# ------------------------------------------------------------------------------------------------


def fastv_ratio(n: int, target: float, layers: int, k: int) -> float:
    """FastV's drop ratio R such that K layers see ``n`` tokens and the rest ``n·(1-R)``, averaging ``target``."""
    if k >= layers:
        raise UsageError(f"FastV's layer K={k} is not inside the {layers}-layer LLM")
    r = 1 - (target * layers - k * n) / ((layers - k) * n)
    if not 0.0 <= r <= 0.99:
        raise UsageError(f"FastV at layer {k} cannot average {target:.0f} of {n} visual tokens over {layers} layers",
                         "raise --budget")
    return r


def fastv_setting(n: int, target: float, n_layers: int) -> tuple[int, float]:
    """FastV's layer K (its default 2, or earlier when a shallow LLM cannot reach the budget from there) and ratio R."""
    for k in range(min(2, n_layers - 1), 0, -1):
        try:
            return k, fastv_ratio(n, target, n_layers, k)
        except UsageError:
            continue
    return 1, fastv_ratio(n, target, n_layers, 1)  # raises, naming the budget


def _solve(avg: Any, target: float, lo: float, hi: float, steps: int) -> float:
    """Bisection for ``x`` in [lo, hi] with ``avg(x) = target`` (``avg`` non-decreasing)."""
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if avg(mid) < target else (lo, mid)
    return (lo + hi) / 2


def pdrop_ratio(n: int, target: float, layers: int, points: list[int]) -> float:
    """PyramidDrop's geometric ratio r (keep r, r², … of ``n`` from each point on) averaging ``target`` (bisection)."""

    def avg(r: float) -> float:
        return layer_averaged_tokens(n, points, [n * r ** (s + 1) for s in range(len(points))], layers)

    if avg(0.0) > target or avg(1.0) < target:
        raise UsageError(f"PyramidDrop at layers {points} cannot average {target:.0f} of {n} visual tokens",
                         "raise --budget")
    return round(_solve(avg, target, 0.0, 1.0, 60), 4)


def pdrop_setting(n: int, target: float, n_layers: int) -> tuple[list[int], float]:
    """PyramidDrop's layers and ratio r for a budget: its default layers ``L·{8,16,24}/32``, or — when
    those cannot reach it — the same three stages evenly spaced from FastV's layer 2 (1 on an LLM too
    shallow for that).

    [inferred] With the default layers every visual token passes the first quarter of the LLM, so
    no r averages fewer than ``n/4`` (144 of LLaVA-1.5's 576): PyramidDrop's paper reports 64 and 128
    tokens without the layer lists it used (Cooperx521/PyramidDrop#10, #27). Starting where FastV
    starts, ``[2, 12, 22]`` on 32 layers, reaches 36 of 576 at the least.
    """
    from meteor_cli.pruning.llm_policies import default_layers

    candidates = [default_layers(n_layers, (8, 16, 24))]
    for k in (2, 1):
        pts = [k + round(i * (n_layers - k) / 3) for i in range(3)]
        if all(b > a for a, b in zip(pts, pts[1:])) and pts[-1] < n_layers and pts not in candidates:
            candidates.append(pts)
    for pts in candidates:
        with contextlib.suppress(UsageError):
            return pts, pdrop_ratio(n, target, n_layers, pts)
    pts = candidates[-1]
    raise UsageError(f"PyramidDrop cannot average {target:.0f} of {n} visual tokens over {n_layers} layers, even "
                     f"from layers {pts} (every token passes the first {pts[0]})",
                     f"raise the budget to at least {math.ceil(pts[0] * n / n_layers)}")


def sparsevlm_setting(n: int, target: float, n_layers: int) -> tuple[list[int], list[float]]:
    """SparseVLM's layers and per-layer keep RATIOS (of ``n``) averaging ``target`` over the layers.

    [inferred] The schedule's shape is the reference's own list for the nearest of its budgets (64,
    96, 128, 192 of 576, at ``target·576/n``), scaled by one factor so the layer average is exactly
    ``target`` (the reference's lists average 82-207 tokens over 32 layers, not their nominal
    budget). When its first layer lets too many tokens through for ``target`` (a 16-layer LLM at
    64 of 576), the first pruning moves to layer 1, as FastV's and PyramidDrop's do.
    """
    from meteor_cli.pruning.sparsevlm import REFERENCE_COUNTS, REFERENCE_TOKENS, sparsevlm_layers

    nominal = min(REFERENCE_COUNTS, key=lambda t: (abs(t - target * REFERENCE_TOKENS / n), t))
    shape = [c / REFERENCE_TOKENS for c in REFERENCE_COUNTS[nominal]]

    def avg(pts: list[int], alpha: float) -> float:
        return layer_averaged_tokens(n, pts, [min(n, max(1.0, alpha * f * n)) for f in shape[: len(pts)]], n_layers)

    default = sparsevlm_layers(n_layers)
    candidates = (default, sorted({1, *default[1:]}))  # [inferred] from layer 1 when its own first layer cannot
    pts = next((p for p in candidates if avg(p, 0.0) <= target <= avg(p, 1e6)), None)
    if pts is None:
        least = math.ceil(avg(candidates[-1], 0.0))
        raise UsageError(f"SparseVLM at layers {candidates[-1]} cannot average {target:.0f} of {n} visual tokens "
                         f"over {n_layers} layers", f"raise the budget to at least {least}")
    alpha = _solve(lambda a: avg(pts, a), target, 0.0, 1e6, 200)
    return pts, [round(min(1.0, alpha * f), 4) for f in shape[: len(pts)]]


def single_layer_count(n: int, target: float, n_layers: int) -> tuple[int, int]:
    """A one-layer Stage-3 cut (DART, ``fixed``) averaging ``target``: FastV's layer K and the count kept there."""
    k, r = fastv_setting(n, target, n_layers)
    return k, max(1, round(n * (1 - r)))


def meteor_budgets(fraction: float, n: int) -> tuple[int, float, int]:
    """``meteor demo``'s METEOR recipe at a budget ``fraction`` of ``n`` visual tokens:
    ``(T, Stage-1 keep ratio, Stage-2 keep)`` = ``(round(b·n), min(0.9, 1.6·b), min(n, round(1.25·T)))``.

    >>> meteor_budgets(0.5, 96)
    (48, 0.8, 60)
    """
    target = round(fraction * n)
    return target, min(0.9, 1.6 * fraction), min(n, round(1.25 * target))


def meteor_stage12(target: int, n: int) -> tuple[float, int]:
    """METEOR's Stage-1 keep ratio and Stage-2 keep at ``target`` of ``n`` visual tokens (Stage 3 takes
    the rest of the way to ``target``): ``(min(0.9, 1.6·target/n), min(n, round(1.25·target)))``."""
    return min(0.9, 1.6 * target / n), min(n, round(1.25 * target))


# ------------------------------------------------------------------------------------------------
# Model shape and budgets
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """What a budget needs to know about a meteor model (from its config: no weights read)."""

    visual_tokens: int  # into the LLM, unpruned
    layers: int
    heads: int
    encoders: dict[str, tuple[int, list[int]]]  # name → (native tokens, pruning points)
    cfg: Any = None
    #: Where not None, the budget counts tokens per crop of the tower (LLaVA-NeXT's anyres tiles,
    #: Qwen2-VL's images at the 448x448 reference: the family's class name); Stage-1/2 methods keep it
    #: in every tile / image, the Stage-3 ratio schedules (:data:`PER_TILE_STAGE3`) keep its fraction
    #: of each span (which depends on the image size).
    per_tile: str | None = None


def model_shape(spec: str) -> ModelShape:
    """The :class:`ModelShape` of ``--model`` (preset, checkpoint directory or config JSON).

    Raises:
        UsageError: ``spec`` is not one of meteor's own multi-encoder models (e.g. a transformers
            VLM directory), whose visual-token count a budget can be solved for from the config.
    """
    from meteor_cli.cli.flops import count
    from meteor_cli.errors import MeteorError
    from meteor_cli.model.checkpoint import load_model_config
    from meteor_cli.model.hf_vlm import family_of

    fam = family_of(spec)
    if fam is not None:
        return hf_model_shape(spec, fam)
    try:
        cfg = load_model_config(spec).validate()
    except MeteorError as exc:
        raise UsageError(f"--method with a budget needs one of meteor's own models; --model {spec!r} is not one "
                         f"({exc.message if hasattr(exc, 'message') else exc})",
                         "use a preset, a `meteor train` checkpoint or an EAGLE directory, or give the pruning "
                         "artifacts (--prune-llm) without --method") from None
    hf = cfg.llm.resolved_hf_config()
    n = int(count(cfg, hf, None, None, "fastv", FLOPS_TEXT_TOKENS, 0, None)["visual_tokens"]["into_llm"])
    return ModelShape(n, int(hf["num_hidden_layers"]), int(hf["num_attention_heads"]),
                      {e.name: (int(e.num_tokens), list(e.prune_points or [])) for e in cfg.encoders}, cfg)


def hf_model_shape(spec: str, fam: Any) -> ModelShape:
    """The :class:`ModelShape` of a transformers VLM directory whose tower Stage 1 prunes (LLaVA-1.5:
    a fixed ``(tile/patch)²`` visual tokens, one encoder named as the family's tower; LLaVA-NeXT:
    the same per anyres tile, :attr:`ModelShape.per_tile` set); built on meta.

    Raises:
        UsageError: a family without a Stage-1 adapter (its visual-token count also depends on the
            image size: Qwen2-VL's dynamic resolution).
    """
    from meteor_cli.model.hf_vlm.flops import image_processor_settings

    if fam.stage1_missing is not None:
        raise UsageError(f"--method with a budget solves each method for the model's visual-token count; a "
                         f"{fam.hf_class}'s depends on the image size (and {fam.stage1_missing})",
                         "give Stage-3 settings instead: meteor prune-llm --model DIR --method fixed --visual-tokens N "
                         "--out p.json, then eval --prune-llm p.json (without --method)")
    hf = fam.build_meta(spec)
    tcfg = fam.stage1_config(hf.config, image_processor_settings(spec))
    text = hf.config.get_text_config()
    full = getattr(hf.config, "vision_feature_select_strategy", None) == "full"
    # anyres tiles (LLaVA-NeXT) and Qwen2-VL's native resolution: the budget is per tower crop
    # (tile / image) and the LLM's span depends on the image size
    tiled = "image_grid_pinpoints" in hf.config.to_dict() or tcfg.family == "qwen2_vl"
    return ModelShape(tcfg.num_tokens + (1 if full else 0), int(text.num_hidden_layers), int(text.num_attention_heads),
                      {fam.tower: (tcfg.num_tokens, list(tcfg.prune_points or []))}, None,
                      fam.hf_class if tiled else None)


def parse_budgets(n: int, *, budget: float | None = None, visual_tokens: int | None = None,
                  sweep: str | None = None) -> list[int]:
    """``--budget F``, ``--visual-tokens T`` or ``--sweep V1,V2,...`` as token counts ``T`` (1 ≤ T ≤ n).

    In ``--sweep`` a value with a decimal point is a fraction of the ``n`` visual tokens, an
    integer a token count. Duplicates are dropped; order is kept.

    >>> parse_budgets(96, sweep="0.25,48,0.5,16")
    [24, 48, 16]
    """
    given = [o for o, v in (("--budget", budget), ("--visual-tokens", visual_tokens), ("--sweep", sweep)) if v is not None]
    if len(given) > 1:
        raise UsageError(f"{' and '.join(given)} both set the budget", "give one of --budget, --visual-tokens, --sweep")
    values: list[tuple[str, float | int]] = []
    if budget is not None:
        values = [("--budget", float(budget))]
    elif visual_tokens is not None:
        values = [("--visual-tokens", int(visual_tokens))]
    elif sweep is not None:
        for part in sweep.split(","):
            p = part.strip()
            if not p:
                continue
            try:
                values.append(("--sweep", float(p) if "." in p or "e" in p.lower() else int(p)))
            except ValueError:
                raise UsageError(f"--sweep {sweep!r}: {p!r} is not a number",
                                 "fractions of the visual tokens (0.25,0.5) or token counts (16,32,64)") from None
        if not values:
            raise UsageError("--sweep is empty", "e.g. --sweep 0.25,0.5,0.75 or --sweep 16,32,64")
    out: list[int] = []
    for opt, v in values:
        if isinstance(v, float):
            if not 0 < v <= 1:
                raise UsageError(f"{opt} {v:g}: a fraction of the visual tokens must be in (0, 1]",
                                 f"e.g. 0.25 keeps {max(1, round(0.25 * n))} of {n}; give token counts as integers")
            t = max(1, round(v * n))
        else:
            t = v
        if not 1 <= t <= n:
            raise UsageError(f"{opt} {v}: {t} visual tokens is outside 1..{n} (the model's visual tokens)",
                             f"give a count in 1..{n} or a fraction in (0, 1]")
        if t not in out:
            out.append(t)
    return out


def known_methods() -> list[str]:
    """The built-in methods, then every registered pruning policy name (plugins included)."""
    from meteor_cli.registry import POLICIES, load_builtins_and_plugins

    load_builtins_and_plugins()
    extra = sorted(e.name for e in POLICIES.entries() if e.name not in BUILTIN_METHODS and not e.meta.get("fusion"))
    return [*BUILTIN_METHODS, *dict.fromkeys(extra)]


def parse_methods(text: str) -> list[str]:
    """``--method a,b`` as a list of known names (order kept, duplicates dropped).

    Raises:
        UsageError: an unknown name; the message lists the known ones.
    """
    import difflib

    names = list(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    if not names:
        raise UsageError("--method is empty", f"e.g. --method unpruned,meteor,fastv (known: {', '.join(known_methods())})")
    known = known_methods()
    for m in names:
        if m not in known:
            close = difflib.get_close_matches(m, known, n=2)
            raise UsageError(f"unknown method {m!r}" + (f" (did you mean {' or '.join(close)}?)" if close else ""),
                             f"known: {', '.join(known)} (`meteor list policies` describes the policies)")
    return names


# ------------------------------------------------------------------------------------------------
# Method × budget → EvalSetting
# ------------------------------------------------------------------------------------------------


def ranks_from_shape(shape: ModelShape) -> dict[str, Any]:
    """A ranks body whose 'rank' is each encoder's native token count: Stage-1 shares of a budget
    proportional to the tokens each encoder has (used where no ``--ranks`` is given)."""
    return {"method": "native-tokens", "encoders": {
        n: {"tokens": t, "points": pts, "rank": [float(t)] * len(pts)} for n, (t, pts) in shape.encoders.items()}}


def _allocation(ranks: Mapping[str, Any], shape: ModelShape, *, totals: list[int] | None = None,
                keep_ratio: float | None = None, fusion_keep: int, stage1: str = "meteor", stage2: str = "meteor",
                stage1_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """An allocation body as ``meteor allocate`` writes it, checked against the model."""
    from meteor_cli.pruning import DEFAULT_FLOOR, DEFAULT_SCORE
    from meteor_cli.pruning.allocation import build_allocation, check_allocation_fits

    body = build_allocation(ranks, totals=totals, keep_ratio=keep_ratio, fusion_keep=fusion_keep)
    body["stage1"]["method"] = stage1
    if stage1_options:
        body["stage1"]["options"] = dict(stage1_options)
    body["stage2"].update(method=stage2, score=DEFAULT_SCORE, floor=DEFAULT_FLOOR)
    if shape.cfg is not None:
        check_allocation_fits(body, {e.name: e for e in shape.cfg.encoders}, name="--ranks")
    return body


def _points(shape: ModelShape) -> int:
    return max(len(p) for _, p in shape.encoders.values())


def _stage3(method: str, shape: ModelShape, **settings: Any) -> dict[str, Any]:
    """A prune-llm body (``{"method": ..., **policy fields}``) validated against the LLM."""
    from meteor_cli.pruning.llm_policies import make_policy

    policy = make_policy(method, **settings)
    policy.validate(shape.layers, shape.heads)
    return {"method": method, **policy.to_dict()}


def policy_stage(method: str) -> int:
    """The stage a registered policy name belongs to (0: several stages, or none)."""
    from meteor_cli.registry import POLICIES, load_builtins_and_plugins

    load_builtins_and_plugins()

    stages = sorted({e.meta["stage"] for e in POLICIES.entries() if e.name == method})
    return stages[0] if len(stages) == 1 else 0


def build_setting(method: str, target: int | None, shape: ModelShape, *, ranks: Mapping[str, Any] | None = None,
                  prune_llm: Mapping[str, Any] | None = None, stage1_options: Mapping[str, Any] | None = None) -> Any:
    """The :class:`~meteor_cli.eval.runner.EvalSetting` of ``method`` at ``target`` visual tokens.

    Raises:
        UsageError: ``meteor`` without ``ranks`` or ``prune_llm`` (or a non-meteor one), a budget a
            method cannot reach, or a registered policy whose budget this module cannot set.
    """
    from meteor_cli.eval.runner import EvalSetting
    from meteor_cli.pruning.stage1 import policy_options

    n, L = shape.visual_tokens, shape.layers
    if method == "unpruned":
        return EvalSetting("unpruned")
    if target is None:
        raise UsageError(f"--method {method} needs a budget", "add --budget F, --visual-tokens T or --sweep V1,V2,...")
    stage = (1 if method in STAGE1_METHODS else 2 if method in STAGE2_METHODS
             else 3 if method in ("dart", "fastv", "pdrop", "sparsevlm") else 0 if method == "meteor"
             else policy_stage(method))
    ratio_ok = method in PER_TILE_STAGE3 or method == "meteor"
    if shape.per_tile is not None and stage not in (1, 2) and not ratio_ok:
        raise UsageError(f"on {shape.per_tile} a budget counts tokens per "
                         f"anyres tile (LLaVA-NeXT) or per image at its own resolution (Qwen2-VL; {shape.visual_tokens} "
                         "at the 448x448 reference size); the LLM's visual span depends on the image size, so only "
                         f"the ratio schedules ({', '.join(PER_TILE_STAGE3)}: the fraction T/{shape.visual_tokens} of "
                         f"each span) and meteor (λ calibrated to a fraction of each span) carry such a budget into "
                         f"the LLM, and {method} on {shape.per_tile} has none",
                         "run Stage-1/2 methods here (e.g. --method visionzip); for Stage 3 write settings with "
                         "meteor prune-llm --model DIR --method meteor|fastv ... and pass --prune-llm (without --method)")
    if method == "meteor":
        missing = [o for o, v in (("--ranks", ranks), ("--prune-llm", prune_llm)) if v is None]
        if missing:
            raise UsageError(f"--method meteor needs {' and '.join(missing)}: Stage 1 allocates its budgets from the "
                             "encoders' ranks, Stage 3 takes λ, heads and layers from a meteor prune-llm artifact "
                             "(its scale is re-calibrated to each budget)",
                             "meteor rank-estimate --model M --data D --out ranks.json; "
                             "meteor prune-llm --model M --out prune-llm.json; then add --ranks ranks.json "
                             "--prune-llm prune-llm.json")
        assert ranks is not None and prune_llm is not None
        if prune_llm.get("method") != "meteor":
            raise UsageError(f"--method meteor takes a meteor Stage-3 artifact; --prune-llm is a "
                             f"{prune_llm.get('method')!r} one", "write one with `meteor prune-llm --method meteor`")
        ratio, s2 = meteor_stage12(target, n)
        alloc = _allocation(ranks, shape, keep_ratio=ratio, fusion_keep=s2)
        settings = {k: v for k, v in prune_llm.items() if k not in ("method", "model", "calibration", "visual_tokens")}
        s3 = _stage3("meteor", shape, **settings)
        if shape.per_tile is not None:  # Stage 1-2 keep s2 per tile / image; Stage 3 the fraction T/s2 of each span
            return EvalSetting("meteor", target, alloc, s3, None, None, calibrate_ratio=round(target / s2, 6))
        return EvalSetting("meteor", target, alloc, s3, None, None, calibrate_to=float(target))
    if method == "fastv":
        k, r = fastv_setting(n, target, L)
        return EvalSetting("fastv", target, None, _stage3("fastv", shape, layers=[k], k=k, r=round(r, 4), query="last"))
    if method == "pdrop":
        pts, r = pdrop_setting(n, target, L)
        return EvalSetting("pdrop", target, None, _stage3("pdrop", shape, layers=pts, query="last-instruction",
                                                         ratios=[round(r ** (i + 1), 4) for i in range(len(pts))]))
    if method == "sparsevlm":  # keep ratios of each sample's span: per tile / image as FastV's and PDrop's
        pts, ratios = sparsevlm_setting(n, target, L)
        return EvalSetting("sparsevlm", target, None, _stage3("sparsevlm", shape, layers=pts, keep=ratios))
    if stage == 3:
        from dataclasses import fields

        from meteor_cli.registry import POLICIES

        if "keep" not in {f.name for f in fields(POLICIES.get(method, stage=3))}:
            raise UsageError(f"--method {method}: the Stage-3 policy {method!r} has no `keep` count this command can "
                             "set to a budget", "write its settings with `meteor prune-llm --method "
                             f"{method}` and pass them with --prune-llm (without --method)")
        k, kept = single_layer_count(n, target, L)
        if shape.per_tile is not None:  # a ratio of each sample's span: T of every tile's n, whatever the tiles
            return EvalSetting(method, target, None, _stage3(method, shape, layers=[k], keep=[round(kept / n, 4)]))
        return EvalSetting(method, target, None, _stage3(method, shape, layers=[k], keep=[kept]))
    if stage not in (1, 2):
        raise UsageError(f"--method {method}: policy {method!r} is registered for several stages",
                         "name a built-in method (`meteor eval --help`)")
    native = sum(t for t, _ in shape.encoders.values())
    base = ranks if ranks is not None else ranks_from_shape(shape)
    p = _points(shape)
    if stage == 1:  # every token kept up to the last point, T there; Stage 2 (T of T) keeps them all
        opts = policy_options(method, stage1_options) if stage1_options else None
        alloc = _allocation(base, shape, totals=[native] * (p - 1) + [target], fusion_keep=target, stage1=method,
                            stage1_options=opts)
        return EvalSetting(method, target, alloc, None, None, None)
    alloc = _allocation(base, shape, totals=[native] * p, fusion_keep=target, stage2=method)
    return EvalSetting(method, target, alloc, None, None, None)


def build_settings(methods: Sequence[str], budgets: Sequence[int], shape: ModelShape, **kw: Any) -> list[Any]:
    """One setting per (method, budget), methods in the order given; ``unpruned`` once."""
    if any(m != "unpruned" for m in methods) and not budgets:
        raise UsageError(f"--method {','.join(methods)} needs a budget",
                         "add --budget F (a fraction of the visual tokens), --visual-tokens T or --sweep V1,V2,...")
    out = []
    for m in methods:
        for t in ([None] if m == "unpruned" else budgets):
            try:
                out.append(build_setting(m, t, shape, **kw))
            except UsageError as exc:
                if t is None or m == "meteor" and "needs --" in exc.message:
                    raise
                raise type(exc)(f"--method {m} at {t} visual tokens (of {shape.visual_tokens}): {exc.message}",
                                exc.hint if exc.hint != "raise --budget" else
                                "drop that budget from --sweep, or raise --budget / --visual-tokens") from None
    return out


# ------------------------------------------------------------------------------------------------
# METEOR's Stage-3 scale at a budget
# ------------------------------------------------------------------------------------------------


def calibrate_meteor(vlm: Any, setting: Any, images: Sequence[Any], prompts: Sequence[str], *, seed: int = 0,
                     device: Any = None, batch_size: int = 8) -> dict[str, Any]:
    """Fit the scale c of ``setting``'s meteor Stage 3 (its Stage 1-2 applied) so the mean
    layer-averaged visual tokens on ``images``/``prompts`` hit ``setting.calibrate_to`` (or, with
    ``setting.calibrate_ratio``, so their mean fraction of each sample's span into the LLM hits
    that ratio); sets ``setting.prune_llm["scale"]`` and returns the calibration record."""
    import statistics

    import torch

    from meteor_cli.eval.runner import images_for, install_pruning
    from meteor_cli.pruning.llm_policies import make_policy
    from meteor_cli.pruning.llm_pruner import LLMPruner, text_config
    from meteor_cli.pruning.schedule import calibrate_scale

    install_pruning(vlm, setting.allocation, None, seed=seed)
    body = {k: v for k, v in setting.prune_llm.items() if k != "method"}
    policy = make_policy("meteor", **body)
    n_layers = text_config(vlm.llm).num_hidden_layers
    batches = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            ims = images_for(vlm, images[i:i + batch_size])
            if isinstance(ims, torch.Tensor) and device is not None:
                ims = ims.to(device)
            batches.append(vlm.prepare(ims, list(prompts[i:i + batch_size]))[0])
    pruner = LLMPruner(vlm.llm, policy)
    last: dict[float, list[float]] = {}

    def measure(scale: float) -> float:
        policy.scale = scale
        avgs = []
        for inp in batches:
            with torch.no_grad(), pruner.session(inp.visual_start, inp.visual_len,
                                                 attention_mask=inp.attention_mask) as sess:
                if hasattr(vlm, "prefill"):
                    vlm.prefill(inp)
                else:
                    vlm.llm(inputs_embeds=inp.embeds, attention_mask=inp.attention_mask)
            for b in range(len(inp.visual_len)):
                kept = [len(sess.kept[p][b]) for p in policy.layers]
                avg = layer_averaged_tokens(inp.visual_len[b], policy.layers, kept, n_layers)
                avgs.append(avg / max(1, inp.visual_len[b]) if ratio else avg)
        last[scale] = avgs
        return sum(avgs) / len(avgs)

    ratio = setting.calibrate_ratio is not None
    target = float(setting.calibrate_ratio if ratio else setting.calibrate_to)
    try:
        cal = calibrate_scale(measure, target, tol=0.02)
    finally:
        pruner.remove()
        vlm.stage1 = vlm.stage2 = None
    setting.prune_llm = {**setting.prune_llm, "scale": cal.scale}
    avgs = last[cal.scale]
    return {"scale": cal.scale, "target": target, "achieved": cal.achieved,
            "unit": "fraction of each span" if ratio else "layer-averaged visual tokens",
            "std": statistics.pstdev(avgs), "n": len(avgs), "iterations": cal.iterations}


# ------------------------------------------------------------------------------------------------
# FLOPs at the measured token counts
# ------------------------------------------------------------------------------------------------


def flops_for(model: str, settings: Sequence[Any], results: Sequence[Mapping[str, Any]],
              convention: str = "fastv") -> dict[str, Any]:
    """``label → {"total", "unpruned_total", "ratio", ...}``: ``meteor flops``' analytic count of each
    setting (its allocation for the encoders and projectors; the Stage-3 kept counts each pruning
    layer had on average in this run; the mean prompt text tokens this run measured, or
    ``FLOPS_TEXT_TOKENS`` for results written before they were recorded), over the unpruned model's at the same text; transformers VLMs through
    :func:`~meteor_cli.model.hf_vlm.flops.count_hf_vlm` at their default image size. Empty for
    models ``meteor flops`` cannot count."""
    from meteor_cli.cli.flops import count
    from meteor_cli.errors import MeteorError
    from meteor_cli.model.checkpoint import load_model_config
    from meteor_cli.model.hf_vlm import family_of

    if family_of(model) is not None:
        from meteor_cli.model.hf_vlm.flops import count_hf_vlm

        def counter(_cfg: Any, _hf: Any, alloc: Any, s3: Any, conv: str, text: int, new: int, kept: Any) -> dict[str, Any]:
            return count_hf_vlm(model, None, s3, conv, text, new, kept, allocation=alloc)

        cfg = hf = None
    else:
        counter = count
        try:
            cfg = load_model_config(model).validate()
        except (MeteorError, OSError, ValueError):
            return {}
        hf = cfg.llm.resolved_hf_config()
    bases: dict[int, float] = {}
    out: dict[str, Any] = {}
    by_label = {r["label"]: r for r in results}
    for s in settings:
        tokens = (by_label.get(s.label) or {}).get("tokens") or {}
        kept = tokens.get("stage3_per_layer")
        s3 = s.prune_llm
        if s3 is not None and not kept:
            continue  # nothing measured (no answered question): no count
        # the prompt text this run measured (Stage 3's cost grows with it); the fixed default for old rows
        text = round(tokens["text"]) if tokens.get("text") is not None else FLOPS_TEXT_TOKENS
        try:
            if text not in bases:
                bases[text] = counter(cfg, hf, None, None, convention, text, 0, None)["total"]
            body = counter(cfg, hf, s.allocation, s3, convention, text, 0,
                           [float(v) for v in kept.values()] if s3 is not None and kept else None)
        except MeteorError:
            continue
        out[s.label] = {"total": body["total"], "unpruned_total": bases[text], "ratio": body["total"] / bases[text],
                        "convention": convention, "text_tokens": text,
                        "text_tokens_source": "measured" if tokens.get("text") is not None else "default",
                        "layer_averaged": body["visual_tokens"]["layer_averaged"]}
    return out


# ------------------------------------------------------------------------------------------------
# The plot
# ------------------------------------------------------------------------------------------------

PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def plot_sweep(results: Sequence[Mapping[str, Any]], path: Path, *, title: str = "") -> None:
    """A PNG with two panels, score vs layer-averaged visual tokens and score vs FLOPs ratio, one
    line per method (``unpruned``: one point). Pillow only, as ``meteor demo``'s plot."""
    from PIL import Image, ImageDraw, ImageFont

    pw, H, m, top = 480, 410, 56, 40
    im = Image.new("RGB", (2 * pw, H), "white")
    d = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=12)
    methods = list(dict.fromkeys(r["method"] for r in results))
    scores = [r["metrics"].get("value") for r in results if r["metrics"].get("value") is not None]
    y_lo, y_hi = (min(scores), max(scores)) if scores else (0.0, 1.0)
    pad = max(1.0, (y_hi - y_lo) * 0.1)
    y_lo, y_hi = y_lo - pad, y_hi + pad
    d.text((8, 6), title, fill=(0, 0, 0), font=font)

    def panel(x0: int, key: Any, label: str) -> None:
        pts = [(key(r), r["metrics"].get("value")) for r in results]
        xs = [x for x, y in pts if x is not None and y is not None]
        x_hi = (max(xs) if xs else 1.0) * 1.08 or 1.0
        left, right, bottom = x0 + m, x0 + pw - 16, H - m - 30
        d.rectangle((left, top, right, bottom), outline=(0, 0, 0))
        for i in range(6):
            v = y_lo + (y_hi - y_lo) * i / 5
            y = bottom - (bottom - top) * i / 5
            d.line((left - 4, y, left, y), fill=(0, 0, 0))
            d.text((x0 + 6, y - 7), f"{v:.1f}", fill=(0, 0, 0), font=font)
        for i in range(6):
            v = x_hi * i / 5
            x = left + (right - left) * i / 5
            d.line((x, bottom, x, bottom + 4), fill=(0, 0, 0))
            d.text((x - 10, bottom + 6), f"{v:.2f}" if x_hi < 5 else f"{v:.0f}", fill=(0, 0, 0), font=font)
        d.text(((left + right) // 2 - 6 * len(label) // 2, bottom + 24), label, fill=(0, 0, 0), font=font)

        def xy(x: float, y: float) -> tuple[float, float]:
            return left + (right - left) * x / x_hi, bottom - (bottom - top) * (y - y_lo) / (y_hi - y_lo)

        for i, meth in enumerate(methods):
            c = PALETTE[i % len(PALETTE)]
            line = sorted((key(r), r["metrics"]["value"]) for r in results if r["method"] == meth
                          and key(r) is not None and r["metrics"].get("value") is not None)
            pix = [xy(x, y) for x, y in line]
            if len(pix) > 1:
                d.line(pix, fill=c, width=2)
            for x, y in pix:
                d.ellipse((x - 4, y - 4, x + 4, y + 4), fill=c)
            if meth == "unpruned" and len(pix) == 1:  # the reference: a dotted line across the panel
                for x in range(left, right, 8):
                    d.line((x, pix[0][1], x + 3, pix[0][1]), fill=c)

    x = 8
    for i, meth in enumerate(methods):  # the legend, one row under both panels
        d.rectangle((x, H - 22, x + 10, H - 12), fill=PALETTE[i % len(PALETTE)])
        d.text((x + 14, H - 24), meth, fill=(0, 0, 0), font=font)
        x += 24 + 7 * len(meth)

    panel(0, lambda r: (r.get("tokens") or {}).get("stage3_layer_averaged"), "layer-averaged visual tokens")
    panel(pw, lambda r: (r.get("flops") or {}).get("ratio"), "FLOPs ratio vs unpruned")
    from meteor_cli.artifacts import atomic_path

    with atomic_path(path, suffix=".tmp.png") as tmp:
        im.save(tmp, format="PNG")


__all__ = ["BUILTIN_METHODS", "FLOPS_TEXT_TOKENS", "ModelShape", "build_setting", "build_settings",
           "calibrate_meteor", "fastv_ratio", "fastv_setting", "flops_for", "known_methods", "meteor_budgets",
           "meteor_stage12", "model_shape", "parse_budgets", "parse_methods", "pdrop_ratio", "plot_sweep", "policy_stage",
           "ranks_from_shape", "single_layer_count"]
