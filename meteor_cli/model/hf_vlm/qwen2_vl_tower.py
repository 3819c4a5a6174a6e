"""Stage 1 inside Qwen2-VL's vision tower (issue #16), unforked: whole merge windows pruned.

Qwen2-VL's vision path (transformers ``Qwen2VisionTransformerPretrainedModel``) is::

    pixel_values (P, C·T·p·p) ─patch_embed─► (P, D) ─blocks(cu_seqlens, 2-D rotary)─► (P, D)
        ─merger (LayerNorm, view(-1, m²·D), MLP)─► (P/m², d) LLM tokens

All images of a batch are ONE packed sequence; ``cu_seqlens`` confines attention to each image;
every patch carries a 2-D rotary embedding (its (h, w) on its image's patch grid,
``get_vision_position_ids``); the processor orders the patches merge window by merge window
(windows row-major, the m×m patches of a window consecutive), so the merger's ``view`` turns
each run of m² consecutive patches into one LLM token. Here the SAME modules run through
meteor's segment API (:meth:`~meteor_cli.model.encoders.base.EncoderAdapter.run_pruned`):

* :class:`QwenTokenState` is the packed sequence as one row ``(1, P, D)``, with each patch's
  image, its rotary ``cos``/``sin`` and its raster position on its image's patch grid;
  :meth:`QwenTokenState.gather` slices all of them with the kept indices, so a kept patch keeps
  its ORIGINAL rotary position (never renumbered) and ``cu_seqlens`` is rebuilt from the kept
  patches of each image (:meth:`QwenTokenState.cu_seqlens`);
* pruning is in units of whole merge windows (METEOR-style default, [inferred]): the m² patches
  of one LLM token stay or go together, so the merger still sees complete windows, in order.
  :meth:`QwenVisionTower.window_hook` turns the registered Stage-1 policy into that:

  - a plain selecting policy (:class:`~meteor_cli.pruning.stage1.Stage1`: ``meteor``,
    ``similarity``, ``random``) scores the PATCHES of each image with its own criterion (the
    score the CLIP path uses; Qwen2-VL's tower has no CLS, so ``meteor`` is mean-token
    similarity at every point) and a window scores the mean of its patches' scores; the
    budget's best windows are kept (ties to the lower index, ascending);
  - any other policy (``visionzip``, ``prumerge+``, plugins) is called on a window-level view
    of each image: one token per window, its m² patch vectors concatenated (the merger's own
    layout) on the ``(h/m) × (w/m)`` window grid; merged values come back split into patches;

* budgets count merge windows = LLM visual tokens, per image, absolute: ``keep [k1, k2, k3]``
  lets at most ``k3`` tokens of EVERY image into the LLM; an image with no more than ``k``
  windows is not pruned at that point (so a batch stays rectangular only when every image has
  at least ``k`` windows; the packed sequence does not need it). The encoder's "native tokens"
  (``meteor rank-estimate``/``allocate``) are those of the reference image, 448×448 through the
  processor's ``smart_resize`` (:func:`qwen_stage1_config`), the size rank estimation resizes to;
* the LLM side (:meth:`~meteor_cli.model.hf_vlm.qwen2_vl.Qwen2VL.prune_vision`) gets one
  ``<|image_pad|>`` per kept window and M-RoPE ids gathered from the unpruned sequence's
  (:func:`kept_mrope_positions`).

With every window kept the merged features equal ``get_image_features``' bit for bit
(tests/model/test_hf_vlm_qwen2vl_stage1.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from meteor_cli.config import EncoderConfig
from meteor_cli.errors import InvalidInputError, UsageError
from meteor_cli.model.encoders.base import EncoderAdapter, TokenState


@dataclass
class QwenTokenState(TokenState):
    """The packed patch sequence of a batch of images as one row (B = 1).

    Attributes (besides :class:`TokenState`'s; ``pos`` is each patch's raster index on its own
    image's patch grid, ``grid`` the first image's grid):
        cos, sin: (1, N, head_dim) each patch's rotary embedding (original positions).
        image: (1, N) long, the image each patch belongs to (non-decreasing).
        grids: (h, w) patch grid of every image.
    """

    cos: torch.Tensor | None = None
    sin: torch.Tensor | None = None
    image: torch.Tensor | None = None
    grids: tuple[tuple[int, int], ...] = ()

    def gather(self, idx: torch.Tensor) -> QwenTokenState:
        """Keep the patches at ``idx`` (1, k) ascending, with their rotary embedding and image."""
        out = super().gather(idx)
        g = lambda t: torch.gather(t, 1, idx.unsqueeze(-1).expand(-1, -1, t.shape[-1]))  # noqa: E731
        return replace(out, cos=g(self.cos), sin=g(self.sin), image=torch.gather(self.image, 1, idx))

    def counts(self) -> list[int]:
        """Patches of every image still present."""
        return torch.bincount(self.image[0], minlength=len(self.grids)).tolist()

    def cu_seqlens(self) -> torch.Tensor:
        """(images + 1,) int32 boundaries of each image's patches in the packed row, as
        transformers' ``get_vision_cu_seqlens`` writes them for the kept counts."""
        n = torch.bincount(self.image[0], minlength=len(self.grids))
        return nn.functional.pad(n.cumsum(0, dtype=torch.int32), (1, 0), value=0)


