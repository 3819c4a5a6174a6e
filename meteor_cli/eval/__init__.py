"""Benchmark scoring for ``meteor eval``: pure metric functions and the built-in benchmarks.

``metrics`` holds one scoring function per public benchmark (GQA, POPE, MME, TextVQA/OK-VQA,
ScienceQA-IMG, AI2D, SEED-Bench, MMBench, DocVQA, ChartQA, OCRBench), grouped by kind in
submodules, each returning a protocol-labelled :class:`MetricResult`; ``benchmarks`` has one
module per benchmark (its on-disk layouts, prompt and scorer); ``results`` scores, resumes and
merges runs from their per-sample files; ``runner`` drives the model. Importing this package
registers the built-in benchmarks.

    >>> from meteor_cli.eval import pope_metrics
    >>> pope_metrics(["Yes", "No"], ["yes", "no"]).value
    100.0
"""

from meteor_cli.eval.benchmarks import (
    Benchmark,
    Item,
    Loaded,
    SynthVQA,
    normalize_synth_ocr,
    read_jsonl,
    read_predictions,
    score_synthvqa,
)
from meteor_cli.eval.metrics import (
    LETTERS,
    MME_COGNITION,
    MME_PERCEPTION,
    MULTIPLE_CHOICE,
    OCRBENCH_GROUPS,
    PROTOCOLS,
    SHORT_ANSWER,
    MetricResult,
    ai2d_accuracy,
    anls,
    anls_score,
    chartqa_float,
    chartqa_relaxed_accuracy,
    extract_ai2d,
    extract_mmbench,
    extract_scienceqa,
    extract_seed,
    fold_fullwidth,
    gqa_accuracy,
    levenshtein,
    mmbench_circular_eval,
    mme_scores,
    normalize_gqa,
    normalize_vqa_answer,
    ocrbench_hit,
    ocrbench_score,
    parse_mme,
    parse_pope_llava,
    pope_metrics,
    relaxed_correct,
    scienceqa_accuracy,
    seed_accuracy,
    vqa_accuracy,
    vqa_soft_score,
)

__all__ = [
    "Benchmark", "Item", "Loaded", "LETTERS", "MME_COGNITION", "MME_PERCEPTION", "MULTIPLE_CHOICE", "OCRBENCH_GROUPS", "PROTOCOLS",
    "SHORT_ANSWER", "MetricResult", "SynthVQA", "ai2d_accuracy", "anls", "anls_score", "chartqa_float",
    "chartqa_relaxed_accuracy", "extract_ai2d", "extract_mmbench", "extract_scienceqa", "extract_seed",
    "fold_fullwidth", "gqa_accuracy", "levenshtein", "mmbench_circular_eval", "mme_scores", "normalize_gqa",
    "normalize_synth_ocr", "normalize_vqa_answer", "ocrbench_hit", "ocrbench_score", "parse_mme",
    "parse_pope_llava", "pope_metrics", "read_jsonl", "read_predictions", "relaxed_correct", "score_synthvqa", "scienceqa_accuracy",
    "seed_accuracy", "vqa_accuracy", "vqa_soft_score",
]
