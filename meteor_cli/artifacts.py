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
import errno
import hashlib
import io
import json
import math
import os
import shlex
import stat
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
    OutputNotWritableError,
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


def _is_int(v: Any, minimum: int = 0) -> bool:
    """A JSON integer >= ``minimum``; ``true``/``false`` are not (``bool`` is an ``int`` in Python)."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _validate_ranks(body: Mapping[str, Any], fail: Callable[[str, str, str | None], None]) -> None:
    for name, enc in body["encoders"].items():
        where = f"encoders.{name}"
        if not isinstance(enc, Mapping):
            fail(where, "must be an object with points, rank, std, n_images", None)
            continue
        for key in ("points", "rank", "std"):
            if not isinstance(enc.get(key), list):
                fail(f"{where}.{key}", "must be a list", None)
        if not _is_int(enc.get("tokens"), 1):
            fail(f"{where}.tokens", f"is {enc.get('tokens')!r}, must be the encoder's native token count "
                 "(an integer >= 1)", None)
        if "n_images" in enc and not _is_int(enc["n_images"]):
            fail(f"{where}.n_images", f"is {enc['n_images']!r}, must be an integer >= 0", None)
        points, rank = enc.get("points"), enc.get("rank")
        if isinstance(points, list) and not all(_is_int(p) for p in points):
            fail(f"{where}.points", f"is {points!r}, must be block indices (integers >= 0)", None)
        for key in ("rank", "std"):
            vals = enc.get(key)
            if isinstance(vals, list) and not all(_is_number(x) for x in vals):
                fail(f"{where}.{key}", f"is {vals!r}, must be a list of finite numbers", None)
        if isinstance(points, list) and isinstance(rank, list) and len(points) != len(rank):
            fail(f"{where}.rank", f"has {len(rank)} values for {len(points)} points", None)


def _validate_allocation(body: Mapping[str, Any], fail: Callable[[str, str, str | None], None]) -> None:
    s1, s2 = body["stage1"], body["stage2"]
    if not isinstance(s1, Mapping) or not isinstance(s1.get("encoders"), Mapping):
        fail("stage1.encoders", "must be an object keyed by encoder name", None)
        return
    native = body.get("native_tokens")
    if native is not None and (not isinstance(native, Mapping) or not all(_is_int(v, 1) for v in native.values())):
        fail("native_tokens", "must map encoder names to native token counts (integers >= 1)", None)
        native = None
    totals = s1.get("totals")
    good: dict[str, list[int]] = {}
    for name, enc in s1["encoders"].items():
        where = f"stage1.encoders.{name}"
        if not isinstance(enc, Mapping):
            fail(where, "must be an object with points and keep", None)
            continue
        keep, points = enc.get("keep"), enc.get("points")
        if not isinstance(keep, list) or not keep or not all(_is_int(k, 1) for k in keep):
            fail(f"{where}.keep", f"is {keep!r}, must be a non-empty list of integers >= 1", None)
            continue
        if any(b > a for a, b in zip(keep, keep[1:])):
            fail(f"{where}.keep", f"is {keep}: budgets must not grow from one pruning point to the next "
                 "(a pruned token cannot come back)", None)
        if points is not None:
            if not isinstance(points, list) or not all(_is_int(p) for p in points):
                fail(f"{where}.points", f"is {points!r}, must be block indices (integers >= 0)", None)
            elif len(points) != len(keep):
                fail(f"{where}.points", f"has {len(points)} pruning points for {len(keep)} budgets in keep", None)
            elif sorted(points) != points:
                fail(f"{where}.points", f"is {points}, must be in ascending order", None)
        if native is not None:
            if name not in native:
                fail(f"native_tokens.{name}", "is missing", None)
            elif keep[0] > native[name]:
                fail(f"{where}.keep", f"starts at {keep[0]} tokens, more than the encoder's "
                     f"{native[name]} native tokens (native_tokens.{name})", "lower the budgets or rerun `meteor allocate`")
        good[name] = keep
    if totals is not None:
        if not isinstance(totals, list) or not all(_is_int(t, 1) for t in totals):
            fail("stage1.totals", f"is {totals!r}, must be a list of integers >= 1", None)
        elif len(good) == len(s1["encoders"]):
            for b, total in enumerate(totals):
                got = sum(k[b] for k in good.values() if b < len(k))
                if got != total:
                    fail(f"stage1.totals[{b}]", f"is {total} but the encoders keep {got} in total", None)
    if not isinstance(s2, Mapping) or not _is_int(s2.get("keep"), 1):
        got = s2.get("keep") if isinstance(s2, Mapping) else s2
        fail("stage2.keep", f"is {got!r}, must be an integer >= 1", None)


def _validate_prune_llm(body: Mapping[str, Any], fail: Callable[[str, str, str | None], None]) -> None:
    """Stage-3 settings: layer indices, counts and ratios of the right JSON type (``true`` is no count)."""
    layers = body["layers"]
    if not all(_is_int(x) for x in layers):
        fail("layers", f"is {layers!r}, must be LLM layer indices (integers >= 0)", None)
    elif any(b <= a for a, b in zip(layers, layers[1:])):
        fail("layers", f"is {layers}, must be strictly increasing", None)
    for key in ("heads", "k", "k_min"):
        if key in body and body[key] is not None and not _is_int(body[key], 1):
            fail(key, f"is {body[key]!r}, must be an integer >= 1" + (" or null" if key == "heads" else ""), None)
    for key in ("lam", "scale", "r"):
        if key in body and not (_is_number(body[key]) and body[key] > 0):
            fail(key, f"is {body[key]!r}, must be a positive number", None)
    for key in ("keep", "ratios"):
        vals = body.get(key)
        if vals is not None and not (isinstance(vals, list) and all(_is_number(v) and v > 0 for v in vals)):
            fail(key, f"is {vals!r}, must be a list of positive numbers (counts or ratios)", None)


for _schema in (
    Schema("meteor.ranks", 1, "meteor rank-estimate", "feature-map rank per encoder and pruning point",
           {"method": str, "encoders": dict}, _validate_ranks),
    Schema("meteor.allocation", 1, "meteor allocate", "Stage-1 and Stage-2 token budgets",
           {"strategy": str, "stage1": dict, "stage2": dict}, _validate_allocation),
    Schema("meteor.prune-llm", 1, "meteor prune-llm", "Stage-3 (in-LLM) pruning settings",
           {"method": str, "layers": list}, _validate_prune_llm),
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


#: Write-side errno values that mean "this output cannot be written here" (not a bug).
_WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG,
                 errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP}


def _umask() -> int:
    """The process umask (read by setting and restoring it; there is no getter before 3.13)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def output_error(target: str | os.PathLike[str], exc: OSError, what: str = "output") -> OutputNotWritableError:
    """A named error for an OSError while writing ``target`` (disk full, read-only, a directory in the way)."""
    t = str(target)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        dev = _mount_point(Path(t))
        return OutputNotWritableError(f"no space left on {dev} while writing {what} {t}",
                                      "free some space (or choose another --out); nothing partial was left behind")
    if exc.errno == errno.EROFS:
        return OutputNotWritableError(f"cannot write {what} {t}: the file system is read-only",
                                      "choose an --out on a writable file system")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return OutputNotWritableError(f"cannot write {what} {t}: permission denied",
                                      "choose an --out you may write to, or fix the directory's permissions")
    reason = exc.strerror or str(exc)
    return OutputNotWritableError(f"cannot write {what} {t}: {reason}", "choose another --out")


