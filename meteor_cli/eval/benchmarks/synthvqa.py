"""SynthVQA (``meteor synth``): file loading and per-family scoring, registered for ``meteor eval``.

SynthVQA (``meteor synth``) is scored per family with the metric of the benchmark it stands in
for, and the families are averaged::

    meteor synth --out synth --eval 800
    meteor eval --model ckpt/ --benchmark synthvqa --data synth/eval --out metrics.json

From Python::

    bench = BENCHMARKS.get("synthvqa")()
    questions, answers = bench.load("synth")             # or "synth/eval"
    report = bench.score(answers, {"eval-000000": "3", ...})
    report["mean"], report["families"]["hallucination"]["f1"]

=================  ====================================================  ==========================
family             rule                                                  reported
=================  ====================================================  ==========================
``general``        GQA exact match, llava protocol (``rstrip('.')``,      accuracy
                   lower-case)
``hallucination``  POPE, LLaVA word-level yes/no parse                   accuracy, F1 (overall and
                                                                         per random / popular /
                                                                         adversarial)
``ocr``            exact match after lower-casing and deleting all       accuracy
                   whitespace ("cat" = "c a t" = "C A T")
``chart``          ChartQA relaxed accuracy (5% numeric tolerance)       accuracy
=================  ====================================================  ==========================

``mean`` is the unweighted mean of the family accuracies (in %) over the families present.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from meteor_cli.data.synthvqa import FAMILIES, POPE_CATEGORIES, SHORT_ANSWER
from meteor_cli.errors import InputNotFoundError, InvalidInputError, UsageError
from meteor_cli.eval.benchmarks.base import Benchmark, Item, Loaded, resolve_image
from meteor_cli.eval.metrics import MetricResult, chartqa_relaxed_accuracy, gqa_accuracy, pope_metrics
from meteor_cli.registry import register_benchmark

QUESTION_FIELDS = ("question_id", "image", "text", "category")
ANSWER_FIELDS = ("question_id", "text", "category")


# ------------------------------------------------------------------------------------------------
# Reading LLaVA-style JSONL with errors that name the file and line
# ------------------------------------------------------------------------------------------------


def read_jsonl(path: str | os.PathLike[str], required: Sequence[str] = (), *,
               missing_hint: str = "check the path") -> list[dict[str, Any]]:
    """The objects of a JSONL file, in order; blank lines are skipped.

    Raises:
        InputNotFoundError: the file does not exist (exit code 3).
        InvalidInputError: a line is not a JSON object, lacks a ``required`` field, or repeats a
            ``question_id`` (exit code 4); the message names the file and line.
    """
    p = Path(path)
    if not p.is_file():
        raise InputNotFoundError(f"{p}: no such file", missing_hint)
    records: list[dict[str, Any]] = []
    seen: dict[Any, int] = {}
    with p.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInputError(f"{p}:{lineno}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                                        f"{exc.start + 1})", "convert the file to UTF-8") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInputError(f"{p}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})",
                                        "each line must hold one JSON object") from None
            if not isinstance(obj, dict):
                raise InvalidInputError(f"{p}:{lineno}: a {type(obj).__name__}, not a JSON object",
                                        "each line must hold one JSON object")
            missing = [k for k in required if k not in obj]
            if missing:
                raise InvalidInputError(f"{p}:{lineno}: missing field(s) {', '.join(map(repr, missing))}",
                                        f"every line needs {', '.join(required)}")
            qid = obj.get("question_id")
            if qid is not None:
                if qid in seen:
                    raise InvalidInputError(f"{p}:{lineno}: question_id {qid!r} repeats line {seen[qid]}",
                                            "question ids must be unique")
                seen[qid] = lineno
            records.append(obj)
    return records


def read_predictions(path: str | os.PathLike[str]) -> dict[Any, str]:
    """A LLaVA answers file (``merge.jsonl``: ``question_id``, ``text``, ...) as ``{question_id: text}``.

    Shards merged with ``cat`` must not overlap: a repeated ``question_id`` is an error naming
    the line, as are lines without ``question_id`` or ``text``.
    """
    rows = read_jsonl(path, ("question_id", "text"),
                      missing_hint="run inference first; merge shards with `cat answers/*.jsonl > merge.jsonl`")
    return {r["question_id"]: str(r["text"]) for r in rows}


# ------------------------------------------------------------------------------------------------
# SynthVQA scoring
# ------------------------------------------------------------------------------------------------


def normalize_synth_ocr(text: str) -> str:
    """OCR answers compare lower-cased with all whitespace removed, so spelling does not matter.

    Example:
        >>> normalize_synth_ocr("C a T"), normalize_synth_ocr("4 0 7\\n")
        ('cat', '407')
    """
    return "".join(text.lower().split())


def _prediction_text(pred: Any, qid: Any) -> str:
    """A prediction may be the output string or a LLaVA answers-file record with ``text``."""
    if isinstance(pred, str):
        return pred
    if isinstance(pred, Mapping) and isinstance(pred.get("text"), str):
        return pred["text"]
    raise InvalidInputError(f"prediction for question {qid!r} is {type(pred).__name__}, not a string "
                            "or a record with a 'text' string", "pass the model output text per question_id")


def _family_accuracy(result: MetricResult) -> dict[str, Any]:
    return {"accuracy": result.value, "n": result.n, "metric": result.metric, "protocol": result.protocol,
            "n_unparsed": result.n_failed_parse}


def score_synthvqa(
    answers_by_qid: Mapping[Any, Mapping[str, Any]],
    predictions_by_qid: Mapping[Any, Any],
    *,
    missing: str = "error",
) -> dict[str, Any]:
    """Score SynthVQA predictions per family (rules in the module docstring).

    Args:
        answers_by_qid: ``question_id`` → answer record (``text``, ``category`` = family,
            ``subcategory``), as :meth:`SynthVQA.load` returns them.
        predictions_by_qid: ``question_id`` → output text (or a record with ``text``).
        missing: what to do with answers that have no prediction: ``"error"`` (default: a
            partial run should not pass for a full one) or ``"skip"`` (score only the predicted
            questions, e.g. with ``--limit`` or one shard; ``n_missing`` says how many were left
            out). There is no "count as wrong": POPE's precision/recall have no cell for a
            missing answer.

    Returns:
        ``{"benchmark", "metric": "accuracy", "value" (= mean), "mean", "n", "n_missing",
        "families": {family: {"accuracy", "n", "metric", "protocol", "subcategories", ...}},
        "per_sample": [{"qid", "family", "subcategory", "prediction", "answer", "parsed", "correct"}]}``.
        Accuracies are percentages. ``hallucination`` adds ``f1``, ``precision``, ``recall``,
        ``yes_ratio`` (from predictions) and ``pope`` (the same per random/popular/adversarial).

    Example:
        >>> answers = {"q1": {"text": "red", "category": "general", "subcategory": "color"},
        ...            "q2": {"text": "c a t", "category": "ocr", "subcategory": "word"}}
        >>> r = score_synthvqa(answers, {"q1": "Red.", "q2": "dog"})
        >>> r["mean"], r["families"]["general"]["accuracy"], r["families"]["ocr"]["accuracy"]
        (50.0, 100.0, 0.0)
    """
    if missing not in ("error", "skip"):
        raise UsageError(f"unknown missing-prediction policy {missing!r}", "use 'error' or 'skip'")
    unknown_preds = [q for q in predictions_by_qid if q not in answers_by_qid]
    if unknown_preds:
        raise InvalidInputError(f"{len(unknown_preds)} prediction(s) have no ground truth, e.g. question_id "
                                f"{unknown_preds[0]!r}", "check that predictions and answers come from the same "
                                "SynthVQA set (same seed and --eval size)")
    absent = [q for q in answers_by_qid if q not in predictions_by_qid]
    if absent and missing == "error":
        raise InvalidInputError(f"{len(absent)} of {len(answers_by_qid)} questions have no prediction, e.g. "
                                f"question_id {absent[0]!r}", "finish (or merge) the run, or score the subset "
                                "with missing='skip'")

    # family → parallel lists (qid, prediction, answer, subcategory), in answers-file order
    rows: dict[str, list[tuple[Any, str, str, str]]] = defaultdict(list)
    for qid, ans in answers_by_qid.items():
        family = ans.get("category")
        if family not in FAMILIES:
            raise InvalidInputError(f"question {qid!r} has category {family!r}, not a SynthVQA family",
                                    f"categories are {', '.join(FAMILIES)}")
        if qid not in predictions_by_qid:
            continue  # missing == "skip" (else we raised above)
        pred = _prediction_text(predictions_by_qid[qid], qid)
        rows[family].append((qid, pred, str(ans["text"]), str(ans.get("subcategory", ""))))

    families: dict[str, dict[str, Any]] = {}
    samples: list[dict[str, Any]] = []
    for family in FAMILIES:
        if not rows.get(family):
            continue
        qids, preds, gts, subs = (list(col) for col in zip(*rows[family]))
        if family == "general":
            res = gqa_accuracy(preds, gts, protocol="llava", qids=qids, split="synthvqa/general")
        elif family == "hallucination":
            res = pope_metrics(preds, gts, categories=subs, protocol="llava", qids=qids,
                               split="synthvqa/hallucination")
        elif family == "chart":
            res = chartqa_relaxed_accuracy(preds, gts, qids=qids, split="synthvqa/chart")
        else:  # ocr
            parsed = [normalize_synth_ocr(p) for p in preds]
            correct = [p == normalize_synth_ocr(g) for p, g in zip(parsed, gts)]
            res = MetricResult("synth_ocr_accuracy", 100.0 * sum(correct) / len(correct), "meteor", len(correct),
                               per_sample=[{"qid": q, "parsed": p, "correct": c}
                                           for q, p, c in zip(qids, parsed, correct)])
        fam = _family_accuracy(res)
        correct = [bool(s["correct"]) for s in res.per_sample]
        if family == "hallucination":
            overall = res.breakdown["overall"]
            # POPE's accuracy pools the categories; F1 is reported pooled and per category.
            fam["accuracy"], fam["metric"] = overall["accuracy"], "pope_accuracy"
            fam.update({k: overall[k] for k in ("f1", "precision", "recall", "yes_ratio")})
            fam["pope"] = {c: {k: s[k] for k in ("f1", "accuracy", "precision", "recall", "yes_ratio", "n")}
                           for c, s in res.breakdown["categories"].items()}
            fam["pope"] = {c: fam["pope"][c] for c in (*POPE_CATEGORIES, *fam["pope"]) if c in fam["pope"]}
        fam["subcategories"] = _subcategory_accuracy(subs, correct)
        families[family] = fam
        for q, p, g, sub, s in zip(qids, preds, gts, subs, res.per_sample):
            samples.append({"qid": q, "family": family, "subcategory": sub, "prediction": p, "answer": g,
                            "parsed": s["parsed"], "correct": bool(s["correct"])})

    accs = [f["accuracy"] for f in families.values()]
    mean = sum(accs) / len(accs) if accs else 0.0
    return {"benchmark": "synthvqa", "metric": "accuracy", "value": mean, "mean": mean,
            "n": sum(f["n"] for f in families.values()), "n_missing": len(absent), "missing": missing,
            "prompt_suffix": SHORT_ANSWER, "families": families, "per_sample": samples}


def _subcategory_accuracy(subs: Sequence[str], correct: Sequence[bool]) -> dict[str, dict[str, float]]:
    groups: dict[str, list[bool]] = defaultdict(list)
    for s, c in zip(subs, correct):
        groups[s].append(c)
    return {s: {"accuracy": 100.0 * sum(v) / len(v), "n": len(v)} for s, v in sorted(groups.items())}


LAYOUT = """\
DIR/                        (written by `meteor synth --out DIR`; DIR/eval also accepted)
  eval/questions.jsonl      question_id, image, text, category (+ subcategory)
  eval/answers.jsonl        question_id, text (ground truth), category, subcategory
  images/eval/*.png"""


@register_benchmark("synthvqa", description="SynthVQA (meteor synth): general/hallucination/ocr/chart, "
                    "scored as GQA/POPE/exact-match/ChartQA; mean accuracy over families", layout="synthvqa")
class SynthVQA(Benchmark):
    """The SynthVQA benchmark: reads ``eval/questions.jsonl`` + ``eval/answers.jsonl`` and scores outputs.

    Example:
        >>> bench = SynthVQA()
        >>> bench.families
        ('general', 'hallucination', 'ocr', 'chart')
    """

    name = "synthvqa"
    layouts = {"synthvqa": LAYOUT}
    protocols = ("llava",)
    families: tuple[str, ...] = FAMILIES
    prompt_suffix = SHORT_ANSWER
    questions_file = "questions.jsonl"
    answers_file = "answers.jsonl"

    def eval_dir(self, directory: str | os.PathLike[str]) -> Path:
        """The folder holding the two files: ``directory`` itself or its ``eval/`` subfolder."""
        d = Path(directory)
        if (d / self.questions_file).is_file():
            return d
        if (d / "eval" / self.questions_file).is_file():
            return d / "eval"
        if not d.exists():
            raise InputNotFoundError(f"{d}: no such directory", "generate SynthVQA with `meteor synth --out DIR`")
        raise InputNotFoundError(f"{d}: no {self.questions_file} here or in {d / 'eval'}",
                                 "pass the SynthVQA directory (or its eval/ folder) written by `meteor synth`")

    def load(self, directory: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], dict[Any, dict[str, Any]]]:
        """``(questions, answers)``: the question records in file order, and answers by ``question_id``.

        Raises:
            InputNotFoundError: the directory or a file is missing.
            InvalidInputError: a malformed line (the message names file and line), an unknown
                family, or question and answer files that list different question ids.
        """
        d = self.eval_dir(directory)
        hint = "regenerate the set with `meteor synth --out DIR`"
        questions = read_jsonl(d / self.questions_file, QUESTION_FIELDS, missing_hint=hint)
        answer_rows = read_jsonl(d / self.answers_file, ANSWER_FIELDS, missing_hint=hint)
        for path, recs in ((d / self.questions_file, questions), (d / self.answers_file, answer_rows)):
            for r in recs:
                if r["category"] not in FAMILIES:
                    raise InvalidInputError(f"{path}: question {r['question_id']!r} has category "
                                            f"{r['category']!r}", f"categories are {', '.join(FAMILIES)}")
        answers = {a["question_id"]: a for a in answer_rows}
        q_ids = [q["question_id"] for q in questions]
        only_q = [q for q in q_ids if q not in answers]
        only_a = [a for a in answers if a not in set(q_ids)]
        if only_q or only_a:
            example = f"{only_q[0]!r} has no answer" if only_q else f"{only_a[0]!r} has no question"
            raise InvalidInputError(f"{d}: {self.questions_file} and {self.answers_file} list different questions "
                                    f"({len(only_q)} without answer, {len(only_a)} without question; e.g. {example})",
                                    "regenerate the set with `meteor synth` rather than editing one file")
        return questions, answers

    def score(self, answers: Mapping[Any, Mapping[str, Any]],
              predictions: Mapping[Any, Any] | str | os.PathLike[str],
              *, missing: str = "error") -> dict[str, Any]:
        """:func:`score_synthvqa`; ``predictions`` may also be the path of a LLaVA answers file."""
        if isinstance(predictions, (str, os.PathLike)):
            predictions = read_predictions(predictions)
        return score_synthvqa(answers, predictions, missing=missing)

    def load_items(self, data: Path, *, image_root: Path | None = None, variant: str | None = None,
                   allow_outside_root: bool = False) -> Loaded:
        """The questions as :class:`Item` (images against ``--image-root``, then the set's directory)."""
        self.check_variant(variant)
        questions, answers = self.load(data)
        d = self.eval_dir(data)
        roots = [r for r in (image_root, Path(data), d.parent, d) if r is not None]
        items = []
        for q in questions:
            a = answers[q["question_id"]]
            items.append(Item(q["question_id"], q["text"],
                              resolve_image(str(q["image"]), roots, allow_outside_root=allow_outside_root),
                              str(a["text"]), category=q["category"], subcategory=a.get("subcategory"),
                              image_name=str(q["image"])))
        return Loaded(items, "synthvqa", [str(d / self.questions_file), str(d / self.answers_file)],
                      prompt={"suffix": SHORT_ANSWER, "source": "question file text"})

    def score_rows(self, rows: Sequence[Mapping[str, Any]], *, protocol: str = "llava") -> dict[str, Any]:
        """:func:`score_synthvqa` over sample rows, with the headline labelled (mean over families)."""
        self.check_protocol(protocol)
        answers = {r["question_id"]: {"text": r["answer"], "category": r["category"],
                                      "subcategory": r.get("subcategory") or ""} for r in rows}
        out = score_synthvqa(answers, {r["question_id"]: r["text"] for r in rows}, missing="error")
        fams = out["families"]
        correct = [s["correct"] for s in out["per_sample"]]
        out.update({"headline": "mean accuracy over families (unweighted)", "protocol": "llava",
                    "overall": 100.0 * sum(correct) / len(correct) if correct else None,
                    "category_mean": out["mean"],
                    "categories": {f: {"score": v["accuracy"], "n": v["n"]} for f, v in fams.items()},
                    "n_unparsed": sum(f["n_unparsed"] for f in fams.values())})
        return out


__all__ = ["SynthVQA", "normalize_synth_ocr", "read_jsonl", "read_predictions", "score_synthvqa"]
