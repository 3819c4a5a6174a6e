"""Device strings, resolution, the lazy NPU backend, dtype policy and timers."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from meteor_cli import devices as D
from meteor_cli.errors import DeviceUnavailableError, UsageError


@pytest.mark.parametrize(
    "spec, parsed",
    [("auto", ("auto", None)), ("cpu", ("cpu", None)), ("cuda", ("cuda", None)), ("cuda:3", ("cuda", 3)),
     ("npu:0", ("npu", 0)), (" NPU:1 ", ("npu", 1))],
)
def test_parse(spec, parsed):
    assert D.parse_device(spec) == parsed


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:x", "cpu:0", "auto:1", "tpu", "", "cuda:-1"])
def test_parse_rejects(spec):
    with pytest.raises(UsageError):
        D.parse_device(spec)


def test_cpu_and_auto_without_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(D, "_npu_installed", lambda: False)
    assert D.resolve_device("cpu") == D.Device("cpu")
    assert D.resolve_device("auto") == D.Device("cpu")
    assert str(D.resolve_device("auto")) == "cpu" and D.resolve_device("cpu").torch == torch.device("cpu")


def test_cuda_missing(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailableError, match="no CUDA device"):
        D.resolve_device("cuda:0")


def test_cuda_index_out_of_range(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert D.resolve_device("cuda:1") == D.Device("cuda", 1)
    with pytest.raises(DeviceUnavailableError, match="indices 0..1"):
        D.resolve_device("cuda:2")


def test_npu_missing_names_the_extra(monkeypatch):
    monkeypatch.setattr(D, "_npu_installed", lambda: False)
    with pytest.raises(DeviceUnavailableError) as info:
        D.resolve_device("npu:0")
    assert "meteor[npu]" in str(info.value)


def test_npu_import_failure_is_reported(monkeypatch):
    """torch_npu present but broken (e.g. no CANN): a clear error, not an ImportError."""
    monkeypatch.setattr(D, "_npu_installed", lambda: True)
    monkeypatch.setitem(sys.modules, "torch_npu", None)  # makes `import torch_npu` raise ImportError
    with pytest.raises(DeviceUnavailableError, match="torch_npu cannot be imported"):
        D.resolve_device("npu")


@pytest.fixture
def fake_npu(monkeypatch):
    """A stand-in for torch_npu: importing it provides `torch.npu` with two devices."""
    calls = []
    npu = types.SimpleNamespace(
        is_available=lambda: True, device_count=lambda: 2, current_device=lambda: 0,
        synchronize=lambda index=None: calls.append(index),
    )
    module = types.ModuleType("torch_npu")
    monkeypatch.setitem(sys.modules, "torch_npu", module)
    monkeypatch.setattr(D, "_npu_installed", lambda: True)
    monkeypatch.setattr(torch, "npu", npu, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return calls


def test_npu_resolves_and_synchronises_through_the_backend(fake_npu):
    dev = D.resolve_device("npu:1")
    assert dev == D.Device("npu", 1) and dev.is_accelerator
    assert D.resolve_device("npu") == D.Device("npu", 0)
    assert D.resolve_device("auto") == D.Device("npu", 0)  # cuda absent → npu before cpu
    with D.Timer(dev) as t:
        pass
    assert fake_npu == [1, 1] and t.seconds >= 0  # synchronised on entry and exit
    with pytest.raises(DeviceUnavailableError, match="indices 0..1"):
        D.resolve_device("npu:2")


def test_auto_prefers_cuda(monkeypatch, fake_npu):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert D.resolve_device("auto") == D.Device("cuda", 0)


def test_dtype_policy():
    assert D.default_dtype(D.Device("cpu")) is torch.float32
    assert D.default_dtype(D.Device("cuda", 0)) is torch.bfloat16
    assert D.default_dtype(D.Device("npu", 0)) is torch.bfloat16
    assert D.default_dtype(D.Device("cuda", 0), "fp32") is torch.float32
    assert D.default_dtype(D.Device("cpu"), "bf16") is torch.bfloat16
    with pytest.raises(UsageError, match="unknown dtype"):
        D.default_dtype(D.Device("cpu"), "int3")


def test_cpu_timer_measures_time():
    import time

    with D.Timer(D.Device("cpu")) as t:
        time.sleep(0.01)
    assert 0.005 < t.seconds < 1.0


def test_seed_everything_is_reproducible():
    D.seed_everything(5)
    a = torch.rand(3)
    D.seed_everything(5)
    assert torch.equal(a, torch.rand(3))
