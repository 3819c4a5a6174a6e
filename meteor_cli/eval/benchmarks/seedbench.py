"""SEED-Bench, image questions (SEED-I): option-letter accuracy, overall and per question type.

LLaVA protocol (``convert_seed_for_submission.py``): the output must equal the answer letter
exactly (``" B"`` or ``"B."`` is wrong). lmms protocol (``seed_process_result``): the output is
stripped and cut to its first character, then compared ignoring case. Only ``data_type ==
"image"`` questions are asked (EAGLE/METEOR report SEED-I); video questions are left out.

Prompt (both): question, ``A. ...`` to ``D. ...`` lines, "\\nAnswer with the option's letter from
the given choices directly." (LLaVA's question file has it in ``text``). lmms' parquet holds the
image as a *list* (video frames elsewhere): the first is taken.
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
    option_lines,
    report,
    suffix_of,
)
from meteor_cli.eval.metrics import MULTIPLE_CHOICE, seed_accuracy
from meteor_cli.registry import register_benchmark

#: SEED-Bench's image question types (``question_type_id`` → name), as ``SEED-Bench.json`` has them.
QUESTION_TYPES = {1: "Scene Understanding", 2: "Instance Identity", 3: "Instance Attributes", 4: "Instance Location",
                  5: "Instances Counting", 6: "Spatial Relation", 7: "Instance Interaction", 8: "Visual Reasoning",
                  9: "Text Understanding"}

LAYOUT_LLAVA = """\
seed_bench/                                 (LLaVA-1.5 playground/data/eval/seed_bench)
  llava-seed-bench.jsonl                    question_id, image, text (question + A.-D. lines + suffix)
  SEED-Bench.json                           {question_type: {name: id}, questions: [{question_id, answer,
                                             question_type_id, data_type}]}
  SEED-Bench-image/*.jpg                    (image paths are relative to seed_bench/, or --image-root)"""

LAYOUT_LMMS = """\
SEED-Bench/                                 (lmms-lab/SEED-Bench; a HF cache dir works too)
  data/test-*.parquet                       question_id, question, choice_a..choice_d, answer, data_type,
                                            question_type_id, image (a list: the first is used)"""


def prompt_of(r: Mapping[str, Any]) -> str:
    """lmms' ``seed_doc_to_text``: question, the four choices, instruction."""
    opts = [(c.upper(), r[f"choice_{c}"]) for c in "abcd"]
    return f"{r['question']}{option_lines(opts)}{MULTIPLE_CHOICE}"


@register_benchmark("seedbench", description="SEED-Bench image (SEED-I): option letter (llava: exact; lmms: first "
                    "character, any case), per question type", layout="llava: llava-seed-bench.jsonl + "
                    "SEED-Bench.json; lmms: lmms-lab/SEED-Bench parquet (image questions)")
class SeedBench(Benchmark):
    """SEED-Bench image (see the module docstring)."""

    name = "seedbench"
    layouts = {"llava": LAYOUT_LLAVA, "lmms": LAYOUT_LMMS}
    lmms_names = ("SEED-Bench",)

    def read_llava(self, src: Source, variant: str | None) -> Loaded:
        questions = src.jsonl("llava-seed-bench.jsonl", "SEED-Bench question file", ("question_id", "image", "text"))
        ann = src.json("SEED-Bench.json", "SEED-Bench annotation file")
        if not isinstance(ann, Mapping) or not isinstance(ann.get("questions"), list):
            raise InvalidInputError(f"{src.files[-1]}: no 'questions' list", src.hint)
        names = {int(v): str(k) for k, v in (ann.get("question_type") or {}).items()} or QUESTION_TYPES
        by_id = {str(a.get("question_id")): a for a in ann["questions"] if isinstance(a, Mapping)}
        items, missing, asked = [], [], []
        for q in questions:
            a = by_id.get(str(q["question_id"]))
            if a is None or "answer" not in a:
                missing.append(q["question_id"])
                continue
            if a.get("data_type", "image") != "image":
                continue  # SEED-I: image questions only
            asked.append(q)
            items.append(Item(q["question_id"], str(q["text"]), answer=str(a["answer"]),
                              category=names.get(int(a.get("question_type_id", 0)), None),
                              **src.image(str(q["image"]))))
        return src.loaded(items, missing, suffix=suffix_of((q["text"] for q in asked), MULTIPLE_CHOICE),
                          subset="image (SEED-I)", source="question file text as is")

    def read_lmms(self, src: Source, variant: str | None) -> Loaded:
        rows = src.parquet("*test*", ["question_id", "question", "choice_a", "choice_b", "choice_c", "choice_d",
                                      "answer", "data_type"], ["question_type_id"])
        items = [Item(r["question_id"], prompt_of(r), answer=str(r["answer"]),
                      category=QUESTION_TYPES.get(int(r.get("question_type_id") or 0)), **src.row_image(r))
                 for r in rows if r["data_type"] == "image"]
        return src.loaded(items, suffix=MULTIPLE_CHOICE, subset="image (SEED-I)",
                          source="question + A.-D. lines + suffix (lmms seed_doc_to_text)")

    def score_rows(self, rows: Sequence[Mapping[str, Any]], *, protocol: str) -> dict[str, Any]:
        self.check_protocol(protocol)
        res = seed_accuracy([str(r["text"]) for r in rows], [str(r["answer"]) for r in rows], protocol=protocol,
                            question_types=[r.get("category") for r in rows], qids=[r["question_id"] for r in rows])
        return report(self.name, res, rows, headline="SEED-I accuracy (%), option letter")


__all__ = ["QUESTION_TYPES", "SeedBench", "prompt_of"]
