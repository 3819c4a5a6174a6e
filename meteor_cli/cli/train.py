"""``meteor train``: train or fine-tune a multi-encoder VLM with Stage 1–2 pruning in the loop.

    meteor train --model tiny --data synth/train.json --lr 1e-3 --batch-size 32 --out ckpt/tiny
    meteor train --model ckpt/tiny --data synth/train.json --allocation allocation.json --out ckpt/tiny-meteor
    torchrun --nproc-per-node 2 -m meteor_cli train ...     # DDP (gloo on CPU, nccl/hccl on GPU/NPU)

Loss on answer tokens only; AdamW, cosine schedule with warm-up, clipping, accumulation; fp32 on
the CPU, bf16 autocast on CUDA/NPU. Checkpoints in OUT/checkpoints (``--save-every``, the newest
``--keep-last`` kept), the final model in OUT; ``--resume`` continues exactly (see
``meteor_cli/train/loop.py`` for its rules: finished runs, damaged checkpoints, changed settings);
SIGTERM saves and exits with code 75. OUT is locked while a run writes it (``OUT/.meteor.lock``).
From a preset, a word-level tokenizer is built from the training text and saved with the model;
fine-tuning a word-level checkpoint on words it lacks adds them (``--unknown-words``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from meteor_cli.cli.common import (AllowOutsideRoot, Run, Stage1MethodOption, Stage1OptionOption, meteor_command,
                                   stage1_method_for, stage1_options_for)
from meteor_cli.errors import UsageError

PARTS = ("encoders", "projectors", "llm")


@meteor_command("train", uses_device=True)
def main(
    model: Annotated[str | None, typer.Option(
        "--model", help="Start from: a preset name, a config JSON or a checkpoint directory.")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="LLaVA-format training data (JSON or JSONL).")] = None,
    image_root: Annotated[Path | None, typer.Option(
        "--image-root", help="Directory the records' `image` paths are relative to (default: the data file's "
                             "directory; see README \"Image paths\").")] = None,
    allow_outside_root: AllowOutsideRoot = False,
    allocation: Annotated[Path | None, typer.Option(
        "--allocation", help="Allocation artifact: train with Stage 1–2 pruning active (METEOR's training phase).")] = None,
    stage1_method: Stage1MethodOption = None,
    stage1_option: Stage1OptionOption = None,
    fusion: Annotated[str | None, typer.Option(
        "--fusion", help="post-projection: train METEOR's per-encoder projectors, initialised from a pre-projection "
                         "model's shared one (an EAGLE release; docs/eagle.md).", show_default=False)] = None,
    epochs: Annotated[float, typer.Option("--epochs", min=0.0, help="Passes over the data.")] = 1.0,
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=1, help="Stop after this many optimizer steps.")] = None,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="Peak learning rate (AdamW, cosine schedule).")] = 2e-5,
    weight_decay: Annotated[float, typer.Option(
        "--weight-decay", min=0.0, help="AdamW weight decay on weight matrices (not norms, biases, embeddings).")] = 0.0,
    warmup: Annotated[float, typer.Option("--warmup", min=0.0, max=1.0, help="Warm-up fraction of the steps.")] = 0.03,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Samples per process per micro-batch.")] = 4,
    grad_accum: Annotated[int, typer.Option("--grad-accum", min=1, help="Micro-batches per optimizer step.")] = 1,
    freeze: Annotated[str, typer.Option(
        "--freeze", help="Comma-separated parts to freeze: encoders, projectors, llm (empty = train all).")] = "",
    save_every: Annotated[int, typer.Option(
        "--save-every", min=0, help="Checkpoint every N steps (0 = only at the end); see --keep-last.")] = 0,
    keep_last: Annotated[int, typer.Option(
        "--keep-last", min=1, help="Checkpoints to keep in OUT/checkpoints: the newest N; older ones are deleted.")] = 2,
    max_failed: Annotated[float, typer.Option(
        "--max-failed", min=0.0, max=1.0, help="Fail when more than this fraction of images cannot be read.")] = 0.01,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Use only the first N image records.")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue from the newest intact checkpoint in --out (a finished run: nothing to do, exit 0).")] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="With --resume: accept changed settings. Without: start over in an --out that holds a run "
                        "(deletes its checkpoints and log).")] = False,
    unknown_words: Annotated[str, typer.Option(
        "--unknown-words", help="Fine-tuning a word-level model on words it lacks: extend (add them to the "
                                "vocabulary and embeddings), refuse (list them and stop), or ignore (train them as <unk>).")] = "extend",
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint directory.")] = Path("checkpoints/meteor"),
    run: Run = None,  # type: ignore[assignment]
) -> None:
    """Train a multi-encoder VLM, with METEOR's Stage 1–2 pruning when --allocation is given."""
    import torch

    from meteor_cli.artifacts import read_artifact
    from meteor_cli.outdir import DirectoryLock
    from meteor_cli.train.loop import TrainConfig, init_distributed

    if model is None or data is None:
        raise UsageError("--model and --data are required", "e.g. --model tiny --data synthvqa/train.json")
    frozen = [p.strip() for p in freeze.split(",") if p.strip()]
    bad = [p for p in frozen if p not in PARTS]
    if bad:
        raise UsageError(f"--freeze: unknown part(s) {bad}", f"choose from {', '.join(PARTS)}")
    if fusion is not None and fusion not in ("post-projection", "pre-projection"):
        raise UsageError(f"--fusion {fusion!r}: choose from post-projection, pre-projection")
    if unknown_words not in UNKNOWN_WORDS:
        raise UsageError(f"--unknown-words {unknown_words!r}: choose from {', '.join(UNKNOWN_WORDS)}")
    alloc = read_artifact(allocation, "meteor.allocation", what="--allocation") if allocation else None
    method1 = stage1_method_for(alloc.body if alloc else None, stage1_method)
    options1 = stage1_options_for(alloc.body if alloc else None, method1, stage1_option)
    cfg = TrainConfig(lr=lr, weight_decay=weight_decay, warmup=warmup, epochs=epochs, max_steps=max_steps,
                      batch_size=batch_size, grad_accum=grad_accum, save_every=save_every, keep_checkpoints=keep_last,
                      seed=run.seed,
                      autocast="bf16" if run.device.type != "cpu" else None)
    run.seed_everything()
    dist_info = init_distributed(run.device)
    # Lock --out now, before the slow part, so a second run into it fails at once (rank 0 holds it).
    with DirectoryLock(out, command="meteor train", enabled=dist_info.is_main, warn=run.warn):
        _train(run, model, data, image_root, alloc, method1, cfg, dist_info, frozen, max_failed, limit, resume, force,
               unknown_words, out, allow_outside_root, options1, fusion=fusion)


