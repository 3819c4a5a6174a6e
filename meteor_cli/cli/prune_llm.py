"""``meteor prune-llm``: Stage-3 settings — instance-adaptive, text-guided pruning in the LLM.

    meteor prune-llm --model ckpt/ --layers 4,12,20 --heads 5 --lambda 50 --out prune-llm.json
    meteor prune-llm --model ckpt/ --calibrate --data dev.json --target-tokens 242 --out prune-llm.json
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meteor_cli.cli.common import Run, meteor_command, not_built


@meteor_command("prune-llm", uses_device=True)
def main(
    model: Annotated[str | None, typer.Option("--model", help="Checkpoint directory, preset or config JSON.")] = None,
    method: Annotated[str, typer.Option(
        "--method", help="Stage-3 policy: meteor, fixed, all-heads, fastv, pdrop (`meteor list policies`).")] = "meteor",
    layers: Annotated[str | None, typer.Option(
        "--layers", help="0-based LLM layers to prune before, comma-separated [default: round(L·{4,12,20}/32)].")] = None,
    heads: Annotated[int, typer.Option("--heads", min=1, help="Top-k attention heads used for scoring.")] = 5,
    lam: Annotated[float, typer.Option("--lambda", help="Budget scale λ: larger keeps more tokens.")] = 50.0,
    calibrate: Annotated[bool, typer.Option(
        "--calibrate", help="Fit the scale c on --data so the layer-averaged token count hits --target-tokens.")] = False,
    data: Annotated[Path | None, typer.Option("--data", help="Calibration data (LLaVA format).")] = None,
    image_root: Annotated[Path | None, typer.Option("--image-root", help="Image directory for --data.")] = None,
    target_tokens: Annotated[float | None, typer.Option(
        "--target-tokens", help="Layer-averaged visual tokens to calibrate for.")] = None,
    count: Annotated[int, typer.Option("--count", min=1, help="Calibration samples.")] = 64,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output prune-llm artifact (`-` = stdout).")] = Path("prune-llm.json"),
    run: Run = None,  # type: ignore[assignment]
) -> None:
    """Choose (and optionally calibrate) Stage-3 pruning inside the LLM."""
    raise not_built("prune-llm", "Stage-3 pruning inside the LLM", 6)
