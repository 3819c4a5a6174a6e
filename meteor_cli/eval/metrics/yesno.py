"""Yes/no benchmarks: POPE (hallucination probing; precision/recall/F1) and MME (acc + acc+ per
image pair)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from meteor_cli.errors import InvalidInputError, UsageError
from meteor_cli.eval.metrics.base import SHORT_ANSWER, MetricResult, _check_lengths, _check_protocol, _pct, _rows

# ------------------------------------------------------------------------------------------------
# POPE: yes/no hallucination probing
# ------------------------------------------------------------------------------------------------


_POPE_NO_WORDS = frozenset({"No", "no", "not"})


def _pope_words(text: str) -> list[str]:
    """``eval_pope.py``'s tokens: the text before the first ``.``, commas deleted, split on ``" "``."""
    return text.split(".")[0].replace(",", "").split(" ")


def parse_pope_llava(text: str) -> str:
    """LLaVA's ``eval_pope.py`` parse: ``"no"`` if the first sentence has the word No/no/not, else ``"yes"``.

    Only the text before the first ``.`` counts; commas are deleted and words are split on single
    spaces (not newlines), and ``"NO"`` is not a no-word. Anything else, even gibberish, is "yes".

    Example:
        >>> parse_pope_llava("No, there is not."), parse_pope_llava("There is no. No!")
        ('no', 'no')
        >>> parse_pope_llava("Yes. No."), parse_pope_llava("NO"), parse_pope_llava("I cannot tell")
        ('yes', 'yes', 'yes')
    """
    return "no" if _POPE_NO_WORDS & set(_pope_words(text)) else "yes"


def _binary_stats(preds: Sequence[str | None], labels: Sequence[str]) -> dict[str, float]:
    """TP/FP/TN/FN with positive = "yes"; predictions other than yes/no count in no cell.

    Rates are percentages; a zero denominator gives 0.0 (LLaVA's script would raise).
    """
    tp = sum(p == "yes" and g == "yes" for p, g in zip(preds, labels))
    fp = sum(p == "yes" and g == "no" for p, g in zip(preds, labels))
    tn = sum(p == "no" and g == "no" for p, g in zip(preds, labels))
    fn = sum(p == "no" and g == "yes" for p, g in zip(preds, labels))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn,
            "precision": 100 * precision, "recall": 100 * recall, "f1": 100 * f1}


def _pope_label(label: str) -> str:
    # eval_pope.py: a label is negative iff it is "no"; anything else is positive.
    return "no" if label.strip().lower() == "no" else "yes"


