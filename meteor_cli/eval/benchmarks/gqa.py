"""GQA testdev-balanced: exact match of a short answer.

LLaVA protocol (``convert_gqa_for_eval.py`` + the official ``eval.py``): the prediction is
``rstrip('.')`` + lower-cased and compared with the annotation's answer as it is. lmms protocol:
both lower-cased with every punctuation character deleted. Per-category results use the question's
structural type (``verify``, ``query``, ``choose``, ``logical``, ``compare``) when the annotation has it.

Prompt: the question file's ``text`` (llava layout), or ``question`` + "\\nAnswer the question using
a single word or phrase." (lmms layout).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from meteor_cli.errors import InvalidInputError
from meteor_cli.eval.benchmarks.base import (
    Benchmark,
    Item,
    Loaded,
    category_table,
    find_parquet_dir,
    parquet_files,
    read_json,
    read_json_lines,
    read_parquet,
    report,
    resolve_image,
)
from meteor_cli.eval.metrics import SHORT_ANSWER, gqa_accuracy
from meteor_cli.registry import register_benchmark

LAYOUT_LLAVA = """\
gqa/                                        (LLaVA-1.5 playground/data/eval/gqa)
  llava_gqa_testdev_balanced.jsonl          question_id, image, text
  data/testdev_balanced_questions.json      {question_id: {answer, imageId, types: {structural, ...}}}
  data/images/*.jpg                         (or --image-root)"""

LAYOUT_LMMS = """\
GQA/                                        (lmms-lab/GQA; a HF cache dir works too)
  testdev_balanced_instructions/*.parquet   id, imageId, question, answer (types optional)
  testdev_balanced_images/*.parquet         id, image   (joined on imageId = id)"""


def _structural(types: Any) -> str | None:
    if isinstance(types, Mapping) and types.get("structural"):
        return str(types["structural"])
    return None


@register_benchmark("gqa", description="GQA testdev-balanced: exact match (llava: rstrip('.')+lower; lmms: "
                    "punctuation deleted)", layout="llava: llava_gqa_testdev_balanced.jsonl + "
                    "data/testdev_balanced_questions.json; lmms: lmms-lab/GQA instructions + images parquet")
class GQA(Benchmark):
    """GQA (see the module docstring)."""

    name = "gqa"
    layouts = {"llava": LAYOUT_LLAVA, "lmms": LAYOUT_LMMS}
    image_dir = "data/images"

    def load_items(self, data: Path, *, image_root: Path | None = None, variant: str | None = None,
                   allow_outside_root: bool = False, **options: Any) -> Loaded:
        self.check_variant(variant)
        data = Path(data)
        if self.is_lmms(data):
            return self._load_lmms(data)
        qfile = data / "llava_gqa_testdev_balanced.jsonl"
        if not qfile.is_file():
            raise self.layout_error(data, qfile.name)
        hint = f"expected:\n{LAYOUT_LLAVA}"
        questions = read_json_lines(qfile, "GQA question file", hint, ("question_id", "image", "text"))
        afile = data / "data" / "testdev_balanced_questions.json"
        if not afile.is_file():
            raise self.layout_error(data, "data/testdev_balanced_questions.json (the annotation file)")
        ann = read_json(afile, "GQA annotation file", hint)
        if not isinstance(ann, Mapping):
            raise InvalidInputError(f"{afile}: not a JSON object keyed by question id", hint)
        roots = [self.image_base(data, image_root), qfile.parent]
        items, missing = [], []
        for q in questions:
            a = ann.get(str(q["question_id"]))
            if not isinstance(a, Mapping) or "answer" not in a:
                missing.append(q["question_id"])
                continue
            items.append(Item(q["question_id"], str(q["text"]),
                              resolve_image(str(q["image"]), roots, allow_outside_root=allow_outside_root),
                              str(a["answer"]), category=_structural(a.get("types")),
                              subcategory=(a.get("types") or {}).get("semantic") if isinstance(a.get("types"), Mapping)
                              else None, image_name=str(q["image"])))
        return Loaded(items, "llava", [str(qfile), str(afile)], missing,
                      {"suffix": SHORT_ANSWER if all(str(q["text"]).endswith(SHORT_ANSWER) for q in questions)
                       else None, "source": "question file text as is"})

    def _load_lmms(self, data: Path) -> Loaded:
        root = find_parquet_dir(data, ["GQA"])
        assert root is not None
        qfiles = parquet_files(root, "testdev_balanced_instructions/*")
        ifiles = parquet_files(root, "testdev_balanced_images/*")
        if not qfiles:
            raise self.layout_error(root, "testdev_balanced_instructions/*.parquet")
        if not ifiles:
            raise self.layout_error(root, "testdev_balanced_images/*.parquet (GQA keeps images in their own config)")
        rows = read_parquet(qfiles, ["id", "imageId", "question", "answer"], ["types"], image_column=None)
        images = {str(r["id"]): r for r in read_parquet(ifiles, ["id"])}
        items, missing = [], []
        for r in rows:
            img = images.get(str(r["imageId"]))
            if img is None:
                missing.append(r["id"])
                continue
            items.append(Item(r["id"], str(r["question"]) + SHORT_ANSWER, img["_image"], str(r["answer"]),
                              category=_structural(r.get("types")), image_name=img["_source"]))
        return Loaded(items, "lmms", [str(f) for f in (*qfiles, *ifiles)], missing,
                      {"suffix": SHORT_ANSWER, "source": "question + suffix"})

    def score_rows(self, rows: Sequence[Mapping[str, Any]], *, protocol: str) -> dict[str, Any]:
        self.check_protocol(protocol)
        res = gqa_accuracy([str(r["text"]) for r in rows], [str(r["answer"]) for r in rows], protocol=protocol,
                           qids=[r["question_id"] for r in rows])
        cats = [r.get("category") for r in rows]
        table = category_table(cats, [s["correct"] for s in res.per_sample]) if any(c for c in cats) else None
        return report(self.name, res, rows, headline="accuracy (%) over all questions", categories=table)


__all__ = ["GQA"]
