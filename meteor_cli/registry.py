"""Decorator registries for encoders, pruning policies, benchmarks and model presets.

Everything that can be swapped in meteor is looked up by name in one of these registries, so a
baseline, a new encoder family or a third-party plugin runs through the same code path as the
built-in ones::

    from meteor_cli.registry import register_policy

    @register_policy("random", stage=2, description="uniform random tokens, seeded per sample")
    def random_prune(state, keep, *, seed=0): ...

    list_policies("*prune*")          # fnmatch filter, sorted names
    POLICIES.get("random")            # the registered object (KeyError-like error with suggestions)

Registering a name twice warns (:class:`DuplicateRegistrationWarning`) and the later
registration wins, as in timm's ``register_model``.

Adding a built-in entry, and keeping ``meteor list`` fast
---------------------------------------------------------
``meteor list`` must not import torch: it reads built-in registrations from the *source* of the
modules in :data:`BUILTIN_MODULES` (:mod:`meteor_cli.catalog`), and only stages that use an
entry import it. So a new built-in is one ``register_*`` call, nothing else to edit, written as
a top-level decorator or top-level statement with literal arguments::

    @register_benchmark("my-bench", description="…")        # literal name, description, meta
    class MyBench: ...

    register_policy("my-policy", stage=2, description="…")(my_policy_fn)   # fn defined here

in a module of :data:`BUILTIN_MODULES` (or a new ``.py`` file inside one of its packages, e.g.
``meteor_cli/model/encoders/``, imported by that package's ``__init__``). A registration in a
loop, inside a function or with computed names still works but makes ``meteor list`` import
its module; ``tests/robustness/test_list_fast.py`` fails when a built-in does that.

Plugins
-------
A distribution can add entries by declaring an entry point in the group ``meteor.plugins``::

    [project.entry-points."meteor.plugins"]
    my_encoders = "my_package.meteor_plugin"            # a module: importing it registers
    my_policies = "my_package.meteor_plugin:register"   # or a callable: called with no arguments

:func:`load_plugins` imports them once (``meteor list`` and every stage call it). A plugin that
fails to load, whatever it raises (an exception, ``sys.exit()``, ``SystemExit``; only Ctrl-C
propagates), produces a :class:`PluginLoadWarning` naming it and never breaks the CLI. See
``plugins/README.md``.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from meteor_cli.errors import UsageError

T = TypeVar("T")
log = logging.getLogger(__name__)

PLUGIN_GROUP = "meteor.plugins"


class PluginLoadWarning(UserWarning):
    """A ``meteor.plugins`` entry point raised (anything but Ctrl-C) while loading; it was skipped."""


class DuplicateRegistrationWarning(UserWarning):
    """A name was registered twice in the same registry; the later one replaced the earlier."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered object and what ``meteor list`` shows about it."""

    name: str
    obj: T
    description: str
    module: str
    #: Free-form metadata (e.g. ``stage`` for pruning policies, ``family`` for encoders).
    meta: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """A named collection of objects filled by a decorator.

    Args:
        kind: human name of what is registered ("encoder", "pruning policy"), used in messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(
        self, name: str | None = None, *, description: str | None = None, **meta: Any
    ) -> Callable[[T], T]:
        """Return a decorator that registers its target under ``name`` (default: its ``__name__``).

        The description defaults to the first line of the target's docstring.
        """

        def decorator(obj: T) -> T:
            key = name or getattr(obj, "__name__", None)
            if not key:
                raise TypeError(f"cannot infer a {self.kind} name for {obj!r}; pass name=")
            self.add(key, obj, description=description, **meta)
            return obj

        return decorator

    def add(self, name: str, obj: T, *, description: str | None = None, **meta: Any) -> None:
        """Register ``obj`` under ``name`` (the non-decorator form of :meth:`register`)."""
        if name in self._entries:
            old = self._entries[name]
            warnings.warn(
                f"{self.kind} {name!r} registered twice ({old.module} and "
                f"{getattr(obj, '__module__', '?')}); the later registration wins",
                DuplicateRegistrationWarning,
                stacklevel=3,
            )
        doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
        self._entries[name] = Entry(
            name=name,
            obj=obj,
            description=description if description is not None else (doc[0] if doc else ""),
            module=getattr(obj, "__module__", "") or "",
            meta=dict(meta),
        )

    def get(self, name: str) -> T:
        """The object registered under ``name``; a :class:`UsageError` with suggestions if absent."""
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        """The full :class:`Entry` for ``name``."""
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=3)
            known = ", ".join(sorted(self._entries)) or "none registered"
            hint = f"did you mean {' or '.join(map(repr, close))}?" if close else f"known: {known}"
            raise UsageError(
                f"unknown {self.kind} {name!r}",
                f"{hint} (`meteor list` shows every registered {self.kind})",
            ) from None

    def list(self, filter: str = "*", exclude: str | list[str] | None = None) -> list[str]:
        """Sorted names matching the fnmatch pattern ``filter`` and none of ``exclude``."""
        excludes = [exclude] if isinstance(exclude, str) else list(exclude or [])
        return sorted(
            n
            for n in self._entries
            if fnmatch.fnmatchcase(n, filter)
            and not any(fnmatch.fnmatchcase(n, e) for e in excludes)
        )

    def entries(self, filter: str = "*") -> list[Entry[T]]:
        """Entries for :meth:`list` ``(filter)``, in name order."""
        return [self._entries[n] for n in self.list(filter)]

    def unregister(self, name: str) -> None:
        """Remove ``name`` (mainly for tests); no error if absent."""
        self._entries.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} entries)"


class PolicyRegistry(Registry[Any]):
    """Pruning policies of all three stages. The same name may exist once per stage
    ("meteor" is a Stage-1, a Stage-2 and a Stage-3 policy); lookups name the stage."""

    def __init__(self) -> None:
        super().__init__("pruning policy")

    @staticmethod
    def _key(name: str, stage: int) -> str:
        return f"{name}@{stage}"

    def add(self, name: str, obj: Any, *, description: str | None = None, **meta: Any) -> None:
        stage = meta.get("stage")
        if stage not in (1, 2, 3):
            raise ValueError(f"stage must be 1, 2 or 3, got {stage!r}")
        super().add(self._key(name, stage), obj, description=description, **meta)
        key = self._key(name, stage)
        e = self._entries[key]
        self._entries[key] = Entry(name, e.obj, e.description, e.module, e.meta)

    def entry(self, name: str, stage: int | None = None) -> Entry[Any]:  # type: ignore[override]
        """The policy ``name`` of ``stage`` (any stage when unambiguous)."""
        if stage is not None and self._key(name, stage) in self._entries:
            return self._entries[self._key(name, stage)]
        found = [e for e in self._entries.values() if e.name == name and stage in (None, e.meta["stage"])]
        if len(found) == 1:
            return found[0]
        where = f"Stage-{stage} " if stage else ""
        known = sorted({e.name for e in self._entries.values() if stage in (None, e.meta["stage"])})
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"did you mean {' or '.join(map(repr, close))}?" if close else f"known: {', '.join(known) or 'none'}"
        if len(found) > 1:
            raise UsageError(f"policy {name!r} exists for several stages", "say which stage")
        raise UsageError(f"unknown {where}pruning policy {name!r}", f"{hint} (`meteor list policies`)")

    def get(self, name: str, stage: int | None = None) -> Any:  # type: ignore[override]
        return self.entry(name, stage).obj

    def list(self, filter: str = "*", exclude: str | list[str] | None = None) -> list[str]:
        return sorted({e.name for e in self.entries(filter)} - set(self._excluded(exclude)))

    def _excluded(self, exclude: str | list[str] | None) -> list[str]:
        pats = [exclude] if isinstance(exclude, str) else list(exclude or [])
        return [e.name for e in self._entries.values() if any(fnmatch.fnmatchcase(e.name, p) for p in pats)]

    def entries(self, filter: str = "*") -> list[Entry[Any]]:
        return sorted((e for e in self._entries.values() if fnmatch.fnmatchcase(e.name, filter)),
                      key=lambda e: (e.meta["stage"], e.name))

    def unregister(self, name: str, stage: int | None = None) -> None:
        for key in [k for k, e in self._entries.items() if e.name == name and stage in (None, e.meta["stage"])]:
            del self._entries[key]

    def __contains__(self, name: object) -> bool:
        return any(e.name == name for e in self._entries.values())


ENCODERS: Registry[Any] = Registry("encoder")
POLICIES = PolicyRegistry()
BENCHMARKS: Registry[Any] = Registry("benchmark")
PRESETS: Registry[Any] = Registry("preset")
#: transformers VLM classes meteor runs, by the ``model_type`` of their ``config.json``.
MODEL_FAMILIES: Registry[Any] = Registry("model family")
#: Checkpoint layouts other than meteor's own (``meteor.checkpoint/v1``) that ``--model DIR`` reads.
#: An entry is an object with ``detect(directory) -> bool``, ``read_config(directory) -> ModelConfig``
#: (shapes only, no weights read), ``load(directory, device) -> model`` and ``describe(directory) -> dict``
#: (what ``meteor inspect`` shows, including ``weight_files``: the files it may read); see
#: :mod:`meteor_cli.model.eagle` for one. Unlike :data:`MODEL_FAMILIES` (transformers VLMs run as they
#: are), a format's directories become meteor's own ``MultiEncoderVLM``, so every command (flops,
#: rank-estimate, train …) takes them.
MODEL_FORMATS: Registry[Any] = Registry("model format")

#: Registries by the plural noun ``meteor list`` takes.
REGISTRIES: dict[str, Registry[Any]] = {
    "encoders": ENCODERS,
    "policies": POLICIES,
    "benchmarks": BENCHMARKS,
    "presets": PRESETS,
    "families": MODEL_FAMILIES,
    "formats": MODEL_FORMATS,
}


def register_encoder(name: str | None = None, **kw: Any) -> Callable[[T], T]:
    """Register an encoder adapter class (``meta``: ``family``)."""
    return ENCODERS.register(name, **kw)


def register_policy(name: str | None = None, *, stage: int, **kw: Any) -> Callable[[T], T]:
    """Register a pruning policy for ``stage`` 1 (in-encoder), 2 (fusion) or 3 (LLM).

    Names are unique per stage: ``meteor`` can be registered once for each stage.
    """
    if stage not in (1, 2, 3):
        raise ValueError(f"stage must be 1, 2 or 3, got {stage!r}")
    return POLICIES.register(name, stage=stage, **kw)


def register_benchmark(name: str | None = None, **kw: Any) -> Callable[[T], T]:
    """Register a benchmark (data loader + metric)."""
    return BENCHMARKS.register(name, **kw)


def register_preset(name: str | None = None, **kw: Any) -> Callable[[T], T]:
    """Register a model preset: a function returning a ``ModelConfig``."""
    return PRESETS.register(name, **kw)


def register_model_family(name: str | None = None, **kw: Any) -> Callable[[T], T]:
    """Register a transformers VLM family (a subclass of ``HFVisionLanguageModel``) under the
    ``model_type`` its ``config.json`` declares."""
    return MODEL_FAMILIES.register(name, **kw)


def register_model_format(name: str | None = None, **kw: Any) -> Callable[[T], T]:
    """Register a checkpoint layout that ``--model DIR`` recognises (see :data:`MODEL_FORMATS`)."""
    return MODEL_FORMATS.register(name, **kw)


def list_encoders(filter: str = "*") -> list[str]:
    return ENCODERS.list(filter)


def list_policies(filter: str = "*", stage: int | None = None) -> list[str]:
    return sorted({e.name for e in POLICIES.entries(filter) if stage is None or e.meta.get("stage") == stage})


def list_benchmarks(filter: str = "*") -> list[str]:
    return BENCHMARKS.list(filter)


def list_presets(filter: str = "*") -> list[str]:
    return PRESETS.list(filter)


#: Modules whose import registers meteor's own entries. Later stages append to this list;
#: import is deferred so that ``meteor --help`` and shell completion stay fast.
BUILTIN_MODULES: list[str] = [
    "meteor_cli.eval.benchmarks",
    "meteor_cli.pruning.llm_policies",
    "meteor_cli.pruning.stage1",
    "meteor_cli.pruning.stage2",
    "meteor_cli.pruning.visionzip",
    "meteor_cli.pruning.pool",
    "meteor_cli.pruning.dart",
    "meteor_cli.pruning.sparsevlm",
    "meteor_cli.pruning.divprune",
    "meteor_cli.model.encoders",
    "meteor_cli.model.presets",
    "meteor_cli.model.hf_vlm",
    "meteor_cli.model.eagle",
]

_loaded = False


def load_builtins_and_plugins(*, force: bool = False) -> list[str]:
    """Import meteor's built-in registrations and every ``meteor.plugins`` entry point, once.

    Returns the names of the plugins that loaded. A plugin that raises is reported with a
    warning (naming the entry point and the error) and skipped.
    """
    global _loaded
    if _loaded and not force:
        return []
    _loaded = True
    for mod in BUILTIN_MODULES:
        importlib.import_module(mod)
    return load_plugins()


def load_plugins(group: str = PLUGIN_GROUP) -> list[str]:
    """Load every entry point of ``group``: import it, and call it if it is a callable."""
    loaded = []
    for ep in entry_points(group=group):
        try:
            obj = ep.load()
            if callable(obj) and ":" in ep.value:
                obj()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - a broken plugin must not break the CLI, not even sys.exit()
            what = f"called sys.exit({exc.code!r})" if isinstance(exc, SystemExit) else \
                f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            warnings.warn(f"meteor plugin {ep.name!r} ({ep.value}) failed to load and is skipped: {what}",
                          PluginLoadWarning, stacklevel=2)
            continue
        log.debug("loaded meteor plugin %s (%s)", ep.name, ep.value)
        loaded.append(ep.name)
    return loaded
