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


def shard_files(directory: str | os.PathLike[str]) -> dict[str, Path]:
    """Weights file name → path of a checkpoint directory: ``model.safetensors``, or every shard
    ``model.safetensors.index.json`` names, checked to be confined to the directory.

    A shard name must be a plain file name inside the checkpoint (no ``..``, no absolute path,
    no symlink resolving outside it): an index is data, and must not make meteor read
    arbitrary files.

    Raises:
        InputNotFoundError: no weights, or a listed shard is missing (exit 3).
        InvalidInputError: the index is malformed or names a file outside the directory (exit 4).
    """
    from meteor_cli.artifacts import read_json_file

    d = Path(directory)
    if (d / WEIGHTS).is_file():
        return {WEIGHTS: d / WEIGHTS}
    if not (d / INDEX).is_file():
        raise InputNotFoundError(f"{d} has neither {WEIGHTS} nor {INDEX}", "the checkpoint is incomplete")
    index = read_json_file(d / INDEX, "shard index", fix="re-save the checkpoint")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map or \
            not all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise InvalidInputError(f"{d / INDEX}: field 'weight_map' must map tensor names to shard file names",
                                "re-save the checkpoint")
    root = d.resolve()
    out: dict[str, Path] = {}
    for name in sorted(set(weight_map.values())):
        p = Path(name)
        if p.is_absolute() or len(p.parts) != 1 or name in (".", "..") or not name:
            raise InvalidInputError(f"{d / INDEX}: shard {name!r} is not a file name inside the checkpoint "
                                    "directory (absolute paths and ../ are refused)",
                                    "an index may only name files next to it; re-save the checkpoint")
        if (d / name).resolve().parent != root:
            raise InvalidInputError(f"{d / INDEX}: shard {name!r} is a link to {(d / name).resolve()}, outside "
                                    f"the checkpoint directory {root}", "copy the shard into the checkpoint directory")
        if not (d / name).is_file():
            raise InputNotFoundError(f"{d}: shard {name} listed in {INDEX} is missing", "the checkpoint is incomplete")
        out[name] = d / name
    return out


def read_weights(directory: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory, from ``model.safetensors`` or its (confined) shards,
    each file's header and byte ranges checked before it is read."""
    from meteor_cli.artifacts import load_safetensors_file

    sd: dict[str, torch.Tensor] = {}
    for path in shard_files(directory).values():
        sd.update(load_safetensors_file(path))
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


#: Files from which ``AutoTokenizer.from_pretrained`` can build a tokenizer (any one suffices).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


def model_format_of(directory: str | os.PathLike[str]) -> Any:
    """The registered checkpoint format (``MODEL_FORMATS``) that recognises ``directory``, or None
    for meteor's own checkpoints and directories no format claims."""
    from meteor_cli.registry import MODEL_FORMATS, load_builtins_and_plugins

    p = Path(directory) / "config.json"
    if not p.is_file():
        return None
    try:
        if json.loads(p.read_text()).get("format") == FORMAT:
            return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None  # read_config names what is wrong with it
    load_builtins_and_plugins()
    for entry in MODEL_FORMATS.entries():
        if entry.obj.detect(Path(directory)):
            return entry.obj
    return None


def read_config(directory: str | os.PathLike[str]) -> ModelConfig:
    """The ModelConfig of a checkpoint's ``config.json`` (meteor's own, or a registered foreign
    format's: ``meteor list formats``); every defect is a named error (exit 3/4)."""
    from meteor_cli.artifacts import read_json_file
    from meteor_cli.registry import MODEL_FORMATS, load_builtins_and_plugins

    p = Path(directory) / "config.json"
    if not p.is_file():
        raise InputNotFoundError(f"{directory} has no config.json, so it is not a meteor checkpoint",
                                 "pass a directory written by `meteor train`")
    fmt = model_format_of(directory)
    if fmt is not None:
        return fmt.read_config(Path(directory))
    data = read_json_file(p, "config.json", fix="the checkpoint is damaged; re-save it with `meteor train`")
    if data.get("format") != FORMAT:
        load_builtins_and_plugins()
        raise InvalidInputError(f"{p}: format {data.get('format')!r} (model_type {data.get('model_type')!r}), "
                                f"expected {FORMAT!r}",
                                f"pass a meteor checkpoint or one of the registered formats: "
                                f"{', '.join(MODEL_FORMATS.list()) or 'none'} (`meteor list formats`)")
    if not isinstance(data.get("model"), dict):
        raise InvalidInputError(f"{p}: field 'model' must be an object (the model configuration)",
                                "the checkpoint is damaged; re-save it with `meteor train`")
    return ModelConfig.from_dict(data["model"], where=str(p))


def _load_tokenizer(directory: Path, cfg: ModelConfig) -> Any:
    """The checkpoint's tokenizer (or that of ``llm.path``); a named error when there is none."""
    from transformers import AutoTokenizer

    source = directory if any((directory / f).is_file() for f in TOKENIZER_FILES) else None
    if source is None and cfg.llm.path and any((Path(cfg.llm.path) / f).is_file() for f in TOKENIZER_FILES):
        source = Path(cfg.llm.path)
    if source is None:
        raise InputNotFoundError(f"{directory} has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, ...)",
                                 "the checkpoint is incomplete: copy the tokenizer files written with it back in")
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError, KeyError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"{source}: the tokenizer files cannot be loaded ({type(exc).__name__}: {exc})",
                                "the tokenizer files are damaged; copy them again") from None
    except Exception as exc:  # tokenizers' Rust errors (e.g. a truncated tokenizer.json) are plain Exceptions
        raise InvalidInputError(f"{source}: the tokenizer files cannot be loaded ({exc})",
                                "the tokenizer files are damaged; copy them again") from None


