"""What is registered, without importing the modules that register it (``meteor list``).

meteor's built-in encoders, policies, benchmarks and presets live in modules that import torch,
timm and transformers (seconds). Listing them needs only their names, descriptions and metadata,
which the ``register_*`` calls state as literals. This module reads those calls from the source
(:mod:`ast`, no import) of every module in :data:`meteor_cli.registry.BUILTIN_MODULES` (a package:
each ``.py`` file in it), and adds whatever is registered at run time (plugins; built-ins already
imported), so ``meteor list`` answers in a fraction of a second.

The one rule for built-in registrations, checked by ``tests/robustness/test_list_fast.py``: a
``register_encoder/policy/benchmark/preset`` call is a top-level decorator or a top-level
statement with literal arguments (``description=`` may be left to the docstring of a decorated
definition). A module that registers any other way (in a loop, inside a function, with computed
names) is still listed correctly — it is imported — but makes ``meteor list`` slow again.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib
import importlib.util
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: ``register_*`` function → the ``meteor list`` kind it fills.
REGISTER_FUNCTIONS = {"register_encoder": "encoders", "register_policy": "policies",
                      "register_benchmark": "benchmarks", "register_preset": "presets",
                      "register_model_family": "families", "register_model_format": "formats"}
_REGISTRY_NAMES = {"ENCODERS", "POLICIES", "BENCHMARKS", "PRESETS", "MODEL_FAMILIES", "MODEL_FORMATS"}


class _Dynamic(Exception):
    """A registration that cannot be read from the source: the module must be imported."""


def _module_files(module: str) -> list[tuple[str, Path]]:
    """``(module name, source file)`` of ``module``, or of every ``.py`` in it if it is a package,
    found without importing it (only its top-level package is located)."""
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        raise _Dynamic(module)
    base = Path(next(iter(spec.submodule_search_locations))).joinpath(*rest)
    if base.is_dir():
        files = sorted(base.glob("*.py"), key=lambda p: (p.name != "__init__.py", p.name))
        return [(module if p.name == "__init__.py" else f"{module}.{p.stem}", p) for p in files]
    if base.with_suffix(".py").is_file():
        return [(module, base.with_suffix(".py"))]
    raise _Dynamic(module)


def _register_call(node: ast.AST) -> tuple[str, ast.Call] | None:
    if isinstance(node, ast.Call):
        f = node.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
        if name in REGISTER_FUNCTIONS:
            return REGISTER_FUNCTIONS[name], node
    return None


def _entry(kind: str, call: ast.Call, module: str, target: ast.AST | None) -> dict[str, Any]:
    """The row ``meteor list`` shows for one literal ``register_*`` call."""
    try:
        args = [ast.literal_eval(a) for a in call.args]
        kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg is not None}
    except ValueError:
        raise _Dynamic("non-literal arguments") from None
    if any(k.arg is None for k in call.keywords) or len(args) > 1:
        raise _Dynamic("**kwargs or extra positional arguments")
    name = args[0] if args else kw.pop("name", None)
    if name is None and isinstance(target, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        name = target.name
    description = kw.pop("description", None)
    if description is None:
        doc = ast.get_docstring(target) if isinstance(target, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                               ast.ClassDef)) else None
        if doc is None and target is not None and not isinstance(target, ast.Lambda):
            raise _Dynamic("description from the docstring of an object defined elsewhere")
        description = (doc or "").strip().splitlines()[0] if doc and doc.strip() else ""
    if not isinstance(name, str) or not isinstance(description, str):
        raise _Dynamic("name or description not a string")
    return {"kind": kind, "name": name, "description": description, "module": module, "meta": kw}


def declared_entries(module: str, path: Path) -> list[dict[str, Any]]:
    """The registrations of one source file, read without importing it.

    Raises _Dynamic when the file registers in a way only an import can tell.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    local = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    local |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    accounted: set[int] = set()
    out: list[dict[str, Any]] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for dec in node.decorator_list:
                found = _register_call(dec)
                if found:
                    accounted.add(id(found[1]))
                    out.append(_entry(*found, module, node))
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            outer = node.value
            found = _register_call(outer)
            if found:  # register_x("name", ...) without a target registers nothing useful
                raise _Dynamic("a register_* call without a target")
            inner = _register_call(outer.func)
            if inner and len(outer.args) == 1 and not outer.keywords:
                target = outer.args[0]
                if isinstance(target, ast.Name) and target.id not in local:
                    raise _Dynamic(f"registers {target.id}, defined in another module")
                if not isinstance(target, (ast.Name, ast.Lambda)):
                    raise _Dynamic("registers an expression")
                accounted.add(id(inner[1]))
                out.append(_entry(*inner, module, target if isinstance(target, ast.Lambda) else
                                  next((n for n in tree.body if getattr(n, "name", None) == target.id), target)))
    for node in ast.walk(tree):
        found = _register_call(node)
        if found and id(found[1]) not in accounted:
            raise _Dynamic(f"a {found[0]} registration inside a loop, function or condition (line {node.lineno})")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("add", "register") \
                and isinstance(node.func.value, ast.Name) and node.func.value.id in _REGISTRY_NAMES:
            raise _Dynamic(f"{node.func.value.id}.{node.func.attr}(...) (line {node.lineno})")
    return out


def _key(kind: str, name: str, meta: dict[str, Any]) -> tuple[str, str, Any]:
    return (kind, name, meta.get("stage") if kind == "policies" else None)


def catalog(kinds: Iterable[str] | None = None, filter: str = "*") -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """``({kind: [row, ...]}, plugins)``: every registered entry as ``meteor list`` shows it.

    Rows are ``{"name", "description", "module", **meta}``, sorted as the registries sort them
    (policies by stage, then name). Built-ins come from their source; a module that cannot be
    read statically is imported; plugins are loaded (they register at import).
    """
    from meteor_cli import registry as R

    wanted = list(kinds) if kinds is not None else list(R.REGISTRIES)
    rows: dict[tuple[str, str, Any], dict[str, Any]] = {}
    imported = R._loaded
    if not imported:
        for module in R.BUILTIN_MODULES:
            try:
                for sub, path in _module_files(module):
                    entries = declared_entries(sub, path)
                    for e in entries:
                        rows[_key(e["kind"], e["name"], e["meta"])] = e
            except (_Dynamic, OSError, SyntaxError) as exc:
                log.debug("meteor list: importing %s (%s)", module, exc)
                importlib.import_module(module)
        plugins = R.load_plugins()
    else:
        plugins = []
    for kind, reg in R.REGISTRIES.items():  # run-time registrations win (plugins; imported built-ins)
        for e in reg.entries():
            rows[_key(kind, e.name, e.meta)] = {"kind": kind, "name": e.name, "description": e.description,
                                                "module": e.module, "meta": dict(e.meta)}
    out: dict[str, list[dict[str, Any]]] = {}
    for kind in wanted:
        mine = [r for r in rows.values() if r["kind"] == kind and fnmatch.fnmatchcase(r["name"], filter)]
        mine.sort(key=lambda r: (r["meta"].get("stage", 0), r["name"]) if kind == "policies" else r["name"])
        out[kind] = [{"name": r["name"], "description": r["description"], "module": r["module"], **r["meta"]}
                     for r in mine]
    return out, plugins


__all__ = ["REGISTER_FUNCTIONS", "catalog", "declared_entries"]
