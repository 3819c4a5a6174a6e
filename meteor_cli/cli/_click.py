"""The few Click objects meteor needs, wherever this Typer keeps them.

Typer >= 0.25 vendors its own copy of Click (``typer._click``) and its ``Context`` is not
``click.Context``; older Typer runs on Click itself. Everything meteor touches below Typer's
public API is imported here, once.
"""

from __future__ import annotations

import typer
from typer import Abort, Context, Exit
from typer.core import TyperGroup, TyperOption

try:
    from typer._click import ClickException, Command, Parameter
    from typer._click.core import ParameterSource
    from typer._click.exceptions import BadParameter
    from typer._click.globals import get_current_context
except ImportError:  # pragma: no cover - Typer on top of Click
    from click import BadParameter, ClickException, Command, Parameter, get_current_context  # type: ignore[no-redef]
    from click.core import ParameterSource  # type: ignore[no-redef]

Option = TyperOption
Group = TyperGroup

__all__ = ["Abort", "BadParameter", "ClickException", "Command", "Context", "Exit", "Group", "Option", "Parameter", "ParameterSource",
           "get_current_context", "typer"]
