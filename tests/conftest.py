"""Shared fixtures: an isolated working directory and environment, a CLI runner, bench/ scripts."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Every test runs in its own empty directory, with no METEOR_* variables from the caller."""
    for key in list(os.environ):
        if key.startswith("METEOR_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def cli():
    """Run ``meteor ARGS`` in-process; returns typer's Result (stdout/stderr kept apart)."""
    from typer.testing import CliRunner

    from meteor_cli.cli.app import app

    runner = CliRunner()

    def invoke(*args: str, env: dict[str, str] | None = None, input: str | bytes | None = None):
        return runner.invoke(app, list(args), env={"COLUMNS": "200", **(env or {})}, input=input)

    return invoke


BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture
def bench_module():
    """Load ``bench/NAME.py`` as a module (bench/ is a folder of scripts, not a package)."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load
