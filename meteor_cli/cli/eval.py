"""``meteor eval``: accuracy, tokens kept per stage and latency on a benchmark.

    meteor eval --model ckpt/ --benchmark synthvqa --data synthvqa --out metrics.json
    meteor eval --model ckpt/ --data synthvqa --allocation allocation.json --prune-llm prune-llm.json --out m.json

Writes ``metrics.json`` (``meteor.metrics/v1``: scores, mean tokens per stage, seconds per
sample, the settings used) and ``samples.jsonl`` (one line per question: output, correctness,
tokens per encoder after Stage 2, Stage-3 counts per layer, time). Generation is greedy with a
KV cache; Stage 3 prunes once at prefill (static).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from meteor_cli.cli.common import Run, meteor_command, stage1_method_for
from meteor_cli.errors import InvalidInputError, UsageError


@meteor_command("eval", uses_device=True)
def main(
    model: Annotated[str | None, typer.Option("--model", help="Checkpoint directory, preset or config JSON.")] = None,
    benchmark: Annotated[str, typer.Option("--benchmark", help="Benchmark name (`meteor list benchmarks`).")] = "synthvqa",
    data: Annotated[Path | None, typer.Option("--data", help="Benchmark directory (holding eval/questions.jsonl).")] = None,
    image_root: Annotated[Path | None, typer.Option(
        "--image-root", help="Image directory (default: the benchmark directory).")] = None,
    allocation: Annotated[Path | None, typer.Option("--allocation", help="Stage 1–2 budgets (allocation artifact).")] = None,
    prune_llm: Annotated[Path | None, typer.Option("--prune-llm", help="Stage-3 settings (prune-llm artifact).")] = None,
    stage1_method: Annotated[str | None, typer.Option(
        "--stage1-method", help="Stage-1 policy (e.g. prumerge+; `meteor list policies`) instead of the allocation's.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Questions per batch.")] = 1,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Longest answer.")] = 16,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Evaluate only the first N questions.")] = None,
    num_chunks: Annotated[int, typer.Option("--num-chunks", min=1, help="Split the questions into this many shards.")] = 1,
    chunk_idx: Annotated[int, typer.Option("--chunk-idx", min=0, help="Which shard this process evaluates.")] = 0,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output metrics artifact (`-` = stdout).")] = Path("metrics.json"),
    samples_out: Annotated[Path | None, typer.Option(
        "--samples-out", help="Per-sample outputs (JSONL) (default: samples.jsonl next to --out).")] = None,
    run: Run = None,  # type: ignore[assignment]
) -> None:
    """Evaluate a model on a benchmark, with any combination of the three pruning stages."""
    import math

    from meteor_cli.artifacts import atomic_write, make_artifact, read_artifact, write_artifact
    from meteor_cli.eval.runner import install_pruning, run_questions
    from meteor_cli.model.checkpoint import load_model
    from meteor_cli.registry import BENCHMARKS, load_builtins_and_plugins

    if model is None or data is None:
        raise UsageError("--model and --data are required", "e.g. --model ckpt/ --data synthvqa")
    load_builtins_and_plugins()
    bench = BENCHMARKS.get(benchmark)()
    alloc = read_artifact(allocation, "meteor.allocation", what="--allocation") if allocation else None
    method1 = stage1_method_for(alloc.body if alloc else None, stage1_method)
    s3 = read_artifact(prune_llm, "meteor.prune-llm", what="--prune-llm") if prune_llm else None
    questions, answers = bench.load(data)
    if chunk_idx >= num_chunks:
        raise UsageError(f"--chunk-idx {chunk_idx} must be below --num-chunks {num_chunks}")
    if not questions:
        raise InvalidInputError(f"--data {data}: the {benchmark} benchmark there has no questions",
                                "check --data (an empty or wrong file)")
    size = math.ceil(len(questions) / num_chunks)
    n_all, questions = len(questions), questions[chunk_idx * size:(chunk_idx + 1) * size][:limit]
    if not questions:
        raise UsageError(f"--chunk-idx {chunk_idx} of --num-chunks {num_chunks} selects no question "
                         f"({n_all} in all, {size} per shard)", f"use at most {math.ceil(n_all / size)} shards")
    run.seed_everything()
    vlm = load_model(model, run.device.torch, seed=run.seed)
    stage3 = install_pruning(vlm, alloc.body if alloc else None, s3.body if s3 else None, seed=run.seed,
                             stage1_method=method1)
    with run.progress(total=len(questions), desc=f"eval {benchmark}", unit="q") as bar:
        rows = run_questions(vlm, questions, image_root or Path(data), stage3=stage3, batch_size=batch_size,
                             max_new_tokens=max_new_tokens, progress=bar.update)
    scores = bench.score(answers, {r["question_id"]: r["text"] for r in rows}, missing="skip")
    correct = {s.get("qid"): s.get("correct", s.get("score")) for s in scores.get("per_sample", [])}
    for r in rows:
        r["correct"] = correct.get(r["question_id"])
    n = len(rows)
    tokens = {
        "stage2_visual": sum(r["visual_tokens"] for r in rows) / n,
        "stage3_layer_averaged": sum(r["stage3"]["layer_averaged"] for r in rows) / n,
        "per_encoder": {k: sum(r["per_encoder"][k] for r in rows) / n for k in rows[0]["per_encoder"]},
    }
    body = {
        "benchmark": benchmark, "n": n, "model": model,
        "metrics": {k: v for k, v in scores.items() if k != "per_sample"},
        "tokens": tokens, "latency": {"seconds_per_sample": sum(r["seconds"] for r in rows) / n,
                                      "batch_size": batch_size, "device": str(run.device)},
        "settings": {"allocation": alloc.body if alloc else None, "stage1_method": method1,
                     "prune_llm": s3.body if s3 else None,
                     "generation": {"greedy": True, "max_new_tokens": max_new_tokens, "kv_cache": True,
                                    "stage3": "static (pruned once at prefill)"},
                     "num_chunks": num_chunks, "chunk_idx": chunk_idx, "limit": limit},
    }
    inputs = [p for p in (allocation, prune_llm) if p is not None]
    art = make_artifact("meteor.metrics", body, inputs=inputs)
    samples_path = samples_out or (out.with_name("samples.jsonl") if str(out) != "-" else Path("samples.jsonl"))
    atomic_write(samples_path, "".join(json.dumps(r) + "\n" for r in rows))
    write_artifact(out, art)

    def human() -> None:
        fam = scores.get("families", {})
        typer.echo(f"{benchmark}: mean {scores.get('mean', scores.get('value', 0)):.1f} over {n} questions")
        for name, f in fam.items():
            typer.echo(f"  {name:<14} {f.get('accuracy', 0):5.1f}")
        typer.echo(f"visual tokens into the LLM {tokens['stage2_visual']:.1f}, layer-averaged "
                   f"{tokens['stage3_layer_averaged']:.1f}; {body['latency']['seconds_per_sample'] * 1000:.0f} ms/sample")
        if str(out) != "-":
            typer.echo(f"wrote {out} and {samples_path}")

    run.emit(art.to_dict(), human, stdout_used=str(out) == "-")
