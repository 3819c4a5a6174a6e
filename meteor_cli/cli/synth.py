"""``meteor synth``: write the SynthVQA benchmark (training and evaluation sets, LLaVA format).

    meteor synth --out synthvqa --train 20000 --eval 800 --seed 0 --image-size 128
    meteor inspect synthvqa        # lists the files; synthvqa/synthvqa.json is the manifest

Same seed and Pillow version → byte-identical files. See ``meteor_cli/data/synthvqa.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meteor_cli.cli.common import Run, meteor_command


@meteor_command("synth")
def main(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to create.")] = Path("synthvqa"),
    train: Annotated[int, typer.Option("--train", min=0, help="Training samples (train.json).")] = 2000,
    eval_: Annotated[int, typer.Option("--eval", min=0, help="Evaluation questions (eval/questions.jsonl).")] = 400,
    image_size: Annotated[int, typer.Option("--image-size", min=48, help="Image side in pixels.")] = 128,
    families: Annotated[str, typer.Option(
        "--families", help="Comma-separated task families: general, hallucination, ocr, chart.")] = "general,hallucination,ocr,chart",
    min_objects: Annotated[int, typer.Option("--min-objects", min=1, help="Fewest shapes per scene.")] = 1,
    max_objects: Annotated[int, typer.Option("--max-objects", min=1, help="Most shapes per scene.")] = 6,
    turns: Annotated[int, typer.Option(
        "--turns", min=1, help="Questions per training image (a multi-turn conversation); evaluation stays single.")] = 1,
    ocr_style: Annotated[str, typer.Option(
        "--ocr-style", help="How OCR text is drawn: cells (generator v3: a word or number, one glyph per 16-px cell "
        "of an 8x8 grid), free (v2: small text anywhere) or large (v4: 1-3 bold glyphs of >= 20 px from digits and "
        "ten capitals, one per 32-px cell of a 4x4 grid, asked \"What is written in the image?\"; sized for "
        "the tiny presets, see docs/synthvqa.md). Other families are the same in every style.")] = "cells",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out if it exists.")] = False,
    run: Run = None,  # type: ignore[assignment]
) -> None:
    """Generate the SynthVQA benchmark: general, hallucination (POPE-like), OCR and chart questions."""
    from meteor_cli.data.synthvqa import SynthConfig, generate

    cfg = SynthConfig(image_size=image_size, min_objects=min_objects, max_objects=max_objects,
                      families=tuple(f.strip() for f in families.split(",") if f.strip()), ocr_style=ocr_style)
    with run.progress(total=train + eval_, desc="rendering", unit="img") as bar:
        manifest = generate(out, n_train=train, n_eval=eval_, seed=run.seed, cfg=cfg, overwrite=overwrite, turns=turns,
                            progress=bar.update)
    manifest["path"] = str(out)

    def human() -> None:
        for split, counts in manifest["counts"].items():
            per = ", ".join(f"{k} {v}" for k, v in counts.items())
            typer.echo(f"{split}: {sum(counts.values())} samples ({per})")
        typer.echo(f"wrote {out}/train.json, {out}/eval/questions.jsonl, {out}/eval/answers.jsonl")

    run.emit(manifest, human)
