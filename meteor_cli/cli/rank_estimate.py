"""``meteor rank-estimate``: Stage-1 calibration — the rank of each encoder's feature maps.

Runs every encoder unpruned on a small, seeded sample of the training images (the paper uses
0.1 % of LLaVA-665k) and records the mean rank of its feature map at every pruning point. The
sample is drawn from *distinct* images (records that share an image count once), and
``merge`` refuses parts that are not exactly the shards of one run.
``meteor allocate`` turns the result into per-encoder token budgets.

    meteor rank-estimate --model tiny --data train.json --image-root images/ --out ranks.json
    # SLURM array, one shard per task, then merge (exact: same mean and std as one run):
    meteor rank-estimate ... --num-chunks 8 --chunk-idx $SLURM_ARRAY_TASK_ID --out ranks.$SLURM_ARRAY_TASK_ID.json
    meteor rank-estimate merge ranks.*.json --out ranks.json
    # torchrun: one shard per rank, merged by rank 0 into --out
    torchrun --nproc-per-node 2 -m meteor_cli rank-estimate ... --out ranks.json
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from meteor_cli.cli.common import AllowOutsideRoot, Run, meteor_command
from meteor_cli.errors import InvalidInputError, UsageError


class RankMethod(str, Enum):
    nuclear = "nuclear"
    hrank = "hrank"
    matrix_rank = "matrix-rank"


@meteor_command("rank-estimate", uses_device=True)
def main(
    parts: Annotated[list[str] | None, typer.Argument(
        help="`merge PART...` combines shard outputs into --out instead of estimating.", metavar="[merge PART...]",
        show_default=False)] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="Model: a preset name (`meteor list presets`), a checkpoint directory, a config JSON, or a "
        "transformers LLaVA-1.5, LLaVA-NeXT or Qwen2-VL directory (its tower is one encoder, named `vision`; "
        "LLaVA-NeXT's anyres tiles are each one sample; Qwen2-VL's images are resized to its 448x448 reference).")] = None,
    data: Annotated[Path | None, typer.Option(
        "--data", help="LLaVA-format instruction data (JSON list or JSONL with `image` and `conversations`).")] = None,
    image_root: Annotated[Path | None, typer.Option(
        "--image-root", help="Directory the records' `image` paths are relative to (default: the data file's "
                             "directory; see README \"Image paths\").")] = None,
    allow_outside_root: AllowOutsideRoot = False,
    sample: Annotated[float, typer.Option(
        "--sample", min=0.0, max=1.0, help="Fraction of the distinct images to use (0.001 = the paper's 0.1 %).")] = 0.001,
    count: Annotated[int | None, typer.Option(
        "--count", min=1, help="Use exactly this many distinct images instead of --sample.")] = None,
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
    from meteor_cli.artifacts import make_artifact, read_artifact, write_artifact
    from meteor_cli.pruning.estimate import merge_parts

    if parts:
        if parts[0] != "merge" or len(parts) < 2:
            raise UsageError(f"unexpected argument {parts[0]!r}", "the only positional form is: merge PART...")
        arts = [read_artifact(p, "meteor.ranks", what="part") for p in parts[1:]]
        merged = merge_parts([(p, a.body) for p, a in zip(parts[1:], arts)], [a.schema for a in arts])
        art = make_artifact("meteor.ranks", merged, inputs=parts[1:])
        write_artifact(out, art)
        _report(run, art.body, out)
        return
    if model is None or data is None:
        raise UsageError("--model and --data are required", "e.g. --model tiny --data synthvqa/train.json")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:  # torchrun: one shard per rank
        num_chunks, chunk_idx = world, int(os.environ.get("RANK", "0"))
    if chunk_idx >= num_chunks:
        raise UsageError(f"--chunk-idx {chunk_idx} must be below --num-chunks {num_chunks}")
    body, inputs = _estimate(run, model, data, image_root, allow_outside_root, sample, count, method.value, grid,
                             batch_size, num_chunks, chunk_idx)
    n_failed, n_total = body["n_failed"], body["n_images"] + body["n_failed"]
    if world > 1:  # --max-failed judges the whole sample, as one process would, and every rank agrees
        n_failed, n_total = _sum_over_ranks(n_failed, n_total)
    if n_total and n_failed > max_failed * n_total:
        raise InvalidInputError(f"{n_failed} of {n_total} images could not be read "
                                f"(more than --max-failed {max_failed:.2%}); first: {body['failed'][:3]}",
                                "check --image-root, or raise --max-failed")
    if world > 1:
        _torchrun_merge(run, body, inputs, out)
        return
    art = make_artifact("meteor.ranks", body, inputs=inputs)
    write_artifact(out, art)
    _report(run, body, out)


def _estimate(run: Run, model: str, data: Path, image_root: Path | None, allow_outside_root: bool, sample: float,
              count: int | None, method: str, grid: int, batch_size: int, num_chunks: int,
              chunk_idx: int) -> tuple[dict, list[dict]]:
    """The shard's body, and the input references (data file, model directory) with their sha256."""
    from meteor_cli.artifacts import input_ref
    from meteor_cli.data.llava import image_root_for, iter_selected, sample_records
    from meteor_cli.model.checkpoint import load_model
    from meteor_cli.pruning.estimate import estimate_ranks, ids_sha256, model_identity

    run.seed_everything()
    from meteor_cli.model.checkpoint import require_stage1_model

    require_stage1_model(model, "rank-estimate")  # a transformers VLM whose tower has no Stage-1 adapter: named error
    vlm = load_model(model, run.device.torch, seed=run.seed)
    root = image_root_for(data, image_root)
    chosen = sample_records(data, fraction=None if count else sample, count=count, seed=run.seed,
                            distinct_images=True, image_root=root)
    shard = chosen.shard(num_chunks, chunk_idx)
    inputs = [input_ref(data)] + ([input_ref(model)] if Path(model).exists() else [])
    dup = f", {chosen.n_duplicate_images} records repeating an image" if chosen.n_duplicate_images else ""
    run.info(f"rank-estimate: {len(shard.indices)} images (shard {chunk_idx + 1}/{num_chunks} of {len(chosen.indices)} "
             f"sampled from {chosen.population} distinct images; {chosen.n_without_image} text-only records{dup} "
             f"skipped), encoders {', '.join(vlm.encoders)}")
    with run.progress(total=len(shard.indices), desc="rank-estimate", unit="img") as bar:
        body = estimate_ranks(vlm, iter_selected(data, shard.indices), root, method=method, grid=grid,
                              batch_size=batch_size, device=run.device.torch, progress=bar.update,
                              allow_outside_root=allow_outside_root)
    body["n_text_only"] = chosen.n_without_image
    weights = inputs[1]["sha256"] if len(inputs) > 1 else None
    body["sample"] = {
        "data": str(data), "data_sha256": inputs[0]["sha256"], "seed": run.seed,
        "fraction": None if count else sample, "count": count,
        "distinct_images": True, "population_images": chosen.population,
        "duplicate_image_records": chosen.n_duplicate_images,
        "n_sampled": len(chosen.ids), "sample_sha256": ids_sha256(chosen.ids),
        "model": model_identity(model, vlm, weights),
        "ids": shard.ids, "num_chunks": num_chunks, "chunk_idx": chunk_idx,
    }
    return body, inputs


