"""Per-sample files, scores per (method, budget), resuming and merging ``meteor eval`` runs.

The per-sample file (``m0.json`` → ``m0.samples.jsonl``) is appended and flushed batch by
batch, one row per (setting, question): the item (prompt, ground truth, category, subcategory,
scorer extras), the output, token counts and time, and the run's id. Scores are always computed
from these rows, never from the data directory, so

* a rerun with the same ``--out`` reads the rows, checks they come from the same run, and
  generates only what is missing (a line cut by a kill is dropped);
* ``meteor eval merge`` concatenates the shards' rows, sorts them back into the unsharded order
  (``pos``) and scores them once: the result equals the unsharded run exactly, F1-type metrics
  included (they are not averages of shard scores).

When a run finishes, the file is rewritten (atomically) with ``parsed`` and ``correct``/``score``
added to every row.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from meteor_cli.errors import InputNotFoundError, InvalidInputError, UsageError

SAMPLES_SUFFIX = ".samples.jsonl"


def samples_path_for(out: Path) -> Path:
    """The default per-sample file of ``--out``: ``m0.json`` → ``m0.samples.jsonl``.

    Example:
        >>> samples_path_for(Path("runs/m0.json")).as_posix(), samples_path_for(Path("m")).as_posix()
        ('runs/m0.samples.jsonl', 'm.samples.jsonl')
    """
    stem = out.name[:-len(".json")] if out.name.endswith(".json") else out.name
    return out.with_name(stem + SAMPLES_SUFFIX)


def digest(obj: Any) -> str:
    """A short stable hash of a JSON-ready object (run ids, question-list fingerprints)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------
# The per-sample file
# ------------------------------------------------------------------------------------------------


