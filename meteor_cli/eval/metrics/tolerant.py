"""Answers scored with tolerance: ANLS (DocVQA), relaxed accuracy (ChartQA) and OCRBench's
GT-substring rule."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from meteor_cli.errors import UsageError
from meteor_cli.eval.metrics.base import (
    SHORT_ANSWER,
    MetricResult,
    _check_lengths,
    _check_protocol,
    _group_mean,
    _pct,
    _rows,
)

# ------------------------------------------------------------------------------------------------
# DocVQA: ANLS
# ------------------------------------------------------------------------------------------------


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions all cost 1), O(len(a)·len(b)) time.

    Example:
        >>> levenshtein("kitten", "sitting"), levenshtein("", "abc"), levenshtein("abc", "abc")
        (3, 3, 0)
    """
    if len(a) < len(b):
        a, b = b, a  # keep the DP row as short as the shorter string
    prev = list(range(len(b) + 1))  # prev[j] = distance(a[:i-1], b[:j])
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _anls_norm(s: str) -> str:
    return " ".join(s.strip().lower().split())


def anls_score(prediction: str, answers: Sequence[str], *, threshold: float = 0.5, length: str = "normalized") -> float:
    """ANLS of one prediction: the best ``1 - NL`` over the GT answers, 0 below the threshold.

    ``NL = Levenshtein(a', p') / max(len, len)`` on whitespace-collapsed lower-case strings. With
    ``length="normalized"`` (the ST-VQA definition, the official DocVQA tool and m4c) the lengths
    are those of the normalised strings and a GT counts only if ``NL < τ``. With
    ``length="raw"`` (lmms) the lengths are those of the *raw* strings and the question is zeroed
    only if ``1 - min NL < τ``, so ``NL == τ`` exactly still scores ``1 - τ``.

    Example ("ab" vs "ac": NL = 1/2, on the threshold):
        >>> anls_score("ab", ["ac"]), anls_score("ab", ["ac"], length="raw")
        (0.0, 0.5)
        >>> anls_score(" Total ", ["total"]), anls_score(" Total ", ["total"], length="raw")
        (1.0, 1.0)
    """
    if length not in ("normalized", "raw"):
        raise UsageError(f"unknown ANLS length convention {length!r}", "use 'normalized' or 'raw'")
    p = _anls_norm(prediction)
    best_nl = 1.0
    for a in answers:
        g = _anls_norm(a)
        den = max(len(g), len(p)) if length == "normalized" else max(len(a), len(prediction))
        nl = levenshtein(g, p) / den if den else 0.0  # two empty strings are identical
        if length == "normalized" and nl >= threshold:
            continue  # this answer contributes 0
        best_nl = min(best_nl, nl)
    score = 1.0 - best_nl
    return 0.0 if score < threshold else score


def anls(
    predictions: Sequence[str],
    answers: Sequence[Sequence[str]],
    *,
    threshold: float = 0.5,
    length: str | None = None,
    protocol: str = "llava",
    qids: Sequence[Any] | None = None,
    split: str = "val",
    prompt_suffix: str = SHORT_ANSWER,
) -> MetricResult:
    """DocVQA ANLS (τ = 0.5), as a percentage: mean over questions of :func:`anls_score`.

    ``length`` defaults to ``"normalized"`` (the published definition; protocol llava, meaning
    the official tool since LLaVA has no DocVQA script) or ``"raw"`` for protocol lmms.

    Example:
        >>> anls(["ab", "x"], [["ac"], ["x", "y"]]).value, anls(["ab", "x"], [["ac"], ["x", "y"]], protocol="lmms").value
        (50.0, 75.0)
    """
    _check_protocol(protocol, "DocVQA")
    n = _check_lengths("DocVQA", predictions=predictions, answers=answers, qids=qids)
    length = length or ("raw" if protocol == "lmms" else "normalized")
    scores = [anls_score(p, g, threshold=threshold, length=length) for p, g in zip(predictions, answers)]
    parsed = [_anls_norm(p) for p in predictions]
    return MetricResult("anls", _pct(sum(scores), n), protocol, n, 0, split, prompt_suffix,
                        _rows(qids, n, parsed=parsed, score=scores), {},
                        {"threshold": threshold, "length": length})


