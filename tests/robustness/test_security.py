"""Nothing meteor reads can run code; a broken plugin never takes the CLI down.

Every file a command loads is either JSON, safetensors, or (encoder ``.pth``/``.bin`` weights,
legacy trainer state) read with torch's restricted ``weights_only`` unpickler. A pickle payload
whose ``__reduce__`` would create a marker file is planted in each; the marker must never
appear and the error must be a named one (never "internal error").
"""

from __future__ import annotations

import os
import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import meteor_cli
from meteor_cli import registry as R
from meteor_cli.errors import ExitCode, InvalidInputError
from meteor_cli.train import state as S
from meteor_cli.train.loop import TrainConfig, Trainer

from .toytask import ToyTask


class Payload:
    """Unpickling this runs ``os.system('touch MARKER')``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant(path: Path, marker: Path, wrap: bool = True) -> None:
    """Write a pickle (as ``torch.save`` would) holding the payload, optionally inside a dict."""
    obj = {"state_dict": {"w": torch.zeros(1)}, "evil": Payload(marker)} if wrap else Payload(marker)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)


def test_the_payload_really_runs_when_unpickled(tmp_path):
    """The test's premise: a plain unpickle of the planted file creates the marker."""
    marker = tmp_path / "ran"
    plant(tmp_path / "x.pt", marker)
    torch.load(tmp_path / "x.pt", weights_only=False)
    assert marker.exists()


# -- the trainer state --------------------------------------------------------------------------


def trainer(out: Path, **cfg) -> Trainer:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 4, generator=g)
    data = [(x[i], x[i, :2]) for i in range(16)]
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    return Trainer(model, data, ToyTask(), TrainConfig(**{"lr": 1e-2, "batch_size": 4, "max_steps": 2, **cfg}), out,
                   warn=lambda m: None)


@pytest.mark.parametrize("victim", ["trainer_state.pt", "trainer_state.safetensors", "trainer_state.json",
                                    "model.safetensors"])
def test_a_pickle_in_a_checkpoint_runs_nothing_on_resume(tmp_path, victim):
    out = tmp_path / "run"
    trainer(out, save_every=1).fit()
    marker = tmp_path / "ran"
    for ckpt in (out / "checkpoints").iterdir():
        if victim == "trainer_state.pt":  # an old-format checkpoint: only the pickle is there
            for f in ("trainer_state.json", "trainer_state.safetensors"):
                (ckpt / f).unlink()
        plant(ckpt / victim, marker, wrap=victim != "trainer_state.pt")
    with pytest.raises(InvalidInputError) as info:
        trainer(out, save_every=1).fit(resume=True)
    assert not marker.exists()
    assert "no intact checkpoint" in info.value.message
    if victim == "trainer_state.pt":
        assert "refusing to load this pickle" in info.value.message


def test_resume_via_the_cli_with_a_pickled_state_is_a_named_error(cli, tmp_path):
    """`meteor train --resume` on an old pickle trainer state: exit 4, marker absent (no model is built)."""
    from meteor_cli.data.synthvqa import generate

    generate(tmp_path / "sv", n_train=4, n_eval=0, seed=0)
    ckpt = tmp_path / "run" / "checkpoints" / "step-0000001"
    marker = tmp_path / "ran"
    plant(ckpt / "trainer_state.pt", marker, wrap=False)
    res = cli("train", "--model", "tiny", "--data", "sv/train.json", "--batch-size", "2", "--max-steps", "2",
              "--device", "cpu", "-q", "--out", "run", "--resume")
    assert not marker.exists()
    assert res.exit_code == ExitCode.INVALID_INPUT, res.output
    assert "refusing to load this pickle" in res.stderr and "internal error" not in res.stderr


def test_a_legacy_state_of_tensors_and_numbers_still_resumes(tmp_path):
    """Old checkpoints held only tensors, numbers and NumPy's RNG state: the restricted loader reads them."""
    import random

    import numpy as np

    out = tmp_path / "run"
    t = trainer(out, save_every=1)
    t.fit()
    ckpt = t.checkpoints()[-1]  # step 1
    state = S.load_state(ckpt)
    state.pop("dataset_size")
    state["rng"] = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    for f in ("trainer_state.json", "trainer_state.safetensors"):
        (ckpt / f).unlink()
    torch.save(state, ckpt / "trainer_state.pt")
    (out / "checkpoints" / "step-0000002").rename(tmp_path / "later")
    res = trainer(out, save_every=1).fit(resume=True)
    assert res.resumed_from == 1 and res.steps == 2


