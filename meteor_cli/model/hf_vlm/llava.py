"""LLaVA-1.5 (``LlavaForConditionalGeneration``): a CLIP tower, an MLP projector, a Llama/Vicuna LM.

The processor expands ``<image>`` to one token per patch of the tower's selected layer
(``vision_feature_layer``, CLS dropped under the ``default`` select strategy): 576 for
LLaVA-1.5-7B at 336 px. Those tokens are one contiguous span: the visual span Stage 3 prunes.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from meteor_cli.model.hf_vlm.base import HFInputs, HFVisionLanguageModel, TokenLayout
from meteor_cli.registry import register_model_family


def tile_size(config: Any, image_processor: dict[str, Any]) -> tuple[int, int]:
    """(height, width) of what the tower sees: the processor's ``crop_size``, else the tower's ``image_size``."""
    crop = image_processor.get("crop_size")
    if isinstance(crop, dict) and "height" in crop and "width" in crop:
        return int(crop["height"]), int(crop["width"])
    side = int(config.vision_config.image_size)
    return side, side


def tower_prefix(config: Any) -> int:
    """Tokens the tower adds before the patches: 1 (CLS) for CLIP, 0 for SigLIP-like towers."""
    return 1 if getattr(config.vision_config, "model_type", "") == "clip_vision_model" else 0


def saved_image_processor(processor: Any) -> dict[str, Any]:
    """The settings of a loaded image processor that the counts read (crop size, pinpoints, pixel limits)."""
    ip = processor.image_processor
    keys = ("crop_size", "size", "do_center_crop", "image_grid_pinpoints", "patch_size", "merge_size", "min_pixels",
            "max_pixels")
    out = {}
    for k in keys:
        v = getattr(ip, k, None)
        if v is not None:
            out[k] = dict(v) if hasattr(v, "keys") else v
    return out


def centre_crop(image_processor: dict[str, Any], image_size: tuple[int, int] | None) -> tuple[float, float, float, float] | None:
    """The part (fractions x0, y0, x1, y1) of a W×H image that CLIP's resize-shortest-edge + centre crop keeps."""
    crop, size = image_processor.get("crop_size"), image_processor.get("size") or {}
    if image_size is None or not image_processor.get("do_center_crop") or not isinstance(crop, dict) \
            or "shortest_edge" not in size:
        return None
    w, h = image_size
    scale = int(size["shortest_edge"]) / min(w, h)
    fx, fy = min(1.0, int(crop["width"]) / (w * scale)), min(1.0, int(crop["height"]) / (h * scale))
    return (1 - fx) / 2, (1 - fy) / 2, (1 + fx) / 2, (1 + fy) / 2


def clip_parts(hf: nn.Module) -> tuple[nn.Module, list[nn.Module], nn.Module, int]:
    """Patch embedding, encoder layers, projector and attention width of a LLaVA-style model."""
    tower = hf.model.vision_tower
    vc = hf.config.vision_config
    return tower.embeddings, list(tower.encoder.layers), hf.model.multi_modal_projector, int(vc.hidden_size)


@register_model_family("llava", description="LLaVA-1.5: LlavaForConditionalGeneration (CLIP tower + MLP + Llama)")
class Llava(HFVisionLanguageModel):
    """LLaVA-1.5 from a local transformers directory."""

    hf_class = "LlavaForConditionalGeneration"
    stage1_missing = None  # the CLIP tower runs through meteor's Stage 1 (meteor_cli.model.hf_vlm.tower)

    @classmethod
    def visual_geometry(cls, config: Any, image_processor: dict[str, Any], processor: dict[str, Any],
                        size: tuple[int, int]) -> Any:
        """Resize + centre crop to the tile: ``(tile/patch)²`` tokens whatever the image size."""
        from meteor_cli.model.hf_vlm.flops import VisualGeometry

        th, tw = tile_size(config, image_processor)
        p = int(config.vision_config.patch_size)
        patches = (th // p) * (tw // p)
        prefix = tower_prefix(config)
        tokens = patches + (prefix if config.vision_feature_select_strategy == "full" else 0)
        return VisualGeometry(tokens, 1, patches + prefix, patches, tokens,
                              {"tile": [tw, th], "patch": p, "grid": [tw // p, th // p],
                               "feature_layer": config.vision_feature_layer,
                               "select_strategy": config.vision_feature_select_strategy,
                               "rule": "resized and centre-cropped to the tile: independent of the image size"})

    @classmethod
    def vision_parts(cls, hf: nn.Module) -> tuple[nn.Module, list[nn.Module], nn.Module, int]:
        return clip_parts(hf)

    def token_layout(self, inputs: HFInputs, b: int, image_size: tuple[int, int] | None) -> TokenLayout:
        """One grid, ``(tile/patch)²`` tokens in raster order (a CLS first under ``full``), over the centre crop."""
        ip = saved_image_processor(self.processor)
        geo = self.visual_geometry(self.hf.config, ip, {}, image_size or (1, 1))
        gw, gh = geo.detail["grid"]
        owners: list[tuple[str, int] | None] = [(self.tower, i) for i in range(gh * gw)]
        if geo.tokens == gh * gw + 1:
            owners.insert(0, None)  # CLS (full strategy): on no grid
        crop = centre_crop(ip, image_size)
        return TokenLayout({self.tower: (gh, gw)}, owners, {self.tower: crop} if crop else {})