# ------------------------------------------------------------------------------------------------
# ChartQA: relaxed accuracy
# ------------------------------------------------------------------------------------------------


def chartqa_float(text: str) -> float | None:
    """A ChartQA number: ``"12%"`` → 0.12, ``"3.5"`` → 3.5, anything ``float`` rejects → None.

    Example:
        >>> chartqa_float("45%"), chartqa_float(" 7 "), chartqa_float("7 kg")
        (0.45, 7.0, None)
    """
    try:
        return float(text.rstrip("%")) / 100 if text.endswith("%") else float(text)
    except ValueError:
        return None


def relaxed_correct(prediction: str, target: str, tolerance: float = 0.05) -> bool:
    """Relaxed accuracy (Methani et al.): numbers within 5% relative error, else exact match ignoring case.

    Quirk kept: a target of 0 is falsy, so it falls through to the string comparison ("0.0" is
    wrong for target "0").

    Example:
        >>> relaxed_correct("104", "100"), relaxed_correct("106", "100"), relaxed_correct("Yes", "yes")
        (True, False, True)
        >>> relaxed_correct("0.0", "0"), relaxed_correct("0", "0")
        (False, True)
    """
    p, g = chartqa_float(prediction), chartqa_float(target)
    if p is not None and g:  # NB: g == 0.0 and g is None both take the string branch
        return abs(p - g) / abs(g) <= tolerance
    return prediction.lower() == target.lower()


def chartqa_relaxed_accuracy(
    predictions: Sequence[str],
    answers: Sequence[str],
    *,
    splits: Sequence[str] | None = None,
    protocol: str = "llava",
    qids: Sequence[Any] | None = None,
    split: str = "test",
    prompt_suffix: str = "\nAnswer the question with a single word.",
) -> MetricResult:
    """ChartQA ``relaxed_overall`` (%) via :func:`relaxed_correct`, plus per-split accuracy.

    ``splits`` (e.g. ``"human"``/``"augmented"``) gives ``breakdown["splits"]``; ``value`` is the
    mean over all rows (equal to the mean of the two split accuracies on the real test set, whose
    splits have 1,250 questions each). Outputs are not cleaned: "12 kg" and "Yes." are wrong
    (though "12." still parses as a number, since Python's ``float`` accepts it). Both protocols
    use this rule; ``protocol`` is a label.

    Example:
        >>> chartqa_relaxed_accuracy(["104", "0.0", "12 kg", "12."], ["100", "0", "12", "12"]).value
        50.0
    """
    _check_protocol(protocol, "ChartQA")
    n = _check_lengths("ChartQA", predictions=predictions, answers=answers, splits=splits, qids=qids)
    correct = [relaxed_correct(p, g) for p, g in zip(predictions, answers)]
    # the number the rule compared, or the raw text when the string branch was taken
    parsed = [chartqa_float(p) if chartqa_float(p) is not None and chartqa_float(g) else p
              for p, g in zip(predictions, answers)]
    breakdown = {"splits": _group_mean(splits, correct)} if splits is not None else {}
    return MetricResult("chartqa_relaxed_accuracy", _pct(sum(correct), n), protocol, n, 0, split, prompt_suffix,
                        _rows(qids, n, parsed=parsed, correct=correct), breakdown)


# ------------------------------------------------------------------------------------------------
# OCRBench: GT-substring rule
# ------------------------------------------------------------------------------------------------

#: OCRBench question types grouped as the final report prints them (max points in brackets).
OCRBENCH_GROUPS = {
    "Text Recognition": ("Regular Text Recognition", "Irregular Text Recognition", "Artistic Text Recognition",
                         "Handwriting Recognition", "Digit String Recognition",
                         "Non-Semantic Text Recognition"),  # 300
    "Scene Text-centric VQA": ("Scene Text-centric VQA",),  # 200
    "Doc-oriented VQA": ("Doc-oriented VQA",),  # 200
    "Key Information Extraction": ("Key Information Extraction",),  # 200
    "Handwritten Mathematical Expression Recognition": ("Handwritten Mathematical Expression Recognition",),  # 100
}


