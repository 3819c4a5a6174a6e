"""What every benchmark module builds on: the question item, the benchmark base class, readers.

A benchmark turns a directory the user has on disk into a list of :class:`Item` (prompt, image,
ground truth, category, whatever its scorer needs in ``meta``) and scores a list of sample rows
(an item's :meth:`Item.record` plus the model output ``text``). Scoring from rows, never from the
data directory, is what makes resuming and ``meteor eval merge`` exact: the per-sample file holds
everything the score needs.

Readers here name the file and line (or parquet column) that is wrong, and the layout errors show
the directory tree the benchmark expected.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from meteor_cli.errors import InputNotFoundError, InvalidInputError, UsageError
from meteor_cli.eval.metrics.base import PROTOCOLS, MetricResult

#: An image: a path on disk, encoded bytes, or a function returning encoded bytes (read lazily).
ImageRef = Path | bytes | Callable[[], bytes]

#: Hugging Face organisations lmms-eval's data sets are cached under (renamed on 2026-07-30).
LMMS_ORGS = ("lmms-lab", "lmms-lab-encoder")


# ------------------------------------------------------------------------------------------------
# Items and sample rows
# ------------------------------------------------------------------------------------------------


@dataclass
class Item:
    """One question as the model is asked it, with what the scorer needs to score the answer.

    Example:
        >>> Item("q1", "Is there a cat?", Path("a.png"), "yes", category="random").record()["answer"]
        'yes'
    """

    #: Unique within the benchmark (str or int, as the source file has it).
    qid: Any
    #: The text after ``<image>\\n``: question plus the benchmark's instruction suffix.
    prompt: str
    #: Where the image comes from (not written to the per-sample file).
    image: ImageRef | None
    #: Ground truth as the scorer takes it (a string, a list of strings, an option index, ...).
    answer: Any
    category: str | None = None
    subcategory: str | None = None
    #: Items sharing a group stay in one shard (MME's two questions per image, MMBench rotations).
    group: Any = None
    #: JSON-ready extras for the scorer (options, image id, dataset name, ...).
    meta: dict[str, Any] = field(default_factory=dict)
    #: The image's name for the sample rows (a relative path, or ``parquet:FILE#ROW``).
    image_name: str | None = None

    def record(self) -> dict[str, Any]:
        """The item as a per-sample row (JSON-ready): everything scoring needs, no image bytes."""
        return {"question_id": self.qid, "prompt": self.prompt, "answer": self.answer, "category": self.category,
                "subcategory": self.subcategory, "group": self.group, "meta": self.meta, "image": self.image_name}


@dataclass
class Loaded:
    """What :meth:`Benchmark.load_items` found in a data directory."""

    items: list[Item]
    #: ``"llava"`` (LLaVA-1.5 playground / official files), ``"lmms"`` (parquet) or the benchmark's own.
    layout: str
    #: Files read (for ``metrics.json``).
    files: list[str] = field(default_factory=list)
    #: Question ids that have no ground truth in the annotation files (not evaluated).
    missing: list[Any] = field(default_factory=list)
    #: Settings of the prompt (suffix, OCR tokens, variant) recorded in ``metrics.json``.
    prompt: dict[str, Any] = field(default_factory=dict)


class Benchmark:
    """Base class of the registered benchmarks (one module each in ``meteor_cli.eval.benchmarks``).

    Subclasses set the class attributes and implement :meth:`load_items` and :meth:`score_rows`.
    """

    name: ClassVar[str] = ""
    #: layout name → the directory tree it expects (shown by ``meteor list benchmarks`` and in errors).
    layouts: ClassVar[dict[str, str]] = {}
    #: Protocols whose scorers differ for this benchmark (``--protocol``); the first is the default.
    protocols: ClassVar[tuple[str, ...]] = PROTOCOLS
    #: ``--variant`` values (first = default); empty when the benchmark has none.
    variants: ClassVar[tuple[str, ...]] = ()
    #: Subfolder of ``--data`` holding the images of the llava layout (when ``--image-root`` is not given).
    image_dir: ClassVar[str | None] = None

    def load_items(self, data: Path, *, image_root: Path | None = None, variant: str | None = None,
                   allow_outside_root: bool = False, **options: Any) -> Loaded:
        """The benchmark's questions under ``data`` (either layout), with their ground truth.

        Image paths resolve against ``image_root`` (default: the layout's image folder), then the
        question file's directory; a path leaving its root is refused unless ``allow_outside_root``.
        ``options`` are benchmark-specific (``answers``/``metric`` of the ``llava`` benchmark).
        """
        raise NotImplementedError

    def score_rows(self, rows: Sequence[Mapping[str, Any]], *, protocol: str) -> dict[str, Any]:
        """Score sample rows (:meth:`Item.record` + ``text``): a dict as :func:`report` builds it,
        with ``per_sample`` entries ``{"qid", "parsed", "correct" or "score"}``."""
        raise NotImplementedError

    # -- helpers for subclasses ----------------------------------------------------------------

    def check_variant(self, variant: str | None) -> str | None:
        """``variant`` or the default; an unknown one is a UsageError listing the known."""
        if variant is None:
            return self.variants[0] if self.variants else None
        if variant not in self.variants:
            known = ", ".join(self.variants) if self.variants else f"none ({self.name} has no variants)"
            raise UsageError(f"unknown {self.name} variant {variant!r}", f"known: {known}")
        return variant

    def check_protocol(self, protocol: str) -> str:
        if protocol not in self.protocols:
            raise UsageError(f"{self.name} has no protocol {protocol!r}", f"use one of: {', '.join(self.protocols)}")
        return protocol

    def layout_error(self, data: Path, looked_for: str | Path) -> InputNotFoundError:
        """The error for a directory in neither layout: names the file and shows the trees."""
        trees = "\n".join(f"{name} layout:\n{tree}" for name, tree in self.layouts.items())
        where = f"{data}: no such directory" if not data.exists() else f"{data}: no {looked_for}"
        return InputNotFoundError(f"{where} (benchmark {self.name!r})",
                                  f"pass the benchmark's directory as --data; expected:\n{trees}")

    def image_base(self, data: Path, image_root: Path | None) -> Path:
        """``--image-root``, else the layout's image folder under ``--data``, else ``--data``."""
        if image_root is not None:
            return image_root
        if self.image_dir and (data / self.image_dir).is_dir():
            return data / self.image_dir
        return data

    def is_lmms(self, data: Path) -> bool:
        """Whether ``data`` holds parquet files (lmms-eval's Hugging Face layout)."""
        return find_parquet_dir(data, ()) is not None


# ------------------------------------------------------------------------------------------------
# Scoring helpers shared by the benchmark modules
# ------------------------------------------------------------------------------------------------


def columns(rows: Sequence[Mapping[str, Any]], *keys: str) -> list[list[Any]]:
    """Per-key lists over the rows: ``columns(rows, "text", "answer")``."""
    return [[r.get(k) for r in rows] for k in keys]


def meta_column(rows: Sequence[Mapping[str, Any]], key: str) -> list[Any]:
    return [(r.get("meta") or {}).get(key) for r in rows]


def category_table(keys: Sequence[Any], scores: Sequence[float]) -> dict[str, dict[str, float]]:
    """``{category: {"score": % mean, "n": count}}`` in first-seen order (``None`` keys skipped)."""
    groups: dict[str, list[float]] = defaultdict(list)
    for k, s in zip(keys, scores):
        if k is not None:
            groups[str(k)].append(float(s))
    return {k: {"score": 100.0 * sum(v) / len(v), "n": len(v)} for k, v in groups.items()}


def report(benchmark: str, result: MetricResult, rows: Sequence[Mapping[str, Any]], *, headline: str,
           categories: Mapping[str, Mapping[str, float]] | None = None, overall: float | None = None,
           extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The dict ``score_rows`` returns: the labelled headline, overall next to the category mean.

    ``overall`` defaults to the mean of the per-sample ``correct``/``score`` (micro); the category
    mean is the unweighted mean over ``categories`` (macro), so a reader sees both.
    """
    per = result.per_sample
    if overall is None and per:
        vals = [float(s.get("correct", s.get("score", 0.0))) for s in per]
        overall = 100.0 * sum(vals) / len(vals)
    cats = dict(categories or {})
    cat_mean = sum(c["score"] for c in cats.values()) / len(cats) if cats else None
    samples = []
    for row, s in zip(rows, per):
        d = {"qid": row.get("question_id"), "parsed": s.get("parsed")}
        if "correct" in s:
            d["correct"] = bool(s["correct"])
        if "score" in s:
            d["score"] = float(s["score"])
        samples.append(d)
    out = {"benchmark": benchmark, "metric": result.metric, "value": result.value, "headline": headline,
           "protocol": result.protocol, "n": len(rows), "n_unparsed": result.n_failed_parse,
           "overall": overall, "category_mean": cat_mean, "categories": cats, "breakdown": result.breakdown,
           "settings": result.settings, "prompt_suffix": result.prompt_suffix, "per_sample": samples}
    out.update(extra or {})
    return out


# ------------------------------------------------------------------------------------------------
# Files: JSON, JSONL, TSV with errors that name the file
# ------------------------------------------------------------------------------------------------


def read_json(path: Path, what: str, hint: str) -> Any:
    """A JSON file; missing → InputNotFoundError with ``hint``; malformed → InvalidInputError."""
    if not path.is_file():
        raise InputNotFoundError(f"{path}: no such file ({what})", hint)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})", hint) from None
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})", hint) from None


def read_json_lines(path: Path, what: str, hint: str, required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """JSONL records (or a JSON list), each required to be an object with ``required`` fields."""
    if not path.is_file():
        raise InputNotFoundError(f"{path}: no such file ({what})", hint)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})", hint) from None
    records: list[tuple[int, Any]] = []
    if text.lstrip().startswith("["):
        try:
            records = list(enumerate(json.loads(text), 1))
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})", hint) from None
    else:
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append((lineno, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise InvalidInputError(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})",
                                        "each line must hold one JSON object") from None
    out = []
    for lineno, obj in records:
        if not isinstance(obj, dict):
            raise InvalidInputError(f"{path}:{lineno}: a {type(obj).__name__}, not a JSON object", hint)
        missing = [k for k in required if k not in obj]
        if missing:
            raise InvalidInputError(f"{path}:{lineno}: missing field(s) {', '.join(map(repr, missing))}",
                                    f"every record needs {', '.join(required)}")
        out.append(obj)
    return out


def read_tsv(path: Path, what: str, hint: str, required: Sequence[str]) -> list[dict[str, str]]:
    """A TSV with a header row (MMBench); cells are strings, empty cells ``""``."""
    import csv

    if not path.is_file():
        raise InputNotFoundError(f"{path}: no such file ({what})", hint)
    csv.field_size_limit(1 << 30)  # base64 images are long cells
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            raise InvalidInputError(f"{path}: no column(s) {', '.join(map(repr, missing))} (has: {', '.join(header)})",
                                    hint)
        return [dict(r) for r in reader]


def base64_image(payload: str) -> Callable[[], bytes]:
    """A lazy decoder of a base64 image cell; bad base64 raises ValueError when the image is read."""
    def decode() -> bytes:
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"base64 image does not decode ({exc})") from None
    return decode


# ------------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------------


def confined(root: Path, relative: str, *, allow_outside_root: bool = False, qid: Any = None) -> Path:
    """``root / relative``, resolved; a path leaving ``root`` (``..``, absolute, symlink) is refused.

    The check is :func:`meteor_cli.data.llava.resolve_image`'s, the one rule every command uses.

    Raises:
        ImageOutsideRootError: the path escapes the root and ``allow_outside_root`` is off (exit 4).

    Example:
        >>> confined(Path("/data"), "a/b.png").as_posix()
        '/data/a/b.png'
    """
    from meteor_cli.data.llava import resolve_image as confine

    record = {"image": relative} if qid is None else {"image": relative, "question_id": qid}
    return confine(record, root, allow_outside_root=allow_outside_root)


def resolve_image(relative: str, roots: Sequence[Path], *, allow_outside_root: bool = False) -> Path:
    """The first of ``root / relative`` that exists over ``roots`` (else the first candidate)."""
    first = None
    for root in roots:
        p = confined(root, relative, allow_outside_root=allow_outside_root)
        if p.exists():
            return p
        first = first or p
    assert first is not None
    return first


def open_image(ref: ImageRef | None) -> Any:
    """The item's image as an RGB PIL image.

    Raises:
        OSError / ValueError: missing, unreadable or undecodable image (the runner skips and counts).
    """
    from PIL import Image

    if ref is None:
        raise OSError("no image")
    if isinstance(ref, Path):
        from meteor_cli.data.llava import load_image

        return load_image(ref)
    from meteor_cli.data.llava import UnreadableImageError

    raw = ref() if callable(ref) else ref
    try:
        with Image.open(io.BytesIO(raw)) as im:
            im.load()
            return im.convert("RGB")
    except OSError:
        raise
    except Exception as exc:  # a decompression bomb, a malformed header: as load_image does for files
        raise UnreadableImageError(f"cannot decode the image ({type(exc).__name__}: {exc})") from None


# ------------------------------------------------------------------------------------------------
# Parquet (lmms-eval's Hugging Face data sets)
# ------------------------------------------------------------------------------------------------


def _pyarrow() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        raise UsageError("reading lmms-eval parquet data needs pyarrow", "pip install pyarrow") from None
    return pq


def find_parquet_dir(data: Path, names: Sequence[str]) -> Path | None:
    """Where the parquet files of a data set are: ``data`` itself, or a Hugging Face cache entry.

    ``names`` are data-set names (``"POPE"``): ``data/datasets--ORG--NAME/snapshots/<newest>``
    and ``data/ORG/NAME`` are looked at for both lmms-eval organisations.
    """
    if not data.is_dir():
        return None
    if next(data.rglob("*.parquet"), None) is not None and not any(
            (data / f"datasets--{org}--{n}").exists() for org in LMMS_ORGS for n in names):
        return data
    for n in names:
        for org in LMMS_ORGS:
            snaps = data / f"datasets--{org}--{n}" / "snapshots"
            if snaps.is_dir():
                found = sorted((p for p in snaps.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
                if found:
                    return found[-1]
            plain = data / org / n
            if plain.is_dir() and next(plain.rglob("*.parquet"), None) is not None:
                return plain
    return None


def parquet_files(root: Path, pattern: str = "*") -> list[Path]:
    """Parquet files under ``root`` whose path relative to it matches ``pattern`` (sorted)."""
    import fnmatch

    return sorted(p for p in root.rglob("*.parquet")
                  if fnmatch.fnmatch(p.relative_to(root).as_posix(), pattern))


class ParquetImages:
    """Lazy images of one parquet file's image column: row groups are read on demand, one cached.

    Items then hold ``lambda: images(row)``; evaluating in file order reads each group once.
    """

    def __init__(self, path: Path, column: str = "image") -> None:
        self.path, self.column = path, column
        self._file = None
        self._starts: list[int] = []
        self._cache: tuple[int, list[Any]] | None = None

    def __call__(self, row: int) -> bytes:
        pq = _pyarrow()
        if self._file is None:
            self._file = pq.ParquetFile(self.path)
            start = 0
            for g in range(self._file.num_row_groups):
                self._starts.append(start)
                start += self._file.metadata.row_group(g).num_rows
        import bisect

        g = bisect.bisect_right(self._starts, row) - 1
        if self._cache is None or self._cache[0] != g:
            self._cache = (g, self._file.read_row_group(g, columns=[self.column]).column(0).to_pylist())
        return image_bytes(self._cache[1][row - self._starts[g]], f"{self.path.name} row {row}")

    def ref(self, row: int) -> Callable[[], bytes]:
        return lambda: self(row)


def image_bytes(cell: Any, where: str) -> bytes:
    """Encoded bytes of a Hugging Face image cell (``{"bytes", "path"}``, raw bytes, or a list of them)."""
    if isinstance(cell, list):  # SEED-Bench stores a list (video frames); images have one
        if not cell:
            raise ValueError(f"{where}: empty image list")
        cell = cell[0]
    if isinstance(cell, dict):
        cell = cell.get("bytes")
    if isinstance(cell, (bytes, bytearray)):
        return bytes(cell)
    raise ValueError(f"{where}: no image bytes in the image column")


def read_parquet(files: Sequence[Path], required: Sequence[str], optional: Sequence[str] = (),
                 image_column: str | None = "image") -> list[dict[str, Any]]:
    """Rows of the parquet ``files`` (non-image columns as Python values) in file order.

    Each row gets ``_image`` (a lazy loader, when ``image_column`` is set) and ``_source``
    (``FILE#ROW``). A file without a ``required`` column is an InvalidInputError naming the
    columns it lacks and those it has.
    """
    pq = _pyarrow()
    rows: list[dict[str, Any]] = []
    for f in files:
        try:
            names = pq.read_schema(f).names
        except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for a non-parquet file
            raise InvalidInputError(f"{f}: not a readable parquet file ({exc})", "re-download the data set") from None
        need = [*required, *([image_column] if image_column else [])]
        missing = [c for c in need if c not in names]
        if missing:
            raise InvalidInputError(f"{f}: parquet file lacks column(s) {', '.join(map(repr, missing))} "
                                    f"(has: {', '.join(names)})",
                                    "is this the right data set (and config) for the benchmark?")
        cols = [c for c in (*required, *optional) if c in names]
        table = pq.read_table(f, columns=cols).to_pylist()
        images = ParquetImages(f, image_column) if image_column else None
        for i, r in enumerate(table):
            r["_source"] = f"parquet:{f.name}#{i}"
            if images is not None:
                r["_image"] = images.ref(i)
            rows.append(r)
    return rows


def lmms_rows(bench: Benchmark, data: Path, names: Sequence[str], pattern: str, required: Sequence[str],
              optional: Sequence[str] = ()) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of an lmms-eval data set under ``data`` (files matching ``pattern``), and the files read."""
    root = find_parquet_dir(data, names)
    if root is None:
        raise bench.layout_error(data, f"parquet files of {' or '.join(f'{o}/{names[0]}' for o in LMMS_ORGS)}")
    files = parquet_files(root, pattern)
    if not files:
        raise bench.layout_error(root, f"parquet file matching {pattern!r}")
    return read_parquet(files, required, optional), [str(f) for f in files]


def option_lines(options: Iterable[tuple[str, Any]]) -> str:
    """``"\\nA. cat\\nB. dog"`` for ``[("A", "cat"), ("B", "dog")]`` (empty options left out)."""
    return "".join(f"\n{k}. {v}" for k, v in options if v is not None and str(v) != "" and v == v)


def question_file(data: Path, candidates: Sequence[str]) -> Path | None:
    """The first of ``candidates`` (relative to ``data``) that exists."""
    for c in candidates:
        if (data / c).is_file():
            return data / c
    return None


__all__ = ["LMMS_ORGS", "Benchmark", "ImageRef", "Item", "Loaded", "ParquetImages", "base64_image", "category_table",
           "columns", "confined", "find_parquet_dir", "image_bytes", "lmms_rows", "meta_column", "open_image",
           "option_lines", "parquet_files", "question_file", "read_json", "read_json_lines", "read_parquet",
           "read_tsv", "report", "resolve_image"]
