"""The ``meteor`` command: wires one entry function per subcommand (litgpt-style).

Every subcommand module exposes ``main``; this file only registers them, in pipeline order.
Shell completion: ``meteor --install-completion`` or the scripts in ``completions/``.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, NoReturn

import typer

from meteor_cli import __version__
from meteor_cli.cli import (
    allocate,
    demo,
    eval as eval_cmd,
    flops,
    infer,
    inspect_cmd,
    list_cmd,
    prune_llm,
    rank_estimate,
    synth,
    train,
)
from meteor_cli.cli.common import MeteorGroup, meteor_command
from meteor_cli.errors import ExitCode

HELP = """\
METEOR: prune visual tokens at every stage of a multi-encoder vision-language model.

Pipeline: (synth →) rank-estimate → allocate → train → prune-llm → eval | infer | flops.
`meteor demo` runs all of it on the embedded model and compares METEOR with the baselines.
Each stage reads and writes self-describing artifacts (JSON or safetensors; `-` = stdin/stdout).

Every option can also be set in ./meteor.toml (or --config FILE) and through environment
variables METEOR_<COMMAND>_<OPTION> or METEOR_<OPTION> (e.g. METEOR_DEVICE=npu:0);
precedence: command line > environment > file > default. `--show-config` shows the result.
"""

#: Subcommand name → entry function, in the order `meteor --help` lists them.
COMMANDS = {
    "synth": synth.main,
    "rank-estimate": rank_estimate.main,
    "allocate": allocate.main,
    "train": train.main,
    "prune-llm": prune_llm.main,
    "eval": eval_cmd.main,
    "flops": flops.main,
    "infer": infer.main,
    "list": list_cmd.main,
    "inspect": inspect_cmd.main,
    "demo": demo.main,
}

app = typer.Typer(
    name="meteor",
    cls=MeteorGroup,
    help=HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"meteor {__version__}")
        raise typer.Exit()


@app.callback()
@meteor_command(None)
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Common options given before the subcommand apply to it (its own flags win)."""


for _name, _fn in COMMANDS.items():
    app.command(_name)(_fn)


def _reader_went_away(*_: object) -> NoReturn:
    """stdout's reader closed the pipe (``meteor list | head``): stop quietly with exit 0, as Unix
    tools do. Later writes (and the interpreter's final flush) go to /dev/null."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    raise SystemExit(int(ExitCode.OK))


def main() -> None:
    """Console-script entry point (``meteor``).

    A closed stdout ends every command with exit 0, handled once here: ``BrokenPipeError`` from
    any write, and rich's own broken-pipe handler (which would exit 1).
    """
    from rich.console import Console

    Console.on_broken_pipe = _reader_went_away  # type: ignore[method-assign]
    try:
        app(prog_name="meteor")
    except BrokenPipeError:
        _reader_went_away()
