"""Stage-1 token budgets: how many tokens each encoder keeps at each pruning point.

METEOR gives each encoder a share of a point's total proportional to the rank of its feature
maps at that point (the paper's formula ``k_b^l = k_b · r_b^l / Σ_l' r_b^l'``). What the paper
leaves open is made exact here (METEOR-style defaults, docs/method.md §3.4):

* **Totals per point** (A3): geometric from the native token total ``N0`` to the final total
  ``k_P`` — ``k_b = round(N0·ρ^b)`` with ``ρ = (k_P/N0)^(1/P)`` — or an explicit list.
* **Integer budgets** (A4): real shares are floored and the remainder goes to the largest
  fractional parts (ties → the earlier encoder), so every point sums exactly to its total.
* **Caps**: an encoder cannot keep more tokens than it still has (its native count at the first
  point, its previous budget after that). Shares above a cap are clipped and the excess is
  water-filled to the other encoders in proportion to their weights.
* **At least one token** per encoder and point.

Strategies (the supplement's Table 1): ``rank`` (∝ r), ``average`` (equal shares),
``rank-reverse`` (∝ 1/r).

Example — EAGLE-X4's native 1024 + 1024 + 4096 + 2025 = 8169 tokens down to 1193::

    >>> geometric_totals(8169, 1193, 3)
    [4302, 2265, 1193]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from meteor_cli.errors import InvalidInputError, UsageError

STRATEGIES = ("rank", "average", "rank-reverse")


def geometric_totals(n0: int, final: int, points: int = 3) -> list[int]:
    """Per-point totals falling geometrically from ``n0`` to exactly ``final``."""
    if not 1 <= final <= n0:
        raise UsageError(f"--total {final} must be between 1 and the {n0} native tokens")
    rho = (final / n0) ** (1 / points)
    totals = [round(n0 * rho**b) for b in range(1, points)] + [final]
    return [max(t, final) for t in totals]


def check_totals(totals: Sequence[int], n0: int, n_encoders: int) -> list[int]:
    """Validate explicit totals: non-increasing, ≤ n0, ≥ the number of encoders."""
    totals = [int(t) for t in totals]
    if any(b > a for a, b in zip(totals, totals[1:])):
        raise UsageError(f"--totals {totals} must not increase from one point to the next")
    if totals[0] > n0:
        raise UsageError(f"--totals starts at {totals[0]}, more than the {n0} native tokens")
    if totals[-1] < n_encoders:
        raise UsageError(f"--totals ends at {totals[-1]}: every one of the {n_encoders} encoders keeps at least one token")
    return totals


def weights_for(strategy: str, ranks: Mapping[str, float]) -> dict[str, float]:
    """Allocation weights: rank, 1 (average) or 1/rank (rank-reverse)."""
    if strategy not in STRATEGIES:
        raise UsageError(f"unknown strategy {strategy!r}", f"choose from {', '.join(STRATEGIES)}")
    for name, r in ranks.items():
        if not r > 0:
            raise InvalidInputError(f"encoder {name!r} has rank {r}; ranks must be positive",
                                    "regenerate ranks.json with `meteor rank-estimate`")
    if strategy == "rank":
        return dict(ranks)
    if strategy == "average":
        return {n: 1.0 for n in ranks}
    return {n: 1.0 / r for n, r in ranks.items()}


def allocate_point(total: int, weights: Mapping[str, float], caps: Mapping[str, int]) -> dict[str, int]:
    """Split ``total`` tokens over encoders ∝ ``weights``, exactly, within ``caps``, ≥ 1 each.

    >>> allocate_point(10, {"a": 3.0, "b": 1.0}, {"a": 100, "b": 100})
    {'a': 8, 'b': 2}
    >>> allocate_point(10, {"a": 3.0, "b": 1.0}, {"a": 5, "b": 100})   # a capped, excess to b
    {'a': 5, 'b': 5}
    """
    names = list(weights)
    if total > sum(caps[n] for n in names):
        raise UsageError(f"a total of {total} tokens exceeds the {sum(caps[n] for n in names)} the encoders still have",
                         "lower --total / --totals")
    if total < len(names):
        raise UsageError(f"a total of {total} tokens cannot give each of the {len(names)} encoders one token",
                         "raise --total")
    out: dict[str, int] = {}
    active = list(names)
    remaining = total
    while True:  # water-filling: clip shares at their caps, re-share the rest
        wsum = sum(weights[n] for n in active)
        share = {n: remaining * weights[n] / wsum for n in active}
        over = [n for n in active if share[n] > caps[n]]
        if not over:
            break
        for n in over:
            out[n] = caps[n]
            remaining -= caps[n]
            active.remove(n)
    floors = {n: math.floor(share[n]) for n in active}
    left = remaining - sum(floors.values())
    by_fraction = sorted(active, key=lambda n: (-(share[n] - floors[n]), names.index(n)))
    for n in by_fraction[:left]:
        floors[n] += 1
    out.update(floors)
    for n in names:  # at least one token each, taken from the largest budget
        if out[n] == 0:
            donor = max(names, key=lambda m: (out[m], -names.index(m)))
            out[donor] -= 1
            out[n] = 1
    return {n: out[n] for n in names}


def allocate(
    ranks: Mapping[str, Sequence[float]],
    native: Mapping[str, int],
    totals: Sequence[int],
    strategy: str = "rank",
) -> dict[str, list[int]]:
    """Budgets per encoder and point; each point's cap is the encoder's previous budget."""
    points = {len(r) for r in ranks.values()}
    if points != {len(totals)}:
        raise InvalidInputError(f"ranks have {sorted(points)} points per encoder but there are {len(totals)} totals",
                                "give one total per pruning point")
    caps = {n: int(native[n]) for n in ranks}
    keep: dict[str, list[int]] = {n: [] for n in ranks}
    for b, total in enumerate(totals):
        w = weights_for(strategy, {n: float(r[b]) for n, r in ranks.items()})
        got = allocate_point(int(total), w, caps)
        for n, k in got.items():
            keep[n].append(k)
        caps = got
    return keep


def build_allocation(
    ranks_body: Mapping[str, Any],
    *,
    total: int | None = None,
    keep_ratio: float | None = None,
    fusion_keep: int = 576,
    strategy: str = "rank",
    totals: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The body of a ``meteor.allocation/v1`` artifact from a ``meteor.ranks/v1`` body."""
    encoders = ranks_body["encoders"]
    missing = [n for n, e in encoders.items() if not isinstance(e.get("tokens"), int)]
    if missing:
        raise InvalidInputError(f"ranks: encoders {missing} have no native token count ('tokens')",
                                "regenerate ranks.json with `meteor rank-estimate`")
    native = {n: e["tokens"] for n, e in encoders.items()}
    n0 = sum(native.values())
    n_points = {len(e["rank"]) for e in encoders.values()}
    if len(n_points) != 1:
        raise InvalidInputError("ranks: encoders have different numbers of pruning points", "regenerate ranks.json")
    (p,) = n_points
    if totals is not None:
        totals = check_totals(totals, n0, len(encoders))
        if len(totals) != p:
            raise UsageError(f"--totals has {len(totals)} values; the encoders have {p} pruning points")
        if total is not None and total != totals[-1]:
            raise UsageError(f"--total {total} disagrees with the last of --totals ({totals[-1]})")
    else:
        if (total is None) == (keep_ratio is None):
            raise UsageError("give exactly one of --total and --keep-ratio", "e.g. --total 1193 (EAGLE-X4)")
        if keep_ratio is not None and not 0 < keep_ratio <= 1:
            raise UsageError(f"--keep-ratio {keep_ratio} must be in (0, 1]: a ratio of 0 keeps no token",
                             "e.g. --keep-ratio 0.15 keeps 15 % of the native tokens")
        final = total if total is not None else max(len(encoders), round(keep_ratio * n0))  # type: ignore[operator]
        totals = geometric_totals(n0, final, p)
    keep = allocate({n: e["rank"] for n, e in encoders.items()}, native, totals, strategy)
    return {
        "strategy": strategy,
        "rank_method": ranks_body.get("method"),
        "native_tokens": native,
        "stage1": {
            "totals": list(totals),
            "encoders": {n: {"points": list(e["points"]), "keep": keep[n]} for n, e in encoders.items()},
        },
        "stage2": {"keep": int(fusion_keep)},
    }


