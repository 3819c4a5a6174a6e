"""AI2D (test, diagrams): option-letter accuracy as lmms-eval scores it.

LLaVA-1.5 has no AI2D script; both layouts and both ``--protocol`` values use lmms' rule (labelled): a
leading ``"X."`` in the output gives the letter, otherwise the raw output is kept; it is right
when it equals the target letter ignoring case and punctuation. Prompt (lmms ``mcq`` format):
question, ``A. ...`` lines, "\\nAnswer with the option's letter from the given choices directly.".

Layouts: lmms-eval's parquet (``lmms-lab/ai2d``: question, options, answer index, image) and the
official AI2D release (``questions/<image>.json`` with ``answerTexts`` and ``correctAnswer``,
``images/``; with ``ai2d_test_ids.csv`` only the test images are asked). lmms' ``ai2d`` images
have the answer-label text boxes masked; the official ``images/`` are used as the release has them,
and the setting is recorded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from meteor_cli.artifacts import read_bounded
from meteor_cli.errors import InvalidInputError
from meteor_cli.eval.benchmarks.base import (
    Benchmark,
    Item,
    Loaded,
    Source,
    choice_options,
    option_lines,
    report,
)
from meteor_cli.eval.metrics import MULTIPLE_CHOICE, ai2d_accuracy
from meteor_cli.registry import register_benchmark

LAYOUT_LLAVA = """\
ai2d/                                       (the official AI2D release; LLaVA-1.5 has no AI2D script)
  questions/<image>.json                    {imageName, questions: {text: {answerTexts, correctAnswer, questionId}}}
  images/<image>.png                        (or --image-root)
  ai2d_test_ids.csv                         optional: image ids of the test split, one per line"""

LAYOUT_LMMS = """\
ai2d/                                       (lmms-lab/ai2d or lmms-lab-encoder/ai2d; a HF cache dir works too)
  data/test-*.parquet                       question, options, answer (index as text), image"""


def prompt_of(question: str, options: Sequence[Any]) -> str:
    """lmms' ``ai2d_doc_to_text`` (mcq): question, lettered options, instruction."""
    return f"{question}{option_lines(choice_options(options).items())}{MULTIPLE_CHOICE}"


@register_benchmark("ai2d", description="AI2D test: option letter (lmms: leading 'X.' or the raw output, exact "
                    "ignoring case and punctuation)", layout="llava: official release questions/*.json + images/; "
                    "lmms: lmms-lab/ai2d parquet")
class AI2D(Benchmark):
    """AI2D (see the module docstring)."""

    name = "ai2d"
    layouts = {"llava": LAYOUT_LLAVA, "lmms": LAYOUT_LMMS}
    image_dir = "images"
    lmms_names = ("ai2d",)

    def read_llava(self, src: Source, variant: str | None) -> Loaded:
        qdir = src.path("questions", "the official release's question files")
        test = None
        ids = src.root / "ai2d_test_ids.csv"
        if ids.is_file():  # optional: the test split's image ids (bounded read, like every annotation file)
            src.files.append(str(ids))
            lines = read_bounded(ids, "AI2D test-id list").decode("utf-8", "replace").splitlines()
            test = {ln.strip().split(",")[0] for ln in lines if ln.strip()}
        items = []
        for f in sorted(qdir.glob("*.json")):
            doc = src.json(f, "AI2D question file")
            if not isinstance(doc, Mapping) or not isinstance(doc.get("questions"), Mapping):
                raise InvalidInputError(f"{f}: no 'questions' object", src.hint)
            image = str(doc.get("imageName") or f.name[:-len(".json")])
            if test is not None and image.split(".")[0] not in test:
                continue
            for text, q in doc["questions"].items():
                options = [str(o) for o in q["answerTexts"]]
                items.append(Item(str(q.get("questionId") or f"{image}-{text}"), prompt_of(text, options),
                                  answer=int(q["correctAnswer"]), meta={"options": options}, **src.image(image)))
        return src.loaded(items, suffix=MULTIPLE_CHOICE, images="release images/ (text boxes as released)",
                          source="question + A. ... lines + suffix (lmms ai2d_doc_to_text, mcq)")

    def read_lmms(self, src: Source, variant: str | None) -> Loaded:
        rows = src.parquet("*test*", ["question", "options", "answer"])
        items = [Item(f"test#{i}", prompt_of(str(r["question"]), r["options"]), answer=int(r["answer"]),
                      meta={"options": [str(o) for o in r["options"]]}, **src.row_image(r))
                 for i, r in enumerate(rows)]
        return src.loaded(items, suffix=MULTIPLE_CHOICE, images="lmms ai2d (answer-label boxes masked)",
                          source="question + A. ... lines + suffix (lmms ai2d_doc_to_text, mcq)")

    def score_rows(self, rows: Sequence[Mapping[str, Any]], *, protocol: str) -> dict[str, Any]:
        self.check_protocol(protocol)
        res = ai2d_accuracy([str(r["text"]) for r in rows], [r["answer"] for r in rows], protocol="lmms",
                            qids=[r["question_id"] for r in rows])
        return report(self.name, res, rows, headline="accuracy (%), option letter (lmms rule)",
                      extra={"protocol_note": "LLaVA has no AI2D scorer: lmms' rule is used under either --protocol"})


__all__ = ["AI2D", "prompt_of"]
