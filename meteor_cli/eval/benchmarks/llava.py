"""``llava``: your own data set in LLaVA's evaluation format, scored with a metric you choose.

    meteor eval --model ckpt/ --benchmark llava --data my/questions.jsonl --answers my/answers.jsonl \\
        --metric vqa --image-root my/images --out m.json

The question file is LLaVA's (JSONL or a JSON list): ``question_id``, ``image``, ``text`` (the
prompt; ``<image>`` optional) and an optional ``category``; LLaVA training-style records with
``conversations`` (the first human turn is the prompt) work too. The answer file has
``question_id`` and ``answer`` (a string, or for ``choice`` an option letter or index) or
``answers`` (a list), and optionally ``category`` (wins over the question's) and, for
``choice``, ``options`` (``{"A": "cat", ...}``; else they are read from ``A. ...`` lines of the
prompt). Without ``--answers``, ``answers.jsonl`` next to the question file is read.

Metrics (``--metric``):

=========  ======================================================================================
exact      the output equals an answer after lower-casing, stripping and dropping a final ``.``
vqa        VQA accuracy ("10 choose 9", EvalAI normalisation) over ``answers``; with a single
           answer, exact match after EvalAI normalisation (the soft score needs several)
relaxed    ChartQA relaxed accuracy (numbers within 5 %, else exact ignoring case), any answer
anls       DocVQA ANLS (τ = 0.5; length convention by ``--protocol``), best over the answers
yesno      POPE's LLaVA parse (first sentence, no/not → no, else yes); accuracy, with F1,
           precision, recall and yes-ratio; outputs with neither yes nor no are counted unparsed
choice     MMBench's offline extraction (letter, then option text, then static patterns);
           unmatched outputs are wrong and counted unparsed
=========  ======================================================================================

Per-category results are reported next to the overall score; image paths resolve against
``--image-root``, then the question file's directory, and may not leave them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from meteor_cli.errors import InputNotFoundError, InvalidInputError, UsageError
from meteor_cli.eval.benchmarks.base import (
    Benchmark,
    Item,
    Loaded,
    category_table,
    meta_column,
    read_json_lines,
    report,
    resolve_image,
)
from meteor_cli.eval.metrics import (
    MetricResult,
    anls_score,
    extract_mmbench,
    normalize_vqa_answer,
    pope_metrics,
    relaxed_correct,
    vqa_soft_score,
)
from meteor_cli.registry import register_benchmark

METRICS = ("exact", "vqa", "relaxed", "anls", "yesno", "choice")

LAYOUT = """\
--data questions.jsonl      question_id, image, text (or conversations), category (optional)
--answers answers.jsonl     question_id, answer | answers, category (optional), options (choice)
--image-root DIR            where `image` paths point (default: the question file's directory)"""

_OPTION_LINE = re.compile(r"^\s*([A-Z])[.)]\s+(.+?)\s*$", re.M)


def _exact_norm(s: str) -> str:
    return s.strip().lower().rstrip(".").strip()


def prompt_options(prompt: str) -> dict[str, str]:
    """Options stated in a prompt as ``A. text`` lines.

    Example:
        >>> prompt_options("Which animal?\\nA. cat\\nB. dog\\nAnswer with the letter.")
        {'A': 'cat', 'B': 'dog'}
    """
    return {m.group(1): m.group(2) for m in _OPTION_LINE.finditer(prompt)}


def _prompt_of(q: Mapping[str, Any], where: str) -> str:
    if isinstance(q.get("text"), str):
        text = q["text"]
    elif isinstance(q.get("conversations"), list) and q["conversations"] and \
            isinstance(q["conversations"][0], Mapping) and isinstance(q["conversations"][0].get("value"), str):
        text = q["conversations"][0]["value"]
    else:
        raise InvalidInputError(f"{where}: question {q.get('question_id', q.get('id'))!r} has no 'text' string "
                                "(nor conversations[0].value)", "each question needs the prompt in 'text'")
    return text.replace("<image>\n", "").replace("<image>", "").strip("\n")


def _answers_of(a: Mapping[str, Any], metric: str, where: str) -> Any:
    if "answers" in a:
        ans = a["answers"]
        if not isinstance(ans, list) or not ans or not all(isinstance(x, (str, int, float)) for x in ans):
            raise InvalidInputError(f"{where}: question {a['question_id']!r}: 'answers' must be a non-empty list of "
                                    "strings", "e.g. \"answers\": [\"2\", \"two\"]")
        return [str(x) for x in ans]
    if "answer" not in a:
        raise InvalidInputError(f"{where}: question {a['question_id']!r} has neither 'answer' nor 'answers'",
                                "add the ground truth as 'answer' (a string) or 'answers' (a list)")
    ans = a["answer"]
    if metric == "choice" and isinstance(ans, int):
        return "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[ans]
    if isinstance(ans, list):
        return [str(x) for x in ans]
    return str(ans)


@register_benchmark("llava", description="Any LLaVA-format question file + answer file, scored with --metric "
                    "(exact|vqa|relaxed|anls|yesno|choice), per category",
                    layout="--data questions.jsonl + --answers answers.jsonl (+ --image-root)")
class LlavaBenchmark(Benchmark):
    """Your own LLaVA-format data with a chosen metric (see the module docstring)."""

    name = "llava"
    layouts = {"llava": LAYOUT}

    def load_items(self, data: Path, *, image_root: Path | None = None, variant: str | None = None,
                   allow_outside_root: bool = False, answers: Path | None = None, metric: str | None = None,
                   **options: Any) -> Loaded:
        self.check_variant(variant)
        metric = metric or "exact"
        if metric not in METRICS:
            raise UsageError(f"unknown metric {metric!r} for --benchmark llava", f"known: {', '.join(METRICS)}")
        data = Path(data)
        qfile = data / "questions.jsonl" if data.is_dir() else data
        if not qfile.is_file():
            raise InputNotFoundError(f"{qfile}: no such question file", f"--benchmark llava expects:\n{LAYOUT}")
        afile = Path(answers) if answers is not None else qfile.parent / "answers.jsonl"
        hint = "a JSONL file with question_id, image, text per line"
        questions = read_json_lines(qfile, "question file", hint, ("image",))
        answer_rows = read_json_lines(afile, "answer file", "pass --answers FILE (question_id, answer or answers)",
                                      ("question_id",))
        by_id: dict[Any, Mapping[str, Any]] = {}
        for a in answer_rows:
            if a["question_id"] in by_id:
                raise InvalidInputError(f"{afile}: question_id {a['question_id']!r} appears twice",
                                        "give each question one answer record")
            by_id[a["question_id"]] = a
        roots = [r for r in (image_root, qfile.parent) if r is not None]
        items, missing, seen = [], [], set()
        for i, q in enumerate(questions):
            qid = q.get("question_id", q.get("id", i))
            if qid in seen:
                raise InvalidInputError(f"{qfile}: question_id {qid!r} appears twice", "question ids must be unique")
            seen.add(qid)
            a = by_id.get(qid)
            if a is None:
                missing.append(qid)
                continue
            prompt = _prompt_of(q, str(qfile))
            meta: dict[str, Any] = {"metric": metric}
            if metric == "choice":
                opts = a.get("options") or q.get("options") or prompt_options(prompt)
                if not isinstance(opts, Mapping) or not opts:
                    raise InvalidInputError(f"{qfile}: question {qid!r} has no options for --metric choice",
                                            "give 'options' ({\"A\": ...}) or write 'A. ...' lines in the prompt")
                meta["options"] = {str(k): str(v) for k, v in opts.items()}
            category = a.get("category", q.get("category"))
            items.append(Item(qid, prompt, resolve_image(str(q["image"]), roots,
                                                         allow_outside_root=allow_outside_root),
                              _answers_of(a, metric, str(afile)),
                              category=None if category is None else str(category),
                              subcategory=None if q.get("subcategory") is None else str(q["subcategory"]),
                              meta=meta, image_name=str(q["image"])))
        return Loaded(items, "llava", [str(qfile), str(afile)], missing,
                      {"source": "question file text", "metric": metric})

    def score_rows(self, rows: Sequence[Mapping[str, Any]], *, protocol: str = "llava") -> dict[str, Any]:
        self.check_protocol(protocol)
        metrics = set(meta_column(rows, "metric"))
        if len(metrics) != 1:
            raise InvalidInputError(f"rows scored with different metrics: {sorted(map(str, metrics))}",
                                    "score one --metric per run")
        metric = metrics.pop()
        preds = [str(r["text"]) for r in rows]
        gts = [r["answer"] if isinstance(r["answer"], list) else [r["answer"]] for r in rows]
        cats = [r.get("category") for r in rows]
        qids = [r["question_id"] for r in rows]
        failed = 0
        breakdown: dict[str, Any] = {}
        settings: dict[str, Any] = {"metric": metric}
        if metric == "exact":
            parsed: list[Any] = [_exact_norm(p) for p in preds]
            vals: list[float] = [float(any(p == _exact_norm(g) for g in gt)) for p, gt in zip(parsed, gts)]
        elif metric == "vqa":
            parsed = [normalize_vqa_answer(p) for p in preds]
            vals = []
            for p, gt in zip(parsed, gts):
                norm = [normalize_vqa_answer(g) for g in gt]
                vals.append(vqa_soft_score(p, norm) if len(norm) > 1 else float(p == norm[0]))
            settings["single_answer_rule"] = "exact match after EvalAI normalisation"
        elif metric == "relaxed":
            parsed = preds
            vals = [float(any(relaxed_correct(p, g) for g in gt)) for p, gt in zip(preds, gts)]
        elif metric == "anls":
            length = "raw" if protocol == "lmms" else "normalized"
            parsed = [" ".join(p.strip().lower().split()) for p in preds]
            vals = [anls_score(p, gt, length=length) for p, gt in zip(preds, gts)]
            settings.update({"threshold": 0.5, "length": length})
        elif metric == "yesno":
            res = pope_metrics(preds, [gt[0] for gt in gts], categories=[c or "all" for c in cats], protocol=protocol,
                               headline="accuracy", qids=qids, prompt_suffix=None)
            parsed = [s["parsed"] for s in res.per_sample]
            vals = [float(s["correct"]) for s in res.per_sample]
            failed, breakdown = res.n_failed_parse, res.breakdown
            settings.update(res.settings)
        else:  # choice
            found = [extract_mmbench(p, o) for p, o in zip(preds, meta_column(rows, "options"))]
            parsed = [f[0] for f in found]
            vals = [float(p is not None and p == str(gt[0]).strip().upper()) for p, gt in zip(parsed, gts)]
            failed = sum(p is None for p in parsed)
            settings["matching"] = "letter → option text → static regex (no GPT)"
        value = 100.0 * sum(vals) / len(vals) if vals else 0.0
        key = "score" if metric in ("vqa", "anls") else "correct"
        per = [{"qid": q, "parsed": p, key: (v if key == "score" else bool(v))} for q, p, v in zip(qids, parsed, vals)]
        result = MetricResult(f"llava_{metric}", value, protocol, len(rows), failed, None, None, per, breakdown,
                              settings)
        return report(self.name, result, rows, headline=f"{metric} accuracy over all questions (%)",
                      categories=category_table(cats, vals) if any(c is not None for c in cats) else None)


__all__ = ["METRICS", "LlavaBenchmark", "prompt_options"]
