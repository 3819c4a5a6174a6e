"""Hugging Face CLIP vision tower adapter (``CLIPVisionModel``, unmodified).

transformers 5 has no ``.vision_model`` wrapper: ``embeddings → pre_layrnorm → encoder.layers``;
the output is the last hidden state (no ``post_layernorm``, which only feeds the pooled CLS),
as LLaVA/EAGLE use it. Weights load with ``from_pretrained(dir)`` from a local directory.
"""

from __future__ import annotations

import torch

from meteor_cli.config import EncoderConfig
from meteor_cli.model.encoders.base import EncoderAdapter, TokenState
from meteor_cli.registry import register_encoder


@register_encoder("clip", family="clip", description="HF CLIPVisionModel, pruned between encoder layers")
class CLIPAdapter(EncoderAdapter):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__(cfg)
        from transformers import CLIPVisionConfig, CLIPVisionModel

        if cfg.weights:
            self.net = self.load_hf(CLIPVisionModel)
            c = self.net.config
            self.check_loaded(width=c.hidden_size, depth=c.num_hidden_layers, image_size=c.image_size,
                              patch=c.patch_size)
        else:
            hf = CLIPVisionConfig(hidden_size=cfg.width, intermediate_size=int(cfg.width * cfg.mlp_ratio),
                                  num_hidden_layers=cfg.depth, num_attention_heads=cfg.heads,
                                  image_size=cfg.image_size, patch_size=cfg.patch)
            self.net = CLIPVisionModel._from_config(hf, attn_implementation="sdpa")

    @classmethod
    def prefix_tokens(cls, cfg: EncoderConfig) -> int:
        return 1  # CLIP always prepends its class embedding (``has_cls`` is not read)

    def embed(self, pixels: torch.Tensor) -> TokenState:
        x = self.net.pre_layrnorm(self.net.embeddings(pixels))
        return self._start(x[:, 1:], x[:, :1])

    def run_blocks(self, state: TokenState, start: int, end: int) -> TokenState:
        return state.run_through(self.net.encoder.layers[start:end], lambda layer, t: layer(t, attention_mask=None))

    def cls_attention(self, state: TokenState, block: int) -> torch.Tensor | None:
        if state.block_input is None:
            return None
        layer = self.net.encoder.layers[block]
        t = layer.layer_norm1(state.block_input)
        attn = layer.self_attn
        B, L, D = t.shape
        H, dh = attn.num_heads, attn.head_dim
        q = attn.q_proj(t[:, :1]).view(B, 1, H, dh).float()
        k = attn.k_proj(t).view(B, L, H, dh).float()
        a = (torch.einsum("bqhd,bkhd->bhqk", q, k) * dh**-0.5).softmax(-1).mean(1)[:, 0]
        return a[:, 1:]

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values=pixels).last_hidden_state
