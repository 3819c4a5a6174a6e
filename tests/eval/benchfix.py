"""Helpers for benchmark tests: SynthVQA images the embedded `tiny-synthvqa` model answers predictably.

The first 16 questions of SynthVQA (seed 0) and what `tiny-synthvqa` answers to them with the short-answer
instruction (greedy; the benchmark tests assert the outputs they rely on). Benchmark fixtures reuse these
images and questions in each benchmark's own file layout, so the expected scores can be worked out by hand.
"""

from __future__ import annotations

from pathlib import Path


#: pos → (question, tiny-synthvqa's answer, SynthVQA's ground truth)
SYNTH = {
    0: ("What shape is the blue object?", "circle", "circle"),
    1: ("Is there a green circle in the image?", "yes", "yes"),
    3: ("Is bar B taller than bar D?", "no", "no"),
    4: ("Is the orange square on the left or on the right?", "right", "right"),
    5: ("Is there a red circle in the image?", "yes", "yes"),
    7: ("Which bar is the tallest?", "c", "C"),
    8: ("What shape is the red object?", "circle", "square"),
    9: ("Is there a red circle in the image?", "no", "no"),
    11: ("Which bar is the tallest?", "d", "D"),
    12: ("Is the yellow triangle at the top or at the bottom?", "bottom", "top"),
    13: ("Is there a red square in the image?", "no", "no"),
    15: ("Is bar A taller than bar B?", "yes", "yes"),
}


def synth_image(synth_dir: Path, pos: int) -> Path:
    return synth_dir / "images" / "eval" / f"{pos:06d}.png"


def synth_png(synth_dir: Path, pos: int) -> bytes:
    return synth_image(synth_dir, pos).read_bytes()


SHORT = "\nAnswer the question using a single word or phrase."


def write_jsonl(path: Path, records: list[dict]) -> Path:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_parquet(path: Path, columns: dict[str, list], image: list[bytes] | None = None) -> Path:
    """A parquet file as lmms-eval's data sets have them: the image column as ``{bytes, path}`` structs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = dict(columns)
    if image is not None:
        data["image"] = [{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(image)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(data), path, row_group_size=2)  # several row groups: lazy reads cross them
    return path


def copy_images(synth_dir: Path, dest: Path, picks: list[int], ext: str = ".png") -> list[str]:
    """Copy the picked SynthVQA images to ``dest`` as ``<pos><ext>``; their names."""
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    for pos in picks:
        shutil.copy(synth_image(synth_dir, pos), dest / f"{pos}{ext}")
    return [f"{pos}{ext}" for pos in picks]


def score_outputs(bench, loaded, outputs: list[str], protocol: str = "llava") -> dict:
    """Score recorded model ``outputs`` (one per loaded item, in order) as ``meteor eval`` does: the items'
    sample rows plus ``text``, through the benchmark's ``score_rows``; no model generates."""
    assert len(outputs) == len(loaded.items), (len(outputs), [it.qid for it in loaded.items])
    rows = [{**it.record(), "text": out} for it, out in zip(loaded.items, outputs)]
    return bench.score_rows(rows, protocol=protocol)


def decodes(loaded) -> bool:
    """Every item's image opens (paths resolved and confined, parquet bytes, base64 cells)."""
    from meteor_cli.eval.benchmarks.base import open_image

    return all(open_image(it.image).size[0] > 0 for it in loaded.items)
