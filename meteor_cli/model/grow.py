"""Deepen a trained checkpoint's LLM without changing what it computes (depth up-scaling).

``tiny-synthvqa`` v2 needs an LLM deep enough for METEOR's Stage-3 layer placement
(``round(L·{4,12,20}/32)`` puts nothing at layer 0 only from L = 8 on), but training an 8-layer
model from scratch costs hours on 2 cores. Instead each layer of the trained 4-layer LLM is
followed by ``factor - 1`` copies of itself whose two output projections (``self_attn.o_proj``
and ``mlp.down_proj``) are zero: a pre-norm residual block with zero output projections is the
identity, so the deepened model's logits equal the original's exactly, and training starts from
what the shallow model knew. (The copies' other weights give non-zero gradients to the zeroed
projections at the first step, so the new layers do learn.)

    python -c "from meteor_cli.model.grow import deepen; deepen('ckpt4', 'ckpt8', 8)"
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch

from meteor_cli.errors import UsageError

_LAYER = re.compile(r"^(llm\.model\.layers\.)(\d+)(\..*)$")
#: The projections whose output is added to the residual stream (zero ⇒ the block is the identity).
_OUTPUT_PROJECTIONS = (".self_attn.o_proj.weight", ".self_attn.o_proj.bias", ".mlp.down_proj.weight",
                       ".mlp.down_proj.bias")


def deepen_state_dict(sd: dict[str, torch.Tensor], old_layers: int, factor: int) -> dict[str, torch.Tensor]:
    """Layer ``i`` becomes layers ``i·factor … i·factor + factor - 1``; all but the first are identity copies."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        m = _LAYER.match(key)
        if m is None:
            out[key] = value
            continue
        i = int(m.group(2))
        if i >= old_layers:
            raise UsageError(f"weight {key} names layer {i} of a {old_layers}-layer LLM", "check the checkpoint")
        for c in range(factor):
            new_key = f"{m.group(1)}{i * factor + c}{m.group(3)}"
            zero = c > 0 and key.endswith(_OUTPUT_PROJECTIONS)
            out[new_key] = torch.zeros_like(value) if zero else value.clone()
    return out


def deepen(src: str | os.PathLike[str], dst: str | os.PathLike[str], layers: int) -> Path:
    """Write a copy of checkpoint ``src`` whose LLM has ``layers`` layers (a multiple of its depth) to ``dst``."""
    from meteor_cli.artifacts import atomic_dir
    from meteor_cli.model.checkpoint import read_weights, write_weights

    src, dst = Path(src), Path(dst)
    cfg = json.loads((src / "config.json").read_text())
    hf = cfg["model"]["llm"]["hf_config"]
    old = int(hf["num_hidden_layers"])
    if layers <= old or layers % old:
        raise UsageError(f"cannot deepen a {old}-layer LLM to {layers} layers", f"choose a multiple of {old}")
    sd = deepen_state_dict(read_weights(src), old, layers // old)
    hf["num_hidden_layers"] = layers
    with atomic_dir(dst) as tmp:
        for f in src.iterdir():
            if f.is_file() and f.suffix in (".json", ".txt") and f.name not in ("config.json", "train_log.jsonl"):
                shutil.copy2(f, tmp / f.name)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        write_weights(sd, tmp, metadata={"source": src.name, "deepened_from_layers": str(old)})
    return dst


__all__ = ["deepen", "deepen_state_dict"]
