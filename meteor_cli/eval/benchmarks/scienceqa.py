"""ScienceQA-IMG (test split, the questions with an image): option-letter accuracy.

LLaVA protocol (``model_vqa_science.py --single-pred-prompt`` + ``eval_science_qa.py``): the
prompt is the question file's first human turn without ``<image>``, plus "\\nAnswer with the
option's letter from the given choices directly."; the output is a letter if it is exactly
``A``-``E``, starts with ``"X. "`` or says "The answer is X." once; anything else is ``FAILED``
(wrong, counted unparsed). The ground truth is ``problems.json``'s option index, restricted to
``pid_splits.json``'s ``test`` ids; IMG-Accuracy is over the questions that have an image.

lmms protocol (``scienceqa_img``): the output equals the letter ignoring case, or starts with
``"X."``. The lmms prompt is ``Context: {hint}\\n`` (when there is a hint) + question + ``A. ...``
lines + the same instruction. Per-category results are by subject (natural / social / language).
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
    choice_options,
    option_lines,
    report,
)
from meteor_cli.eval.metrics import MULTIPLE_CHOICE, scienceqa_accuracy
from meteor_cli.registry import register_benchmark

LAYOUT_LLAVA = """\
scienceqa/                                  (LLaVA-1.5 playground/data/eval/scienceqa)
  llava_test_CQM-A.json                     [{id, image?, conversations: [{from: human, value: "<image>\\n..."}]}]
  problems.json                             {id: {answer (option index), choices, subject, ...}}
  pid_splits.json                           {"test": [id, ...], ...}
  images/test/<id>/image.png                (or --image-root)"""

LAYOUT_LMMS = """\
ScienceQA/                                  (lmms-lab/ScienceQA; a HF cache dir works too)
  ScienceQA-IMG/test-*.parquet              question, hint, choices, answer, subject, image"""


def lmms_prompt(hint: Any, question: str, choices: Sequence[Any]) -> str:
    """lmms' ``sqa_doc_to_text``: optional ``Context: hint`` line, question, lettered choices, instruction."""
    context = f"Context: {hint}\n" if hint else ""
    return f"{context}{question}{option_lines(choice_options(choices).items())}{MULTIPLE_CHOICE}"


@register_benchmark("scienceqa", description="ScienceQA-IMG test: option-letter accuracy (llava: eval_science_qa.py "
                    "parse; lmms: letter or 'X.')", layout="llava: llava_test_CQM-A.json + problems.json + "
                    "pid_splits.json; lmms: lmms-lab/ScienceQA ScienceQA-IMG parquet")
class ScienceQA(Benchmark):
    """ScienceQA-IMG (see the module docstring)."""

    name = "scienceqa"
    layouts = {"llava": LAYOUT_LLAVA, "lmms": LAYOUT_LMMS}
    image_dir = "images/test"
    lmms_names = ("ScienceQA",)

    def read_llava(self, src: Source, variant: str | None) -> Loaded:
        questions = src.jsonl("llava_test_CQM-A.json", "ScienceQA question file", ("id", "conversations"))
        problems = src.json("problems.json", "ScienceQA annotation file")
        splits = src.json("pid_splits.json", "ScienceQA split file")
        if not isinstance(problems, Mapping) or not isinstance(splits, Mapping) or "test" not in splits:
            raise InvalidInputError(f"{src.root}: problems.json must map ids to problems and pid_splits.json "
                                    "must have a 'test' list", src.hint)
        test = {str(i) for i in splits["test"]}
        items, missing = [], []
        for q in questions:
            qid = str(q["id"])
            if "image" not in q or qid not in test:  # IMG subset of the test split
                continue
            prob = problems.get(qid)
            if not isinstance(prob, Mapping) or "answer" not in prob:
                missing.append(q["id"])
                continue
            turn = q["conversations"][0] if q["conversations"] else {}
            prompt = str(turn.get("value", "")).replace("<image>", "").strip() + MULTIPLE_CHOICE
            items.append(Item(q["id"], prompt, answer=int(prob["answer"]), category=prob.get("subject"),
                              meta={"choices": list(prob.get("choices") or [])}, **src.image(str(q["image"]))))
        return src.loaded(items, missing, suffix=MULTIPLE_CHOICE, subset="IMG (test questions with an image)",
                          source="first human turn without <image> + suffix (model_vqa_science --single-pred-prompt)")

    def read_lmms(self, src: Source, variant: str | None) -> Loaded:
        rows = src.parquet(("ScienceQA-IMG/*test*", "*test*"), ["question", "hint", "choices", "answer"], ["subject"])
        items = [Item(f"test#{i}", lmms_prompt(r["hint"], str(r["question"]), r["choices"]), answer=int(r["answer"]),
                      category=r.get("subject"), meta={"choices": [str(c) for c in r["choices"]]},
                      **src.row_image(r)) for i, r in enumerate(rows)]
        return src.loaded(items, suffix=MULTIPLE_CHOICE, subset="ScienceQA-IMG",
                          source="Context line + question + A. ... lines + suffix (lmms sqa_doc_to_text)")

    def score_rows(self, rows: Sequence[Mapping[str, Any]], *, protocol: str) -> dict[str, Any]:
        self.check_protocol(protocol)
        res = scienceqa_accuracy([str(r["text"]) for r in rows], [r["answer"] for r in rows], protocol=protocol,
                                 qids=[r["question_id"] for r in rows])
        return report(self.name, res, rows, headline="IMG-Accuracy (%), option letter")


__all__ = ["ScienceQA", "lmms_prompt"]
