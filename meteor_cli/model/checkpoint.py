"""Checkpoint directories: ``model.safetensors`` + ``config.json`` + tokenizer files.

``config.json`` holds ``{"format": "meteor.checkpoint/v1", "model": ModelConfig}`` with the LLM
config inlined, so a checkpoint is self-contained. Loading rebuilds the model from the config
and refuses tensors that do not match it, naming the first mismatching tensor. Writing goes
through a temporary directory that is renamed into place (never a half-written checkpoint).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from meteor_cli.config import LLMConfig, ModelConfig
from meteor_cli.errors import InputNotFoundError, InvalidInputError, UsageError

FORMAT = "meteor.checkpoint/v1"


def save_checkpoint(vlm: Any, directory: str | os.PathLike[str], *, metadata: dict[str, str] | None = None) -> Path:
    """Write ``vlm`` (and its tokenizer) to ``directory`` atomically (temp directory + rename)."""
    from meteor_cli.artifacts import atomic_dir

    with atomic_dir(directory) as tmp:
        write_checkpoint_files(vlm, tmp, metadata=metadata)
    return Path(directory)


def write_checkpoint_files(vlm: Any, directory: Path, *, metadata: dict[str, str] | None = None) -> None:
    """config.json, model.safetensors and the tokenizer, into an existing ``directory``."""
    from safetensors.torch import save_file

    from meteor_cli.artifacts import provenance_metadata

    cfg = vlm.cfg.to_dict()
    cfg["llm"] = {"path": None, "hf_config": _hf_dict(vlm.llm.config), "attn_implementation": vlm.cfg.llm.attn_implementation}
    (directory / "config.json").write_text(json.dumps({"format": FORMAT, "model": cfg}, indent=2) + "\n")
    sd = _drop_tied(vlm, {k: v.detach().contiguous().cpu() for k, v in vlm.state_dict().items()})
    save_file(sd, str(directory / "model.safetensors"), metadata=provenance_metadata("meteor.checkpoint", extra=metadata))
    if vlm.tokenizer is not None:
        vlm.tokenizer.save_pretrained(directory)


def _hf_dict(hf_config: Any) -> dict[str, Any]:
    d = hf_config.to_diff_dict() if hasattr(hf_config, "to_diff_dict") else dict(hf_config)
    d["model_type"] = hf_config.model_type
    for k in ("transformers_version", "architectures", "_name_or_path", "dtype", "torch_dtype"):
        d.pop(k, None)
    return d


def _drop_tied(vlm: Any, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses shared storage: keep one copy of tied embeddings."""
    if getattr(vlm.llm.config, "tie_word_embeddings", False):
        sd.pop("llm.lm_head.weight", None)
    return sd


def read_config(directory: str | os.PathLike[str]) -> ModelConfig:
    p = Path(directory) / "config.json"
    if not p.is_file():
        raise InputNotFoundError(f"{directory} has no config.json, so it is not a meteor checkpoint",
                                 "pass a directory written by `meteor train`")
    data = json.loads(p.read_text())
    if data.get("format") != FORMAT:
        raise InvalidInputError(f"{p}: format {data.get('format')!r}, expected {FORMAT!r}", "pass a meteor checkpoint")
    return ModelConfig.from_dict(data["model"])


def load_checkpoint(directory: str | os.PathLike[str], device: str | torch.device = "cpu") -> Any:
    """Rebuild the model of ``directory`` and load its weights exactly."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from meteor_cli.model.vlm import MultiEncoderVLM

    cfg = read_config(directory)
    weights = Path(directory) / "model.safetensors"
    if not weights.is_file():
        raise InputNotFoundError(f"{directory} has no model.safetensors", "the checkpoint is incomplete")
    tok = AutoTokenizer.from_pretrained(directory) if (Path(directory) / "tokenizer.json").is_file() else None
    vlm = MultiEncoderVLM(cfg, tok)
    sd = load_file(str(weights))
    own = vlm.state_dict()
    for k, v in sd.items():
        if k not in own:
            raise InvalidInputError(f"{weights}: tensor {k!r} is not part of the model in config.json",
                                    "the weights and config.json come from different models")
        if own[k].shape != v.shape:
            raise InvalidInputError(f"{weights}: tensor {k!r} has shape {tuple(v.shape)}, config.json needs "
                                    f"{tuple(own[k].shape)}", "the weights and config.json come from different models")
    missing = [k for k in own if k not in sd and not (k == "llm.lm_head.weight" and vlm.llm.config.tie_word_embeddings)]
    if missing:
        raise InvalidInputError(f"{weights}: tensor {missing[0]!r} is missing ({len(missing)} in all)",
                                "the checkpoint is incomplete")
    vlm.load_state_dict(sd, strict=False)
    if vlm.llm.config.tie_word_embeddings:
        vlm.llm.tie_weights()
    return vlm.to(device).eval()


def checkpoint_dir_of(spec: str) -> Path | None:
    """The checkpoint directory ``spec`` names: a directory, or a preset that ships weights
    (its factory returns a directory, e.g. ``tiny-synthvqa``); None for config-only presets and files."""
    from meteor_cli.registry import PRESETS, load_builtins_and_plugins

    if Path(spec).is_dir():
        return Path(spec)
    load_builtins_and_plugins()
    if spec in PRESETS:
        made = PRESETS.get(spec)()
        return made if isinstance(made, Path) else None
    return None


def load_model_config(spec: str) -> ModelConfig:
    """The ModelConfig of a preset name, a checkpoint directory or a config JSON."""
    from meteor_cli.registry import PRESETS, load_builtins_and_plugins

    load_builtins_and_plugins()
    p = checkpoint_dir_of(spec)
    if p is not None:
        return read_config(p)
    p = Path(spec)
    if p.suffix == ".json":
        return ModelConfig.from_file(p)
    if spec in PRESETS:
        return PRESETS.get(spec)()
    raise InputNotFoundError(f"--model {spec!r} is not a preset, a checkpoint directory or a config JSON",
                             f"presets: {', '.join(PRESETS.list())}")


def load_model(spec: str, device: str | torch.device = "cpu", *, seed: int = 0) -> Any:
    """A ready model from a preset (random init, seeded), a checkpoint directory or a config JSON."""
    from meteor_cli.model.presets import synthvqa_tokenizer
    from meteor_cli.model.vlm import MultiEncoderVLM

    ckpt = checkpoint_dir_of(spec)
    if ckpt is not None:
        return load_checkpoint(ckpt, device)
    cfg = load_model_config(spec)
    tok = None
    if cfg.llm.path:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(cfg.llm.path)
    else:
        tok = synthvqa_tokenizer()
    torch.manual_seed(seed)
    return MultiEncoderVLM(cfg, tok).to(device).eval()


__all__ = ["FORMAT", "checkpoint_dir_of", "load_checkpoint", "load_model", "load_model_config", "read_config", "save_checkpoint", "LLMConfig",
           "UsageError"]
