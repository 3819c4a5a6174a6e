"""LLaVA-1.5 (``LlavaForConditionalGeneration``): a CLIP tower, an MLP projector, a Llama/Vicuna LM.

The processor expands ``<image>`` to one token per patch of the tower's selected layer
(``vision_feature_layer``, CLS dropped under the ``default`` select strategy): 576 for
LLaVA-1.5-7B at 336 px. Those tokens are one contiguous span: the visual span Stage 3 prunes.
"""

from __future__ import annotations

from meteor_cli.model.hf_vlm.base import HFVisionLanguageModel
from meteor_cli.registry import register_model_family


@register_model_family("llava", description="LLaVA-1.5: LlavaForConditionalGeneration (CLIP tower + MLP + Llama)")
class Llava(HFVisionLanguageModel):
    """LLaVA-1.5 from a local transformers directory."""

    hf_class = "LlavaForConditionalGeneration"