def _sum_over_ranks(*counts: int) -> list[int]:
    """Sum integers over the torchrun ranks (joining the gloo group torchrun set up)."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    t = torch.tensor(counts, dtype=torch.long)
    dist.all_reduce(t)
    return [int(v) for v in t]


def _torchrun_merge(run: Run, body: dict, inputs: list, out: Path) -> None:
    """Every rank writes its part; rank 0 merges them into ``out`` after a barrier."""
    import torch.distributed as dist

    from meteor_cli.artifacts import make_artifact, read_artifact, write_artifact
    from meteor_cli.pruning.estimate import merge_parts

    rank, world = dist.get_rank(), dist.get_world_size()
    part = out.with_name(f".{out.name}.part{rank}")
    write_artifact(part, make_artifact("meteor.ranks", body, inputs=inputs))
    dist.barrier()
    if rank == 0:
        paths = [out.with_name(f".{out.name}.part{r}") for r in range(world)]
        arts = [read_artifact(p, "meteor.ranks") for p in paths]
        merged = merge_parts([(str(p), a.body) for p, a in zip(paths, arts)], [a.schema for a in arts])
        write_artifact(out, make_artifact("meteor.ranks", merged, inputs=inputs))
        for p in paths:
            p.unlink()
        _report(run, merged, out)
    dist.barrier()
    dist.destroy_process_group()


def _report(run: Run, body: dict, out: Path) -> None:
    def human() -> None:
        smp = body.get("sample", {})
        of = f" of {smp['population_images']} distinct" if "population_images" in smp else ""
        typer.echo(f"{body['n_images']} images{of} ({body['n_failed']} unreadable), method {body['method']}, "
                   f"grid {body['grid']}")
        for name, e in body["encoders"].items():
            ranks = ", ".join(f"{r:.4f}±{s:.4f}" for r, s in zip(e["rank"], e["std"]))
            typer.echo(f"  {name:<12} {e['tokens']:>5} tokens  points {e['points']}: {ranks}")
        if str(out) != "-":
            typer.echo(f"wrote {out}")

    run.emit({k: v for k, v in body.items() if k != "failed"}, human, stdout_used=str(out) == "-")