def _mount_point(p: Path) -> str:
    p = p.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return str(p)


def _check_output_file(target: Path) -> None:
    """Refuse, before any work, a file output that cannot possibly be written where asked."""
    if target.is_dir():
        raise OutputNotWritableError(f"output {target} is an existing directory, not a file",
                                     f"name a file, e.g. {target / 'out.json'}")
    _check_parent(target)


def _check_parent(target: Path) -> None:
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputNotWritableError(f"cannot write {target}: {parent} is a file, not a directory",
                                             "choose an --out that is not below a file")
            return


def check_output(path: str | os.PathLike[str], *, directory: bool = False) -> None:
    """Fail fast (exit 3) when ``path`` cannot become an output file (or ``directory``): call it
    before long work so a bad ``--out`` is reported in seconds, not after hours."""
    if str(path) == STDIO:
        return
    target = Path(path)
    if directory:
        if target.exists() and not target.is_dir():
            raise OutputNotWritableError(f"output directory {target} is an existing file",
                                         "choose another --out (a directory path)")
        _check_parent(target)
    else:
        _check_output_file(target)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    On any exception the temporary file is removed and ``path`` is left untouched. Directories
    of ``path`` are created. Works for files written by other libraries (``save_file(t, tmp)``).
    The file gets the permissions a plain ``open()`` would give (``0666 & ~umask``), not
    ``mkstemp``'s 0600. A write that fails for a reason of the file system (disk full,
    read-only, permission, a directory in the way) is an :class:`OutputNotWritableError`
    naming the file (exit code 3).
    """
    target = Path(path)
    _check_output_file(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise output_error(target, exc) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())
        with open(tmp_path, "rb+") as f:  # make the bytes durable before the rename
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
            raise output_error(target, exc) from None
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary directory next to ``path``; on success it replaces ``path``.

    On any exception the temporary directory is removed and ``path`` is left untouched (an
    existing ``path`` is replaced only after everything was written). The directory gets
    ``0777 & ~umask`` (not ``mkdtemp``'s 0700); file-system failures are
    :class:`OutputNotWritableError` as in :func:`atomic_path`.
    """
    import shutil

    target = Path(path)
    check_output(target, directory=True)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as exc:
        raise output_error(target, exc, "output directory") from None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
            raise output_error(getattr(exc, "filename", None) or target, exc, "output") from None
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


