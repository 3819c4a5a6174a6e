"""LLaVA-format instruction data, streamed: records, deterministic samples, shards, images.

The LLaVA-1.5 instruction set is one JSON list of 665k records (about 1 GB); meteor never loads
it whole. A record looks like::

    {"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat are the colors of the bus?"},
                       {"from": "gpt", "value": "The bus is white and red."}]}

Files may be a JSON list (``.json``) or one record per line (``.jsonl``); both are read
incrementally. Records without ``image`` are text-only and are skipped (and counted) by the
stages that need images.

Sampling is deterministic from a seed, and the sampled record ids are what artifacts store, so
a run can be repeated exactly::

    sample = sample_records("train.json", fraction=0.001, seed=0)   # → Sample(indices, ids, ...)
    for rec in iter_selected("train.json", sample.indices): ...
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meteor_cli.errors import InputNotFoundError, InvalidInputError, UsageError

_CHUNK = 1 << 20


def iter_json_records(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Yield the objects of a JSON list or a JSONL file, reading 1 MiB at a time.

    Raises:
        InputNotFoundError: the file is missing (exit code 3).
        InvalidInputError: the content is neither a JSON list of objects nor JSONL (exit code 4),
            naming the record number where parsing failed.
    """
    p = Path(path)
    if not p.is_file():
        raise InputNotFoundError(f"data file {str(path)!r} does not exist",
                                 "pass a LLaVA-format JSON or JSONL file with --data")
    decoder = json.JSONDecoder()
    with open(p, encoding="utf-8") as f:
        buf = _read_text(f, p)
        pos = _skip_ws(buf, 0)
        is_list = buf[pos:pos + 1] == "["
        if is_list:
            pos += 1
        n = 0
        while True:
            pos = _skip_ws(buf, pos)
            if is_list and buf[pos:pos + 1] == ",":
                pos = _skip_ws(buf, pos + 1)
            if pos >= len(buf):
                more = _read_text(f, p)
                if not more:
                    if is_list:
                        raise InvalidInputError(f"{p}: the JSON list is not closed (file truncated?)",
                                                "check that the file was copied completely")
                    return
                buf, pos = buf[pos:] + more, 0
                continue
            if is_list and buf[pos] == "]":
                return
            try:
                obj, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as exc:
                more = _read_text(f, p)
                if more:  # the object straddles the buffer end: read on and retry
                    buf, pos = buf[pos:] + more, 0
                    continue
                raise InvalidInputError(
                    f"{p}: record {n} is not valid JSON ({exc.msg})",
                    "the file must be a JSON list of records or one JSON object per line (JSONL)",
                ) from None
            if not isinstance(obj, dict):
                raise InvalidInputError(f"{p}: record {n} is a {type(obj).__name__}, not an object",
                                        "each record is an object with `image` and `conversations`")
            yield obj
            n += 1
            pos = end
            if pos > _CHUNK:  # keep the buffer small
                buf, pos = buf[pos:], 0


def _read_text(f: Any, path: Path) -> str:
    """The next chunk of a data file; a non-UTF-8 byte is a named error (exit 4), not a crash."""
    try:
        return f.read(_CHUNK)
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} cannot be decoded)",
                                "convert it to UTF-8 (e.g. `iconv -f latin1 -t utf-8`)") from None


def conversation_turns(record: dict[str, Any], index: int, path: str | os.PathLike[str] | None = None
                       ) -> list[tuple[str, str]]:
    """The ``(from, value)`` turns of a LLaVA record, checked: ``conversations`` must be a list of
    objects whose ``from`` and ``value`` are strings. Every reader of conversations goes through
    here, so a malformed record is one named error (exit 4) naming the record and the turn."""
    where = f"{path}: record {record_id(record, index)}" if path else f"record {record_id(record, index)}"
    conv = record.get("conversations")
    if conv is None:
        return []
    if not isinstance(conv, list):
        raise InvalidInputError(f"{where}: 'conversations' is {type(conv).__name__}, not a list of turns",
                                'write it as [{"from": "human", "value": "..."}, {"from": "gpt", "value": "..."}]')
    turns = []
    for t, turn in enumerate(conv):
        if not isinstance(turn, dict):
            raise InvalidInputError(f"{where}: conversations[{t}] is {type(turn).__name__}, not an object",
                                    'each turn is {"from": "human" | "gpt", "value": "text"}')
        for key in ("from", "value"):
            if key not in turn:
                raise InvalidInputError(f"{where}: conversations[{t}] has no {key!r}",
                                        'each turn is {"from": "human" | "gpt", "value": "text"}')
            if not isinstance(turn[key], str):
                raise InvalidInputError(f"{where}: conversations[{t}].{key} is {type(turn[key]).__name__}, not a string",
                                        'each turn is {"from": "human" | "gpt", "value": "text"}')
        turns.append((turn["from"], turn["value"]))
    return turns