UNKNOWN_WORDS = ("extend", "refuse", "ignore")


def _train(run: Run, model: str, data: Path, image_root: Path | None, alloc: Any, method1: str | None, cfg: Any,
           dist_info: Any, frozen: list[str], max_failed: float, limit: int | None, resume: bool, force: bool,
           unknown_words: str, out: Path, allow_outside_root: bool, options1: dict[str, Any] | None = None,
           *, fusion: str | None = None) -> None:
    import torch

    from meteor_cli.data.llava import image_root_for
    from meteor_cli.train.loop import Trainer
    from meteor_cli.train.vlm_task import VLMTask, extend_vocabulary, load_vlm_data

    from meteor_cli.model.eagle.post_projection import convert_fusion

    vlm = convert_fusion(_build(model, data, run.seed), fusion)
    # A word-level model fine-tuned on words it lacks (a preset's tokenizer is built from this
    # data, so only checkpoints have any). Deterministic, so --resume rebuilds the same rows
    # before the checkpoint's weights overwrite them.
    from meteor_cli.data.llava import iter_json_records
    from meteor_cli.data.tokenizer import texts_of

    added = extend_vocabulary(vlm, list(texts_of(iter_json_records(data))), mode=unknown_words, seed=run.seed)
    if added:
        run.warn(f"added {len(added)} new word(s) to the vocabulary and embeddings: "
                 f"{', '.join(added[:10])}{' …' if len(added) > 10 else ''} (--unknown-words refuse to stop instead)")
    if alloc is not None:  # the allocation's Stage-1 and Stage-2 policies (or --stage1-method)
        from meteor_cli.eval.runner import install_pruning

        install_pruning(vlm, alloc.body, None, seed=run.seed, stage1_method=method1, stage1_options=options1)
    for part in frozen:
        for p in getattr(vlm, part if part != "llm" else "llm").parameters():
            p.requires_grad_(False)
    size = max(e.cfg.image_size for e in vlm.encoders.values())
    with run.progress(desc="loading images", unit="img") as bar:
        dataset = load_vlm_data(data, image_root_for(data, image_root), size, max_failed=max_failed, limit=limit,
                                progress=bar.update, allow_outside_root=allow_outside_root, to_tensor=vlm.image_tensor)
    if dataset.n_failed:
        run.warn(f"{dataset.n_failed} records skipped: unreadable images (first: {dataset.failed[:3]})")
    torch.manual_seed(run.seed)
    trainer = Trainer(vlm, dataset, VLMTask(vlm.tokenizer, vlm.cfg.template), cfg, out, device=run.device,
                      dist_info=dist_info, progress=run.progress, warn=run.warn)
    run.info(f"training {sum(p.numel() for p in trainer.trainable) / 1e6:.2f}M parameters on {len(dataset)} samples, "
             f"{trainer.total_steps} steps of {trainer.global_batch}" + (" with Stage 1-2 pruning" if alloc else ""))
    result = trainer.fit(resume=resume, force=force)
    summary = {"out": str(out), "steps": result.steps, "steps_this_run": result.steps_this_run,
               "total_steps": trainer.total_steps, "samples": result.samples, "final_loss": result.final_loss,
               "seconds": round(result.seconds, 1), "resumed_from": result.resumed_from,
               "already_complete": result.already_complete, "n_skipped": dataset.n_failed, "added_words": added}
    run.emit(summary, lambda: typer.echo(_summary_line(result, out)))


