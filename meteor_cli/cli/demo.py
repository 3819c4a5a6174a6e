"""``meteor demo``: the whole METEOR pipeline on the embedded model, from an empty directory.

Each step is the real subcommand a user would type (run as a child process, so its command line
in ``report.md`` can be pasted into a shell), writing its artifact into ``--out``:

    synth → rank-estimate → allocate → train (short fine-tune, Stage 1-2 in the loop)
          → prune-llm --calibrate → eval × methods → flops × methods → infer

and the demo ends with a table (score per family, visual tokens, FLOPs ratio, measured speed-up)
and ``report.md`` with a plot of score against visual tokens.

Every method is evaluated at the same budget ``b`` (``--budget``, a fraction of the visual
tokens ``N``): ``T = round(b·N)`` layer-averaged visual tokens in the LLM.

* ``random`` / ``separate``: Stage 2 keeps ``T`` tokens (no Stage 1 or 3);
* ``fastv``: Stage 3 at its default layer K with the drop ratio R that gives ``T``;
* ``pdrop``: Stage 3 at its default layers with one geometric ratio r (keep r, r², r³ of N) giving ``T``;
* ``meteor``: all three stages — Stage 1 keeps ``min(0.9, 1.6·b)`` of the tokens, Stage 2
  ``round(1.25·T)``, Stage 3 adaptive, calibrated to ``T`` — on the model fine-tuned for a few
  steps with Stage 1-2 in the loop (the paper's training phase, shortened).

``--resume`` skips every step whose outputs exist and validate; ``--quick`` is a ≤ 2-minute
version (few questions, a few fine-tuning steps) whose numbers only show that the pipeline runs.
"""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from meteor_cli.cli.common import Run, meteor_command, rich_console
from meteor_cli.errors import MeteorError, UsageError
# The budget solvers live with ``meteor eval --method`` (one recipe for both).
from meteor_cli.eval.methods import fastv_setting, meteor_budgets, pdrop_setting

FAMILIES = ("general", "hallucination", "ocr", "chart")
METHODS = ("unpruned", "meteor", "fastv", "pdrop", "random", "separate")


@dataclass(frozen=True)
class Sizes:
    """How much work each step does (full demo vs ``--quick``)."""

    train: int
    eval: int
    rank_count: int
    steps: int
    calib_count: int
    infer: int


FULL = Sizes(train=2000, eval=200, rank_count=64, steps=120, calib_count=32, infer=4)
QUICK = Sizes(train=96, eval=24, rank_count=16, steps=6, calib_count=8, infer=2)


@dataclass
class Step:
    """One subcommand invocation: its arguments, the files it writes, and how to check them."""

    name: str
    argv: list[str]
    outputs: list[Path]
    check: Callable[[], None] = field(default=lambda: None)
    seconds: float | None = None
    skipped: bool = False

    def valid(self) -> bool:
        """Do the outputs exist and pass ``check``? (``--resume`` skips valid steps.)"""
        if not all(p.exists() for p in self.outputs):
            return False
        try:
            self.check()
        except (MeteorError, OSError, ValueError, KeyError, json.JSONDecodeError):
            return False
        return True


def _artifact_check(path: Path, kind: str) -> Callable[[], None]:
    def check() -> None:
        from meteor_cli.artifacts import read_artifact

        read_artifact(path, kind)

    return check


def _checkpoint_check(path: Path) -> Callable[[], None]:
    def check() -> None:
        from meteor_cli.model.checkpoint import has_weights, read_config

        read_config(path)
        if not has_weights(path):
            raise ValueError(f"{path} has no weights")

    return check


def _synth_check(path: Path, sizes: Sizes) -> Callable[[], None]:
    def check() -> None:
        manifest = json.loads((path / "synthvqa.json").read_text())
        if sum(manifest["counts"]["train"].values()) != sizes.train or sum(manifest["counts"]["eval"].values()) != sizes.eval:
            raise ValueError("SynthVQA set of another size")

    return check


def _meteor_argv(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "meteor_cli", *args]


