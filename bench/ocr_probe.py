#!/usr/bin/env python3
"""Can a model learn to read an OCR style? Fine-tune on OCR-only SynthVQA, then ask it to read.

    python bench/ocr_probe.py --model runs/v2-c1 --style large --train 12000 --steps 600 --out runs/ocr-probe

Steps, each the real tool (printed before it runs):

1. ``meteor synth --families ocr --ocr-style STYLE`` writes ``OUT/train`` (``--train`` images,
   ``--turns`` reading questions each, seed ``--train-seed``) and ``OUT/eval`` (``--eval`` images
   of the held-out seed ``--eval-seed``);
2. ``meteor train`` fine-tunes ``--model`` for ``--steps`` steps into ``OUT/ft`` (``--model`` is
   only read);
3. ``bench/synthvqa_reading.py`` asks every evaluation image the full read and each reading
   sub-question (first, second, last character, length) through ``meteor eval`` — for the
   fine-tuned model, and with ``--baseline`` for ``--model`` as it was.

Prints, per question kind, accuracy and the number of distinct answers: a model that does not
read answers one constant per kind (1 distinct answer), one that reads gives about as many as
there are texts. Writes ``OUT/probe.json``. Steps whose outputs exist are skipped (a finished
``OUT/ft`` holds ``config.json``; a data set its ``synthvqa.json`` with the same settings), so
an interrupted probe can be rerun with the same command.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
READING = ROOT / "bench" / "synthvqa_reading.py"
KIND_ORDER = ("full", "first", "second", "last", "length")


def _run(cmd: list[str]) -> None:
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def _meteor() -> str:
    return str(Path(sys.executable).with_name("meteor"))


def synth(out: Path, *, train: int, eval_: int, seed: int, style: str, turns: int, image_size: int) -> None:
    """``meteor synth`` an OCR-only set into ``out`` unless one with these settings is already there."""
    manifest = out / "synthvqa.json"
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        cfg = m.get("config", {})
        if (m.get("seed"), cfg.get("ocr_style"), cfg.get("families"), cfg.get("turns"), cfg.get("image_size"),
                sum(m["counts"]["train"].values()), sum(m["counts"]["eval"].values())) == \
                (seed, style, ["ocr"], turns, image_size, train, eval_):
            print(f"= {out} already holds this set", flush=True)
            return
    _run([_meteor(), "synth", "--out", str(out), "--train", str(train), "--eval", str(eval_), "--seed", str(seed),
          "--families", "ocr", "--ocr-style", style, "--turns", str(turns), "--image-size", str(image_size),
          "--overwrite", "-q"])


def finetune(model: str, data: Path, out: Path, *, steps: int, lr: float, batch_size: int, save_every: int,
             seed: int) -> None:
    """``meteor train`` ``model`` on ``data`` for ``steps`` steps into ``out`` unless ``out`` holds a final model."""
    if (out / "config.json").is_file():
        print(f"= {out} already holds the fine-tuned model", flush=True)
        return
    _run([_meteor(), "train", "--model", model, "--data", str(data / "train.json"), "--image-root", str(data),
          "--lr", str(lr), "--warmup", "0.03", "--batch-size", str(batch_size), "--max-steps", str(steps),
          "--save-every", str(save_every), "--seed", str(seed), "--device", "cpu", "--out", str(out), "--force", "-q"])


def read(model: str, data: Path, out: Path, limit: int) -> None:
    """``bench/synthvqa_reading.py`` on ``data``'s first ``limit`` OCR images; writes ``out/samples.jsonl``."""
    _run([sys.executable, str(READING), "--model", model, "--data", str(data), "--out", str(out),
          "--limit", str(limit)])


