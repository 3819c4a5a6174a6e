"""Hugging Face Pix2Struct vision encoder adapter (``Pix2StructVisionModel``, unmodified).

Pix2Struct reads *flattened patches*, not pixels: each row is ``[row id, column id, p·p·3
pixel values]`` with 1-based ids (0 marks padding) and the pixels of the patch in (y, x,
channel) order; ``embeddings`` adds learned row and column embeddings to a linear projection of
the pixels. ``Pix2StructImageProcessor`` resizes each image to fit at most ``max_patches``
patches (variable resolution), standardises it per image (mean and unbiased std over all its
values, the std floored at 1/√(values)), cuts the patches and pads the sequence. Here the image
has a fixed size instead (``image_size``, so ``grid = image_size / patch`` rows and columns and no
padding); :meth:`preprocess` standardises per image as the processor does (``mean`` / ``std`` of
the config are not used) and :meth:`flatten_patches` builds the rows.

``encoder.layer[i]`` are pre-norm T5-style blocks (RMS norms, no q·k scaling, gated-GELU MLP)
returning ``(hidden, attn_weights)``; ``layernorm`` follows the last one; ``last_hidden_state``
is the output. No CLS token. EAGLE feeds up to 2048 patches and keeps the first 2025 = 45×45
(720 px at patch 16 here). ``weights`` is a local directory for ``from_pretrained``.
"""

from __future__ import annotations

import torch

from meteor_cli.config import EncoderConfig
from meteor_cli.model.encoders.base import EncoderAdapter, TokenState
from meteor_cli.registry import register_encoder

#: Rows of Pix2Struct's row/column embedding tables (its ``seq_len``: up to 4096 patches a side).
SEQ_LEN = 4096


@register_encoder("pix2struct", family="pix2struct",
                  description="HF Pix2StructVisionModel on a fixed patch grid (no CLS), pruned between layers")
class Pix2StructAdapter(EncoderAdapter):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__(cfg)
        from transformers import Pix2StructVisionConfig, Pix2StructVisionModel

        if cfg.weights:
            self.net = self.load_hf(Pix2StructVisionModel)
            c = self.net.config
            self.check_loaded(width=c.hidden_size, depth=c.num_hidden_layers,
                              patch=round((c.patch_embed_hidden_size / 3) ** 0.5))
        else:
            hf = Pix2StructVisionConfig(hidden_size=cfg.width, patch_embed_hidden_size=3 * cfg.patch**2,
                                        d_ff=int(cfg.width * cfg.mlp_ratio), d_kv=cfg.width // cfg.heads,
                                        num_hidden_layers=cfg.depth, num_attention_heads=cfg.heads, seq_len=SEQ_LEN)
            self.net = Pix2StructVisionModel._from_config(hf, attn_implementation="sdpa")

    @classmethod
    def prefix_tokens(cls, cfg: EncoderConfig) -> int:
        return 0

    @classmethod
    def block_macs(cls, cfg: EncoderConfig, block: int, n: float) -> float:
        """query/key/value/output over ``heads·d_kv`` (d_kv = width // heads), the n×n attention, and
        the gated-GELU MLP's three matrices (wi_0, wi_1, wo; d_ff = :meth:`mlp_hidden`). The patch
        projection (linear, 3·p² → width) is the default :meth:`embed_macs`."""
        from meteor_cli.flops import vit_block_macs

        return vit_block_macs(n, cfg.width, cls.mlp_hidden(cfg), attn_dim=cfg.heads * (cfg.width // cfg.heads),
                              mlp_mats=3)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Resize, then standardise each image as ``Pix2StructImageProcessor.normalize`` does."""
        x = self.resize(images)
        n = x[0].numel()
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(n**-0.5)
        return (x - mean) / std

    def flatten_patches(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) → (B, g², 2 + 3·p²): ``[row id, col id, pixels]`` per patch in raster order."""
        B, C, S, _ = pixels.shape
        p = self.cfg.patch
        g = S // p
        patches = pixels.reshape(B, C, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(B, g * g, p * p * C)
        ids = torch.arange(1, g + 1, device=pixels.device, dtype=pixels.dtype)
        rc = torch.stack([ids.repeat_interleave(g), ids.repeat(g)], dim=-1)  # (g², 2): 1-based row, column
        return torch.cat([rc.expand(B, -1, -1), patches], dim=-1)

    def embed(self, pixels: torch.Tensor) -> TokenState:
        return self._start(self.net.embeddings(self.flatten_patches(pixels)), None)

    def run_blocks(self, state: TokenState, start: int, end: int) -> TokenState:
        x = state.x
        for layer in self.net.encoder.layer[start:end]:
            x, _ = layer(x, attention_mask=None)
        return state.with_tokens(x)

    def finalize(self, state: TokenState) -> TokenState:
        return state.with_tokens(self.net.layernorm(state.x))

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.flatten_patches(pixels)
        mask = torch.ones(patches.shape[:2], device=patches.device)  # every patch is real (no padding)
        return self.net(flattened_patches=patches, attention_mask=mask).last_hidden_state
