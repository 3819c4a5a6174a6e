"""Fixtures shared by the tests of this directory: tiny transformers VLMs and tiny EAGLE releases."""

from __future__ import annotations

from pathlib import Path

import pytest

from .eagle_release import X4, X5, write_release


@pytest.fixture(scope="session")
def hf_vlm_dirs(tmp_path_factory):
    """The three tiny transformers VLMs (tests/model/hf_vlm_builders.py), built once per session.
    Tests that change a directory copy it first."""
    from .hf_vlm_builders import BUILDERS

    root = tmp_path_factory.mktemp("hfvlm_shared")
    return {name: build(root / name) for name, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def x5(tmp_path_factory) -> Path:
    """A tiny Eagle-X5 release (tests/model/eagle_release.py), one per test module (some tests edit it)."""
    return write_release(tmp_path_factory.mktemp("eagle") / "Eagle-X5-tiny", X5)


@pytest.fixture(scope="module")
def x4_plus(tmp_path_factory) -> Path:
    """X4 towers with a Llama-3 tokenizer, as Eagle-X4-8B-Plus."""
    return write_release(tmp_path_factory.mktemp("eagle") / "Eagle-X4-Plus-tiny", X4, llama3=True, seed=3)
