"""Benchmark metrics: pure scoring functions, one per benchmark, with both reference protocols.

Every function takes model outputs and ground truths (plus whatever the metric needs: categories,
image ids, option texts) and returns a :class:`MetricResult`. Nothing here reads files, calls a
model or holds state, so each rule can be tested on a handful of hand-worked strings::

    >>> r = gqa_accuracy(["Red.", "left"], ["red", "right"])
    >>> r.value, r.protocol, [s["parsed"] for s in r.per_sample]
    (50.0, 'llava', ['red', 'left'])

Protocols. The published numbers come from two families of scripts that disagree in places
(the project's evaluation conventions, "Benchmarks: formats and metrics" and "Divergences"): ``protocol="llava"`` is the original script (LLaVA's
``eval_*.py``; where LLaVA has none, the benchmark's official tool or the standard definition),
``protocol="lmms"`` is the lmms-eval task. Each result says which one it used, and settings that
change the number without changing the formula (OCR tokens in the TextVQA prompt, the ANLS length
convention, where POPE's yes-ratio comes from) are recorded in ``MetricResult.settings``.

Units. ``value`` is what papers print: a percentage (0-100) for accuracies, F1 and ANLS; points
for MME (perception ≤ 2000, cognition ≤ 800); for OCRBench the integer number of hits (llava) or
hits/1000 (lmms). Rates in ``breakdown`` are percentages too.

These functions are what ``meteor eval`` calls; ``metrics.json`` gets :meth:`MetricResult.to_dict`
``(samples=False)`` and ``samples.jsonl`` gets ``per_sample`` (one dict per question, in input
order).
"""

from __future__ import annotations

import re
import string
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from meteor_cli.errors import InvalidInputError, UsageError

PROTOCOLS = ("llava", "lmms")
#: Instruction suffixes appended to the question text (LLaVA ``docs/Evaluation.md``).
SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
MULTIPLE_CHOICE = "\nAnswer with the option's letter from the given choices directly."
LETTERS = string.ascii_uppercase


# ------------------------------------------------------------------------------------------------
# Result type and shared helpers
# ------------------------------------------------------------------------------------------------


