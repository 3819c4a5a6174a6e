"""timm EVA-02 adapter (``timm.models.eva.Eva``, unmodified).

Upstream facts (timm 1.0):

* ``x, rope = net._pos_embed(net.patch_embed(img))`` prepends the CLS token, adds the absolute
  position table and returns the 2-D RoPE table ``rope`` (N, 2·d): the sin and cos rows of the
  N patch positions in raster order (``net.rope.get_embed()``). Prefix tokens get no RoPE.
* Every block takes it, ``blk(x, rope=rope)``; ``forward_features`` is ``norm_pre`` → blocks →
  ``norm``. With EVA-02's ``global_pool="avg"`` the ``norm`` is the identity (``fc_norm`` acts
  only in the pooled head, which meteor does not use).
* After timm's own patch dropout, ``Eva`` indexes the table with the kept patch indices
  (``apply_keep_indices_nlc``) and gives it a head axis, (B, 1, k, 2·d). The adapter does the same
  with the kept tokens' original positions (``TokenState.pos``) after every Stage-1 gather, so
  each survivor keeps its rotary phase.

The module is EVA-02-B/L shaped: SwiGLU MLP with a scale norm (``scale_mlp``), separate q/k/v
projections, RoPE frequencies referenced to the 16×16 pre-training grid (``ref_feat_shape``);
``mlp_ratio`` is the SwiGLU hidden ratio (EVA-02: 8/3); ``has_cls`` decides the CLS token. Local
weights: a timm state dict of the same shapes (e.g. a ``num_classes=0`` EVA-02 at this size).

EAGLE-X4's ``det-1024`` tower is EVA-02-L/16 from detection (ViTDet style: no CLS, a 197-row
position table interpolated to the 64×64 grid at run time, window attention in 18 of its 24
blocks). Here every block attends globally — windows cannot partition a pruned token set anyway
(METHOD §3.6) — and the 64×64 position table is a parameter of its own (+3.99 M parameters).
"""

from __future__ import annotations

import torch

from meteor_cli.config import EncoderConfig
from meteor_cli.model.encoders.base import EncoderAdapter, TokenState
from meteor_cli.registry import register_encoder

#: EVA-02's pre-training grid (224 px / patch 14), to which timm refers the RoPE frequencies.
PRETRAIN_GRID = (16, 16)


@register_encoder("eva02", family="eva02", description="timm EVA-02 (2-D RoPE indexed by the kept tokens' positions)")
class EVA02Adapter(EncoderAdapter):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__(cfg)
        from timm.models.eva import Eva

        self.net = Eva(img_size=cfg.image_size, patch_size=cfg.patch, embed_dim=cfg.width, depth=cfg.depth,
                       num_heads=cfg.heads, mlp_ratio=cfg.mlp_ratio, qkv_fused=False, swiglu_mlp=True, scale_mlp=True,
                       use_rot_pos_emb=True, ref_feat_shape=PRETRAIN_GRID, class_token=cfg.has_cls, num_classes=0)
        self.load_weights(self.net, cfg.weights)

    @classmethod
    def block_macs(cls, cfg: EncoderConfig, block: int, n: float) -> float:
        """Separate q/k/v + output projections over ``heads·(width // heads)``, the n×n attention
        (RoPE and the scale norm are element-wise), and SwiGLU's three matrices (fc1_g, fc1_x, fc2)."""
        from meteor_cli.flops import vit_block_macs

        return vit_block_macs(n, cfg.width, cls.mlp_hidden(cfg), attn_dim=cfg.heads * (cfg.width // cfg.heads),
                              mlp_mats=3)

    def embed(self, pixels: torch.Tensor) -> TokenState:
        m = self.net
        x, _ = m._pos_embed(m.patch_embed(pixels))  # the table is re-read per segment (:meth:`rope`)
        x = m.norm_pre(x)
        p = m.num_prefix_tokens
        return self._start(x[:, p:], x[:, :p] if p else None)

    def rope(self, state: TokenState) -> torch.Tensor:
        """(B, 1, N, 2·d): the RoPE rows of the patch tokens still present, as timm's patch dropout gathers them."""
        from timm.layers.pos_embed_sincos import apply_keep_indices_nlc

        return apply_keep_indices_nlc(state.x, self.net.rope.get_embed(), state.pos).unsqueeze(1)

    def run_blocks(self, state: TokenState, start: int, end: int) -> TokenState:
        rope = self.rope(state)
        return state.run_through(self.net.blocks[start:end], lambda blk, t: blk(t, rope=rope))

    def finalize(self, state: TokenState) -> TokenState:
        return state.with_tokens(self.net.norm(state.tokens()))

    def cls_attention(self, state: TokenState, block: int) -> torch.Tensor | None:
        """The CLS row of block ``block``'s attention from its own q/k, with RoPE on the patch keys."""
        if state.prefix is None or state.block_input is None:
            return None
        from timm.layers.pos_embed_sincos import apply_rot_embed_cat

        blk = self.net.blocks[block]
        attn = blk.attn
        t = blk.norm1(state.block_input)
        B, L, _ = t.shape
        H, dh, p = attn.num_heads, attn.head_dim, state.prefix.shape[1]
        q = attn.q_norm(attn.q_proj(t[:, :1]).view(B, 1, H, dh).transpose(1, 2))  # (B, H, 1, dh); no RoPE on CLS
        k = attn.k_norm(attn.k_proj(t).view(B, L, H, dh).transpose(1, 2))  # (B, H, L, dh)
        k = torch.cat([k[:, :, :p], apply_rot_embed_cat(k[:, :, p:], self.rope(state), half=attn.rotate_half)], dim=2)
        a = (q.float() @ k.float().transpose(-2, -1) * attn.scale).softmax(-1).mean(1)[:, 0]  # (B, L)
        return a[:, p:]

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(pixels)
