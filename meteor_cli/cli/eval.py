"""``meteor eval``: scores, tokens kept per stage and latency on a benchmark; shards merged exactly.

    meteor eval --model ckpt/ --benchmark synthvqa --data synthvqa --out metrics.json
    meteor eval --model ckpt/ --benchmark pope --data playground/data/eval/pope --image-root coco/val2014
    meteor eval --model ckpt/ --data synthvqa --allocation allocation.json --prune-llm prune-llm.json --out m.json
    # methods side by side at equal layer-averaged visual-token budgets, one model load
    meteor eval --model tiny-synthvqa --data sv --method unpruned,fastv,pdrop,dart,visionzip,pool \
        --sweep 16,32,48 --plot sweep.png --out sweep.json
    meteor eval --model ckpt/ --data sv --method meteor,fastv --budget 0.33 \
        --ranks ranks.json --prune-llm prune-llm.json --out m.json
    # SLURM array: one shard per task, then one exact merge
    meteor eval ... --num-chunks 4 --chunk-idx $SLURM_ARRAY_TASK_ID --out m$SLURM_ARRAY_TASK_ID.json
    meteor eval merge m0.json m1.json m2.json m3.json --out metrics.json

Writes ``metrics.json`` (``meteor.metrics/v1``: the labelled headline score next to the overall
accuracy and the mean over categories, unparsed and skipped counts, mean tokens per stage,
seconds per sample, the prompt and settings used) and the per-sample file derived from ``--out``
(``m0.json`` → ``m0.samples.jsonl``): one row per question with the output, ground truth,
category, subcategory, parsed answer, correctness and token counts. The per-sample file is
appended as the run goes; rerunning the same command resumes after the last finished sample.
Generation is greedy with a KV cache; Stage 3 prunes once at prefill (static).

``--method NAME[,NAME...]`` builds each method at each budget in the run itself
(``meteor_cli.eval.methods``): ``metrics.json`` ``results`` then hold one row per (benchmark,
method, budget) with the score, the visual tokens per stage and encoder, the layer-averaged count and
the FLOPs ratio against the unpruned model; every row of the per-sample file names its setting.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from meteor_cli.cli.common import (AllocationOption, AllowOutsideRoot, PruneLLMOption, Run, Stage1MethodOption,
                                   Stage1OptionOption, meteor_command, rich_console, stage1_method_for,
                                   stage1_options_for)
from meteor_cli.cli.templates import TemplateOption, apply_template, check_template
from meteor_cli.errors import InvalidInputError, UsageError


@meteor_command("eval", uses_device=True)
def main(
    parts: Annotated[list[str] | None, typer.Argument(
        help="`merge SHARD.json...` combines the shards' metrics and per-sample files into --out.",
        metavar="[merge SHARD...]", show_default=False)] = None,
    model: Annotated[str | None, typer.Option("--model", help="Checkpoint directory, preset or config JSON.")] = None,
    benchmark: Annotated[str, typer.Option(
        "--benchmark", help="Benchmark name; `meteor list benchmarks` shows each one's expected layout.")] = "synthvqa",
    data: Annotated[Path | None, typer.Option(
        "--data", help="The benchmark's directory (LLaVA playground/official files, or lmms-eval parquet); "
        "for --benchmark llava the question file.")] = None,
    image_root: Annotated[Path | None, typer.Option(
        "--image-root", help="Image directory (default: the layout's image folder, then the question file's directory).")] = None,
    allow_outside_root: AllowOutsideRoot = False,
    variant: Annotated[str | None, typer.Option(
        "--variant", help="Benchmark variant (e.g. textvqa: ocr|no-ocr; pope: all|random|popular|adversarial).")] = None,
    protocol: Annotated[str | None, typer.Option(
        "--protocol", help="Scoring rules where the references differ: llava (paper tables; default) or lmms. "
        "With merge: rescore the shards with it.", show_default=False)] = None,
    answers: Annotated[Path | None, typer.Option(
        "--answers", help="--benchmark llava: the answer file (question_id, answer or answers, optional category).")] = None,
    metric: Annotated[str | None, typer.Option(
        "--metric", help="--benchmark llava: exact, vqa, relaxed, anls, yesno or choice.")] = None,
    max_missing: Annotated[int, typer.Option(
        "--max-missing", min=0, help="Fail when more questions than this have no ground truth in the annotations.")] = 0,
    allocation: AllocationOption = None,
    prune_llm: PruneLLMOption = None,
    stage1_method: Stage1MethodOption = None,
    stage1_option: Stage1OptionOption = None,
    template: TemplateOption = None,
    method: Annotated[str | None, typer.Option(
        "--method", help="Methods side by side, comma-separated, each built at the budget in this run: unpruned, "
        "meteor (needs --ranks and a meteor --prune-llm), fastv, pdrop, dart, sparsevlm, random, separate, pool, "
        "divprune, visionzip, "
        "prumerge+, or any registered policy (`meteor list policies`). Stage-3 methods average the budget over "
        "the LLM's layers; Stage-1/2 methods let that many tokens into the LLM.", show_default=False)] = None,
    budget: Annotated[float | None, typer.Option(
        "--budget", min=0.0, max=1.0, help="--method budget as a fraction of the model's visual tokens.",
        show_default=False)] = None,
    visual_tokens: Annotated[int | None, typer.Option(
        "--visual-tokens", min=1, help="--method budget in visual tokens (as VisionZip/DART report: 64, 128, 192); "
        "on LLaVA-NeXT per anyres tile (fastv/pdrop/dart: that fraction of each image's span; not meteor), on "
        "Qwen2-VL per image (Stage-1/2 methods only there).",
        show_default=False)] = None,
    sweep: Annotated[str | None, typer.Option(
        "--sweep", help="--method budgets, comma-separated: fractions (0.25,0.5) or token counts (16,32,64); "
        "one row per method and budget.", show_default=False)] = None,
    ranks: Annotated[Path | None, typer.Option(
        "--ranks", help="--method meteor (and visionzip/prumerge+ shares): ranks artifact from `meteor "
        "rank-estimate`, allocated in the run at each budget.", show_default=False)] = None,
    calibrate_count: Annotated[int, typer.Option(
        "--calibrate-count", min=1, help="--method meteor: questions (the run's first) its Stage-3 scale is "
        "calibrated on at each budget.")] = 16,
    plot: Annotated[Path | None, typer.Option(
        "--plot", help="PNG of score vs layer-averaged visual tokens and vs FLOPs ratio, one line per method.",
        show_default=False)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Questions per batch.")] = 1,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Longest answer.")] = 16,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Evaluate only the first N questions.")] = None,
    num_chunks: Annotated[int, typer.Option("--num-chunks", min=1, help="Split the questions into this many shards.")] = 1,
    chunk_idx: Annotated[int, typer.Option("--chunk-idx", min=0, help="Which shard this process evaluates.")] = 0,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output metrics artifact (`-` = stdout).")] = Path("metrics.json"),
    samples_out: Annotated[Path | None, typer.Option(
        "--samples-out", help="Per-sample rows (JSONL; `-` = stdout). Default: --out with .samples.jsonl "
        "(m0.json → m0.samples.jsonl); none with --out -.")] = None,
    restart: Annotated[bool, typer.Option(
        "--restart", help="Discard the per-sample file of an earlier run with this --out instead of resuming it.")] = False,
    run: Run = None,  # type: ignore[assignment]
) -> None:
    """Evaluate a model on a benchmark, with any combination of the three pruning stages."""
    from meteor_cli.eval.results import samples_path_for

    stdout_out = str(out) == "-"
    if samples_out is not None and str(samples_out) == "-" and stdout_out:
        raise UsageError("--out - and --samples-out - would both write to stdout",
                         "send one of them to a file, e.g. --out metrics.json --samples-out -")
    if samples_out is None and not stdout_out:
        samples_out = samples_path_for(out)
    if parts:
        if parts[0] != "merge" or len(parts) < 2:
            raise UsageError(f"unexpected argument {parts[0]!r}", "the only positional form is: merge SHARD.json...")
        _merge(run, [Path(p) for p in parts[1:]], out, samples_out, protocol, plot)
        return
    if model is None or data is None:
        raise UsageError("--model and --data are required", "e.g. --model ckpt/ --data synthvqa")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and num_chunks == 1:  # torchrun: one shard per rank, written next to --out
        num_chunks, chunk_idx = world, int(os.environ.get("RANK", "0"))
        if not stdout_out:
            out = _rank_path(out, chunk_idx, num_chunks)
            samples_out = samples_path_for(out)
    _evaluate(run, model=model, benchmark=benchmark, data=data, image_root=image_root,
              allow_outside_root=allow_outside_root, variant=variant, protocol=protocol or "llava", answers=answers, metric=metric,
              max_missing=max_missing, allocation=allocation, prune_llm=prune_llm, stage1_method=stage1_method,
              stage1_option=stage1_option, template=check_template(template), method=method, budget=budget,
              visual_tokens=visual_tokens, sweep=sweep, ranks=ranks, calibrate_count=calibrate_count, plot=plot,
              batch_size=batch_size, max_new_tokens=max_new_tokens, limit=limit, num_chunks=num_chunks,
              chunk_idx=chunk_idx, out=out, samples_out=samples_out, restart=restart)


def _rank_path(out: Path, k: int, n: int) -> Path:
    stem = out.name[:-5] if out.name.endswith(".json") else out.name
    return out.with_name(f"{stem}.{k}-of-{n}.json")


def _evaluate(run: Run, *, model: str, benchmark: str, data: Path, image_root: Path | None, allow_outside_root: bool,
              variant: str | None, protocol: str, answers: Path | None, metric: str | None, max_missing: int,
              allocation: Path | None, prune_llm: Path | None, stage1_method: str | None,
              stage1_option: list[str] | None, batch_size: int, template: str | None = None,
              method: str | None = None, budget: float | None = None, visual_tokens: int | None = None,
              sweep: str | None = None, ranks: Path | None = None, calibrate_count: int = 16,
              plot: Path | None = None,
              max_new_tokens: int, limit: int | None, num_chunks: int, chunk_idx: int, out: Path,
              samples_out: Path | None, restart: bool) -> None:
    from meteor_cli.artifacts import make_artifact, read_artifact, write_artifact
    from meteor_cli.eval.results import SampleSink, digest, shard_items, summarize
    from meteor_cli.eval.runner import EvalSetting, evaluate_items
    from meteor_cli.registry import BENCHMARKS, load_builtins_and_plugins

    load_builtins_and_plugins()
    if benchmark not in BENCHMARKS:
        import difflib

        close = difflib.get_close_matches(benchmark, BENCHMARKS.list(), n=2)
        raise UsageError(f"unknown benchmark {benchmark!r}" + (f" (did you mean {' or '.join(close)}?)" if close else ""),
                         f"known: {', '.join(BENCHMARKS.list())} (`meteor list benchmarks` shows their layouts)")
    bench = BENCHMARKS.get(benchmark)()
    bench.check_protocol(protocol)
    options: dict[str, Any] = {}
    if benchmark == "llava":
        options = {"answers": answers, "metric": metric}
    elif answers is not None or metric is not None:
        raise UsageError("--answers and --metric apply to --benchmark llava only",
                         f"{benchmark} reads its own annotation files from --data")
    if chunk_idx >= num_chunks:
        raise UsageError(f"--chunk-idx {chunk_idx} must be below --num-chunks {num_chunks}")
    s3 = read_artifact(prune_llm, "meteor.prune-llm", what="--prune-llm") if prune_llm else None
    shape = None
    if method is not None:
        alloc, method1, options1 = None, None, None
        settings, shape = _method_settings(model, method, budget, visual_tokens, sweep, ranks,
                                           s3.body if s3 else None, stage1_option, allocation, stage1_method)
    else:
        given = [o for o, v in (("--budget", budget), ("--visual-tokens", visual_tokens), ("--sweep", sweep),
                                ("--ranks", ranks)) if v is not None]
        if given:
            raise UsageError(f"{', '.join(given)} set(s) the budgets of --method", "add --method NAME[,NAME...], "
                             "e.g. --method unpruned,fastv,pdrop --sweep 16,32")
        alloc = read_artifact(allocation, "meteor.allocation", what="--allocation") if allocation else None
        method1 = stage1_method_for(alloc.body if alloc else None, stage1_method)
        options1 = stage1_options_for(alloc.body if alloc else None, method1, stage1_option)
        pruned = alloc is not None or s3 is not None or method1 is not None
        settings = [EvalSetting("custom" if pruned else "unpruned", None, alloc.body if alloc else None,
                                s3.body if s3 else None, method1, options1)]

    loaded = bench.load_items(data, image_root=image_root, variant=variant, allow_outside_root=allow_outside_root,
                              **options)
    _check_missing(run, loaded, max_missing)
    items = loaded.items
    if not items:
        raise InvalidInputError(f"--data {data}: the {benchmark} benchmark there has no questions",
                                "check --data (an empty or wrong file)")
    seen: set[str] = set()
    for it in items:
        if repr(it.qid) in seen:
            raise InvalidInputError(f"--data {data}: question_id {it.qid!r} appears more than once",
                                    "every question needs its own id (rows, resume and merge are keyed on it)")
        seen.add(repr(it.qid))
    if limit is not None:
        items = _limit(items, limit)
    shard = shard_items(items, num_chunks, chunk_idx)
    if not shard:
        raise UsageError(f"--chunk-idx {chunk_idx} of --num-chunks {num_chunks} selects no question "
                         f"({len(items)} in all)", f"use at most {len(items)} shards")
    identity = {"benchmark": benchmark, "data": str(Path(data).resolve()), "variant": variant, "layout": loaded.layout,
                "options": {k: str(v) if v is not None else None for k, v in options.items()},
                "model": str(Path(model).resolve()) if Path(model).exists() else model,
                "settings": [s.identity() for s in settings], **({"template": template} if template else {}),
                "max_new_tokens": max_new_tokens, "limit": limit,
                "seed": run.seed, "num_chunks": num_chunks, "questions": digest([it.qid for it in items])}
    run_id = digest({**identity, "chunk_idx": chunk_idx})
    if samples_out is None:
        run.info("per-sample rows are not kept with --out - (pass --samples-out FILE to keep them and to be able "
                 "to resume)")
    sink = SampleSink(samples_out, run_id)
    done_rows = sink.resume(restart)
    done = {(f"{r['method']}@{r['budget']}" if r.get("budget") is not None else r["method"], r["pos"])
            for r in done_rows}
    calibrations: dict[str, Any] = {}
    n_planned = len(shard) * len(settings)
    n_todo = n_planned - len(done)
    if done_rows:
        run.info(f"resuming {samples_out}: {len(done_rows)} of {n_planned} samples done, {n_todo} to go")
    if n_todo > 0:
        run.seed_everything()
        from meteor_cli.model.checkpoint import load_model

        vlm = apply_template(load_model(model, run.device.torch, seed=run.seed), template)
        sink.open(restart)

        def prepare(setting: EvalSetting) -> None:  # meteor's Stage-3 scale at this budget
            if setting.calibrate_to is not None or setting.calibrate_ratio is not None:
                calibrations[setting.label] = _calibrate(run, vlm, setting, items, calibrate_count)

        try:
            with run.progress(total=n_planned, initial=len(done), desc=f"eval {benchmark}", unit="sample",
                              smoothing=0.1) as bar:
                evaluate_items(vlm, shard, settings, done=done, sink=sink, run_id=run_id, batch_size=batch_size,
                               max_new_tokens=max_new_tokens, seed=run.seed, progress=bar.update, prepare=prepare)
        finally:
            sink.close()
    results, scored = summarize(bench, sink.rows, settings, protocol)
    _annotate(identity["model"], settings, results, calibrations)
    run_info = {"id": run_id, "identity": identity, "chunk_idx": chunk_idx, "n_planned": n_planned,
                "protocol": protocol,
                "samples": (os.path.relpath(samples_out, Path(out).parent) if samples_out is not None
                            and str(samples_out) != "-" and str(out) != "-" else None)}
    body = _body(benchmark, model, results, scored, batch_size, str(run.device),
                 {"allocation": alloc.body if alloc else None, "stage1_method": method1, "stage1_options": options1,
                  "prune_llm": s3.body if s3 else None, "protocol": protocol, "variant": variant,
                  "generation": {"greedy": True, "max_new_tokens": max_new_tokens, "kv_cache": True,
                                 "stage3": "static (pruned once at prefill)"},
                  "num_chunks": num_chunks, "chunk_idx": chunk_idx, "limit": limit, "run": run_info},
                 {"layout": loaded.layout, "files": loaded.files, "prompt": loaded.prompt,
                  "n_questions": len(loaded.items), "n_missing": len(loaded.missing),
                  "missing_examples": loaded.missing[:10]})
    if method is not None:
        body["settings"]["methods"] = {"method": method, "budgets": sorted({s.budget for s in settings
                                                                           if s.budget is not None}),
                                       "visual_tokens": shape.visual_tokens if shape else None,
                                       "ranks": str(ranks) if ranks else None}
    inputs = [p for p in (allocation, prune_llm, ranks) if p is not None]
    art = make_artifact("meteor.metrics", body, inputs=inputs)
    sink.finalize(scored)
    write_artifact(out, art)
    if plot is not None:
        _plot(run, body, plot)
    run.emit(art.to_dict(), lambda: _human(body, out, samples_out), stdout_used=_uses_stdout(out, samples_out))


def _uses_stdout(out: Path, samples_out: Path | None) -> bool:
    return str(out) == "-" or (samples_out is not None and str(samples_out) == "-")


def _check_missing(run: Run, loaded: Any, max_missing: int) -> None:
    n = len(loaded.missing)
    if not n:
        return
    msg = (f"{n} question(s) have no ground truth in the annotation files, e.g. question_id "
           f"{', '.join(map(repr, loaded.missing[:3]))}")
    if n > max_missing:
        raise InvalidInputError(msg, f"check that the question and annotation files belong together, or pass "
                                f"--max-missing {n} to evaluate the others")
    run.warn(msg + " (left out)")


def _method_settings(model: str, method: str, budget: float | None, visual_tokens: int | None, sweep: str | None,
                     ranks: Path | None, prune_llm: dict[str, Any] | None, stage1_option: list[str] | None,
                     allocation: Path | None, stage1_method: str | None) -> tuple[list[Any], Any]:
    """``--method`` × budgets as settings (checked before any model is loaded) and the model's shape."""
    from meteor_cli.artifacts import read_artifact
    from meteor_cli.eval.methods import build_settings, model_shape, parse_budgets, parse_methods

    names = parse_methods(method)
    if allocation is not None or stage1_method is not None:
        raise UsageError("--allocation and --stage1-method give one setting of their own; --method builds each "
                         "method at the budget", "drop them (meteor: pass --ranks; visionzip/prumerge+ are methods)")
    if prune_llm is not None and "meteor" not in names:
        raise UsageError("with --method, --prune-llm is the Stage-3 settings of meteor, which --method does not name",
                         "add meteor to --method, or drop --prune-llm")
    no_budget = budget is None and visual_tokens is None and sweep is None
    if names == ["unpruned"] and no_budget:  # any model, no budget to solve for
        from meteor_cli.eval.runner import EvalSetting

        return [EvalSetting("unpruned")], None
    shape = model_shape(model)
    budgets = [] if no_budget else parse_budgets(shape.visual_tokens, budget=budget, visual_tokens=visual_tokens,
                                                 sweep=sweep)
    opts: dict[str, Any] | None = None
    if stage1_option:
        from meteor_cli.eval.methods import STAGE1_METHODS, policy_stage

        if not any(m in STAGE1_METHODS or (m not in ("meteor", "random") and policy_stage(m) == 1) for m in names):
            raise UsageError("--stage1-option sets options of a Stage-1 method, and --method names none",
                             "e.g. --method visionzip --stage1-option dominant=54")
        opts = {}
        for item in stage1_option:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise UsageError(f"--stage1-option {item!r} is not NAME=VALUE", "e.g. --stage1-option dominant=54")
            opts[key.strip().replace("-", "_")] = value.strip()
    rank_body = read_artifact(ranks, "meteor.ranks", what="--ranks").body if ranks else None
    return build_settings(names, budgets, shape, ranks=rank_body, prune_llm=prune_llm, stage1_options=opts), shape


