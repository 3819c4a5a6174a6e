"""timm ConvNeXt adapter.

ConvNeXt's convolutions need the full grid, so no token can be dropped inside it; its Stage-1
pruning points all sit on its final feature map, where the budgets apply in sequence (METHOD A2,
a METEOR-style default). This saves no compute inside ConvNeXt, only downstream.
"""

from __future__ import annotations

import torch

from meteor_cli.config import EncoderConfig
from meteor_cli.model.encoders.base import EncoderAdapter, TokenState
from meteor_cli.registry import register_encoder


@register_encoder("convnext", family="convnext", description="timm ConvNeXt; Stage 1 prunes its final map")
class ConvNeXtAdapter(EncoderAdapter):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__(cfg)
        from timm.models.convnext import ConvNeXt

        self.net = ConvNeXt(depths=tuple(cfg.stage_depths or [1] * len(cfg.dims or [])), dims=tuple(cfg.dims or []),
                            num_classes=0)
        self.load_weights(self.net, cfg.weights)

    @classmethod
    def macs(cls, cfg: EncoderConfig, tokens: list[float], final: float) -> float:
        """:func:`meteor_cli.flops.convnext_macs`: the stages always see the full grid, whatever Stage 1 keeps."""
        from meteor_cli.flops import convnext_macs

        return convnext_macs(cfg.image_size, cfg.stage_depths or [1] * len(cfg.dims or []), cfg.dims or [])

    def embed(self, pixels: torch.Tensor) -> TokenState:
        spatial = self.net.stem(pixels)
        B = pixels.shape[0]
        empty = spatial.new_zeros(B, 0, self.width)
        state = self._start(empty, None)
        state.spatial = spatial
        return state

    def run_blocks(self, state: TokenState, start: int, end: int) -> TokenState:
        """Stages ``start``..``end``-1; after the last stage the map becomes (B, h·w, D) tokens."""
        if state.spatial is None:
            return state  # already flattened: nothing left to run
        x = state.spatial
        for stage in self.net.stages[start:end]:
            x = stage(x)
        if end < self.depth:
            state.spatial = x
            return state
        x = self.net.norm_pre(x)
        tokens = x.flatten(2).transpose(1, 2)  # (B, h·w, D)
        out = self._start(tokens, None)
        out.grid = (x.shape[-2], x.shape[-1])
        return out

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(pixels).flatten(2).transpose(1, 2)