def _skip_ws(buf: str, pos: int) -> int:
    while pos < len(buf) and buf[pos] in " \t\r\n":
        pos += 1
    return pos


def record_id(record: dict[str, Any], index: int) -> str:
    """The record's ``id`` (or ``question_id``), else its 0-based position in the file."""
    rid = record.get("id", record.get("question_id"))
    return str(rid) if rid is not None else f"#{index}"


@dataclass(frozen=True)
class Sample:
    """A deterministic selection of image records of one data file."""

    indices: list[int]  # positions in the file, ascending
    ids: list[str]  # record ids, same order
    n_records: int  # records in the file
    n_without_image: int  # text-only records, never sampled
    #: Records not eligible because an earlier record has the same (resolved) image; 0 unless
    #: the sample was drawn with ``distinct_images``.
    n_duplicate_images: int = 0

    @property
    def population(self) -> int:
        """How many candidates the sample was drawn from (image records, or distinct images)."""
        return self.n_records - self.n_without_image - self.n_duplicate_images

    def shard(self, num_chunks: int, chunk_idx: int) -> Sample:
        """Chunk ``chunk_idx`` of ``num_chunks`` contiguous chunks of size ceil(n/num_chunks),
        as LLaVA's ``--num-chunks/--chunk-idx`` (so a SLURM array maps one task to one chunk)."""
        if num_chunks < 1 or not 0 <= chunk_idx < num_chunks:
            raise UsageError(f"--chunk-idx {chunk_idx} is outside 0..{num_chunks - 1}",
                             "use 0-based chunk indices below --num-chunks")
        size = math.ceil(len(self.indices) / num_chunks) if self.indices else 0
        sl = slice(chunk_idx * size, (chunk_idx + 1) * size)
        return Sample(self.indices[sl], self.ids[sl], self.n_records, self.n_without_image, self.n_duplicate_images)


def sample_records(
    path: str | os.PathLike[str], *, fraction: float | None = None, count: int | None = None, seed: int = 0,
    distinct_images: bool = False, image_root: str | os.PathLike[str] | None = None,
) -> Sample:
    """Choose image records deterministically from ``seed``: a ``fraction`` or an exact ``count``.

    One streaming pass collects the positions and ids of the image records (a few MB even for
    665k records), then a seeded NumPy generator picks ``k = max(1, round(fraction·n))`` (or ``count``)
    of them without replacement. Same file, same seed → same sample, on any machine.

    With ``distinct_images`` the candidates are *images*, not records: LLaVA-665k asks several
    conversations about one COCO image, and Stage-1 calibration samples images. Records are
    keyed by their resolved image path (against ``image_root``, default :func:`image_root_for`;
    ``..`` and symlinks followed) and only the first record of each image is a candidate; the
    others are counted in ``n_duplicate_images``. ``fraction`` is then a fraction of the distinct
    images.
    """
    import numpy as np

    if (fraction is None) == (count is None):
        raise UsageError("give exactly one of a sample fraction and a count", "use --sample F or --count N")
    root = image_root_for(path, image_root) if distinct_images else None
    seen: set[str] = set()
    positions: list[int] = []
    ids: list[str] = []
    n = n_image = 0
    for n, rec in enumerate(iter_json_records(path), start=1):
        if rec.get("image"):
            n_image += 1
            if root is not None:
                key = os.path.realpath(os.path.join(root, str(rec["image"])))
                if key in seen:
                    continue
                seen.add(key)
            positions.append(n - 1)
            ids.append(record_id(rec, n - 1))
    if not positions:
        raise InvalidInputError(f"{path}: none of its {n} records has an `image`",
                                "pass the multimodal instruction data (records with `image` paths)")
    total = len(positions)
    if count is not None:
        k = min(count, total)
    else:
        if not 0 < fraction <= 1:  # type: ignore[operator]
            raise UsageError(f"--sample {fraction} must be in (0, 1]", "e.g. --sample 0.001 for 0.1 %")
        k = max(1, round(fraction * total))  # type: ignore[operator]
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(total, size=k, replace=False))
    return Sample([positions[i] for i in chosen], [ids[i] for i in chosen], n, n - n_image, n_image - total)


