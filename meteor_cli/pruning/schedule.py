"""Layer-averaged visual token counts and the Stage-3 scale calibration.

The "Avg. Tokens" of the supplement's Table 3 is the number of visual tokens averaged over the
LLM's layers, counting the tokens *entering* each layer (docs/method.md §7.3)::

    avg = (1/L) Σ_{layer=0}^{L-1} N(layer)

    >>> layer_averaged_tokens(576, [4, 12, 20], [396, 170, 76], 32)
    242.0

``meteor eval`` and ``meteor flops`` both use :func:`layer_averaged_tokens`;
``meteor prune-llm --calibrate`` uses :func:`calibrate_scale` to fit the scale ``c`` of
``K = c·λ·ΣVAV`` so that the mean of that average over a sample hits a target.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass


def tokens_per_layer(n_input: float, layers: Sequence[int], kept: Sequence[float], num_layers: int) -> list[float]:
    """N(layer) for every layer: ``n_input`` before the first pruning layer, then each kept count."""
    if len(layers) != len(kept):
        raise ValueError(f"{len(layers)} pruning layers but {len(kept)} kept counts")
    out, current, it = [], float(n_input), dict(zip(layers, kept))
    for layer in range(num_layers):
        current = float(it.get(layer, current))
        out.append(current)
    return out


def layer_averaged_tokens(n_input: float, layers: Sequence[int], kept: Sequence[float], num_layers: int) -> float:
    """Visual tokens averaged over the layers (the supplement's "Avg. Tokens")."""
    return sum(tokens_per_layer(n_input, layers, kept, num_layers)) / num_layers


@dataclass
class Calibration:
    scale: float
    achieved: float  # mean layer-averaged tokens at ``scale``
    target: float
    iterations: int

    @property
    def relative_error(self) -> float:
        return abs(self.achieved - self.target) / self.target


def calibrate_scale(measure: Callable[[float], float], target: float, *, tol: float = 0.01,
                    lo: float = 1e-4, hi: float = 1e4, max_iter: int = 40) -> Calibration:
    """Find ``c`` with ``measure(c)`` ≈ ``target`` by bisection in log space.

    ``measure(c)`` is the mean layer-averaged visual token count on the calibration sample with
    scale ``c``; it is non-decreasing in ``c`` (a larger scale keeps more tokens at every layer),
    which is all bisection needs. Stops at relative error ``tol`` or ``max_iter`` evaluations and
    returns the best scale seen.
    """
    best: Calibration | None = None
    f_lo, f_hi = measure(lo), measure(hi)
    if not f_lo <= target <= f_hi:
        return Calibration(lo if target < f_lo else hi, f_lo if target < f_lo else f_hi, target, 2)
    for i in range(max_iter):
        mid = math.sqrt(lo * hi)
        got = measure(mid)
        cand = Calibration(mid, got, target, i + 3)
        if best is None or abs(got - target) < abs(best.achieved - target):
            best = cand
        if best.relative_error <= tol:
            break
        lo, hi = (mid, hi) if got < target else (lo, mid)
    assert best is not None
    return best
