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
schedule, or ``--stage3-kept``. A calibrated schedule's means were measured on the inputs the
calibration saw: with ``--allocation`` as well they are used as they are only when the calibration
was measured with that allocation; otherwise they are scaled to the tokens the allocation lets into
the LLM (a derivation, said so in ``visual_tokens.stage3_source`` and on stderr).

``--count fvcore`` (or ``both``) also runs one real prefill — a seeded random image and
``--text-tokens`` text tokens, the pruning hooks of all three stages installed — through fvcore's
``FlopCountAnalysis`` and reports it per component next to the analytic count at the same token
counts (in MACs: fvcore counts one multiply-add as one flop), with the relative difference. SDPA,
which fvcore does not count, gets a handle (:data:`meteor_cli.flops.SDPA_NOTE`); fvcore's norms and
pooling, and the pruning policies' own scoring, are reported apart (the analytic count has neither).
Models whose unpruned prefill exceeds :data:`FVCORE_MAX_MACS` are refused (use ``--count analytic``).

A transformers VLM directory (LLaVA-1.5, LLaVA-NeXT, Qwen2-VL) is counted by
:mod:`meteor_cli.model.hf_vlm.flops` on the meta device (no weights read), for one image of
``--image-size``; Stage 3 from ``--prune-llm`` as above; ``--allocation`` on LLaVA-1.5 and
LLaVA-NeXT (the CLIP tower pruned at the three points, only the layers up to
``vision_feature_layer`` run; on LLaVA-NeXT the budgets apply to every anyres tile, and the kept
grid tokens and newlines the LLM gets are estimated: see
:meth:`~meteor_cli.model.hf_vlm.llava_next.LlavaNext.pruned_tokens`) and on Qwen2-VL (the budgets
count merge windows of the image, each 4 patches through every block, exact); ``--count fvcore``
is refused for all of them::

    meteor flops --model llava-v1.6-vicuna-7b-hf/ --image-size 1024x768 --prune-llm fixed-64.json
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from meteor_cli.cli.common import AllocationOption, PruneLLMOption, Run, meteor_command
from meteor_cli.errors import UsageError


#: Largest unpruned model (prefill multiply-adds) ``--count fvcore`` runs: about a minute on a CPU.
FVCORE_MAX_MACS = 2e12


class Count(str, Enum):
    analytic = "analytic"
    fvcore = "fvcore"
    both = "both"


class Convention(str, Enum):
    fastv = "fastv"
    macs = "macs"
    flops = "flops"


def stage3_counts(s3: dict[str, Any], n: int, override: list[float] | None, *, allocation_sha: str | None = None,
                  n_unpruned: int | None = None) -> tuple[list[int], list[float], str]:
    """Pruning layers, visual tokens kept after each, and where those counts come from, for a
    prune-llm body and ``n`` visual tokens entering the LLM.

    A calibrated ``meteor`` schedule's per-layer means are used as measured when the calibration saw
    the same inputs: no ``--allocation`` (``allocation_sha`` None) and none in the calibration, or
    the calibration records this allocation (``calibration.allocation.sha256``). Otherwise they are
    scaled by ``n / n_cal`` (``n_cal``: ``calibration.stage2_visual`` if recorded, else
    ``n_unpruned``), capped at ``n``, and the source says it is derived.
    """
    layers = list(s3["layers"])
    if override is not None:
        if len(override) != len(layers):
            raise UsageError(f"--stage3-kept has {len(override)} values for layers {layers}")
        return layers, override, "given (--stage3-kept)"
    method = s3["method"]
    if method != "meteor" and isinstance(s3.get("keep"), list):  # fixed, all-heads, dart, sparsevlm, plugins
        return layers, [min(n, round(v * n) if isinstance(v, float) and v <= 1 else v) for v in s3["keep"]], "schedule"
    if method == "fastv":
        return layers, [max(1, round(n * (1 - s3["r"])))], "schedule"
    if method == "pdrop":
        return layers, [max(1, int(n * r)) for r in s3["ratios"]], "schedule"
    calibration = s3.get("calibration") or {}
    cal = calibration.get("per_layer_mean")
    if cal:
        rec = calibration.get("allocation")
        rec_sha = rec.get("sha256") if isinstance(rec, dict) else None
        if allocation_sha is None and not rec:
            return layers, list(cal), f"calibration (measured on {calibration.get('n', '?')} samples, no allocation)"
        if allocation_sha is not None and rec_sha == allocation_sha:
            return layers, list(cal), (f"calibration (measured with this allocation on "
                                       f"{calibration.get('n', '?')} samples)")
        n_cal = float(calibration.get("stage2_visual") or n_unpruned or n)
        scaled = [min(float(n), v * n / n_cal) for v in cal]
        measured = "with another allocation" if rec else "without an allocation"
        return layers, scaled, (f"derived: the calibration was measured {measured} ({n_cal:g} visual tokens into "
                                f"the LLM); its per-layer means are scaled to the {n} this allocation lets in")
    what = "a meteor Stage-3 schedule" if method == "meteor" else f"the {method!r} Stage-3 policy (no `keep` schedule)"
    raise UsageError(f"{what} keeps a different count per input",
                     ("calibrate it (`meteor prune-llm --calibrate`) or " if method == "meteor" else "")
                     + "give the expected counts with --stage3-kept")