def iter_selected(path: str | os.PathLike[str], indices: Sequence[int]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Stream ``(index, record)`` for the given ascending file positions only."""
    wanted = iter(indices)
    nxt = next(wanted, None)
    for i, rec in enumerate(iter_json_records(path)):
        if nxt is None:
            return
        if i == nxt:
            yield i, rec
            nxt = next(wanted, None)


class ImageOutsideRootError(InvalidInputError):
    """A record's image path leaves the image root (``../``, an absolute path, a symlink) (exit 4)."""


def image_root_for(data: str | os.PathLike[str], image_root: str | os.PathLike[str] | None = None) -> Path:
    """The directory a data set's ``image`` paths are relative to — one rule for every command.

    1. ``--image-root`` when given;
    2. else the data's directory: ``data`` itself when it is a directory (a benchmark directory),
       otherwise the directory holding the data file;
    3. except that a directory named ``eval`` stands for its parent: ``meteor synth`` (and the
       benchmark loaders) keep ``DIR/eval/questions.jsonl`` next to ``DIR/images/``, with image
       paths relative to ``DIR``. So ``eval --data DIR``, ``eval --data DIR/eval``,
       ``infer --questions DIR/eval/questions.jsonl`` and ``train --data DIR/train.json`` all
       read images from ``DIR``.

    >>> str(image_root_for("sv/train.json")), str(image_root_for("sv/eval/questions.jsonl"))
    ('sv', 'sv')
    >>> str(image_root_for("sv/eval/questions.jsonl", "/data/images"))
    '/data/images'
    """
    if image_root is not None:
        return Path(image_root)
    p = Path(data)
    d = p if p.is_dir() else p.parent
    if d.name != "eval" and Path(os.path.abspath(d)).name == "eval":  # "." or "" inside an eval/ folder
        d = Path(os.path.abspath(d))
    return d.parent if d.name == "eval" else d


def resolve_image(
    record: dict[str, Any],
    image_root: str | os.PathLike[str],
    *,
    index: int | None = None,
    allow_outside_root: bool = False,
) -> Path:
    """The image file of a record: its ``image`` path, relative to ``image_root`` unless absolute.

    By default the path must stay inside ``image_root``: the joined path is resolved (``..`` and
    symlinks followed) and then checked, so ``../secret.png``, ``/etc/passwd`` and a symlink
    pointing outside are refused; the resolved path is returned, so what is opened is what was
    checked. ``allow_outside_root`` (the ``--allow-outside-root`` flag) skips the check, for data
    whose JSON holds absolute paths elsewhere.

    Args:
        record: the data record (its ``image`` field).
        image_root: the directory from :func:`image_root_for`.
        index: the record's position in its file, for error messages.
        allow_outside_root: read paths outside ``image_root`` too.

    Raises:
        InvalidInputError: ``image`` is not a non-empty string (exit 4).
        ImageOutsideRootError: the path leaves ``image_root`` (exit 4), naming the record and path.
    """
    rid = record.get("id", record.get("question_id"))
    where = "record" + (f" #{index}" if index is not None else "") + (f" (id {rid})" if rid is not None else "")
    raw = record.get("image")
    if not isinstance(raw, str) or not raw.strip() or "\0" in raw:
        raise InvalidInputError(f"{where}: `image` is {raw!r}, not a file path",
                                "each image record's `image` is a path string relative to --image-root")
    root = Path(image_root)
    img = Path(raw)
    joined = img if img.is_absolute() else root / img
    if allow_outside_root:
        return joined
    real_root = root.resolve()
    real = joined.resolve()
    if real != real_root and not real.is_relative_to(real_root):
        why = ("is absolute" if img.is_absolute() else "climbs out with `..`" if ".." in img.parts
               else "is a symlink (or under one) pointing outside")
        raise ImageOutsideRootError(
            f"{where}: image {raw!r} {why}: it resolves to {real}, outside the image root {real_root}",
            "fix the path, pass the right --image-root, or add --allow-outside-root if the data is trusted")
    return real


class UnreadableImageError(OSError):
    """An image file that exists but cannot be decoded (corrupt, truncated, not an image, or a
    decompression bomb above PIL's pixel limit). An ``OSError``, so every caller that counts and
    skips unreadable images (``--max-failed``) treats all of these alike."""


def load_image(path: str | os.PathLike[str]):  # -> PIL.Image.Image
    """Open an image as RGB, fully decoded (so truncated files fail here, not later).

    This is the one place meteor opens images. Raises OSError (missing file, unreadable or
    corrupt image, or an :class:`UnreadableImageError` for anything PIL refuses: a decompression
    bomb such as a 225-megapixel image, a malformed header); callers count and skip those.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except OSError:
        raise
    except Image.DecompressionBombError as exc:
        raise UnreadableImageError(f"{path}: {exc}") from None
    except (ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError, MemoryError) as exc:
        raise UnreadableImageError(f"{path}: cannot decode the image ({type(exc).__name__}: {exc})") from None


__all__ = ["ImageOutsideRootError", "Sample", "UnreadableImageError", "conversation_turns", "image_root_for",
           "iter_json_records", "iter_selected", "load_image", "record_id", "resolve_image", "sample_records"]
