"""``meteor list``: what is registered — encoders, pruning policies, benchmarks, presets, and the
transformers VLM families (``families``) and checkpoint formats (``formats``, e.g. EAGLE releases) ``--model DIR`` accepts.

Includes entries added by plugins (entry-point group ``meteor.plugins``).

    meteor list                    # everything
    meteor list policies --filter 'fast*'
    meteor list presets --json | jq '.presets[].name'
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from meteor_cli.cli.common import Run, meteor_command, rich_console


class What(str, Enum):
    all = "all"
    encoders = "encoders"
    policies = "policies"
    benchmarks = "benchmarks"
    presets = "presets"
    families = "families"
    formats = "formats"


@meteor_command("list")
def main(
    what: Annotated[What, typer.Argument(help="Which registry to list.")] = What.all,
    filter: Annotated[str, typer.Option("--filter", help="fnmatch pattern on names, e.g. 'clip*'.")] = "*",
    run: Run = None,  # type: ignore[assignment]
) -> None:
    """List registered encoders, pruning policies, benchmarks, model presets, transformers VLM families and
    checkpoint formats."""
    from meteor_cli.catalog import catalog

    # Names, descriptions and metadata are read from the registering modules' source, so listing
    # imports no model code (no torch): see meteor_cli/catalog.py.
    result, plugins = catalog(None if what is What.all else [what.value], filter)

    def human() -> None:
        from rich.table import Table

        console = rich_console()
        for kind, rows in result.items():
            if not rows:
                console.print(f"[bold]{kind}[/bold]: none registered" + (f" matching {filter!r}" if filter != "*" else ""))
                continue
            extra = sorted({k for r in rows for k in r} - {"name", "description", "module"})
            table = Table(title=kind, title_justify="left", title_style="bold")
            for col in ["name", *extra, "description", "module"]:
                table.add_column(col)
            for r in rows:
                table.add_row(r["name"], *(str(r.get(k, "")) for k in extra), r["description"], r["module"])
            console.print(table)
        if plugins:
            console.print(f"plugins loaded: {', '.join(plugins)}")

    run.emit({**result, "plugins": plugins}, human)