@dataclass
class MetricResult:
    """One benchmark score, labelled with how it was computed.

    Example:
        >>> MetricResult("gqa_accuracy", 50.0, "llava", 2).to_dict(samples=False)["value"]
        50.0
    """

    #: Metric name, e.g. ``"gqa_accuracy"``, ``"pope_f1"``, ``"anls"``.
    metric: str
    #: The headline number (units: see the module docstring).
    value: float
    #: ``"llava"`` or ``"lmms"``: which reference implementation's rules were applied.
    protocol: str
    #: Number of items ``value`` averages over (questions; main questions for MMBench).
    n: int
    #: Outputs that no rule could parse into an answer (they are scored as wrong).
    n_failed_parse: int = 0
    #: Dataset split or subset the number is for (label only).
    split: str | None = None
    #: Instruction appended to every question (label only; it must match the prompts used).
    prompt_suffix: str | None = None
    #: One dict per input row: ``qid`` (when given), ``parsed``, and ``correct`` or ``score``.
    per_sample: list[dict[str, Any]] = field(default_factory=list, repr=False)
    #: Sub-scores: per category, per subtask, precision/recall, ...
    breakdown: dict[str, Any] = field(default_factory=dict)
    #: Settings that change the number (length convention, OCR tokens, yes-ratio source, ...).
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for logs and the CLI, e.g. ``pope_f1 = 85.90 (llava, n=8910, 0 unparsed)``."""
        return (f"{self.metric} = {self.value:.2f} ({self.protocol}, n={self.n}, "
                f"{self.n_failed_parse} unparsed)")

    def to_dict(self, *, samples: bool = True) -> dict[str, Any]:
        """A JSON-ready dict; ``samples=False`` leaves out ``per_sample`` (for ``metrics.json``)."""
        d = asdict(self)
        if not samples:
            d.pop("per_sample")
        return d


def _check_protocol(protocol: str, benchmark: str, allowed: Sequence[str] = PROTOCOLS) -> None:
    if protocol not in allowed:
        raise UsageError(f"unknown {benchmark} protocol {protocol!r}",
                         f"use one of: {', '.join(allowed)}")


def _check_lengths(benchmark: str, **columns: Sequence[Any] | None) -> int:
    """All given columns have the same length; returns it. ``None`` columns are skipped."""
    lengths = {k: len(v) for k, v in columns.items() if v is not None}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{k}={n}" for k, n in lengths.items())
        raise InvalidInputError(f"{benchmark}: inputs have different lengths ({shown})",
                                "pass one prediction per question, in the same order as the answers")
    return next(iter(lengths.values()), 0)


def _rows(qids: Sequence[Any] | None, n: int, **columns: Sequence[Any]) -> list[dict[str, Any]]:
    """Per-sample dicts: ``{"qid": ..., col: value, ...}`` (``qid`` only when ``qids`` is given)."""
    rows = []
    for i in range(n):
        row: dict[str, Any] = {} if qids is None else {"qid": qids[i]}
        row.update({k: v[i] for k, v in columns.items()})
        rows.append(row)
    return rows


def _pct(num: float, den: int) -> float:
    """``100 * num / den``, and 0.0 for an empty set (the reference scripts would divide by 0)."""
    return 100.0 * num / den if den else 0.0


def _group_mean(keys: Sequence[Any], scores: Sequence[float]) -> dict[str, dict[str, float]]:
    """``{key: {"accuracy": %, "n": count}}`` over rows grouped by ``keys`` (first-seen order)."""
    groups: dict[Any, list[float]] = defaultdict(list)
    for k, s in zip(keys, scores):
        groups[k].append(float(s))
    return {str(k): {"accuracy": _pct(sum(v), len(v)), "n": len(v)} for k, v in groups.items()}


def _letter(answer: int | str) -> str:
    """A ground-truth option as a letter: ``2`` or ``"2"`` → ``"C"``, ``"c"`` → ``"C"``."""
    if isinstance(answer, int) or (isinstance(answer, str) and answer.strip().isdigit()):
        return LETTERS[int(answer)]
    return str(answer).strip().upper()


# ------------------------------------------------------------------------------------------------
# GQA: exact match
# ------------------------------------------------------------------------------------------------

_DELETE_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_gqa(text: str, protocol: str = "llava") -> str:
    """The prediction as each GQA protocol compares it.

    llava (``convert_gqa_for_eval.py``): ``rstrip('.')`` then ``lower()``; nothing else, so inner
    punctuation and surrounding spaces still count. lmms (``exact_match`` with ``ignore_case`` and
    ``ignore_punctuation``): lower-case and delete every ``string.punctuation`` character; spaces
    are kept. lmms applies the same to the ground truth; llava compares against it unchanged.

    Example:
        >>> normalize_gqa("Red.."), normalize_gqa("T-shirt.", "lmms")
        ('red', 'tshirt')
    """
    if protocol == "llava":
        return text.rstrip(".").lower()
    return text.lower().translate(_DELETE_PUNCT)


def gqa_accuracy(
    predictions: Sequence[str],
    answers: Sequence[str],
    *,
    protocol: str = "llava",
    qids: Sequence[Any] | None = None,
    split: str = "testdev_balanced",
    prompt_suffix: str = SHORT_ANSWER,
) -> MetricResult:
    """GQA accuracy = mean(prediction == answer) after :func:`normalize_gqa`, in %.

    Example:
        >>> gqa_accuracy(["Yes.", "no"], ["yes", "No"]).value        # llava keeps the GT as is
        50.0
        >>> gqa_accuracy(["Yes.", "no"], ["yes", "No"], protocol="lmms").value
        100.0
    """
    _check_protocol(protocol, "GQA")
    n = _check_lengths("GQA", predictions=predictions, answers=answers, qids=qids)
    parsed = [normalize_gqa(p, protocol) for p in predictions]
    targets = list(answers) if protocol == "llava" else [normalize_gqa(g, "lmms") for g in answers]
    correct = [p == g for p, g in zip(parsed, targets)]
    return MetricResult("gqa_accuracy", _pct(sum(correct), n), protocol, n, 0, split, prompt_suffix,
                        _rows(qids, n, parsed=parsed, correct=correct))


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


# ------------------------------------------------------------------------------------------------
# TextVQA / OK-VQA: EvalAI answer normalisation + VQA accuracy
# ------------------------------------------------------------------------------------------------

# Characters the EvalAI processor deletes or turns into spaces (step 2 of normalize_vqa_answer).
_VQA_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
              "@", "`", ",", "?", "!")
_COMMA_BETWEEN_DIGITS = re.compile(r"(?<=\d),+(?=\d)")
# The reference pattern is "(?!<=\d)(\.)(?!\d)": a typo for a look-behind. "(?!<=\d)" is a
# look-ahead that can never fail in front of ".", so the pattern deletes every period that is
# not followed by a digit: "3.5" and "a.5" keep theirs, "5." and "5.a" lose it.
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
# ... and re.UNICODE (== 32) was passed as the `count` argument of sub(): at most 32 periods go.
_PERIOD_SUB_COUNT = 32
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                 "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset({"a", "an", "the"})
# Apostrophe-less spellings → standard contractions (the VQA evaluation's table). A few entries
# can never fire (capitalised keys after lower-casing) or map "backwards" (somebody'd →
# somebodyd); they are kept for bit-exact scores.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've",
    "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've",
    "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've",
    "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}


def _vqa_punctuation(s: str) -> str:
    """Step 2: per punctuation mark, delete it or turn it into a space; then drop periods.

    The test for each mark looks at the string as it *entered* this step (not as modified by
    earlier marks). The comma test can no longer match after step 1 removed every comma; it is
    kept because the reference has it.
    """
    out = s
    comma_between_digits = _COMMA_BETWEEN_DIGITS.search(s) is not None
    for p in _VQA_PUNCT:
        if (p + " " in s or " " + p in s) or comma_between_digits:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_PERIOD_SUB_COUNT)


def normalize_vqa_answer(text: str) -> str:
    """EvalAI/MMF answer normalisation (TextVQA, OK-VQA, VQAv2), quirks included.

    1. lower-case, delete ``,`` and ``?``, ``'s`` → `` 's``, strip, newlines/tabs → spaces;
    2. punctuation: each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted if it
       touches a space anywhere in the string, else replaced by a space; then periods not followed
       by a digit are deleted, but at most 32 of them (see ``_PERIOD_SUB_COUNT``);
    3. words: number words → digits (none/zero → 0 ... ten → 10), articles a/an/the dropped,
       contractions restored (dont → don't), joined by single spaces.

    Example:
        >>> normalize_vqa_answer("The Two Dogs."), normalize_vqa_answer("3.5 in."), normalize_vqa_answer("dont")
        ('2 dogs', '3.5 in', "don't")
        >>> normalize_vqa_answer("coca-cola"), normalize_vqa_answer("coca - cola"), normalize_vqa_answer("John's")
        ('coca cola', 'coca cola', "john 's")
    """
    s = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    s = s.replace("\n", " ").replace("\t", " ").strip()
    s = _vqa_punctuation(s)
    words = [_NUMBER_WORDS.get(w, w) for w in s.split()]
    words = [_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words)


def vqa_soft_score(prediction: str, answers: Sequence[str]) -> float:
    """The "10 choose 9" VQA accuracy of one normalised prediction against normalised GT answers.

    ``(1/m) Σ_i min(1, #{j ≠ i : g_j == p} / 3)`` over the m answer slots (m = 10 in TextVQA and
    OK-VQA): a prediction given by 3 or more *other* annotators in a leave-one-out round scores 1.

    Example (p matches 2 of 10 answers: 8 rounds see 2 matches, 2 rounds see 1 → (8·2/3 + 2·1/3)/10):
        >>> round(vqa_soft_score("cat", ["cat", "cat"] + ["dog"] * 8), 4)
        0.6
    """
    m = len(answers)
    if m == 0:
        return 0.0
    hits = sum(g == prediction for g in answers)
    # Leave-one-out: a round drops slot i; it drops a match iff g_i == p.
    return sum(min(1.0, (hits - (g == prediction)) / 3) for g in answers) / m


def vqa_accuracy(
    predictions: Sequence[str],
    answers: Sequence[Sequence[str]],
    *,
    benchmark: str = "textvqa",
    protocol: str = "llava",
    ocr_tokens: bool | None = None,
    qids: Sequence[Any] | None = None,
    split: str = "val",
    prompt_suffix: str = SHORT_ANSWER,
) -> MetricResult:
    """TextVQA / OK-VQA accuracy (%): :func:`vqa_soft_score` after :func:`normalize_vqa_answer`.

    Both protocols score identically; what differs between them is the *prompt*: whether the
    TextVQA question carried "Reference OCR token: ..." (LLaVA-1.5 and EAGLE's pinned lmms-eval:
    yes; current lmms-eval: no; a 20+ point difference). ``ocr_tokens`` labels that setting in
    ``settings``; ``None`` means the protocol's default (llava: True, lmms: False). It is not
    applicable to OK-VQA.

    Example:
        >>> vqa_accuracy(["Two"], [["2"] * 10]).value
        100.0
    """
    _check_protocol(protocol, benchmark)
    n = _check_lengths(benchmark, predictions=predictions, answers=answers, qids=qids)
    parsed = [normalize_vqa_answer(p) for p in predictions]
    scores = [vqa_soft_score(p, [normalize_vqa_answer(g) for g in gts]) for p, gts in zip(parsed, answers)]
    settings: dict[str, Any] = {"normalization": "EvalAI (period regex and 32-replacement quirks kept)"}
    if benchmark == "textvqa":
        settings["ocr_tokens_in_prompt"] = (protocol == "llava") if ocr_tokens is None else ocr_tokens
    return MetricResult(f"{benchmark}_accuracy", _pct(sum(scores), n), protocol, n, 0, split, prompt_suffix,
                        _rows(qids, n, parsed=parsed, score=scores), {}, settings)


# ------------------------------------------------------------------------------------------------
# Multiple choice: ScienceQA-IMG, AI2D, SEED-Bench
# ------------------------------------------------------------------------------------------------

_SQA_LETTERS = ("A", "B", "C", "D", "E")
_SQA_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")  # sic: the final "." matches any character


def extract_scienceqa(text: str, protocol: str = "llava") -> str | None:
    """The option letter a ScienceQA output picks, or ``None`` (the reference's ``FAILED``).

    llava (``eval_science_qa.py``): the whole output is A-E; or it starts with ``"X. "`` (X in A-E);
    or ``"The answer is X."`` occurs exactly once. lmms: the output equals a letter ignoring case,
    or starts with ``"X."`` (X upper-case).

    Example:
        >>> extract_scienceqa("B"), extract_scienceqa("B. cat"), extract_scienceqa("B.cat")
        ('B', 'B', None)
        >>> extract_scienceqa("b", "lmms"), extract_scienceqa("B.cat", "lmms"), extract_scienceqa("b", "llava")
        ('B', 'B', None)
    """
    if protocol == "llava":
        if text in _SQA_LETTERS:
            return text
        if len(text) >= 3 and text[0] in _SQA_LETTERS and text[1:3] == ". ":
            return text[0]
        found = _SQA_ANSWER_IS.findall(text)
        return found[0] if len(found) == 1 else None
    if len(text) == 1 and text.upper() in LETTERS:
        return text.upper()
    m = re.match(r"^([A-Z])\.", text)
    return m.group(1) if m else None


def scienceqa_accuracy(
    predictions: Sequence[str],
    answers: Sequence[int | str],
    *,
    protocol: str = "llava",
    qids: Sequence[Any] | None = None,
    split: str = "test-IMG",
    prompt_suffix: str = MULTIPLE_CHOICE,
) -> MetricResult:
    """ScienceQA accuracy (%) via :func:`extract_scienceqa`; unparsable outputs are wrong.

    ``answers`` are option indices (``problems.json``'s ``answer``) or letters. For IMG-Accuracy
    pass only the questions whose prompt contains ``<image>``.

    Example:
        >>> scienceqa_accuracy(["A", "The answer is C.", "b"], [0, 2, 1]).value   # "b" fails llava
        66.66666666666667
    """
    _check_protocol(protocol, "ScienceQA")
    n = _check_lengths("ScienceQA", predictions=predictions, answers=answers, qids=qids)
    parsed = [extract_scienceqa(p, protocol) for p in predictions]
    correct = [p is not None and p == _letter(g) for p, g in zip(parsed, answers)]
    return MetricResult("scienceqa_accuracy", _pct(sum(correct), n), protocol, n,
                        sum(p is None for p in parsed), split, prompt_suffix,
                        _rows(qids, n, parsed=parsed, correct=correct))


def extract_ai2d(text: str) -> str:
    """lmms AI2D filter: the letter of a leading ``"X."`` (after optional spaces), else the raw text.

    Example:
        >>> extract_ai2d("  C. a leaf"), extract_ai2d("C"), extract_ai2d("(C)")
        ('C', 'C', '(C)')
    """
    m = re.match(r"^\s*([A-Z])\.", text)
    return m.group(1) if m else text


def ai2d_accuracy(
    predictions: Sequence[str],
    answers: Sequence[int | str],
    *,
    variant: str = "ai2d",
    protocol: str = "lmms",
    qids: Sequence[Any] | None = None,
    split: str = "test",
    prompt_suffix: str = MULTIPLE_CHOICE,
) -> MetricResult:
    """AI2D accuracy (%): :func:`extract_ai2d`, then exact match ignoring case and punctuation.

    Only lmms defines the protocol (LLaVA has no AI2D script). ``variant`` labels ``ai2d`` (masked
    text boxes) vs ``ai2d_no_mask``. ``answers`` are option indices or letters.

    Example ("(c)" loses its brackets and case, "C is right" keeps its words):
        >>> ai2d_accuracy(["(c)", "C is right", "B."], [2, 2, 1]).value
        66.66666666666667
    """
    _check_protocol(protocol, "AI2D", allowed=("lmms",))
    if variant not in ("ai2d", "ai2d_no_mask"):
        raise UsageError(f"unknown AI2D variant {variant!r}", "use 'ai2d' or 'ai2d_no_mask'")
    n = _check_lengths("AI2D", predictions=predictions, answers=answers, qids=qids)
    parsed = [extract_ai2d(p) for p in predictions]
    correct = [p.lower().translate(_DELETE_PUNCT) == _letter(g).lower() for p, g in zip(parsed, answers)]
    return MetricResult("ai2d_accuracy", _pct(sum(correct), n), protocol, n, 0, split, prompt_suffix,
                        _rows(qids, n, parsed=parsed, correct=correct), {}, {"variant": variant})


def extract_seed(text: str, protocol: str = "llava") -> str:
    """SEED-Bench: llava compares the raw output; lmms strips it and keeps its first character.

    Example:
        >>> extract_seed(" B"), extract_seed(" B. dog", "lmms"), extract_seed("b", "lmms")
        (' B', 'B', 'b')
    """
    if protocol == "llava":
        return text
    s = text.strip()
    return s[0] if len(s) > 1 else s


def seed_accuracy(
    predictions: Sequence[str],
    answers: Sequence[str],
    *,
    question_types: Sequence[Any] | None = None,
    protocol: str = "llava",
    qids: Sequence[Any] | None = None,
    split: str = "image",
    prompt_suffix: str = MULTIPLE_CHOICE,
) -> MetricResult:
    """SEED-Bench accuracy (%), overall and per ``question_type_id``.

    llava (``convert_seed_for_submission.py``): ``output == answer`` exactly. lmms: the output is
    stripped, cut to its first character, and compared case-insensitively. Pass image and video
    questions in separate calls (``split`` labels which; EAGLE reports SEED-I).

    Example:
        >>> seed_accuracy(["B", "b", "B. dog"], ["B", "B", "B"]).value
        33.333333333333336
        >>> seed_accuracy(["B", "b", "B. dog"], ["B", "B", "B"], protocol="lmms").value
        100.0
    """
    _check_protocol(protocol, "SEED-Bench")
    n = _check_lengths("SEED-Bench", predictions=predictions, answers=answers,
                       question_types=question_types, qids=qids)
    parsed = [extract_seed(p, protocol) for p in predictions]
    if protocol == "llava":
        correct = [p == g for p, g in zip(parsed, answers)]
    else:
        correct = [p.lower() == g.strip().lower() for p, g in zip(parsed, answers)]
    breakdown = {"question_types": _group_mean(question_types, correct)} if question_types is not None else {}
    return MetricResult("seed_accuracy", _pct(sum(correct), n), protocol, n, 0, split, prompt_suffix,
                        _rows(qids, n, parsed=parsed, correct=correct), breakdown)


# ------------------------------------------------------------------------------------------------
# MMBench: offline choice extraction + CircularEval
# ------------------------------------------------------------------------------------------------

_MMB_SEPARATORS = str.maketrans({c: " " for c in ".,:;!*#()[]{}"})
# meteor's own offline fallback patterns (step 3), tried in order; not lmms' mcq_extract verbatim.
# The letter itself must be upper-case; a leading letter needs ".", ")" or ":" after it (or
# nothing), so that a leading article ("A cat ...") is not read as option A.
_MMB_STATIC = (
    re.compile(r"(?i:\banswer\s*(?:is|:)\s*(?:option\s*)?)\(?([A-Z])\b"),  # "The answer is (B)", "Answer: B"
    re.compile(r"(?i:\boption\s*)\(?([A-Z])\b"),                         # "option C"
    re.compile(r"^\s*\(?([A-Z])(?:[.:)]|$)"),                              # "B) cat", "(B) ...", "A. the cat"
)


def _option_present(text: Any) -> bool:
    # The TSV leaves unused options (C, D) empty; pandas reads them as NaN (a float != itself).
    return text is not None and text == text and str(text).strip() != ""


def extract_mmbench(text: str, options: Mapping[str, str]) -> tuple[str | None, str]:
    """The option letter an MMBench output picks, and how it was found.

    ``options`` maps letters to option texts; empty, ``None`` and NaN options are ignored. In order:

    1. ``"letter"``: with ``. , : ; ! * # ( ) [ ] { }`` read as spaces, exactly one option letter
       is a whitespace token ("B", "B.", "(B)", ":B"); if that letter is "A" and the answer has more
       than 3 tokens, it may be the article, so this step gives up;
    2. ``"text"``: exactly one option text occurs in the lower-cased answer;
    3. ``"static"``: meteor's offline regexes ("answer is X", "option X", a leading letter),
       standing in for GPT matching (official) or lmms' ``_static`` variant;
    4. ``(None, "failed")``: scored wrong (the official tool would pick at random).

    Example:
        >>> opts = {"A": "cat", "B": "dog", "C": "fish"}
        >>> extract_mmbench("(B)", opts), extract_mmbench("It is a dog", opts)
        (('B', 'letter'), ('B', 'text'))
        >>> extract_mmbench("A cat or a fish", opts), extract_mmbench("The answer is A", opts)
        ((None, 'failed'), ('A', 'static'))
    """
    options = {k: v for k, v in options.items() if _option_present(v)}
    tokens = text.translate(_MMB_SEPARATORS).split()
    found = [c for c in options if c in tokens]
    if len(found) == 1 and not (found[0] == "A" and len(tokens) > 3):
        return found[0], "letter"
    low = text.lower()
    texts = [c for c, t in options.items() if str(t).lower() and str(t).lower() in low]
    if len(texts) == 1:
        return texts[0], "text"
    for pattern in _MMB_STATIC:
        for m in pattern.finditer(text):
            if m.group(1) in options:
                return m.group(1), "static"
    return None, "failed"


def mmbench_circular_eval(
    predictions: Sequence[str],
    answers: Sequence[str],
    options: Sequence[Mapping[str, str]],
    indices: Sequence[int],
    *,
    categories: Sequence[str] | None = None,
    l2_categories: Sequence[str] | None = None,
    protocol: str = "llava",
    split: str = "dev-en",
    prompt_suffix: str = MULTIPLE_CHOICE,
) -> MetricResult:
    """MMBench CircularEval accuracy (%), offline, with :func:`extract_mmbench`.

    Rows are the TSV rows: a main question (``index < 1e6``) and its rotated copies
    (``index + k·1e6``). A main question is a hit only if *every* one of its rows is answered
    correctly; ``value`` is the mean hit over main questions, and ``breakdown`` has the
    per-category and per-L2-category means (over main questions) and the single-pass row accuracy.
    The protocol is a label: both LLaVA (server/opencompass) and lmms score this way, but with GPT
    matching, which offline evaluation replaces by the static extractor (``settings["matching"]``).

    Example (question 1 right in both rotations, question 2 wrong in one → 50%):
        >>> o = [{"A": "x", "B": "y"}, {"A": "y", "B": "x"}] * 2
        >>> mmbench_circular_eval(["A", "B", "A", "A"], ["A", "B", "B", "A"], o, [1, 1000001, 2, 1000002]).value
        50.0
    """
    _check_protocol(protocol, "MMBench")
    n_rows = _check_lengths("MMBench", predictions=predictions, answers=answers, options=options,
                            indices=indices, categories=categories, l2_categories=l2_categories)
    extracted = [extract_mmbench(p, o) for p, o in zip(predictions, options)]
    parsed = [e[0] for e in extracted]
    correct = [p is not None and p == g.strip().upper() for p, g in zip(parsed, answers)]
    # main index → its rows; the 1e6 offset marks a circular copy of the same question.
    groups: dict[int, list[int]] = defaultdict(list)
    for i, idx in enumerate(indices):
        groups[int(idx) % 1_000_000].append(i)
    mains = list(groups)
    hits = [all(correct[i] for i in groups[m]) for m in mains]

    def label(col: Sequence[str] | None, m: int) -> str | None:
        # the category of the main row, or of the first row seen if the main row is missing
        if col is None:
            return None
        rows = groups[m]
        main = next((i for i in rows if int(indices[i]) < 1_000_000), rows[0])
        return col[main]

    breakdown: dict[str, Any] = {"n_rows": n_rows, "single_pass_accuracy": _pct(sum(correct), n_rows)}
    if categories is not None:
        breakdown["categories"] = _group_mean([label(categories, m) for m in mains], hits)
    if l2_categories is not None:
        breakdown["l2_categories"] = _group_mean([label(l2_categories, m) for m in mains], hits)
    rows = [{"index": indices[i], "parsed": parsed[i], "method": extracted[i][1], "correct": correct[i]}
            for i in range(n_rows)]
    settings = {"circular": True, "matching": "letter → option text → static regex (no GPT)"}
    return MetricResult("mmbench_circular_accuracy", _pct(sum(hits), len(mains)), protocol, len(mains),
                        sum(p is None for p in parsed), split, prompt_suffix, rows, breakdown, settings)


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


__all__ = [
    "LETTERS", "MME_COGNITION", "MME_PERCEPTION", "MULTIPLE_CHOICE", "OCRBENCH_GROUPS", "PROTOCOLS", "SHORT_ANSWER",
    "MetricResult", "ai2d_accuracy", "anls", "anls_score", "chartqa_float", "chartqa_relaxed_accuracy",
    "extract_ai2d", "extract_mmbench", "extract_scienceqa", "extract_seed", "fold_fullwidth", "gqa_accuracy",
    "levenshtein", "mmbench_circular_eval", "mme_scores", "normalize_gqa", "normalize_vqa_answer",
    "ocrbench_hit", "ocrbench_score", "parse_mme", "parse_pope_llava", "pope_metrics", "relaxed_correct",
    "scienceqa_accuracy", "seed_accuracy", "vqa_accuracy", "vqa_soft_score",
]
