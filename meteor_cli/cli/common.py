"""What every subcommand shares: common options, configuration sources, output, errors.

Common options
    ``--device``, ``--seed``, ``--json``, ``-v/-q``, ``--config``, ``--show-config`` are added to
    every subcommand by :func:`meteor_command` (and to ``meteor`` itself, so
    ``meteor --device cpu eval …`` and ``meteor eval --device cpu …`` both work; the
    subcommand's own flag wins).

Where option values come from (highest first)
    1. the command line;
    2. environment variables: ``METEOR_<COMMAND>_<OPTION>`` then ``METEOR_<OPTION>``
       (``METEOR_RANK_ESTIMATE_SAMPLE=0.001``, ``METEOR_DEVICE=npu:0``);
    3. the project file: ``--config FILE``, else ``$METEOR_CONFIG``, else ``./meteor.toml``;
       top-level keys apply to every subcommand that has that option, a ``[rank-estimate]``
       table to that subcommand only;
    4. the built-in default.

    This is Click's own ``envvar`` + ``default_map`` mechanism; ``--show-config`` prints each
    resolved value and its source. Unknown keys in the project file are errors (typos must not
    be silently ignored in a batch job).

Output
    Results go to stdout: a human rendering, or one JSON document with ``--json``. Logs,
    warnings and progress bars go to stderr, so ``--json`` output pipes cleanly into ``jq``.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import functools
import inspect
import json
import logging
import os
import sys
import traceback
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_type_hints

import typer

from meteor_cli.cli import _click as click

from meteor_cli.devices import Device, parse_device, resolve_device, seed_everything
from meteor_cli.errors import (ExitCode, InputNotFoundError, InvalidInputError, MeteorError, NotBuiltError,
                               UsageError)

ParameterSource = click.ParameterSource
F = TypeVar("F", bound=Callable[..., Any])

COMMON_PANEL = "Common options"
PROJECT_FILE = "meteor.toml"
ENV_PREFIX = "METEOR"

log = logging.getLogger("meteor_cli")
_verbosity = 0  # of the running command; read by the error reporter


# --------------------------------------------------------------------------------------------
# The run context handed to every subcommand
# --------------------------------------------------------------------------------------------


@dataclass
class Run:
    """Resolved common options of one invocation, and the output helpers that honour them."""

    command: str
    device_spec: str = "auto"
    seed: int = 0
    json: bool = False
    verbosity: int = 0  # -1 with -q, 0 normal, 1+ with -v
    config_file: str | None = None
    _device: Device | None = field(default=None, repr=False)

    @property
    def device(self) -> Device:
        """The ``--device`` resolved against the hardware (once; errors exit with code 6)."""
        if self._device is None:
            self._device = resolve_device(self.device_spec)
            log.debug("device %s resolved to %s", self.device_spec, self._device)
        return self._device

    @property
    def quiet(self) -> bool:
        return self.verbosity < 0

    def seed_everything(self) -> None:
        """Seed Python, NumPy and torch with ``--seed``."""
        seed_everything(self.seed)

    # -- output ----------------------------------------------------------------------------

    def emit(self, data: Any, human: Callable[[], None] | str | None = None, *, stdout_used: bool = False) -> None:
        """Print the command's result: ``data`` as JSON with ``--json``, else ``human``.

        ``stdout_used``: the command already wrote its artifact to stdout (``--out -``), so the
        human summary goes to stderr to keep the pipe clean.
        """
        if stdout_used and not self.json:
            with contextlib.redirect_stdout(sys.stderr):
                self.emit(data, human)
            return
        if self.json:
            sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
            sys.stdout.flush()
        elif callable(human):
            human()
        elif human is not None:
            typer.echo(human)
        else:
            typer.echo(json.dumps(data, indent=2, default=str))

    def info(self, message: str) -> None:
        """A progress/log line on stderr (hidden with ``-q``)."""
        if not self.quiet:
            typer.echo(message, err=True)

    def warn(self, message: str) -> None:
        """A warning on stderr (shown even with ``-q``)."""
        typer.echo(f"warning: {message}", err=True)

    def progress(self, iterable: Iterable[Any] | None = None, **kwargs: Any) -> Any:
        """Progress on stderr, off with ``-q``: a tqdm bar on a terminal, else one plain line
        every ``METEOR_PROGRESS_SECONDS`` (30) seconds (see :mod:`meteor_cli.progress`)."""
        from meteor_cli.progress import progress_bar

        kwargs.setdefault("disable", self.quiet)
        return progress_bar(iterable, file=sys.stderr, **kwargs)


#: Width of human tables when stdout is not a terminal (a log file, a pipe, an HPC job's output):
#: rich's 80-column default would cut the headers of eval's side-by-side table to "met…".
LOG_WIDTH = 160


def rich_console() -> Any:
    """The rich console for human output: the terminal's width on a terminal, else ``COLUMNS`` or
    :data:`LOG_WIDTH` so tables written to logs keep their headers whole."""
    from rich.console import Console

    c = Console(soft_wrap=True)
    if not c.is_terminal and not os.environ.get("COLUMNS"):
        c = Console(soft_wrap=True, width=LOG_WIDTH)
    return c


def not_built(command: str, what: str, issue: int | None = None) -> NotBuiltError:
    """The error a subcommand raises while its stage is not implemented (exit code 2)."""
    tracked = f" (tracked in issue #{issue})" if issue else ""
    return NotBuiltError(
        f"`meteor {command}` is not built yet: {what}{tracked}",
        "CHANGELOG.md lists what this release provides; `meteor --help` lists the commands",
    )


# --------------------------------------------------------------------------------------------
# Common options, added to every command by `meteor_command`
# --------------------------------------------------------------------------------------------

COMMON_NAMES = ("device", "seed", "json_output", "verbose", "quiet", "config", "show_config")


#: ``--allow-outside-root``, shared by every command that reads LLaVA-format data (train,
#: rank-estimate, prune-llm, eval, infer). Declare it as ``allow_outside_root: AllowOutsideRoot
#: = False`` and pass it to :func:`meteor_cli.data.llava.resolve_image` (with the root from
#: :func:`meteor_cli.data.llava.image_root_for`). Each command gets its own copy of the option
#: (:func:`meteor_command` never mutates a shared declaration).
AllowOutsideRoot = Annotated[bool, typer.Option(
    "--allow-outside-root",
    help="Read images whose paths leave the image root (`../`, absolute paths, symlinks pointing "
         "outside); by default such a record is an error (exit 4) naming the record and the path.")]


def stage1_method_for(allocation: Mapping[str, Any] | None, method: str | None) -> str | None:
    """The Stage-1 policy ``--allocation`` and ``--stage1-method`` select (None without an
    allocation), checked against the registry before any model is loaded — as is the
    allocation's Stage-2 method (``stage2.method``), so an unknown one fails early too."""
    if allocation is None:
        if method is not None:
            raise UsageError("--stage1-method needs --allocation", "the Stage-1 budgets come from `meteor allocate`")
        return None
    from meteor_cli.pruning.stage1 import resolve_stage1_method
    from meteor_cli.pruning.stage2 import resolve_stage2_method

    resolve_stage2_method(allocation)
    return resolve_stage1_method(allocation, method)


