"""Short answers compared exactly after normalisation: GQA (exact match) and the VQA accuracy
of TextVQA / VQAv2 / OK-VQA (EvalAI normalisation, "10 choose 9" soft score)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from meteor_cli.eval.metrics.base import (
    _DELETE_PUNCT,
    SHORT_ANSWER,
    MetricResult,
    _check_lengths,
    _check_protocol,
    _pct,
    _rows,
)

# ------------------------------------------------------------------------------------------------
# GQA: exact match
# ------------------------------------------------------------------------------------------------


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
