"""Trainer state on disk without pickle: tensors in safetensors, their structure in JSON.

A checkpoint's optimizer state, RNG states and counters are a nest of dicts, lists, tuples,
numbers, strings, tensors and NumPy arrays. :func:`save_state` flattens it: every tensor (and
array) goes into ``trainer_state.safetensors`` under a path-like name, and the structure, with
each tensor replaced by a reference, goes into ``trainer_state.json``::

    {"format": "meteor.trainer_state/v1", "state": {"step": 120, "optimizer": {"state": {"$items": [
        [0, {"step": {"$tensor": "optimizer.state.0.step"}, ...}]]}, ...}}}

Loading reads JSON and safetensors only, so a crafted checkpoint can never run code (the old
``trainer_state.pt`` was a pickle, which can). Encoding rules, all reversible:

* a dict whose keys are all strings not starting with ``$`` stays a JSON object; any other dict
  becomes ``{"$items": [[key, value], ...]}`` (optimizer state is keyed by int);
* a tuple becomes ``{"$tuple": [...]}``; a tensor ``{"$tensor": name}``; a NumPy array
  ``{"$ndarray": name, "dtype": "uint32"}`` (stored as int64 when safetensors lacks its dtype);
* floats are written by ``repr`` (exact), including ``NaN``/``Infinity``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from meteor_cli.errors import InvalidInputError

FORMAT = "meteor.trainer_state/v1"
JSON_FILE = "trainer_state.json"
TENSOR_FILE = "trainer_state.safetensors"
#: The pickle file older meteor versions wrote; never unpickled with code execution.
LEGACY_FILE = "trainer_state.pt"


def _encode(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    import numpy as np

    if isinstance(obj, torch.Tensor):
        name = path or "tensor"
        tensors[name] = obj.detach().cpu().contiguous().clone()
        return {"$tensor": name}
    if isinstance(obj, np.ndarray):
        name = path or "array"
        dtype = str(obj.dtype)
        tensors[name] = torch.from_numpy(np.ascontiguousarray(obj).astype(np.int64) if obj.dtype.kind in "ui"
                                         else np.ascontiguousarray(obj).copy())
        return {"$ndarray": name, "dtype": dtype}
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj
    if isinstance(obj, tuple):
        return {"$tuple": [_encode(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {k: _encode(v, f"{path}.{k}" if path else k, tensors) for k, v in obj.items()}
        return {"$items": [[_encode(k, f"{path}.key{i}", tensors), _encode(v, f"{path}.{k}", tensors)]
                           for i, (k, v) in enumerate(obj.items())]}
    raise TypeError(f"trainer state at {path or '<root>'}: cannot store a {type(obj).__name__} without pickle")


def _decode(obj: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    import numpy as np

    if isinstance(obj, list):
        return [_decode(v, tensors, where) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "$tensor" in obj:
        name = obj["$tensor"]
        if name not in tensors:
            raise InvalidInputError(f"{where}: tensor {name!r} is named in {JSON_FILE} but missing from {TENSOR_FILE}",
                                    "the checkpoint is damaged; resume from another one")
        return tensors[name]
    if "$ndarray" in obj:
        name = obj["$ndarray"]
        if name not in tensors:
            raise InvalidInputError(f"{where}: array {name!r} is missing from {TENSOR_FILE}",
                                    "the checkpoint is damaged; resume from another one")
        return tensors[name].numpy().astype(np.dtype(obj["dtype"]))
    if "$tuple" in obj:
        return tuple(_decode(v, tensors, where) for v in obj["$tuple"])
    if "$items" in obj:
        return {_decode(k, tensors, where): _decode(v, tensors, where) for k, v in obj["$items"]}
    return {k: _decode(v, tensors, where) for k, v in obj.items()}


def save_state(state: dict[str, Any], directory: Path) -> None:
    """Write ``state`` as ``trainer_state.json`` + ``trainer_state.safetensors`` into ``directory``."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(state, "", tensors)
    save_file(tensors, str(directory / TENSOR_FILE), metadata={"format": FORMAT})
    (directory / JSON_FILE).write_text(json.dumps({"format": FORMAT, "state": structure}) + "\n")


def has_state(directory: Path) -> bool:
    """Whether ``directory`` holds a trainer state of this format (or the legacy pickle)."""
    return (directory / JSON_FILE).is_file() or (directory / LEGACY_FILE).is_file()


def load_state(directory: Path) -> dict[str, Any]:
    """Read what :func:`save_state` wrote; an :class:`InvalidInputError` naming the file if damaged.

    A checkpoint holding only the legacy ``trainer_state.pt`` is read with torch's restricted
    loader (``weights_only=True``, which executes no code) and refused if that cannot read it.
    """
    json_path, tensor_path = directory / JSON_FILE, directory / TENSOR_FILE
    if not json_path.is_file() and (directory / LEGACY_FILE).is_file():
        return _load_legacy(directory / LEGACY_FILE)
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInputError(f"{directory}: no {JSON_FILE}", "the checkpoint is incomplete; resume from another one") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInputError(f"{json_path}: not readable JSON ({exc})",
                                "the checkpoint is damaged; resume from another one") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or "state" not in doc:
        raise InvalidInputError(f"{json_path}: not a {FORMAT} document",
                                "the checkpoint is damaged or from another program")
    try:
        from safetensors.torch import load_file

        tensors = load_file(str(tensor_path))
    except FileNotFoundError:
        raise InvalidInputError(f"{directory}: no {TENSOR_FILE}", "the checkpoint is incomplete; resume from another one") from None
    except Exception as exc:  # safetensors raises its own error type for damaged files
        raise InvalidInputError(f"{tensor_path}: damaged safetensors file ({exc})",
                                "the checkpoint is damaged; resume from another one") from None
    state = _decode(doc["state"], tensors, str(json_path))
    if not isinstance(state, dict):
        raise InvalidInputError(f"{json_path}: the state is not an object", "the checkpoint is damaged")
    return state


def _load_legacy(path: Path) -> dict[str, Any]:
    """Older checkpoints: ``torch.load(weights_only=True)`` with NumPy's array types allowed."""
    import pickle

    import numpy as np

    allowed: list[Any] = [np.ndarray, np.dtype, np.dtypes.UInt32DType]
    try:
        allowed.append(np._core.multiarray._reconstruct)  # type: ignore[attr-defined]
    except AttributeError:  # NumPy < 2
        allowed.append(np.core.multiarray._reconstruct)  # type: ignore[attr-defined]
    try:
        with torch.serialization.safe_globals(allowed):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidInputError(
            f"{path}: refusing to load this pickle trainer state: it holds more than tensors and numbers "
            f"({first[:200]}); meteor never unpickles code",
            "if you wrote this checkpoint yourself with an older meteor, start again without --resume "
            "(new checkpoints store the state as trainer_state.json + trainer_state.safetensors)") from None
    if not isinstance(state, dict):
        raise InvalidInputError(f"{path}: not a trainer state", "the checkpoint is damaged")
    return state
