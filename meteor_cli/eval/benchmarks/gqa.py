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
from typing import Any

from meteor_cli.errors import InvalidInputError
from meteor_cli.eval.benchmarks.base import (
    Benchmark,
    Item,
    Loaded,
    Source,
    report,
    suffix_of,
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
    lmms_names = ("GQA",)

    def read_llava(self, src: Source, variant: str | None) -> Loaded:
        questions = src.jsonl("llava_gqa_testdev_balanced.jsonl", "GQA question file", ("question_id", "image", "text"))
        ann = src.json("data/testdev_balanced_questions.json", "the annotation file")
        if not isinstance(ann, Mapping):
            raise InvalidInputError(f"{src.files[-1]}: not a JSON object keyed by question id", src.hint)
        items, missing = [], []
        for q in questions:
            a = ann.get(str(q["question_id"]))
            if not isinstance(a, Mapping) or "answer" not in a:
                missing.append(q["question_id"])
                continue
            types = a.get("types") if isinstance(a.get("types"), Mapping) else {}
            items.append(Item(q["question_id"], str(q["text"]), answer=str(a["answer"]),
                              category=_structural(types), subcategory=types.get("semantic"),
                              **src.image(str(q["image"]))))
        return src.loaded(items, missing, suffix=suffix_of((q["text"] for q in questions), SHORT_ANSWER),
                          source="question file text as is")

    def read_lmms(self, src: Source, variant: str | None) -> Loaded:
        rows = src.parquet("testdev_balanced_instructions/*", ["id", "imageId", "question", "answer"], ["types"],
                           image_column=None)
        images = {str(r["id"]): r for r in src.parquet("testdev_balanced_images/*", ["id"],
                                                         what="GQA keeps images in their own config")}
        items, missing = [], []
        for r in rows:
            img = images.get(str(r["imageId"]))
            if img is None:
                missing.append(r["id"])
                continue
            items.append(Item(r["id"], str(r["question"]) + SHORT_ANSWER, answer=str(r["answer"]),
                              category=_structural(r.get("types")), **src.row_image(img)))
        return src.loaded(items, missing, suffix=SHORT_ANSWER, source="question + suffix")

    def score_rows(self, rows: Sequence[Mapping[str, Any]], *, protocol: str) -> dict[str, Any]:
        self.check_protocol(protocol)
        res = gqa_accuracy([str(r["text"]) for r in rows], [str(r["answer"]) for r in rows], protocol=protocol,
                           qids=[r["question_id"] for r in rows])
        return report(self.name, res, rows, headline="accuracy (%) over all questions")


__all__ = ["GQA"]
