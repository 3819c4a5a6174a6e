"""The SynthVQA set benchmark fixtures draw their images from (see benchfix.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meteor_cli.data.synthvqa import generate


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("synth") / "sv"
    generate(d, n_train=0, n_eval=16, seed=0)
    return d
