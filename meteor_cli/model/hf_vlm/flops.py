"""``meteor flops`` for transformers VLMs (LLaVA-1.5, LLaVA-NeXT, Qwen2-VL), on meta, without weights.

The model is built on the meta device from ``config.json`` (:meth:`HFVisionLanguageModel.build_meta`:
shapes only; ``model.safetensors`` is never opened) and the image processor's settings are read
from ``processor_config.json`` / ``preprocessor_config.json`` (JSON only). For an image of
``--image-size`` W×H each family says (:meth:`HFVisionLanguageModel.visual_geometry`) how many
visual tokens its processor writes, how many times the tower runs (images / tiles) on how many
tokens, and how many features the projector sees:

* LLaVA-1.5: the image is resized and centre-cropped to the tower's tile, so the count does not
  depend on the image size: ``(tile/patch)²`` patch tokens of the ``vision_feature_layer`` (CLS
  dropped under the ``default`` strategy, kept under ``full``); the tower runs once on
  ``(tile/patch)² + 1`` tokens (CLS).
* LLaVA-NeXT (anyres): the best ``image_grid_pinpoints`` resolution for W×H (transformers'
  ``select_best_resolution``) is cut into ``sh × sw`` tiles; the tower runs on the base image plus
  those tiles (``1 + sh·sw`` passes of ``(tile/patch)² + 1`` tokens) and the projector on all their
  features; the LLM gets the base tile's ``(tile/patch)²`` features, the tile grid with the
  aspect-ratio padding removed (``unpad``: ``h' × w'`` features) and one ``image_newline`` per row
  (``h'`` tokens) — exactly the placeholder count of ``LlavaNextProcessor``.
* Qwen2-VL: the image is resized by ``smart_resize`` (multiples of ``patch·merge``, pixels clamped
  to ``[min_pixels, max_pixels]`` of the image processor) to ``gh × gw`` patches; the tower (full
  attention, no CLS) runs once on ``gh·gw`` tokens, the merger on ``gh·gw / merge²`` tokens, which
  is what the LLM gets.

Costs (MACs; ``flops`` = 2×): the patch embedding ``patches · |conv weight|``; each tower block
``n · Σ(in·out of its Linear layers) + 2·n²·A`` (A = attention width: ``QKᵀ`` and ``AV``), which for
CLIP and Qwen2-VL's blocks is :func:`meteor_cli.flops.vit_block_macs` ``4nDA + 2n²A + 2nDM``; every
block the model runs is counted (LLaVA runs the whole tower even when it reads the features of
``vision_feature_layer = -2``); the projector ``n · Σ(in·out)`` of its Linear layers; the LLM
from its text config (:class:`meteor_cli.flops.LLMDims`) with the same Stage-3 schedule and
conventions as for meteor's own models (``--convention fastv`` uses FastV's eq. 5 for the LLM).
The text (``--text-tokens``) is every non-visual prompt token, template included.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from meteor_cli.errors import UsageError


@dataclass(frozen=True)
class VisualGeometry:
    """How one image of a given size goes through a family's vision path.

    Attributes:
        tokens: visual tokens the LLM gets (the processor's image placeholders).
        tower_passes: images / tiles the tower runs on.
        tower_tokens: tokens in every tower block, per pass (CLS included where the tower has one).
        embed_positions: patch-embedding output positions, per pass.
        projector_tokens: features the projector (LLaVA's MLP, Qwen2-VL's merger) runs on, all passes.
        detail: how the counts came about (resized size, tile grid, newline tokens…), for the report.
    """

    tokens: int
    tower_passes: int
    tower_tokens: int
    embed_positions: int
    projector_tokens: int
    detail: dict[str, Any] = field(default_factory=dict)


def image_processor_settings(directory: str | Path) -> dict[str, Any]:
    """The image processor's settings saved with the model (JSON only; empty when none is saved)."""
    d = Path(directory)
    for name, key in (("processor_config.json", "image_processor"), ("preprocessor_config.json", None)):
        p = d / name
        if p.is_file():
            try:
                data = json.loads(p.read_text())
            except json.JSONDecodeError as exc:
                raise UsageError(f"{p} is not valid JSON: {exc.msg}", "re-save the processor") from None
            data = data.get(key, {}) if key else data
            if isinstance(data, dict) and data:
                return data
    return {}


def processor_settings(directory: str | Path) -> dict[str, Any]:
    """``processor_config.json`` without its image processor (patch size, feature strategy…)."""
    p = Path(directory) / "processor_config.json"
    if not p.is_file():
        return {}
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError:
        return {}
    return {k: v for k, v in data.items() if not isinstance(v, dict)} if isinstance(data, dict) else {}


def parse_image_size(text: str | None) -> tuple[int, int] | None:
    """``--image-size``: ``N`` (square) or ``WxH`` / ``W,H``, in pixels."""
    if text is None:
        return None
    parts = text.lower().replace(",", "x").split("x")
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        vals = []
    if len(vals) not in (1, 2) or min(vals) < 1:
        raise UsageError(f"--image-size {text!r} must be N or WxH in pixels", "e.g. --image-size 336 or --image-size 1024x768")
    return (vals[0], vals[0]) if len(vals) == 1 else (vals[0], vals[1])


def block_macs(block: nn.Module, n: float, attn_dim: int) -> float:
    """One transformer block over ``n`` tokens: ``n·Σ(in·out)`` of its Linear layers + ``2·n²·attn_dim``."""
    linear = sum(m.in_features * m.out_features for m in block.modules() if isinstance(m, nn.Linear))
    return n * linear + 2 * n * n * attn_dim


def conv_macs(module: nn.Module, positions: float) -> float:
    """Convolutions of ``module`` (a patch embedding) at ``positions`` output positions: ``|weight|`` each."""
    per = sum(m.weight.numel() for m in module.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)))
    return positions * per


