"""``meteor eval``: accuracy, tokens kept per stage and latency on a benchmark.

    meteor eval --model ckpt/ --benchmark synthvqa --data synth/eval --prune-llm prune-llm.json --out metrics.json
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meteor_cli.cli.common import Run, meteor_command, not_built


@meteor_command("eval", uses_device=True)
def main(
    model: Annotated[str | None, typer.Option("--model", help="Checkpoint directory, preset or config JSON.")] = None,
    benchmark: Annotated[str | None, typer.Option("--benchmark", help="Benchmark name (`meteor list benchmarks`).")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="Benchmark directory or question file.")] = None,
    image_root: Annotated[Path | None, typer.Option("--image-root", help="Image directory for --data.")] = None,
    allocation: Annotated[Path | None, typer.Option("--allocation", help="Stage 1–2 budgets (allocation artifact).")] = None,
    prune_llm: Annotated[Path | None, typer.Option("--prune-llm", help="Stage-3 settings (prune-llm artifact).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Questions per batch.")] = 1,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Evaluate only the first N questions.")] = None,
    num_chunks: Annotated[int, typer.Option("--num-chunks", min=1, help="Split the questions into this many shards.")] = 1,
    chunk_idx: Annotated[int, typer.Option("--chunk-idx", min=0, help="Which shard this process evaluates.")] = 0,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output metrics artifact (`-` = stdout).")] = Path("metrics.json"),
    samples_out: Annotated[Path | None, typer.Option(
        "--samples-out", help="Per-sample outputs (JSONL) [default: next to --out].")] = None,
    run: Run = None,  # type: ignore[assignment]
) -> None:
    """Evaluate a model on a benchmark, with any combination of the three pruning stages."""
    raise not_built("eval", "benchmark evaluation")