def _calibrate(run: Run, vlm: Any, setting: Any, items: list[Any], count: int) -> dict[str, Any]:
    """meteor's Stage-3 scale for ``setting``, fitted on the first ``count`` readable questions of the
    whole run (every shard fits the same one)."""
    from meteor_cli.eval.benchmarks.base import open_image
    from meteor_cli.eval.methods import calibrate_meteor

    images, prompts = [], []
    for it in items:
        if len(images) >= count:
            break
        try:
            images.append(open_image(it.image))
        except Exception:  # noqa: BLE001 - unreadable images are skipped (and counted) by the evaluation
            continue
        prompts.append(it.prompt if "<image>" in it.prompt else "<image>\n" + it.prompt)
    if not images:
        raise InvalidInputError("--method meteor: none of the run's images is readable to calibrate Stage 3 on",
                                "check --data and --image-root")
    cal = calibrate_meteor(vlm, setting, images, prompts, seed=run.seed, device=run.device.torch)
    if abs(cal["achieved"] - cal["target"]) > 0.02 * cal["target"]:
        run.warn(f"{setting.label}: Stage 3 calibrated to {cal['achieved']:.3g} {cal['unit']}, not "
                 f"{cal['target']:g} (limits of the scale range)")
    return cal


def _annotate(model: str, settings: list[Any], results: list[dict[str, Any]], calibrations: dict[str, Any]) -> None:
    """Each result row: its score, Stage-1 budgets per encoder, FLOPs against unpruned, calibration."""
    from meteor_cli.eval.methods import flops_for

    flops = flops_for(model, settings, results)
    by_label = {s.label: s for s in settings}
    for r in results:
        s = by_label[r["label"]]
        r["score"] = r["metrics"].get("value")
        if s.allocation is not None:
            r["tokens"]["stage1_per_encoder"] = {n: e["keep"][-1] for n, e in s.allocation["stage1"]["encoders"].items()}
        r["flops"] = flops.get(r["label"])
        if r["label"] in calibrations:
            r["stage3_calibration"] = calibrations[r["label"]]