def linear_macs(module: nn.Module, n: float) -> float:
    """Every Linear layer of ``module`` (a projector) applied to ``n`` tokens."""
    return n * sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def stage1_tower_macs(fam: Any, hf: nn.Module, directory: str | Path, allocation: dict[str, Any],
                      geo: VisualGeometry | None = None) -> tuple[float, int, dict[str, Any]]:
    """(tower MACs, tokens leaving Stages 1-2, detail) of ONE tower pass (one image, or one
    LLaVA-NeXT tile: the budgets apply to every tile) with ``allocation``'s Stage-1 budgets: the
    patch embedding on every patch, then block b (b < the depth up to ``vision_feature_layer``) on
    ``per_block[b] + 1`` tokens (CLS included) — :func:`meteor_cli.flops.stage1_tokens` of the
    pruning points — and no block after the selected layer (the pruned path does not run them);
    Stage 2 caps what leaves at ``stage2.keep``.

    Qwen2-VL (:meth:`~meteor_cli.model.hf_vlm.qwen2_vl.Qwen2VL.stage1_tower_tokens`): the budgets
    count merge windows of THIS image (``geo``; an image with fewer windows than a budget keeps
    them all), each window ``merge²`` patches through every block, no CLS; the patch embedding
    runs on every patch."""
    from meteor_cli import flops as F
    from meteor_cli.pruning.allocation import check_allocation_fits

    fam.require_stage1("flops --allocation")
    tcfg = fam.stage1_config(hf.config, image_processor_settings(directory))
    check_allocation_fits(allocation, {fam.tower: tcfg}, name="--allocation")
    keep = list(allocation["stage1"]["encoders"][fam.tower]["keep"])
    native, per, extra = fam.stage1_tower_tokens(geo, tcfg)
    per_block, final = F.stage1_tokens(native, tcfg.depth, tcfg.prune_points or [], keep)
    embed, blocks, _, attn_dim = fam.vision_parts(hf)
    macs = conv_macs(embed, native * per) + sum(block_macs(blocks[b], n * per + extra, attn_dim)
                                               for b, n in enumerate(per_block))
    out = min(int(final), int(allocation["stage2"]["keep"]))
    return macs, out, {"native": native, "blocks_run": tcfg.depth, "points": tcfg.prune_points, "keep": keep,
                       "per_block": per_block, "tower_tokens_per_block": [n * per + extra for n in per_block],
                       "stage1_out": int(final), "stage2_out": out}