def window_positions(pos: torch.Tensor, width: int, merge: int) -> torch.Tensor:
    """Raster index on the ``(h/m) × (w/m)`` window grid of patches at raster ``pos`` on an ``h × w`` grid."""
    r, c = pos // width, pos % width
    return (r // merge) * (width // merge) + c // merge


def qwen_stage1_config(name: str, config: Any, image_processor: dict[str, Any]) -> EncoderConfig:
    """The :class:`EncoderConfig` of Qwen2-VL's tower as Stage 1 sees it: tokens are merge windows.

    ``image_size`` is the reference image (448×448 after ``smart_resize``), ``patch`` is
    ``patch·merge``, so ``grid`` is the window grid and ``num_tokens`` the LLM tokens of that
    image; pruning points are meteor's default ``round(L·j/3)−1`` of the tower's depth.
    """
    from meteor_cli.model.hf_vlm.qwen2_vl import Qwen2VL

    vc = config.vision_config
    if int(getattr(vc, "temporal_patch_size", 2)) < 1:
        raise UsageError("Qwen2-VL tower without a temporal patch size", "re-save the model config")
    geo = Qwen2VL.visual_geometry(config, image_processor, {}, Qwen2VL.default_image_size(config))
    rw, rh = geo.detail["resized"]
    p, m = int(geo.detail["patch"]), int(geo.detail["merge"])
    if rw != rh:
        raise UsageError(f"the reference image resizes to {rw}x{rh}, not a square", "check min_pixels/max_pixels")
    cfg = EncoderConfig(name=name, family="qwen2_vl", image_size=rw, patch=p * m, depth=int(vc.depth),
                        width=int(vc.embed_dim), heads=int(vc.num_heads), mlp_ratio=float(vc.mlp_ratio), has_cls=False,
                        mean=list(image_processor.get("image_mean") or [0.5] * 3),
                        std=list(image_processor.get("image_std") or [0.5] * 3),
                        options={"patch": p, "merge": m})
    cfg.validate(f"{name} tower")
    return cfg


class QwenVisionTower(EncoderAdapter):
    """Qwen2-VL's own vision tower (``hf.model.visual``, no copy) as one meteor encoder.

    Units: the state holds patches; budgets and the policy's tokens are merge windows
    (:meth:`window_hook`). ``embed`` takes the processor's flattened patches.
    """

    def __init__(self, cfg: EncoderConfig, visual: nn.Module) -> None:
        super().__init__(cfg)
        self.net = visual
        opts = cfg.options or {}
        self.patch, self.merge = int(opts["patch"]), int(opts["merge"])

    @property
    def m2(self) -> int:
        return self.merge * self.merge

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """The processor's ``pixel_values`` are already normalised patches: only the dtype changes."""
        return images.to(self.net.get_dtype())

    def embed_grid(self, pixels: torch.Tensor, grid_thw: torch.Tensor) -> QwenTokenState:
        """Patch embedding and rotary embedding of every patch, exactly as the tower's ``forward``."""
        from transformers.vision_utils import get_vision_position_ids

        if bool((grid_thw[:, 0] != 1).any()):
            raise UsageError("Stage 1 on Qwen2-VL prunes images (one temporal patch); this batch has a video grid",
                             "prune videos with Stage 3 (--prune-llm) only")
        x = self.net.patch_embed(pixels)  # (P, D)
        hw = get_vision_position_ids(grid_thw, self.merge)  # (P, 2): (h, w) per patch, window-major order
        cos, sin = self.net.rotary_pos_emb(x, hw)
        grids = tuple((int(h), int(w)) for _, h, w in grid_thw.tolist())
        widths = torch.repeat_interleave(grid_thw[:, 2], grid_thw[:, 1] * grid_thw[:, 2]).to(hw.device)
        image = torch.repeat_interleave(torch.arange(len(grids), device=x.device),
                                        (grid_thw[:, 1] * grid_thw[:, 2]).to(x.device))
        if image.numel() != x.shape[0]:
            raise InvalidInputError(f"{x.shape[0]} patches for grids {grids}", "pass the processor's own pixel_values")
        pos = (hw[:, 0] * widths + hw[:, 1]).to(x.device)
        return QwenTokenState(x=x[None], pos=pos[None], prefix=None, grid=grids[0], cos=cos[None], sin=sin[None],
                              image=image[None], grids=grids)

    def reference_grid(self) -> tuple[int, int]:
        """(h, w) patches of the reference image (:func:`qwen_stage1_config`)."""
        side = self.cfg.image_size // self.patch
        return side, side

    def embed(self, pixels: torch.Tensor) -> QwenTokenState:
        """A batch of images of the reference size given as their stacked patch rows (B·P, C·T·p·p),
        as :meth:`~meteor_cli.model.hf_vlm.qwen2_vl.Qwen2VL.image_tensor` makes them (rank estimation)."""
        h, w = self.reference_grid()
        if pixels.dim() != 2 or pixels.shape[0] % (h * w):
            raise InvalidInputError(f"patch rows {tuple(pixels.shape)} are not whole {w}x{h}-patch reference images",
                                    "build them with Qwen2VL.image_tensor")
        B = pixels.shape[0] // (h * w)
        grid = torch.tensor([[1, h, w]] * B, device=pixels.device)
        return self.embed_grid(pixels, grid)

    def run_blocks(self, state: TokenState, start: int, end: int) -> TokenState:
        """Blocks ``[start, end)`` on the packed row, attention within each image (``cu_seqlens`` of the kept patches)."""
        from transformers.utils.generic import get_max_seqlen

        assert isinstance(state, QwenTokenState)
        cu = state.cu_seqlens()
        max_seqlen = get_max_seqlen(cu, self.net.config)
        pe = (state.cos[0], state.sin[0])

        def call(blk: nn.Module, t: torch.Tensor) -> torch.Tensor:
            return blk(t[0], cu_seqlens=cu, max_seqlen=max_seqlen, position_embeddings=pe)[None]

        return state.run_through(self.net.blocks[start:end], call)

    def feature_map(self, state: TokenState) -> torch.Tensor:
        """(images, D, h, w): each image's patches back on its grid (zeros where pruned); all grids equal."""
        assert isinstance(state, QwenTokenState)
        if len(set(state.grids)) != 1:
            raise InvalidInputError(f"feature maps of images on different grids {sorted(set(state.grids))}",
                                    "rank estimation resizes every image to the reference size first")
        h, w = state.grids[0]
        D = state.x.shape[-1]
        out = state.x.new_zeros(len(state.grids), h * w, D)
        out[state.image[0], state.pos[0]] = state.x[0]
        return out.transpose(1, 2).reshape(len(state.grids), D, h, w)

    # -- windows ---------------------------------------------------------------------------

    def windows(self, state: QwenTokenState) -> list[tuple[int, int, torch.Tensor]]:
        """Per image: (first packed index, patch count, (1, n/m²) window raster positions)."""
        out, start = [], 0
        for i, n in enumerate(state.counts()):
            if n % self.m2:
                raise InvalidInputError(f"image {i} has {n} patches, not whole {self.merge}x{self.merge} windows",
                                        "the processor's grids must be multiples of the merge size")
            w = state.grids[i][1]
            first = state.pos[:, start:start + n:self.m2]
            out.append((start, n, window_positions(first, w, self.merge)))
            start += n
        return out

    def window_hook(self, hook: Any) -> Any:
        """The Stage-1 hook ``hook`` (windows as tokens) as a hook on the packed patch state: kept
        packed patch indices (1, K), or ``(indices, values)`` after a merging policy, or None."""
        from meteor_cli.pruning.stage1 import Stage1, select_topk

        plain = isinstance(hook, Stage1) and type(hook).__call__ is Stage1.__call__

        def call(name: str, j: int, state: TokenState, adapter: Any) -> Any:
            assert isinstance(state, QwenTokenState)
            D, m2 = state.x.shape[-1], self.m2
            idx: list[torch.Tensor] = []
            vals: list[torch.Tensor] = []
            pruned = merged = False
            for i, (start, n, wpos) in enumerate(self.windows(state)):
                x = state.x[:, start:start + n]
                nw = n // m2
                h, w = state.grids[i]
                local, new = None, None
                if plain:
                    k = hook.budgets[name][j]
                    if k < nw:
                        ps = TokenState(x=x, pos=state.pos[:, start:start + n], prefix=None, grid=(h, w))
                        s = hook.scores(j, ps, self).float().view(1, nw, m2).mean(-1)  # a window: its patches' mean
                        local = select_topk(s, k)
                else:
                    ws = TokenState(x=x.reshape(1, nw, m2 * D), pos=wpos, prefix=None, grid=(h // self.merge, w // self.merge))
                    out = hook(name, j, ws, self)
                    if out is not None:
                        local, new = out if isinstance(out, tuple) else (out, None)
                if local is None:
                    local = torch.arange(nw, device=x.device)[None]
                else:
                    pruned = True
                patches = (local.unsqueeze(-1) * m2 + torch.arange(m2, device=x.device)).reshape(1, -1)
                idx.append(patches + start)
                if new is not None:  # a merging policy's new window values, split back into patches
                    merged = True
                    vals.append(new.reshape(1, -1, D))
                else:
                    vals.append(torch.gather(x, 1, patches.unsqueeze(-1).expand(-1, -1, D)))
            if not pruned and not merged:
                return None  # every window kept: the state is untouched (bit-identical)
            kept = torch.cat(idx, 1)
            return (kept, torch.cat(vals, 1)) if merged else kept

        return call


def kept_mrope_positions(orig: torch.Tensor, old_mask: torch.Tensor, new_mask: torch.Tensor, starts: list[int],
                         lens: list[int], kept: list[torch.Tensor]) -> torch.Tensor:
    """(4, B, L') position ids for the rebuilt (pruned, re-left-padded) batch.

    ``orig`` (3, B, L): the unpruned batch's M-RoPE ids (``get_rope_index`` on the original
    ``input_ids`` and ``image_grid_thw``); ``kept[b]``: the kept tokens' indices in sample b's
    visual span (starting at ``starts[b]``, ``lens[b]`` long). Rows 1-3 are the original (t, h, w)
    ids of the kept tokens and of the text around them — nothing renumbered, so the text after
    the image keeps its offset and decoding continues where the unpruned sequence would
    (``generate`` appends ``last + 1``); padding is 0. Row 0 is what ``generate`` writes as the
    text positions (``cumsum(mask) − 1`` of the rebuilt mask), which transformers uses only for
    packed-sequence masks.
    """
    B, W = new_mask.shape
    rows = orig.new_zeros(3, B, W)
    for b in range(B):
        pad = int((~old_mask[b].bool()).sum())
        s = starts[b]
        keep = torch.cat([torch.arange(pad, s, device=orig.device), s + kept[b].to(orig.device),
                          torch.arange(s + lens[b], orig.shape[-1], device=orig.device)])
        rows[:, b, W - len(keep):] = orig[:, b, keep]
    text = new_mask.long().cumsum(-1) - 1
    text = text.masked_fill(new_mask == 0, 0)
    return torch.cat([text[None].to(rows), rows])


__all__ = ["QwenTokenState", "QwenVisionTower", "kept_mrope_positions", "qwen_stage1_config", "window_positions"]
