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
from meteor_cli.eval.metrics.base import LETTERS, PROTOCOLS, MetricResult

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


class Source:
    """A benchmark's data directory in one layout, as its reader sees it.

    It finds the files (an absent one is a layout error naming it and showing the expected trees),
    reads them with errors that name file and line, resolves and confines image paths, remembers
    every file read (for ``metrics.json``) and builds the :class:`Loaded` result. Benchmarks get one
    from :meth:`Benchmark.load_items` and only describe their files and parse their records.
    """

    def __init__(self, bench: Benchmark, data: Path, layout: str, root: Path, image_roots: Sequence[Path] = (),
                 allow_outside_root: bool = False) -> None:
        self.bench, self.data, self.layout, self.root = bench, data, layout, root
        self.image_roots = list(image_roots)
        self.allow_outside_root = allow_outside_root
        self.files: list[str] = []

    @property
    def hint(self) -> str:
        """What the layout should look like (the hint of every read error)."""
        return f"expected:\n{self.bench.layouts.get(self.layout, '')}"

    def path(self, relative: str, what: str) -> Path:
        """``root / relative``, which must exist; else a layout error naming it (and ``what`` it is)."""
        p = self.root / relative
        if not p.exists():
            raise self.bench.layout_error(self.data, f"{relative} ({what})" if what else relative)
        return p

    def first(self, candidates: Sequence[str], what: str = "") -> Path:
        """The first of ``candidates`` (relative to the root) that is a file; else a layout error naming the first."""
        found = question_file(self.root, candidates)
        if found is None:
            raise self.bench.layout_error(self.data, f"{candidates[0]} ({what})" if what else candidates[0])
        return found

    def _read(self, relative: str | Path, what: str) -> Path:
        p = relative if isinstance(relative, Path) else self.path(relative, what)
        self.files.append(str(p))
        return p

    def json(self, relative: str | Path, what: str) -> Any:
        """A JSON file (relative to the root, or a path found with :meth:`first`)."""
        return read_json(self._read(relative, what), what, self.hint)

    def jsonl(self, relative: str | Path, what: str, required: Sequence[str] = ()) -> list[dict[str, Any]]:
        """JSONL records (or a JSON list) each with the ``required`` fields."""
        return read_json_lines(self._read(relative, what), what, self.hint, required)

    def tsv(self, relative: str | Path, what: str, required: Sequence[str]) -> list[dict[str, str]]:
        """A TSV with a header naming at least the ``required`` columns."""
        return read_tsv(self._read(relative, what), what, self.hint, required)

    def parquet(self, pattern: str | Sequence[str], required: Sequence[str], optional: Sequence[str] = (),
                image_column: str | None = "image", what: str = "") -> list[dict[str, Any]]:
        """Rows of the parquet files matching ``pattern`` under the data set root (see :func:`read_parquet`).

        Several patterns: the first that matches any file wins (a config folder of a whole cache
        entry, then the files of a directory holding only that config).
        """
        patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        files: list[Path] = []
        for pat in patterns:
            files = parquet_files(self.root, pat)
            if files:
                break
        if not files:
            looked = f"parquet file matching {patterns[0]!r}" + (f" ({what})" if what else "")
            raise self.bench.layout_error(self.root, looked)
        self.files.extend(str(f) for f in files)
        return read_parquet(files, required, optional, image_column)

    def image(self, relative: str, *extra: str) -> dict[str, Any]:
        """``Item`` fields of a llava-layout image: the first existing of ``relative`` (then ``extra``)
        over the image roots, and its name for the sample rows."""
        path = resolve_image(relative, self.image_roots, allow_outside_root=self.allow_outside_root)
        for alt in extra:
            if path.exists():
                break
            path = resolve_image(alt, self.image_roots, allow_outside_root=self.allow_outside_root)
        return {"image": path, "image_name": relative}

    @staticmethod
    def row_image(row: Mapping[str, Any]) -> dict[str, Any]:
        """``Item`` fields of a parquet row's embedded image (lazy) and its ``parquet:FILE#ROW`` name."""
        return {"image": row["_image"], "image_name": row["_source"]}

    def loaded(self, items: list[Item], missing: Sequence[Any] = (), **prompt: Any) -> Loaded:
        """The result: items, this layout, the files read, the ids without ground truth, prompt settings."""
        return Loaded(items, self.layout, list(dict.fromkeys(self.files)), list(missing), dict(prompt))


def suffix_of(texts: Iterable[str], suffix: str) -> str | None:
    """``suffix`` when every prompt ends with it (what the question file poses), else ``None``."""
    return suffix if all(str(t).endswith(suffix) for t in texts) else None


