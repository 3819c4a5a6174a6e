"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``): anyres tiles of a CLIP tower + newline tokens.

Each image is a base tile plus the tiles of its best ``image_grid_pinpoints`` resolution; the
processor writes one ``<image>`` per feature of the base tile, of the unpadded tile grid and of
each row's ``image_newline`` — all one contiguous span, which Stage 3 treats as the visual tokens
(newline tokens included: they are visual tokens the LLM attends to). Images of different sizes
give spans of different lengths in one batch; left padding aligns them.

Stage 1 (and Stage 2) run per tile: every tile of every image (base tile first, then the grid
tiles, as ``get_image_features`` cuts them) is one sample of the CLIP tower
(:class:`~meteor_cli.model.hf_vlm.tower.HFCLIPTower`), so an allocation's per-encoder budgets
apply to EACH tile (``keep [k1, k2, k3]`` keeps ``k3`` tokens of every tile; an image with
``1 + sh·sw`` tiles lets at most ``(1 + sh·sw)·k3`` tower features out), and ``rank-estimate``
sees the tiles as samples. :meth:`LlavaNext.pack_kept` then rebuilds ``pack_image_features``
with the kept tokens only: the base tile's kept features (raster order), then the grid tiles'
kept tokens put back on the full anyres grid at their original positions, the aspect-ratio
padding removed exactly as ``unpad_image`` removes it (kept tokens in the padding are dropped),
row by row with one ``image_newline`` after every row that still has a kept token. With nothing
pruned this is ``pack_image_features``' output, bit for bit (tests/model/test_hf_vlm_next_stage1.py).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from meteor_cli.errors import InvalidInputError, UsageError
from meteor_cli.model.hf_vlm.base import HFInputs, HFVisionLanguageModel, TokenLayout, TokenOwners
from meteor_cli.model.hf_vlm.llava import clip_parts, saved_image_processor, tile_size, tower_prefix
from meteor_cli.registry import register_model_family


def unpad_window(orig_h: int, orig_w: int, grid_h: int, grid_w: int) -> tuple[int, int, int, int]:
    """Rows ``[r0, r1)`` and columns ``[c0, c1)`` of a ``grid_h × grid_w`` feature grid that
    transformers' ``unpad_image`` keeps for an ``orig_h × orig_w`` image (same arithmetic)."""
    if orig_w / orig_h > grid_w / grid_h:
        new_h = int(round(orig_h * (grid_w / orig_w), 7))
        pad = (grid_h - new_h) // 2
        return pad, grid_h - pad, 0, grid_w
    new_w = int(round(orig_w * (grid_h / orig_h), 7))
    pad = (grid_w - new_w) // 2
    return 0, grid_h, pad, grid_w - pad


def unpadded_grid(orig_h: int, orig_w: int, grid_h: int, grid_w: int) -> tuple[int, int]:
    """The feature grid left after removing the aspect-ratio padding from a ``grid_h × grid_w``
    tile grid for an ``orig_h × orig_w`` image (LLaVA-NeXT's ``unpad_image``, on counts)."""
    r0, r1, c0, c1 = unpad_window(orig_h, orig_w, grid_h, grid_w)
    return r1 - r0, c1 - c0