def count(vlm_cfg: Any, llm_cfg: dict[str, Any], alloc: dict[str, Any] | None, s3: dict[str, Any] | None, convention: str,
          text: int, new_tokens: int, stage3_kept: list[float] | None, *, allocation_sha: str | None = None) -> dict[str, Any]:
    """The analytic count (a ``meteor.flops`` body) for a model config, allocation and Stage-3 settings."""
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
        n_unpruned = sum(e.num_tokens for e in vlm_cfg.encoders)
        if alloc:
            n_vis = min(n_vis, int(alloc["stage2"]["keep"]))
    else:
        # Stage 2 picks shared positions BEFORE the one projector (docs/eagle.md): it maps only the kept ones
        n_unpruned = vlm_cfg.grid ** 2
        n_vis = min(n_unpruned, int(alloc["stage2"]["keep"])) if alloc else n_unpruned
        # divprune chooses among the projector's outputs: it projects every position (positions.py)
        projects_all = bool(alloc) and alloc["stage2"].get("method") == "divprune"
        n_proj = n_unpruned if projects_all else n_vis
        note = None
        if n_vis < n_unpruned:
            note = ("every shared position (divprune selects among the projector's outputs)" if projects_all else
                    f"{n_vis} of the {n_unpruned} shared positions (Stage 2 selects before the projector)")
        rep.add("projector/fused", F.projector_macs(n_proj, sum(e.width for e in vlm_cfg.encoders), d_llm,
                                                    convention=convention), note)
    dims = F.LLMDims.from_hf_config(llm_cfg)
    source = None
    if s3:
        layers, kept, source = stage3_counts(s3, n_vis, stage3_kept, allocation_sha=allocation_sha,
                                             n_unpruned=n_unpruned)
        schedule = tokens_per_layer(n_vis, layers, kept, dims.layers)
    else:
        schedule = [float(n_vis)] * dims.layers
    F.add_llm_costs(rep, dims, text, schedule, new_tokens, convention=convention)
    out = rep.to_json()
    out["visual_tokens"] = {"into_llm": n_vis, "layer_averaged": sum(schedule) / len(schedule), "per_encoder": final,
                            "stage3_source": source}
    out["text_tokens"], out["new_tokens"] = text, new_tokens
    return out


