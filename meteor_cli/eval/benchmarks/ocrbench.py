"""OCRBench: 1,000 OCR questions in 5 groups; a hit when a ground-truth answer is in the output.

Per question: the output scores 1 if any GT string is its substring, after OCRBench's
normalisation (``HME100k``: spaces and newlines removed, case kept; otherwise lower-cased,
stripped, newlines → spaces; lmms folds full-width ASCII first). The headline is the number of
hits (llava: the official tool's integer, out of 1000 on the full set, as EAGLE/METEOR tables
print it) or hits/1000 (lmms' ``Final/1000``), with the per-type and per-group counts.

Prompt: the question as is, no suffix (official ``OCRBench.json`` runs and lmms' default alike).
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
from meteor_cli.eval.metrics import ocrbench_score
from meteor_cli.registry import register_benchmark

LAYOUT_LLAVA = """\
OCRBench/                                   (the official release, as LLaVA-style eval_ocr_bench scripts read it)
  OCRBench.json                             [{id, dataset_name, question, answers (str or list), type, image_path}]
  OCRBench_Images/<image_path>              (or --image-root)"""

LAYOUT_LMMS = """\
OCRBench/                                   (echo840/OCRBench, lmms-eval's source; a HF cache dir works too)
  data/test-*.parquet                       question, answer (list), dataset, question_type, image"""


def _answers(a: Any) -> list[str]:
    return [str(a)] if isinstance(a, str) else [str(x) for x in a or []]


@register_benchmark("ocrbench", description="OCRBench: GT substring of the output (HME100k: spaces removed), hits "
                    "out of 1000 (llava) or /1000 (lmms), per type and group",
                    layout="llava: OCRBench.json + OCRBench_Images/; lmms: echo840/OCRBench parquet")
class OCRBench(Benchmark):
    """OCRBench (see the module docstring)."""

    name = "ocrbench"
    layouts = {"llava": LAYOUT_LLAVA, "lmms": LAYOUT_LMMS}
    image_dir = "OCRBench_Images"
    lmms_names = ("echo840/OCRBench", "OCRBench")

    def read_llava(self, src: Source, variant: str | None) -> Loaded:
        records = src.json("OCRBench.json", "the question file")
        if not isinstance(records, list):
            raise InvalidInputError(f"{src.files[-1]}: not a JSON list", src.hint)
        items = []
        for i, r in enumerate(records):
            missing = [k for k in ("question", "answers", "type", "image_path") if k not in r]
            if missing:
                raise InvalidInputError(f"{src.files[-1]}: record {i} lacks {', '.join(map(repr, missing))}", src.hint)
            items.append(Item(r.get("id", i), str(r["question"]), answer=_answers(r["answers"]),
                              category=str(r["type"]),
                              meta={"dataset": str(r.get("dataset_name", ""))}, **src.image(str(r["image_path"]))))
        return src.loaded(items, suffix=None, source="question as is")

    def read_lmms(self, src: Source, variant: str | None) -> Loaded:
        rows = src.parquet("*test*", ["question", "answer", "dataset", "question_type"])
        items = [Item(i, str(r["question"]).strip(), answer=_answers(r["answer"]), category=str(r["question_type"]),
                      meta={"dataset": str(r["dataset"])}, **src.row_image(r)) for i, r in enumerate(rows)]
        return src.loaded(items, suffix=None, source="question.strip() (lmms ocrbench_doc_to_text)")

    def score_rows(self, rows: Sequence[Mapping[str, Any]], *, protocol: str) -> dict[str, Any]:
        self.check_protocol(protocol)
        cats = [str(r.get("category")) for r in rows]
        res = ocrbench_score([str(r["text"]) for r in rows], [list(r["answer"]) for r in rows], cats,
                             [str((r.get("meta") or {}).get("dataset", "")) for r in rows], protocol=protocol,
                             qids=[r["question_id"] for r in rows])
        headline = ("hits (out of 1000 on the full set)" if protocol == "llava" else "hits / 1000 (lmms Final/1000)")
        return report(self.name, res, rows, headline=headline,
                      extra={"groups": res.breakdown["groups"], "hits": res.breakdown["hits"]})


__all__ = ["OCRBench"]