STAGE1_OPTION_HELP = ("Option of the Stage-1 policy, NAME=VALUE (repeatable), e.g. dominant=54 and contextual=10 "
                      "for visionzip, merge=mean for prumerge+; names come from the policy (`meteor list policies`).")


#: The artifact options that eval, infer and flops share (train and prune-llm word theirs for
#: what they do with it). Aliases like :data:`AllowOutsideRoot`: one declaration, one help text.
AllocationOption = Annotated[Path | None, typer.Option("--allocation", help="Stage 1–2 budgets (allocation artifact).")]
PruneLLMOption = Annotated[Path | None, typer.Option("--prune-llm", help="Stage-3 settings (prune-llm artifact).")]
Stage1MethodOption = Annotated[str | None, typer.Option(
    "--stage1-method", help="Stage-1 policy (e.g. prumerge+; `meteor list policies`) instead of the allocation's.")]
Stage1OptionOption = Annotated[list[str] | None, typer.Option("--stage1-option", help=STAGE1_OPTION_HELP)]


def stage1_options_for(allocation: Mapping[str, Any] | None, method: str | None,
                       raw: Sequence[str] | None) -> dict[str, Any] | None:
    """``--stage1-option NAME=VALUE`` values as a dict, checked against the Stage-1 policy ``method``
    (the one :func:`stage1_method_for` resolved) before any model is loaded; None when none given."""
    if not raw:
        return None
    if allocation is None and method is None:
        raise UsageError("--stage1-option needs --allocation", "the Stage-1 budgets come from `meteor allocate`")
    opts: dict[str, Any] = {}
    for item in raw:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--stage1-option {item!r} is not NAME=VALUE", "e.g. --stage1-option dominant=54")
        opts[name.strip().replace("-", "_")] = value.strip()
    from meteor_cli.pruning.stage1 import policy_options

    return policy_options(method or "meteor", opts)


