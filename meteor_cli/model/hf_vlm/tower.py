"""Stage 1 on the CLIP tower of a transformers LLaVA model (the supplement's Table 6), unforked.

LLaVA-1.5's vision path is ``vision_tower`` (a transformers ``CLIPVisionModel``: ``embeddings →
pre_layrnorm → encoder.layers``) → the hidden state of ``vision_feature_layer`` (−2 in releases:
the output of the second-to-last layer) → CLS dropped under the ``default`` select strategy →
``multi_modal_projector``. Here the SAME modules run through meteor's encoder segment API:

* :class:`HFCLIPTower` is meteor's :class:`~meteor_cli.model.encoders.clip.CLIPAdapter` around the
  model's own ``vision_tower`` (no copy, no new weights). Its depth is the number of layers up to
  the selected one (:func:`feature_depth`: 23 of 24 for ``-2``), so the blocks after
  ``vision_feature_layer`` — which LLaVA computes and discards — are not run; its pruning points
  are meteor's default ``round(L·j/3)−1`` of that depth (``[6, 14, 22]`` for 23 layers);
* the block loop is :meth:`~meteor_cli.model.encoders.base.EncoderAdapter.run_pruned` — the one
  meteor's own and EAGLE's towers run — with the registered Stage-1 policy called as
  ``policy(name, j, state, adapter)`` (``meteor``, ``visionzip``, ``prumerge+``, …);
* the input is the processor's ``pixel_values`` (already resized, cropped and normalised: the
  adapter's ``preprocess`` only casts);
* the kept patch tokens (CLS re-attached first under ``full``) go through ``multi_modal_projector``;
  Stage 2, when an allocation asks for it, runs on the projected tokens as for meteor's models;
* :func:`rebuild_inputs` rewrites each sample's ``input_ids`` / ``attention_mask`` with exactly
  as many image placeholders as it has features (left padding kept), and the features reach the
  UNMODIFIED ``forward``/``generate`` through transformers' ``mm_encoder_outputs`` argument (the
  pre-encoded image features a VLM accepts instead of ``pixel_values``), which scatters them into
  the placeholders exactly as it scatters its own.

With every token kept the features equal ``get_image_features``' (tests/model/test_hf_vlm_stage1.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from meteor_cli.config import EncoderConfig
from meteor_cli.errors import UsageError
from meteor_cli.model.encoders.base import EncoderAdapter, TokenState
from meteor_cli.model.encoders.clip import CLIPAdapter


def feature_depth(vision_feature_layer: Any, num_layers: int) -> int:
    """How many encoder layers produce ``hidden_states[vision_feature_layer]`` (index 0 is the
    embedding output, index i the output of layer i−1; negative indices count from the end)."""
    if not isinstance(vision_feature_layer, int):
        raise UsageError(f"vision_feature_layer {vision_feature_layer!r} concatenates several layers",
                         "Stage 1 prunes one token sequence; it runs on models that read one layer (LLaVA-1.5: -2)")
    idx = vision_feature_layer if vision_feature_layer >= 0 else num_layers + 1 + vision_feature_layer
    if not 1 <= idx <= num_layers:
        raise UsageError(f"vision_feature_layer {vision_feature_layer} selects hidden state {idx} of a "
                         f"{num_layers}-layer tower", "Stage 1 needs at least one encoder layer before the features")
    return idx


def tower_config(name: str, config: Any, image_processor: dict[str, Any]) -> EncoderConfig:
    """The :class:`EncoderConfig` of a LLaVA model's CLIP tower as meteor's Stage 1 sees it (validated)."""
    from meteor_cli.model.hf_vlm.llava import tile_size

    vc = config.vision_config
    if getattr(vc, "model_type", "") != "clip_vision_model":
        raise UsageError(f"Stage 1 runs on CLIP towers; this model's tower is a {getattr(vc, 'model_type', '?')}",
                         "prune this model with Stage 3 (--prune-llm) only")
    th, tw = tile_size(config, image_processor)
    if th != tw or th != int(vc.image_size):
        raise UsageError(f"the processor crops {tw}x{th} but the tower takes {vc.image_size}x{vc.image_size}",
                         "re-save the processor with crop_size equal to vision_config.image_size")
    depth = feature_depth(config.vision_feature_layer, int(vc.num_hidden_layers))
    cfg = EncoderConfig(name=name, family="clip", image_size=th, patch=int(vc.patch_size), depth=depth,
                        width=int(vc.hidden_size), heads=int(vc.num_attention_heads),
                        mlp_ratio=int(vc.intermediate_size) / int(vc.hidden_size), has_cls=True,
                        mean=list(image_processor.get("image_mean") or [0.5] * 3),
                        std=list(image_processor.get("image_std") or [0.5] * 3))
    cfg.validate(f"{name} tower")
    return cfg


class HFCLIPTower(CLIPAdapter):
    """:class:`CLIPAdapter` over an existing transformers CLIP tower (the LLaVA model's own module).

    ``cfg.depth`` is :func:`feature_depth` (the layers up to ``vision_feature_layer``); the input is
    the processor's normalised ``pixel_values``.
    """

    def __init__(self, cfg: EncoderConfig, tower: nn.Module) -> None:
        EncoderAdapter.__init__(self, cfg)
        self.net = tower

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``pixel_values`` from the model's processor are already normalised: only the dtype changes."""
        return images.to(next(self.net.parameters()).dtype)


def project_tower(adapter: HFCLIPTower, name: str, pixels: torch.Tensor, projector: nn.Module, *, full: bool,
                  stage1: Any = None, stage2: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the tower on ``pixels`` with Stage 1 (and Stage 2 on the projected tokens); returns the
    projected features (B, n, d) — CLS first under ``full`` — and the kept patch positions (B, k)."""
    from meteor_cli.model.vlm import apply_stage2, sample_keys

    state: TokenState = adapter.finalize(adapter.run_pruned(adapter.embed(adapter.preprocess(pixels)), name, stage1))
    z = projector(state.x)
    pos = state.pos
    if stage2 is not None:
        ids = torch.zeros(z.shape[1], dtype=torch.long, device=z.device)
        z, _, pos = apply_stage2(stage2, z, ids, pos, sample_keys(pixels))
    if full and state.prefix is not None:
        z = torch.cat([projector(state.prefix), z], dim=1)
    return z, pos


def rebuild_inputs(features: dict[str, Any], starts: Sequence[int], lens: Sequence[int], new_lens: Sequence[int],
                   image_token_id: int, pad_token_id: int) -> tuple[dict[str, Any], list[int]]:
    """``features`` with each sample's visual span (``starts[b]``, ``lens[b]`` in ``input_ids``) resized
    to ``new_lens[b]`` image placeholders, re-left-padded; returns them and the new span starts.

    Every (B, L) tensor (``input_ids``, ``attention_mask``, token-type ids) is rebuilt: its span
    entries take the value of the span's first position, padding is ``pad_token_id`` in
    ``input_ids`` and 0 elsewhere. Other entries are copied.
    """
    ids, mask = features["input_ids"], features["attention_mask"]
    B, L = ids.shape
    keys = [k for k, v in features.items() if isinstance(v, torch.Tensor) and v.shape == (B, L)]
    rows: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    spans = []
    for b in range(B):
        real = mask[b].bool()
        pad = int((~real).sum())
        if bool(real[:pad].any()) or not bool(real[pad:].all()):
            raise UsageError("the processor's batch is not left-padded", "meteor pads transformers VLM batches on the left")
        s = starts[b] - pad
        for k in keys:
            r = features[k][b, pad:]
            mid = torch.full((new_lens[b],), int(r[s]) if k != "input_ids" else image_token_id, dtype=r.dtype,
                             device=r.device)
            rows[k].append(torch.cat([r[:s], mid, r[s + lens[b]:]]))
        spans.append(s)
    width = max(len(r) for r in rows["input_ids"])
    out = dict(features)
    for k in keys:
        fill = pad_token_id if k == "input_ids" else 0
        out[k] = torch.stack([torch.cat([r.new_full((width - len(r),), fill), r]) for r in rows[k]])
    new_starts = [width - len(rows["input_ids"][b]) + spans[b] for b in range(B)]
    return out, new_starts


__all__ = ["HFCLIPTower", "feature_depth", "project_tower", "rebuild_inputs", "tower_config"]
