"""POPE: yes/no object-hallucination probing on COCO val2014 (random / popular / adversarial).

LLaVA protocol (``eval_pope.py``, the paper tables): outputs are parsed word by word in their first
sentence (no/not → no, anything else → yes); per category precision, recall, F1, accuracy and
yes-ratio (from the predictions); the headline is the mean F1 over the categories present. As
LLaVA does, answers are matched to labels *by order* within a category: the k-th question of
category c gets the k-th line of ``coco/coco_pope_c.json``.

lmms protocol: exact ``yes``/``no`` after lower/strip (``"Yes."`` is wrong and unparsed), the
categories pooled, and the yes-ratio taken from the ground truth (an lmms quirk, labelled).

Prompt: the question file's ``text`` as is (llava layout); ``question`` + "\\nAnswer the question
using a single word or phrase." (lmms layout).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from meteor_cli.eval.benchmarks.base import (
    Benchmark,
    Item,
    Loaded,
    Source,
    report,
    suffix_of,
)
from meteor_cli.eval.metrics import SHORT_ANSWER, pope_metrics
from meteor_cli.registry import register_benchmark

CATEGORIES = ("random", "popular", "adversarial")

LAYOUT_LLAVA = """\
pope/                                   (LLaVA-1.5 playground/data/eval/pope)
  llava_pope_test.jsonl                 question_id, image, text, category
  coco/coco_pope_random.json            JSONL with label (yes/no), one line per question, in order
  coco/coco_pope_popular.json
  coco/coco_pope_adversarial.json
  val2014/COCO_val2014_*.jpg            (or --image-root)"""

LAYOUT_LMMS = """\
POPE/                                   (lmms-lab/POPE or lmms-lab-encoder/POPE; a HF cache dir works too)
  data/test-*.parquet                   question_id, question, answer, category, image"""


@register_benchmark("pope", description="POPE hallucination (random/popular/adversarial): mean F1 over "
                    "categories (llava) or pooled (lmms)",
                    layout="llava: llava_pope_test.jsonl + coco/coco_pope_*.json; lmms: lmms-lab/POPE parquet")
class Pope(Benchmark):
    """POPE (see the module docstring)."""

    name = "pope"
    layouts = {"llava": LAYOUT_LLAVA, "lmms": LAYOUT_LMMS}
    variants = ("all", *CATEGORIES)
    image_dir = "val2014"
    lmms_names = ("POPE",)

    def load_items(self, data: Path, *, image_root: Path | None = None, variant: str | None = None,
                   allow_outside_root: bool = False, **options: Any) -> Loaded:
        loaded = super().load_items(data, image_root=image_root, variant=variant,
                                    allow_outside_root=allow_outside_root, **options)
        if loaded.prompt["variant"] != "all":
            loaded.items = [it for it in loaded.items if it.category == loaded.prompt["variant"]]
        return loaded

    def read_lmms(self, src: Source, variant: str | None) -> Loaded:
        rows = src.parquet("*test*", ["question_id", "question", "answer", "category"])
        items = [Item(r["question_id"], str(r["question"]) + SHORT_ANSWER, answer=str(r["answer"]).strip().lower(),
                      category=str(r["category"]), **src.row_image(r)) for r in rows]
        return src.loaded(items, suffix=SHORT_ANSWER, source="question + suffix")

    def read_llava(self, src: Source, variant: str | None) -> Loaded:
        questions = src.jsonl("llava_pope_test.jsonl", "POPE question file",
                              ("question_id", "image", "text", "category"))
        labels = {cat: [str(r["label"]) for r in src.jsonl(f"coco/coco_pope_{cat}.json",
                                                           f"annotation file of category {cat!r}", ("label",))]
                  for cat in dict.fromkeys(q["category"] for q in questions)}
        seen: dict[str, int] = {}
        items, missing = [], []
        for q in questions:
            cat = q["category"]
            k = seen.get(cat, 0)
            seen[cat] = k + 1
            if k >= len(labels[cat]):  # LLaVA pairs by order: more questions than labels
                missing.append(q["question_id"])
                continue
            items.append(Item(q["question_id"], str(q["text"]), answer=labels[cat][k], category=cat,
                              **src.image(str(q["image"]))))
        return src.loaded(items, missing, suffix=suffix_of((q["text"] for q in questions), SHORT_ANSWER),
                          source="question file text as is",
                          label_matching="by order within category (eval_pope.py)")

    def score_rows(self, rows: Sequence[Mapping[str, Any]], *, protocol: str) -> dict[str, Any]:
        self.check_protocol(protocol)
        res = pope_metrics([str(r["text"]) for r in rows], [str(r["answer"]) for r in rows],
                           categories=[str(r["category"]) for r in rows], protocol=protocol, headline="f1",
                           qids=[r["question_id"] for r in rows])
        cats = {c: {"score": s["f1"], "n": s["n"], "accuracy": s["accuracy"], "precision": s["precision"],
                    "recall": s["recall"], "yes_ratio": s["yes_ratio"]} for c, s in res.breakdown["categories"].items()}
        headline = ("F1 (%), mean over categories (LLaVA-1.5's POPE column)" if protocol == "llava"
                    else "F1 (%), categories pooled (lmms)")
        return report(self.name, res, rows, headline=headline, categories=cats,
                      overall=res.breakdown["overall"]["accuracy"],
                      extra={"overall_is": "accuracy (%), all categories pooled"})


__all__ = ["CATEGORIES", "Pope"]