def _plot(run: Run, body: dict[str, Any], path: Path) -> None:
    from meteor_cli.eval.methods import plot_sweep

    first = body["results"][0]["metrics"]
    plot_sweep(body["results"], path, title=f"{body['benchmark']}: {first.get('headline', first.get('metric'))}")
    run.info(f"wrote {path}")


def _limit(items: list[Any], limit: int) -> list[Any]:
    """The first ``limit`` items, plus the rest of any group the cut would split."""
    head = items[:limit]
    groups = {it.group for it in head if it.group is not None}
    return head + [it for it in items[limit:] if it.group is not None and it.group in groups]


def _body(benchmark: str, model: str | None, results: list[dict[str, Any]], scored: list[dict[str, Any]],
          batch_size: int, device: str, settings: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    first = results[0]
    secs = [r["seconds"] for r in scored if "seconds" in r]
    return {"benchmark": benchmark, "n": first["n"], "model": model, "metrics": first["metrics"],
            "tokens": first["tokens"], "results": results,
            "latency": {"seconds_per_sample": sum(secs) / len(secs) if secs else None, "batch_size": batch_size,
                        "device": device},
            "settings": settings, "data": data}


def _merge(run: Run, parts: list[Path], out: Path, samples_out: Path | None, protocol: str | None,
           plot: Path | None = None) -> None:
    from meteor_cli.artifacts import make_artifact, write_artifact
    from meteor_cli.eval.results import SampleSink, merge_shards, summarize
    from meteor_cli.eval.runner import EvalSetting
    from meteor_cli.registry import BENCHMARKS, load_builtins_and_plugins

    load_builtins_and_plugins()
    bodies, rows, inputs = merge_shards(parts)
    ref = bodies[0]
    identity = ref["settings"]["run"]["identity"]
    proto = protocol or ref["settings"]["run"]["protocol"]
    bench = BENCHMARKS.get(identity["benchmark"])()
    bench.check_protocol(proto)
    settings = [EvalSetting.from_identity(s) for s in identity["settings"]]
    results, scored = summarize(bench, rows, settings, proto)
    _annotate(identity["model"], settings, results,
              {r["label"]: r["stage3_calibration"] for r in ref["results"] if r.get("stage3_calibration")})
    n_planned = sum(b["settings"]["run"]["n_planned"] for b in bodies)
    st = dict(ref["settings"])
    st.update({"protocol": proto, "num_chunks": 1, "chunk_idx": 0,
               "merged_from": [str(p) for p in parts],
               "run": {**ref["settings"]["run"], "chunk_idx": None, "n_planned": n_planned, "protocol": proto,
                       "samples": (os.path.relpath(samples_out, out.parent) if samples_out is not None
                                   and str(samples_out) != "-" and str(out) != "-" else None)}})
    data = dict(ref["data"])
    body = _body(identity["benchmark"], ref.get("model"), results, scored, ref["latency"]["batch_size"],
                 ref["latency"]["device"], st, data)
    art = make_artifact("meteor.metrics", body, inputs=inputs)
    SampleSink(samples_out, st["run"]["id"]).finalize(scored)
    write_artifact(out, art)
    if plot is not None:
        _plot(run, body, plot)
    run.emit(art.to_dict(), lambda: _human(body, out, samples_out), stdout_used=_uses_stdout(out, samples_out))


def _fmt(v: Any, digits: int = 1) -> str:
    return "—" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _human(body: dict[str, Any], out: Path, samples_out: Path | None) -> None:
    from rich.table import Table

    console = rich_console()
    results = body["results"]
    first = results[0]["metrics"]
    console.print(f"[bold]{body['benchmark']}[/bold]: {first.get('headline', first.get('metric'))} = "
                  f"{_fmt(first.get('value'), 2)} over {results[0]['n']} questions (protocol "
                  f"{body['settings'].get('protocol')}; overall accuracy {_fmt(first.get('overall'))}, mean of "
                  f"{len(first.get('categories') or {})} categories {_fmt(first.get('category_mean'))}; "
                  f"{first.get('n_unparsed', 0)} unparsed, {first.get('n_skipped', 0)} skipped)")
    cats = first.get("categories") or {}
    if cats and len(results) == 1:
        for name, c in cats.items():
            console.print(f"  {name:<28} {_fmt(c['score']):>6}  (n={c['n']})")
    table = Table(title_justify="left")
    for col in ("method", "budget", "score", "overall", "cat. mean", "n", "unparsed", "skipped", "visual tokens",
                "layer-avg", "FLOPs ratio", "ms/sample"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in results:
        m, t = r["metrics"], r["tokens"]
        secs = r.get("seconds_per_sample")
        table.add_row(r["method"], _fmt(r["budget"]), _fmt(m.get("value"), 2), _fmt(m.get("overall")),
                      _fmt(m.get("category_mean")), str(r["n"]), str(m.get("n_unparsed", 0)),
                      str(m.get("n_skipped", 0)), _fmt(t.get("stage2_visual")), _fmt(t.get("stage3_layer_averaged")),
                      _fmt((r.get("flops") or {}).get("ratio"), 3), _fmt(secs * 1000 if secs is not None else None, 0))
    console.print(table)
    budgets = sorted({r["budget"] for r in results if r["budget"] is not None})
    if len(budgets) > 1:  # a sweep: score by method × budget
        grid = Table(title="score by method and visual-token budget", title_justify="left")
        grid.add_column("method")
        for b in budgets:
            grid.add_column(str(b), justify="right")
        for meth in dict.fromkeys(r["method"] for r in results):
            cells = {r["budget"]: r for r in results if r["method"] == meth}
            if None in cells:  # unpruned: the same score under every budget
                grid.add_row(meth, *[_fmt(cells[None]["metrics"].get("value"), 2)] * len(budgets))
            else:
                grid.add_row(meth, *(_fmt(cells[b]["metrics"].get("value"), 2) if b in cells else "—"
                                     for b in budgets))
        console.print(grid)
    if str(out) != "-":
        where = f" and {samples_out}" if samples_out is not None and str(samples_out) != "-" else ""
        console.print(f"wrote {out}{where}")