def build_model(cfg: ModelConfig, tokenizer: Any, where: str) -> Any:
    """``MultiEncoderVLM(cfg, tokenizer)``, with a value the model code cannot build from (an
    LLM config transformers refuses, a shape that does not divide) reported against ``where``."""
    from meteor_cli.errors import MeteorError
    from meteor_cli.model.vlm import MultiEncoderVLM

    try:
        return MultiEncoderVLM(cfg, tokenizer)
    except MeteorError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, AssertionError, RuntimeError) as exc:
        raise InvalidInputError(f"{where}: the model it describes cannot be built ({type(exc).__name__}: {exc})",
                                "compare with `meteor inspect` of a working checkpoint") from None


def load_checkpoint(directory: str | os.PathLike[str], device: str | torch.device = "cpu") -> Any:
    """Rebuild the model of ``directory`` and load its weights exactly."""
    d = Path(directory)
    fmt = model_format_of(d)
    if fmt is not None:
        return fmt.load(d, device)
    cfg = read_config(d)
    weights = d / (WEIGHTS if (d / WEIGHTS).is_file() else INDEX)
    if not has_weights(d):
        raise InputNotFoundError(f"{directory} has no {WEIGHTS}", "the checkpoint is incomplete")
    shard_files(d)  # confined and present: fail before the (slow) model build
    tok = _load_tokenizer(d, cfg)
    vlm = build_model(cfg, tok, str(d / "config.json"))
    sd = read_weights(d)
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
    require_meteor_model(spec)
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


def require_meteor_model(spec: str) -> None:
    """A transformers VLM directory has no meteor ModelConfig: say so instead of 'not a checkpoint'."""
    from meteor_cli.model.hf_vlm import family_of

    fam = family_of(spec)
    if fam is not None:
        raise UsageError(f"{spec} is a transformers {fam.hf_class} directory, which has no meteor multi-encoder "
                         "config", "this command takes meteor models; eval, infer, prune-llm (incl. --calibrate), flops "
                         "and inspect take this directory (and rank-estimate/allocate that of a LLaVA-1.5 or LLaVA-NeXT model)")


def require_stage1_model(spec: str, what: str) -> None:
    """Refuse, naming why, a transformers VLM directory whose tower Stage 1 cannot prune (``what``:
    the command or option); meteor's own models and LLaVA-1.5 / LLaVA-NeXT directories pass."""
    from meteor_cli.model.hf_vlm import family_of

    fam = family_of(spec)
    if fam is not None:
        fam.require_stage1(what)


def load_model(spec: str, device: str | torch.device = "cpu", *, seed: int = 0) -> Any:
    """A ready model from a preset (random init, seeded), a checkpoint directory, a config JSON, or a
    transformers VLM directory (LLaVA-1.5, LLaVA-NeXT, Qwen2-VL: see :mod:`meteor_cli.model.hf_vlm`)."""
    from meteor_cli.model.hf_vlm import family_of
    from meteor_cli.model.presets import synthvqa_tokenizer
    from meteor_cli.model.vlm import MultiEncoderVLM

    family = family_of(spec)
    if family is not None:
        return family.from_pretrained(spec, device)

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


__all__ = ["FORMAT", "TOKENIZER_FILES", "build_model", "checkpoint_dir_of", "has_weights", "load_checkpoint",
           "model_format_of", "read_weights", "require_meteor_model", "require_stage1_model", "shard_files", "write_weights", "load_model",
           "load_model_config", "read_config", "save_checkpoint", "LLMConfig",
           "UsageError"]