def measure(model: str, cfg: Any, alloc: dict[str, Any] | None, s3: dict[str, Any] | None, text: int, seed: int,
            stage1_method: str | None = None) -> dict[str, Any]:
    """``--count fvcore``: fvcore on one real prefill with the pruning hooks installed, next to the
    analytic count (MACs) at the token counts that forward had; per component the relative difference."""
    from meteor_cli import flops as F
    from meteor_cli.eval.runner import install_pruning
    from meteor_cli.model.checkpoint import load_model

    llm_cfg = cfg.llm.resolved_hf_config()
    full = count(cfg, llm_cfg, None, None, "macs", text, 0, None)["total"]
    if full > FVCORE_MAX_MACS:
        raise UsageError(f"--count fvcore runs the model: {model} needs {full / 1e12:.1f} T multiply-adds per unpruned "
                         f"prefill, more than the {FVCORE_MAX_MACS / 1e12:g} T this command runs",
                         "use --count analytic for models this large")
    if text < 1:
        raise UsageError("--count fvcore needs --text-tokens of at least 1", "e.g. --text-tokens 64")
    vlm = load_model(model, "cpu", seed=seed)
    stage3 = install_pruning(vlm, alloc, s3, seed=seed, stage1_method=stage1_method)
    try:
        m = F.fvcore_macs(vlm, text, stage3=stage3, seed=seed)
    finally:
        if stage3 is not None:
            stage3.remove()
    kept = list(m.stage3_kept.values()) if s3 else None
    analytic = count(cfg, llm_cfg, alloc, s3, "macs", text, 0, kept)
    rows = {}
    for k, a in analytic["components"].items():
        f = m.components.get(k, 0.0)
        rows[k] = {"analytic": a, "fvcore": f, "difference": (f - a) / a if a else 0.0, "fvcore_other": m.other.get(k, 0.0)}
    fv_total = sum(m.components.values())
    return {
        "unit": "MACs (fvcore counts one multiply-add as one flop)",
        "input": {"image": f"random {max(e.image_size for e in cfg.encoders)} px, seed {seed}", "text_tokens": text,
                  "visual_tokens_into_llm": m.visual_tokens, "stage3_kept": m.stage3_kept},
        "components": rows,
        "total": {"analytic": analytic["total"], "fvcore": fv_total,
                  "difference": (fv_total - analytic["total"]) / analytic["total"]},
        "pruning_scoring": m.pruning,
        "other_ops": {k: v for k, v in m.other.items() if v},
        "sdpa": F.SDPA_NOTE,
        "scope": "prefill only (decode: analytic); matrix products compared; fvcore's norms, pooling and "
                 "interpolation in fvcore_other; each pruning stage's scoring in pruning_scoring (not in the analytic count)",
        "not_counted_by_fvcore": m.unsupported,
    }