def read_rows(path: Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """The rows of a per-sample file. A last line cut short by a kill is dropped (and, with
    ``repair``, cut from the file); a bad line elsewhere is an error naming it."""
    if not path.is_file():
        raise InputNotFoundError(f"{path}: no such file", "the shard's per-sample file must sit where it was written")
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    rows: list[dict[str, Any]] = []
    good_end = 0
    for i, line in enumerate(lines):
        if not line.strip():
            good_end += len(line) + 1
            continue
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            if i == len(lines) - 1:  # an unterminated last line: the write a kill interrupted
                break
            raise InvalidInputError(f"{path}:{i + 1}: not a JSON row", "the per-sample file is damaged; "
                                    "rerun with --restart to start over") from None
        if not isinstance(obj, dict):
            raise InvalidInputError(f"{path}:{i + 1}: not a JSON object", "rerun with --restart to start over")
        rows.append(obj)
        good_end += len(line) + 1
    if repair and good_end < len(raw):
        with path.open("r+b") as f:
            f.truncate(min(good_end, len(raw)))
    return rows


class SampleSink:
    """Where rows go while a run is going: a file (appended, flushed), stdout, or nowhere.

    ``path=None``: rows are kept in memory only (``--out -`` without ``--samples-out``).
    """

    def __init__(self, path: Path | None, run_id: str) -> None:
        self.path, self.run_id = path, run_id
        self.rows: list[dict[str, Any]] = []
        self._f: TextIO | None = None

    @property
    def to_stdout(self) -> bool:
        return self.path is not None and str(self.path) == "-"

    def resume(self, restart: bool = False) -> list[dict[str, Any]]:
        """Rows already written by this run (none with ``restart``, or when there is no file).

        Raises:
            InvalidInputError: the file holds rows of another run (other model, data, settings).
        """
        if self.path is None or self.to_stdout or not self.path.exists() or restart:
            return []
        rows = read_rows(self.path, repair=True)
        foreign = [r for r in rows if r.get("run") != self.run_id]
        if foreign:
            raise InvalidInputError(
                f"{self.path} holds {len(foreign)} row(s) of another run (run id {foreign[0].get('run')!r}, this run "
                f"{self.run_id!r}): model, data, limit, shard, methods or generation settings differ",
                "use another --out, or pass --restart to discard that file and start over")
        self.rows = rows
        return rows

    def open(self, restart: bool = False) -> None:
        if self.path is None:
            return
        if self.to_stdout:
            self._f = sys.stdout
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = self.path.open("w" if restart else "a", encoding="utf-8")

    def __call__(self, rows: list[dict[str, Any]]) -> None:
        self.rows.extend(rows)
        if self._f is not None:
            self._f.write("".join(json.dumps(r) + "\n" for r in rows))
            self._f.flush()

    def close(self) -> None:
        if self._f is not None and self._f is not sys.stdout:
            os.fsync(self._f.fileno())
            self._f.close()
        self._f = None

    def finalize(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Rewrite the file with the scored rows (atomically); nothing for stdout/memory."""
        self.close()
        if self.path is None or self.to_stdout:
            return
        from meteor_cli.artifacts import atomic_write

        atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in rows))


# ------------------------------------------------------------------------------------------------
# Scoring rows per setting
# ------------------------------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def token_stats(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean visual tokens into the LLM (after Stage 2), per encoder, layer-averaged (Stage 3), kept
    after each Stage-3 pruning layer (``stage3_per_layer``: layer → mean; empty without Stage 3), and
    the mean prompt text tokens (``text``; None for rows written before it was recorded)."""
    if not rows:
        return {"stage2_visual": None, "stage3_layer_averaged": None, "per_encoder": {}, "stage3_per_layer": {},
                "text": None}
    encs = list(rows[0].get("per_encoder", {}))
    per_layer: dict[int, list[float]] = {}
    for r in rows:
        for layer, k in zip(r["stage3"].get("layers", []), r["stage3"].get("kept", [])):
            per_layer.setdefault(int(layer), []).append(k)
    return {"stage2_visual": _mean([r["visual_tokens"] for r in rows]),
            "stage3_layer_averaged": _mean([r["stage3"]["layer_averaged"] for r in rows]),
            "per_encoder": {k: _mean([r["per_encoder"][k] for r in rows]) for k in encs},
            "stage3_per_layer": {str(p): _mean(v) for p, v in sorted(per_layer.items())},
            "text": _mean([r["text_tokens"] for r in rows if "text_tokens" in r])}


def score_setting(bench: Any, rows: Sequence[dict[str, Any]], protocol: str) -> tuple[dict[str, Any], list[dict]]:
    """Score one setting's rows: ``(report, rows with parsed/correct/score)``; skipped rows are counted."""
    rows = sorted(rows, key=lambda r: r["pos"])
    active = [r for r in rows if "skipped" not in r]
    skipped = [r for r in rows if "skipped" in r]
    if active:
        rep = bench.score_rows(active, protocol=protocol)
    else:
        rep = {"benchmark": bench.name, "metric": None, "value": None, "headline": "no answered questions",
               "n": 0, "n_unparsed": 0, "overall": None, "category_mean": None, "categories": {}, "per_sample": []}
    per = {s["qid"]: s for s in rep.pop("per_sample", [])}
    out_rows = []
    for r in rows:
        s = per.get(r["question_id"])
        r = {k: v for k, v in r.items() if k not in ("parsed", "correct", "score")}
        if s is not None:
            r.update({k: s[k] for k in ("parsed", "correct", "score") if k in s})
        out_rows.append(r)
    rep["n_skipped"] = len(skipped)
    rep["skipped_examples"] = [{"question_id": r["question_id"], "reason": r["skipped"]} for r in skipped[:5]]
    return rep, out_rows


def summarize(bench: Any, rows: Sequence[dict[str, Any]], settings: Sequence[Any], protocol: str,
              flops: Mapping[str, Any] | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One result per setting (in ``settings`` order) and all rows scored, in (setting, pos) order."""
    results, scored = [], []
    for s in settings:
        mine = [r for r in rows if r.get("method") == s.method and r.get("budget") == s.budget]
        rep, out_rows = score_setting(bench, mine, protocol)
        active = [r for r in out_rows if "skipped" not in r]
        res = {"benchmark": bench.name, "method": s.method, "budget": s.budget, "label": s.label,
               "n": rep["n"], "metrics": rep, "tokens": token_stats(active),
               "seconds_per_sample": _mean([r["seconds"] for r in active])}
        if flops is not None and s.label in flops:
            res["flops"] = flops[s.label]
        results.append(res)
        scored.extend(out_rows)
    return results, scored


# ------------------------------------------------------------------------------------------------
# Merging shards
# ------------------------------------------------------------------------------------------------


def shard_items(items: Sequence[Any], num_chunks: int, chunk_idx: int) -> list[tuple[int, Any]]:
    """``(pos, item)`` of shard ``chunk_idx`` of ``num_chunks``: ``ceil(n / num_chunks)``-sized
    chunks as LLaVA's ``split_list``, except that an item group (``Item.group``: MME's image
    pair, MMBench's rotations) always goes to the shard of its first member.

    Example:
        >>> from types import SimpleNamespace as S
        >>> items = [S(group=g) for g in (None, "a", "a", None, None)]
        >>> [p for p, _ in shard_items(items, 2, 0)], [p for p, _ in shard_items(items, 2, 1)]
        ([0, 1, 2], [3, 4])
    """
    if not 0 <= chunk_idx < num_chunks:
        raise UsageError(f"--chunk-idx {chunk_idx} must be below --num-chunks {num_chunks}")
    size = -(-len(items) // num_chunks) or 1
    first: dict[Any, int] = {}
    out = []
    for pos, it in enumerate(items):
        g = getattr(it, "group", None)
        start = pos if g is None else first.setdefault(g, pos)
        if start // size == chunk_idx:
            out.append((pos, it))
    return out


def merge_shards(parts: Sequence[Path]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Check that ``parts`` are all the shards of one run; return ``(bodies, rows, row_files)``.

    Refused: a part that is not a shard metrics file of ``meteor eval``, shards of different runs
    (benchmark, data, model, settings or shard count differ: the first difference is named),
    a repeated or missing shard, or a shard whose per-sample file is incomplete or foreign.
    """
    from meteor_cli.artifacts import read_artifact

    bodies = []
    for p in parts:
        body = read_artifact(p, "meteor.metrics", what="shard").body
        run = (body.get("settings") or {}).get("run")
        if not isinstance(run, dict) or "identity" not in run:
            raise InvalidInputError(f"{p}: not a shard written by `meteor eval` (no settings.run)",
                                    "merge the metrics files the shards wrote (--out of each shard)")
        bodies.append((Path(p), body, run))
    ref_path, _, ref = bodies[0]
    for p, _, run in bodies[1:]:
        for key in sorted(set(ref["identity"]) | set(run["identity"])):
            if ref["identity"].get(key) != run["identity"].get(key):
                raise InvalidInputError(
                    f"{p} and {ref_path} are shards of different runs: {key} differs "
                    f"({_short(run['identity'].get(key))} vs {_short(ref['identity'].get(key))})",
                    "merge only the shards of one run (same benchmark, data, model, settings, --num-chunks)")
        if run.get("protocol") != ref.get("protocol"):
            raise InvalidInputError(f"{p} was scored with protocol {run.get('protocol')!r}, {ref_path} with "
                                    f"{ref.get('protocol')!r}", "pass --protocol to merge to rescore all shards alike")
    n = ref["identity"]["num_chunks"]
    seen: dict[int, Path] = {}
    for p, _, run in bodies:
        k = run["chunk_idx"]
        if k in seen:
            raise InvalidInputError(f"shard {k} of {n} given twice ({seen[k]} and {p})", "pass each shard once")
        seen[k] = p
    missing = [k for k in range(n) if k not in seen]
    if missing:
        raise InvalidInputError(f"shard(s) {', '.join(map(str, missing))} of {n} missing "
                                f"(given: {', '.join(map(str, sorted(seen)))})",
                                "run the missing shards (same command with --chunk-idx K) and merge all of them")
    rows: list[dict[str, Any]] = []
    for p, body, run in sorted(bodies, key=lambda b: b[2]["chunk_idx"]):
        sp = p.parent / run["samples"] if run.get("samples") else None
        if sp is None:
            raise InvalidInputError(f"{p}: this shard kept no per-sample file (it was run with --out -)",
                                    "rerun the shard with --out FILE so that its rows are kept")
        part_rows = read_rows(sp)
        foreign = [r for r in part_rows if r.get("run") != run["id"]]
        if foreign:
            raise InvalidInputError(f"{sp}: {len(foreign)} row(s) are not from the run {p} describes",
                                    "the per-sample file was overwritten; rerun that shard")
        if len(part_rows) != run["n_planned"]:
            raise InvalidInputError(f"{sp}: shard {run['chunk_idx']} is incomplete ({len(part_rows)} of "
                                    f"{run['n_planned']} samples)", "rerun it with the same --out to finish it")
        rows.extend(part_rows)
    return [b for _, b, _ in bodies], rows, [{"path": str(p)} for p, _, _ in bodies]


def _short(v: Any) -> str:
    s = json.dumps(v, default=str)
    return s if len(s) <= 80 else s[:77] + "..."


__all__ = ["SAMPLES_SUFFIX", "SampleSink", "digest", "merge_shards", "read_rows", "samples_path_for",
           "score_setting", "shard_items", "summarize", "token_stats"]