class Benchmark:
    """Base class of the registered benchmarks (one module each in ``meteor_cli.eval.benchmarks``).

    A benchmark describes its layouts (class attributes) and implements :meth:`read_llava` and
    :meth:`read_lmms` (records → items) and :meth:`score_rows`. :meth:`load_items` does the rest:
    the variant check, which layout ``--data`` is in, where the parquet data set is in a cache,
    the image roots. A benchmark with a reader of its own overrides :meth:`load_items` instead.
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

    #: lmms-eval data-set names (``"POPE"`` for ``lmms-lab/POPE``), looked up in a HF cache under ``--data``.
    lmms_names: ClassVar[tuple[str, ...]] = ()

    def load_items(self, data: Path, *, image_root: Path | None = None, variant: str | None = None,
                   allow_outside_root: bool = False, **options: Any) -> Loaded:
        """The benchmark's questions under ``data`` (either layout), with their ground truth.

        Image paths resolve against ``image_root`` (default: the layout's image folder), then
        ``data``; a path leaving its root is refused unless ``allow_outside_root``.
        ``options`` are benchmark-specific (``answers``/``metric`` of the ``llava`` benchmark).
        The variant, when the benchmark has variants, is recorded in ``Loaded.prompt``.
        """
        variant = self.check_variant(variant)
        data = Path(data)
        root = find_parquet_dir(data, self.lmms_names)
        if root is not None and "lmms" in self.layouts:
            src = Source(self, data, "lmms", root)
        else:
            src = Source(self, data, "llava", data, [self.image_base(data, image_root), data], allow_outside_root)
        try:
            loaded = self.read_lmms(src, variant) if src.layout == "lmms" else self.read_llava(src, variant)
        except (KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
            # a record without a field the benchmark needs, or of the wrong type: name the data read last
            where = src.files[-1] if src.files else str(data)
            what = f"no field {exc}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
            raise InvalidInputError(f"{where}: a {self.name} record does not fit the {src.layout} layout ({what})",
                                    src.hint) from None
        if self.variants:
            loaded.prompt.setdefault("variant", variant)
        return loaded

    def read_llava(self, src: Source, variant: str | None) -> Loaded:
        """Items of the LLaVA-1.5 playground / official-release layout (``src.root`` is ``--data``)."""
        raise NotImplementedError

    def read_lmms(self, src: Source, variant: str | None) -> Loaded:
        """Items of the lmms-eval parquet layout (``src.root`` is the data set's directory)."""
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
    mean is the unweighted mean over ``categories`` (macro), so a reader sees both. Without
    ``categories``, the rows' own ``category`` values (when any row has one) group the per-sample
    scores.
    """
    per = result.per_sample
    vals = [float(s.get("correct", s.get("score", 0.0))) for s in per]
    if overall is None and per:
        overall = 100.0 * sum(vals) / len(vals)
    if categories is None and any(r.get("category") is not None for r in rows):
        categories = category_table([r.get("category") for r in rows], vals)
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
    and ``data/ORG/NAME`` are looked at for both lmms-eval organisations. A name with its own
    organisation (``"echo840/OCRBench"``) is looked up under that one only.
    """
    if not data.is_dir():
        return None
    def orgs(name: str) -> list[tuple[str, str]]:
        return [tuple(name.split("/", 1))] if "/" in name else [(o, name) for o in LMMS_ORGS]  # type: ignore[list-item]

    if next(data.rglob("*.parquet"), None) is not None and not any(
            (data / f"datasets--{org}--{n}").exists() for name in names for org, n in orgs(name)):
        return data
    for name in names:
        for org, n in orgs(name):
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


def choice_options(choices: Sequence[Any]) -> dict[str, str]:
    """``{"A": first, "B": second, ...}`` of a list of option texts."""
    return {LETTERS[i]: str(c) for i, c in enumerate(choices)}


def option_lines(options: Iterable[tuple[str, Any]]) -> str:
    """``"\\nA. cat\\nB. dog"`` for ``[("A", "cat"), ("B", "dog")]`` (empty options left out)."""
    return "".join(f"\n{k}. {v}" for k, v in options if v is not None and str(v) != "" and v == v)


def question_file(data: Path, candidates: Sequence[str]) -> Path | None:
    """The first of ``candidates`` (relative to ``data``) that exists."""
    for c in candidates:
        if (data / c).is_file():
            return data / c
    return None


__all__ = ["LMMS_ORGS", "Benchmark", "ImageRef", "Item", "Loaded", "ParquetImages", "Source", "base64_image",
           "category_table", "choice_options", "columns", "confined", "find_parquet_dir", "image_bytes", "meta_column",
           "open_image", "option_lines", "parquet_files", "question_file", "read_json", "read_json_lines",
           "read_parquet", "read_tsv", "report", "resolve_image", "suffix_of"]
