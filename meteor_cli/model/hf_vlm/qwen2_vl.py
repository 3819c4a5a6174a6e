"""Qwen2-VL (``Qwen2VLForConditionalGeneration``): native-resolution ViT, 2×2 patch merger, M-RoPE LM.

The processor writes ``<|vision_start|>`` + one ``<|image_pad|>`` per merged patch +
``<|vision_end|>``; the pads are the visual span. The model needs ``mm_token_type_ids`` (the
processor returns them) to build its 3-D rotary positions (temporal, height, width); Stage 3
records those positions at prefill and gathers them with the kept tokens, never renumbering them,
so a kept patch keeps its place in the image grid and the text after the image keeps its offset.
"""

from __future__ import annotations

from meteor_cli.model.hf_vlm.base import HFVisionLanguageModel
from meteor_cli.registry import register_model_family


@register_model_family("qwen2_vl", description="Qwen2-VL: Qwen2VLForConditionalGeneration (M-RoPE positions kept)")
class Qwen2VL(HFVisionLanguageModel):
    """Qwen2-VL from a local transformers directory."""

    hf_class = "Qwen2VLForConditionalGeneration"
