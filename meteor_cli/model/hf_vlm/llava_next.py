"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``): anyres tiles of a CLIP tower + newline tokens.

Each image is a base tile plus the tiles of its best ``image_grid_pinpoints`` resolution; the
processor writes one ``<image>`` per feature of the base tile, of the unpadded tile grid and of
each row's ``image_newline`` — all one contiguous span, which Stage 3 treats as the visual tokens
(newline tokens included: they are visual tokens the LLM attends to). Images of different sizes
give spans of different lengths in one batch; left padding aligns them.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from meteor_cli.errors import UsageError
from meteor_cli.model.hf_vlm.base import HFInputs, HFVisionLanguageModel, TokenLayout
from meteor_cli.model.hf_vlm.llava import clip_parts, saved_image_processor, tile_size, tower_prefix
from meteor_cli.registry import register_model_family


def unpadded_grid(orig_h: int, orig_w: int, grid_h: int, grid_w: int) -> tuple[int, int]:
    """The feature grid left after removing the aspect-ratio padding from a ``grid_h × grid_w``
    tile grid for an ``orig_h × orig_w`` image (LLaVA-NeXT's ``unpad_image``, on counts)."""
    if orig_w / orig_h > grid_w / grid_h:
        new_h = int(round(orig_h * (grid_w / orig_w), 7))
        return grid_h - 2 * ((grid_h - new_h) // 2), grid_w
    new_w = int(round(orig_w * (grid_h / orig_h), 7))
    return grid_h, grid_w - 2 * ((grid_w - new_w) // 2)


@register_model_family("llava_next", description="LLaVA-NeXT: LlavaNextForConditionalGeneration (anyres CLIP tiles)")
class LlavaNext(HFVisionLanguageModel):
    """LLaVA-NeXT (LLaVA-1.6) from a local transformers directory."""

    hf_class = "LlavaNextForConditionalGeneration"
    stage1_missing = ("Stage 1 per anyres tile (base tile + tiles, newline tokens rebuilt with the kept grid) is not "
                      "built yet")

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
