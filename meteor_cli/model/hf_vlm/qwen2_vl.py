"""Qwen2-VL (``Qwen2VLForConditionalGeneration``): native-resolution ViT, 2×2 patch merger, M-RoPE LM.

The processor writes ``<|vision_start|>`` + one ``<|image_pad|>`` per merged patch +
``<|vision_end|>``; the pads are the visual span. The model needs ``mm_token_type_ids`` (the
processor returns them) to build its 3-D rotary positions (temporal, height, width); Stage 3
records those positions at prefill and gathers them with the kept tokens, never renumbering them,
so a kept patch keeps its place in the image grid and the text after the image keeps its offset.

Stage 1 (and Stage 2) run inside the vision tower (:mod:`meteor_cli.model.hf_vlm.qwen2_vl_tower`):
whole merge windows are pruned, budgets count LLM visual tokens per image; the LLM then gets one
``<|image_pad|>`` per kept window and the M-RoPE ids of the unpruned sequence, gathered
(:meth:`Qwen2VL.prune_vision`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from meteor_cli.model.hf_vlm.base import HFInputs, HFVisionLanguageModel, TokenLayout, TokenOwners
from meteor_cli.registry import register_model_family

#: transformers' Qwen2-VL image-processor defaults (used when the directory saves no limits).
DEFAULT_MIN_PIXELS = 56 * 56
DEFAULT_MAX_PIXELS = 28 * 28 * 1280


def pixel_limits(image_processor: dict[str, Any]) -> tuple[int, int]:
    """(min_pixels, max_pixels) of a saved Qwen2-VL image processor (``size`` or the older keys)."""
    size = image_processor.get("size") or {}
    lo = image_processor.get("min_pixels") or size.get("shortest_edge") or size.get("min_pixels") or DEFAULT_MIN_PIXELS
    hi = image_processor.get("max_pixels") or size.get("longest_edge") or size.get("max_pixels") or DEFAULT_MAX_PIXELS
    return int(lo), int(hi)


@register_model_family("qwen2_vl", description="Qwen2-VL: Qwen2VLForConditionalGeneration (M-RoPE positions kept)")
class Qwen2VL(HFVisionLanguageModel):
    """Qwen2-VL from a local transformers directory."""

    hf_class = "Qwen2VLForConditionalGeneration"
    stage1_missing = None  # whole merge windows pruned inside the tower (meteor_cli.model.hf_vlm.qwen2_vl_tower)

    @classmethod
    def default_image_size(cls, config: Any) -> tuple[int, int]:
        """448×448 (Qwen2-VL has no fixed tile; the processor's pixel limits still apply)."""
        return 448, 448

    @classmethod
    def visual_geometry(cls, config: Any, image_processor: dict[str, Any], processor: dict[str, Any],
                        size: tuple[int, int]) -> Any:
        """``smart_resize`` to ``gh × gw`` patches; the merger turns each merge×merge block into one token."""
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        from meteor_cli.model.hf_vlm.flops import VisualGeometry

        vc = config.vision_config
        p = int(image_processor.get("patch_size") or vc.patch_size)
        m = int(image_processor.get("merge_size") or vc.spatial_merge_size)
        lo, hi = pixel_limits(image_processor)
        w, h = size
        rh, rw = smart_resize(h, w, factor=p * m, min_pixels=lo, max_pixels=hi)
        patches = (rh // p) * (rw // p)
        tokens = patches // (m * m)
        return VisualGeometry(tokens, 1, patches, patches, tokens,
                              {"resized": [rw, rh], "patch": p, "merge": m, "grid": [rw // p, rh // p],
                               "min_pixels": lo, "max_pixels": hi,
                               "rule": "smart_resize to multiples of patch*merge within [min_pixels, max_pixels]; "
                                       "patches / merge^2"})

    @classmethod
    def vision_parts(cls, hf: nn.Module) -> tuple[nn.Module, list[nn.Module], nn.Module, int]:
        visual = hf.model.visual
        return visual.patch_embed, list(visual.blocks), visual.merger, int(hf.config.vision_config.embed_dim)

    def token_layout(self, inputs: HFInputs, b: int, image_size: tuple[int, int] | None) -> TokenLayout:
        """One grid of merged patches, ``(h/merge) × (w/merge)`` of ``image_grid_thw``, in raster order
        (the processor orders patches merge window by merge window, windows row-major)."""
        t, h, w = (int(x) for x in inputs.features["image_grid_thw"][b].tolist())
        m = int(self.hf.config.vision_config.spatial_merge_size)
        rows, cols = h // m, w // m
        return TokenLayout({self.tower: (rows, cols)}, [(self.tower, i % (rows * cols)) for i in range(t * rows * cols)])

    # -- Stage 1 in the tower (meteor_cli.model.hf_vlm.qwen2_vl_tower) ------------------------

    @classmethod
    def stage1_config(cls, config: Any, image_processor: dict[str, Any]) -> Any:
        """Tokens are merge windows of the 448×448 reference image (:func:`qwen_stage1_config`)."""
        from meteor_cli.model.hf_vlm.qwen2_vl_tower import qwen_stage1_config

        return qwen_stage1_config(cls.tower, config, image_processor)

    @classmethod
    def stage1_tower_tokens(cls, geo: Any, tcfg: Any) -> tuple[int, int, int]:
        """The budgets count this image's merge windows (``geo.tokens``), ``merge²`` patches each, no CLS."""
        m = int(tcfg.options["merge"])
        return int(geo.tokens), m * m, 0

    @property
    def encoders(self) -> dict[str, Any]:
        """``{tower: QwenVisionTower}`` around the model's own ``visual`` (no copy)."""
        if self.tower not in self._adapters:
            from meteor_cli.model.hf_vlm.llava import saved_image_processor
            from meteor_cli.model.hf_vlm.qwen2_vl_tower import QwenVisionTower

            cfg = self.stage1_config(self.hf.config, saved_image_processor(self.processor))
            self._adapters[self.tower] = QwenVisionTower(cfg, self.hf.model.visual)
        return dict(self._adapters)

    def image_tensor(self, image: Any) -> torch.Tensor:
        """One PIL image → the processor's patch rows (P, C·T·p·p) of the image resized to the
        reference size (rank estimation: every image on one grid, like the CLIP path's fixed tile)."""
        self.require_stage1("rank-estimate")
        side = self.encoders[self.tower].cfg.image_size
        im = image.convert("RGB").resize((side, side))
        return self.processor.image_processor(images=[im], return_tensors="pt")["pixel_values"]

    def prune_vision(self, features: dict[str, Any], starts: list[int],
                     lens: list[int]) -> tuple[dict[str, Any], list[int], list[int], list[TokenOwners]]:
        """Tower with Stage 1 (whole windows) → merger (→ Stage 2 per image) → the kept windows'
        features as ``mm_encoder_outputs``, ``input_ids`` with one ``<|image_pad|>`` per kept
        window, and ``position_ids`` (4, B, L') with the kept tokens' ORIGINAL M-RoPE ids
        (:func:`~meteor_cli.model.hf_vlm.qwen2_vl_tower.kept_mrope_positions`), which the
        unmodified forward/generate use as given (generate continues them by ``last + 1``)."""
        self.require_stage1()
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        from meteor_cli.errors import UsageError
        from meteor_cli.model.hf_vlm.qwen2_vl_tower import kept_mrope_positions
        from meteor_cli.model.hf_vlm.tower import rebuild_inputs
        from meteor_cli.model.vlm import apply_stage2, sample_keys

        grid = features["image_grid_thw"]
        if grid.shape[0] != len(starts):
            raise UsageError(f"{grid.shape[0]} images for {len(starts)} samples",
                             "Stage 1 on Qwen2-VL takes one image per question")
        adapter = self.encoders[self.tower]
        pixels = adapter.preprocess(features["pixel_values"])
        hook = None if self.stage1 is None else adapter.window_hook(self.stage1)
        state = adapter.finalize(adapter.run_pruned(adapter.embed_grid(pixels, grid), self.tower, hook))
        merged = self.hf.model.visual.merger(state.x[0])  # (kept windows, d): complete windows, in order
        wins = adapter.windows(state)
        feats = list(torch.split(merged, [n // adapter.m2 for _, n, _ in wins]))
        kept = [wp[0] for _, _, wp in wins]
        if self.stage2 is not None:  # per image (its own window count), positions on its window grid
            p0 = 0
            for b, (t, h, w) in enumerate(grid.tolist()):
                n = t * h * w
                z, _, pos = apply_stage2(self.stage2, feats[b][None], torch.zeros(len(kept[b]), dtype=torch.long,
                                         device=merged.device), kept[b][None], sample_keys(pixels[p0:p0 + n][None]))
                order = torch.argsort(pos[0])
                feats[b], kept[b] = z[0][order], pos[0][order]
                p0 += n
        n_kept = [int(f.shape[0]) for f in feats]
        orig, _ = self.hf.model.get_rope_index(features["input_ids"], mm_token_type_ids=features["mm_token_type_ids"],
                                               image_grid_thw=grid, attention_mask=features["attention_mask"])
        rest = {k: v for k, v in features.items() if k != "pixel_values"}
        out, new_starts = rebuild_inputs(rest, starts, lens, n_kept, self.image_token_id,
                                         int(self.tokenizer.pad_token_id or 0))
        out["position_ids"] = kept_mrope_positions(orig, features["attention_mask"], out["attention_mask"], starts, lens,
                                                   kept)
        out["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=tuple(feats))}
        owners: list[TokenOwners] = [[(self.tower, int(p)) for p in k.tolist()] for k in kept]
        return out, new_starts, n_kept, owners
