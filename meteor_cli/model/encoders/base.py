"""What every encoder adapter provides, so Stage 1 can prune between blocks.

The model runs an encoder as ``embed → run_blocks(0, b1+1) → [prune] → run_blocks(b1+1, b2+1)
→ [prune] → … → finalize``. Between segments the tokens live in a :class:`TokenState` that
carries each token's original grid position, so pruned tokens can be put back on the grid
(feature maps for rank estimation, pictures of kept tokens) and RoPE encoders can index their
tables. The CLS token (if any) is kept apart in ``prefix`` and never counted in budgets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from meteor_cli.config import EncoderConfig
from meteor_cli.errors import ConfigError, InputNotFoundError, InvalidInputError


@dataclass
class TokenState:
    """Tokens between encoder segments.

    Attributes:
        x: (B, N, D) patch tokens still present.
        pos: (B, N) long, each token's raster index on the native grid.
        prefix: (B, P, D) CLS/register tokens, or None.
        grid: (h, w) native grid.
        block_input: (B, P+N, D) the input of the last block run (for CLS attention), or None.
        spatial: the map of an encoder that can only be pruned at its output (ConvNeXt: (B, C, H, W);
            SAM: (B, H, W, C), its own layout) while its blocks still run, or None.
    """

    x: torch.Tensor
    pos: torch.Tensor
    prefix: torch.Tensor | None
    grid: tuple[int, int]
    block_input: torch.Tensor | None = None
    spatial: torch.Tensor | None = None

    def gather(self, idx: torch.Tensor) -> TokenState:
        """Keep the tokens at ``idx`` (B, k) — sorted indices into the current tokens."""
        x = torch.gather(self.x, 1, idx.unsqueeze(-1).expand(-1, -1, self.x.shape[-1]))
        return replace(self, x=x, pos=torch.gather(self.pos, 1, idx), block_input=None)

    def with_tokens(self, tokens: torch.Tensor) -> TokenState:
        """Split (B, P+N, D) back into prefix and patch tokens."""
        p = 0 if self.prefix is None else self.prefix.shape[1]
        return replace(self, prefix=tokens[:, :p] if p else None, x=tokens[:, p:])

    def tokens(self) -> torch.Tensor:
        return self.x if self.prefix is None else torch.cat([self.prefix, self.x], dim=1)

    def run_through(self, blocks: Iterable[nn.Module],
                    call: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> TokenState:
        """Run ``blocks`` in order on the prefix + patch tokens, ``call(block, tokens)`` each, and
        remember the last block's input (``block_input``, for CLS attention); no blocks keep the old one."""
        t, last = self.tokens(), None
        for blk in blocks:
            last = t
            t = call(blk, t)
        out = self.with_tokens(t)
        out.block_input = self.block_input if last is None else last
        return out


