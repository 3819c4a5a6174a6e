"""``meteor infer``: answer questions about images with the pruned model.

    meteor infer --model ckpt/ --image cat.png --prompt "What animal is this?"
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meteor_cli.cli.common import Run, meteor_command, not_built


@meteor_command("infer", uses_device=True)
def main(
    model: Annotated[str | None, typer.Option("--model", help="Checkpoint directory, preset or config JSON.")] = None,
    image: Annotated[list[Path] | None, typer.Option("--image", help="Image file (repeat for several).")] = None,
    prompt: Annotated[str | None, typer.Option("--prompt", help="The question; `<image>` marks where the image goes.")] = None,
    questions: Annotated[Path | None, typer.Option("--questions", help="LLaVA question file (JSONL) instead of --image/--prompt.")] = None,
    allocation: Annotated[Path | None, typer.Option("--allocation", help="Stage 1–2 budgets (allocation artifact).")] = None,
    prune_llm: Annotated[Path | None, typer.Option("--prune-llm", help="Stage-3 settings (prune-llm artifact).")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Longest answer.")] = 128,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="0 = greedy decoding.")] = 0.0,
    save_kept: Annotated[Path | None, typer.Option("--save-kept", help="Directory for kept-token pictures.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Answers file (JSONL, `-` = stdout).")] = Path("-"),
    run: Run = None,  # type: ignore[assignment]
) -> None:
    """Generate answers for images and prompts, with METEOR's pruning at all three stages."""
    raise not_built("infer", "inference")
