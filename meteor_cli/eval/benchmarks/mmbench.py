"""MMBench dev (English): CircularEval accuracy with the offline choice extractor.

CircularEval: every question is asked once per rotation of its options (option ``k`` moves to
letter ``k - r``); a question counts as right only if *every* rotation is answered right.
Rotations are rows with index ``idx + r·1e6`` (grouped by ``index % 1_000_000``); when the data has
none (LLaVA's ``mmbench_dev_20230712.tsv`` holds each question once), they are generated here the
way LLaVA's ``model_vqa_mmbench.py --all-rounds`` poses them, and the data settings say so.

The letter is read offline (no GPT): a lone option letter, else exactly one option text, else
static patterns ("the answer is X"); anything else is wrong and counted unparsed. Both protocols
score alike; they differ in the prompt (llava: ``hint\\nquestion\\nA. ...``; lmms: ``hint question
There are several options:\\nA. ...`` and a blank line before the instruction).

A question whose rotations did not all get an answer (an unreadable image) is left out and
counted (``n_incomplete_questions``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from meteor_cli.eval.benchmarks.base import (
    Benchmark,
    Item,
    Loaded,
    Source,
    base64_image,
    option_lines,
    report,
)
from meteor_cli.eval.metrics import LETTERS, MULTIPLE_CHOICE, mmbench_circular_eval
from meteor_cli.registry import register_benchmark

CIRCULAR = 1_000_000
LLAVA_TSV = "mmbench_dev_20230712.tsv"

LAYOUT_LLAVA = f"""\
mmbench/                                    (LLaVA-1.5 playground/data/eval/mmbench)
  {LLAVA_TSV}                 index, question, hint, A, B, C, D, answer, category, l2-category,
                                            image (base64); any mmbench_dev*.tsv (not _cn) works"""

LAYOUT_LMMS = """\
MMBench/                                    (lmms-lab/MMBench; a HF cache dir works too)
  en/dev-*.parquet                          index, question, hint, A..D, answer, category, L2-category, image"""


def _blank(v: Any) -> bool:
    return v is None or v != v or str(v).strip().lower() in ("", "nan", "none")


def options_of(row: Mapping[str, Any]) -> list[str]:
    """The option texts A, B, ... up to the first blank one (LLaVA's ``get_options``)."""
    out = []
    for c in "ABCDE":
        if _blank(row.get(c)):
            break
        out.append(str(row[c]))
    return out


def prompt_of(row: Mapping[str, Any], options: Sequence[str], protocol_style: str) -> str:
    """The question as LLaVA (``model_vqa_mmbench``) or lmms (``mmbench_doc_to_text``) poses it."""
    hint = None if _blank(row.get("hint")) else str(row["hint"])
    lines = option_lines(zip(LETTERS, options))
    if protocol_style == "llava":
        return (f"{hint}\n" if hint else "") + str(row["question"]) + lines + MULTIPLE_CHOICE
    body = f"{hint} {row['question']}" if hint else str(row["question"])
    return f"{body} There are several options:{lines}\n{MULTIPLE_CHOICE}"


def rotations(rows: list[dict[str, Any]]) -> tuple[list[tuple[int, dict[str, Any], list[str], str]], bool]:
    """``(index, row, options, answer letter)`` per question and rotation; whether they were generated."""
    indices = [int(float(r["index"])) for r in rows]
    answers = [str(r["answer"]).strip().upper() for r in rows]
    for i, r, a in zip(indices, rows, answers):
        if a not in LETTERS[:len(options_of(r))]:
            raise ValueError(f"question index {i}: answer {r['answer']!r} is not one of its options "
                             f"{', '.join(LETTERS[:len(options_of(r))]) or '(none)'}")
    if any(i >= CIRCULAR for i in indices):
        return [(i, r, options_of(r), a) for i, r, a in zip(indices, rows, answers)], False
    out = []
    for i, r, a in zip(indices, rows, answers):
        opts = options_of(r)
        k_of = LETTERS.index(a)
        for k in range(len(opts)):
            out.append((i + k * CIRCULAR, r, opts[k:] + opts[:k], LETTERS[(k_of - k) % len(opts)]))
    return out, True


@register_benchmark("mmbench", description="MMBench dev-en: CircularEval (a question is right only if every "
                    "rotation is), offline letter/text/static matching", layout="llava: mmbench_dev_20230712.tsv "
                    "(base64 images); lmms: lmms-lab/MMBench en/dev parquet")
class MMBench(Benchmark):
    """MMBench dev-en (see the module docstring)."""

    name = "mmbench"
    layouts = {"llava": LAYOUT_LLAVA, "lmms": LAYOUT_LMMS}
    lmms_names = ("MMBench",)

    def read_llava(self, src: Source, variant: str | None) -> Loaded:
        found = [p for p in sorted(src.root.glob("mmbench_dev*.tsv")) + sorted(src.root.glob("MMBench_DEV_EN*.tsv"))
                 if "_cn" not in p.name.lower()]
        tsv = found[0] if found else src.path(LLAVA_TSV, "the question file with base64 images")
        rows = src.tsv(tsv, "MMBench question file", ("index", "question", "A", "B", "answer", "image"))
        by_index = {str(r["index"]): r["image"] for r in rows}
        for r in rows:  # VLMEvalKit's circular TSVs store a copy's image as the index of its main row
            img = r["image"]
            r["_image"] = base64_image(by_index.get(img, img) if len(img) < 16 and img.isdigit() else img)
            r["_source"] = f"{tsv.name}#{r['index']}"
        return self._items(src, rows, "llava", l2="l2-category")

    def read_lmms(self, src: Source, variant: str | None) -> Loaded:
        rows = src.parquet(("en/*dev*", "*dev*"), ["index", "question", "hint", "A", "B", "answer", "category"],
                           ["C", "D", "E", "L2-category", "l2-category"])
        return self._items(src, rows, "lmms", l2="L2-category" if rows and "L2-category" in rows[0] else "l2-category")

    def _items(self, src: Source, rows: list[dict[str, Any]], style: str, l2: str) -> Loaded:
        rots, generated = rotations(rows)
        per_question = Counter(idx % CIRCULAR for idx, *_ in rots)
        items = [Item(idx, prompt_of(r, opts, style), answer=ans, category=r.get("category"), subcategory=r.get(l2),
                      group=idx % CIRCULAR, meta={"options": dict(zip(LETTERS, opts)), "index": idx,
                                                  "n_rotations": per_question[idx % CIRCULAR]},
                      **src.row_image(r)) for idx, r, opts, ans in rots]
        how = ("rotations generated (option k → letter k - r, index + r·1e6, as model_vqa_mmbench --all-rounds)"
               if generated else "rotations from the data")
        return src.loaded(items, suffix=MULTIPLE_CHOICE, circular=how,
                          source=f"{style} prompt (hint, question, A. ... lines, suffix)")

    def score_rows(self, rows: Sequence[Mapping[str, Any]], *, protocol: str) -> dict[str, Any]:
        self.check_protocol(protocol)
        seen = Counter(r["group"] for r in rows)
        expected = {r["group"]: (r.get("meta") or {}).get("n_rotations") for r in rows}
        incomplete = {g for g, n in expected.items() if n is not None and seen[g] < n}
        done = [r for r in rows if r["group"] not in incomplete]
        res = mmbench_circular_eval([str(r["text"]) for r in done], [str(r["answer"]) for r in done],
                                    [r["meta"]["options"] for r in done], [int(r["meta"]["index"]) for r in done],
                                    categories=[str(r.get("category")) for r in done],
                                    l2_categories=[str(r.get("subcategory")) for r in done], protocol=protocol)
        cats = {c: {"score": v["accuracy"], "n": v["n"]} for c, v in res.breakdown.get("categories", {}).items()}
        return report(self.name, res, done, headline="CircularEval accuracy (%) over questions (every rotation right)",
                      categories=cats, overall=res.value,
                      extra={"n_incomplete_questions": len(incomplete), "n_questions": res.n,
                             "overall_is": "CircularEval accuracy (%) over questions"})


__all__ = ["CIRCULAR", "MMBench", "options_of", "prompt_of", "rotations"]