def check_allocation_fits(allocation: Mapping[str, Any], encoders: Mapping[str, Any], *, name: str = "allocation") -> None:
    """Refuse an allocation that does not fit the model it is applied to, naming the field.

    ``encoders``: name → encoder adapter (``vlm.encoders``) or :class:`~meteor_cli.config.EncoderConfig`.
    Checked: the same encoder names; one budget per pruning point of the encoder; the
    allocation's ``points`` inside the encoder's depth and equal to its pruning points; the
    first budget at most the encoder's native token count (and the allocation's
    ``native_tokens``, when present, equal to it); budgets that never grow.
    """
    enc = allocation["stage1"]["encoders"]
    if sorted(enc) != sorted(encoders):
        raise InvalidInputError(f"{name}: the allocation covers encoders {sorted(enc)} but the model has {sorted(encoders)}",
                                "run `meteor allocate` on ranks estimated with this model")
    native_field = allocation.get("native_tokens") or {}
    for n, e in enc.items():
        model_enc = encoders[n]
        cfg = getattr(model_enc, "cfg", model_enc)
        depth = int(cfg.depth)
        prune_points = list(getattr(model_enc, "prune_points", None) or cfg.prune_points or [])
        native = int(getattr(model_enc, "num_tokens", None) or cfg.num_tokens)
        where = f"{name}: stage1.encoders.{n}"
        keep, points = list(e["keep"]), e.get("points")
        if len(keep) != len(prune_points):
            raise InvalidInputError(f"{where}.keep has {len(keep)} budgets for the encoder's {len(prune_points)} "
                                    f"pruning points {prune_points}", "rerun `meteor allocate` with this model's ranks")
        if points is not None:
            beyond = [p for p in points if p >= depth]
            if beyond:
                raise InvalidInputError(f"{where}.points {points}: block {beyond[0]} is beyond the encoder's depth "
                                        f"({depth} blocks, indices 0..{depth - 1})",
                                        "rerun `meteor rank-estimate` and `meteor allocate` with this model")
            if list(points) != prune_points:
                raise InvalidInputError(f"{where}.points is {list(points)} but the model prunes {n} after blocks "
                                        f"{prune_points}", "rerun `meteor rank-estimate` and `meteor allocate` with this model")
        if n in native_field and native_field[n] != native:
            raise InvalidInputError(f"{name}: native_tokens.{n} is {native_field[n]} but the model's {n} has {native} "
                                    "tokens", "the allocation was made for another model; rerun `meteor allocate`")
        if keep[0] > native:
            raise InvalidInputError(f"{where}.keep starts at {keep[0]} tokens, more than the {native} the encoder has",
                                    "rerun `meteor allocate` with this model's ranks")
        if any(b > a for a, b in zip(keep, keep[1:])):
            raise InvalidInputError(f"{where}.keep {keep} grows from one point to the next",
                                    "budgets must not increase; rerun `meteor allocate`")


__all__ = ["STRATEGIES", "allocate", "allocate_point", "build_allocation", "check_allocation_fits", "check_totals",
           "geometric_totals",
           "weights_for"]
