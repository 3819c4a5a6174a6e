"""EAGLE's vision towers as encoder adapters over the unmodified upstream modules.

One adapter per tower kind of a released EAGLE-X4/X5 checkpoint (``mm_vision_tower``), each
reproducing what NVlabs/EAGLE's ``multimodal_encoder/*_encoder.py`` does with its backbone (see
``docs/eagle.md`` for the sources). Every tower receives the same input: the padded-square image
at the mixture's size (1024 in releases) in [0, 1]; it normalises it with CLIP's mean/std (the
mixture's ``CLIPImageProcessor``), then resizes it to its own input size with bilinear
``align_corners=True`` when that differs, as ``MultiBackboneChannelConcatenationVisionTower.forward``
does. Its final map is brought to the shared grid (32×32 in releases) by :meth:`to_grid`: bilinear,
``align_corners=True``, computed in float32.

=================  ==========================================  ====================================
family             upstream module                             what EAGLE takes from it
=================  ==========================================  ====================================
``eagle-clip``     transformers ``CLIPVisionModel``            CLS dropped after the embeddings,
                                                               before ``pre_layrnorm``; all layers;
                                                               no ``post_layernorm``; 24² → 32²
``eagle-convnext`` timm ``ConvNeXt`` (LayerNorm eps 1e-5)      last stage, 32×32 natively
``eagle-sam``      transformers ``SamVisionModel``'s encoder   short neck (``conv1`` + ``layer_norm1``
                                                               in float32), ``pixel_unshuffle(2)``
``eagle-det``      timm ``EvaBlock`` × depth + patch conv +     EVA-02 ViTDet: window attention as a
                   a pre-training position table               mask on original positions, RoPE
``eagle-pix2struct`` transformers ``Pix2StructVisionModel``    re-standardised 0–255 image, 45×45
                                                               patches, resampled to the grid
=================  ==========================================  ====================================

Stage 1 (METEOR-style defaults, docs/eagle.md): the transformer towers whose blocks run on any
subset of tokens — ``eagle-clip`` (absolute positions added at the embedding), ``eagle-det``
(windows as a mask on ORIGINAL positions, RoPE indexed by them) and ``eagle-pix2struct`` (row/column
embeddings at the input) — prune progressively after blocks ``round(L·j/3)−1`` on their native
grids; ``eagle-convnext`` (convolutions) and ``eagle-sam`` (HF SAM's window partition needs the
whole map) prune their final map only (``output_pruned``). The pre-projection fusion then
resamples what survives to the shared grid (:meth:`~meteor_cli.model.vlm.MultiEncoderVLM._pre_projection`).

Shapes come from the :class:`~meteor_cli.config.EncoderConfig` (which :mod:`meteor_cli.model.eagle.format`
fills from the checkpoint's tensor shapes); settings a config field does not cover are in
``EncoderConfig.options``:

* ``mlp`` — exact MLP hidden width (all transformer towers);
* ``head_classes`` — rows of ConvNeXt's (unused) classifier, so the release's ``head.fc`` loads;
* ``transformer_width``, ``neck``, ``window``, ``global_blocks`` — SAM;
* ``window``, ``global_blocks``, ``pretrain_grid``, ``rope_ref`` — det (EVA-02 ViTDet);
* ``max_patches``, ``d_kv``, ``seq_len`` — Pix2Struct.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
from torch import nn

from meteor_cli.config import EncoderConfig
from meteor_cli.model.encoders.base import EncoderAdapter, TokenState
from meteor_cli.model.encoders.clip import CLIPAdapter
from meteor_cli.model.encoders.convnext import ConvNeXtAdapter
from meteor_cli.model.encoders.eva02 import EVA02Adapter
from meteor_cli.model.encoders.pix2struct import Pix2StructAdapter
from meteor_cli.model.encoders.sam import SAMAdapter
from meteor_cli.registry import register_encoder

#: OpenAI CLIP's normalisation, at the precision EAGLE's processors use.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def resize_aligned(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize with ``align_corners=True`` in float32 (EAGLE's mixture and towers); identity at the same size."""
    if x.shape[-2:] == (size, size):
        return x
    return nn.functional.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=True).to(x.dtype)