def _summary_line(result: Any, out: Path) -> str:
    """``trained 10 steps (1201-1210 of 1210, resumed from step 1200) in 10s, final loss …``."""
    if result.already_complete:
        return f"already complete: {out} holds the final model of all {result.steps} steps; nothing to do"
    n = result.steps_this_run
    span = f" (steps {result.start_step + 1}-{result.steps}, resumed from step {result.start_step})" \
        if result.start_step else ""
    loss = f", final loss {result.final_loss:.4f}" if result.final_loss is not None else ""
    return f"trained {n} step{'s' if n != 1 else ''}{span} in {result.seconds:.0f}s{loss}; model in {out}"


def _build(spec: str, data: Path, seed: int):
    """A preset gets a tokenizer built from the training text; checkpoints bring their own."""
    import torch

    from meteor_cli.model.checkpoint import checkpoint_dir_of, load_model, load_model_config, require_meteor_model

    require_meteor_model(spec)
    if checkpoint_dir_of(spec) is not None:
        return load_model(spec)
    cfg = load_model_config(spec)
    if cfg.llm.path:
        return load_model(spec, seed=seed)
    from meteor_cli.data.llava import iter_json_records
    from meteor_cli.data.tokenizer import build_word_tokenizer, texts_of
    from meteor_cli.model.llm import TEMPLATES
    from meteor_cli.model.vlm import MultiEncoderVLM

    letters = " ".join("abcdefghijklmnopqrstuvwxyz0123456789")
    tok = build_word_tokenizer(texts_of(iter_json_records(data)),
                               extra_texts=[t for pair in TEMPLATES.values() for t in pair] + [letters])
    cfg.llm.hf_config = {**(cfg.llm.hf_config or {}), "vocab_size": len(tok), "pad_token_id": tok.pad_token_id,
                         "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    torch.manual_seed(seed)
    return MultiEncoderVLM(cfg, tok)
