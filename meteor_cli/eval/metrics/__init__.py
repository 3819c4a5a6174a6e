"""Benchmark metrics: pure scoring functions, one per benchmark, with both reference protocols.

Grouped by kind: ``yesno`` (POPE, MME), ``choice`` (ScienceQA, AI2D, SEED-Bench, MMBench),
``exact`` (GQA, VQA accuracy for TextVQA/VQAv2/OK-VQA), ``tolerant`` (ANLS, ChartQA relaxed
accuracy, OCRBench substring); ``base`` holds :class:`MetricResult`. Everything is re-exported here.

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

from meteor_cli.eval.metrics.base import (
    LETTERS,
    MULTIPLE_CHOICE,
    PROTOCOLS,
    SHORT_ANSWER,
    MetricResult,
)
from meteor_cli.eval.metrics.choice import (
    ai2d_accuracy,
    extract_ai2d,
    extract_mmbench,
    extract_scienceqa,
    extract_seed,
    mmbench_circular_eval,
    scienceqa_accuracy,
    seed_accuracy,
)
from meteor_cli.eval.metrics.exact import (
    gqa_accuracy,
    normalize_gqa,
    normalize_vqa_answer,
    vqa_accuracy,
    vqa_soft_score,
)
from meteor_cli.eval.metrics.tolerant import (
    OCRBENCH_GROUPS,
    anls,
    anls_score,
    chartqa_float,
    chartqa_relaxed_accuracy,
    fold_fullwidth,
    levenshtein,
    ocrbench_hit,
    ocrbench_score,
    relaxed_correct,
)
from meteor_cli.eval.metrics.yesno import (
    MME_COGNITION,
    MME_PERCEPTION,
    mme_scores,
    parse_mme,
    parse_pope_llava,
    pope_metrics,
)

__all__ = [
    "LETTERS", "MME_COGNITION", "MME_PERCEPTION", "MULTIPLE_CHOICE", "OCRBENCH_GROUPS", "PROTOCOLS", "SHORT_ANSWER",
    "MetricResult", "ai2d_accuracy", "anls", "anls_score", "chartqa_float", "chartqa_relaxed_accuracy",
    "extract_ai2d", "extract_mmbench", "extract_scienceqa", "extract_seed", "fold_fullwidth", "gqa_accuracy",
    "levenshtein", "mmbench_circular_eval", "mme_scores", "normalize_gqa", "normalize_vqa_answer",
    "ocrbench_hit", "ocrbench_score", "parse_mme", "parse_pope_llava", "pope_metrics", "relaxed_correct",
    "scienceqa_accuracy", "seed_accuracy", "vqa_accuracy", "vqa_soft_score",
]