def summarise(reading_out: Path) -> dict[str, dict[str, Any]]:
    """Per question kind (over all text lengths/types): n, accuracy %, distinct answers, top answer share %.

    Reads the question set and samples that ``bench/synthvqa_reading.py`` wrote to ``reading_out``
    (question ids end in ``/KIND``).
    """
    truth = {r["question_id"]: r["text"]
             for r in map(json.loads, (reading_out / "set" / "eval" / "answers.jsonl").read_text().splitlines())}
    by: dict[str, list[tuple[str, bool]]] = defaultdict(list)
    for line in (reading_out / "samples.jsonl").read_text().splitlines():
        s = json.loads(line)
        if s["question_id"] in truth:
            by[s["question_id"].rsplit("/", 1)[1]].append((s["text"].strip(), bool(s["correct"])))
    rows = {}
    for kind in sorted(by, key=lambda k: KIND_ORDER.index(k) if k in KIND_ORDER else len(KIND_ORDER)):
        got = by[kind]
        answers = Counter(a for a, _ in got)
        top, n_top = answers.most_common(1)[0]
        rows[kind] = {"n": len(got), "accuracy": round(100 * sum(c for _, c in got) / len(got), 1),
                      "distinct_answers": len(answers), "top_answer": top,
                      "top_share": round(100 * n_top / len(got), 1)}
    return rows


def table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """One line per question kind, one accuracy/distinct column pair per model."""
    names = list(results)
    head = f"{'kind':<8}{'n':>6}" + "".join(f"{name + ' acc %':>18}{'distinct':>10}" for name in names)
    lines = [head]
    kinds = [k for k in KIND_ORDER if any(k in r for r in results.values())]
    for kind in kinds:
        n = next(r[kind]["n"] for r in results.values() if kind in r)
        cells = "".join(f"{r[kind]['accuracy']:>18}{r[kind]['distinct_answers']:>10}" if kind in r else f"{'-':>28}"
                        for r in results.values())
        lines.append(f"{kind:<8}{n:>6}{cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="checkpoint directory or preset to fine-tune (only read)")
    ap.add_argument("--out", type=Path, required=True, help="output directory (data, fine-tuned model, reports)")
    ap.add_argument("--style", default="large", help="meteor synth --ocr-style: large, cells or free")
    ap.add_argument("--train", type=int, default=12000, help="OCR training images")
    ap.add_argument("--eval", type=int, default=200, help="OCR evaluation images (each asked 4-5 questions)")
    ap.add_argument("--steps", type=int, default=600, help="fine-tuning steps")
    ap.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--turns", type=int, default=8, help="questions per training image")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--train-seed", type=int, default=6)
    ap.add_argument("--eval-seed", type=int, default=1234, help="held out: not a seed any training set used")
    ap.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (0: only the final model)")
    ap.add_argument("--baseline", action="store_true", help="also evaluate --model before fine-tuning")
    args = ap.parse_args(argv)
    if args.train_seed == args.eval_seed:
        ap.error("--train-seed and --eval-seed must differ: the evaluation images must be held out")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    synth(out / "train", train=args.train, eval_=0, seed=args.train_seed, style=args.style, turns=args.turns,
          image_size=args.image_size)
    synth(out / "eval", train=0, eval_=args.eval, seed=args.eval_seed, style=args.style, turns=1,
          image_size=args.image_size)
    finetune(args.model, out / "train", out / "ft", steps=args.steps, lr=args.lr, batch_size=args.batch_size,
             save_every=args.save_every, seed=args.train_seed)
    models = {"fine-tuned": str(out / "ft")}
    if args.baseline:
        models = {"start": args.model, **models}
    results = {}
    for name, model in models.items():
        target = out / f"reading-{'base' if name == 'start' else 'ft'}"
        read(model, out / "eval", target, args.eval)
        results[name] = summarise(target)
    report = {"model": args.model, "style": args.style, "train_images": args.train, "steps": args.steps,
              "eval_images": args.eval, "eval_seed": args.eval_seed, "train_seed": args.train_seed, "kinds": results}
    (out / "probe.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nOCR probe: --ocr-style {args.style}, {args.train} images, {args.steps} steps from {args.model}; "
          f"{args.eval} held-out images (seed {args.eval_seed})")
    print(table(results))
    print(f"wrote {out / 'probe.json'}")


if __name__ == "__main__":
    main()
