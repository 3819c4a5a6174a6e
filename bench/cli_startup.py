"""How much does `meteor` cost to start, relative to a bare Python interpreter?

Shell completion calls `meteor` on every TAB, so start-up must stay cheap: the CLI imports no
torch until a stage needs it. This reports the median wall time of `meteor --help` and of a
completion request, each divided by the median of `python -c pass`, measured in the same run.

    .venv/bin/python bench/cli_startup.py [--repeat 15] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def median_seconds(cmd: list[str], env: dict[str, str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    env = dict(os.environ)
    comp = {**env, "_METEOR_COMPLETE": "complete_bash", "COMP_WORDS": "meteor rank-estimate --", "COMP_CWORD": "2"}
    base = median_seconds([sys.executable, "-c", "pass"], env, args.repeat)
    rows = {
        "meteor --help": median_seconds([sys.executable, "-m", "meteor_cli", "--help"], env, args.repeat),
        "completion": median_seconds([sys.executable, "-m", "meteor_cli"], comp, args.repeat),
        "import torch": median_seconds([sys.executable, "-c", "import torch"], env, args.repeat),
    }
    result = {"baseline_s": base, "ratios": {k: v / base for k, v in rows.items()}}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"bare interpreter: {base * 1000:.0f} ms (median of {args.repeat})")
    for k, v in rows.items():
        print(f"{k:>15}: {v / base:5.1f}x the bare interpreter")


if __name__ == "__main__":
    main()
