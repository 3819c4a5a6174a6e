"""VQAv2 val: VQA accuracy over the 10 annotator answers ("10 choose 9", EvalAI normalisation).

Both protocols score the same (lmms' ``vqav2_process_results_val`` applies the EvalAI processor
and the soft score, as the official ``vqaEval.py`` does). Per-category results use the
annotation's ``answer_type`` (``yes/no``, ``number``, ``other``), the breakdown VQAv2 papers print.

LLaVA-1.5's script evaluates test-dev on the server; for val, the llava layout is the official
COCO-VQA files (``v2_mscoco_val2014_annotations.json`` with a LLaVA-format question file, or the
official question file) and ``val2014/`` images. Prompt: question + "\\nAnswer the question using
a single word or phrase." (LLaVA-1.5 and lmms alike).
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

QUESTIONS = "v2_OpenEnded_mscoco_val2014_questions.json"
ANNOTATIONS = "v2_mscoco_val2014_annotations.json"
LLAVA_QUESTIONS = "llava_vqav2_mscoco_val2014.jsonl"

LAYOUT_LLAVA = f"""\
vqav2/                                      (LLaVA-1.5 playground/data/eval/vqav2 + the official val files)
  {LLAVA_QUESTIONS}          question_id, image, text   (or, instead:)
  {QUESTIONS}   {{questions: [{{question_id, image_id, question}}]}}
  {ANNOTATIONS}        {{annotations: [{{question_id, answers: [{{answer}}], answer_type}}]}}
  val2014/COCO_val2014_<image id:012>.jpg    (or --image-root)"""

LAYOUT_LMMS = """\
VQAv2/                                      (lmms-lab/VQAv2; a HF cache dir works too)
  data/validation-*.parquet                 question_id, question, answers ([{answer}]), answer_type, image"""


def answer_texts(answers: Any) -> list[str]:
    """The annotators' answers: ``[{"answer": ...}]`` or plain strings."""
    return [str(a["answer"]) if isinstance(a, Mapping) else str(a) for a in answers or []]


@register_benchmark("vqav2", description="VQAv2 val: VQA accuracy (10 answers, EvalAI normalisation), per answer "
                    "type", layout="llava: v2_mscoco_val2014_annotations.json + llava_vqav2_mscoco_val2014.jsonl "
                    "or v2_OpenEnded_mscoco_val2014_questions.json; lmms: lmms-lab/VQAv2 validation parquet")
class VQAv2(Benchmark):
    """VQAv2 val (see the module docstring)."""

    name = "vqav2"
    layouts = {"llava": LAYOUT_LLAVA, "lmms": LAYOUT_LMMS}
    image_dir = "val2014"
    lmms_names = ("VQAv2",)

    def read_llava(self, src: Source, variant: str | None) -> Loaded:
        qfile = src.first([LLAVA_QUESTIONS, QUESTIONS], "the question file")
        ann = src.json(ANNOTATIONS, "the annotation file")
        if not isinstance(ann, Mapping) or not isinstance(ann.get("annotations"), list):
            raise InvalidInputError(f"{src.files[-1]}: no 'annotations' list", src.hint)
        by_id = {str(a.get("question_id")): a for a in ann["annotations"] if isinstance(a, Mapping)}
        if qfile.name == LLAVA_QUESTIONS:
            questions = [(q["question_id"], str(q["text"]), str(q["image"]))
                         for q in src.jsonl(qfile, "VQAv2 question file", ("question_id", "image", "text"))]
            source = "question file text as is"
        else:
            doc = src.json(qfile, "VQAv2 question file")
            if not isinstance(doc, Mapping) or not isinstance(doc.get("questions"), list):
                raise InvalidInputError(f"{qfile}: no 'questions' list", src.hint)
            questions = [(q["question_id"], str(q["question"]) + SHORT_ANSWER,
                          f"COCO_val2014_{int(q['image_id']):012d}.jpg") for q in doc["questions"]]
            source = "question + suffix"
        items, missing = [], []
        for qid, text, image in questions:
            a = by_id.get(str(qid))
            if a is None or not a.get("answers"):
                missing.append(qid)
                continue
            items.append(Item(qid, text, answer=answer_texts(a["answers"]), category=a.get("answer_type"),
                              **src.image(image)))
        return src.loaded(items, missing, suffix=SHORT_ANSWER, source=source)

    def read_lmms(self, src: Source, variant: str | None) -> Loaded:
        rows = src.parquet("*validation*", ["question_id", "question", "answers"], ["answer_type"])
        items = [Item(r["question_id"], str(r["question"]) + SHORT_ANSWER, answer=answer_texts(r["answers"]),
                      category=r.get("answer_type"), **src.row_image(r)) for r in rows]
        return src.loaded(items, suffix=SHORT_ANSWER, source="question + suffix")

    def score_rows(self, rows: Sequence[Mapping[str, Any]], *, protocol: str) -> dict[str, Any]:
        self.check_protocol(protocol)
        res = vqa_accuracy([str(r["text"]) for r in rows], [list(r["answer"]) for r in rows], benchmark="vqav2",
                           protocol=protocol, qids=[r["question_id"] for r in rows])
        return report(self.name, res, rows, headline="VQA accuracy (%) over all questions")


__all__ = ["VQAv2", "answer_texts"]