#: Largest JSON file meteor reads (artifacts, configs, shard indexes): far above any real one
#: (a 665k-record ranks file is a few MB), far below what would exhaust memory.
MAX_JSON_BYTES = 256 * 1024**2


def _stat_regular_file(p: Path, what: str, *, missing_hint: str, special_hint: str) -> os.stat_result:
    """``stat`` of an input that must be a regular file, every failure a named meteor error.

    Raises:
        InputNotFoundError: missing, unreadable or a directory (exit 3).
        InvalidInputError: a device, pipe or socket (exit 4), refused before any read.
    """
    try:
        st = p.stat()
    except FileNotFoundError:
        raise InputNotFoundError(f"{what} {str(p)!r} does not exist", missing_hint) from None
    except OSError as exc:
        raise InputNotFoundError(f"cannot read {what} {str(p)!r}: {exc.strerror}", "check the path and its permissions") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputNotFoundError(f"{what} {str(p)!r} is a directory, not a file", "pass the file inside it")
    if not stat.S_ISREG(st.st_mode):
        raise InvalidInputError(f"{what} {str(p)!r} is not a regular file (a device, pipe or socket)", special_hint)
    return st


def read_bounded(path: str | os.PathLike[str], what: str = "input", *, limit: int | None = None) -> bytes:
    """The bytes of a regular file (or stdin for ``-``), refusing anything larger than ``limit``.

    Devices, FIFOs and other special files (``/dev/zero``) are refused before reading, so no
    input can make meteor read without bound. ``limit`` defaults to :data:`MAX_JSON_BYTES`.

    Raises:
        InputNotFoundError: missing, a directory, or unreadable (exit 3).
        InvalidInputError: not a regular file, or larger than ``limit`` (exit 4).
    """
    limit = MAX_JSON_BYTES if limit is None else limit
    if str(path) == STDIO:
        raw = sys.stdin.buffer.read(limit + 1)
        if len(raw) > limit:
            raise InvalidInputError(f"{what} on stdin is larger than {limit // 1024**2} MiB",
                                    "pass a meteor artifact, not a stream of other data")
        return raw
    p = Path(path)
    st = _stat_regular_file(p, what, missing_hint="check the path (or pass - to read stdin)",
                            special_hint="pass a file written by meteor (use - to read a pipe on stdin)")
    if st.st_size > limit:
        raise InvalidInputError(f"{what} {str(path)!r} is {st.st_size / 1024**2:.0f} MiB, larger than the "
                                f"{limit // 1024**2} MiB meteor reads for this kind of file", "pass the right file")
    try:
        with open(p, "rb") as f:
            raw = f.read(limit + 1)
    except OSError as exc:
        raise InputNotFoundError(f"cannot read {what} {str(path)!r}: {exc.strerror}", "check its permissions") from None
    if len(raw) > limit:
        raise InvalidInputError(f"{what} {str(path)!r} grew beyond {limit // 1024**2} MiB while being read",
                                "pass a file that is not being written")
    return raw


def _read_bytes(path: str | os.PathLike[str], what: str) -> bytes:
    return read_bounded(path, what)


