"""Multiple choice: option-letter extraction and accuracy for ScienceQA-IMG, AI2D, SEED-Bench and
MMBench (CircularEval)."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from meteor_cli.errors import UsageError
from meteor_cli.eval.metrics.base import (
    _DELETE_PUNCT,
    LETTERS,
    MULTIPLE_CHOICE,
    MetricResult,
    _check_lengths,
    _check_protocol,
    _group_mean,
    _letter,
    _pct,
    _rows,
)

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
