"""The shell completion scripts in completions/ are the ones the CLI generates today."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_are_current(shell):
    generated = subprocess.run(
        [sys.executable, "-m", "meteor_cli"], env={**os.environ, "_METEOR_COMPLETE": f"source_{shell}"},
        capture_output=True, text=True, check=True,
    ).stdout
    committed = (ROOT / "completions" / f"meteor.{shell}").read_text()
    assert generated == committed, f"completions/meteor.{shell} is stale: run `python3 tasks.py completions`"


def test_completion_answers_subcommands_and_options():
    env = {**os.environ, "_METEOR_COMPLETE": "complete_bash", "COMP_WORDS": "meteor rank-estimate --me",
           "COMP_CWORD": "2"}
    out = subprocess.run([sys.executable, "-m", "meteor_cli"], env=env, capture_output=True, text=True).stdout
    assert out.split() == ["--method"]