class EagleTower(EncoderAdapter):
    """What every EAGLE tower shares: CLIP normalisation, aligned resizing, output-only pruning."""

    #: Stage 1 prunes only the final map (config validation reads this); towers whose blocks
    #: run on any subset of tokens set it False.
    output_pruned = True

    def opt(self, key: str, default: Any = None) -> Any:
        return (self.cfg.options or {}).get(key, default)

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        return resize_aligned(images, self.cfg.image_size)

    @property
    def param_dtype(self) -> torch.dtype:
        """The tower's weight dtype (EAGLE casts each tower's input to it)."""
        return next(self.net.parameters()).dtype

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise the mixture input, then resize it to this tower's size (EAGLE's order)."""
        return self.resize((images.float() - self.mean) / self.std).to(self.param_dtype)

    def to_grid(self, fmap: torch.Tensor, grid: int) -> torch.Tensor:
        return resize_aligned(fmap, grid)

    def cls_attention(self, state: TokenState, block: int) -> torch.Tensor | None:
        return None

    @classmethod
    def prefix_tokens(cls, cfg: EncoderConfig) -> int:
        return 0

    @classmethod
    def mlp_hidden(cls, cfg: EncoderConfig) -> int:
        return int((cfg.options or {}).get("mlp", int(cfg.width * cfg.mlp_ratio)))


@register_encoder("eagle-clip", family="eagle-clip",
                  description="EAGLE clip-448 tower: HF CLIPVisionModel at 336 px, CLS dropped before the layers")
class EagleCLIP(EagleTower, CLIPAdapter):
    """``hr_clip_encoder.HRCLIPVisionTower``: the embeddings (CLS and positions added), the CLS row
    dropped, ``pre_layrnorm``, every encoder layer over the patch tokens only; the last layer's output."""

    output_pruned = False  # blocks run on any subset of tokens: Stage 1 prunes inside

    def __init__(self, cfg: EncoderConfig) -> None:
        EncoderAdapter.__init__(self, cfg)
        from transformers import CLIPVisionConfig, CLIPVisionModel

        hf = CLIPVisionConfig(hidden_size=cfg.width, intermediate_size=self.mlp_hidden(cfg), num_hidden_layers=cfg.depth,
                              num_attention_heads=cfg.heads, image_size=cfg.image_size, patch_size=cfg.patch)
        self.net = CLIPVisionModel._from_config(hf, attn_implementation="sdpa")

    def embed(self, pixels: torch.Tensor) -> TokenState:
        x = self.net.embeddings(pixels)
        return self._start(self.net.pre_layrnorm(x[:, 1:]), None)


@register_encoder("eagle-convnext", family="eagle-convnext",
                  description="EAGLE convnext-1024 tower: timm ConvNeXt (LayerNorm eps 1e-5), last stage")
