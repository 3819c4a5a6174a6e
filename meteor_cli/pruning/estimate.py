"""Stage-1 calibration: the rank of every encoder's feature maps at every pruning point.

Runs each encoder *unpruned* on a seeded sample of distinct images (streamed, never loading the
data set), and accumulates per-point ranks with exactly mergeable statistics, so shards
(``--num-chunks/--chunk-idx``, SLURM arrays, torchrun ranks) merge to the unsharded result.

The body written to ``ranks.json`` (``meteor.ranks/v1``)::

    method, grid, n_images, n_failed, failed (ids), n_text_only,
    sample: {data, data_sha256, seed, fraction, count, distinct_images, population_images,
             duplicate_image_records, n_sampled, sample_sha256, model: {spec, config_sha256,
             weights_sha256}, ids, num_chunks, chunk_idx},
    encoders: {name: {points, rank (mean per point), std, n_images, tokens, stats: [{n, mean, m2}, …]}}

``n_sampled`` and ``sample_sha256`` describe the whole sample (all shards); ``ids`` are this
shard's. :func:`merge_parts` checks every one of these before it merges, so a missing or
duplicated shard, or shards of another seed, model, data file, ``--count``/``--sample`` or
method, are refused by name instead of merging into wrong numbers.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meteor_cli.data.llava import load_image, record_id, resolve_image
from meteor_cli.errors import InputNotFoundError, InvalidInputError, UsageError
from meteor_cli.pruning.rank import RunningStats, feature_rank


def image_tensor(im: Any, size: int, *, mode: str = "stretch", fill: Sequence[float] = (0.5, 0.5, 0.5)) -> torch.Tensor:
    """PIL image → (3, size, size) float tensor in [0, 1].

    ``stretch``: bilinear resize to the square. ``pad`` (LLaVA/EAGLE ``image_aspect_ratio: pad``): the
    image pasted at the centre of a square of colour ``int(fill·255)`` (CLIP's mean: 122, 116, 104),
    then a bicubic resize of the uint8 image, as ``CLIPImageProcessor`` does it.
    """
    from PIL import Image

    if mode == "pad":
        w, h = im.size
        if w != h:
            side = max(w, h)
            square = Image.new(im.mode, (side, side), tuple(int(c * 255) for c in fill))
            square.paste(im, ((side - w) // 2, (side - h) // 2))
            im = square
        arr = np.asarray(im.resize((size, size), Image.BICUBIC) if im.size != (size, size) else im,
                         dtype=np.float32) / 255.0
    else:
        arr = np.asarray(im.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


@torch.no_grad()
def estimate_ranks(
    vlm: Any,
    records: Iterable[tuple[int, dict[str, Any]]],
    image_root: str | Path,
    *,
    method: str = "nuclear",
    grid: int = 32,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
    allow_outside_root: bool = False,
) -> dict[str, Any]:
    """Accumulate ranks over ``records`` ((index, record) pairs); returns the artifact body.

    Unreadable images are skipped and counted; an image path outside ``image_root`` is an error
    unless ``allow_outside_root`` (see :func:`~meteor_cli.data.llava.resolve_image`). A model whose
    ``image_tensor`` gives several crops per image (LLaVA-NeXT's anyres tiles) has each crop
    counted as one sample of the rank statistics (``n_images`` still counts images).
    """
    stats = {n: [RunningStats() for _ in e.prune_points] for n, e in vlm.encoders.items()}
    failed: list[str] = []
    n_ok = 0
    batch: list[torch.Tensor] = []

    def flush() -> None:
        nonlocal n_ok
        if not batch:
            return
        # (3, S, S) per image, or (tiles, 3, S, S) for LLaVA-NeXT's anyres tiles: each tile one sample
        images = torch.cat([t.unsqueeze(0) if t.dim() == 3 else t for t in batch]).to(device)
        for name, adapter in vlm.encoders.items():
            def observe(j: int, state: Any, _name: str = name, _adapter: Any = adapter) -> None:
                stats[_name][j].update(feature_rank(_adapter.feature_map(state).float(), method, grid).cpu())

            points = adapter.prune_points
            adapter.run_pruned(adapter.embed(adapter.preprocess(images)), name, observe=observe,
                               end=points[-1] + 1 if points else 0)
        n_ok += len(batch)
        if progress is not None:
            progress(len(batch))
        batch.clear()

    for i, rec in records:
        path = resolve_image(rec, image_root, index=i, allow_outside_root=allow_outside_root)
        try:
            batch.append(vlm.image_tensor(load_image(path)))
        except OSError as exc:
            failed.append(record_id(rec, i))
            warnings.warn(f"skipping record {record_id(rec, i)}: cannot read its image ({exc})", stacklevel=2)
            if progress is not None:
                progress(1)
            continue
        if len(batch) == batch_size:
            flush()
    flush()
    return {
        "method": method, "grid": grid, "n_images": n_ok, "n_failed": len(failed), "failed": failed,
        "encoders": {n: _summary(stats[n], e) for n, e in vlm.encoders.items()},
    }


def _summary(points: list[RunningStats], adapter: Any) -> dict[str, Any]:
    return {"points": adapter.prune_points, "rank": [s.mean for s in points], "std": [s.std for s in points],
            "n_images": points[0].n if points else 0, "tokens": adapter.num_tokens,
            "stats": [s.to_dict() for s in points]}


class ShardMismatchError(InvalidInputError):
    """Rank-estimate parts that do not belong to one run (another seed, model, data, …) (exit 4)."""


class DuplicateShardError(InvalidInputError):
    """The same shard (``chunk_idx``) was passed twice to ``rank-estimate merge`` (exit 4)."""


class MissingShardError(InputNotFoundError):
    """A shard of the run was not passed to ``rank-estimate merge`` (exit 3)."""


#: ``sample`` fields every part must carry and all parts must agree on (besides ids/chunk_idx).
RUN_FIELDS = ("data_sha256", "seed", "fraction", "count", "distinct_images", "model", "num_chunks", "n_sampled",
              "sample_sha256")


def ids_sha256(ids: Sequence[str]) -> str:
    """A digest of an ordered list of record ids (what ``sample.sample_sha256`` holds)."""
    h = hashlib.sha256()
    for i in ids:
        h.update(str(i).encode() + b"\0")
    return h.hexdigest()


def model_identity(spec: str, vlm: Any, weights_sha256: str | None) -> dict[str, Any]:
    """What identifies the model a part was computed with: the spec, a digest of its resolved
    configuration, and of its weight files (None for a preset, initialised from ``--seed``)."""
    resolved = vlm.cfg.to_dict() if hasattr(vlm, "cfg") else vlm.hf.config.to_dict()  # a transformers VLM: its config
    cfg = json.dumps(resolved, sort_keys=True, default=str)
    return {"spec": spec, "config_sha256": hashlib.sha256(cfg.encode()).hexdigest(), "weights_sha256": weights_sha256}


def _encoders_signature(body: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    return [(n, e.get("points"), e.get("tokens")) for n, e in body["encoders"].items()]


def _short(v: Any) -> str:
    text = json.dumps(v, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def check_parts(parts: Sequence[tuple[str, dict[str, Any]]], schemas: Sequence[str] | None = None) -> list[int]:
    """Check that ``parts`` ((name, body) pairs) are exactly the shards of one run.

    Returns the order of the parts by ``chunk_idx``. Every part records its run (see the module
    docstring); all of it must agree, each ``chunk_idx`` of ``0..num_chunks-1`` must appear
    exactly once, and the shards' ids, in chunk order, must be the run's sample (its digest).

    Raises:
        ShardMismatchError: a part lacks the run fields (an older meteor, or an already merged
            file), or differs from the first in schema, method, grid, encoders or a run field.
        DuplicateShardError: two parts have the same ``chunk_idx``.
        MissingShardError: a ``chunk_idx`` below ``num_chunks`` is absent.
    """
    if not parts:
        raise UsageError("nothing to merge", "pass the part files: meteor rank-estimate merge PART...")
    for name, body in parts:
        sample = body.get("sample")
        if not isinstance(sample, dict) or "chunk_idx" not in sample:
            raise ShardMismatchError(f"{name} is not a rank-estimate shard (its `sample` has no chunk_idx: "
                                     "an already merged file, or written by an older meteor)",
                                     "merge the shard files written by `meteor rank-estimate --num-chunks N "
                                     "--chunk-idx K`; recompute shards written by an older meteor")
        absent = [f for f in RUN_FIELDS + ("ids",) if f not in sample]
        if absent:
            raise ShardMismatchError(f"{name}: sample.{absent[0]} is missing ({len(absent)} run field(s) absent: "
                                     f"{', '.join(absent)}); it was written by an older meteor",
                                     "recompute the shard with this meteor, then merge")
    name0, first = parts[0]

    def differ(name: str, field: str, a: Any, b: Any) -> ShardMismatchError:
        return ShardMismatchError(f"{name} and {name0} come from different runs: {field} is {_short(b)} vs {_short(a)}",
                                  "merge only the shards of one run (same --model, --data, --seed, "
                                  "--count/--sample, --method, --grid and --num-chunks)")

    for k, (name, body) in enumerate(parts):
        if schemas is not None and schemas[k] != schemas[0]:
            raise differ(name, "schema", schemas[0], schemas[k])
        for field in ("method", "grid"):
            if body.get(field) != first.get(field):
                raise differ(name, field, first.get(field), body.get(field))
        if _encoders_signature(body) != _encoders_signature(first):
            raise differ(name, "encoders (names, points, tokens)", _encoders_signature(first), _encoders_signature(body))
        for field in RUN_FIELDS:
            if body["sample"][field] != first["sample"][field]:
                label = "model" if field == "model" else f"sample.{field}"
                raise differ(name, label, first["sample"][field], body["sample"][field])
    num_chunks = first["sample"]["num_chunks"]
    owner: dict[int, str] = {}
    for name, body in parts:
        idx = body["sample"]["chunk_idx"]
        if not isinstance(idx, int) or not 0 <= idx < num_chunks:
            raise ShardMismatchError(f"{name}: sample.chunk_idx {idx!r} is outside 0..{num_chunks - 1}",
                                     "the file was edited or damaged; recompute the shard")
        if idx in owner:
            same = " (the same file twice)" if Path(owner[idx]).resolve() == Path(name).resolve() else ""
            raise DuplicateShardError(f"shard {idx} of {num_chunks} was given twice: {owner[idx]} and {name}{same}",
                                      "pass each shard once: meteor rank-estimate merge PART_0 … PART_{N-1}")
        owner[idx] = name
    missing = [i for i in range(num_chunks) if i not in owner]
    if missing:
        raise MissingShardError(f"shard(s) {', '.join(map(str, missing))} of {num_chunks} missing: "
                                f"got {len(owner)} part(s)",
                                "pass every shard (rerun the failed array tasks with --chunk-idx K), "
                                "or merge nothing until all are done")
    order = sorted(range(len(parts)), key=lambda k: parts[k][1]["sample"]["chunk_idx"])
    ids = [i for k in order for i in parts[k][1]["sample"]["ids"]]
    if len(ids) != first["sample"]["n_sampled"] or ids_sha256(ids) != first["sample"]["sample_sha256"]:
        raise ShardMismatchError(f"the shards' record ids ({len(ids)}) are not the sample they were drawn from "
                                 f"({first['sample']['n_sampled']} ids, digest sample.sample_sha256)",
                                 "a part was edited or damaged; recompute it")
    for k in order:
        name, body = parts[k]
        if body["n_images"] + body["n_failed"] != len(body["sample"]["ids"]):
            raise ShardMismatchError(f"{name}: n_images {body['n_images']} + n_failed {body['n_failed']} is not "
                                     f"its {len(body['sample']['ids'])} sampled ids", "recompute the shard")
    return order


def merge_parts(parts: Sequence[tuple[str, dict[str, Any]]], schemas: Sequence[str] | None = None) -> dict[str, Any]:
    """Check (:func:`check_parts`) and merge shard bodies, in chunk order, exactly."""
    order = check_parts(parts, schemas)
    return merge_bodies([parts[k][1] for k in order])


def merge_bodies(bodies: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine shard bodies exactly (means and stds as if computed in one run).

    No consistency checks: use :func:`merge_parts` for files a user passes.
    """
    if not bodies:
        raise UsageError("nothing to merge", "pass the part files: meteor rank-estimate merge PART...")
    first = bodies[0]
    encoders = {}
    for name, enc in first["encoders"].items():
        merged = [RunningStats() for _ in enc["points"]]
        for b in bodies:
            for j, s in enumerate(b["encoders"][name]["stats"]):
                merged[j].merge(RunningStats.from_dict(s))
        encoders[name] = {"points": enc["points"], "rank": [s.mean for s in merged], "std": [s.std for s in merged],
                          "n_images": merged[0].n if merged else 0, "tokens": enc["tokens"],
                          "stats": [s.to_dict() for s in merged]}
    sample = dict(first.get("sample", {}))
    sample["ids"] = [i for b in bodies for i in b.get("sample", {}).get("ids", [])]
    sample.pop("chunk_idx", None)
    sample["num_chunks"] = len(bodies)
    return {
        "method": first["method"], "grid": first["grid"],
        "n_images": sum(b["n_images"] for b in bodies), "n_failed": sum(b["n_failed"] for b in bodies),
        "failed": [f for b in bodies for f in b.get("failed", [])],
        "n_text_only": first.get("n_text_only", 0), "sample": sample, "encoders": encoders,
    }
