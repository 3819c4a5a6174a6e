"""Checkpoint directories: ``model.safetensors`` + ``config.json`` + tokenizer files.

Weights above 2 GB are sharded the way Hugging Face shards them: ``model-00001-of-0000N.safetensors``
files and ``model.safetensors.index.json`` (``weight_map``: tensor name → file).

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
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
#: Largest single weights file; above it the weights are sharded.
MAX_SHARD_BYTES = 2 * 1024**3


def save_checkpoint(vlm: Any, directory: str | os.PathLike[str], *, metadata: dict[str, str] | None = None,
                    max_shard_bytes: int = MAX_SHARD_BYTES) -> Path:
    """Write ``vlm`` (and its tokenizer) to ``directory`` atomically (temp directory + rename)."""
    from meteor_cli.artifacts import atomic_dir

    with atomic_dir(directory) as tmp:
        write_checkpoint_files(vlm, tmp, metadata=metadata, max_shard_bytes=max_shard_bytes)
    return Path(directory)


def write_checkpoint_files(vlm: Any, directory: Path, *, metadata: dict[str, str] | None = None,
                           max_shard_bytes: int = MAX_SHARD_BYTES) -> None:
    """config.json, the weights (sharded above ``max_shard_bytes``) and the tokenizer, into ``directory``."""
    cfg = vlm.cfg.to_dict()
    cfg["llm"] = {"path": None, "hf_config": _hf_dict(vlm.llm.config), "attn_implementation": vlm.cfg.llm.attn_implementation}
    (directory / "config.json").write_text(json.dumps({"format": FORMAT, "model": cfg}, indent=2) + "\n")
    sd = _drop_tied(vlm, {k: v.detach().contiguous().cpu() for k, v in vlm.state_dict().items()})
    write_weights(sd, directory, metadata=metadata, max_shard_bytes=max_shard_bytes)
    if vlm.tokenizer is not None:
        vlm.tokenizer.save_pretrained(directory)


def write_weights(sd: dict[str, torch.Tensor], directory: Path, *, metadata: dict[str, str] | None = None,
                  max_shard_bytes: int = MAX_SHARD_BYTES) -> None:
    """``model.safetensors``, or shards + ``model.safetensors.index.json`` when larger than ``max_shard_bytes``."""
    from safetensors.torch import save_file

    from meteor_cli.artifacts import provenance_metadata

    meta = provenance_metadata("meteor.checkpoint", extra=metadata)
    nbytes = {k: v.numel() * v.element_size() for k, v in sd.items()}
    if sum(nbytes.values()) <= max_shard_bytes:
        save_file(sd, str(directory / WEIGHTS), metadata=meta)
        return
    shards: list[list[str]] = [[]]
    size = 0
    for k in sd:  # greedy, in state-dict order; a tensor larger than a shard gets a shard of its own
        if shards[-1] and size + nbytes[k] > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(k)
        size += nbytes[k]
    weight_map = {}
    for i, names in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: sd[k] for k in names}, str(directory / name), metadata=meta)
        weight_map.update(dict.fromkeys(names, name))
    index = {"metadata": {"total_size": sum(nbytes.values())}, "weight_map": weight_map}
    (directory / INDEX).write_text(json.dumps(index, indent=2) + "\n")


def has_weights(directory: str | os.PathLike[str]) -> bool:
    return (Path(directory) / WEIGHTS).is_file() or (Path(directory) / INDEX).is_file()


def read_weights(directory: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory, from ``model.safetensors`` or its shards."""
    from safetensors.torch import load_file

    d = Path(directory)
    if (d / WEIGHTS).is_file():
        return load_file(str(d / WEIGHTS))
    if not (d / INDEX).is_file():
        raise InputNotFoundError(f"{d} has neither {WEIGHTS} nor {INDEX}", "the checkpoint is incomplete")
    try:
        weight_map = json.loads((d / INDEX).read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError):
        raise InvalidInputError(f"{d / INDEX} is not a safetensors index (no weight_map)",
                                "re-save the checkpoint") from None
    sd: dict[str, torch.Tensor] = {}
    for name in sorted(set(weight_map.values())):
        if not (d / name).is_file():
            raise InputNotFoundError(f"{d}: shard {name} listed in {INDEX} is missing", "the checkpoint is incomplete")
        sd.update(load_file(str(d / name)))
    return sd


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
    from transformers import AutoTokenizer

    from meteor_cli.model.vlm import MultiEncoderVLM

    cfg = read_config(directory)
    weights = Path(directory) / (WEIGHTS if (Path(directory) / WEIGHTS).is_file() else INDEX)
    if not has_weights(directory):
        raise InputNotFoundError(f"{directory} has no {WEIGHTS}", "the checkpoint is incomplete")
    tok = AutoTokenizer.from_pretrained(directory) if (Path(directory) / "tokenizer.json").is_file() else None
    vlm = MultiEncoderVLM(cfg, tok)
    sd = read_weights(directory)
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


__all__ = ["FORMAT", "checkpoint_dir_of", "has_weights", "load_checkpoint", "read_weights", "write_weights", "load_model", "load_model_config", "read_config", "save_checkpoint", "LLMConfig",
           "UsageError"]
