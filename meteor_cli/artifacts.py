"""Self-describing artifacts: the interface between pipeline stages.

Every JSON artifact meteor writes is one object with three envelope fields and a body::

    {
      "schema":   "meteor.ranks/v1",                   # kind + version: readers check it first
      "producer": {"command": "meteor rank-estimate …", "meteor_version": "0.1.0",
                   "torch_version": "2.14.1", "git_sha": "1a2b3c4" | null,
                   "created_utc": "2026-11-23T22:40:00Z"},
      "inputs":   [{"path": "data/train.json", "sha256": "…"}],
      … the body: fields of that schema, at the top level …
    }

Safetensors files carry the same envelope in their string metadata (``meteor.schema``,
``meteor.producer``, ``meteor.inputs``; the last two as JSON strings).

Writes are atomic (a temporary file in the target's directory, fsync, then ``os.replace``), so a
crash or Ctrl-C never leaves a half-written artifact: readers see the old file or the new one.
``-`` as a path means stdout (writes) or stdin (reads), so stages pipe::

    meteor rank-estimate … --out - | meteor allocate --ranks - --total 1193 --out allocation.json

Reading validates before any heavy work: a missing file, malformed JSON, the wrong schema, a
newer version or a bad field each raise an error that names the file, the field and the fix.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import io
import json
import os
import shlex
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, BinaryIO

from meteor_cli.errors import (
    InputNotFoundError,
    InvalidInputError,
    MeteorError,
    UnsupportedVersionError,
)

STDIO = "-"

# --------------------------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------------------------

#: A validator gets the body and reports problems through ``fail(field, problem, fix)``.
Validator = Callable[[Mapping[str, Any], Callable[[str, str, str | None], None]], None]


@dataclass(frozen=True)
class Schema:
    """One artifact kind: its name, the newest version this release reads, what produces it."""

    kind: str  # e.g. "meteor.ranks"
    version: int
    produced_by: str  # the command that writes it, for error messages
    description: str
    #: Top-level body fields that must be present, with the JSON type each must have.
    required: Mapping[str, type | tuple[type, ...]] = field(default_factory=dict)
    validate: Validator | None = None

    @property
    def id(self) -> str:
        return f"{self.kind}/v{self.version}"


SCHEMAS: dict[str, Schema] = {}


def register_schema(schema: Schema) -> Schema:
    """Add or replace a schema (stages refine the body validation of their own artifacts)."""
    SCHEMAS[schema.kind] = schema
    return schema


def _validate_ranks(body: Mapping[str, Any], fail: Callable[[str, str, str | None], None]) -> None:
    for name, enc in body["encoders"].items():
        where = f"encoders.{name}"
        if not isinstance(enc, Mapping):
            fail(where, "must be an object with points, rank, std, n_images", None)
            continue
        for key in ("points", "rank", "std"):
            if not isinstance(enc.get(key), list):
                fail(f"{where}.{key}", "must be a list", None)
        if not isinstance(enc.get("tokens"), int) or enc["tokens"] < 1:
            fail(f"{where}.tokens", "must be the encoder's native token count (an integer >= 1)", None)
        if isinstance(enc.get("points"), list) and isinstance(enc.get("rank"), list):
            if len(enc["points"]) != len(enc["rank"]):
                fail(f"{where}.rank", f"has {len(enc['rank'])} values for {len(enc['points'])} points", None)


def _validate_allocation(body: Mapping[str, Any], fail: Callable[[str, str, str | None], None]) -> None:
    s1, s2 = body["stage1"], body["stage2"]
    if not isinstance(s1, Mapping) or not isinstance(s1.get("encoders"), Mapping):
        fail("stage1.encoders", "must be an object keyed by encoder name", None)
        return
    totals = s1.get("totals")
    for name, enc in s1["encoders"].items():
        keep = enc.get("keep") if isinstance(enc, Mapping) else None
        if not isinstance(keep, list) or not all(isinstance(k, int) and k >= 1 for k in keep):
            fail(f"stage1.encoders.{name}.keep", "must be a list of integers >= 1", None)
    if isinstance(totals, list):
        for b, total in enumerate(totals):
            got = sum(
                e["keep"][b]
                for e in s1["encoders"].values()
                if isinstance(e, Mapping) and isinstance(e.get("keep"), list) and b < len(e["keep"])
            )
            if got != total:
                fail(f"stage1.totals[{b}]", f"is {total} but the encoders keep {got} in total", None)
    if not isinstance(s2, Mapping) or not isinstance(s2.get("keep"), int) or s2["keep"] < 1:
        fail("stage2.keep", "must be an integer >= 1", None)


for _schema in (
    Schema("meteor.ranks", 1, "meteor rank-estimate", "feature-map rank per encoder and pruning point",
           {"method": str, "encoders": dict}, _validate_ranks),
    Schema("meteor.allocation", 1, "meteor allocate", "Stage-1 and Stage-2 token budgets",
           {"strategy": str, "stage1": dict, "stage2": dict}, _validate_allocation),
    Schema("meteor.prune-llm", 1, "meteor prune-llm", "Stage-3 (in-LLM) pruning settings",
           {"method": str, "layers": list}),
    Schema("meteor.metrics", 1, "meteor eval", "benchmark scores, token counts and latency",
           {"metrics": dict}),
    Schema("meteor.flops", 1, "meteor flops", "FLOPs per component, with the counting convention",
           {"convention": str, "components": dict}),
):
    register_schema(_schema)


def parse_schema_id(value: Any) -> tuple[str, int]:
    """``"meteor.ranks/v1"`` → ``("meteor.ranks", 1)``; ValueError if malformed."""
    if not isinstance(value, str) or "/v" not in value:
        raise ValueError(value)
    kind, _, ver = value.rpartition("/v")
    if not kind or not ver.isdigit():
        raise ValueError(value)
    return kind, int(ver)


# --------------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------------


def _pkg_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def git_sha(cwd: str | os.PathLike[str] | None = None) -> str | None:
    """The commit of meteor's source checkout (or of ``cwd``), or None outside a git checkout."""
    where = cwd or Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def producer_info(command: list[str] | str | None = None) -> dict[str, Any]:
    """The ``producer`` block: command line, meteor/torch versions, git sha, UTC time."""
    if command is None:
        command = ["meteor", *sys.argv[1:]]
    if not isinstance(command, str):
        command = shlex.join(command)
    return {
        "command": command,
        "meteor_version": _pkg_version("meteor") or "0.0.0+unknown",
        "torch_version": _pkg_version("torch"),
        "git_sha": git_sha(),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def input_ref(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"path", "sha256"}`` for a file (sha256 of every file inside, sorted, for a directory)."""
    p = Path(path)
    if str(path) == STDIO:
        return {"path": STDIO, "sha256": None}
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            h.update(str(f.relative_to(p)).encode() + b"\0" + sha256_file(f).encode())
        return {"path": str(path), "sha256": h.hexdigest()}
    return {"path": str(path), "sha256": sha256_file(p)}


# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    On any exception the temporary file is removed and ``path`` is left untouched. Directories
    of ``path`` are created. Works for files written by other libraries (``save_file(t, tmp)``).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:  # make the bytes durable before the rename
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary directory next to ``path``; on success it replaces ``path``.

    On any exception the temporary directory is removed and ``path`` is left untouched (an
    existing ``path`` is replaced only after everything was written).
    """
    import shutil

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write ``data`` to ``path`` atomically; ``-`` writes to stdout."""
    raw = data.encode() if isinstance(data, str) else data
    if str(path) == STDIO:
        sys.stdout.buffer.write(raw)
        sys.stdout.flush()
        return
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(raw)


# --------------------------------------------------------------------------------------------
# JSON artifacts
# --------------------------------------------------------------------------------------------


@dataclass
class Artifact:
    """A loaded JSON artifact: envelope plus body (``artifact["field"]`` reads the body)."""

    schema: str
    body: dict[str, Any]
    producer: dict[str, Any] = field(default_factory=dict)
    inputs: list[dict[str, Any]] = field(default_factory=list)
    path: str | None = None

    @property
    def kind(self) -> str:
        return parse_schema_id(self.schema)[0]

    @property
    def version(self) -> int:
        return parse_schema_id(self.schema)[1]

    def __getitem__(self, key: str) -> Any:
        return self.body[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.body.get(key, default)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.schema, "producer": self.producer, "inputs": self.inputs, **self.body}


def make_artifact(
    kind: str,
    body: Mapping[str, Any],
    *,
    inputs: Iterable[str | os.PathLike[str] | Mapping[str, Any]] = (),
    command: list[str] | str | None = None,
) -> Artifact:
    """Build a validated artifact of ``kind`` (e.g. ``"meteor.ranks"``) with fresh provenance."""
    schema = _schema_for(kind)
    refs = [dict(i) if isinstance(i, Mapping) else input_ref(i) for i in inputs]
    art = Artifact(schema.id, dict(body), producer_info(command), refs)
    _check_body(art.to_dict(), schema, where="(new artifact)")
    return art


def write_artifact(path: str | os.PathLike[str], artifact: Artifact) -> None:
    """Write ``artifact`` as indented JSON, atomically (``-`` = stdout)."""
    text = json.dumps(artifact.to_dict(), indent=2, sort_keys=False, allow_nan=False) + "\n"
    atomic_write(path, text)


def _schema_for(kind: str) -> Schema:
    try:
        return SCHEMAS[kind]
    except KeyError:
        raise ValueError(f"unknown artifact kind {kind!r}; known: {sorted(SCHEMAS)}") from None


def _read_bytes(path: str | os.PathLike[str], what: str) -> bytes:
    if str(path) == STDIO:
        return sys.stdin.buffer.read()
    p = Path(path)
    if not p.exists():
        raise InputNotFoundError(f"{what} {str(path)!r} does not exist", "check the path (or pass - to read stdin)")
    if p.is_dir():
        raise InputNotFoundError(f"{what} {str(path)!r} is a directory, not a file", "pass the file inside it")
    try:
        return p.read_bytes()
    except OSError as exc:
        raise InputNotFoundError(f"cannot read {what} {str(path)!r}: {exc.strerror}", "check its permissions") from None


def read_artifact(
    path: str | os.PathLike[str], expect: str | Iterable[str] | None = None, *, what: str = "artifact"
) -> Artifact:
    """Read and validate a JSON artifact.

    Args:
        path: file path, or ``-`` for stdin.
        expect: the kind(s) the caller accepts (``"meteor.ranks"``); None accepts any meteor kind.
        what: how error messages name the input (``"--ranks"``).

    Raises:
        InputNotFoundError: missing/unreadable file (exit 3).
        InvalidInputError: malformed JSON, not a meteor artifact, wrong kind, bad field (exit 4).
        UnsupportedVersionError: schema version newer than this release reads (exit 5).
    """
    name = "<stdin>" if str(path) == STDIO else str(path)
    raw = _read_bytes(path, what)
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        pos = f" at line {exc.lineno}, column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise InvalidInputError(
            f"{name} is not valid JSON{pos}: {getattr(exc, 'msg', exc)}",
            "the file is damaged or not an artifact; regenerate it with the command that produced it",
        ) from None
    return validate_artifact(obj, expect, name=name)


def validate_artifact(obj: Any, expect: str | Iterable[str] | None = None, *, name: str = "<artifact>") -> Artifact:
    """Validate an already-parsed artifact object; see :func:`read_artifact`."""
    expected = [expect] if isinstance(expect, str) else list(expect or [])
    if not isinstance(obj, dict):
        raise InvalidInputError(f"{name}: a meteor artifact is a JSON object, got {type(obj).__name__}",
                                "pass a file written by a meteor command")
    if "schema" not in obj:
        raise InvalidInputError(f"{name}: field 'schema' is missing, so this is not a meteor artifact",
                                "pass a file written by a meteor command (`meteor inspect FILE` checks one)")
    try:
        kind, ver = parse_schema_id(obj["schema"])
    except ValueError:
        raise InvalidInputError(f"{name}: field 'schema' is {obj['schema']!r}, expected 'meteor.<kind>/v<N>'",
                                "regenerate the file with meteor") from None
    if kind not in SCHEMAS:
        known = ", ".join(s.id for s in SCHEMAS.values())
        raise InvalidInputError(f"{name}: unknown artifact kind {kind!r}", f"meteor reads: {known}")
    schema = SCHEMAS[kind]
    if expected and kind not in expected:
        wanted = " or ".join(f"{SCHEMAS[k].id} (from `{SCHEMAS[k].produced_by}`)" for k in expected if k in SCHEMAS)
        raise InvalidInputError(
            f"{name} is a {obj['schema']} artifact ({schema.description}), but this option needs {wanted}",
            "check that the paths are not swapped",
        )
    if ver > schema.version:
        raise UnsupportedVersionError(
            f"{name} has schema {obj['schema']}, written by a newer meteor "
            f"({(obj.get('producer') or {}).get('meteor_version', '?')}); this meteor reads up to {schema.id}",
            "upgrade meteor (pip install -U meteor), or regenerate the file with this version",
        )
    _check_body(obj, schema, where=name)
    body = {k: v for k, v in obj.items() if k not in ("schema", "producer", "inputs")}
    return Artifact(obj["schema"], body, obj.get("producer") or {}, obj.get("inputs") or [], name)


_JSON_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer",
                    float: "a number", bool: "true/false"}


def _check_body(obj: Mapping[str, Any], schema: Schema, *, where: str) -> None:
    problems: list[tuple[str, str, str | None]] = []

    def fail(fld: str, problem: str, fix: str | None = None) -> None:
        problems.append((fld, problem, fix))

    if "producer" in obj and not isinstance(obj["producer"], dict):
        fail("producer", "must be an object", None)
    inputs = obj.get("inputs", [])
    if not isinstance(inputs, list) or not all(isinstance(i, dict) and "path" in i for i in inputs):
        fail("inputs", "must be a list of {path, sha256} objects", None)
    for key, typ in schema.required.items():
        if key not in obj:
            fail(key, "is missing", None)
        elif not isinstance(obj[key], typ) or (typ is int and isinstance(obj[key], bool)):
            names = " or ".join(_JSON_TYPE_NAMES.get(t, t.__name__) for t in (typ if isinstance(typ, tuple) else (typ,)))
            fail(key, f"must be {names}, got {type(obj[key]).__name__}", None)
    if not problems and schema.validate is not None:
        schema.validate(obj, fail)
    if problems:
        fld, problem, fix = problems[0]
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise InvalidInputError(
            f"{where}: field '{fld}' {problem}{more}",
            fix or f"regenerate it with `{schema.produced_by}`, or correct the field by hand",
        )


# --------------------------------------------------------------------------------------------
# Safetensors with provenance
# --------------------------------------------------------------------------------------------


def provenance_metadata(
    kind: str | None = None,
    *,
    inputs: Iterable[str | os.PathLike[str] | Mapping[str, Any]] = (),
    command: list[str] | str | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """String metadata for a safetensors file: ``meteor.schema``/``producer``/``inputs`` + extra."""
    meta = {
        "meteor.producer": json.dumps(producer_info(command)),
        "meteor.inputs": json.dumps([dict(i) if isinstance(i, Mapping) else input_ref(i) for i in inputs]),
    }
    if kind:
        meta["meteor.schema"] = kind if "/v" in kind else f"{kind}/v1"
    meta.update(extra or {})
    return meta


def save_tensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, Any],
    *,
    kind: str | None = None,
    inputs: Iterable[str | os.PathLike[str] | Mapping[str, Any]] = (),
    command: list[str] | str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Save torch tensors as safetensors with provenance metadata, atomically (``-`` = stdout)."""
    from safetensors.torch import save, save_file

    meta = provenance_metadata(kind, inputs=inputs, command=command, extra=metadata)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    if str(path) == STDIO:
        atomic_write(STDIO, save(tensors, metadata=meta))
        return
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def _safetensors_header(raw: bytes | BinaryIO, name: str) -> dict[str, Any]:
    """Parse the JSON header of a safetensors blob (8-byte little-endian length, then JSON)."""
    f = io.BytesIO(raw) if isinstance(raw, bytes) else raw
    head = f.read(8)
    if len(head) != 8:
        raise InvalidInputError(f"{name} is not a safetensors file (shorter than its 8-byte header)",
                                "regenerate it with the meteor command that produced it")
    (n,) = struct.unpack("<Q", head)
    blob = f.read(n) if n < 100_000_000 else b""
    try:
        header = json.loads(blob)
        assert isinstance(header, dict)
    except Exception:
        raise InvalidInputError(f"{name} is not a safetensors file (its header is not valid JSON)",
                                "regenerate it with the meteor command that produced it") from None
    return header


def read_tensors_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The string metadata of a safetensors file, without loading its tensors."""
    name = str(path)
    if not Path(path).is_file():
        raise InputNotFoundError(f"safetensors file {name!r} does not exist", "check the path")
    with open(path, "rb") as f:
        return dict(_safetensors_header(f, name).get("__metadata__") or {})


def load_tensors(path: str | os.PathLike[str], device: str = "cpu") -> tuple[dict[str, Any], dict[str, str]]:
    """Load a safetensors file (``-`` = stdin) → ``(tensors, metadata)``."""
    from safetensors import SafetensorError
    from safetensors.torch import load, load_file

    name = "<stdin>" if str(path) == STDIO else str(path)
    try:
        if str(path) == STDIO:
            raw = _read_bytes(STDIO, "safetensors input")
            meta = dict(_safetensors_header(raw, name).get("__metadata__") or {})
            tensors = load(raw)
            return {k: v.to(device) for k, v in tensors.items()}, meta
        meta = read_tensors_metadata(path)
        return load_file(str(path), device=device), meta
    except SafetensorError as exc:
        raise InvalidInputError(f"{name} is not a valid safetensors file: {exc}",
                                "regenerate it with the meteor command that produced it") from None


def tensors_provenance(meta: Mapping[str, str]) -> dict[str, Any]:
    """Decode the ``meteor.*`` provenance entries of safetensors metadata."""
    out: dict[str, Any] = {"schema": meta.get("meteor.schema")}
    for key in ("producer", "inputs"):
        raw = meta.get(f"meteor.{key}")
        try:
            out[key] = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            out[key] = raw
    return out


# --------------------------------------------------------------------------------------------
# Any artifact (for `meteor inspect`)
# --------------------------------------------------------------------------------------------


def sniff(path: str | os.PathLike[str]) -> str:
    """``"json"``, ``"safetensors"`` or ``"checkpoint"`` (a directory), from the content."""
    p = Path(path)
    if p.is_dir():
        return "checkpoint"
    if not p.exists():
        raise InputNotFoundError(f"{str(path)!r} does not exist", "check the path")
    with open(p, "rb") as f:
        head = f.read(16)
    return "json" if head.lstrip()[:1] in (b"{", b"[") else "safetensors"


__all__ = [
    "Artifact", "Schema", "SCHEMAS", "STDIO", "MeteorError", "atomic_dir", "atomic_path", "atomic_write", "input_ref",
    "load_tensors", "make_artifact", "producer_info", "provenance_metadata", "read_artifact",
    "read_tensors_metadata", "register_schema", "save_tensors", "sha256_file", "sniff", "tensors_provenance",
    "validate_artifact", "write_artifact",
]
