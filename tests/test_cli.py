"""The `meteor` command line: commands, help, exit codes, configuration precedence."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from meteor_cli.cli import _click as click
from meteor_cli.cli.app import COMMANDS, app
from meteor_cli.errors import ExitCode

STAGES = ["rank-estimate", "allocate", "train", "prune-llm", "eval", "flops", "infer"]
COMMON = ["--device", "--seed", "--json", "--verbose", "--quiet", "--config", "--show-config"]


def _click_command(name: str):
    import typer.main

    return typer.main.get_command(app).commands[name]


def test_subcommands_are_the_pipeline_plus_tools(cli):
    assert list(COMMANDS) == ["synth", *STAGES, "list", "inspect", "demo"]
    out = cli("--help").stdout
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_documents_every_option_with_its_default(cli, name):
    res = cli(name, "--help")
    assert res.exit_code == 0, res.output
    for opt in COMMON:
        assert opt in res.stdout
    for param in _click_command(name).params:
        if not isinstance(param, click.Option):
            continue
        assert param.help, f"{name} {param.opts[0]} has no help text"
        assert param.opts[0] in res.stdout, f"{param.opts[0]} missing from `meteor {name} --help`"
        if param.default not in (None, False, 0, "") and not param.count:
            default = getattr(param.default, "value", param.default)
            assert f"[default: {default}]" in res.stdout, f"{name} {param.opts[0]}: default not shown"


def test_version(cli):
    from meteor_cli import __version__

    res = cli("--version")
    assert res.exit_code == 0 and res.stdout.strip() == f"meteor {__version__}"


def test_unknown_device_is_a_usage_error_without_traceback(cli):
    res = cli("allocate", "--device", "tpu:0")
    assert res.exit_code == ExitCode.USAGE
    assert "unknown device 'tpu:0'" in res.stderr and "Fix:" in res.stderr
    assert "Traceback" not in res.stderr


def test_missing_cuda_exits_6(cli, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    res = cli("train", "--device", "cuda:0")
    assert res.exit_code == ExitCode.DEVICE_UNAVAILABLE == 6
    assert "no CUDA device" in res.stderr


def test_missing_torch_npu_exits_6_and_names_the_extra(cli, monkeypatch):
    import meteor_cli.devices as devices

    monkeypatch.setattr(devices, "_npu_installed", lambda: False)
    res = cli("eval", "--device", "npu:0")
    assert res.exit_code == ExitCode.DEVICE_UNAVAILABLE
    assert "meteor[npu]" in res.stderr


def test_traceback_only_with_verbose(cli, monkeypatch):
    import meteor_cli.devices as devices

    monkeypatch.setattr(devices, "_npu_installed", lambda: False)
    assert "Traceback" not in cli("eval", "--device", "npu").stderr
    assert "Traceback" in cli("eval", "--device", "npu", "-v").stderr


def _show(cli, *args, env=None):
    res = cli(*args, "--show-config", "--json", env=env)
    assert res.exit_code == 0, res.output
    return {row["option"]: row for row in json.loads(res.stdout)["options"]}


def test_configuration_precedence_flag_env_file_default(cli, tmp_path):
    (tmp_path / "meteor.toml").write_text(
        'device = "cpu"\nseed = 3\n[rank-estimate]\nsample = 0.5\ngrid = 16\nimage-root = "imgs"\n'
    )
    rows = _show(cli, "rank-estimate", "--grid", "8", env={"METEOR_SAMPLE": "0.25", "METEOR_RANK_ESTIMATE_SEED": "9"})
    assert rows["--grid"]["value"] == 8 and rows["--grid"]["source"] == "command line"
    assert rows["--sample"]["value"] == 0.25 and rows["--sample"]["source"] == "environment (METEOR_SAMPLE)"
    assert rows["--seed"]["value"] == 9 and "METEOR_RANK_ESTIMATE_SEED" in rows["--seed"]["source"]
    assert rows["--image-root"]["value"] == "imgs" and rows["--image-root"]["source"].endswith("[rank-estimate]")
    assert rows["--device"]["value"] == "cpu" and rows["--device"]["source"].endswith("top level")
    assert rows["--batch-size"]["value"] == 8 and rows["--batch-size"]["source"] == "default"


def test_prepared_directory_needs_no_other_flag(cli, tmp_path):
    """HPC scripts call `meteor rank-estimate --sample 0.001` in a directory with meteor.toml."""
    (tmp_path / "meteor.toml").write_text('model = "tiny"\n[rank-estimate]\ndata = "d/train.json"\n')
    rows = _show(cli, "rank-estimate", "--sample", "0.001")
    assert rows["--model"]["value"] == "tiny" and rows["--data"]["value"] == "d/train.json"


def test_explicit_config_file_and_global_flags(cli, tmp_path):
    (tmp_path / "meteor.toml").write_text('device = "cuda"\n')
    (tmp_path / "other.toml").write_text('[allocate]\ntotal = 99\n')
    rows = _show(cli, "allocate", "--config", "other.toml")
    assert rows["--total"]["value"] == 99 and rows["--device"]["value"] == "auto"  # ./meteor.toml not read
    # A common option given before the subcommand beats the environment and the file.
    res = cli("--device", "cpu", "allocate", "--show-config", "--json", env={"METEOR_DEVICE": "cuda"})
    row = next(r for r in json.loads(res.stdout)["options"] if r["option"] == "--device")
    assert row == {"option": "--device", "value": "cpu", "source": "command line (before the subcommand)"}


@pytest.mark.parametrize(
    "content, message",
    [
        ("[rank-estimat]\ngrid = 3\n", "[rank-estimat] is not a meteor subcommand"),
        ("[rank-estimate]\ngrd = 3\n", "[rank-estimate] has no option 'grd'"),
        ("devic = 'cpu'\n", "'devic' is not an option of any meteor subcommand"),
        ("device = cpu\n", "not valid TOML"),
    ],
)
def test_bad_config_file_is_rejected_with_the_key(cli, tmp_path, content, message):
    (tmp_path / "meteor.toml").write_text(content)
    res = cli("rank-estimate", "--show-config")
    assert res.exit_code == ExitCode.INVALID_INPUT
    assert message in res.stderr


def test_missing_config_file_exits_3(cli):
    res = cli("--config", "nope.toml", "list")
    assert res.exit_code == ExitCode.NOT_FOUND and "nope.toml" in res.stderr


def test_list_json_is_machine_readable(cli):
    res = cli("list", "--json")
    assert res.exit_code == 0
    data = json.loads(res.stdout)
    assert set(data) == {"encoders", "policies", "benchmarks", "presets", "families", "formats", "plugins"}
    assert {f["name"] for f in data["families"]} >= {"llava", "llava_next", "qwen2_vl"}
    assert {f["name"] for f in data["formats"]} >= {"eagle"}


def test_python_dash_m_and_console_script():
    out = subprocess.run([sys.executable, "-m", "meteor_cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "rank-estimate" in out.stdout


def test_cli_startup_does_not_import_torch():
    """`meteor --help` and shell completion must stay fast: no torch at import time."""
    code = "import sys, meteor_cli.cli.app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_human_tables_keep_their_headers_in_logs(monkeypatch):
    """Piped to a file (an HPC job's log) a human table is LOG_WIDTH wide, not rich's 80 columns
    that cut eval's headers to 'met…'; COLUMNS still wins when set."""
    from meteor_cli.cli.common import LOG_WIDTH, rich_console

    monkeypatch.delenv("COLUMNS", raising=False)
    out = subprocess.run([sys.executable, "-m", "meteor_cli", "list", "policies"], capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "COLUMNS"})
    assert out.returncode == 0
    assert max(len(line) for line in out.stdout.splitlines()) > 80
    assert "│ description " in out.stdout or "┃ description " in out.stdout
    assert rich_console().width == LOG_WIDTH
    monkeypatch.setenv("COLUMNS", "100")
    assert rich_console().width == 100