def pope_metrics(
    predictions: Sequence[str],
    labels: Sequence[str],
    *,
    categories: Sequence[str] | None = None,
    protocol: str = "llava",
    headline: str = "f1",
    qids: Sequence[Any] | None = None,
    split: str | None = None,
    prompt_suffix: str | None = SHORT_ANSWER,
) -> MetricResult:
    """POPE precision/recall/F1/accuracy/yes-ratio, per category and overall.

    llava (``eval_pope.py``): each output is parsed by :func:`parse_pope_llava`; per category,
    ``acc = (TP+TN)/N`` and ``yes_ratio = #predicted yes / N`` (from the *predictions*). The
    headline ``value`` is the mean over categories of ``headline`` (``"f1"``: LLaVA-1.5's POPE
    column; ``"accuracy"``: what other papers report); ``breakdown["overall"]`` pools all rows.

    lmms (``pope`` task): no parse; ``correct = (p.lower().strip() == label)`` so ``"Yes."`` is
    wrong, precision/recall count only outputs that are exactly yes/no, and ``yes_ratio`` is
    #label-yes / N, i.e. computed from the *ground truth* (an lmms bug, labelled in
    ``settings["yes_ratio_source"]``; the prediction-based ratio is kept as
    ``yes_ratio_from_predictions``). lmms pools the categories, so ``value`` is the pooled metric.

    ``n_failed_parse`` counts outputs with no yes/no answer: for llava, first sentences with
    neither a no-word nor the word yes/Yes (they were scored as "yes"); for lmms, outputs that are
    not exactly yes/no.

    Example (labels yes, yes, no, no; outputs parse to yes, no, no, yes):
        >>> r = pope_metrics(["Yes.", "No, it is not", "no", "maybe"], ["yes", "yes", "no", "no"])
        >>> r.value, r.breakdown["overall"]["yes_ratio"], r.n_failed_parse
        (50.0, 50.0, 1)
    """
    _check_protocol(protocol, "POPE")
    if headline not in ("f1", "accuracy"):
        raise UsageError(f"unknown POPE headline {headline!r}", "use 'f1' or 'accuracy'")
    n = _check_lengths("POPE", predictions=predictions, labels=labels, categories=categories, qids=qids)
    gts = [_pope_label(g) for g in labels]
    if protocol == "llava":
        parsed: list[str | None] = [parse_pope_llava(p) for p in predictions]
        correct = [p == g for p, g in zip(parsed, gts)]
        # "yes" by default only: neither a no-word nor yes/Yes in the first sentence
        failed = sum(not ((_POPE_NO_WORDS | {"yes", "Yes"}) & set(_pope_words(p))) for p in predictions)
    else:
        raw = [p.lower().strip() for p in predictions]
        parsed = [p if p in ("yes", "no") else None for p in raw]
        # lmms compares against the label as given (lower-case "yes"/"no" in the dataset).
        correct = [p == g.strip().lower() for p, g in zip(raw, labels)]
        failed = sum(p is None for p in parsed)

    def stats(idx: list[int]) -> dict[str, Any]:
        s: dict[str, Any] = _binary_stats([parsed[i] for i in idx], [gts[i] for i in idx])
        s["accuracy"] = _pct(sum(correct[i] for i in idx), len(idx))
        pred_yes = _pct(sum(parsed[i] == "yes" for i in idx), len(idx))
        if protocol == "llava":
            s["yes_ratio"] = pred_yes
        else:
            s["yes_ratio"] = _pct(sum(gts[i] == "yes" for i in idx), len(idx))  # sic: from GT
            s["yes_ratio_from_predictions"] = pred_yes
        s["n"] = len(idx)
        return s

    cats = list(categories) if categories is not None else ["all"] * n
    by_cat: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(cats):
        by_cat[str(c)].append(i)
    breakdown: dict[str, Any] = {"categories": {c: stats(idx) for c, idx in by_cat.items()},
                                 "overall": stats(list(range(n)))}
    if protocol == "llava":
        per_cat = [s[headline] for s in breakdown["categories"].values()]
        value = sum(per_cat) / len(per_cat) if per_cat else 0.0
        breakdown["mean_over_categories"] = {
            k: (sum(s[k] for s in breakdown["categories"].values()) / len(per_cat) if per_cat else 0.0)
            for k in ("f1", "accuracy", "precision", "recall", "yes_ratio")}
    else:
        value = breakdown["overall"][headline]
    settings = {"headline": headline,
                "yes_ratio_source": "predictions" if protocol == "llava" else "ground_truth (lmms quirk)",
                "parse": "first sentence, word-level yes/no" if protocol == "llava" else "exact match after lower/strip",
                "aggregation": "mean over categories" if protocol == "llava" else "pooled"}
    return MetricResult(f"pope_{headline}", value, protocol, n, failed, split, prompt_suffix,
                        _rows(qids, n, category=cats, parsed=parsed, correct=correct), breakdown, settings)


# ------------------------------------------------------------------------------------------------
# MME: yes/no pairs per image, acc + acc+
# ------------------------------------------------------------------------------------------------

MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene",
                  "landmark", "artwork", "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def parse_mme(text: str, protocol: str = "llava") -> str:
    """An MME output as ``"yes"``, ``"no"`` or ``"other"`` (``other`` is scored wrong).

    llava (official ``calculation.py``): lower-case; exactly yes/no, else look for "yes" and then
    "no" in the first 4 characters (so "not sure" is "no" and "  yes" is "other").
    lmms: first ``lower().strip().replace('.', '')``, then a lone ``y``/``n`` also counts, then the
    same 4-character prefix rule.

    Example:
        >>> parse_mme("Yes, it is."), parse_mme("Not sure"), parse_mme("  yes"), parse_mme("y")
        ('yes', 'no', 'other', 'other')
        >>> parse_mme("  yes", "lmms"), parse_mme("y", "lmms"), parse_mme("No.", "lmms")
        ('yes', 'yes', 'no')
    """
    s = text.lower()
    if protocol == "lmms":
        s = s.strip().replace(".", "")
        if len(s) == 1:
            return {"y": "yes", "n": "no"}.get(s, "other")
    if s in ("yes", "no"):
        return s
    head = s[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def mme_scores(
    predictions: Sequence[str],
    answers: Sequence[str],
    subtasks: Sequence[str],
    image_ids: Sequence[Any],
    *,
    protocol: str = "llava",
    qids: Sequence[Any] | None = None,
    split: str | None = None,
    prompt_suffix: str | None = SHORT_ANSWER,
) -> MetricResult:
    """MME subtask scores (``100·acc + 100·acc+``, max 200) and perception/cognition sums.

    ``acc`` is the fraction of questions answered right, ``acc+`` the fraction of images whose
    questions are all right. Every image must have exactly two questions (both reference scripts
    assume it; a different count raises :class:`InvalidInputError`). ``value`` is the perception
    sum (max 2000; the "MME" column of LLaVA/EAGLE tables) when any perception subtask is present,
    else the cognition sum (max 800). Unknown subtask names raise.

    Example (one existence image, one right and one wrong: acc 0.5, acc+ 0 → 50 points):
        >>> mme_scores(["Yes", "yes"], ["Yes", "No"], ["existence"] * 2, ["a.jpg"] * 2).value
        50.0
    """
    _check_protocol(protocol, "MME")
    n = _check_lengths("MME", predictions=predictions, answers=answers, subtasks=subtasks,
                       image_ids=image_ids, qids=qids)
    unknown = sorted(set(subtasks) - set(MME_PERCEPTION) - set(MME_COGNITION))
    if unknown:
        raise InvalidInputError(f"MME: unknown subtask(s) {', '.join(map(repr, unknown))}",
                                f"use the official names: {', '.join(MME_PERCEPTION + MME_COGNITION)}")
    parsed = [parse_mme(p, protocol) for p in predictions]
    correct = [p == g.strip().lower() for p, g in zip(parsed, answers)]
    # (subtask, image) → indices of its questions
    images: dict[tuple[str, Any], list[int]] = defaultdict(list)
    for i, (t, img) in enumerate(zip(subtasks, image_ids)):
        images[(t, img)].append(i)
    bad = [(t, img, len(v)) for (t, img), v in images.items() if len(v) != 2]
    if bad:
        t, img, k = bad[0]
        raise InvalidInputError(f"MME: image {img!r} of subtask {t!r} has {k} question(s), not 2 "
                                f"({len(bad)} such image(s))",
                                "MME scores acc+ over pairs of questions; evaluate both questions of every image")
    per_task: dict[str, dict[str, float]] = {}
    for t in dict.fromkeys(subtasks):  # first-seen order
        q = [i for i in range(n) if subtasks[i] == t]
        imgs = [v for (tt, _), v in images.items() if tt == t]
        acc = sum(correct[i] for i in q) / len(q)
        acc_plus = sum(all(correct[i] for i in v) for v in imgs) / len(imgs)
        per_task[t] = {"acc": 100 * acc, "acc_plus": 100 * acc_plus, "score": 100 * acc + 100 * acc_plus,
                       "n_questions": len(q), "n_images": len(imgs)}
    perception = sum(s["score"] for t, s in per_task.items() if t in MME_PERCEPTION)
    cognition = sum(s["score"] for t, s in per_task.items() if t in MME_COGNITION)
    has_perception = any(t in MME_PERCEPTION for t in per_task)
    breakdown = {"subtasks": per_task, "perception": perception, "cognition": cognition,
                 "total": perception + cognition}
    return MetricResult("mme_perception" if has_perception else "mme_cognition",
                        perception if has_perception else cognition, protocol, n,
                        sum(p == "other" for p in parsed), split, prompt_suffix,
                        _rows(qids, n, subtask=list(subtasks), parsed=parsed, correct=correct), breakdown)
