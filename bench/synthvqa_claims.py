#!/usr/bin/env python3
"""SynthVQA claims of the tiny-synthvqa model, measured in one run through the CLI.

    python bench/synthvqa_claims.py --model tiny-synthvqa --data runs/synthvqa --out runs/claims

1. **Design constraint of the benchmark**: random Stage-2 pruning to 25 % of the visual tokens
   (no Stage-1 pruning) must cost clearly more on ``ocr``/``chart`` than on ``general``.
2. **METEOR's training phase**: ``meteor train`` from the checkpoint with ``--allocation`` (Stage
   1-2 in the loop) for a few minutes recovers the accuracy that pruning without training lost.

Every number comes from the ``meteor`` commands a user would run (rank-estimate, allocate, train,
eval) on the same questions; the table goes to stdout and ``OUT/claims.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

FAMILIES = ("general", "hallucination", "ocr", "chart")
METEOR = str(Path(sys.executable).with_name("meteor"))


def meteor(*args: object) -> None:
    cmd = [METEOR, *map(str, args), "-q"]
    print("+", " ".join(cmd[1:]), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def evaluate(model: str, data: Path, out: Path, limit: int, allocation: Path | None = None) -> dict:
    extra = ["--allocation", allocation] if allocation else []
    meteor("eval", "--model", model, "--data", data, "--limit", limit, "--batch-size", 16, "--max-new-tokens", 10,
           "--device", "cpu", "--out", out, *extra)
    body = json.loads(out.read_text())
    m = body["metrics"]
    return {"mean": round(m["mean"], 1), **{f: round(m["families"][f]["accuracy"], 1) for f in FAMILIES},
            "visual_tokens": round(body["tokens"]["stage2_visual"], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny-synthvqa", help="preset or checkpoint directory")
    ap.add_argument("--data", type=Path, required=True, help="SynthVQA directory (train.json, eval/)")
    ap.add_argument("--out", type=Path, default=Path("runs/claims"))
    ap.add_argument("--limit", type=int, default=400, help="evaluation questions (families rotate)")
    ap.add_argument("--keep-ratio", type=float, default=0.5, help="METEOR Stage-1 keep ratio")
    ap.add_argument("--fusion-keep", type=int, default=32, help="METEOR Stage-2 budget")
    ap.add_argument("--steps", type=int, default=300, help="fine-tuning steps with Stage 1-2 in the loop")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--train-limit", type=int, default=6000, help="training records loaded for fine-tuning")
    args = ap.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict] = {}

    meteor("rank-estimate", "--model", args.model, "--data", args.data / "train.json", "--count", 64, "--grid", 8,
           "--device", "cpu", "--out", out / "ranks.json")
    n_tokens = 96  # the tiny encoders' 16 + 64 + 16 patch tokens
    meteor("allocate", "--ranks", out / "ranks.json", "--schedule", "explicit", "--totals", f"{n_tokens},{n_tokens},{n_tokens}",
           "--fusion-keep", n_tokens // 4, "--stage2-method", "random", "--out", out / "random25.json")
    meteor("allocate", "--ranks", out / "ranks.json", "--keep-ratio", args.keep_ratio, "--fusion-keep", args.fusion_keep,
           "--out", out / "meteor.json")

    rows["unpruned"] = evaluate(args.model, args.data, out / "m-unpruned.json", args.limit)
    rows["random 25% (Stage 2)"] = evaluate(args.model, args.data, out / "m-random25.json", args.limit, out / "random25.json")
    rows["METEOR, no training"] = evaluate(args.model, args.data, out / "m-meteor.json", args.limit, out / "meteor.json")

    t0 = time.perf_counter()
    meteor("train", "--model", args.model, "--data", args.data / "train.json", "--allocation", out / "meteor.json",
           "--lr", args.lr, "--batch-size", 16, "--max-steps", args.steps, "--warmup", 0.05,
           "--limit", args.train_limit, "--device", "cpu", "--out", out / "ft")
    seconds = time.perf_counter() - t0
    log = [json.loads(line) for line in (out / "ft" / "train_log.jsonl").read_text().splitlines()]
    train_seconds = sum(r["seconds"] for r in log)
    rows["METEOR, fine-tuned"] = evaluate(str(out / "ft"), args.data, out / "m-meteor-ft.json", args.limit,
                                          out / "meteor.json")

    drop = {f: round(rows["unpruned"][f] - rows["random 25% (Stage 2)"][f], 1) for f in FAMILIES}
    result = {"rows": rows, "random25_drop": drop, "finetune": {"steps": args.steps, "train_seconds": round(train_seconds),
                                                                 "wall_seconds_with_loading": round(seconds)},
              "settings": vars(args) | {"data": str(args.data), "out": str(out)}}
    (out / "claims.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| setting | visual tokens | mean | " + " | ".join(FAMILIES) + " |")
    print("|---|---|---|" + "---|" * len(FAMILIES))
    for name, r in rows.items():
        print(f"| {name} | {r['visual_tokens']} | {r['mean']} | " + " | ".join(str(r[f]) for f in FAMILIES) + " |")
    print(f"\nrandom 25% drop per family: {drop}")
    print(f"fine-tuning: {args.steps} steps, {train_seconds:.0f} s of training ({seconds:.0f} s with loading)")


if __name__ == "__main__":
    main()
