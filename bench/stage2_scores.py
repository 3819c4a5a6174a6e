#!/usr/bin/env python3
"""Stage-2 redundancy scores compared at one budget, through the CLI, on several evaluation seeds.

    python bench/stage2_scores.py --model tiny-synthvqa --data runs/sv3-dev runs/sv3-e1234 runs/sv3-e77 \\
        --keep 24 --limit 400 --out runs/stage2-scores

For each SynthVQA directory (one evaluation seed each): ``meteor rank-estimate`` once, then one
``meteor allocate`` per setting — Stage 1 off (explicit totals = every token), Stage 2 keeping
``--keep`` tokens with: the paper's ``sum`` score, the [inferred] ``mean``, ``encoder-mean`` and
``zscore`` scores, ``sum``, ``zscore`` and ``mean`` with a per-encoder floor of 0.5, a floor of 1.0 (per-encoder
quotas, collaborative score), and the ``separate`` and ``random``
baselines — and ``meteor eval`` of each on the same questions. Pick a default on the FIRST
directory (the development seed) and read the others as held-out.

Noise: each family has ``limit / 4`` questions, so one family's accuracy has a binomial standard
error of about sqrt(p(1-p)/(limit/4)) (3.5 points at p = 0.5, limit 800); the table prints it
for the mean of the families.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

FAMILIES = ("general", "hallucination", "ocr", "chart")
METEOR = str(Path(sys.executable).with_name("meteor"))
#: (label, allocate options) per setting.
SETTINGS = (
    ("sum (paper)", ["--stage2-method", "meteor", "--stage2-score", "sum"]),
    ("mean", ["--stage2-method", "meteor", "--stage2-score", "mean"]),
    ("encoder-mean", ["--stage2-method", "meteor", "--stage2-score", "encoder-mean"]),
    ("zscore", ["--stage2-method", "meteor", "--stage2-score", "zscore"]),
    ("sum + floor 0.5", ["--stage2-method", "meteor", "--stage2-score", "sum", "--stage2-floor", "0.5"]),
    ("zscore + floor 0.5", ["--stage2-method", "meteor", "--stage2-score", "zscore", "--stage2-floor", "0.5"]),
    ("mean + floor 0.5", ["--stage2-method", "meteor", "--stage2-score", "mean", "--stage2-floor", "0.5"]),
    # floor 1.0: every encoder keeps its quota (∝ token count) of its tokens least redundant with the OTHER
    # encoders — separate's quotas with the collaborative score (any per-encoder score ranks the same).
    ("quotas (floor 1.0)", ["--stage2-method", "meteor", "--stage2-score", "sum", "--stage2-floor", "1.0"]),
    ("separate", ["--stage2-method", "separate"]),
    ("random", ["--stage2-method", "random"]),
)


def meteor(*args: object) -> None:
    cmd = [METEOR, *map(str, args), "-q"]
    print("+", " ".join(cmd[1:]), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny-synthvqa")
    ap.add_argument("--data", type=Path, nargs="+", required=True, help="SynthVQA directories, dev seed first")
    ap.add_argument("--keep", type=int, default=24, help="Stage-2 budget (tiny: 96 visual tokens)")
    ap.add_argument("--tokens", type=int, default=96, help="visual tokens before Stage 2")
    ap.add_argument("--limit", type=int, default=400)
    ap.add_argument("--out", type=Path, default=Path("runs/stage2-scores"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    table: dict[str, dict[str, dict]] = {}
    for data in args.data:
        d = args.out / data.name
        d.mkdir(exist_ok=True)
        if not (d / "ranks.json").exists():
            meteor("rank-estimate", "--model", args.model, "--data", data / "train.json", "--count", 64, "--grid", 8,
                   "--device", "cpu", "--out", d / "ranks.json")
        for label, opts in SETTINGS:
            slug = label.split()[0] + ("-floor" if "floor" in label else "")
            alloc, metrics = d / f"{slug}.allocation.json", d / f"{slug}.metrics.json"
            if not metrics.exists():
                n = args.tokens
                meteor("allocate", "--ranks", d / "ranks.json", "--schedule", "explicit", "--totals", f"{n},{n},{n}",
                       "--fusion-keep", args.keep, *opts, "--out", alloc)
                meteor("eval", "--model", args.model, "--data", data, "--allocation", alloc, "--limit", args.limit,
                       "--batch-size", 16, "--max-new-tokens", 10, "--device", "cpu", "--out", metrics)
            m = json.loads(metrics.read_text())["metrics"]
            table.setdefault(label, {})[data.name] = {f: m["families"][f]["accuracy"] for f in FAMILIES} | {"mean": m["mean"]}
    per_family = args.limit / len(FAMILIES)
    se = 100 * math.sqrt(sum(0.25 for _ in FAMILIES) / per_family) / len(FAMILIES)  # worst case p = 0.5
    (args.out / "stage2_scores.json").write_text(json.dumps({"table": table, "settings": vars(args) | {
        "data": [str(d) for d in args.data], "out": str(args.out)}, "mean_standard_error_max": se}, indent=2, default=str))
    names = [d.name for d in args.data]
    print(f"| Stage-2 score ({args.keep} of {args.tokens} tokens) | " + " | ".join(f"{n} mean" for n in names)
          + " | " + " | ".join(f"{n} {f}" for n in names[1:] for f in FAMILIES) + " |")
    print("|---|" + "---|" * (len(names) + 4 * (len(names) - 1)))
    for label, row in table.items():
        print(f"| {label} | " + " | ".join(f"{row[n]['mean']:.1f}" for n in names) + " | "
              + " | ".join(f"{row[n][f]:.1f}" for n in names[1:] for f in FAMILIES) + " |")
    print(f"\nstandard error of a mean of the families: <= {se:.1f} points ({args.limit} questions)")


if __name__ == "__main__":
    main()