def _config_callback(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """Eager: load the project file into ``ctx.default_map`` before other options are read."""
    if value is None:
        # `meteor` itself only loads a file it is given; subcommands look for ./meteor.toml, so
        # that `meteor cmd --config other.toml` never reads ./meteor.toml first.
        if ctx.parent is None or ctx.default_map is not None:
            return None
        candidate = Path.cwd() / PROJECT_FILE
        if not candidate.is_file():
            return None
        value = candidate
    table = load_project_file(value, ctx.find_root().command)
    ctx.meta["meteor.config_file"] = str(value)
    ctx.meta["meteor.config_table"] = table
    ctx.default_map = _defaults_for(ctx, table)
    return value


def _common_parameters(command: str | None) -> list[inspect.Parameter]:
    def env(name: str) -> list[str]:
        opt = name.upper()
        return ([f"{ENV_PREFIX}_{_env_name(command)}_{opt}"] if command else []) + [f"{ENV_PREFIX}_{opt}"]

    kw = inspect.Parameter.KEYWORD_ONLY
    spec: list[tuple[str, Any, Any]] = [
        ("device", str, typer.Option(
            "--device", envvar=env("device"), rich_help_panel=COMMON_PANEL, metavar="DEVICE",
            help="Where to run: auto (cuda, then npu, then cpu), cpu, cuda[:N] or npu[:N].")),
        ("seed", int, typer.Option(
            "--seed", envvar=env("seed"), rich_help_panel=COMMON_PANEL,
            help="Random seed for Python, NumPy and torch.")),
        ("json_output", bool, typer.Option(
            "--json", envvar=env("json"), rich_help_panel=COMMON_PANEL,
            help="Print the result as JSON on stdout; human output goes to stderr.")),
        ("verbose", int, typer.Option(
            "--verbose", "-v", count=True, rich_help_panel=COMMON_PANEL,
            help="More detail; -v also prints tracebacks on errors.")),
        ("quiet", bool, typer.Option(
            "--quiet", "-q", envvar=env("quiet"), rich_help_panel=COMMON_PANEL,
            help="Only warnings and errors; no progress bars.")),
        ("config", Path | None, typer.Option(
            "--config", envvar=f"{ENV_PREFIX}_CONFIG", is_eager=True, callback=_config_callback,
            rich_help_panel=COMMON_PANEL, metavar="FILE", dir_okay=False,
            help=f"Project file with option values (default: ./{PROJECT_FILE} when present).")),
        ("show_config", bool, typer.Option(
            "--show-config", rich_help_panel=COMMON_PANEL,
            help="Print every option's resolved value and where it came from, then exit.")),
    ]
    defaults = {"device": "auto", "seed": 0, "json_output": False, "verbose": 0, "quiet": False,
                "config": None, "show_config": False}
    return [inspect.Parameter(n, kw, default=defaults[n], annotation=Annotated[t, o]) for n, t, o in spec]


def _env_name(command: str | None) -> str:
    return (command or "").replace("-", "_").upper()


def _with_envvars(annotation: Any, command: str) -> Any:
    """Give an option declared without ``envvar`` the two METEOR_* variables."""
    meta = getattr(annotation, "__metadata__", ())
    infos = [m for m in meta if isinstance(m, typer.models.OptionInfo)]
    if not infos or infos[0].envvar is not None:
        return annotation
    info = copy.copy(infos[0])  # a declaration shared by several commands must not get one's variables
    names = [d for d in (info.param_decls or ()) if d.startswith("--")]
    if info.default not in (..., None) and isinstance(info.default, str) and info.default.startswith("--"):
        names.insert(0, info.default)
    if not names:
        return annotation
    opt = names[0][2:].replace("-", "_").upper()
    info.envvar = [f"{ENV_PREFIX}_{_env_name(command)}_{opt}", f"{ENV_PREFIX}_{opt}"]
    info.show_envvar = False  # the rule is documented once, in `meteor --help` and the README
    return Annotated[(annotation.__origin__, *(info if m is infos[0] else m for m in meta))]  # type: ignore[valid-type]


def meteor_command(command: str | None, *, uses_device: bool = False) -> Callable[[F], F]:
    """Decorate a subcommand function: add the common options and pass it a :class:`Run`.

    The decorated function declares its own options as usual (``Annotated[..., typer.Option]``)
    and may take ``run: Run`` as a keyword parameter. Its own options get the environment
    variables ``METEOR_<COMMAND>_<OPTION>`` and ``METEOR_<OPTION>``. With ``uses_device``,
    ``--device`` is resolved against the hardware before the command body runs, so a missing
    accelerator fails fast (exit code 6) instead of after loading data.
    """

    def decorate(func: F) -> F:
        hints = get_type_hints(func, include_extras=True)
        sig = inspect.signature(func)
        wants_run = "run" in sig.parameters
        own = [
            p.replace(annotation=_with_envvars(hints.get(p.name, p.annotation), command) if command else
                      hints.get(p.name, p.annotation))
            for p in sig.parameters.values()
            if p.name != "run"
        ]
        params = own + _common_parameters(command)

        @functools.wraps(func)
        def wrapper(**kwargs: Any) -> Any:
            common = {k: kwargs.pop(k) for k in COMMON_NAMES}
            ctx = click.get_current_context()
            run = _make_run(ctx, command or "meteor", common)
            if common["show_config"]:
                _show_config(ctx, run)
                raise typer.Exit(0)
            if uses_device:
                _ = run.device
            if wants_run:
                kwargs["run"] = run
            return func(**kwargs)

        wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper  # type: ignore[return-value]

    return decorate


def _make_run(ctx: click.Context, command: str, common: dict[str, Any]) -> Run:
    global _verbosity
    parent = ctx.parent if ctx.parent is not None and ctx.parent.params else None

    inherited: dict[str, Any] = {}

    def value(name: str) -> Any:
        # A subcommand flag wins; a value given to `meteor` itself beats env/file/defaults here.
        src = ctx.get_parameter_source(name)
        if parent is not None and src != ParameterSource.COMMANDLINE and \
                parent.get_parameter_source(name) == ParameterSource.COMMANDLINE:
            inherited[name] = parent.params[name]
            return parent.params[name]
        return common[name]

    verbosity = -1 if value("quiet") else int(value("verbose") or 0)
    run = Run(
        command=command,
        device_spec=str(value("device")),
        seed=int(value("seed")),
        json=bool(value("json_output")),
        verbosity=verbosity,
        config_file=ctx.meta.get("meteor.config_file"),
    )
    try:
        parse_device(run.device_spec)  # syntax errors now, before any work (exit code 2)
    except UsageError as exc:
        param = next((p for p in ctx.command.params if p.name == "device"), None)
        where = _source_of(ctx, param) if param is not None and "device" not in inherited else "command line"
        if where not in ("command line", "default"):
            raise UsageError(f"{exc.message} (from {where})", exc.hint) from None
        raise
    _verbosity = verbosity
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    log.setLevel(logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO)
    ctx.obj = run
    ctx.meta["meteor.inherited"] = inherited
    return run


# --------------------------------------------------------------------------------------------
# The project file (meteor.toml)
# --------------------------------------------------------------------------------------------


def _option_names(cmd: click.Command) -> dict[str, click.Parameter]:
    return {p.name: p for p in cmd.params if p.name and isinstance(p, click.Option)
            and p.name not in ("config", "show_config", "help", "install_completion", "show_completion")}


def load_project_file(path: str | os.PathLike[str], root: click.Command) -> dict[str, Any]:
    """Read ``meteor.toml`` and check every key against the commands' options.

    Returns ``{"": {top-level options}, "<command>": {options}}`` with option names normalised
    to their Python names (``image-root`` → ``image_root``).
    """
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    p = Path(path)
    if not p.is_file():
        raise InputNotFoundError(f"config file {str(path)!r} does not exist",
                                 "check --config / METEOR_CONFIG, or create meteor.toml")
    try:
        data = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"config file {p}: not valid TOML: {exc}", "fix the syntax") from None

    commands: dict[str, click.Command] = getattr(root, "commands", {}) or {}
    options = {name: _option_names(cmd) for name, cmd in commands.items()}
    anywhere = {o for opts in options.values() for o in opts} | set(_option_names(root))
    out: dict[str, Any] = {"": {}}
    for key, val in data.items():
        norm = key.replace("-", "_")
        if isinstance(val, dict):
            if key not in commands:
                close = difflib.get_close_matches(key, commands)
                raise InvalidInputError(
                    f"config file {p}: [{key}] is not a meteor subcommand",
                    f"did you mean [{close[0]}]?" if close else f"tables are named after subcommands: "
                    f"{', '.join(sorted(commands))}")
            table = {}
            for k, v in val.items():
                nk = k.replace("-", "_")
                if nk not in options[key]:
                    close = difflib.get_close_matches(nk, options[key])
                    raise InvalidInputError(
                        f"config file {p}: [{key}] has no option {k!r}",
                        f"did you mean {close[0].replace('_', '-')!r}?" if close
                        else f"`meteor {key} --help` lists its options")
                _check_file_value(p, f"[{key}]", k, v, [options[key][nk]])
                table[nk] = v
            out[key] = table
        elif norm in anywhere:
            params = [o[norm] for o in [*options.values(), _option_names(root)] if norm in o]
            _check_file_value(p, "top level", key, val, params)
            out[""][norm] = val
        else:
            close = difflib.get_close_matches(norm, anywhere)
            raise InvalidInputError(
                f"config file {p}: {key!r} is not an option of any meteor subcommand",
                f"did you mean {close[0].replace('_', '-')!r}?" if close else "see `meteor <command> --help`")
    return out


