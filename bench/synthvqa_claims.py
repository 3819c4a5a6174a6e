#!/usr/bin/env python3
"""METEOR's claims on the embedded model, measured through the CLI on held-out SynthVQA seeds.

    python bench/synthvqa_claims.py --model tiny-synthvqa --train runs/sv3-s5/train.json \\
        --image-root runs/sv3-s5 --eval runs/sv3-e1234 runs/sv3-e77 --out runs/claims

Every number comes from the ``meteor`` commands a user would type (rank-estimate, allocate,
prune-llm, train, eval, flops), each run as a child process; their command lines go to
``OUT/claims.log``. The table compares, at one visual-token budget ``b`` (``--budget``, default
25 % of the model's ``N`` visual tokens, ``T = round(b·N)``):

* **Stage 1 allocation** (``--keep-ratio s1`` inside the encoders, Stage 2 to ``T``): rank,
  average and rank-reverse budgets;
* **Stage 2** alone (no Stage 1): collaborative with the default (the paper's sum with a per-encoder
  floor of 0.5) and each redundancy score without a floor (the paper's sum, zscore, mean,
  encoder-mean), separate, random, and 2-D pooling, each keeping ``T``;
* **VisionZip** as the Stage-1 policy, ``T`` tokens in all;
* **Stage 3** alone at an equal LAYER-AVERAGED budget ``--stage3-budget`` (default 50 %: on an
  8-layer LLM, FastV's and PDrop's default layers already spend 25 % before their first prune):
  METEOR's adaptive policy (calibrated), ``fixed`` at METEOR's layers, FastV, PDrop, DART and SparseVLM;
* **METEOR fine-tuned** for ``--ft-steps`` with Stage 1-2 in the loop (the paper's training phase
  shortened), evaluated with the same allocation.

Noise: every row's difference to its comparator is paired over the same questions; the table
gives the standard error of that difference (``sd(d)/sqrt(n)`` over per-question 0/1 outcomes),
per seed. A claim is called "holds" only when the difference exceeds 2 SE on every seed,
"within noise" when it does not reach 2 SE on some seed, "reversed" when it is below -2 SE.
Steps whose outputs exist are skipped, so a killed run continues where it stopped.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from meteor_cli.eval.methods import fastv_setting, pdrop_ratio, sparsevlm_setting  # noqa: E402
from meteor_cli.errors import UsageError  # noqa: E402
from meteor_cli.pruning import DEFAULT_FLOOR, DEFAULT_SCORE  # noqa: E402
from meteor_cli.eval.results import samples_path_for  # noqa: E402
from meteor_cli.pruning.llm_policies import default_layers  # noqa: E402

FAMILIES = ("general", "hallucination", "ocr", "chart")
#: The Stage-2 setting that runs `meteor allocate`'s default score and floor.
DEFAULT_S2 = f"collaborative {DEFAULT_SCORE} + floor {DEFAULT_FLOOR} (default)"
LOG: Path | None = None


def meteor(*args: object, outputs: list[Path] | None = None) -> None:
    """Run one meteor subcommand unless all of ``outputs`` exist."""
    if outputs and all(p.exists() for p in outputs):
        return
    argv = [str(a) for a in args]
    assert LOG is not None
    with LOG.open("a") as fh:
        fh.write(f"$ meteor {shlex.join(argv)}\n")
        fh.flush()
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "meteor_cli", *argv, "-q"], stdout=fh, stderr=subprocess.STDOUT)
        fh.write(f"# {time.perf_counter() - t0:.1f} s, exit {proc.returncode}\n")
    if proc.returncode != 0:
        sys.exit(f"failed: meteor {shlex.join(argv)} (see {LOG})")


def flops_of(model: str, extra: list[object]) -> dict:
    proc = subprocess.run([sys.executable, "-m", "meteor_cli", "flops", "--model", model, *map(str, extra), "--out", "-",
                           "-q"], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


@functools.lru_cache(maxsize=None)
def outcomes(samples: Path) -> dict[str, tuple[str, bool]]:
    """question id -> (family, correct) of one per-sample file (read once; each feeds several claims)."""
    rows = {}
    for line in samples.read_text().splitlines():
        r = json.loads(line)
        rows[r["question_id"]] = (r["category"], bool(r["correct"]))
    return rows


def paired(a: dict[str, tuple[str, bool]], b: dict[str, tuple[str, bool]], family: str | None = None) -> tuple[float, float]:
    """Mean difference a-b in points over the shared questions (of ``family``) and its standard error."""
    keys = [k for k in a if k in b and (family is None or a[k][0] == family)]
    d = [100.0 * (a[k][1] - b[k][1]) for k in keys]
    n = len(d)
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / max(1, n - 1)
    return mean, math.sqrt(var / n)


def main() -> None:
    global LOG
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny-synthvqa", help="preset or checkpoint directory")
    ap.add_argument("--train", type=Path, required=True, help="training records for rank estimation and fine-tuning")
    ap.add_argument("--image-root", type=Path, help="image root of --train (default: its directory)")
    ap.add_argument("--eval", type=Path, nargs="+", required=True, help="held-out SynthVQA directories (one per seed)")
    ap.add_argument("--out", type=Path, default=Path("runs/claims"))
    ap.add_argument("--limit", type=int, default=400, help="questions per evaluation set (families rotate)")
    ap.add_argument("--budget", type=float, default=0.25, help="visual-token budget of Stage 1-2 rows (fraction)")
    ap.add_argument("--stage3-budget", type=float, default=0.5, help="layer-averaged budget of the Stage-3 rows")
    ap.add_argument("--ft-steps", type=int, default=300, help="fine-tuning steps with Stage 1-2 in the loop")
    ap.add_argument("--ft-lr", type=float, default=2e-4)
    ap.add_argument("--one-run-methods", default="unpruned,meteor,visionzip,dart,fastv,pdrop,sparsevlm,divprune,pool",
                    help="methods of the `meteor eval --method` comparison (#17)")
    ap.add_argument("--one-run-budgets", default="48", help="visual-token budgets of that comparison (comma list)")
    ap.add_argument("--rows", default="",
                    help="semicolon-separated row names to run (names contain commas; default: all)")
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    LOG = out / "claims.log"
    model = args.model
    size = flops_of(model, [])
    n_vis = int(size["visual_tokens"]["into_llm"])
    from meteor_cli.model.checkpoint import load_model_config

    n_layers = int(load_model_config(model).llm.resolved_hf_config()["num_hidden_layers"])
    T = round(args.budget * n_vis)
    T3 = round(args.stage3_budget * n_vis)
    s1 = min(0.9, 1.6 * args.budget)
    image_root = args.image_root or args.train.parent
    ranks = out / "ranks.json"
    meteor("rank-estimate", "--model", model, "--data", args.train, "--image-root", image_root, "--count", 64,
           "--grid", 8, "--device", "cpu", "--out", ranks, outputs=[ranks])

    # -- settings: name -> (group, model, eval flags) -------------------------------------------------
    settings: dict[str, tuple[str, str, list[object]]] = {"unpruned": ("reference", model, [])}
    for strat in ("rank", "average", "rank-reverse"):
        a = out / f"s12-{strat}.allocation.json"
        meteor("allocate", "--ranks", ranks, "--keep-ratio", s1, "--fusion-keep", T, "--strategy", strat,
               "--out", a, outputs=[a])
        settings[f"stage1 {strat}"] = ("stage1", model, ["--allocation", a])
    full = f"{n_vis},{n_vis},{n_vis}"
    for name, flags in ((DEFAULT_S2, ["--stage2-score", DEFAULT_SCORE, "--stage2-floor", DEFAULT_FLOOR]),
                        ("collaborative zscore", ["--stage2-score", "zscore", "--stage2-floor", 0]),
                        ("collaborative sum (paper)", ["--stage2-score", "sum", "--stage2-floor", 0]),
                        ("collaborative mean", ["--stage2-score", "mean", "--stage2-floor", 0]),
                        ("collaborative encoder-mean", ["--stage2-score", "encoder-mean", "--stage2-floor", 0]),
                        ("separate", ["--stage2-method", "separate"]),
                        ("random", ["--stage2-method", "random"]),
                        ("pool", ["--stage2-method", "pool"]),
                        ("divprune", ["--stage2-method", "divprune"])):
        a = out / f"s2-{name.split()[-1].strip('()')}.allocation.json"
        meteor("allocate", "--ranks", ranks, "--schedule", "explicit", "--totals", full, "--fusion-keep", T, *flags,
               "--out", a, outputs=[a])
        settings[f"stage2 {name}"] = ("stage2", model, ["--allocation", a])
    a = out / "visionzip.allocation.json"
    meteor("allocate", "--ranks", ranks, "--keep-ratio", args.budget, "--fusion-keep", T, "--stage1-method",
           "visionzip", "--out", a, outputs=[a])
    settings["visionzip (stage 1)"] = ("stage1-policy", model, ["--allocation", a])

    # Stage 3 alone at an equal layer-averaged budget T3.
    m_layers = default_layers(n_layers)
    p_layers = default_layers(n_layers, (8, 16, 24))
    fastv_k, r_fastv = fastv_setting(n_vis, T3, n_layers)  # K=2, earlier only if a shallow LLM needs it
    dart_k = min(2, n_layers - 1)
    dart_keep = round((T3 * n_layers - dart_k * n_vis) / (n_layers - dart_k))
    s3: dict[str, list[object]] = {
        "meteor adaptive": ["--calibrate", "--data", args.train, "--image-root", image_root, "--target-tokens", T3,
                            "--count", 32, "--device", "cpu"],
        "fastv": ["--method", "fastv", "--layers", fastv_k, "--drop-ratio", round(r_fastv, 4)],
    }
    infeasible = []
    for name, layers in (("fixed", m_layers), ("pdrop", p_layers)):
        try:
            r = pdrop_ratio(n_vis, T3, n_layers, layers)
        except UsageError:
            infeasible.append(f"{name} at layers {layers}")
            continue
        s3[name] = ["--method", name, "--layers", ",".join(map(str, layers)),
                    "--keep", ",".join(str(round(r ** (i + 1), 4)) for i in range(len(layers)))]
    if dart_keep > 0:
        s3["dart"] = ["--method", "dart", "--keep", dart_keep]
    else:
        infeasible.append(f"dart at layer {dart_k}")
    try:  # SparseVLM+ (the paper's main baseline): its schedule scaled to T3, as `eval --method sparsevlm`
        sv_layers, sv_keep = sparsevlm_setting(n_vis, T3, n_layers)
        s3["sparsevlm"] = ["--method", "sparsevlm", "--layers", ",".join(map(str, sv_layers)),
                           "--keep", ",".join(map(str, sv_keep))]
    except UsageError:
        infeasible.append("sparsevlm")
    for name, flags in s3.items():
        p = out / f"s3-{name.split()[0]}.prune-llm.json"
        meteor("prune-llm", "--model", model, *flags, "--out", p, outputs=[p])
        settings[f"stage3 {name}"] = ("stage3", model, ["--prune-llm", p])

    wanted = {r.strip() for r in args.rows.split(";") if r.strip()}
    known = [*settings, "meteor stage 1-2, fine-tuned"]
    if wanted - set(known):
        sys.exit(f"--rows: no row named {sorted(wanted - set(known))}; rows: {'; '.join(known)}")
    ft = out / "finetuned"
    t0 = time.perf_counter()
    meteor("train", "--model", model, "--data", args.train, "--image-root", image_root, "--allocation",
           out / "s12-rank.allocation.json", "--lr", args.ft_lr, "--batch-size", 16, "--max-steps", args.ft_steps,
           "--warmup", 0.05, "--device", "cpu", "--out", ft, outputs=[ft / "config.json"])
    ft_wall = time.perf_counter() - t0
    settings["meteor stage 1-2, fine-tuned"] = ("finetuned", str(ft), ["--allocation", out / "s12-rank.allocation.json"])
    if wanted:
        settings = {k: v for k, v in settings.items() if k in wanted or k == "unpruned"}

    # -- evaluation -----------------------------------------------------------------------------------------
    results: dict[str, dict] = {}
    for name, (group, mdl, extra) in settings.items():
        slug = name.replace(" ", "_").replace("(", "").replace(")", "").replace(",", "")
        fl = flops_of(mdl, extra)
        row = {"group": group, "flops_ratio": round(fl["ratio"], 3), "seeds": {}}
        for ev in args.eval:
            m = out / f"{ev.name}.{slug}.metrics.json"
            meteor("eval", "--model", mdl, "--data", ev, "--limit", args.limit, "--batch-size", 16,
                   "--max-new-tokens", 10, "--device", "cpu", *extra, "--out", m, "--restart", outputs=[m])
            doc = json.loads(m.read_text())
            body = doc.get("body", doc)
            fam = body["metrics"]["families"]
            row["seeds"][ev.name] = {"mean": round(body["metrics"]["mean"], 1),
                                     **{f: round(fam[f]["accuracy"], 1) for f in FAMILIES if f in fam},
                                     "into_llm": round(body["tokens"]["stage2_visual"], 1),
                                     "layer_averaged": round(body["tokens"]["stage3_layer_averaged"], 1),
                                     "samples": str(samples_path_for(m))}
        results[name] = row

    # -- paired differences and the claims ------------------------------------------------------------------
    def diff(a: str, b: str, family: str | None = None) -> list[tuple[float, float]]:
        res = []
        for ev in args.eval:
            sa, sb = (outcomes(Path(results[x]["seeds"][ev.name]["samples"])) for x in (a, b))
            res.append(paired(sa, sb, family))
        return res

    def verdict(ds: list[tuple[float, float]]) -> str:
        if all(d > 2 * se for d, se in ds):
            return "holds"
        if any(d < -2 * se for d, se in ds):
            return "reversed"
        return "within noise"

    claims = []

    def claim(text: str, a: str, b: str, family: str | None = None) -> None:
        if a in results and b in results:
            ds = diff(a, b, family)
            claims.append({"claim": text, "a": a, "b": b, "family": family or "mean",
                           "diff": [round(d, 1) for d, _ in ds], "se": [round(se, 1) for _, se in ds],
                           "verdict": verdict(ds)})

    claim("rank > average (Stage 1 allocation)", "stage1 rank", "stage1 average")
    claim("average > rank-reverse", "stage1 average", "stage1 rank-reverse")
    default2 = f"stage2 {DEFAULT_S2}"
    claim(f"collaborative (default: {DEFAULT_SCORE} + floor {DEFAULT_FLOOR}) > separate", default2, "stage2 separate")
    claim("separate > random", "stage2 separate", "stage2 random")
    claim("collaborative (paper's sum) > separate", "stage2 collaborative sum (paper)", "stage2 separate")
    claim("collaborative (zscore, the earlier default) > separate", "stage2 collaborative zscore", "stage2 separate")
    claim("collaborative (default) > random", default2, "stage2 random")
    claim("collaborative (default) > pool", default2, "stage2 pool")
    claim("collaborative (default) >= divprune", default2, "stage2 divprune")
    for other in ("fixed", "fastv", "pdrop", "dart", "sparsevlm"):
        claim(f"adaptive Stage 3 >= {other}", "stage3 meteor adaptive", f"stage3 {other}")
        claim(f"adaptive Stage 3 >= {other} on ocr", "stage3 meteor adaptive", f"stage3 {other}", "ocr")
    claim("sparsevlm >= fastv (the paper's ordering of its baselines)", "stage3 sparsevlm", "stage3 fastv")
    claim("fine-tuning recovers Stage 1-2 loss", "meteor stage 1-2, fine-tuned", "stage1 rank")

    # -- #17: today's baselines in one `meteor eval --method` run per seed and budget ------------------------
    one_run: dict[str, list[dict]] = {}
    for budget in [b for b in args.one_run_budgets.split(",") if b]:
        for ev in args.eval:
            m = out / f"{ev.name}.methods{budget}.json"
            methods = args.one_run_methods
            meteor("eval", "--model", model, "--data", ev, "--limit", args.limit, "--batch-size", 16,
                   "--max-new-tokens", 10, "--device", "cpu", "--method", methods, "--visual-tokens", budget,
                   "--ranks", ranks, "--prune-llm", out / "s3-meteor.prune-llm.json", "--out", m, "--restart",
                   outputs=[m])
            doc = json.loads(m.read_text())
            body = doc.get("body", doc)
            one_run.setdefault(budget, []).extend(
                {"seed": ev.name, "label": r["label"], "score": round(r.get("score", r["metrics"].get("mean", math.nan)), 1),
                 "layer_averaged": round(r["tokens"]["stage3_layer_averaged"], 1),
                 "flops_ratio": round(r.get("flops", {}).get("ratio", math.nan), 3),
                 **{f: round(r["metrics"]["families"][f]["accuracy"], 1) for f in FAMILIES
                    if f in r["metrics"].get("families", {})}}
                for r in body["results"])

    ref = results["unpruned"]["seeds"]
    kept = {}
    if "meteor stage 1-2, fine-tuned" in results:
        ftm = results["meteor stage 1-2, fine-tuned"]["seeds"]
        kept = {s: round(100 * ftm[s]["mean"] / ref[s]["mean"], 1) for s in ref}
    log = out / "finetuned" / "train_log.jsonl"
    train_s = sum(json.loads(x)["seconds"] for x in log.read_text().splitlines()) if log.exists() else None
    report = {"model": model, "visual_tokens": n_vis, "llm_layers": n_layers, "budget": args.budget, "T": T,
              "stage3_budget": args.stage3_budget, "T3": T3, "stage1_keep_ratio": s1,
              "stage3_layers": {"meteor/fixed": m_layers, "pdrop": p_layers, "fastv": fastv_k, "dart": dart_k},
              "stage3_infeasible": infeasible,
              "finetune": {"steps": args.ft_steps, "train_seconds": train_s, "wall_seconds_this_run": round(ft_wall)},
              "finetuned_keeps_percent_of_unpruned": kept, "rows": results, "claims": claims,
              "eval_sets": [str(e) for e in args.eval], "limit": args.limit, "one_run": one_run}
    (out / "claims.json").write_text(json.dumps(report, indent=2) + "\n")

    seeds = [e.name for e in args.eval]
    print(f"{model}: N={n_vis} visual tokens, {n_layers} LLM layers; Stage 1-2 rows at T={T} ({args.budget:.0%}), "
          f"Stage 3 rows at {T3} layer-averaged ({args.stage3_budget:.0%}); {args.limit} questions per seed\n")
    print("| row | seed | mean | " + " | ".join(FAMILIES) + " | into LLM | layer avg | FLOPs ratio |")
    print("|---|---|---|" + "---|" * len(FAMILIES) + "---|---|---|")
    for name, r in results.items():
        for s in seeds:
            x = r["seeds"][s]
            print(f"| {name} | {s} | {x['mean']} | " + " | ".join(str(x.get(f, '')) for f in FAMILIES)
                  + f" | {x['into_llm']} | {x['layer_averaged']} | {r['flops_ratio']} |")
    print("\n| claim | diff per seed (points) | 2 SE | verdict |\n|---|---|---|---|")
    for c in claims:
        print(f"| {c['claim']} | {' / '.join(map(str, c['diff']))} | "
              f"{' / '.join(str(round(2 * s, 1)) for s in c['se'])} | {c['verdict']} |")
    for budget, rows_ in one_run.items():
        print(f"\n`meteor eval --method` at {budget} visual tokens (layer-averaged):\n")
        print("| method | seed | score | " + " | ".join(FAMILIES) + " | layer avg | FLOPs ratio |")
        print("|---|---|---|" + "---|" * len(FAMILIES) + "---|---|")
        for r in sorted(rows_, key=lambda r: (r["label"], r["seed"])):
            print(f"| {r['label']} | {r['seed']} | {r['score']} | " + " | ".join(str(r.get(f, '')) for f in FAMILIES)
                  + f" | {r['layer_averaged']} | {r['flops_ratio']} |")
    if kept:
        print(f"\nMETEOR fine-tuned keeps {kept} % of the unpruned mean "
              f"({args.ft_steps} steps, {train_s and round(train_s)} s of training)")


if __name__ == "__main__":
    main()
