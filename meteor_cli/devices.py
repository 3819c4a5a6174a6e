"""Device strings, resolved once: ``auto | cpu | cuda[:N] | npu[:N]``.

Nothing else in meteor calls ``.cuda()`` or imports ``torch_npu``: commands resolve their
``--device`` here and pass the resulting :class:`Device` down.

- ``auto`` picks CUDA if available, then an Ascend NPU if ``torch_npu`` is installed and sees
  a device, else the CPU.
- ``npu`` imports ``torch_npu`` lazily, only when asked for. Installing it without Ascend's CANN
  libraries breaks ``import torch`` itself, so it is never a hard dependency: the ``npu`` extra
  (``pip install 'meteor[npu]'``) is for machines that have CANN.
- Dtype policy: float32 on the CPU, bfloat16 on CUDA/NPU, unless the user says otherwise.
- Under ``torchrun`` each rank takes the accelerator of its ``LOCAL_RANK``
  (:func:`rank_device_index`): for a bare ``cuda``/``npu`` (and ``auto`` picking one), and for
  any ``cuda:N``/``npu:N`` when ``WORLD_SIZE`` > 1 (every rank gets the same command line, so an
  index there would put all ranks on one device).

Example::

    dev = resolve_device("auto")          # Device(type='cpu', index=None) on a laptop
    x = torch.zeros(3, device=dev.torch)
    with Timer(dev) as t:
        model(x)
    print(t.seconds)
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from meteor_cli.errors import DeviceUnavailableError, UsageError

if TYPE_CHECKING:  # torch is imported lazily: `meteor --help` must not pay for it
    import torch

DeviceType = Literal["cpu", "cuda", "npu"]
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|npu)(?::(\d+))?$")
_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16"}

NPU_HINT = (
    "install Ascend's PyTorch backend on a machine with the CANN toolkit: "
    "pip install 'meteor[npu]' (torch_npu must match your torch release), "
    "or pick another device with --device cpu"
)


@dataclass(frozen=True)
class Device:
    """A resolved device. ``index`` is None for the CPU (and for ``cuda``/``npu`` before resolving)."""

    type: DeviceType
    index: int | None = None

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"

    @property
    def torch(self) -> torch.device:
        """The ``torch.device``; for NPUs this needs ``torch_npu`` loaded (resolve_device does it)."""
        import torch

        return torch.device(str(self))

    @property
    def is_accelerator(self) -> bool:
        return self.type != "cpu"


def parse_device(spec: str) -> tuple[str, int | None]:
    """Check the syntax of a device string; returns ``(type, index)``. Touches no hardware.

    >>> parse_device("cuda:1")
    ('cuda', 1)
    >>> parse_device("auto")
    ('auto', None)
    """
    m = _DEVICE_RE.match(spec.strip().lower())
    if not m:
        raise UsageError(
            f"unknown device {spec!r}",
            "use one of auto, cpu, cuda, cuda:N, npu, npu:N (N = device index, e.g. cuda:0)",
        )
    kind, index = m.group(1), m.group(2)
    if kind in ("auto", "cpu") and index is not None:
        raise UsageError(f"device {spec!r} takes no index", f"write --device {kind}")
    return kind, int(index) if index is not None else None


def rank_device_index(kind: str, index: int | None, env: Mapping[str, str] | None = None) -> int | None:
    """The accelerator index this process should use under ``torchrun`` (pure: reads only ``env``).

    ``kind``/``index``: the parsed ``--device`` (``auto`` resolved to its accelerator first). A
    CPU, or no ``LOCAL_RANK`` in ``env`` (default ``os.environ``), leaves ``index`` as it is; a bare
    ``cuda``/``npu`` becomes ``LOCAL_RANK``, and so does any index when ``WORLD_SIZE`` > 1.

    >>> rank_device_index("cuda", None, {"LOCAL_RANK": "3", "WORLD_SIZE": "4"})
    3
    >>> rank_device_index("cuda", 1, {"LOCAL_RANK": "0", "WORLD_SIZE": "1"}), rank_device_index("cpu", None, {"LOCAL_RANK": "2"})
    (1, None)
    """
    env = os.environ if env is None else env
    local = env.get("LOCAL_RANK")
    if kind not in ("cuda", "npu") or local is None or not local.strip().isdigit():
        return index
    try:
        world = int(env.get("WORLD_SIZE", "1") or 1)
    except ValueError:
        world = 1
    return int(local) if index is None or world > 1 else index


def load_npu_backend() -> None:
    """Import ``torch_npu`` (which registers ``torch.npu``), or say how to get it."""
    try:
        importlib.import_module("torch_npu")
    except ImportError as exc:
        raise DeviceUnavailableError(
            f"an Ascend NPU was requested but torch_npu cannot be imported ({exc})", NPU_HINT
        ) from None


def _npu_installed() -> bool:
    return importlib.util.find_spec("torch_npu") is not None


def _backend(kind: str):  # -> the torch.cuda / torch.npu module
    import torch

    if kind == "npu":
        load_npu_backend()
    return getattr(torch, kind)


def resolve_device(spec: str | Device = "auto") -> Device:
    """Parse ``spec`` and check that the device exists; returns a :class:`Device`.

    Raises:
        UsageError: the string is not a device string (exit code 2).
        DeviceUnavailableError: the device is missing or its backend is not installed (exit 6).
    """
    if isinstance(spec, Device):
        spec = str(spec)
    kind, index = parse_device(spec)
    if kind == "auto":
        import torch

        if torch.cuda.is_available():
            return Device("cuda", rank_device_index("cuda", torch.cuda.current_device()))
        if _npu_installed():
            try:
                npu = _backend("npu")
                if npu.is_available():
                    return Device("npu", rank_device_index("npu", npu.current_device()))
            except DeviceUnavailableError:
                pass  # torch_npu present but unusable: fall through to the CPU
        return Device("cpu")
    if kind == "cpu":
        return Device("cpu")

    if kind == "npu" and not _npu_installed():
        raise DeviceUnavailableError(f"--device {spec}: torch_npu is not installed", NPU_HINT)
    backend = _backend(kind)
    if not backend.is_available():
        what = "CUDA" if kind == "cuda" else "Ascend NPU"
        raise DeviceUnavailableError(
            f"--device {spec}: no {what} device is available on this machine",
            "use --device cpu (or --device auto to pick the best available device)",
        )
    count = backend.device_count()
    ranked = rank_device_index(kind, index)
    index = backend.current_device() if ranked is None else ranked
    if index >= count:
        local = f" (LOCAL_RANK {os.environ.get('LOCAL_RANK')} under torchrun)" if ranked != parse_device(spec)[1] else ""
        raise DeviceUnavailableError(
            f"--device {spec}{local}: this machine has {count} {kind} device(s), indices 0..{count - 1}",
            f"pick an index below {count}" + (", or start fewer ranks per node (--nproc-per-node)" if local else ""),
        )
    return Device(kind, index)  # type: ignore[arg-type]


def default_dtype(device: Device, override: str | None = None) -> torch.dtype:
    """float32 on the CPU, bfloat16 on CUDA/NPU; ``override`` ("fp32", "bf16", "fp16", …) wins."""
    import torch

    if override:
        name = _DTYPES.get(override.lower())
        if name is None:
            raise UsageError(f"unknown dtype {override!r}", f"use one of {', '.join(sorted(_DTYPES))}")
        return getattr(torch, name)
    return torch.float32 if device.type == "cpu" else torch.bfloat16


def synchronize(device: Device) -> None:
    """Wait for queued kernels on ``device`` to finish (no-op on the CPU)."""
    if device.type != "cpu":
        _backend(device.type).synchronize(device.index)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) for a reproducible run."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA/NPU device


class Timer:
    """Wall-clock timer that synchronises the device on entry and exit.

    Without synchronisation an accelerator timing measures only the kernel launches.
    """

    def __init__(self, device: Device) -> None:
        self.device = device
        self.seconds = 0.0
        self._t0 = 0.0

    def __enter__(self) -> Timer:
        synchronize(self.device)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self._t0
