"""Fixtures shared by the transformers-VLM tests of this directory."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def hf_vlm_dirs(tmp_path_factory):
    """The three tiny transformers VLMs (tests/model/hf_vlm_builders.py), built once per session.
    Tests that change a directory copy it first."""
    from .hf_vlm_builders import BUILDERS

    root = tmp_path_factory.mktemp("hfvlm_shared")
    return {name: build(root / name) for name, build in BUILDERS.items()}
