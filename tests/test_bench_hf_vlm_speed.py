"""bench/hf_vlm_speed.py: the model it builds has the released token geometry, answers at full
length (so methods decode alike), and its table reads the budgets the methods were given."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "hf_vlm_speed.py"


def test_built_llava_has_576_tokens_and_never_says_eos(tmp_path, bench_module):
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    d = bench_module("hf_vlm_speed").build("llava", tmp_path / "m", tower=32, width=64, layers=4)
    model = LlavaForConditionalGeneration.from_pretrained(d)
    proc = AutoProcessor.from_pretrained(d)
    assert model.config.vision_config.image_size // model.config.vision_config.patch_size == 24  # 576 tokens
    rows = model.get_output_embeddings().weight[proc.tokenizer.all_special_ids]
    assert torch.count_nonzero(rows) == 0


def test_bench_table_through_the_cli(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--methods", "visionzip,fastv", "--budget", "64",
                          "--questions", "2", "--repeat", "1", "--max-new-tokens", "3", "--tower-width", "32",
                          "--llm-width", "64", "--llm-layers", "16", "--json"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {r["method"]: r for r in json.loads(out.stdout)["rows"]}
    assert list(rows) == ["unpruned", "visionzip", "fastv"]
    assert rows["unpruned"]["visual_tokens"] == 576 and rows["unpruned"]["time_ratio"] == 1.0
    assert rows["visionzip"]["visual_tokens"] == 64
    assert abs(rows["fastv"]["layer_averaged"] - 64) < 1 and rows["fastv"]["visual_tokens"] == 576
    assert all(r["answer_words"] == 3 for r in rows.values())
    assert all(r["flops_ratio"] < 1 for m, r in rows.items() if m != "unpruned")
