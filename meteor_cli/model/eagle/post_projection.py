"""From EAGLE's shared projector to METEOR's per-encoder projectors (``train --fusion post-projection``).

A release fuses before projecting: ``mm_projector(concat_channels(x_1 … x_E))`` with
``mm_projector = Linear(ΣD, d) → GELU → Linear(d, d)``. METEOR fuses after: one ``mlp2x_gelu``
per encoder, tokens concatenated along the token axis (METHOD A6). :func:`to_post_projection`
builds the per-encoder projectors from the shared one:

* first layer of encoder e: the shared first layer's column block ``W0[:, cols_e]`` (exact: the
  shared layer IS ``Σ_e W0[:, cols_e]·x_e + b0``) and the shared bias ``b0`` — each encoder's
  token alone is mapped as if the other encoders contributed zeros at its position [inferred];
* second layer: a copy of the shared second layer.

**Grid decision [inferred].** Post-projection tokens are each encoder's tokens on its NATIVE grid
(what its last block or stage produces: EAGLE's CLIP 24×24 at 336 px, ConvNeXt 32×32, SAM 32×32
after ``pixel_unshuffle``, det 64×64, Pix2Struct 45×45 — 8745 tokens for X5 before pruning), not
resampled to the shared 32×32 grid: METEOR's Stage 1 budgets count native tokens (its 1193 of
EAGLE-X4's 8169), and Stage 2 then selects among them. The encoders are unchanged.
The paper fine-tunes this architecture with Stages 1–2 in the loop; it is not a training-free
equivalent of the release (the 1024 fused tokens become Σ_e native tokens).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from meteor_cli.errors import UsageError


def to_post_projection(vlm: Any) -> Any:
    """Turn a pre-projection ``MultiEncoderVLM`` (an EAGLE release) into METEOR's post-projection
    architecture in place (see the module docstring); returns ``vlm``."""
    from meteor_cli.model.vlm import mlp2x_gelu

    if vlm.cfg.fusion == "post-projection":
        return vlm
    shared = vlm.projectors["fused"]
    first, second = shared[0], shared[2]
    d = first.out_features
    projectors = nn.ModuleDict()
    c0 = 0
    with torch.no_grad():
        for name, enc in vlm.encoders.items():
            w = enc.width
            p = mlp2x_gelu(w, d).to(device=first.weight.device, dtype=first.weight.dtype)
            p[0].weight.copy_(first.weight[:, c0:c0 + w])
            p[0].bias.copy_(first.bias)
            p[2].weight.copy_(second.weight)
            p[2].bias.copy_(second.bias)
            projectors[name] = p
            c0 += w
    if c0 != first.in_features:
        raise UsageError(f"the shared projector takes {first.in_features} channels but the encoders give {c0}",
                         "the model's encoders and projector disagree")
    vlm.projectors = projectors
    vlm.cfg = replace(vlm.cfg, fusion="post-projection")
    vlm.cfg.validate()
    return vlm


def convert_fusion(vlm: Any, fusion: str | None) -> Any:
    """``train --fusion``: None or the model's own fusion changes nothing; ``post-projection`` from
    ``pre-projection`` splits the shared projector (:func:`to_post_projection`); the reverse is refused."""
    if fusion is None or fusion == vlm.cfg.fusion:
        return vlm
    if fusion == "post-projection":
        return to_post_projection(vlm)
    raise UsageError(f"--fusion {fusion}: the model uses {vlm.cfg.fusion} fusion and meteor converts only "
                     "pre-projection → post-projection", "drop --fusion to train the model as it is")


__all__ = ["convert_fusion", "to_post_projection"]
