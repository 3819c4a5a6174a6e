"""``meteor infer``: answer questions about images with the pruned model, as a stream.

    meteor infer --model ckpt/ --image cat.png --prompt "What animal is this?"
    meteor infer --model ckpt/ --questions eval/questions.jsonl --image-root synthvqa --out answers.jsonl \\
                 --allocation allocation.json --prune-llm prune-llm.json
    cat requests.jsonl | meteor infer --model ckpt/ --questions - | jq -c '{question_id, text}'

Requests are JSON objects, one per line (``--questions -`` reads them from stdin as they arrive; a
file may also be a JSON list): ``question_id`` (default: the request's 0-based number), ``image``
(a path relative to ``--image-root``, by the rule of :func:`~meteor_cli.data.llava.image_root_for`) and ``text`` (as LLaVA's question files) or ``prompt``. ``<image>`` in
a prompt marks where the image goes; without it the image comes first.

Answers are written and flushed one JSON line per request, in input order, as they are produced:
``question_id``, ``prompt``, ``text``, ``model_id`` and ``metadata`` with the visual tokens kept
at each stage per encoder (``stage1``: after each pruning point; ``stage2``; ``stage3``: after each
LLM pruning layer) and the time spent (``timing``: vision, prefill, decode). A request that cannot
be answered (not JSON, no image, an image path leaving ``--image-root`` without
``--allow-outside-root``, an unreadable or too small image, an empty prompt) becomes a line with
an ``error`` field in its place; the others are answered, and the command exits with code 8
(PARTIAL) instead of 0. With ``--visualize DIR`` each answer also gets a PNG of the kept patches
(:mod:`meteor_cli.visualize`).
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Annotated, Any

import typer

from meteor_cli.cli.common import (AllocationOption, AllowOutsideRoot, PruneLLMOption, Run, Stage1MethodOption,
                                   Stage1OptionOption, meteor_command, stage1_method_for, stage1_options_for)
from meteor_cli.cli.templates import TemplateOption, apply_template, check_template
from meteor_cli.errors import ExitCode, InputNotFoundError, MeteorError, UsageError

STDIN = "-"


@dataclass
class Request:
    """One line of the request stream: a parsed request, or why it cannot be answered."""

    index: int
    question_id: Any
    record: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    image: Any = None  # the decoded PIL image
    prompt: str = ""


def iter_requests(source: str | Path, stream: IO[str] | None = None) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """``(line number, record)`` for each request of ``source`` (``-`` = ``stream``/stdin), or
    ``(n, message)`` for a line that is not a JSON object. Lines are read as they arrive (a pipe is
    never read ahead of the request being answered); a file that is a JSON list is streamed with
    :func:`~meteor_cli.data.llava.iter_json_records`."""
    if str(source) == STDIN:
        f = stream if stream is not None else sys.stdin
        yield from _iter_lines(iter(f.readline, ""))
        return
    p = Path(source)
    if not p.is_file():
        raise InputNotFoundError(f"--questions {source} does not exist",
                                 "pass a JSONL request file, or `-` to read requests from stdin")
    with open(p, encoding="utf-8", errors="replace") as f:
        head = f.read(4096).lstrip()
    if head.startswith("["):
        from meteor_cli.data.llava import iter_json_records

        yield from enumerate(iter_json_records(p), start=1)
        return
    with open(p, encoding="utf-8", errors="replace") as f:
        yield from _iter_lines(f)


def _iter_lines(lines: Any) -> Iterator[tuple[int, dict[str, Any] | str]]:
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield n, f"line {n} is not valid JSON ({exc.msg} at column {exc.colno})"
            continue
        yield n, obj if isinstance(obj, dict) else f"line {n} is a JSON {type(obj).__name__}, not an object"


def prepare_request(index: int, rec: dict[str, Any] | str, root: Path, min_side: int, *,
                    allow_outside_root: bool = False) -> Request:
    """Parse and check one request; its image is decoded here so a bad one fails alone."""
    from meteor_cli.data.llava import load_image, resolve_image

    if isinstance(rec, str):
        return Request(index, None, error=rec)
    qid = rec.get("question_id", rec.get("id", index - 1))
    req = Request(index, qid, rec)
    text = rec.get("text", rec.get("prompt"))
    if not isinstance(text, str) or not text.strip():
        req.error = f"request {qid}: empty prompt (give `text` or `prompt`)"
        return req
    req.prompt = text
    img = rec.get("image")
    if not isinstance(img, str) or not img.strip():
        req.error = f"request {qid}: no `image` path"
        return req
    try:  # the one image-path rule: relative to the root, confined to it unless allowed
        path = resolve_image(rec, root, index=index, allow_outside_root=allow_outside_root)
    except MeteorError as exc:
        req.error = f"request {qid}: {exc.message}" + (f" ({exc.hint})" if exc.hint else "")
        return req
    try:
        im = load_image(path)
    except FileNotFoundError:
        req.error = f"request {qid}: image {path} does not exist (check --image-root)"
        return req
    except Exception as exc:  # OSError, PIL's DecompressionBombError, … : this request only
        req.error = f"request {qid}: cannot read image {path} ({type(exc).__name__}: {exc})"
        return req
    if min(im.size) < min_side:
        req.error = (f"request {qid}: image {path} is {im.size[0]}x{im.size[1]} pixels, smaller than one "
                     f"{min_side}-pixel patch of the model's vision encoders")
        return req
    req.image = im
    return req


class _Timer:
    """Vision / prefill / decode wall time of one ``generate`` call, from hooks on the LLM."""

    def __init__(self, llm: Any, device: Any) -> None:
        self.llm, self.device = llm, device
        self.calls: list[tuple[float, float]] = []
        self._start = 0.0

    def _sync(self) -> None:
        import torch

        kind = getattr(self.device, "type", "cpu")
        if kind == "cuda":
            torch.cuda.synchronize()
        elif kind == "npu":  # pragma: no cover - needs torch_npu
            torch.npu.synchronize()  # type: ignore[attr-defined]

    def __enter__(self) -> _Timer:
        def pre(*_: Any, **__: Any) -> None:
            self._sync()
            self._start = time.perf_counter()

        def post(*_: Any, **__: Any) -> None:
            self._sync()
            self.calls.append((self._start, time.perf_counter()))

        self.handles = [self.llm.register_forward_pre_hook(pre), self.llm.register_forward_hook(post)]
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._sync()
        self.t1 = time.perf_counter()
        for h in self.handles:
            h.remove()

    def summary(self) -> dict[str, float | int]:
        first = self.calls[0] if self.calls else (self.t1, self.t1)
        return {"vision_s": round(first[0] - self.t0, 4), "prefill_s": round(first[1] - first[0], 4),
                "decode_s": round(self.t1 - first[1], 4), "decode_steps": max(0, len(self.calls) - 1),
                "total_s": round(self.t1 - self.t0, 4)}


def _min_side(vlm: Any) -> int:
    """Smallest image side worth a request: one patch of the model's largest-patch encoder (1 for a
    model whose processor resizes everything, e.g. a transformers VLM)."""
    encoders = getattr(vlm, "encoders", None)
    if encoders:
        return max(int(e.cfg.patch) for e in encoders.values())
    vision = getattr(getattr(getattr(vlm, "hf", None), "config", None), "vision_config", None)
    return int(getattr(vision, "patch_size", 1) or 1)


def _traces(vlm: Any) -> bool:
    """Whether kept positions can be recorded for ``vlm`` (:func:`meteor_cli.visualize.recorder_for`)."""
    return callable(getattr(vlm, "kept_recorder", None)) or hasattr(vlm, "encoders")


def _png_name(qid: Any, index: int, used: set[str]) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(qid)).strip("._") or f"request-{index}"
    if name in used:
        name = f"{name}-{index}"
    used.add(name)
    return name + ".png"


@meteor_command("infer", uses_device=True)
def main(
    model: Annotated[str | None, typer.Option("--model", help="Checkpoint directory, preset or config JSON.")] = None,
    image: Annotated[list[Path] | None, typer.Option("--image", help="Image file (repeat for several).")] = None,
    prompt: Annotated[str | None, typer.Option("--prompt", help="The question; `<image>` marks where the image goes.")] = None,
    questions: Annotated[str | None, typer.Option(
        "--questions", help="Requests as JSONL (`question_id`, `image`, `text` or `prompt`), a file or `-` for stdin, "
                            "read and answered one at a time.")] = None,
    image_root: Annotated[Path | None, typer.Option(
        "--image-root", help="Image directory for --questions (default: the file's directory, or its parent for "
                             "DIR/eval/questions.jsonl; stdin: the current one).")] = None,
    allow_outside_root: AllowOutsideRoot = False,
    allocation: AllocationOption = None,
    prune_llm: PruneLLMOption = None,
    stage1_method: Stage1MethodOption = None,
    stage1_option: Stage1OptionOption = None,
    template: TemplateOption = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Longest answer.")] = 128,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="0 = greedy decoding.")] = 0.0,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", min=1, help="Requests per batch (answers of a batch are written together).")] = 1,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Answer only the first N requests.")] = None,
    visualize: Annotated[Path | None, typer.Option(
        "--visualize", help="Write a PNG per request into this directory: the patches kept by each encoder after "
                            "every Stage-1 point, Stage 2 and every Stage-3 layer.")] = None,
    out: Annotated[str | None, typer.Option(
        "--out", "-o", help="Answers (JSONL, flushed per line; `-` = stdout). Default: stdout — JSON lines when it "
                            "is a pipe or file, one readable line per answer on a terminal.")] = None,
    run: Run = None,  # type: ignore[assignment]
) -> None:
    """Answer image questions with METEOR's pruning at all three stages, streaming one JSON line per request.

    Exit code 8 (PARTIAL) when some requests failed: their lines carry an `error` field.
    """
    from meteor_cli.artifacts import read_artifact
    from meteor_cli.eval.runner import install_pruning
    from meteor_cli.model.checkpoint import load_model

    if model is None:
        raise UsageError("--model is required")
    check_template(template)
    if questions is not None and (image or prompt):
        raise UsageError("give --questions, or --image and --prompt, not both",
                         "put the image and prompt into the request lines instead")
    from meteor_cli.data.llava import image_root_for

    allow = allow_outside_root
    if questions is not None:
        source: Any = iter_requests(questions)
        root = image_root_for(questions, image_root) if questions != STDIN else (image_root or Path.cwd())
    elif image and prompt:
        for p in image:
            if not p.is_file():
                raise InputNotFoundError(f"--image {p} does not exist")
        source = enumerate(({"question_id": i, "image": str(p.resolve()), "text": prompt} for i, p in enumerate(image)),
                           start=1)
        root, allow = Path.cwd(), True  # paths named on the command line are the user's own choice
    else:
        raise UsageError("give --image and --prompt, or --questions FILE|-",
                         "e.g. --image cat.png --prompt 'What is shown?', or --questions requests.jsonl")
    if visualize is not None and visualize.exists() and not visualize.is_dir():
        raise UsageError(f"--visualize {visualize} is a file", "give a directory (created if missing)")
    alloc = read_artifact(allocation, "meteor.allocation", what="--allocation").body if allocation else None
    method1 = stage1_method_for(alloc, stage1_method)
    options1 = stage1_options_for(alloc, method1, stage1_option)
    s3 = read_artifact(prune_llm, "meteor.prune-llm", what="--prune-llm").body if prune_llm else None
    run.seed_everything()
    vlm = apply_template(load_model(model, run.device.torch, seed=run.seed), template)
    stage3 = install_pruning(vlm, alloc, s3, seed=run.seed, stage1_method=method1, stage1_options=options1)
    min_side = _min_side(vlm)
    if visualize is not None and not _traces(vlm):
        raise UsageError(f"--visualize needs a model that reports where its kept tokens came from; a "
                         f"{type(vlm).__name__} does not (yet)",
                         "meteor's own models do; a model family adds it with a `kept_recorder()` (meteor_cli.visualize)")
    if visualize is not None:
        visualize.mkdir(parents=True, exist_ok=True)

    to_stdout = out is None or out == STDIN
    human = out is None and sys.stdout.isatty() and not run.json
    stats = {"answered": 0, "failed": 0}
    t_start = time.perf_counter()

    def write(sink: IO[str], row: dict[str, Any]) -> None:
        stats["failed" if "error" in row else "answered"] += 1
        if human:
            line = f"{row['question_id']}: error: {row['error']}" if "error" in row else _human_line(row)
        else:
            line = json.dumps(row, ensure_ascii=False)
        sink.write(line + "\n")
        sink.flush()

    def serve(sink: IO[str]) -> None:
        engine = _Engine(vlm, stage3, model, run, max_new_tokens, temperature, visualize)
        pending: list[Request] = []
        for n, (index, rec) in enumerate(source, start=1):
            if limit is not None and n > limit:
                break
            pending.append(prepare_request(index, rec, root, min_side, allow_outside_root=allow))
            if sum(r.error is None for r in pending) >= batch_size:
                for row in engine.answer(pending):
                    write(sink, row)
                pending = []
            elif all(r.error is not None for r in pending):  # nothing to wait for: report at once
                for row in engine.answer(pending):
                    write(sink, row)
                pending = []
        for row in engine.answer(pending):
            write(sink, row)

    if to_stdout:
        serve(sys.stdout)
    else:
        from meteor_cli.artifacts import atomic_path

        with atomic_path(Path(str(out))) as tmp, open(tmp, "w", encoding="utf-8") as f:
            serve(f)
    seconds = time.perf_counter() - t_start
    summary = {"answered": stats["answered"], "failed": stats["failed"], "out": out or STDIN, "seconds": round(seconds, 3)}
    msg = (f"answered {stats['answered']} request(s)" + (f", {stats['failed']} failed (see their `error` field)"
                                                         if stats["failed"] else "")
           + (f"; wrote {out}" if not to_stdout else "") + f" in {seconds:.1f}s")
    if to_stdout:
        run.info(msg)
    else:
        run.emit(summary, msg)
    if stats["failed"]:
        raise typer.Exit(int(ExitCode.PARTIAL))


def _human_line(row: dict[str, Any]) -> str:
    m = row["metadata"]
    s3 = m["stage3"]["kept"]
    tokens = f"{m['visual_tokens']} visual tokens" + (f" → {'/'.join(map(str, s3))} in the LLM" if s3 else "")
    t = m["timing"]
    return (f"{row['question_id']}: {row['text']}   [{tokens}; prefill {t['prefill_s']:.3f}s, "
            f"decode {t['decode_s']:.3f}s]")


class _Engine:
    """Answers a batch of prepared requests; failed ones come back as error rows, in order."""

    def __init__(self, vlm: Any, stage3: Any, model_id: str, run: Run, max_new_tokens: int, temperature: float,
                 visualize: Path | None) -> None:
        self.vlm, self.stage3, self.model_id, self.run = vlm, stage3, model_id, run
        self.max_new_tokens, self.temperature, self.visualize = max_new_tokens, temperature, visualize
        from meteor_cli.pruning.llm_pruner import text_config

        self.n_layers = int(text_config(vlm.llm).num_hidden_layers)
        self.png_names: set[str] = set()

    def answer(self, batch: list[Request]) -> list[dict[str, Any]]:
        import torch

        import contextlib

        from meteor_cli.eval.runner import images_for
        from meteor_cli.pruning.schedule import layer_averaged_tokens
        from meteor_cli.visualize import recorder_for, save_kept, summarize

        good = [r for r in batch if r.error is None]
        rows: dict[int, dict[str, Any]] = {}
        if good:
            imgs = images_for(self.vlm, [r.image for r in good])  # a tensor, or what a transformers VLM's processor takes
            if isinstance(imgs, torch.Tensor):
                imgs = imgs.to(self.run.device.torch)
            recorder = recorder_for(self.vlm) if _traces(self.vlm) else contextlib.nullcontext()
            prompts = [r.prompt if "<image>" in r.prompt else "<image>\n" + r.prompt for r in good]
            with torch.no_grad(), recorder as rec, _Timer(self.vlm.llm, self.run.device.torch) as timer:
                texts, inputs, vis, sess = self.vlm.generate(imgs, prompts, max_new_tokens=self.max_new_tokens,
                                                             temperature=self.temperature, stage3=self.stage3,
                                                             details=True)
            timing = timer.summary()
            traces = rec.traces(vis, sess) if rec is not None else None
            names = list(getattr(self.vlm, "encoders", None) or vis.per_encoder)
            for b, r in enumerate(good):
                n_vis = int(inputs.visual_len[b])
                kept_by_stage = summarize(traces[b], names) if traces is not None else \
                    {"stage1": {}, "stage2": {}, "stage3": {"per_encoder": {}}}
                if sess is not None and sess.kept:
                    layers = sorted(sess.kept)
                    kept = [len(sess.kept[p][b]) for p in layers]
                    s3 = {"layers": layers, "kept": kept,
                          "layer_averaged": layer_averaged_tokens(n_vis, layers, kept, self.n_layers),
                          "per_encoder": kept_by_stage["stage3"]["per_encoder"]}
                else:
                    s3 = {"layers": [], "kept": [], "layer_averaged": float(n_vis), "per_encoder": {}}
                meta = {"visual_tokens": n_vis, "per_encoder": {k: v[b] for k, v in vis.per_encoder.items()},
                        "stage1": kept_by_stage["stage1"], "stage2": kept_by_stage["stage2"], "stage3": s3,
                        "timing": {**timing, "batch": len(good)}, "seconds": round(timing["total_s"] / len(good), 4)}
                row = {"question_id": r.question_id, "prompt": r.prompt, "text": texts[b], "model_id": self.model_id,
                       "metadata": meta}
                if self.visualize is not None:
                    png = self.visualize / _png_name(r.question_id, r.index, self.png_names)
                    save_kept(png, r.image, traces[b], {"question_id": str(r.question_id), "prompt": r.prompt})
                    row["visualization"] = str(png)
                rows[r.index] = row
        out = []
        for r in batch:
            if r.error is not None:
                out.append({"question_id": r.question_id, "line": r.index, "error": r.error, "model_id": self.model_id})
            else:
                out.append(rows[r.index])
        return out