@pytest.mark.parametrize("suffix", [".pth", ".bin"])
def test_encoder_weights_with_a_pickle_payload_are_refused(tmp_path, suffix):
    from meteor_cli.model.encoders.base import EncoderAdapter

    marker = tmp_path / "ran"
    path = tmp_path / f"weights{suffix}"
    plant(path, marker)

    class Stub:
        cfg = type("C", (), {"name": "vit"})()

    with pytest.raises(InvalidInputError, match="not a plain tensor checkpoint"):
        EncoderAdapter.load_weights(Stub(), nn.Linear(1, 1), str(path))
    assert not marker.exists()


def test_state_files_hold_no_pickle(tmp_path):
    out = tmp_path / "run"
    trainer(out, save_every=1).fit()
    ckpt = out / "checkpoints" / "step-0000002"
    assert sorted(p.name for p in ckpt.iterdir()) == ["config.json", "model.safetensors", "trainer_state.json",
                                                      "trainer_state.safetensors"]
    raw = (ckpt / "trainer_state.safetensors").read_bytes()
    assert not raw.startswith(b"PK") and not raw.startswith(b"\x80")  # neither torch's zip nor a raw pickle


def test_no_code_path_in_meteor_unpickles():
    """The class, not the example: no unrestricted unpickling anywhere in meteor_cli."""
    root = Path(meteor_cli.__file__).parent
    bad = []
    for py in root.rglob("*.py"):
        text = py.read_text()
        for m in re.finditer(r"torch\.load\((?P<args>[^)]*)\)", text):
            if "weights_only=True" not in m.group("args"):
                bad.append(f"{py.relative_to(root)}: {m.group(0)}")
        for pat in (r"\bpickle\.loads?\(", r"weights_only\s*=\s*False", r"allow_pickle\s*=\s*True",
                    r"\bjoblib\.load\(", r"\bdill\.", r"\bcloudpickle\.", r"Unpickler\("):
            bad += [f"{py.relative_to(root)}: {m.group(0)}" for m in re.finditer(pat, text)]
    assert not bad, bad


# -- plugins ------------------------------------------------------------------------------------


def _install(root: Path, source: str, entry: str = "meteor_evil_plugin") -> None:
    (root / "meteor_evil_plugin.py").write_text(textwrap.dedent(source))
    info = root / "meteor_evil_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: meteor-evil-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[meteor.plugins]\nevil = {entry}\n")


@pytest.fixture
def plugin_root(tmp_path, monkeypatch):
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    yield root
    sys.modules.pop("meteor_evil_plugin", None)


@pytest.mark.parametrize("body, shown", [
    ("import sys; sys.exit()", "sys.exit(None)"),
    ("import sys; sys.exit(3)", "sys.exit(3)"),
    ("raise SystemExit('bye')", "sys.exit('bye')"),
    ("raise RuntimeError('needs CANN')", "RuntimeError: needs CANN"),
    ("import does_not_exist_anywhere", "ModuleNotFoundError"),
    ("raise GeneratorExit", "GeneratorExit"),
    ("class Odd(BaseException): pass\nraise Odd('strange')", "Odd: strange"),
    ("1 / 0", "ZeroDivisionError"),
])
def test_a_failing_plugin_is_a_warning_naming_it(plugin_root, body, shown):
    _install(plugin_root, body + "\n")
    with pytest.warns(R.PluginLoadWarning) as record:
        assert R.load_plugins() == []
    message = str(record[0].message)
    assert "meteor plugin 'evil' (meteor_evil_plugin)" in message and shown in message


def test_a_plugin_whose_register_function_exits_is_skipped(plugin_root):
    _install(plugin_root, "import sys\ndef register():\n    sys.exit(2)\n", "meteor_evil_plugin:register")
    with pytest.warns(R.PluginLoadWarning, match="'evil'.*sys.exit\\(2\\)"):
        assert R.load_plugins() == []


def test_ctrl_c_during_plugin_import_still_interrupts(plugin_root):
    _install(plugin_root, "raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        R.load_plugins()


def test_commands_still_work_when_a_plugin_calls_sys_exit(plugin_root, cli, monkeypatch):
    _install(plugin_root, "import sys; sys.exit(0)\n")
    monkeypatch.setattr(R, "_loaded", False)
    res = cli("list", "presets")
    assert res.exit_code == 0, res.output
    assert "tiny" in res.stdout
