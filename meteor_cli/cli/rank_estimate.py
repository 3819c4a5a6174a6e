"""``meteor rank-estimate``: Stage-1 calibration — the rank of each encoder's feature maps.

Runs every encoder unpruned on a small, seeded sample of the training data (the paper uses
0.1 % of LLaVA-665k) and records the mean rank of its feature map at every pruning point.
``meteor allocate`` turns the result into per-encoder token budgets.

    meteor rank-estimate --model tiny --data train.json --image-root images/ --out ranks.json
    # SLURM array, one shard per task, then merge:
    meteor rank-estimate ... --num-chunks 8 --chunk-idx $SLURM_ARRAY_TASK_ID --out ranks.$SLURM_ARRAY_TASK_ID.json
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from meteor_cli.cli.common import Run, meteor_command, not_built


class RankMethod(str, Enum):
    nuclear = "nuclear"
    hrank = "hrank"
    matrix_rank = "matrix-rank"


@meteor_command("rank-estimate", uses_device=True)
def main(
    model: Annotated[str | None, typer.Option(
        "--model", help="Model: a preset name (`meteor list presets`), a checkpoint directory or a config JSON.")] = None,
    data: Annotated[Path | None, typer.Option(
        "--data", help="LLaVA-format instruction data (JSON list or JSONL with `image` and `conversations`).")] = None,
    image_root: Annotated[Path | None, typer.Option(
        "--image-root", help="Directory the records' `image` paths are relative to [default: the data file's directory].")] = None,
    sample: Annotated[float, typer.Option(
        "--sample", min=0.0, max=1.0, help="Fraction of the image records to use (0.001 = the paper's 0.1 %).")] = 0.001,
    count: Annotated[int | None, typer.Option(
        "--count", min=1, help="Use exactly this many records instead of --sample.")] = None,
    method: Annotated[RankMethod, typer.Option(
        "--method", help="Rank measure: nuclear (normalised nuclear norm), hrank, matrix-rank.")] = RankMethod.nuclear,
    grid: Annotated[int, typer.Option(
        "--grid", min=1, help="Common grid (side) every feature map is resampled to before measuring.")] = 32,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")] = 8,
    num_chunks: Annotated[int, typer.Option("--num-chunks", min=1, help="Split the sample into this many shards.")] = 1,
    chunk_idx: Annotated[int, typer.Option("--chunk-idx", min=0, help="Which shard this process computes (0-based).")] = 0,
    max_failed: Annotated[float, typer.Option(
        "--max-failed", min=0.0, max=1.0, help="Fail when more than this fraction of images cannot be read.")] = 0.01,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output ranks artifact (`-` = stdout).")] = Path("ranks.json"),
    run: Run = None,  # type: ignore[assignment]
) -> None:
    """Estimate the rank of each encoder's feature maps at every pruning point (Stage 1)."""
    raise not_built("rank-estimate", "Stage-1 rank estimation", 4)
