"""timm Vision Transformer adapter (ViT; also the CLIP-style towers timm ships)."""

from __future__ import annotations

import torch

from meteor_cli.config import EncoderConfig
from meteor_cli.model.encoders.base import EncoderAdapter, TokenState
from meteor_cli.registry import register_encoder


@register_encoder("vit", family="vit", description="timm VisionTransformer, pruned between blocks")
class ViTAdapter(EncoderAdapter):
    """``patch_embed → _pos_embed → patch_drop → norm_pre → blocks[i] → norm`` reproduces
    timm's ``forward_features``; pruning between blocks is a gather on the patch tokens."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__(cfg)
        from timm.models.vision_transformer import VisionTransformer

        self.net = VisionTransformer(img_size=cfg.image_size, patch_size=cfg.patch, embed_dim=cfg.width,
                                     depth=cfg.depth, num_heads=cfg.heads, mlp_ratio=cfg.mlp_ratio,
                                     class_token=cfg.has_cls, num_classes=0, global_pool="")
        self.load_weights(self.net, cfg.weights)

    def embed(self, pixels: torch.Tensor) -> TokenState:
        m = self.net
        x = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(pixels))))
        p = m.num_prefix_tokens
        return self._start(x[:, p:], x[:, :p] if p else None)

    def run_blocks(self, state: TokenState, start: int, end: int) -> TokenState:
        return state.run_through(self.net.blocks[start:end], lambda blk, t: blk(t))

    def finalize(self, state: TokenState) -> TokenState:
        return state.with_tokens(self.net.norm(state.tokens()))

    def cls_attention(self, state: TokenState, block: int) -> torch.Tensor | None:
        if state.prefix is None or state.block_input is None:
            return None
        blk = self.net.blocks[block]
        t = blk.norm1(state.block_input)
        B, L, D = t.shape
        H = blk.attn.num_heads
        qkv = blk.attn.qkv(t).view(B, L, 3, H, D // H)
        q, k = qkv[:, :1, 0].float(), qkv[:, :, 1].float()  # CLS query (B,1,H,dh); keys (B,L,H,dh)
        q, k = blk.attn.q_norm(q), blk.attn.k_norm(k)
        logits = torch.einsum("bqhd,bkhd->bhqk", q, k) * (D // H) ** -0.5  # (B,H,1,L): the CLS row only
        a = logits.softmax(-1).mean(1)[:, 0]  # (B, L)
        return a[:, state.prefix.shape[1]:]

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(pixels)
