"""``meteor flops``: FLOPs per component (encoders, projectors, LLM prefill/decode), with its formula.

    meteor flops --model eagle-x4 --allocation allocation.json --prune-llm prune-llm.json --out flops.json
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from meteor_cli.cli.common import Run, meteor_command, not_built


class Convention(str, Enum):
    fastv = "fastv"
    macs = "macs"
    flops = "flops"


@meteor_command("flops", uses_device=True)
def main(
    model: Annotated[str | None, typer.Option("--model", help="Preset, checkpoint directory or config JSON.")] = None,
    allocation: Annotated[Path | None, typer.Option("--allocation", help="Stage 1–2 budgets (allocation artifact).")] = None,
    prune_llm: Annotated[Path | None, typer.Option("--prune-llm", help="Stage-3 settings (prune-llm artifact).")] = None,
    convention: Annotated[Convention, typer.Option(
        "--convention", help="fastv (the FastV paper's per-layer formula), macs (1 multiply-add = 1), flops (= 2).")] = Convention.fastv,
    text_tokens: Annotated[int, typer.Option("--text-tokens", min=0, help="Text tokens in the prompt.")] = 64,
    new_tokens: Annotated[int, typer.Option("--new-tokens", min=0, help="Generated tokens (decode cost).")] = 0,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output flops artifact (`-` = stdout).")] = Path("flops.json"),
    run: Run = None,  # type: ignore[assignment]
) -> None:
    """Count FLOPs per component of the pruned and unpruned model, stating the convention."""
    raise not_built("flops", "FLOP counting")