def _check_file_value(path: Path, where: str, key: str, value: Any, params: list[click.Parameter]) -> None:
    """Refuse values TOML types wrongly for the option: ``true`` for a number (``bool`` is an
    ``int`` in Python, so it would silently become 1), a list or table for a single value."""
    for param in params:
        ann = getattr(getattr(param, "type_descriptor", None), "annotation", None)
        args = [a for a in (typing.get_args(ann) or (ann,)) if a is not type(None)]
        multiple = bool(getattr(param, "multiple", False)) or (getattr(param, "nargs", 1) or 1) != 1
        if isinstance(value, bool) and not getattr(param, "is_flag", False) and bool not in args:
            names = {int: "an integer", float: "a number", str: "a string", Path: "a path"}
            want = " or ".join(names.get(a, getattr(a, "__name__", str(a))) for a in args) or "a value"
            raise InvalidInputError(f"config file {path} {where}: {key} = {json.dumps(value)}: {param.opts[0]} takes "
                                    f"{want}, not true/false", f"write {want} for {key!r} in {path}")
        if isinstance(value, (list, dict)) and not multiple:
            raise InvalidInputError(f"config file {path} {where}: {key} is a TOML "
                                    f"{'array' if isinstance(value, list) else 'table'}, but {param.opts[0]} takes "
                                    "one value", f"write a single value for {key!r} in {path}")


