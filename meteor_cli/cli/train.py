"""``meteor train``: train or fine-tune a multi-encoder VLM with Stage 1–2 pruning in the loop.

    meteor train --model tiny --data synth/train.json --image-root synth --out ckpt/tiny
    torchrun --nproc-per-node 2 -m meteor_cli train ...     # DDP (gloo on CPU, nccl/hccl on GPU/NPU)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meteor_cli.cli.common import Run, meteor_command, not_built


@meteor_command("train", uses_device=True)
def main(
    model: Annotated[str | None, typer.Option(
        "--model", help="Start from: a preset name, a config JSON or a checkpoint directory.")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="LLaVA-format training data (JSON or JSONL).")] = None,
    image_root: Annotated[Path | None, typer.Option(
        "--image-root", help="Directory the records' `image` paths are relative to [default: the data file's directory].")] = None,
    allocation: Annotated[Path | None, typer.Option(
        "--allocation", help="Allocation artifact: train with Stage 1–2 pruning active (METEOR's training phase).")] = None,
    epochs: Annotated[float, typer.Option("--epochs", min=0.0, help="Passes over the data.")] = 1.0,
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=1, help="Stop after this many optimizer steps.")] = None,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="Peak learning rate (AdamW, cosine schedule).")] = 2e-5,
    warmup: Annotated[float, typer.Option("--warmup", min=0.0, max=1.0, help="Warm-up fraction of the steps.")] = 0.03,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Samples per process per micro-batch.")] = 4,
    grad_accum: Annotated[int, typer.Option("--grad-accum", min=1, help="Micro-batches per optimizer step.")] = 1,
    freeze: Annotated[str, typer.Option(
        "--freeze", help="Comma-separated parts to freeze: encoders, projectors, llm (empty = train all).")] = "",
    save_every: Annotated[int, typer.Option("--save-every", min=0, help="Checkpoint every N steps (0 = only at the end).")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint in --out.")] = False,
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint directory.")] = Path("checkpoints/meteor"),
    run: Run = None,  # type: ignore[assignment]
) -> None:
    """Train a multi-encoder VLM, with METEOR's Stage 1–2 pruning when --allocation is given."""
    raise not_built("train", "the training loop", 7)