def fold_fullwidth(text: str) -> str:
    """Full-width ASCII (U+FF01-U+FF5E) → ASCII, ideographic space → space (lmms' extra step).

    Example:
        >>> fold_fullwidth("ＡＢＣ１２３　x")
        'ABC123 x'
    """
    return "".join(chr(ord(c) - 0xFEE0) if 0xFF01 <= ord(c) <= 0xFF5E else " " if c == "\u3000" else c
                   for c in text)


def ocrbench_hit(prediction: str, answers: str | Sequence[str], dataset: str = "", protocol: str = "llava") -> bool:
    """1 if any GT answer is a substring of the prediction, after OCRBench's normalisation.

    ``HME100k`` (handwritten maths): spaces and newlines removed from both, case kept. Otherwise
    both are lower-cased, stripped, and newlines become spaces. lmms first folds full-width ASCII.

    Example:
        >>> ocrbench_hit("The word is HELLO.", "hello"), ocrbench_hit("x ^ { 2 }", "x^{2}", "HME100k")
        (True, True)
        >>> ocrbench_hit("X^{2}", "x^{2}", "HME100k"), ocrbench_hit("ｈｅｌｌｏ", "hello", protocol="lmms")
        (False, True)
    """
    gts = [answers] if isinstance(answers, str) else list(answers)
    if protocol == "lmms":
        prediction, gts = fold_fullwidth(prediction), [fold_fullwidth(g) for g in gts]
    if dataset == "HME100k":
        def norm(s: str) -> str:
            return s.replace("\n", "").replace(" ", "")
    else:
        def norm(s: str) -> str:
            return s.lower().strip().replace("\n", " ")
    p = norm(prediction)
    return any(norm(g) in p for g in gts)


def ocrbench_score(
    predictions: Sequence[str],
    answers: Sequence[str | Sequence[str]],
    categories: Sequence[str],
    datasets: Sequence[str] | None = None,
    *,
    protocol: str = "llava",
    qids: Sequence[Any] | None = None,
    split: str = "test",
    prompt_suffix: str | None = None,
) -> MetricResult:
    """OCRBench: hits per category and group (:data:`OCRBENCH_GROUPS`) and the final score.

    ``categories`` are the question types (``type`` field), ``datasets`` the source dataset names
    (``dataset_name``; only ``"HME100k"`` changes the rule). ``value`` is the number of hits (llava:
    the official tool and the integer EAGLE/METEOR tables print, out of 1000 on the full set) or
    hits/1000 (lmms' ``Final/1000``, which divides by 1000 whatever the number of questions).

    Example:
        >>> ocrbench_score(["cat", "a dog", "x"], ["Cat", ["dog", "hound"], "y"], ["Doc-oriented VQA"] * 3).value
        2
    """
    _check_protocol(protocol, "OCRBench")
    n = _check_lengths("OCRBench", predictions=predictions, answers=answers, categories=categories,
                       datasets=datasets, qids=qids)
    ds = list(datasets) if datasets is not None else [""] * n
    hits = [ocrbench_hit(p, g, d, protocol) for p, g, d in zip(predictions, answers, ds)]
    by_cat: dict[str, int] = defaultdict(int)
    for c, h in zip(categories, hits):
        by_cat[c] += h
    groups = {g: sum(by_cat.get(c, 0) for c in cats) for g, cats in OCRBENCH_GROUPS.items()}
    total = sum(hits)
    breakdown = {"categories": dict(by_cat), "groups": groups, "hits": total}
    return MetricResult("ocrbench_score", total if protocol == "llava" else total / 1000, protocol, n, 0, split,
                        prompt_suffix, _rows(qids, n, category=list(categories), correct=hits), breakdown,
                        {"fullwidth_folding": protocol == "lmms"})