@meteor_command("flops")
def main(
    model: Annotated[str | None, typer.Option("--model", help="Preset, checkpoint directory or config JSON.")] = None,
    allocation: AllocationOption = None,
    prune_llm: PruneLLMOption = None,
    convention: Annotated[Convention, typer.Option(
        "--convention", help="fastv (the FastV paper's per-layer formula), macs (1 multiply-add = 1), flops (= 2).")] = Convention.fastv,
    count_with: Annotated[Count, typer.Option(
        "--count", help="analytic (from the config), fvcore (fvcore's FlopCountAnalysis on one real prefill with the "
                        "pruning hooks; MACs) or both, with the difference per component.")] = Count.analytic,
    text_tokens: Annotated[int, typer.Option("--text-tokens", min=0, help="Text tokens in the prompt.")] = 64,
    new_tokens: Annotated[int, typer.Option("--new-tokens", min=0, help="Generated tokens (decode cost).")] = 0,
    stage3_kept: Annotated[str | None, typer.Option(
        "--stage3-kept", help="Expected visual tokens kept after each Stage-3 layer, comma-separated.")] = None,
    image_size: Annotated[str | None, typer.Option(
        "--image-size", help="transformers VLMs only: the image (N or WxH pixels) whose visual tokens are counted "
                             "(LLaVA-NeXT tiles and Qwen2-VL resizing depend on it); default: the tower's tile "
                             "(Qwen2-VL: 448).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output flops artifact (`-` = stdout).")] = None,
    run: Run = None,  # type: ignore[assignment]
) -> None:
    """Count FLOPs per component of the pruned and unpruned model, stating the convention."""
    from meteor_cli.artifacts import input_ref, make_artifact, read_artifact, write_artifact
    from meteor_cli.model.checkpoint import load_model_config
    from meteor_cli.model.hf_vlm import family_of

    if model is None:
        raise UsageError("--model is required", "e.g. --model tiny")
    if family_of(model) is not None:
        hf_vlm_flops(model, allocation, prune_llm, convention, count_with, text_tokens, new_tokens, stage3_kept,
                     image_size, out, run)
        return
    if image_size is not None:
        raise UsageError("--image-size applies to transformers VLM directories (LLaVA, LLaVA-NeXT, Qwen2-VL)",
                         "a meteor model's image size is fixed by its encoders' configs: drop --image-size")
    cfg = load_model_config(model).validate()
    alloc = read_artifact(allocation, "meteor.allocation", what="--allocation").body if allocation else None
    if alloc is not None:
        from meteor_cli.pruning.allocation import check_allocation_fits

        check_allocation_fits(alloc, {e.name: e for e in cfg.encoders}, name=str(allocation))
    s3 = read_artifact(prune_llm, "meteor.prune-llm", what="--prune-llm").body if prune_llm else None
    try:
        kept = [float(x) for x in stage3_kept.split(",")] if stage3_kept else None
    except ValueError:
        raise UsageError(f"--stage3-kept {stage3_kept!r} must be comma-separated numbers", "e.g. --stage3-kept 50,20") from None
    sha = input_ref(allocation)["sha256"] if allocation else None
    body = count(cfg, cfg.llm.resolved_hf_config(), alloc, s3, convention.value, text_tokens, new_tokens, kept,
                 allocation_sha=sha)
    unpruned = count(cfg, cfg.llm.resolved_hf_config(), None, None, convention.value, text_tokens, new_tokens, None)
    body["unpruned_total"] = unpruned["total"]
    body["ratio"] = body["total"] / unpruned["total"]
    source = body["visual_tokens"]["stage3_source"]
    if source and source.startswith("derived"):
        run.warn(f"Stage-3 kept counts {source}; for measured counts calibrate with this allocation, or give "
                 "--stage3-kept")
    if count_with is not Count.analytic:
        body["fvcore"] = measure(model, cfg, alloc, s3, text_tokens, run.seed)
    if out is not None:
        inputs = [p for p in (allocation, prune_llm) if p is not None]
        write_artifact(out, make_artifact("meteor.flops", body, inputs=inputs))

    def human() -> None:
        unit = "MACs" if convention is not Convention.flops else "FLOPs"
        if count_with is not Count.fvcore:
            typer.echo(f"convention {convention.value}: {body['formula']}")
            for k, v in body["components"].items():
                typer.echo(f"  {k:<22} {v / 1e9:12.4f} G{unit}")
            typer.echo(f"  {'total':<22} {body['total'] / 1e9:12.4f} G{unit}  ({body['ratio']:.1%} of unpruned "
                       f"{body['unpruned_total'] / 1e9:.4f}); visual tokens into the LLM {body['visual_tokens']['into_llm']}, "
                       f"layer-averaged {body['visual_tokens']['layer_averaged']:.1f}")
            if source:
                typer.echo(f"  Stage-3 kept counts: {source}")
        if "fvcore" in body:
            fv = body["fvcore"]
            inp = fv["input"]
            typer.echo(f"fvcore, one prefill ({inp['image']}, {inp['text_tokens']} text + "
                       f"{inp['visual_tokens_into_llm']} visual tokens; Stage 3 kept {list(inp['stage3_kept'].values())}), "
                       f"in GMACs:")
            typer.echo(f"  {'component':<22} {'analytic':>12} {'fvcore':>12} {'diff':>8} {'fvcore other':>13}")
            for k, r in fv["components"].items():
                typer.echo(f"  {k:<22} {r['analytic'] / 1e9:12.4f} {r['fvcore'] / 1e9:12.4f} {r['difference']:8.2%} "
                           f"{r['fvcore_other'] / 1e9:13.4f}")
            t = fv["total"]
            typer.echo(f"  {'total':<22} {t['analytic'] / 1e9:12.4f} {t['fvcore'] / 1e9:12.4f} {t['difference']:8.2%}")
            typer.echo("  pruning scoring (not in the analytic count): " + ", ".join(
                f"{k} {v / 1e9:.4f}" for k, v in fv["pruning_scoring"].items()))
            typer.echo(f"  SDPA: {fv['sdpa']}")

    run.emit(body, human, stdout_used=out is not None and str(out) == "-")