class EncoderAdapter(nn.Module):
    """Base class: subclasses wrap one upstream module as ``self.net``."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1), persistent=False)

    @property
    def depth(self) -> int:
        return self.cfg.depth

    @property
    def width(self) -> int:
        return self.cfg.width

    @property
    def num_tokens(self) -> int:
        return self.cfg.num_tokens

    @property
    def prune_points(self) -> list[int]:
        return list(self.cfg.prune_points or [])

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, 3, S, S) at this encoder's ``image_size`` (bilinear, antialiased)."""
        s = self.cfg.image_size
        if images.shape[-2:] != (s, s):
            images = nn.functional.interpolate(images, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return images

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) floats in [0, 1] → resized to this encoder's size and normalised."""
        return (self.resize(images) - self.mean) / self.std

    def _start(self, x: torch.Tensor, prefix: torch.Tensor | None) -> TokenState:
        B, N, _ = x.shape
        g = self.cfg.grid
        pos = torch.arange(N, device=x.device).unsqueeze(0).expand(B, N)
        return TokenState(x=x, pos=pos, prefix=prefix, grid=(g, g))

    def embed(self, pixels: torch.Tensor) -> TokenState:  # pragma: no cover - interface
        raise NotImplementedError

    def run_blocks(self, state: TokenState, start: int, end: int) -> TokenState:  # pragma: no cover
        raise NotImplementedError

    def finalize(self, state: TokenState) -> TokenState:
        return state

    def cls_attention(self, state: TokenState, block: int) -> torch.Tensor | None:
        """(B, N) CLS-row attention over the patch tokens at ``block`` (None without a CLS)."""
        return None

    def feature_map(self, state: TokenState) -> torch.Tensor:
        """(B, D, h, w): tokens scattered back to their grid positions (zeros where pruned)."""
        B, N, D = state.x.shape
        h, w = state.grid
        out = state.x.new_zeros(B, h * w, D)
        out.scatter_(1, state.pos.unsqueeze(-1).expand(-1, -1, D), state.x)
        return out.transpose(1, 2).reshape(B, D, h, w)

    def to_grid(self, fmap: torch.Tensor, grid: int) -> torch.Tensor:
        """(B, D, h, w) → (B, D, grid, grid) for pre-projection fusion: bilinear, ``align_corners=False``
        (adapters of a model that resamples otherwise, e.g. EAGLE's towers, override this)."""
        if fmap.shape[-2:] == (grid, grid):
            return fmap
        return nn.functional.interpolate(fmap, size=(grid, grid), mode="bilinear", align_corners=False)

    # -- analytic cost (``meteor flops``; classmethods: nothing is built) ------------------------
    #
    # ``macs(cfg, tokens, final)`` = ``embed_macs`` + Σ_b ``block_macs(b, tokens[b] + prefix)`` +
    # ``finalize_macs(final)``: matrix products only, 1 per multiply-accumulate, exactly what
    # ``torch.utils.flop_counter`` counts (÷ 2) for this adapter's forward with eager attention.
    # The defaults describe a pre-norm ViT with a 3·p² → width patch embedding and a two-matrix
    # MLP; an adapter whose module differs overrides the parts that differ (tests/model/test_encoder_flops.py).

    @classmethod
    def prefix_tokens(cls, cfg: EncoderConfig) -> int:
        """Tokens in every block besides the patch tokens (CLS): ``has_cls`` by default."""
        return 1 if cfg.has_cls else 0

    @classmethod
    def mlp_hidden(cls, cfg: EncoderConfig) -> int:
        """The MLP's hidden width, as the adapter builds it."""
        return int(cfg.width * cfg.mlp_ratio)

    @classmethod
    def embed_macs(cls, cfg: EncoderConfig) -> float:
        """Patch embedding: a p×p/p convolution (or linear layer) from 3 channels to ``width``."""
        return cfg.num_tokens * cfg.patch * cfg.patch * 3 * cfg.width

    @classmethod
    def block_macs(cls, cfg: EncoderConfig, block: int, n: float) -> float:
        """Block ``block`` over ``n`` tokens (prefix included)."""
        from meteor_cli.flops import vit_block_macs

        return vit_block_macs(n, cfg.width, cls.mlp_hidden(cfg))

    @classmethod
    def finalize_macs(cls, cfg: EncoderConfig, n: float) -> float:
        """What :meth:`finalize` costs for the ``n`` patch tokens that leave the last block (a norm: 0)."""
        return 0.0

    @classmethod
    def macs(cls, cfg: EncoderConfig, tokens: list[float], final: float) -> float:
        """MACs of embed → blocks → finalize when ``tokens[b]`` patch tokens enter block b and
        ``final`` leave the encoder (:func:`meteor_cli.flops.stage1_tokens`)."""
        p = cls.prefix_tokens(cfg)
        return (cls.embed_macs(cfg) + sum(cls.block_macs(cfg, b, n + p) for b, n in enumerate(tokens))
                + cls.finalize_macs(cfg, final))

    def run_pruned(self, state: TokenState, name: str, stage1: Callable[..., Any] | None = None, *,
                   observe: Callable[[int, TokenState], None] | None = None, end: int | None = None) -> TokenState:
        """The one block loop of Stage 1: from the embedded ``state``, run the blocks up to each
        pruning point j, then ``observe(j, state)`` (rank estimation) and the Stage-1 hook
        ``stage1(name, j, state, self)`` (kept indices, or ``(indices, new values)`` of a merging
        policy, or None), then the remaining blocks up to ``end`` (default: all). Not finalized.

        Every model that prunes inside an encoder calls this: meteor's own encoders
        (:meth:`~meteor_cli.model.vlm.MultiEncoderVLM.run_encoder`), EAGLE's towers (the same
        path), transformers LLaVA's CLIP tower (:mod:`meteor_cli.model.hf_vlm.tower`) and
        :func:`~meteor_cli.pruning.estimate.estimate_ranks` (``observe``, no hook).
        """
        start = 0
        for j, b in enumerate(self.prune_points):
            state = self.run_blocks(state, start, b + 1)
            start = b + 1
            if observe is not None:
                observe(j, state)
            if stage1 is not None:
                kept = stage1(name, j, state, self)
                if kept is not None:
                    idx, x = kept if isinstance(kept, tuple) else (kept, None)
                    state = state.gather(idx)
                    if x is not None:  # a merging policy (PruMerge+, VisionZip) updated the kept tokens' values
                        state = replace(state, x=x)
        stop = self.depth if end is None else end
        return self.run_blocks(state, start, stop) if stop > start else state

    def forward_segments(self, pixels: torch.Tensor) -> TokenState:
        """Embed, all blocks, finalize — through the segment API, without pruning."""
        return self.finalize(self.run_blocks(self.embed(pixels), 0, self.depth))

    def load_weights(self, module: nn.Module, path: str | None) -> None:
        """Load a local timm/torch checkpoint (.safetensors, .pth/.bin) into ``module``."""
        if path is None:
            return
        from pathlib import Path

        p = Path(path)
        if not p.is_file():
            raise InputNotFoundError(f"encoder {self.cfg.name}: weights file {path} does not exist",
                                     "weights load from local files only; check encoders[].weights")
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p))
        else:
            import pickle

            try:  # weights_only: torch's restricted unpickler, which runs no code from the file
                sd = torch.load(p, map_location="cpu", weights_only=True)
            except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                raise InvalidInputError(f"encoder {self.cfg.name}: {path} is not a plain tensor checkpoint ({first})",
                                        "meteor loads only tensors from .pth/.bin files (never code); "
                                        "convert it to .safetensors") from None
            sd = sd.get("state_dict", sd.get("model", sd)) if isinstance(sd, dict) else sd
        module.load_state_dict(sd, strict=True)

    def load_hf(self, model_cls: type) -> nn.Module:
        """``model_cls.from_pretrained(cfg.weights)`` from a local Hugging Face directory (SDPA attention)."""
        from pathlib import Path

        if not (Path(str(self.cfg.weights)) / "config.json").is_file():
            raise InputNotFoundError(f"encoder {self.cfg.name}: {self.cfg.weights} is not a local Hugging Face "
                                     f"directory (no config.json)",
                                     "weights load from local files only; check encoders[].weights")
        return model_cls.from_pretrained(self.cfg.weights, attn_implementation="sdpa")

    def check_loaded(self, **found: int) -> None:
        """A ConfigError naming the field where loaded weights disagree with this encoder's config."""
        for name, value in found.items():
            want = getattr(self.cfg, name)
            if want != value:
                raise ConfigError(f"encoder {self.cfg.name}: {name} is {want} but the weights in {self.cfg.weights} "
                                  f"have {value}", f"set encoders[].{name} to {value}")


def build_encoder(cfg: EncoderConfig) -> EncoderAdapter:
    """The registered adapter for ``cfg.family``, built from ``cfg``."""
    from meteor_cli.registry import ENCODERS

    return ENCODERS.get(cfg.family)(cfg)
