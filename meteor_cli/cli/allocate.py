"""``meteor allocate``: Stage-1 and Stage-2 token budgets from ``ranks.json``.

Each encoder gets, at each pruning point, a share of that point's total proportional to the
rank of its feature maps (METEOR's rank-guided assignment); the result is exact (sums match),
capped at the tokens an encoder still has, and at least one token per encoder.

    meteor allocate --ranks ranks.json --total 1193 --fusion-keep 576 --out allocation.json
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from meteor_cli.cli.common import Run, meteor_command, not_built


class Strategy(str, Enum):
    rank = "rank"
    average = "average"
    rank_reverse = "rank-reverse"


class Schedule(str, Enum):
    geometric = "geometric"
    explicit = "explicit"


@meteor_command("allocate")
def main(
    ranks: Annotated[Path | None, typer.Option(
        "--ranks", help="Ranks artifact from `meteor rank-estimate` (`-` = stdin).")] = None,
    total: Annotated[int | None, typer.Option(
        "--total", min=1, help="Tokens kept over all encoders after the last Stage-1 point (EAGLE-X4: 1193).")] = None,
    keep_ratio: Annotated[float | None, typer.Option(
        "--keep-ratio", min=0.0, max=1.0, help="Alternative to --total: fraction of the native tokens kept.")] = None,
    fusion_keep: Annotated[int, typer.Option(
        "--fusion-keep", min=1, help="Stage-2 budget: tokens kept after cross-encoder pruning.")] = 576,
    strategy: Annotated[Strategy, typer.Option(
        "--strategy", help="rank (proportional to rank), average (equal shares), rank-reverse (∝ 1/rank).")] = Strategy.rank,
    schedule: Annotated[Schedule, typer.Option(
        "--schedule", help="Per-point totals: geometric from the native count to --total, or explicit (--totals).")] = Schedule.geometric,
    totals: Annotated[str | None, typer.Option(
        "--totals", help="Explicit per-point totals, comma-separated (with --schedule explicit), e.g. 4302,2266,1193.")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="Check the ranks' encoders against this model (preset, checkpoint or config JSON).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output allocation artifact (`-` = stdout).")] = Path("allocation.json"),
    run: Run = None,  # type: ignore[assignment]
) -> None:
    """Turn encoder ranks into per-encoder, per-point token budgets (Stages 1 and 2)."""
    raise not_built("allocate", "rank-guided budget allocation", 4)
