"""TextVQA val: VQA accuracy over 10 answers, with or without OCR tokens in the prompt.

Scoring is the same in both protocols (EvalAI normalisation, "10 choose 9" soft score); what moves
the number by 20 points is the prompt (``--variant ocr``, the default, as LLaVA-1.5 and EAGLE's
pinned lmms-eval pose it: "Reference OCR token: ..." on the second line; ``--variant no-ocr``, as
current lmms-eval does). The setting is recorded in ``metrics.json``.

LLaVA's question file uses the *image* id as ``question_id``; as ``eval_textvqa.py`` does, each
question is matched to ``TextVQA_0.5.1_val.json`` by (image id, lower-cased question from the
prompt's first line), and rows take the annotation's own (unique) question id.
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
from meteor_cli.eval.metrics import SHORT_ANSWER, vqa_accuracy
from meteor_cli.registry import register_benchmark

OCR_PREFIX = "Reference OCR token: "

LAYOUT_LLAVA = """\
textvqa/                                    (LLaVA-1.5 playground/data/eval/textvqa)
  llava_textvqa_val_v051_ocr.jsonl          question_id (= image id), image, text (question / OCR tokens / suffix)
  TextVQA_0.5.1_val.json                    {"data": [{image_id, question, question_id, answers (10)}]}
  train_images/*.jpg                        (or --image-root)"""

LAYOUT_LMMS = """\
textvqa/                                    (lmms-lab/textvqa; a HF cache dir works too)
  data/validation-*.parquet                 question_id, question, answers, ocr_tokens, image"""


@register_benchmark("textvqa", description="TextVQA val: VQA accuracy (EvalAI normalisation), prompt with "
                    "OCR tokens (--variant ocr, default) or without (no-ocr)",
                    layout="llava: llava_textvqa_val_v051_ocr.jsonl + TextVQA_0.5.1_val.json; lmms: "
                    "lmms-lab/textvqa parquet")
class TextVQA(Benchmark):
    """TextVQA (see the module docstring)."""

    name = "textvqa"
    layouts = {"llava": LAYOUT_LLAVA, "lmms": LAYOUT_LMMS}
    variants = ("ocr", "no-ocr")
    image_dir = "train_images"
    lmms_names = ("textvqa",)

    def read_lmms(self, src: Source, variant: str | None) -> Loaded:
        ocr = variant == "ocr"
        items = []
        for r in src.parquet("*validation*", ["question_id", "question", "answers", "ocr_tokens"]):
            ref = f"\n{OCR_PREFIX}{', '.join(map(str, r['ocr_tokens'] or []))}" if ocr else ""
            items.append(Item(r["question_id"], str(r["question"]).capitalize() + ref + SHORT_ANSWER,
                              answer=[str(a) for a in r["answers"]], meta={"ocr_tokens": ocr}, **src.row_image(r)))
        return src.loaded(items, suffix=SHORT_ANSWER, ocr_tokens=ocr,
                          source="question.capitalize() + OCR line + suffix (lmms)")

    def read_llava(self, src: Source, variant: str | None) -> Loaded:
        ocr = variant == "ocr"
        qfile = src.first(["llava_textvqa_val_v051_ocr.jsonl", "llava_textvqa_val_v051.jsonl"], "the question file")
        questions = src.jsonl(qfile, "TextVQA question file", ("question_id", "image", "text"))
        ann = src.json("TextVQA_0.5.1_val.json", "the annotation file")
        if not isinstance(ann, Mapping) or not isinstance(ann.get("data"), list):
            raise InvalidInputError(f"{src.files[-1]}: no 'data' list", src.hint)
        by_key = {(str(a.get("image_id")), str(a.get("question", "")).lower()): a for a in ann["data"]
                  if isinstance(a, Mapping)}
        items, missing = [], []
        for q in questions:
            lines = str(q["text"]).split("\n")
            a = by_key.get((str(q["question_id"]), lines[0].lower()))
            if a is None or not isinstance(a.get("answers"), list):
                missing.append(q["question_id"])
                continue
            if not ocr:
                lines = [ln for ln in lines if not ln.startswith(OCR_PREFIX)]
            elif not any(ln.startswith(OCR_PREFIX) for ln in lines):
                raise InvalidInputError(f"{qfile}: question {q['question_id']!r} has no '{OCR_PREFIX}...' line",
                                        "use llava_textvqa_val_v051_ocr.jsonl, or pass --variant no-ocr")
            items.append(Item(a.get("question_id", q["question_id"]), "\n".join(lines),
                              answer=[str(x) for x in a["answers"]],
                              meta={"ocr_tokens": ocr, "llava_question_id": q["question_id"]},
                              **src.image(str(q["image"]))))
        return src.loaded(items, missing, suffix=SHORT_ANSWER, ocr_tokens=ocr,
                          source="question file text" + ("" if ocr else " without its OCR line"))

    def score_rows(self, rows: Sequence[Mapping[str, Any]], *, protocol: str) -> dict[str, Any]:
        self.check_protocol(protocol)
        ocr = bool((rows[0].get("meta") or {}).get("ocr_tokens")) if rows else None
        res = vqa_accuracy([str(r["text"]) for r in rows], [list(r["answer"]) for r in rows], benchmark="textvqa",
                           protocol=protocol, ocr_tokens=ocr, qids=[r["question_id"] for r in rows])
        return report(self.name, res, rows, headline="VQA accuracy (%), " + ("with" if ocr else "without")
                      + " OCR tokens in the prompt")


__all__ = ["TextVQA"]
