"""The README states facts users rely on: keep them true."""

from __future__ import annotations

import re
from pathlib import Path

from meteor_cli.errors import ExitCode

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_exit_code_table_matches_the_code():
    rows = dict(re.findall(r"^\| (\d+) \| ([A-Z_]+) \|", README, flags=re.M))
    assert {int(k): v for k, v in rows.items()} == {int(c): c.name for c in ExitCode}


def test_ci_runs_the_readme_test_command_verbatim():
    quickstart = README.split("## Quickstart", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in quickstart.strip().splitlines()]
    assert len(commands) == 2, "the Quickstart has exactly two commands: demo and test"
    test_cmd = next(c for c in commands if c.endswith(" test"))
    ci = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()
          if ln.strip() and not ln.lstrip().startswith("#")]
    assert test_cmd in ci


def test_every_subcommand_is_documented():
    from meteor_cli.cli.app import COMMANDS

    for name in COMMANDS:
        assert f"meteor {name}" in README, f"README never shows `meteor {name}`"


def test_changelog_has_an_unreleased_section():
    text = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in text
