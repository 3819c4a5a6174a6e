"""Wall-clock per answer on a transformers VLM, every method against unpruned, ratios from one run.

Builds a random-initialised ``LlavaForConditionalGeneration`` (or LLaVA-NeXT / Qwen2-VL) with the
**token geometry of the released 7B models** — a 336-px, patch-14 CLIP tower cut at
``vision_feature_layer=-2`` (576 visual tokens; NeXT: 336-px tiles over the 672-px pinpoints,
Qwen2-VL: 14-px patches merged 2×2 on a 448² image) — at a width small enough for a CPU, saves
it with its processor, and times ``meteor eval --method unpruned,<methods> --visual-tokens T``
on SynthVQA questions: the command users run, the model's own processor, chat template and
``generate`` with the KV cache. Every answer is ``--max-new-tokens`` words long (the built model's
output rows of EOS and the other special tokens are zeroed, so they never win the argmax), so all
methods decode the same number of steps; with ``--model DIR`` answers end where the model says EOS, and the table's
``words`` column (mean words per answer) shows whether the methods decoded alike.

Machine noise: the eval runs ``--repeat`` times, the method order reversed every other run, and
each run's times are divided by that run's unpruned time before the median is taken.

    .venv/bin/python bench/hf_vlm_speed.py                                  # LLaVA-1.5 geometry, T=64
    .venv/bin/python bench/hf_vlm_speed.py --family llava_next --budget 128 --questions 4
    .venv/bin/python bench/hf_vlm_speed.py --model DIR                       # a checkpoint you have

The width of the LLM relative to the tower sets how much Stage 1 can save (LLaVA-1.5-7B: the LLM
is ~20× the tower's prefill cost); the defaults keep roughly that ratio (``--llm-width 768
--llm-layers 16``, tower width 128 × 24 blocks).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/model/hf_vlm_builders: the configs, tokenizer and chat templates the tests use

DEFAULT_METHODS = "meteor,visionzip,fastv,pdrop,dart,sparsevlm"


def _clip(width: int):
    """CLIP-L/336's token geometry (24 blocks, patch 14: 576 tokens) at ``width``."""
    from tests.model.hf_vlm_builders import _clip as clip_config

    return clip_config(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=24,
                       num_attention_heads=max(1, width // 64), image_size=336, patch_size=14)


def _llm(model_type: str, vocab: int, width: int, layers: int, **kw):
    """A ``layers``-deep LLM of ``width`` (Llama-7B's MLP ratio, head dim 64, no GQA)."""
    from tests.model.hf_vlm_builders import _text

    heads = max(2, width // 64)
    return _text(model_type, vocab, hidden_size=width, intermediate_size=int(2.6875 * width), num_hidden_layers=layers,
                 num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=8192, **kw)


def build(family: str, out: Path, *, tower: int, width: int, layers: int) -> Path:
    """A random model of ``family`` at real token geometry, saved with its processor to ``out``."""
    import torch
    from transformers import (CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaNextConfig,
                              LlavaNextForConditionalGeneration, LlavaNextImageProcessor, LlavaNextProcessor,
                              LlavaProcessor)

    from tests.model.hf_vlm_builders import LLAVA_TEMPLATE, QWEN_TEMPLATE, tokenizer

    torch.manual_seed(0)
    if family == "qwen2_vl":
        from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil,
                                  Qwen2VLProcessor, Qwen2VLVideoProcessor)

        specials = ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>", "<|im_start|>", "<|im_end|>"]
        tok = tokenizer(specials)
        pixels = {"min_pixels": 448 * 448, "max_pixels": 448 * 448}  # every image → 32×32 patches → 256 tokens
        proc = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessorPil(**pixels), tokenizer=tok,
                                video_processor=Qwen2VLVideoProcessor(**pixels), chat_template=QWEN_TEMPLATE)
        ids = {s: tok.convert_tokens_to_ids(s) for s in specials}
        head = width // max(2, width // 64)  # M-RoPE sections as Qwen2-VL-7B's [16, 24, 24] of head 128
        text = _llm("qwen2_vl_text", len(tok), width, layers,
                    rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                     "mrope_section": [head // 8, 3 * head // 16, 3 * head // 16]})
        cfg = Qwen2VLConfig(text_config=text.to_dict(),
                            vision_config={"depth": 32, "embed_dim": tower, "hidden_size": width,
                                           "num_heads": max(1, tower // 64), "patch_size": 14, "spatial_merge_size": 2,
                                           "temporal_patch_size": 2},
                            image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                            vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
        model = Qwen2VLForConditionalGeneration._from_config(cfg)
    else:
        tok = tokenizer(["<image>"])
        common = {"vision_config": _clip(tower), "text_config": _llm("llama", len(tok), width, layers),
                  "vision_feature_layer": -2, "image_token_id": tok.convert_tokens_to_ids("<image>"),
                  "vision_feature_select_strategy": "default"}
        crop = {"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}}
        kw = {"patch_size": 14, "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1,
              "chat_template": LLAVA_TEMPLATE}
        if family == "llava":
            proc = LlavaProcessor(image_processor=CLIPImageProcessor(**crop), tokenizer=tok, **kw)
            model = LlavaForConditionalGeneration._from_config(LlavaConfig(**common))
        else:
            pins = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]  # llava-v1.6's pinpoints
            proc = LlavaNextProcessor(image_processor=LlavaNextImageProcessor(image_grid_pinpoints=pins, **crop),
                                      tokenizer=tok, **kw)
            model = LlavaNextForConditionalGeneration._from_config(LlavaNextConfig(image_grid_pinpoints=pins, **common))
    with torch.no_grad():  # special tokens (EOS among them) get logit 0 while ~40 random word logits are not all
        model.get_output_embeddings().weight[tok.all_special_ids] = 0  # below it: every answer is max-new-tokens words
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


def meteor_cli(*argv: str, threads: int) -> None:
    subprocess.run([sys.executable, "-m", "meteor_cli", *argv, "--device", "cpu", "-q"], check=True,
                   stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": str(threads)})


def meteor_settings(model: Path, tmp: Path, threads: int) -> list[str]:
    """What ``eval --method meteor`` needs, made as a user makes it: ranks from 8 training images, an
    uncalibrated meteor prune-llm (eval fits its scale to the budget on the run's first questions)."""
    meteor_cli("rank-estimate", "--model", str(model), "--data", str(tmp / "sv" / "train.json"), "--count", "8",
               "--out", str(tmp / "ranks.json"), threads=threads)
    meteor_cli("prune-llm", "--model", str(model), "--method", "meteor", "--out", str(tmp / "meteor.json"),
               threads=threads)
    return ["--ranks", str(tmp / "ranks.json"), "--prune-llm", str(tmp / "meteor.json")]


def run_eval(model: Path, data: Path, methods: list[str], budget: int, args: argparse.Namespace, out: Path,
             extra: list[str]) -> dict:
    meteor_cli("eval", "--model", str(model), "--data", str(data), "--limit", str(args.questions), "--method",
               ",".join(methods), "--visual-tokens", str(budget), "--max-new-tokens", str(args.max_new_tokens),
               "--batch-size", "1", "--out", str(out), *extra, threads=args.threads)
    rows = {r["method"]: r for r in json.loads(out.read_text())["results"]}
    words: dict[str, list[int]] = {}
    for line in out.with_suffix(".samples.jsonl").read_text().splitlines():
        sample = json.loads(line)
        words.setdefault(sample["method"], []).append(len(sample["text"].split()))
    for m, r in rows.items():
        r["answer_words"] = statistics.mean(words[m])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="an existing LLaVA / LLaVA-NeXT / Qwen2-VL directory (else one is built)")
    ap.add_argument("--family", default="llava", choices=["llava", "llava_next", "qwen2_vl"])
    ap.add_argument("--tower-width", type=int, default=128)
    ap.add_argument("--llm-width", type=int, default=768)
    ap.add_argument("--llm-layers", type=int, default=16)
    ap.add_argument("--methods", default=DEFAULT_METHODS, help="comma-separated, besides unpruned")
    ap.add_argument("--budget", type=int, default=64, help="--visual-tokens (64, 128, 192 as the papers report)")
    ap.add_argument("--questions", type=int, default=6)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from meteor_cli.data.synthvqa import SynthConfig, generate

    methods = ["unpruned", *[m for m in args.methods.split(",") if m and m != "unpruned"]]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        model = args.model or build(args.family, tmp_path / "model", tower=args.tower_width, width=args.llm_width,
                                    layers=args.llm_layers)
        generate(tmp_path / "sv", n_train=8, n_eval=max(args.questions, 4), seed=1, cfg=SynthConfig(image_size=336))
        extra = meteor_settings(model, tmp_path, args.threads) if "meteor" in methods else []
        ratios: dict[str, list[float]] = {m: [] for m in methods}
        last: dict[str, dict] = {}
        for i in range(args.repeat):
            order = methods if i % 2 == 0 else methods[::-1]
            rows = run_eval(model, tmp_path / "sv", order, args.budget, args, tmp_path / f"r{i}.json", extra)
            base = rows["unpruned"]["seconds_per_sample"]
            for m in methods:
                ratios[m].append(rows[m]["seconds_per_sample"] / base)
            last = rows
    table = []
    for m in methods:
        r = last[m]
        table.append({"method": m, "visual_tokens": r["tokens"]["stage2_visual"],
                      "layer_averaged": r["tokens"]["stage3_layer_averaged"], "flops_ratio": r["flops"]["ratio"],
                      "time_ratio": statistics.median(ratios[m]), "time_ratios": ratios[m],
                      "seconds_per_sample": r["seconds_per_sample"], "answer_words": r["answer_words"]})
    if args.json:
        print(json.dumps({"family": args.family if args.model is None else str(args.model), "budget": args.budget,
                          "questions": args.questions, "max_new_tokens": args.max_new_tokens, "rows": table}, indent=2))
        return
    print(f"{args.model or args.family}: --visual-tokens {args.budget}, {args.questions} questions × {args.repeat} runs, "
          f"{args.max_new_tokens} new tokens each, batch 1, {args.threads} threads")
    print(f"{'method':<12}{'visual in':>10}{'layer-avg':>11}{'FLOPs ratio':>13}{'time ratio':>12}{'s/answer':>10}{'words':>7}")
    for t in table:
        print(f"{t['method']:<12}{t['visual_tokens']:>10.1f}{t['layer_averaged']:>11.1f}{t['flops_ratio']:>13.3f}"
              f"{t['time_ratio']:>12.2f}{t['seconds_per_sample']:>10.2f}{t['answer_words']:>7.1f}")


if __name__ == "__main__":
    main()