def _run_step(step: Step, log: Path) -> None:
    cmd = _meteor_argv(step.argv)
    t0 = time.perf_counter()
    with log.open("a") as fh:
        fh.write(f"$ meteor {shlex.join(step.argv)}\n")
        fh.flush()
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, text=True)
    step.seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log.read_text().splitlines()[-8:]
        raise MeteorError(f"demo step {step.name!r} failed (exit {proc.returncode}): meteor {shlex.join(step.argv)}\n"
                          + "\n".join("    " + t for t in tail),
                          f"see {log}; fix the cause and rerun with --resume to continue from this step")


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Score against visual tokens, one point per method (Pillow only: no plotting extra needed)."""
    from PIL import Image, ImageDraw, ImageFont

    W, H, m = 560, 360, 52
    im = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=12)
    xs = [r["visual_tokens"] for r in rows]
    x_max = max(xs) * 1.1 or 1
    d.rectangle((m, 20, W - 20, H - m), outline=(0, 0, 0))
    for v in range(0, 101, 20):
        y = H - m - (H - m - 20) * v / 100
        d.line((m - 4, y, m, y), fill=(0, 0, 0))
        d.text((8, y - 7), f"{v}", fill=(0, 0, 0), font=font)
    for t in range(0, int(x_max) + 1, max(1, int(x_max) // 6)):
        x = m + (W - 20 - m) * t / x_max
        d.line((x, H - m, x, H - m + 4), fill=(0, 0, 0))
        d.text((x - 8, H - m + 6), str(t), fill=(0, 0, 0), font=font)
    d.text((W // 2 - 90, H - 22), "layer-averaged visual tokens", fill=(0, 0, 0), font=font)
    d.text((8, 4), "SynthVQA mean (%)", fill=(0, 0, 0), font=font)
    palette = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (140, 86, 75)]
    for i, r in enumerate(rows):
        x = m + (W - 20 - m) * r["visual_tokens"] / x_max
        y = H - m - (H - m - 20) * r["mean"] / 100
        c = palette[i % len(palette)]
        d.ellipse((x - 5, y - 5, x + 5, y + 5), fill=c)
        d.text((x + 8, y - 6 + 12 * (i % 2)), r["method"], fill=c, font=font)
    im.save(path)


@meteor_command("demo")
def main(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for every artifact of the demo.")] = Path("meteor-demo"),
    model: Annotated[str, typer.Option("--model", help="Model to demonstrate on (preset or checkpoint).")] = "tiny-synthvqa-v2",
    budget: Annotated[float, typer.Option(
        "--budget", min=0.05, max=1.0, help="Visual-token budget of every pruned method, as a fraction of the "
        "model's visual tokens (layer-averaged in the LLM).")] = 0.5,
    eval_seed: Annotated[int, typer.Option(
        "--eval-seed", help="SynthVQA seed of the demo's data (0 is the set the embedded model was chosen on).")] = 1234,
    quick: Annotated[bool, typer.Option("--quick", help="A ≤ 2-minute version: few questions, few steps.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Skip steps whose artifacts exist and validate.")] = False,
    run: Run = None,  # type: ignore[assignment]
) -> None:
    """Run the whole pipeline on the embedded model and compare METEOR with the baselines at one budget."""
    from meteor_cli.model.checkpoint import load_model_config

    sizes = QUICK if quick else FULL
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()) and not resume and not (out / "report.md").exists() and not (out / "demo.log").exists():
        raise UsageError(f"{out} is not empty and holds no demo", "choose an empty --out, or pass --resume")
    cfg = load_model_config(model)
    hf = cfg.llm.resolved_hf_config()
    n_layers = int(hf["num_hidden_layers"])
    n_vis = _visual_tokens(model)
    target, s1_ratio, s2_keep = meteor_budgets(budget, n_vis)
    fastv_k, r_fastv = fastv_setting(n_vis, target, n_layers)
    pdrop_layers, r_pdrop = pdrop_setting(n_vis, target, n_layers)

    sv, ft = out / "synthvqa", out / "finetuned"
    common = ["--device", "cpu", "-q"] if run.device.torch.type == "cpu" else ["--device", str(run.device), "-q"]
    ev = ["--data", sv, "--limit", sizes.eval, "--batch-size", 16, "--max-new-tokens", 10]
    steps: list[Step] = [
        Step("synth", ["synth", "--out", sv, "--train", sizes.train, "--eval", sizes.eval, "--turns", 4, "--seed",
                       eval_seed, "--ocr-style", "large", "--overwrite", "-q"], [sv / "synthvqa.json"], _synth_check(sv, sizes)),
        Step("rank-estimate", ["rank-estimate", "--model", model, "--data", sv / "train.json", "--count", sizes.rank_count,
                               "--grid", 8, "--out", out / "ranks.json", *common], [out / "ranks.json"],
             _artifact_check(out / "ranks.json", "meteor.ranks")),
        Step("allocate", ["allocate", "--ranks", out / "ranks.json", "--keep-ratio", s1_ratio, "--fusion-keep", s2_keep,
                          "--out", out / "allocation.json", "-q"], [out / "allocation.json"],
             _artifact_check(out / "allocation.json", "meteor.allocation")),
        Step("train", ["train", "--model", model, "--data", sv / "train.json", "--allocation", out / "allocation.json",
                       "--lr", 2e-4, "--batch-size", 16, "--max-steps", sizes.steps, "--warmup", 0.05, "--out", ft,
                       # a killed fine-tune continues from its checkpoint; a fresh demo starts it over
                       "--resume" if resume else "--force", *common],
             [ft / "config.json"], _checkpoint_check(ft)),
        # Calibrated with Stage 1-2 applied, so the layer average it hits is the one eval measures.
        Step("prune-llm", ["prune-llm", "--model", ft, "--calibrate", "--data", sv / "train.json", "--allocation",
                           out / "allocation.json", "--target-tokens", target, "--count", sizes.calib_count,
                           "--out", out / "meteor.prune-llm.json", *common],
             [out / "meteor.prune-llm.json"], _artifact_check(out / "meteor.prune-llm.json", "meteor.prune-llm")),
        Step("prune-llm fastv", ["prune-llm", "--model", model, "--method", "fastv", "--layers", fastv_k, "--drop-ratio",
                                 round(r_fastv, 4), "--out", out / "fastv.prune-llm.json", "-q"],
             [out / "fastv.prune-llm.json"], _artifact_check(out / "fastv.prune-llm.json", "meteor.prune-llm")),
        Step("prune-llm pdrop", ["prune-llm", "--model", model, "--method", "pdrop", "--layers",
                                 ",".join(map(str, pdrop_layers)), "--keep",
                                 ",".join(str(round(r_pdrop ** (i + 1), 4)) for i in range(len(pdrop_layers))),
                                 "--out", out / "pdrop.prune-llm.json", "-q"],
             [out / "pdrop.prune-llm.json"], _artifact_check(out / "pdrop.prune-llm.json", "meteor.prune-llm")),
    ]
    for name, method in (("random", "random"), ("separate", "separate")):
        steps.append(Step(f"allocate {name}", [
            "allocate", "--ranks", out / "ranks.json", "--schedule", "explicit", "--totals", f"{n_vis},{n_vis},{n_vis}",
            "--fusion-keep", target, "--stage2-method", method, "--out", out / f"{name}.allocation.json", "-q"],
            [out / f"{name}.allocation.json"], _artifact_check(out / f"{name}.allocation.json", "meteor.allocation")))
    settings: dict[str, tuple[str, list[Any]]] = {
        "unpruned": (model, []),
        "meteor": (str(ft), ["--allocation", out / "allocation.json", "--prune-llm", out / "meteor.prune-llm.json"]),
        "fastv": (model, ["--prune-llm", out / "fastv.prune-llm.json"]),
        "pdrop": (model, ["--prune-llm", out / "pdrop.prune-llm.json"]),
        "random": (model, ["--allocation", out / "random.allocation.json"]),
        "separate": (model, ["--allocation", out / "separate.allocation.json"]),
    }
    for name, (mdl, extra) in settings.items():
        m = out / f"{name}.metrics.json"
        # --restart: a step only reruns when its metrics are missing or invalid, so per-sample rows
        # left by an earlier attempt (perhaps with other settings) are not resumed from.
        steps.append(Step(f"eval {name}", ["eval", "--model", mdl, *ev, *extra, "--out", m, "--restart",
                                           "--samples-out", out / f"{name}.samples.jsonl", *common],
                          [m], _artifact_check(m, "meteor.metrics")))
        f = out / f"{name}.flops.json"
        steps.append(Step(f"flops {name}", ["flops", "--model", mdl, *extra, "--out", f, "-q"], [f],
                          _artifact_check(f, "meteor.flops")))
    steps.append(Step("infer", ["infer", "--model", ft, "--allocation", out / "allocation.json", "--prune-llm",
                                out / "meteor.prune-llm.json", "--questions", sv / "eval" / "questions.jsonl",
                                "--image-root", sv, "--max-new-tokens", 6, "--out", out / "answers.jsonl", *common],
                      [out / "answers.jsonl"]))
    for st in steps:
        st.argv = [str(a) for a in st.argv]

    log = out / "demo.log"
    t_all = time.perf_counter()
    with run.progress(total=len(steps), desc="demo", unit="step") as bar:
        for st in steps:
            bar.set_postfix_str(st.name)
            if resume and st.valid():
                st.skipped = True
            else:
                _run_step(st, log)
                if not st.valid():
                    raise MeteorError(f"demo step {st.name!r} ran but its outputs do not validate: "
                                      f"{', '.join(map(str, st.outputs))}", f"see {log}")
            bar.update(1)
    rows = _table(out, settings)
    _plot(rows, out / "score_vs_tokens.png")
    report = _report(rows, steps, out, budget, target, n_vis, sizes, time.perf_counter() - t_all)
    from meteor_cli.artifacts import atomic_write

    atomic_write(out / "report.md", report)
    result = {"out": str(out), "budget": budget, "target_tokens": target, "visual_tokens": n_vis, "rows": rows,
              "steps": [{"name": st.name, "seconds": st.seconds, "skipped": st.skipped} for st in steps]}

    def human() -> None:
        from rich.table import Table

        table = Table(title=f"{model} on SynthVQA (seed {eval_seed}, {sizes.eval} questions), budget "
                            f"{budget:.0%} = {target} of {n_vis} visual tokens", title_justify="left")
        for col in ("method", "mean", *FAMILIES, "visual tokens", "FLOPs ratio", "speed-up"):
            table.add_column(col, justify="left" if col == "method" else "right")
        for r in rows:
            table.add_row(r["method"], f"{r['mean']:.1f}", *(f"{r[f]:.1f}" for f in FAMILIES), f"{r['visual_tokens']:.1f}",
                          f"{r['flops_ratio']:.2f}", f"{r['speedup']:.2f}x")
        rich_console().print(table)
        typer.echo(f"report: {out / 'report.md'} (plot: {out / 'score_vs_tokens.png'})")

    run.emit(result, human)


def _visual_tokens(model: str) -> int:
    """Visual tokens ``model`` feeds its LLM unpruned, as ``meteor flops`` counts them (no weights read)."""
    proc = subprocess.run(_meteor_argv(["flops", "--model", model, "--out", "-", "-q"]),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise UsageError(f"cannot size model {model!r}: {proc.stderr.strip().splitlines()[-1:]}",
                         "pass a preset or checkpoint directory `meteor flops --model` accepts")
    return int(json.loads(proc.stdout)["visual_tokens"]["into_llm"])


def _table(out: Path, settings: dict[str, Any]) -> list[dict[str, Any]]:
    from meteor_cli.artifacts import read_artifact

    rows = []
    base_s = None
    for name in settings:
        body = read_artifact(out / f"{name}.metrics.json", "meteor.metrics").body
        flops = read_artifact(out / f"{name}.flops.json", "meteor.flops").body
        sec = body["latency"]["seconds_per_sample"]
        base_s = sec if name == "unpruned" else base_s
        fam = body["metrics"]["families"]
        rows.append({"method": name, "mean": round(body["metrics"]["mean"], 1),
                     **{f: round(fam[f]["accuracy"], 1) if f in fam else math.nan for f in FAMILIES},
                     "visual_tokens": round(body["tokens"]["stage3_layer_averaged"], 1),
                     "into_llm": round(body["tokens"]["stage2_visual"], 1),
                     "flops_ratio": round(flops["ratio"], 3), "seconds_per_sample": round(sec, 4),
                     "speedup": round(base_s / sec, 2) if base_s and sec else math.nan})
    return rows


def _report(rows: list[dict[str, Any]], steps: list[Step], out: Path, budget: float, target: int, n_vis: int,
            sizes: Sizes, seconds: float) -> str:
    lines = [f"# meteor demo\n", f"Budget {budget:.0%}: {target} of {n_vis} visual tokens, layer-averaged in the LLM. "
             f"{sizes.eval} evaluation questions; fine-tuning {sizes.steps} steps. Total {seconds:.0f} s.\n",
             "| method | mean | " + " | ".join(FAMILIES) + " | visual tokens (layer avg) | into LLM | FLOPs ratio | speed-up |",
             "|---|" + "---|" * (len(FAMILIES) + 5)]
    for r in rows:
        lines.append(f"| {r['method']} | {r['mean']:.1f} | " + " | ".join(f"{r.get(f, math.nan):.1f}" for f in FAMILIES)
                     + f" | {r['visual_tokens']:.1f} | {r['into_llm']:.1f} | {r['flops_ratio']:.2f} | {r['speedup']:.2f}x |")
    lines += ["", "Speed-up: evaluation seconds per sample (prefill + greedy decoding), unpruned ÷ method, measured "
              "in this run on this machine.", "", "![score vs visual tokens](score_vs_tokens.png)", "",
              "## Steps", ""]
    for st in steps:
        took = "skipped (valid)" if st.skipped else f"{st.seconds:.1f} s"
        lines.append(f"- `meteor {shlex.join(st.argv)}` — {took}")
    return "\n".join(lines) + "\n"