def count_hf_vlm(directory: str | Path, image_size: tuple[int, int] | None, s3: dict[str, Any] | None, convention: str,
                 text: int, new_tokens: int, stage3_kept: list[float] | None,
                 allocation: dict[str, Any] | None = None) -> dict[str, Any]:
    """The analytic count (a ``meteor.flops`` body, same keys as for meteor's models) of the
    transformers VLM in ``directory`` for one image of ``image_size`` (W, H; None: the family's
    default) with the Stage-1/2 budgets of ``allocation`` (LLaVA-1.5: :func:`stage1_tower_macs`)
    and the Stage-3 settings ``s3`` (a prune-llm body) — nothing but JSON is read."""
    from meteor_cli import flops as F
    from meteor_cli.cli.flops import stage3_counts
    from meteor_cli.model.hf_vlm import family_of
    from meteor_cli.pruning.schedule import tokens_per_layer

    F._check(convention)
    fam = family_of(directory)
    if fam is None:
        raise UsageError(f"{directory} is not a transformers VLM directory", "pass a LLaVA / LLaVA-NeXT / Qwen2-VL directory")
    hf = fam.build_meta(directory)
    cfg = hf.config
    size = image_size or fam.default_image_size(cfg)
    geo = fam.visual_geometry(cfg, image_processor_settings(directory), processor_settings(directory), size)
    embed, blocks, projector, attn_dim = fam.vision_parts(hf)
    scale = 2 if convention == "flops" else 1

    rep = F.FlopReport(convention)
    n_vis = geo.tokens
    stage1 = None
    if allocation is not None:
        tower, kept, stage1 = stage1_tower_macs(fam, hf, directory, allocation, geo)
        rep.add(f"encoder/{fam.tower}", scale * geo.tower_passes * tower,
                f"{geo.tower_passes} pass(es) x {stage1['blocks_run']} blocks, tower tokens per block "
                f"{stage1['tower_tokens_per_block']}")
        n_vis, proj_tokens, packing = fam.pruned_tokens(geo, kept, stage1["native"])
        stage1.update(packing)
        rep.add("projector/vision", scale * linear_macs(projector, proj_tokens))
    else:
        tower = conv_macs(embed, geo.embed_positions) + sum(block_macs(b, geo.tower_tokens, attn_dim) for b in blocks)
        rep.add(f"encoder/{fam.tower}", scale * geo.tower_passes * tower,
                f"{geo.tower_passes} pass(es) x {len(blocks)} blocks x {geo.tower_tokens} tokens")
        rep.add("projector/vision", scale * linear_macs(projector, geo.projector_tokens))

    dims = F.LLMDims.from_hf_config(cfg.get_text_config())
    source = None
    if s3:
        rec = (s3.get("model") or {}).get("num_layers")
        if rec is not None and int(rec) != dims.layers:
            raise UsageError(f"the --prune-llm schedule was made for a {rec}-layer LLM; {directory}'s has {dims.layers}",
                             f"make it for this model: meteor prune-llm --model {directory} ...")
        layers, kept, source = stage3_counts(s3, n_vis, stage3_kept)
        bad = [lyr for lyr in layers if not 0 <= int(lyr) < dims.layers]
        if bad:
            raise UsageError(f"Stage-3 layers {bad} are outside the LLM's {dims.layers} layers", "check --prune-llm")
        schedule = tokens_per_layer(n_vis, layers, [min(float(n_vis), float(k)) for k in kept], dims.layers)
    else:
        schedule = [float(n_vis)] * dims.layers
    F.add_llm_costs(rep, dims, text, schedule, new_tokens, convention=convention)
    out = rep.to_json()
    out["visual_tokens"] = {"into_llm": n_vis, "layer_averaged": sum(schedule) / len(schedule),
                            "per_encoder": {fam.tower: n_vis}, "stage3_source": source}
    out["text_tokens"], out["new_tokens"] = text, new_tokens
    out["model"] = {"family": fam.__name__, "hf_class": fam.hf_class, "weights_read": False}
    out["image"] = {"size": list(size), "default": image_size is None, **asdict(geo)}
    if stage1 is not None:
        out["stage1"] = stage1
    return out


__all__ = ["VisualGeometry", "block_macs", "conv_macs", "count_hf_vlm", "image_processor_settings", "linear_macs",
           "parse_image_size", "processor_settings"]