class EagleConvNeXt(EagleTower, ConvNeXtAdapter):
    """``convnext_encoder.ConvNextVisionTower``: stem and every stage; the last stage's map (stride 32)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        EncoderAdapter.__init__(self, cfg)
        from timm.models.convnext import ConvNeXt

        self.net = ConvNeXt(depths=tuple(cfg.stage_depths or []), dims=tuple(cfg.dims or []), norm_eps=1e-5,
                            num_classes=int(self.opt("head_classes", 0)))


@register_encoder("eagle-sam", family="eagle-sam",
                  description="EAGLE sam-1024 tower: HF SAM encoder, short neck, pixel_unshuffle(2)")
class EagleSAM(EagleTower, SAMAdapter):
    """``sam_encoder.SAMVisionTower`` with ``add_pixel_shuffle``: SAM's ViT-Det blocks on the
    (image/patch)² map, the neck cut to ``conv1`` + ``layer_norm1`` (``neck`` channels; the
    normalisation in float32 as EAGLE's ``SamLayerNorm`` does it), then ``pixel_unshuffle(2)``:
    (B, neck, 2g, 2g) → (B, 4·neck, g, g), channel ``c·4 + dy·2 + dx``. ``cfg.patch`` is twice SAM's
    patch, so ``cfg.grid`` is the unshuffled grid and ``cfg.width`` = 4·neck."""

    def __init__(self, cfg: EncoderConfig) -> None:
        EncoderAdapter.__init__(self, cfg)
        from transformers import SamVisionConfig, SamVisionModel

        hf = SamVisionConfig(hidden_size=int(self.opt("transformer_width")), output_channels=int(self.opt("neck")),
                             num_hidden_layers=cfg.depth, num_attention_heads=cfg.heads, mlp_dim=self.mlp_hidden(cfg),
                             image_size=cfg.image_size, patch_size=cfg.patch // 2, window_size=int(self.opt("window")),
                             global_attn_indexes=list(self.opt("global_blocks")))
        self.net = SamVisionModel._from_config(hf, attn_implementation="sdpa")
        neck = self.net.vision_encoder.neck
        neck.conv2, neck.layer_norm2 = nn.Identity(), nn.Identity()  # EAGLE's ShortSamVisionNeck

    @classmethod
    def mlp_hidden(cls, cfg: EncoderConfig) -> int:
        return int((cfg.options or {})["mlp"])

    def run_blocks(self, state: TokenState, start: int, end: int) -> TokenState:
        if state.spatial is None:
            return state
        enc = self.net.vision_encoder
        x = state.spatial
        for layer in enc.layers[start:end]:
            x = layer(x)
        if end < self.depth:
            return TokenState(x=state.x, pos=state.pos, prefix=None, grid=state.grid, spatial=x)
        neck = enc.neck
        y = neck.conv1(x.permute(0, 3, 1, 2))
        ln = neck.layer_norm1
        yf = y.float()
        u = yf.mean(1, keepdim=True)
        yf = (yf - u) / torch.sqrt((yf - u).pow(2).mean(1, keepdim=True) + ln.eps)
        y = ln.weight[:, None, None] * yf.to(y.dtype) + ln.bias[:, None, None]
        y = nn.functional.pixel_unshuffle(y, 2)  # (B, 4·neck, g, g)
        out = self._start(y.flatten(2).transpose(1, 2), None)
        out.grid = (y.shape[-2], y.shape[-1])
        return out

    @classmethod
    def macs(cls, cfg: EncoderConfig, tokens: list[float], final: float) -> float:
        """Patch embedding, every block on the full (2g)² map (windows padded, decomposed relative
        positions: :func:`~meteor_cli.flops.sam_block_macs`) and the 1×1 ``conv1``; pruning saves nothing inside."""
        from meteor_cli.flops import sam_block_macs

        o = cfg.options or {}
        p, d, side = cfg.patch // 2, int(o["transformer_width"]), cfg.image_size // (cfg.patch // 2)
        window, glob = int(o["window"]), set(o["global_blocks"])
        embed = side * side * p * p * 3 * d
        blocks = sum(sam_block_macs(side, d, cls.mlp_hidden(cfg), 0 if b in glob else window) for b in range(cfg.depth))
        return embed + blocks + side * side * d * int(o["neck"])


class ViTDetBackbone(nn.Module):
    """The parameters of EAGLE's ``EVAViT`` (eva02-l-16, detection): a patch convolution
    (``patch_embed.proj``), the pre-training position table ``pos_embed`` (1, P²+1, D) and timm
    ``EvaBlock``s (separate q/k/v, SwiGLU with a scale norm, LayerNorm eps 1e-6, no prefix tokens).
    No final norm. The forward lives in :class:`EagleDet`, block by block."""

    def __init__(self, cfg: EncoderConfig, mlp: int, pretrain_grid: int) -> None:
        super().__init__()
        from timm.models.eva import EvaBlock

        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, cfg.width, kernel_size=cfg.patch, stride=cfg.patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, pretrain_grid * pretrain_grid + 1, cfg.width))
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList(
            EvaBlock(cfg.width, cfg.heads, qkv_bias=True, qkv_fused=False, mlp_ratio=(mlp + 0.5) / cfg.width, swiglu_mlp=True,
                     scale_mlp=True, num_prefix_tokens=0, norm_layer=norm)
            for _ in range(cfg.depth))


@register_encoder("eagle-det", family="eagle-det",
                  description="EAGLE det-1024 tower: EVA-02-L ViTDet (timm EvaBlocks), windows as a position mask, RoPE")
class EagleDet(EagleTower, EVA02Adapter):
    """``vision_models/eva_vit.py`` ``EVAViT`` as EAGLE builds it for ``det-1024``.

    * patch convolution → (B, G, G, D); plus the position table without its CLS row, resized
      P² → G² bicubic (``align_corners=False``, float32);
    * blocks ``i`` in ``global_blocks`` attend over the whole G×G map, the others inside
      ``window``×``window`` windows. Windows are an attention mask keyed by each token's ORIGINAL
      grid position (``TokenState.pos``): token q sees token k iff both lie in the same window.
      Unpruned this is exactly EAGLE's window partition (G a multiple of ``window``: no padding);
      after Stage-1 pruning each survivor still attends to the survivors of its own window;
    * RoPE (timm ``RotaryEmbeddingCat``, interleaved pairs as EVA's ``rotate_half``): window blocks
      use window-local positions (``window`` grid referred to ``rope_ref``=16), global blocks the
      G grid referred to 16 — EVA's ``rope_win`` / ``rope_glb`` with ``intp_freq``;
    * the last block's (B, G², D) tokens, no norm.
    """

    output_pruned = False  # blocks run on any subset of tokens: Stage 1 prunes inside

    def __init__(self, cfg: EncoderConfig) -> None:
        EncoderAdapter.__init__(self, cfg)
        self.window = int(self.opt("window", 16))
        self.global_blocks = {int(b) for b in self.opt("global_blocks", [i for i in range(cfg.depth) if i % 3 == 2])}
        if cfg.grid % self.window:
            from meteor_cli.errors import ConfigError

            raise ConfigError(f"encoder {cfg.name}: grid {cfg.grid} is not a multiple of the window {self.window}",
                              "EAGLE's det tower runs a 64×64 grid with 16×16 windows")
        self.net = ViTDetBackbone(cfg, self.mlp_hidden(cfg), int(self.opt("pretrain_grid", 14)))
        ref = int(self.opt("rope_ref", 16))
        hd = cfg.width // cfg.heads
        self.register_buffer("rope_window", self._rope(hd, self.window, ref), persistent=False)
        self.register_buffer("rope_global", self._rope(hd, cfg.grid, ref), persistent=False)

    @staticmethod
    def _rope(head_dim: int, side: int, ref: int) -> torch.Tensor:
        """(side², 2·head_dim): timm's sin|cos table of a side×side grid referred to ref×ref."""
        from timm.layers import RotaryEmbeddingCat

        with torch.device("cpu"):
            rope = RotaryEmbeddingCat(head_dim, in_pixels=False, feat_shape=[side, side], ref_feat_shape=[ref, ref])
            return rope.get_embed().float()

    @classmethod
    def block_macs(cls, cfg: EncoderConfig, block: int, n: float) -> float:
        """q/k/v/output projections, SwiGLU's three matrices, and attention over the keys a query
        sees: all ``n`` tokens in global blocks, in window blocks its window's share (``n·w²/G²``,
        exact unpruned; pruning assumed spread evenly over the windows)."""
        o = cfg.options or {}
        w = int(o.get("window", 16))
        glob = set(o.get("global_blocks", [i for i in range(cfg.depth) if i % 3 == 2]))
        keys = n if block in glob else n * w * w / cfg.num_tokens
        a, mlp = cfg.width, cls.mlp_hidden(cfg)
        return 4 * n * cfg.width * a + 2 * n * keys * a + 3 * n * cfg.width * mlp

    def embed(self, pixels: torch.Tensor) -> TokenState:
        net = self.net
        x = net.patch_embed.proj(pixels).permute(0, 2, 3, 1)  # (B, G, G, D)
        G = x.shape[1]
        table = net.pos_embed[:, 1:]
        p = math.isqrt(int(table.shape[1]))  # int(): a plain number also under jit tracing (fvcore)
        if p != G:
            table = nn.functional.interpolate(table.reshape(1, p, p, -1).permute(0, 3, 1, 2).float(), size=(G, G),
                                              mode="bicubic", align_corners=False).to(table.dtype).permute(0, 2, 3, 1)
        x = x + table.reshape(1, G, G, -1)
        return self._start(x.flatten(1, 2), None)

    def _local(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(window id, index inside the window) of raster positions ``pos`` on the G grid."""
        G, w = self.cfg.grid, self.window
        r, c = pos // G, pos % G
        return (r // w) * (G // w) + c // w, (r % w) * w + c % w

    def run_blocks(self, state: TokenState, start: int, end: int) -> TokenState:
        x = state.x
        win, local = self._local(state.pos)
        rope_w = self.rope_window[local].unsqueeze(1).to(x.dtype)  # (B, 1, N, 2·hd)
        rope_g = self.rope_global[state.pos].unsqueeze(1).to(x.dtype)
        same = win.unsqueeze(-1) == win.unsqueeze(-2)  # (B, N, N)
        mask = torch.zeros(same.shape, dtype=x.dtype, device=x.device).masked_fill_(~same, float("-inf")).unsqueeze(1)
        for i in range(start, end):
            blk = self.net.blocks[i]
            if i in self.global_blocks:
                x = blk(x, rope=rope_g)
            else:
                x = blk(x, rope=rope_w, attn_mask=mask)
        return TokenState(x=x, pos=state.pos, prefix=None, grid=state.grid)

    def finalize(self, state: TokenState) -> TokenState:
        return state


@register_encoder("eagle-pix2struct", family="eagle-pix2struct",
                  description="EAGLE pix2struct-1024 tower: HF Pix2StructVisionModel on the re-standardised image")
class EaglePix2Struct(EagleTower, Pix2StructAdapter):
    """``pix2struct_encoder.Pix2StructLargeVisionTower`` (``de_normalize``, ``do_resize``): the
    mixture's normalised image de-normalised to 0–255, then Pix2Struct's image processor — per-image
    standardisation (population std, floored at 1/√values) at the input size, a bilinear antialiased
    resize to ``rows × patch`` (rows = ⌊√(max_patches·p²/S²)·S/p⌋: 45 for 2048 patches), patches
    with 1-based row/column ids — and the encoder (``last_hidden_state``, final layernorm). EAGLE pads
    the sequence to ``max_patches`` with a zero attention mask and keeps the first rows² = 2025
    outputs; padding keys are masked out, so running the rows² real patches alone is the same
    computation. ``cfg.image_size`` is rows·patch (720)."""

    output_pruned = False  # blocks run on any subset of tokens: Stage 1 prunes inside

    def __init__(self, cfg: EncoderConfig) -> None:
        EncoderAdapter.__init__(self, cfg)
        from transformers import Pix2StructVisionConfig, Pix2StructVisionModel

        hf = Pix2StructVisionConfig(hidden_size=cfg.width, patch_embed_hidden_size=3 * cfg.patch**2,
                                    d_ff=self.mlp_hidden(cfg), d_kv=int(self.opt("d_kv", cfg.width // cfg.heads)),
                                    num_hidden_layers=cfg.depth, num_attention_heads=cfg.heads,
                                    seq_len=int(self.opt("seq_len", 4096)))
        self.net = Pix2StructVisionModel._from_config(hf, attn_implementation="sdpa")

    @staticmethod
    def rows(image: int, patch: int, max_patches: int) -> int:
        """Pix2StructImageProcessor's patch rows for a square ``image``: ⌊√(max_patches·p²/S²)·S/p⌋."""
        import math

        scale = math.sqrt(max_patches * (patch / image) * (patch / image))
        return max(min(math.floor(scale * image / patch), max_patches), 1)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() * 255.0  # the 0–255 image the processor receives (EAGLE: (x·std + mean)·255)
        n = x[0].numel()
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True, correction=0).clamp_min(n**-0.5)
        x = (x - mean) / std
        s = self.cfg.image_size
        if x.shape[-2:] != (s, s):
            x = nn.functional.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return x.to(self.param_dtype)
