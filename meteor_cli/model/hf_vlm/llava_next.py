"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``): anyres tiles of a CLIP tower + newline tokens.

Each image is a base tile plus the tiles of its best ``image_grid_pinpoints`` resolution; the
processor writes one ``<image>`` per feature of the base tile, of the unpadded tile grid and of
each row's ``image_newline`` — all one contiguous span, which Stage 3 treats as the visual tokens
(newline tokens included: they are visual tokens the LLM attends to). Images of different sizes
give spans of different lengths in one batch; left padding aligns them.
"""

from __future__ import annotations

from meteor_cli.model.hf_vlm.base import HFVisionLanguageModel
from meteor_cli.registry import register_model_family


@register_model_family("llava_next", description="LLaVA-NeXT: LlavaNextForConditionalGeneration (anyres CLIP tiles)")
class LlavaNext(HFVisionLanguageModel):
    """LLaVA-NeXT (LLaVA-1.6) from a local transformers directory."""

    hf_class = "LlavaNextForConditionalGeneration"
