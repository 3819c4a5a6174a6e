"""Hugging Face SAM image encoder adapter (``SamVisionModel``, unmodified).

``SamVisionModel.vision_encoder``: ``patch_embed`` → (B, h, w, C) channels-last map, plus the
absolute ``pos_embed`` (1, h, w, C) → ``layers[i]`` (ViT-Det blocks with decomposed relative
positions; most partition the map into ``window_size`` × ``window_size`` windows, zero-padded,
and attend inside each window; the blocks in ``global_attn_indexes`` attend over the whole map) →
``neck`` (1×1 conv, LayerNorm, 3×3 conv, LayerNorm) → (B, output_channels, h, w), the
``last_hidden_state``. No CLS token.

Why Stage 1 prunes SAM only at its output: a windowed block needs the full h×w map to cut its
windows and the neck's 3×3 convolution needs every neighbour, so no token can be dropped between
blocks without changing what the kept ones compute. As for ConvNeXt (METHOD A2), every Stage-1
point is the last block: the budgets apply in sequence to the neck's final map (tokens
``output_channels`` wide), scored on that map. This saves no compute inside SAM, only downstream;
config validation defaults ``prune_points`` to ``[depth − 1] × 3`` and rejects others.

Shapes from the config: ``width`` is the neck's output channels; the transformer is ``dims[0]``
wide (``dims = [transformer width, width]``; default: ``width``). Random initialisation follows
SAM's layout at any size: windows cover the share of the grid that SAM's 14 cover of its 64
(``round(grid·14/64)``), and the last block of every quarter attends globally (ViT-B 2, 5, 8, 11;
ViT-L 5, 11, 17, 23; ViT-H 7, 15, 23, 31; only the last block below depth 4), weights drawn with
std 0.02. ``weights`` is a local directory for ``from_pretrained``.

``meteor flops`` counts SAM from the config with that same layout (padded windows, decomposed
relative positions, neck convolutions: :func:`meteor_cli.flops.sam_block_macs`); SAM's released
ViT-B/L/H checkpoints follow it (14-token windows on the 64×64 grid, the same global blocks).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from meteor_cli.config import EncoderConfig
from meteor_cli.model.encoders.base import EncoderAdapter, TokenState
from meteor_cli.registry import register_encoder


#: Weight std for random initialisation. SamVisionConfig's default (1e-10) makes every output ~1e-22.
INIT_STD = 0.02


def sam_window(grid: int) -> int:
    """Window side for a ``grid``-wide map: SAM's 14 at its 64×64 grid, scaled (≥ 1)."""
    return max(1, round(grid * 14 / 64))


def sam_global_blocks(depth: int) -> list[int]:
    """Blocks with global attention: the last of every quarter (only the last block below depth 4)."""
    if depth < 4:
        return [depth - 1]
    return [depth * j // 4 - 1 for j in range(1, 5)]


@register_encoder("sam", family="sam",
                  description="HF SamVisionModel (windowed ViT-Det + neck); Stage 1 prunes its final map")
class SAMAdapter(EncoderAdapter):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__(cfg)
        from transformers import SamVisionConfig, SamVisionModel

        if cfg.weights:
            self.net = self.load_hf(SamVisionModel)
            c = self.net.config
            self.check_loaded(width=c.output_channels, depth=c.num_hidden_layers, image_size=c.image_size,
                              patch=c.patch_size)
        else:
            hf = SamVisionConfig(hidden_size=cfg.dims[0] if cfg.dims else cfg.width, output_channels=cfg.width,
                                 num_hidden_layers=cfg.depth, num_attention_heads=cfg.heads, mlp_ratio=cfg.mlp_ratio,
                                 image_size=cfg.image_size, patch_size=cfg.patch, window_size=sam_window(cfg.grid),
                                 global_attn_indexes=sam_global_blocks(cfg.depth), initializer_range=INIT_STD)
            self.net = SamVisionModel._from_config(hf, attn_implementation="sdpa")

    # Cost: the blocks and the neck always run on the full map (Stage 1 prunes only the neck's output).

    @classmethod
    def prefix_tokens(cls, cfg: EncoderConfig) -> int:
        return 0

    @classmethod
    def transformer_width(cls, cfg: EncoderConfig) -> int:
        return cfg.dims[0] if cfg.dims else cfg.width

    @classmethod
    def mlp_hidden(cls, cfg: EncoderConfig) -> int:
        return int(cls.transformer_width(cfg) * cfg.mlp_ratio)  # SamVisionConfig's mlp_dim

    @classmethod
    def embed_macs(cls, cfg: EncoderConfig) -> float:
        return cfg.num_tokens * cfg.patch * cfg.patch * 3 * cls.transformer_width(cfg)

    @classmethod
    def block_macs(cls, cfg: EncoderConfig, block: int, n: float) -> float:
        """:func:`meteor_cli.flops.sam_block_macs` on the full grid (``n`` is always the full map here):
        windowed blocks padded to a multiple of :func:`sam_window`, global ones at :func:`sam_global_blocks`."""
        from meteor_cli.flops import sam_block_macs

        window = 0 if block in sam_global_blocks(cfg.depth) else sam_window(cfg.grid)
        return sam_block_macs(cfg.grid, cls.transformer_width(cfg), cls.mlp_hidden(cfg), window)

    @classmethod
    def finalize_macs(cls, cfg: EncoderConfig, n: float) -> float:
        """The neck on the full map: 1×1 conv (transformer width → width) and 3×3 conv (width → width)."""
        return cfg.num_tokens * cfg.width * (cls.transformer_width(cfg) + 9 * cfg.width)

    def embed(self, pixels: torch.Tensor) -> TokenState:
        enc = self.net.vision_encoder
        x = enc.patch_embed(pixels)  # (B, h, w, C)
        if enc.pos_embed is not None:
            x = x + enc.pos_embed
        state = self._start(x.new_zeros(x.shape[0], 0, self.width), None)
        return replace(state, spatial=x)

    def run_blocks(self, state: TokenState, start: int, end: int) -> TokenState:
        """Layers ``start``..``end``-1 on the map; after the last one the neck's map becomes (B, h·w, width) tokens."""
        if state.spatial is None:
            return state  # the neck already ran: nothing left
        enc = self.net.vision_encoder
        x = state.spatial
        for layer in enc.layers[start:end]:
            x = layer(x)
        if end < self.depth:
            return replace(state, spatial=x)
        fmap = enc.neck(x)  # (B, width, h, w)
        out = self._start(fmap.flatten(2).transpose(1, 2), None)
        out.grid = (fmap.shape[-2], fmap.shape[-1])
        return out

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values=pixels).last_hidden_state.flatten(2).transpose(1, 2)
