"""MME: 14 yes/no subtasks, two questions per image; score = acc + acc+ per subtask, summed.

The official ``calculation.py`` (used by LLaVA): an output is yes/no if it is exactly that, else
by "yes"/"no" in its first 4 characters, else "other" (wrong, counted unparsed); per subtask
``100·acc + 100·acc+`` (acc+: both questions of an image right); Perception sums the 10
perception subtasks (max 2000), Cognition the 4 others (max 800). The headline is Perception (the
"MME" column of LLaVA/EAGLE tables); Cognition is reported next to it. lmms protocol: the output
is first stripped of periods and a lone y/n counts.

Both questions of an image stay in one shard. When one of them cannot be scored (its image was
unreadable) the image's pair is left out and counted (``n_incomplete_pairs``).

LLaVA layout: ``llava_mme.jsonl`` (``question_id`` = ``<subtask>/<image file>``) answered against the
official ``MME_Benchmark_release_version/<subtask>/[questions_answers_YN/]<image stem>.txt``
(``question<TAB>answer`` lines), matched on the question with LLaVA's instruction suffix removed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from meteor_cli.eval.benchmarks.base import (
    Benchmark,
    Item,
    Loaded,
    Source,
    report,
)
from meteor_cli.eval.metrics import MME_COGNITION, MME_PERCEPTION, SHORT_ANSWER, MetricResult, mme_scores
from meteor_cli.registry import register_benchmark

RELEASE = "MME_Benchmark_release_version"

LAYOUT_LLAVA = """\
MME/                                              (LLaVA-1.5 playground/data/eval/MME)
  llava_mme.jsonl                                 question_id (<subtask>/<image>), image, text, category
  MME_Benchmark_release_version/<subtask>/        the official release (also the image root):
      questions_answers_YN/<image stem>.txt       question<TAB>Yes|No, two lines per image
      images/<image>                              (artwork, celebrity, landmark, posters, scene)
      <image> and <image stem>.txt                (the other subtasks)"""

LAYOUT_LMMS = """\
MME/                                              (lmms-lab/MME; a HF cache dir works too)
  data/test-*.parquet                             question_id, question, answer, category, image"""


def _strip_suffix(text: str) -> str:
    return text[:-len(SHORT_ANSWER)] if text.endswith(SHORT_ANSWER) else text


@register_benchmark("mme", description="MME: acc + acc+ per subtask, Perception (max 2000) with Cognition "
                    "(max 800) next to it", layout="llava: llava_mme.jsonl + MME_Benchmark_release_version/; "
                    "lmms: lmms-lab/MME parquet")
class MME(Benchmark):
    """MME (see the module docstring)."""

    name = "mme"
    layouts = {"llava": LAYOUT_LLAVA, "lmms": LAYOUT_LMMS}
    image_dir = RELEASE
    lmms_names = ("MME",)

    def read_lmms(self, src: Source, variant: str | None) -> Loaded:
        rows = src.parquet("*test*", ["question_id", "question", "answer", "category"])
        items = [Item(f"{r['question_id']}#{i}", str(r["question"]) + SHORT_ANSWER, answer=str(r["answer"]),
                      category=str(r["category"]), group=f"{r['category']}/{r['question_id']}",
                      meta={"image_id": str(r["question_id"])}, **src.row_image(r)) for i, r in enumerate(rows)]
        return src.loaded(items, suffix=SHORT_ANSWER, source="question + suffix")

    def read_llava(self, src: Source, variant: str | None) -> Loaded:
        questions = src.jsonl("llava_mme.jsonl", "MME question file", ("question_id", "image", "text"))
        release = src.path(RELEASE, "the official release with the answer files")
        gt_cache: dict[tuple[str, str], dict[str, str] | None] = {}

        def gt_of(subtask: str, stem: str) -> dict[str, str] | None:
            if (subtask, stem) not in gt_cache:
                found = None
                for cand in (release / subtask / "questions_answers_YN" / f"{stem}.txt",
                             release / subtask / f"{stem}.txt"):
                    if cand.is_file():
                        found = {}
                        for line in cand.read_text(encoding="utf-8", errors="replace").splitlines():
                            if "\t" in line:
                                q, a = line.rsplit("\t", 1)
                                found[q.strip()] = a.strip()
                        src.files.append(str(cand))
                        break
                gt_cache[(subtask, stem)] = found
            return gt_cache[(subtask, stem)]

        items, missing = [], []
        for q in questions:
            qid = str(q["question_id"])
            subtask = str(q.get("category") or qid.split("/")[0])
            name = Path(str(q["image"])).name
            gt = gt_of(subtask, Path(name).stem)
            question = _strip_suffix(str(q["text"])).strip()
            if not gt or question not in gt:
                missing.append(q["question_id"])
                continue
            items.append(Item(f"{qid}#{question}", str(q["text"]), answer=gt[question], category=subtask,
                              group=f"{subtask}/{name}", meta={"image_id": name},
                              **src.image(str(q["image"]), f"{subtask}/images/{name}")))
        return src.loaded(items, missing, suffix=SHORT_ANSWER, source="question file text as is",
                          answer_matching="(subtask, image, question) as convert_answer_to_mme.py")

    def score_rows(self, rows: Sequence[Mapping[str, Any]], *, protocol: str) -> dict[str, Any]:
        self.check_protocol(protocol)
        pairs = Counter(r["group"] for r in rows)
        complete = [r for r in rows if pairs[r["group"]] == 2]
        incomplete = sum(1 for n in pairs.values() if n != 2)
        if complete:
            res = mme_scores([str(r["text"]) for r in complete], [str(r["answer"]) for r in complete],
                             [str(r["category"]) for r in complete], [r["group"] for r in complete],
                             protocol=protocol, qids=[r["question_id"] for r in complete])
        else:
            res = MetricResult("mme_perception", 0.0, protocol, 0, breakdown={"subtasks": {}, "perception": 0.0,
                                                                             "cognition": 0.0, "total": 0.0})
        sub = res.breakdown["subtasks"]
        cats = {t: {"score": s["acc"], "n": s["n_questions"], "acc_plus": s["acc_plus"], "mme_score": s["score"]}
                for t, s in sub.items()}
        has_perception = any(t in MME_PERCEPTION for t in sub)
        headline = ("Perception (sum of acc + acc+ over the perception subtasks, max 2000)" if has_perception
                    else "Cognition (sum of acc + acc+ over the cognition subtasks, max 800)")
        return report(self.name, res, complete, headline=headline, categories=cats,
                      extra={"perception": res.breakdown["perception"], "cognition": res.breakdown["cognition"],
                             "n_incomplete_pairs": incomplete,
                             "subtasks_missing": [t for t in (*MME_PERCEPTION, *MME_COGNITION) if t not in sub],
                             "overall_is": "accuracy (%) over the questions scored"})


__all__ = ["MME"]