def _defaults_for(ctx: click.Context, table: Mapping[str, Any]) -> dict[str, Any]:
    """Click ``default_map`` for the command of ``ctx``: top-level keys it has, then its table."""
    cmd = ctx.command
    top = {k: v for k, v in table[""].items() if k in _option_names(cmd)}
    if isinstance(cmd, click.Group):
        subs = {}
        for name, sub in cmd.commands.items():
            mine = _option_names(sub)
            subs[name] = {**{k: v for k, v in table[""].items() if k in mine}, **table.get(name, {})}
        return {**top, **subs}
    return {**top, **table.get(ctx.info_name or "", {})}


def _source_of(ctx: click.Context, param: click.Parameter) -> str:
    src = ctx.get_parameter_source(param.name or "")
    if src == ParameterSource.COMMANDLINE:
        return "command line"
    if src == ParameterSource.ENVIRONMENT:
        envs = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or [])
        used = next((e for e in envs if os.environ.get(e)), None)  # Click skips empty variables too
        return f"environment ({used})" if used else "environment"
    if src == ParameterSource.DEFAULT_MAP:
        table = ctx.meta.get("meteor.config_table", {})
        section = f"[{ctx.info_name}]" if param.name in table.get(ctx.info_name, {}) else "top level"
        return f"{ctx.meta.get('meteor.config_file', PROJECT_FILE)} {section}"
    return "default"


