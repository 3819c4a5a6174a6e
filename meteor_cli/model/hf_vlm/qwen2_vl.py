"""Qwen2-VL (``Qwen2VLForConditionalGeneration``): native-resolution ViT, 2×2 patch merger, M-RoPE LM.

The processor writes ``<|vision_start|>`` + one ``<|image_pad|>`` per merged patch +
``<|vision_end|>``; the pads are the visual span. The model needs ``mm_token_type_ids`` (the
processor returns them) to build its 3-D rotary positions (temporal, height, width); Stage 3
records those positions at prefill and gathers them with the kept tokens, never renumbering them,
so a kept patch keeps its place in the image grid and the text after the image keeps its offset.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from meteor_cli.model.hf_vlm.base import HFInputs, HFVisionLanguageModel, TokenLayout
from meteor_cli.registry import register_model_family

#: transformers' Qwen2-VL image-processor defaults (used when the directory saves no limits).
DEFAULT_MIN_PIXELS = 56 * 56
DEFAULT_MAX_PIXELS = 28 * 28 * 1280


def pixel_limits(image_processor: dict[str, Any]) -> tuple[int, int]:
    """(min_pixels, max_pixels) of a saved Qwen2-VL image processor (``size`` or the older keys)."""
    size = image_processor.get("size") or {}
    lo = image_processor.get("min_pixels") or size.get("shortest_edge") or size.get("min_pixels") or DEFAULT_MIN_PIXELS
    hi = image_processor.get("max_pixels") or size.get("longest_edge") or size.get("max_pixels") or DEFAULT_MAX_PIXELS
    return int(lo), int(hi)


@register_model_family("qwen2_vl", description="Qwen2-VL: Qwen2VLForConditionalGeneration (M-RoPE positions kept)")
class Qwen2VL(HFVisionLanguageModel):
    """Qwen2-VL from a local transformers directory."""

    hf_class = "Qwen2VLForConditionalGeneration"
    stage1_missing = ("its tower (variable-size patch sequences in cu_seqlens windows, 2x2 patch merging before the "
                      "LLM, M-RoPE ids tied to the merged grid) needs its own Stage-1 adapter, which meteor does not have")

    @classmethod
    def default_image_size(cls, config: Any) -> tuple[int, int]:
        """448×448 (Qwen2-VL has no fixed tile; the processor's pixel limits still apply)."""
        return 448, 448

    @classmethod
    def visual_geometry(cls, config: Any, image_processor: dict[str, Any], processor: dict[str, Any],
                        size: tuple[int, int]) -> Any:
        """``smart_resize`` to ``gh × gw`` patches; the merger turns each merge×merge block into one token."""
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        from meteor_cli.model.hf_vlm.flops import VisualGeometry

        vc = config.vision_config
        p = int(image_processor.get("patch_size") or vc.patch_size)
        m = int(image_processor.get("merge_size") or vc.spatial_merge_size)
        lo, hi = pixel_limits(image_processor)
        w, h = size
        rh, rw = smart_resize(h, w, factor=p * m, min_pixels=lo, max_pixels=hi)
        patches = (rh // p) * (rw // p)
        tokens = patches // (m * m)
        return VisualGeometry(tokens, 1, patches, patches, tokens,
                              {"resized": [rw, rh], "patch": p, "merge": m, "grid": [rw // p, rh // p],
                               "min_pixels": lo, "max_pixels": hi,
                               "rule": "smart_resize to multiples of patch*merge within [min_pixels, max_pixels]; "
                                       "patches / merge^2"})

    @classmethod
    def vision_parts(cls, hf: nn.Module) -> tuple[nn.Module, list[nn.Module], nn.Module, int]:
        visual = hf.model.visual
        return visual.patch_embed, list(visual.blocks), visual.merger, int(hf.config.vision_config.embed_dim)

    def token_layout(self, inputs: HFInputs, b: int, image_size: tuple[int, int] | None) -> TokenLayout:
        """One grid of merged patches, ``(h/merge) × (w/merge)`` of ``image_grid_thw``, in raster order
        (the processor orders patches merge window by merge window, windows row-major)."""
        t, h, w = (int(x) for x in inputs.features["image_grid_thw"][b].tolist())
        m = int(self.hf.config.vision_config.spatial_merge_size)
        rows, cols = h // m, w // m
        return TokenLayout({self.tower: (rows, cols)}, [(self.tower, i % (rows * cols)) for i in range(t * rows * cols)])
