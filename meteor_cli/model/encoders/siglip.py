"""Hugging Face SigLIP vision tower adapter (``SiglipVisionModel``, unmodified).

transformers 5: ``embeddings`` (patch conv + learned positions, no CLS token) →
``encoder.layers`` → ``post_layernorm``; ``last_hidden_state`` is returned *after*
``post_layernorm`` (the attention-pooling ``head`` only makes ``pooler_output``). meteor uses that
``last_hidden_state``, the tower's ordinary output, so :meth:`forward_features` is exactly what the
module returns. (Models that read ``hidden_states[-1]`` instead skip that last norm.)

No CLS token, so no CLS attention: Stage 1 scores SigLIP by mean-token similarity (METHOD A5).
Random initialisation builds no pooling head; ``weights`` is a local directory for
``from_pretrained``.
"""

from __future__ import annotations

import torch

from meteor_cli.config import EncoderConfig
from meteor_cli.model.encoders.base import EncoderAdapter, TokenState
from meteor_cli.registry import register_encoder


@register_encoder("siglip", family="siglip", description="HF SiglipVisionModel (no CLS), pruned between encoder layers")
class SigLIPAdapter(EncoderAdapter):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__(cfg)
        from transformers import SiglipVisionConfig, SiglipVisionModel

        if cfg.weights:
            self.net = self.load_hf(SiglipVisionModel)
            c = self.net.config
            self.check_loaded(width=c.hidden_size, depth=c.num_hidden_layers, image_size=c.image_size,
                              patch=c.patch_size)
        else:
            hf = SiglipVisionConfig(hidden_size=cfg.width, intermediate_size=int(cfg.width * cfg.mlp_ratio),
                                    num_hidden_layers=cfg.depth, num_attention_heads=cfg.heads,
                                    image_size=cfg.image_size, patch_size=cfg.patch, vision_use_head=False)
            self.net = SiglipVisionModel._from_config(hf, attn_implementation="sdpa")

    @classmethod
    def prefix_tokens(cls, cfg: EncoderConfig) -> int:
        return 0  # no CLS token (cost otherwise the default ViT block; the pooling head is not built)

    def embed(self, pixels: torch.Tensor) -> TokenState:
        return self._start(self.net.embeddings(pixels), None)

    def run_blocks(self, state: TokenState, start: int, end: int) -> TokenState:
        x = state.x
        for layer in self.net.encoder.layers[start:end]:
            x = layer(x, attention_mask=None)
        return state.with_tokens(x)

    def finalize(self, state: TokenState) -> TokenState:
        return state.with_tokens(self.net.post_layernorm(state.x))

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values=pixels).last_hidden_state
