"""DocVQA val: ANLS (τ = 0.5) over the annotators' answers.

Per question: the best ``1 - NL`` over the GT answers, with ``NL`` the Levenshtein distance of the
whitespace-collapsed lower-cased strings over the longer length; below 0.5 it scores 0. The
length is that of the normalised strings for protocol llava (the ST-VQA definition and the
official DocVQA tool: LLaVA-1.5 has no DocVQA script) and of the raw strings for lmms (its
quirk); the convention is recorded in ``metrics.json``. Per-category results use the first of
the question's ``question_types``.

Prompt (both layouts): question + "\\nAnswer the question using a single word or phrase."
(lmms' post-prompt, LLaVA's short-answer instruction).
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
)
from meteor_cli.eval.metrics import SHORT_ANSWER, anls
from meteor_cli.registry import register_benchmark

ANNOTATIONS = ("val_v1.0_withQT.json", "val_v1.0.json", "val/val_v1.0_withQT.json", "val/val_v1.0.json")

LAYOUT_LLAVA = """\
DocVQA/                                     (the official Single-Page DocVQA release, or its val/ folder)
  val/val_v1.0_withQT.json                  {data: [{questionId, question, image, answers, question_types}]}
                                            (val_v1.0.json works too)
  val/documents/*.png                       the "image" paths are relative to val/ (or --image-root)"""

LAYOUT_LMMS = """\
DocVQA/                                     (lmms-lab/DocVQA; a HF cache dir works too)
  DocVQA/validation-*.parquet               questionId, question, answers, question_types, image"""


def _category(types: Any) -> str | None:
    return str(types[0]) if isinstance(types, (list, tuple)) and types else None


@register_benchmark("docvqa", description="DocVQA val: ANLS (τ 0.5; llava: normalised lengths, lmms: raw "
                    "lengths)", layout="llava: official val/val_v1.0_withQT.json + val/documents/; lmms: "
                    "lmms-lab/DocVQA DocVQA validation parquet")
class DocVQA(Benchmark):
    """DocVQA val (see the module docstring)."""

    name = "docvqa"
    layouts = {"llava": LAYOUT_LLAVA, "lmms": LAYOUT_LMMS}
    image_dir = "val"
    lmms_names = ("DocVQA",)

    def read_llava(self, src: Source, variant: str | None) -> Loaded:
        afile = src.first(list(ANNOTATIONS), "the annotation file")
        doc = src.json(afile, "DocVQA annotation file")
        if not isinstance(doc, Mapping) or not isinstance(doc.get("data"), list):
            raise InvalidInputError(f"{afile}: no 'data' list", src.hint)
        src.image_roots.append(afile.parent)
        items = []
        for i, q in enumerate(doc["data"]):
            if not isinstance(q, Mapping) or not {"question", "image", "answers"} <= set(q):
                raise InvalidInputError(f"{afile}: data[{i}] lacks question, image or answers", src.hint)
            items.append(Item(q.get("questionId", i), str(q["question"]) + SHORT_ANSWER,
                              answer=[str(a) for a in q["answers"]], category=_category(q.get("question_types")),
                              **src.image(str(q["image"]))))
        return src.loaded(items, suffix=SHORT_ANSWER, source="question + suffix")

    def read_lmms(self, src: Source, variant: str | None) -> Loaded:
        rows = src.parquet(("DocVQA/*validation*", "*validation*"), ["questionId", "question", "answers"],
                           ["question_types"])
        items = [Item(r["questionId"], str(r["question"]) + SHORT_ANSWER, answer=[str(a) for a in r["answers"]],
                      category=_category(r.get("question_types")), **src.row_image(r)) for r in rows]
        return src.loaded(items, suffix=SHORT_ANSWER, source="question + suffix (lmms docvqa_doc_to_text)")

    def score_rows(self, rows: Sequence[Mapping[str, Any]], *, protocol: str) -> dict[str, Any]:
        self.check_protocol(protocol)
        res = anls([str(r["text"]) for r in rows], [list(r["answer"]) for r in rows], protocol=protocol,
                   qids=[r["question_id"] for r in rows])
        return report(self.name, res, rows, headline=f"ANLS (%), {res.settings['length']} lengths")


__all__ = ["DocVQA"]
