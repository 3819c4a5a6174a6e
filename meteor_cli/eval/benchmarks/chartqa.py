"""ChartQA test: relaxed accuracy over the human and augmented splits (``--variant``).

An answer is right when both it and the target parse as numbers (``"12%"`` → 0.12) within 5 %
relative error, else when it equals the target ignoring case (a target of 0 takes the string
branch, as in the reference). Outputs are not cleaned: "12 kg" or "Yes." are wrong. The headline
is ``relaxed_overall`` (mean over the questions asked), with each split next to it.

LLaVA-1.5 has no ChartQA script: the llava layout is the official release (``test/test_human.json``,
``test/test_augmented.json``, ``test/png/``) and both layouts pose lmms' prompt: question +
"\\nAnswer the question with a single word.". Both protocols score alike.
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
from meteor_cli.eval.metrics import chartqa_relaxed_accuracy
from meteor_cli.registry import register_benchmark

#: lmms-eval's ChartQA post-prompt (LLaVA-1.5 has no ChartQA prompt).
SUFFIX = "\nAnswer the question with a single word."
SPLITS = ("human", "augmented")

LAYOUT_LLAVA = """\
ChartQA/                                    (the official release, "ChartQA Dataset/"; or its test/ folder)
  test/test_human.json                      [{imgname, query, label}]
  test/test_augmented.json                  [{imgname, query, label}]
  test/png/<imgname>                        (or --image-root)"""

LAYOUT_LMMS = """\
ChartQA/                                    (lmms-lab/ChartQA; a HF cache dir works too)
  data/test-*.parquet                       question, answer, type (human_test|augmented_test), image"""


@register_benchmark("chartqa", description="ChartQA test: relaxed accuracy (5 % on numbers), human/augmented "
                    "splits (--variant both|human|augmented)", layout="llava: official test/test_{human,augmented}"
                    ".json + test/png/; lmms: lmms-lab/ChartQA parquet")
class ChartQA(Benchmark):
    """ChartQA (see the module docstring)."""

    name = "chartqa"
    layouts = {"llava": LAYOUT_LLAVA, "lmms": LAYOUT_LMMS}
    variants = ("both", *SPLITS)
    image_dir = "test/png"
    lmms_names = ("ChartQA",)

    def read_llava(self, src: Source, variant: str | None) -> Loaded:
        base = "test/" if (src.root / "test").is_dir() else ""
        src.image_roots.append(src.root / "png")  # --data is the test/ folder itself
        items = []
        for split in SPLITS:
            if variant not in ("both", split):
                continue
            records = src.json(f"{base}test_{split}.json", f"the {split} split")
            if not isinstance(records, list):
                raise InvalidInputError(f"{src.files[-1]}: not a JSON list of {{imgname, query, label}}", src.hint)
            for i, r in enumerate(records):
                items.append(Item(f"{split}#{i}", str(r["query"]) + SUFFIX, answer=str(r["label"]), category=split,
                                  **src.image(str(r["imgname"]))))
        return src.loaded(items, suffix=SUFFIX, source="query + lmms suffix (LLaVA-1.5 has no ChartQA prompt)")

    def read_lmms(self, src: Source, variant: str | None) -> Loaded:
        rows = src.parquet("*test*", ["question", "answer", "type"])
        items = []
        for i, r in enumerate(rows):
            split = str(r["type"]).removesuffix("_test")
            if variant in ("both", split):
                items.append(Item(f"{split}#{i}", str(r["question"]) + SUFFIX, answer=str(r["answer"]),
                                  category=split, **src.row_image(r)))
        return src.loaded(items, suffix=SUFFIX, source="question + suffix (lmms chartqa_doc_to_text)")

    def score_rows(self, rows: Sequence[Mapping[str, Any]], *, protocol: str) -> dict[str, Any]:
        self.check_protocol(protocol)
        splits = [str(r.get("category")) for r in rows]
        res = chartqa_relaxed_accuracy([str(r["text"]) for r in rows], [str(r["answer"]) for r in rows],
                                       splits=splits, protocol=protocol, qids=[r["question_id"] for r in rows])
        return report(self.name, res, rows, headline="relaxed accuracy (%), relaxed_overall over the splits asked")


__all__ = ["SPLITS", "SUFFIX", "ChartQA"]
