"""transformers VLMs as first-class models: LLaVA-1.5, LLaVA-NeXT, Qwen2-VL (one module per family).

``--model DIR`` accepts a local directory saved by transformers (``model.save_pretrained`` +
``processor.save_pretrained``). :func:`family_of` reads its ``config.json`` and looks the
``model_type`` up in :data:`~meteor_cli.registry.MODEL_FAMILIES`; :func:`load_hf_vlm` loads it
with its own processor and chat template. Adding a family = one new module here that
subclasses :class:`~meteor_cli.model.hf_vlm.base.HFVisionLanguageModel` and registers it, plus its
name in :data:`FAMILY_MODULES`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from meteor_cli.model.hf_vlm.base import HFInputs, HFVisionLanguageModel, VisionSummary, read_hf_config

#: The family modules imported (and so registered) with this package.
FAMILY_MODULES = ("llava", "llava_next", "qwen2_vl")

for _m in FAMILY_MODULES:
    importlib.import_module(f"{__name__}.{_m}")


def family_of(spec: str | Path) -> type[HFVisionLanguageModel] | None:
    """The registered family of a transformers VLM directory, or None when ``spec`` is not one."""
    from meteor_cli.errors import UsageError
    from meteor_cli.registry import MODEL_FAMILIES

    if not Path(spec).is_dir():
        return None
    cfg = read_hf_config(spec)
    if cfg is None or "text_config" not in cfg or "vision_config" not in cfg:
        return None
    mt = cfg.get("model_type")
    if mt not in MODEL_FAMILIES:
        raise UsageError(f"{spec}: transformers VLM of model_type {mt!r} ({', '.join(cfg.get('architectures') or [])}) "
                         "has no meteor model family",
                         f"supported: {', '.join(MODEL_FAMILIES.list())} (`meteor list families`); a new family is "
                         "one module in meteor_cli/model/hf_vlm/")
    return MODEL_FAMILIES.get(mt)


def load_hf_vlm(spec: str | Path, device: Any = "cpu", *, attn_implementation: str | None = None) -> HFVisionLanguageModel:
    """Load the transformers VLM directory ``spec`` with its processor (see :func:`family_of`)."""
    fam = family_of(spec)
    if fam is None:
        from meteor_cli.errors import UsageError

        raise UsageError(f"{spec} is not a transformers VLM directory", "pass a directory with config.json whose "
                         "model_type is llava, llava_next or qwen2_vl")
    return fam.from_pretrained(spec, device, attn_implementation=attn_implementation)


__all__ = ["FAMILY_MODULES", "HFInputs", "HFVisionLanguageModel", "VisionSummary", "family_of", "load_hf_vlm",
           "read_hf_config"]