def parse_kept(stage3_kept: str | None) -> list[float] | None:
    """``--stage3-kept`` as numbers."""
    try:
        return [float(x) for x in stage3_kept.split(",")] if stage3_kept else None
    except ValueError:
        raise UsageError(f"--stage3-kept {stage3_kept!r} must be comma-separated numbers", "e.g. --stage3-kept 50,20") from None


def hf_vlm_flops(model: str, allocation: Path | None, prune_llm: Path | None, convention: Convention, count_with: Count,
                 text_tokens: int, new_tokens: int, stage3_kept: str | None, image_size: str | None, out: Path | None,
                 run: Run) -> None:
    """``meteor flops`` on a transformers VLM directory: the analytic count on the meta device (no
    weights read; :mod:`meteor_cli.model.hf_vlm.flops`), Stage 3 as for meteor's models."""
    from meteor_cli.artifacts import make_artifact, read_artifact, write_artifact
    from meteor_cli.model.hf_vlm import family_of
    from meteor_cli.model.hf_vlm.flops import count_hf_vlm, parse_image_size

    if allocation is not None:  # refused by name before the file is read where the tower has no Stage-1 adapter
        fam = family_of(model)
        assert fam is not None
        fam.require_stage1("flops --allocation")
    if count_with is not Count.analytic:
        raise UsageError(f"--count {count_with.value} runs meteor's own forward; {model} is counted analytically only",
                         "use --count analytic (the default)")
    size = parse_image_size(image_size)
    s3 = read_artifact(prune_llm, "meteor.prune-llm", what="--prune-llm").body if prune_llm else None
    kept = parse_kept(stage3_kept)
    alloc = read_artifact(allocation, "meteor.allocation", what="--allocation").body if allocation else None
    body = count_hf_vlm(model, size, s3, convention.value, text_tokens, new_tokens, kept, allocation=alloc)
    unpruned = count_hf_vlm(model, size, None, convention.value, text_tokens, new_tokens, None)
    body["unpruned_total"] = unpruned["total"]
    body["ratio"] = body["total"] / unpruned["total"]
    if out is not None:
        write_artifact(out, make_artifact("meteor.flops", body,
                                          inputs=[p for p in (allocation, prune_llm) if p is not None]))

    def human() -> None:
        unit = "MACs" if convention is not Convention.flops else "FLOPs"
        img, vis = body["image"], body["visual_tokens"]
        typer.echo(f"{body['model']['hf_class']} (meta device, no weights read), image {img['size'][0]}x{img['size'][1]}"
                   f"{' (default)' if img['default'] else ''}: {vis['into_llm']} visual tokens, tower {img['tower_passes']} "
                   f"pass(es) of {img['tower_tokens']} tokens")
        typer.echo(f"convention {convention.value}: {body['formula']}")
        for k, v in body["components"].items():
            typer.echo(f"  {k:<22} {v / 1e9:12.4f} G{unit}")
        typer.echo(f"  {'total':<22} {body['total'] / 1e9:12.4f} G{unit}  ({body['ratio']:.1%} of unpruned "
                   f"{body['unpruned_total'] / 1e9:.4f}); layer-averaged visual tokens {vis['layer_averaged']:.1f}")
        if vis["stage3_source"]:
            typer.echo(f"  Stage-3 kept counts: {vis['stage3_source']}")

    run.emit(body, human, stdout_used=out is not None and str(out) == "-")
