#!/usr/bin/env python3
"""Does a model read? SynthVQA's OCR images asked one reading question at a time.

    python bench/synthvqa_reading.py --model tiny-synthvqa --data runs/synthvqa --out runs/reading

For the OCR questions of a SynthVQA evaluation set, asks the full read and the training set's
reading sub-questions (first, second and last character, length; no "second" for one glyph) each
as a single first-turn question, through ``meteor eval``, and prints per question kind and text
type (word, number; len1-len3 for ``--ocr-style large``): accuracy, how many distinct answers
the model gave, and its most frequent answer with its share. A model that does not look at the
glyphs answers one constant per question (its answer prior: "s u n" for every word); one that
reads gives as many distinct answers as there are texts.
Writes ``OUT/report.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from meteor_cli.data.synthvqa import (  # noqa: E402
    READING_KINDS, SHORT_ANSWER, config_from_manifest, make_item, reading_kinds, reading_question)

KINDS = ("full", *READING_KINDS)  # "full": the evaluation's own question


def build(data: Path, out: Path, limit: int) -> int:
    """Write OUT/set/eval/{questions,answers}.jsonl for the first ``limit`` OCR questions."""
    manifest = json.loads((data / "synthvqa.json").read_text())
    questions = [json.loads(x) for x in (data / "eval" / "questions.jsonl").read_text().splitlines()]
    ocr = [q for q in questions if q["category"] == "ocr"][:limit]
    cfg = config_from_manifest(manifest)  # OCR-only sets and every --ocr-style regenerate their own texts
    qs, ans = [], []
    for q in ocr:
        index = int(q["question_id"].rsplit("-", 1)[1])
        item = make_item(manifest["seed"], "eval", index, cfg)
        text = item.meta["text"]
        for kind in ("full", *reading_kinds(text)):  # one-glyph texts (--ocr-style large) have no "second"
            question, answer = (item.question, item.answer) if kind == "full" else reading_question(text, kind)
            sub = f"{kind}/{item.subcategory}"
            qid = f"{q['question_id']}/{kind}"
            qs.append({"question_id": qid, "image": q["image"], "text": question + SHORT_ANSWER,
                       "category": "ocr", "subcategory": sub})
            ans.append({"question_id": qid, "text": answer, "category": "ocr", "subcategory": sub})
    target = out / "set"
    (target / "eval").mkdir(parents=True, exist_ok=True)
    (target / "synthvqa.json").write_text(json.dumps(manifest))
    (target / "eval" / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in qs))
    (target / "eval" / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ans))
    return len(ocr)


def report(out: Path) -> dict:
    truth = {r["question_id"]: r for r in map(json.loads, (out / "set" / "eval" / "answers.jsonl").open())}
    by = defaultdict(list)
    for line in (out / "samples.jsonl").open():
        s = json.loads(line)
        by[truth[s["question_id"]]["subcategory"]].append((s["text"].strip(), bool(s["correct"])))
    rows = {}
    for sub, got in sorted(by.items()):
        answers = Counter(a for a, _ in got)
        top, n_top = answers.most_common(1)[0]
        rows[sub] = {"n": len(got), "accuracy": round(100 * sum(c for _, c in got) / len(got), 1),
                     "distinct_answers": len(answers), "top_answer": top, "top_share": round(100 * n_top / len(got), 1)}
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="preset, checkpoint directory or config JSON")
    ap.add_argument("--data", type=Path, required=True, help="SynthVQA directory with eval/ and synthvqa.json")
    ap.add_argument("--out", type=Path, required=True, help="output directory")
    ap.add_argument("--limit", type=int, default=200, help="OCR images (each asked 5 questions)")
    args = ap.parse_args()
    n = build(args.data, args.out, args.limit)
    meteor = Path(sys.executable).with_name("meteor")
    subprocess.run([str(meteor), "eval", "--model", args.model, "--data", str(args.out / "set"),
                    "--image-root", str(args.data), "--batch-size", "32", "--max-new-tokens", "10", "--device", "cpu",
                    "-q", "--out", str(args.out / "metrics.json"), "--samples-out", str(args.out / "samples.jsonl")],
                   check=True)
    rows = report(args.out)
    (args.out / "report.json").write_text(json.dumps({"model": args.model, "images": n, "kinds": rows}, indent=2))
    print(f"{'kind/text':<16}{'n':>5}{'acc %':>8}{'distinct':>10}  top answer (share %)")
    for sub, r in rows.items():
        print(f"{sub:<16}{r['n']:>5}{r['accuracy']:>8}{r['distinct_answers']:>10}  {r['top_answer']!r} ({r['top_share']})")


if __name__ == "__main__":
    main()