def parse_json(raw: bytes, name: str, fix: str) -> Any:
    """``json.loads`` with errors that name the file, line and column (exit 4)."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{name} is not UTF-8 text (byte {exc.start} is 0x{raw[exc.start]:02x})", fix) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{name} is not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
                                fix) from None
    except RecursionError:
        raise InvalidInputError(f"{name} is not valid JSON: nested too deeply", fix) from None


def read_json_file(path: str | os.PathLike[str], what: str = "JSON file", *, expect: type | None = dict,
                   fix: str = "the file is damaged; regenerate it with the command that produced it",
                   limit: int | None = None) -> Any:
    """Read a JSON file through :func:`read_bounded` (``-`` = stdin); every failure is a named error.

    ``expect``: the type the top-level value must have (``dict`` by default; None for any).
    """
    name = "<stdin>" if str(path) == STDIO else str(path)
    obj = parse_json(read_bounded(path, what, limit=limit), name, fix)
    if expect is not None and not isinstance(obj, expect):
        want = _JSON_TYPE_NAMES.get(expect, expect.__name__)
        raise InvalidInputError(f"{name} must hold {want}, got {type(obj).__name__}", fix)
    return obj


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
    obj = parse_json(raw, name, "the file is damaged or not an artifact; regenerate it with the command that produced it")
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


#: Bytes per element of each safetensors dtype (sub-byte float types excluded: not checked).
SAFETENSORS_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}
#: The safetensors library's own limit on the JSON header.
MAX_SAFETENSORS_HEADER = 100_000_000
_DAMAGED = "the file is damaged or truncated: regenerate it (or copy it again) with the command that produced it"


def _is_count(v: Any) -> bool:
    """A JSON non-negative integer (``true`` is not a count, although ``bool`` is an ``int`` in Python)."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def check_safetensors_header(header: Any, data_bytes: int | None, name: str) -> dict[str, Any]:
    """Validate a parsed safetensors header against the size of the data area that follows it.

    Every tensor needs a dtype, a shape of non-negative integers and ``data_offsets`` [begin, end]
    whose length matches ``prod(shape) · itemsize`` and that lie inside the file — so a truncated
    file, or a header that does not describe its data, is found without reading any tensor.
    Returns the header (``__metadata__`` included). ``data_bytes`` None skips the range checks.
    """
    if not isinstance(header, dict):
        raise InvalidInputError(f"{name} is not a safetensors file (its header is not a JSON object)", _DAMAGED)
    problems: list[str] = []
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        problems.append("__metadata__ must map strings to strings")
    for tname, info in header.items():
        if tname == "__metadata__":
            continue
        if not isinstance(info, dict):
            problems.append(f"tensor {tname!r} is described by {type(info).__name__}, not an object")
            continue
        dtype, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            problems.append(f"tensor {tname!r} has shape {shape!r}, not a list of non-negative integers")
            continue
        if not (isinstance(offs, list) and len(offs) == 2 and all(_is_count(o) for o in offs) and offs[0] <= offs[1]):
            problems.append(f"tensor {tname!r} has data_offsets {offs!r}, not [begin, end] with begin <= end")
            continue
        if not isinstance(dtype, str):
            problems.append(f"tensor {tname!r} has no dtype")
            continue
        size = SAFETENSORS_DTYPE_BYTES.get(dtype)
        if size is not None and (offs[1] - offs[0]) != math.prod(shape) * size:
            problems.append(f"tensor {tname!r} ({dtype} {shape}) needs {math.prod(shape) * size} bytes "
                            f"but data_offsets {offs} span {offs[1] - offs[0]}")
        elif data_bytes is not None and offs[1] > data_bytes:
            problems.append(f"tensor {tname!r} ends at byte {offs[1]} of the data, but the file holds only "
                            f"{data_bytes} bytes of data (truncated)")
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise InvalidInputError(f"{name}: {problems[0]}{more}", _DAMAGED)
    return header