def _show_config(ctx: click.Context, run: Run) -> None:
    rows = []
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name in ("show_config", "help"):
            continue
        val = ctx.params.get(param.name)
        source = _source_of(ctx, param)
        if param.name in ctx.meta.get("meteor.inherited", {}):
            val, source = ctx.meta["meteor.inherited"][param.name], "command line (before the subcommand)"
        if isinstance(val, Enum):
            val = val.value
        rows.append({"option": param.opts[0], "value": str(val) if isinstance(val, Path) else val,
                     "source": source})
    if run.json:
        run.emit({"command": run.command, "config_file": run.config_file, "options": rows})
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"meteor {run.command}: resolved options", title_justify="left")
    for col in ("option", "value", "source"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["option"], escape("" if r["value"] is None else str(r["value"])), escape(r["source"]))
    rich_console().print(table)


# --------------------------------------------------------------------------------------------
# Errors → one paragraph on stderr and a documented exit code
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def reporting_errors(prog: str = "meteor") -> Iterator[None]:
    """Turn exceptions into a message on stderr and ``typer.Exit(code)``.

    :class:`MeteorError` → its message, its hint, its exit code. Anything else is a bug in
    meteor: exit code 1 with a request to report it. Tracebacks only with ``-v``.
    """
    try:
        yield
    except MeteorError as exc:
        if _verbosity > 0:
            traceback.print_exc(file=sys.stderr)
        msg = f"{prog}: error: {exc.message}"
        if exc.hint:
            msg += f"\n  Fix: {exc.hint}"
        typer.echo(msg, err=True)
        raise click.Exit(int(exc.exit_code)) from None
    except BrokenPipeError:
        # The reader went away (`meteor … | head`): stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise click.Exit(int(ExitCode.OK)) from None
    except KeyboardInterrupt:
        typer.echo(f"{prog}: interrupted", err=True)
        raise click.Exit(int(ExitCode.INTERRUPTED)) from None
    except click.BadParameter as exc:
        better = _bad_value_source(exc)
        if better is None:  # from the command line: Click's own message says it
            raise
        typer.echo(f"{prog}: error: {better.message}\n  Fix: {better.hint}", err=True)
        raise click.Exit(int(better.exit_code)) from None
    except (click.ClickException, click.Exit, click.Abort):
        raise
    except Exception as exc:  # a bug in meteor
        if _verbosity > 0:
            traceback.print_exc(file=sys.stderr)
        typer.echo(
            f"{prog}: internal error: {type(exc).__name__}: {exc}\n"
            "  This is a bug in meteor. Rerun with -v for the traceback and report it.",
            err=True,
        )
        raise click.Exit(int(ExitCode.INTERNAL)) from None


def _bad_value_source(exc: Any) -> MeteorError | None:
    """A bad option value that came from a METEOR_* variable or the project file, as an error
    naming that variable (and its value) or the file and table — not the option's variables
    in general, which may not be set. None for values from the command line."""
    ctx, param = getattr(exc, "ctx", None), getattr(exc, "param", None)
    if ctx is None or param is None or not getattr(param, "name", None):
        return None
    src = ctx.get_parameter_source(param.name)
    opt = param.opts[0] if getattr(param, "opts", None) else param.name
    if src == ParameterSource.ENVIRONMENT:
        envs = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or [])
        used = next((e for e in envs if os.environ.get(e)), None)
        if used is None:
            return None
        return UsageError(f"environment variable {used}={os.environ[used]!r} (for {opt}): {exc.message}",
                          f"fix the value of {used}, or unset it")
    if src == ParameterSource.DEFAULT_MAP:
        where = _source_of(ctx, param)
        table = ctx.meta.get("meteor.config_table", {})
        value = table.get(ctx.info_name or "", {}).get(param.name, table.get("", {}).get(param.name))
        return InvalidInputError(f"config file {where}: {param.name.replace('_', '-')} = {value!r} (for {opt}): "
                                 f"{exc.message}", f"fix the value in {ctx.meta.get('meteor.config_file', PROJECT_FILE)}")
    return None


class MeteorGroup(typer.core.TyperGroup):
    """The root group: keeps subcommands in declaration order and reports errors uniformly."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        with reporting_errors():
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with reporting_errors():
            return super().invoke(ctx)


__all__ = ["AllowOutsideRoot", "AllocationOption", "PruneLLMOption", "Stage1MethodOption",
           "Stage1OptionOption", "Run", "MeteorGroup", "meteor_command", "not_built", "load_project_file",
           "reporting_errors", "NotBuiltError"]
