"""The benchmarks ``meteor eval`` reads: one module each, registered on import.

Each module holds one benchmark: the on-disk layouts it reads (LLaVA-1.5's
``playground/data/eval/<bench>/`` files or the official release, and lmms-eval's parquet data
sets), the prompt as the references pose it, and its scorer over the pure metric functions of
:mod:`meteor_cli.eval.metrics`. A new benchmark is one new module listed in
:data:`BENCHMARK_MODULES` (or a plugin calling ``register_benchmark``).

    >>> from meteor_cli.registry import BENCHMARKS
    >>> "pope" in BENCHMARKS and "synthvqa" in BENCHMARKS
    True
"""

from __future__ import annotations

import importlib

from meteor_cli.eval.benchmarks.base import Benchmark, Item, Loaded
from meteor_cli.eval.benchmarks.synthvqa import (
    SynthVQA,
    normalize_synth_ocr,
    read_jsonl,
    read_predictions,
    score_synthvqa,
)

#: Modules whose import registers a benchmark (in ``meteor list benchmarks`` order of the paper).
BENCHMARK_MODULES = ("synthvqa", "llava", "gqa", "pope", "textvqa", "mme", "scienceqa", "mmbench", "seedbench",
                     "vqav2", "chartqa", "ocrbench", "docvqa", "ai2d")

for _m in BENCHMARK_MODULES:
    importlib.import_module(f"{__name__}.{_m}")

__all__ = ["Benchmark", "Item", "Loaded", "SynthVQA", "normalize_synth_ocr", "read_jsonl", "read_predictions",
           "score_synthvqa"]