def pack_tiles(z: torch.Tensor, pos: torch.Tensor, image_size: tuple[int, int], tiles: tuple[int, int], side: int,
               newline: torch.Tensor) -> tuple[torch.Tensor, TokenOwners]:
    """One image's LLM features from its kept tile tokens, as ``pack_image_features`` lays them out.

    Args:
        z: (1 + nh·nw, k, d) kept projected tokens, base tile first, grid tiles in raster order.
        pos: (1 + nh·nw, k) their raster positions on the ``side × side`` patch grid of their tile.
        image_size: the original (height, width) (``image_sizes``).
        tiles: (nh, nw), transformers' ``get_anyres_image_grid_shape``.
        side: patches per tile side.
        newline: the model's ``image_newline`` (d,).

    Returns:
        (features (n, d), their owners: ``("base", p)``, ``("tiles", r·w' + c)`` on the unpadded
        ``h' × w'`` grid, None for a newline — the grids of :meth:`LlavaNext.token_layout`).
    """
    order0 = torch.argsort(pos[0])
    base = z[0][order0]
    owners: TokenOwners = [("base", int(p)) for p in pos[0][order0].tolist()]
    if z.shape[0] == 1:  # transformers: the base tile and one newline
        return torch.cat([base, newline[None].to(base)]), [*owners, None]
    nh, nw = tiles
    if z.shape[0] - 1 != nh * nw:
        raise InvalidInputError(f"{z.shape[0] - 1} grid tiles for a {nh}x{nw} anyres grid",
                                "the processor and the model config disagree on image_grid_pinpoints; re-save them together")
    t = torch.arange(nh * nw, device=pos.device).unsqueeze(1)
    p = pos[1:]
    row = ((t // nw) * side + p // side).flatten()
    col = ((t % nw) * side + p % side).flatten()
    r0, r1, c0, c1 = unpad_window(int(image_size[0]), int(image_size[1]), nh * side, nw * side)
    inside = (row >= r0) & (row < r1) & (col >= c0) & (col < c1)
    feats = z[1:].reshape(-1, z.shape[-1])[inside]
    row, col = row[inside], col[inside]
    order = torch.argsort(row * (nw * side) + col)
    feats, row, col = feats[order], row[order], col[order]
    _, per_row = torch.unique_consecutive(row, return_counts=True)
    nl = newline[None].to(feats)
    pieces = [base]
    cells = ((row - r0) * (c1 - c0) + (col - c0)).tolist()
    i = 0
    for chunk in torch.split(feats, per_row.tolist()):
        pieces += [chunk, nl]
        owners += [("tiles", c) for c in cells[i:i + len(chunk)]] + [None]
        i += len(chunk)
    return torch.cat(pieces), owners


@register_model_family("llava_next", description="LLaVA-NeXT: LlavaNextForConditionalGeneration (anyres CLIP tiles)")
class LlavaNext(HFVisionLanguageModel):
    """LLaVA-NeXT (LLaVA-1.6) from a local transformers directory."""

    hf_class = "LlavaNextForConditionalGeneration"
    stage1_missing = None  # the CLIP tower runs Stage 1 on every anyres tile (pack_kept rebuilds the packing)

    def _tile_counts(self, image_sizes: torch.Tensor) -> list[int]:
        """Tiles per image (base tile included), as ``get_image_features`` counts them."""
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        cfg = self.hf.config
        return [image_size_to_num_patches(image_size=s, grid_pinpoints=cfg.image_grid_pinpoints,
                                          patch_size=cfg.vision_config.image_size) for s in image_sizes]

    def tower_pixels(self, features: dict[str, Any]) -> torch.Tensor:
        """Every image's tiles (base tile first), concatenated over the batch: (Σ tiles, 3, S, S)."""
        if self.hf.config.vision_feature_select_strategy != "default":
            raise UsageError("Stage 1 on LLaVA-NeXT needs vision_feature_select_strategy 'default'",
                             "the anyres packing of a 'full' tower (CLS per tile) has no patch grid to rebuild; "
                             "prune this model with --prune-llm (Stage 3)")
        pv = features["pixel_values"]
        if pv.dim() == 5:  # (B, max tiles, 3, S, S), padded to the batch's largest tile count
            counts = self._tile_counts(features["image_sizes"])
            pv = torch.cat([p[:n] for p, n in zip(pv, counts, strict=True)])
        return pv

    def pack_kept(self, z: torch.Tensor, pos: torch.Tensor,
                  features: dict[str, Any]) -> tuple[list[torch.Tensor], list[TokenOwners]]:
        """``pack_image_features`` on the kept tokens (:func:`pack_tiles`, one image at a time)."""
        from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

        cfg = self.hf.config
        side = int(cfg.vision_config.image_size) // int(cfg.vision_config.patch_size)
        counts = self._tile_counts(features["image_sizes"])
        if sum(counts) != z.shape[0]:
            raise InvalidInputError(f"the tower ran on {z.shape[0]} tiles but the image sizes give {sum(counts)}",
                                    "the processor and the model config disagree; re-save them together")
        out, owners, t0 = [], [], 0
        for size, n in zip(features["image_sizes"], counts, strict=True):
            tiles = get_anyres_image_grid_shape(size, cfg.image_grid_pinpoints, cfg.vision_config.image_size)
            feats, own = pack_tiles(z[t0:t0 + n], pos[t0:t0 + n], tuple(int(v) for v in size.tolist()), tiles, side,
                                    self.hf.model.image_newline)
            out.append(feats)
            owners.append(own)
            t0 += n
        return out, owners

    @classmethod
    def visual_geometry(cls, config: Any, image_processor: dict[str, Any], processor: dict[str, Any],
                        size: tuple[int, int]) -> Any:
        """Base tile + the best pinpoint's ``sh × sw`` tiles; the LLM gets the base tile's features,
        the unpadded grid ``h' × w'`` and ``h'`` newline tokens."""
        from transformers.image_processing_utils import select_best_resolution

        from meteor_cli.model.hf_vlm.flops import VisualGeometry

        w, h = size
        th, tw = tile_size(config, image_processor)
        p = int(config.vision_config.patch_size)
        pinpoints = image_processor.get("image_grid_pinpoints") or config.image_grid_pinpoints
        best_h, best_w = select_best_resolution((h, w), pinpoints)
        sh, sw = best_h // th, best_w // tw
        ph, pw = th // p, tw // p
        uh, uw = unpadded_grid(h, w, ph * sh, pw * sw)
        prefix = tower_prefix(config)
        full = config.vision_feature_select_strategy == "full"
        per_tile = ph * pw + (prefix if full else 0)
        tokens = uh * uw + uh + per_tile
        return VisualGeometry(tokens, 1 + sh * sw, ph * pw + prefix, ph * pw, (1 + sh * sw) * per_tile,
                              {"tile": [tw, th], "patch": p, "best_resolution": [best_w, best_h], "tiles": [sw, sh],
                               "base_tokens": per_tile, "unpadded_grid": [uw, uh], "newline_tokens": uh,
                               "feature_layer": config.vision_feature_layer,
                               "select_strategy": config.vision_feature_select_strategy,
                               "rule": "base tile + unpadded anyres grid + one newline per row"})

    @classmethod
    def pruned_tokens(cls, geo: Any, kept: int, native: int) -> tuple[float, float, dict[str, Any]]:
        """Every tile keeps ``kept`` tokens (the projector sees ``passes·kept``); the LLM gets the base
        tile's ``kept``, the grid tokens inside the unpadded window and one newline per row that keeps
        a token. Which tokens fall in the padding depends on the image content, so the grid count is
        the expectation with kept tokens spread evenly (``kept·h'·w'/native``) and the newlines its
        upper bound ``min(h', grid)``; with nothing pruned both are exact."""
        uw, uh = geo.detail["unpadded_grid"]
        grid = kept * uh * uw / native
        newlines = min(float(uh), grid)
        into = kept + grid + newlines
        return into, geo.tower_passes * kept, {
            "tiles_per_image": geo.tower_passes, "per_tile": kept, "grid_tokens": grid, "newline_tokens": newlines,
            "rule": "budgets per tile; grid tokens in the unpadded window assumed spread evenly over the tiles, "
                    "one newline per unpadded row (an upper bound)"}

    @classmethod
    def vision_parts(cls, hf: nn.Module) -> tuple[nn.Module, list[nn.Module], nn.Module, int]:
        return clip_parts(hf)

    def token_layout(self, inputs: HFInputs, b: int, image_size: tuple[int, int] | None) -> TokenLayout:
        """Two grids: ``base`` (the whole image squeezed into one tile) then ``tiles`` (the unpadded
        anyres grid, row by row, each row followed by its newline token, which is on no grid)."""
        if self.hf.config.vision_feature_select_strategy != "default":
            raise UsageError("--visualize on LLaVA-NeXT needs vision_feature_select_strategy 'default'",
                             "the anyres grid of a 'full' tower has no patch layout to draw")
        h, w = (int(x) for x in inputs.features["image_sizes"][b].tolist())
        geo = self.visual_geometry(self.hf.config, saved_image_processor(self.processor), {}, (w, h))
        uw, uh = geo.detail["unpadded_grid"]
        side = int(geo.detail["base_tokens"] ** 0.5)
        owners: list[tuple[str, int] | None] = [("base", i) for i in range(geo.detail["base_tokens"])]
        for r in range(uh):
            owners += [("tiles", r * uw + c) for c in range(uw)] + [None]
        return TokenLayout({"base": (side, side), "tiles": (uh, uw)}, owners)
