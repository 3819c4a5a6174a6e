"""Shared pieces of the metric functions: the labelled result type and small helpers."""

from __future__ import annotations

import string
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from meteor_cli.errors import InvalidInputError, UsageError

PROTOCOLS = ("llava", "lmms")
#: Instruction suffixes appended to the question text (LLaVA ``docs/Evaluation.md``).
SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
MULTIPLE_CHOICE = "\nAnswer with the option's letter from the given choices directly."
LETTERS = string.ascii_uppercase


#: Deletes every ``string.punctuation`` character (lmms' ``ignore_punctuation``).
_DELETE_PUNCT = str.maketrans("", "", string.punctuation)


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
