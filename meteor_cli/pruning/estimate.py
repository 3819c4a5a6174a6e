"""Stage-1 calibration: the rank of every encoder's feature maps at every pruning point.

Runs each encoder *unpruned* on a seeded sample of image records (streamed, never loading the
data set), and accumulates per-point ranks with exactly mergeable statistics, so shards
(``--num-chunks/--chunk-idx``, SLURM arrays, torchrun ranks) merge to the unsharded result.

The body written to ``ranks.json`` (``meteor.ranks/v1``)::

    method, grid, n_images, n_failed, failed (ids), n_text_only,
    sample: {data, seed, fraction, count, ids, num_chunks, chunk_idx},
    encoders: {name: {points, rank (mean per point), std, n_images, tokens, stats: [{n, mean, m2}, …]}}
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meteor_cli.data.llava import load_image, record_id, resolve_image
from meteor_cli.errors import InvalidInputError, UsageError
from meteor_cli.pruning.rank import RunningStats, feature_rank


def image_tensor(im: Any, size: int) -> torch.Tensor:
    """PIL image → (3, size, size) float tensor in [0, 1] (bilinear resize)."""
    from PIL import Image

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
) -> dict[str, Any]:
    """Accumulate ranks over ``records`` ((index, record) pairs); returns the artifact body."""
    size = max(e.cfg.image_size for e in vlm.encoders.values())
    stats = {n: [RunningStats() for _ in e.prune_points] for n, e in vlm.encoders.items()}
    failed: list[str] = []
    n_ok = 0
    batch: list[torch.Tensor] = []

    def flush() -> None:
        nonlocal n_ok
        if not batch:
            return
        images = torch.stack(batch).to(device)
        for name, adapter in vlm.encoders.items():
            state = adapter.embed(adapter.preprocess(images))
            start = 0
            for j, b in enumerate(adapter.prune_points):
                state = adapter.run_blocks(state, start, b + 1)
                start = b + 1
                stats[name][j].update(feature_rank(adapter.feature_map(state).float(), method, grid).cpu())
        n_ok += len(batch)
        if progress is not None:
            progress(len(batch))
        batch.clear()

    for i, rec in records:
        try:
            batch.append(image_tensor(load_image(resolve_image(rec, image_root)), size))
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


def merge_bodies(bodies: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine shard bodies exactly (means and stds as if computed in one run)."""
    if not bodies:
        raise UsageError("nothing to merge", "pass the part files: meteor rank-estimate merge PART...")
    first = bodies[0]
    for b in bodies[1:]:
        if (b["method"], b["grid"], sorted(b["encoders"])) != (first["method"], first["grid"], sorted(first["encoders"])):
            raise InvalidInputError("the parts were computed with different methods, grids or encoders",
                                    "merge only the shards of one run")
        if b.get("sample", {}).get("data") != first.get("sample", {}).get("data"):
            raise InvalidInputError("the parts come from different data files", "merge only the shards of one run")
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

