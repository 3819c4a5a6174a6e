"""``meteor infer``: answer questions about images with the pruned model.

    meteor infer --model ckpt/ --image cat.png --prompt "What animal is this?"
    meteor infer --model ckpt/ --questions eval/questions.jsonl --image-root synthvqa --out answers.jsonl \\
                 --allocation allocation.json --prune-llm prune-llm.json

Answers are LLaVA-format JSONL (``question_id``, ``prompt``, ``text``, ``model_id``, ``metadata``
with the tokens kept at each stage). ``<image>`` in a prompt marks where the image goes; without
it the image comes first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from meteor_cli.cli.common import Run, meteor_command, stage1_method_for
from meteor_cli.errors import UsageError


@meteor_command("infer", uses_device=True)
def main(
    model: Annotated[str | None, typer.Option("--model", help="Checkpoint directory, preset or config JSON.")] = None,
    image: Annotated[list[Path] | None, typer.Option("--image", help="Image file (repeat for several).")] = None,
    prompt: Annotated[str | None, typer.Option("--prompt", help="The question; `<image>` marks where the image goes.")] = None,
    questions: Annotated[Path | None, typer.Option("--questions", help="LLaVA question file (JSONL) instead of --image/--prompt.")] = None,
    image_root: Annotated[Path | None, typer.Option("--image-root", help="Image directory for --questions (default: its directory).")] = None,
    allocation: Annotated[Path | None, typer.Option("--allocation", help="Stage 1–2 budgets (allocation artifact).")] = None,
    prune_llm: Annotated[Path | None, typer.Option("--prune-llm", help="Stage-3 settings (prune-llm artifact).")] = None,
    stage1_method: Annotated[str | None, typer.Option(
        "--stage1-method", help="Stage-1 policy (e.g. prumerge+; `meteor list policies`) instead of the allocation's.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Longest answer.")] = 128,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="0 = greedy decoding.")] = 0.0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Questions per batch.")] = 1,
    out: Annotated[Path, typer.Option("--out", "-o", help="Answers file (JSONL, `-` = stdout).")] = Path("-"),
    run: Run = None,  # type: ignore[assignment]
) -> None:
    """Generate answers for images and prompts, with METEOR's pruning at all three stages."""
    from meteor_cli.artifacts import atomic_write, read_artifact
    from meteor_cli.data.llava import iter_json_records
    from meteor_cli.eval.runner import install_pruning, run_questions
    from meteor_cli.model.checkpoint import load_model

    if model is None:
        raise UsageError("--model is required")
    if questions is not None:
        qs = list(iter_json_records(questions))
        root = image_root or questions.parent
    elif image and prompt:
        qs = [{"question_id": i, "image": str(p.resolve()), "text": prompt} for i, p in enumerate(image)]
        root = Path("/")
    else:
        raise UsageError("give --image and --prompt, or --questions", "e.g. --image cat.png --prompt 'What is shown?'")
    for p in image or []:
        if not p.is_file():
            from meteor_cli.errors import InputNotFoundError

            raise InputNotFoundError(f"--image {p} does not exist")
    alloc = read_artifact(allocation, "meteor.allocation", what="--allocation").body if allocation else None
    method1 = stage1_method_for(alloc, stage1_method)
    s3 = read_artifact(prune_llm, "meteor.prune-llm", what="--prune-llm").body if prune_llm else None
    run.seed_everything()
    vlm = load_model(model, run.device.torch, seed=run.seed)
    stage3 = install_pruning(vlm, alloc, s3, seed=run.seed, stage1_method=method1)
    with run.progress(total=len(qs), desc="infer", unit="q") as bar:
        rows = run_questions(vlm, qs, root, stage3=stage3, batch_size=batch_size, max_new_tokens=max_new_tokens,
                             temperature=temperature, progress=bar.update)
    lines = [{"question_id": r["question_id"], "prompt": r["prompt"], "text": r["text"], "model_id": model,
              "metadata": {"visual_tokens": r["visual_tokens"], "per_encoder": r["per_encoder"], "stage3": r["stage3"],
                           "seconds": r["seconds"]}} for r in rows]
    text = "".join(json.dumps(x) + "\n" for x in lines)
    if str(out) == "-" and not run.json:
        typer.echo(text, nl=False)
        return
    if str(out) != "-":
        atomic_write(out, text)
    run.emit({"answers": lines, "out": str(out)}, lambda: typer.echo(f"wrote {len(lines)} answers to {out}"))
