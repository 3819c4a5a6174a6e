#!/usr/bin/env python3
"""Accuracy per SynthVQA family against training step, for the checkpoints of a `meteor train` run.

    python bench/learning_curve.py runs/tiny-synthvqa --data runs/synthvqa --limit 400 --watch

Evaluates every ``OUT/checkpoints/step-N`` not evaluated yet (copied aside first: the trainer keeps
only the newest two) with ``meteor eval``, then the final model in ``OUT`` once it exists, and
appends one JSON line per checkpoint to ``OUT/curve.jsonl``: step, mean, per-family accuracy.
``--watch`` keeps polling until the final model is written. ``--table`` prints the curve as the
Markdown table docs/synthvqa.md shows. Runs ``meteor eval`` on one thread, so a training run
sharing the machine keeps most of the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from meteor_cli.train.state import has_state

FAMILIES = ("general", "hallucination", "ocr", "chart")


def evaluate(ckpt: Path, data: Path, limit: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "ckpt"
        shutil.copytree(ckpt, copy, ignore=shutil.ignore_patterns("trainer_state.*", "checkpoints", ".meteor.lock", "*.jsonl"))
        out = Path(tmp) / "metrics.json"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        meteor = Path(sys.executable).with_name("meteor")
        subprocess.run([str(meteor), "eval", "--model", str(copy), "--data", str(data), "--limit", str(limit),
                        "--batch-size", "16", "--max-new-tokens", "10", "--device", "cpu", "-q", "--out", str(out)],
                       check=True, env=env)
        m = json.loads(out.read_text())["metrics"]
    fam = {f: round(m["families"][f]["accuracy"], 1) for f in FAMILIES if f in m["families"]}
    return {"mean": round(m["mean"], 1), **fam}


def table(rows: list[dict]) -> str:
    head = "| step | mean | " + " | ".join(FAMILIES) + " |"
    lines = [head, "|" + "---|" * (2 + len(FAMILIES))]
    for r in rows:
        lines.append(f"| {r['step']} | {r['mean']} | " +
                     " | ".join(str(r.get(f, "")) for f in FAMILIES) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="the --out directory of a meteor train run")
    ap.add_argument("--data", type=Path, required=True, help="SynthVQA directory (eval/questions.jsonl)")
    ap.add_argument("--limit", type=int, default=400, help="questions per evaluation (families rotate)")
    ap.add_argument("--watch", action="store_true", help="poll until the final model exists")
    ap.add_argument("--table", action="store_true", help="print curve.jsonl as a Markdown table and exit")
    args = ap.parse_args()
    curve = args.run / "curve.jsonl"
    done = {json.loads(line)["step"] for line in curve.read_text().splitlines()} if curve.exists() else set()
    if args.table:
        rows = sorted((json.loads(line) for line in curve.read_text().splitlines()),
                      key=lambda r: (r["step"] == "final", r["step"] if r["step"] != "final" else 0))
        print(table(rows))
        return
    while True:
        final = (args.run / "model.safetensors").is_file()
        todo = sorted(p for p in (args.run / "checkpoints").glob("step-*") if has_state(p))
        for ckpt in todo:
            step = int(ckpt.name.split("-")[1])
            if step in done:
                continue
            try:
                row = {"step": step, **evaluate(ckpt, args.data, args.limit)}
            except (subprocess.CalledProcessError, FileNotFoundError, shutil.Error) as exc:  # deleted while copying
                print(f"skipped {ckpt.name}: {exc}", file=sys.stderr)
                continue
            with curve.open("a") as f:
                f.write(json.dumps(row) + "\n")
            done.add(step)
            print(json.dumps(row), flush=True)
            break  # re-list: newer checkpoints may have replaced older ones meanwhile
        else:
            if final or not args.watch:
                break
            time.sleep(30)
    if final and "final" not in done:
        row = {"step": "final", **evaluate(args.run, args.data, args.limit)}
        with curve.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
