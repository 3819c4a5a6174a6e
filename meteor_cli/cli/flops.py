"""``meteor flops``: FLOPs per component (encoders, projectors, LLM prefill/decode), with its formula.

    meteor flops --model tiny
    meteor flops --model ckpt/ --allocation allocation.json --prune-llm prune-llm.json --convention fastv

Counts are analytic (from the config alone: no module is built, so ``--model eagle-x4`` costs
nothing; cross-checked against ``torch.utils.flop_counter`` in the tests). Each encoder is counted
by the adapter registered for its family (``meteor_cli.flops.encoder_macs``: ViT/CLIP/SigLIP
blocks, EVA-02 and Pix2Struct with gated three-matrix MLPs, SAM's padded windows and neck,
ConvNeXt's stages). Stage-1 budgets shrink the blocks after each pruning point (SAM and ConvNeXt
are pruned only at their output, so their cost does not change); Stage 3 uses the schedule's kept
counts (``fixed``, ``fastv``, ``pdrop``), the measured per-layer means of a calibrated ``meteor``
schedule, or ``--stage3-kept``.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from meteor_cli.cli.common import Run, meteor_command
from meteor_cli.errors import UsageError


class Convention(str, Enum):
    fastv = "fastv"
    macs = "macs"
    flops = "flops"


def stage3_counts(s3: dict[str, Any], n: int, override: list[float] | None) -> tuple[list[int], list[float]]:
    """Pruning layers and visual tokens kept after each, for a prune-llm body and n input tokens."""
    layers = list(s3["layers"])
    if override is not None:
        if len(override) != len(layers):
            raise UsageError(f"--stage3-kept has {len(override)} values for layers {layers}")
        return layers, override
    method = s3["method"]
    if method in ("fixed", "all-heads"):
        return layers, [min(n, round(v * n) if isinstance(v, float) and v <= 1 else v) for v in s3["keep"]]
    if method == "fastv":
        return layers, [max(1, round(n * (1 - s3["r"])))]
    if method == "pdrop":
        return layers, [max(1, int(n * r)) for r in s3["ratios"]]
    cal = (s3.get("calibration") or {}).get("per_layer_mean")
    if cal:
        return layers, list(cal)
    raise UsageError("a meteor Stage-3 schedule keeps a different count per input",
                     "calibrate it (`meteor prune-llm --calibrate`) or give the expected counts with --stage3-kept")


def count(vlm_cfg: Any, llm_cfg: dict[str, Any], alloc: dict[str, Any] | None, s3: dict[str, Any] | None, convention: str,
          text: int, new_tokens: int, stage3_kept: list[float] | None) -> dict[str, Any]:
    from meteor_cli import flops as F
    from meteor_cli.pruning.schedule import tokens_per_layer

    rep = F.FlopReport(convention)
    d_llm = llm_cfg["hidden_size"]
    final: dict[str, int] = {}
    for e in vlm_cfg.encoders:
        keep = alloc["stage1"]["encoders"][e.name]["keep"] if alloc else None
        output_only = set(e.prune_points or []) == {e.depth - 1}
        rep.add(f"encoder/{e.name}", F.encoder_macs(e, keep, convention=convention),
                "pruned only on its final map: no saving inside" if output_only else None)
        final[e.name] = int(F.stage1_tokens(e.num_tokens, e.depth, e.prune_points or [], keep)[1])
    if vlm_cfg.fusion == "post-projection":
        for e in vlm_cfg.encoders:
            rep.add(f"projector/{e.name}", F.projector_macs(final[e.name], e.width, d_llm, convention=convention))
        n_vis = sum(final.values())
    else:
        n_vis = vlm_cfg.grid ** 2
        rep.add("projector/fused", F.projector_macs(n_vis, sum(e.width for e in vlm_cfg.encoders), d_llm, convention=convention))
    if alloc:
        n_vis = min(n_vis, int(alloc["stage2"]["keep"]))
    dims = F.LLMDims.from_hf_config(llm_cfg)
    if s3:
        layers, kept = stage3_counts(s3, n_vis, stage3_kept)
        schedule = tokens_per_layer(n_vis, layers, kept, dims.layers)
    else:
        schedule = [float(n_vis)] * dims.layers
    rep.add("llm/prefill", F.llm_prefill(dims, text, schedule, convention=convention))
    if new_tokens:
        rep.add("llm/decode", F.llm_decode(dims, [text + v for v in schedule], new_tokens, convention=convention))
    out = rep.to_json()
    out["visual_tokens"] = {"into_llm": n_vis, "layer_averaged": sum(schedule) / len(schedule), "per_encoder": final}
    out["text_tokens"], out["new_tokens"] = text, new_tokens
    return out


@meteor_command("flops")
def main(
    model: Annotated[str | None, typer.Option("--model", help="Preset, checkpoint directory or config JSON.")] = None,
    allocation: Annotated[Path | None, typer.Option("--allocation", help="Stage 1–2 budgets (allocation artifact).")] = None,
    prune_llm: Annotated[Path | None, typer.Option("--prune-llm", help="Stage-3 settings (prune-llm artifact).")] = None,
    convention: Annotated[Convention, typer.Option(
        "--convention", help="fastv (the FastV paper's per-layer formula), macs (1 multiply-add = 1), flops (= 2).")] = Convention.fastv,
    text_tokens: Annotated[int, typer.Option("--text-tokens", min=0, help="Text tokens in the prompt.")] = 64,
    new_tokens: Annotated[int, typer.Option("--new-tokens", min=0, help="Generated tokens (decode cost).")] = 0,
    stage3_kept: Annotated[str | None, typer.Option(
        "--stage3-kept", help="Expected visual tokens kept after each Stage-3 layer, comma-separated.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output flops artifact (`-` = stdout).")] = None,
    run: Run = None,  # type: ignore[assignment]
) -> None:
    """Count FLOPs per component of the pruned and unpruned model, stating the convention."""
    from meteor_cli.artifacts import make_artifact, read_artifact, write_artifact
    from meteor_cli.model.checkpoint import load_model_config

    if model is None:
        raise UsageError("--model is required", "e.g. --model tiny")
    cfg = load_model_config(model).validate()
    alloc = read_artifact(allocation, "meteor.allocation", what="--allocation").body if allocation else None
    if alloc is not None:
        from meteor_cli.pruning.allocation import check_allocation_fits

        check_allocation_fits(alloc, {e.name: e for e in cfg.encoders}, name=str(allocation))
    s3 = read_artifact(prune_llm, "meteor.prune-llm", what="--prune-llm").body if prune_llm else None
    kept = [float(x) for x in stage3_kept.split(",")] if stage3_kept else None
    body = count(cfg, cfg.llm.resolved_hf_config(), alloc, s3, convention.value, text_tokens, new_tokens, kept)
    unpruned = count(cfg, cfg.llm.resolved_hf_config(), None, None, convention.value, text_tokens, new_tokens, None)
    body["unpruned_total"] = unpruned["total"]
    body["ratio"] = body["total"] / unpruned["total"]
    if out is not None:
        inputs = [p for p in (allocation, prune_llm) if p is not None]
        write_artifact(out, make_artifact("meteor.flops", body, inputs=inputs))

    def human() -> None:
        unit = "MACs" if convention is not Convention.flops else "FLOPs"
        typer.echo(f"convention {convention.value}: {body['formula']}")
        for k, v in body["components"].items():
            typer.echo(f"  {k:<22} {v / 1e9:12.4f} G{unit}")
        typer.echo(f"  {'total':<22} {body['total'] / 1e9:12.4f} G{unit}  ({body['ratio']:.1%} of unpruned "
                   f"{body['unpruned_total'] / 1e9:.4f}); visual tokens into the LLM {body['visual_tokens']['into_llm']}, "
                   f"layer-averaged {body['visual_tokens']['layer_averaged']:.1f}")

    run.emit(body, human, stdout_used=out is not None and str(out) == "-")