def _safetensors_header(raw: bytes | BinaryIO, name: str, file_size: int | None = None) -> dict[str, Any]:
    """Parse and check the header of a safetensors blob (8-byte little-endian length, then JSON).

    ``file_size``: the total size (known for files; for bytes it is ``len(raw)``) — the header
    length and every tensor's byte range are checked against it.
    """
    if isinstance(raw, bytes):
        file_size = len(raw)
        f: BinaryIO = io.BytesIO(raw)
    else:
        f = raw
    head = f.read(8)
    if len(head) != 8:
        raise InvalidInputError(f"{name} is not a safetensors file (shorter than its 8-byte header)", _DAMAGED)
    (n,) = struct.unpack("<Q", head)
    if n > MAX_SAFETENSORS_HEADER:
        raise InvalidInputError(f"{name} is not a safetensors file (its header claims {n} bytes, more than the "
                                f"{MAX_SAFETENSORS_HEADER} safetensors allows)", _DAMAGED)
    if file_size is not None and n > file_size - 8:
        raise InvalidInputError(f"{name}: its header claims {n} bytes but the file has only {file_size - 8} after "
                                "the length field (truncated)", _DAMAGED)
    blob = f.read(n)
    if len(blob) != n:
        raise InvalidInputError(f"{name}: the header is cut short ({len(blob)} of {n} bytes; truncated)", _DAMAGED)
    try:
        header = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise InvalidInputError(f"{name} is not a safetensors file (its header is not valid JSON)", _DAMAGED) from None
    data_bytes = None if file_size is None else file_size - 8 - n
    return check_safetensors_header(header, data_bytes, name)


def read_safetensors_header(path: str | os.PathLike[str], what: str = "safetensors file") -> dict[str, Any]:
    """The checked header of a safetensors file (tensor table + ``__metadata__``), reading no tensor data.

    Raises InputNotFoundError (missing, unreadable, not a regular file) or InvalidInputError
    (not safetensors, truncated, a tensor's bytes outside the file), each naming the file.
    """
    name = str(path)
    p = Path(path)
    st = _stat_regular_file(p, what, missing_hint="check the path", special_hint="pass a .safetensors file")
    try:
        with open(p, "rb") as f:
            return _safetensors_header(f, name, st.st_size)
    except OSError as exc:
        raise InputNotFoundError(f"cannot read {what} {name!r}: {exc.strerror}", "check its permissions") from None


def read_tensors_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The string metadata of a safetensors file, without loading its tensors."""
    return dict(read_safetensors_header(path).get("__metadata__") or {})


def load_safetensors_file(path: str | os.PathLike[str], device: str = "cpu") -> dict[str, Any]:
    """``safetensors.torch.load_file`` behind the header and byte-range checks: every failure is a
    named :class:`InvalidInputError`/:class:`InputNotFoundError`, never a library exception."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    read_safetensors_header(path)
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise InvalidInputError(f"{path} is not a valid safetensors file: {exc}", _DAMAGED) from None


def verify_safetensors(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read every tensor of a (header-checked) safetensors file; count non-finite float values.

    Returns ``{"n_tensors", "n_bytes", "non_finite": {tensor: count}}``.
    """
    import torch
    from safetensors import SafetensorError, safe_open

    header = read_safetensors_header(path)
    non_finite: dict[str, int] = {}
    n_bytes = 0
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a Mapping
                t = f.get_tensor(key)
                n_bytes += t.numel() * t.element_size()
                if t.is_floating_point():
                    bad = int((~torch.isfinite(t)).sum())
                    if bad:
                        non_finite[key] = bad
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise InvalidInputError(f"{path}: reading its tensors failed: {exc}", _DAMAGED) from None
    return {"n_tensors": len([k for k in header if k != "__metadata__"]), "n_bytes": n_bytes, "non_finite": non_finite}


def load_tensors(path: str | os.PathLike[str], device: str = "cpu") -> tuple[dict[str, Any], dict[str, str]]:
    """Load a safetensors file (``-`` = stdin) → ``(tensors, metadata)``."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    if str(path) != STDIO:
        meta = read_tensors_metadata(path)
        return load_safetensors_file(path, device), meta
    raw = sys.stdin.buffer.read()
    meta = dict(_safetensors_header(raw, "<stdin>").get("__metadata__") or {})
    try:
        tensors = load(raw)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise InvalidInputError(f"<stdin> is not a valid safetensors file: {exc}", _DAMAGED) from None
    return {k: v.to(device) for k, v in tensors.items()}, meta


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
    "Artifact", "Schema", "SCHEMAS", "STDIO", "MAX_JSON_BYTES", "MeteorError", "atomic_dir", "atomic_path",
    "atomic_write", "check_output", "check_safetensors_header", "input_ref", "load_safetensors_file", "load_tensors",
    "output_error", "parse_json", "read_bounded", "read_json_file", "read_safetensors_header", "verify_safetensors", "make_artifact", "producer_info", "provenance_metadata", "read_artifact",
    "read_tensors_metadata", "register_schema", "save_tensors", "sha256_file", "sniff", "tensors_provenance",
    "validate_artifact", "write_artifact",
]
