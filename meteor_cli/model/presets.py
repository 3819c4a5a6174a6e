"""Model presets (``meteor list presets``).

* ``tiny`` — three encoders of different families and resolutions (timm ViT at 64 px: 16
  tokens; HF CLIP at 128 px: 64 tokens; timm ConvNeXt at 128 px: 16 tokens — 96 visual tokens)
  and a 4-layer Llama (hidden 192). Small enough to train on SynthVQA on 2 CPU cores.
* ``small`` — the same families at 224–256 px (196 + 256 + 64 = 516 visual tokens) and an
  8-layer Llama (hidden 512): a model whose CPU prefill is long enough to benchmark.

Both start from random weights and use a word-level tokenizer over SynthVQA's vocabulary
(:func:`synthvqa_tokenizer`); ``meteor train`` rebuilds it from the training data.

* ``tiny-synthvqa`` — ``tiny`` pretrained on SynthVQA by ``meteor train`` itself (recipe:
  ``python3 tasks.py pretrain-tiny``), shipped inside the package as a checkpoint directory
  (float16 weights, loaded as float32). The preset every command can start from on a machine
  without downloads: ``meteor eval --model tiny-synthvqa --data synthvqa``.
* ``tiny-synthvqa-v2`` — its 8-layer successor (issue #15: Stage-3 layers that mean something,
  OCR drawn ``--ocr-style large`` that it reads), shipped alongside it.

* ``eagle-x4`` — the shapes of EAGLE-X4 (METHOD §2.1), the model METEOR prunes: HF CLIP
  ViT-L/14 at 448 px (32×32 tokens), timm ConvNeXt-XXLarge at 1024 px (32×32), timm EVA-02-L/16
  at 1024 px (64×64; EAGLE's ``det-1024`` tower, global attention here, see
  :mod:`~meteor_cli.model.encoders.eva02`), HF Pix2Struct-Large's encoder on a 45×45 grid
  (720 px; EAGLE keeps its first 2025 patches) and Vicuna-7B's Llama shapes, ``vicuna_v1``
  template, METEOR's post-projection fusion (``grid`` 32 for EAGLE's pre-projection baseline).
  About 8.8 B parameters: meant for the meta device (``with torch.device("meta")``, to count
  parameters and FLOPs) or as a template for a config whose ``weights`` / ``llm.path`` point at
  local checkpoints.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from meteor_cli.config import EncoderConfig, LLMConfig, ModelConfig
from meteor_cli.registry import register_preset

CLIP_MEAN, CLIP_STD = [0.4815, 0.4578, 0.4082], [0.2686, 0.2613, 0.2758]


def llama_config(vocab: int, hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int) -> dict[str, Any]:
    return {"model_type": "llama", "vocab_size": vocab, "hidden_size": hidden, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv_heads, "intermediate_size": intermediate,
            "max_position_embeddings": 1024, "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3,
            "tie_word_embeddings": True}


@lru_cache(maxsize=1)
def synthvqa_tokenizer():
    """Word tokenizer covering SynthVQA's questions and answers (deterministic)."""
    from meteor_cli.data.synthvqa import SHORT_ANSWER, follow_up_questions, make_item
    from meteor_cli.data.tokenizer import build_word_tokenizer
    from meteor_cli.model.llm import CORE_TEMPLATES, TEMPLATES

    texts = []
    for i in range(400):  # every question form and answer word occurs well within 400 items
        it = make_item(0, "vocab", i)
        texts += [it.question + SHORT_ANSWER, it.answer]
        texts += [t for qa in follow_up_questions(0, "vocab", i, it, 4) for t in qa]
    texts += ["".join(chr(c) for c in range(ord("a"), ord("z") + 1)), " ".join("0123456789")]
    letters = [" ".join("abcdefghijklmnopqrstuvwxyz0123456789")]
    return build_word_tokenizer(texts, extra_texts=[t for name in CORE_TEMPLATES for t in TEMPLATES[name]] + letters)


@register_preset("tiny", description="3 encoders (ViT-64, CLIP-128, ConvNeXt-128; 96 visual tokens) + 4-layer Llama-192")
def tiny(vocab: int | None = None) -> ModelConfig:
    vocab = vocab or len(synthvqa_tokenizer())
    return ModelConfig(
        encoders=[
            EncoderConfig("vit", "vit", image_size=64, patch=16, depth=3, width=96, heads=4, has_cls=True),
            EncoderConfig("clip", "clip", image_size=128, patch=16, depth=3, width=96, heads=4, has_cls=True,
                          mean=CLIP_MEAN, std=CLIP_STD),
            EncoderConfig("convnext", "convnext", image_size=128, patch=32, depth=4, width=128, has_cls=False,
                          dims=[32, 48, 64, 128], stage_depths=[1, 1, 2, 1]),
        ],
        llm=LLMConfig(hf_config=llama_config(vocab, 192, 4, 8, 4, 512)),
        template="plain",
    )


#: Where the embedded checkpoint lives (package data, see pyproject's package-data).
TINY_SYNTHVQA = Path(__file__).resolve().parent.parent / "assets" / "tiny-synthvqa"


@register_preset("tiny-synthvqa", description="tiny pretrained on SynthVQA (embedded checkpoint, no download)")
def tiny_synthvqa() -> Path:
    """A preset with weights: returns the checkpoint directory (see ``checkpoint_dir_of``)."""
    from meteor_cli.errors import InputNotFoundError
    from meteor_cli.model.checkpoint import has_weights

    if not has_weights(TINY_SYNTHVQA):
        raise InputNotFoundError(f"the embedded checkpoint {TINY_SYNTHVQA} is missing from this installation",
                                 "reinstall meteor, or train one: python3 tasks.py pretrain-tiny")
    return TINY_SYNTHVQA


#: The 8-layer successor (issue #15), shipped next to v1 until the docs' numbers move to it.
TINY_SYNTHVQA_V2 = Path(__file__).resolve().parent.parent / "assets" / "tiny-synthvqa-v2"


@register_preset("tiny-synthvqa-v2", description="tiny-synthvqa deepened to 8 LLM layers, reads SynthVQA v4 OCR "
                 "(embedded checkpoint, no download)")
def tiny_synthvqa_v2() -> Path:
    """``tiny-synthvqa`` v2: v1's LLM deepened to 8 layers (``model.grow.deepen``) and trained on
    SynthVQA generator v4 (``--ocr-style large``); recipe: ``python3 tasks.py pretrain-tiny`` phase 4."""
    from meteor_cli.errors import InputNotFoundError
    from meteor_cli.model.checkpoint import has_weights

    if not has_weights(TINY_SYNTHVQA_V2):
        raise InputNotFoundError(f"the embedded checkpoint {TINY_SYNTHVQA_V2} is missing from this installation",
                                 "reinstall meteor, or train one: python3 tasks.py pretrain-tiny")
    return TINY_SYNTHVQA_V2


@register_preset("small", description="ViT-224, CLIP-224, ConvNeXt-256 (516 visual tokens) + 8-layer Llama-512")
def small(vocab: int | None = None) -> ModelConfig:
    vocab = vocab or len(synthvqa_tokenizer())
    return ModelConfig(
        encoders=[
            EncoderConfig("vit", "vit", image_size=224, patch=16, depth=12, width=384, heads=6),
            EncoderConfig("clip", "clip", image_size=224, patch=14, depth=12, width=384, heads=6,
                          mean=CLIP_MEAN, std=CLIP_STD),
            EncoderConfig("convnext", "convnext", image_size=256, patch=32, depth=4, width=768, has_cls=False,
                          dims=[96, 192, 384, 768], stage_depths=[3, 3, 9, 3]),
        ],
        llm=LLMConfig(hf_config=llama_config(vocab, 512, 8, 8, 4, 1408)),
        template="plain",
    )


#: Vicuna-7B v1.5 (Llama-2-7B shapes): untied embeddings, 4096 positions, Llama-2 special tokens.
VICUNA_7B = {**llama_config(32000, 4096, 32, 32, 32, 11008), "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
             "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False}


@register_preset("eagle-x4", description="EAGLE-X4 shapes: CLIP-L/14-448, ConvNeXt-XXL-1024, EVA-02-L/16-1024, "
                 "Pix2Struct-L-720 (8169 visual tokens) + Vicuna-7B; 8.8 B parameters (meta device)")
def eagle_x4(vocab: int | None = None) -> ModelConfig:
    return ModelConfig(
        encoders=[
            EncoderConfig("clip", "clip", image_size=448, patch=14, depth=24, width=1024, heads=16,
                          mean=CLIP_MEAN, std=CLIP_STD),
            EncoderConfig("convnext", "convnext", image_size=1024, patch=32, depth=4, width=3072, has_cls=False,
                          dims=[384, 768, 1536, 3072], stage_depths=[3, 4, 30, 3], mean=CLIP_MEAN, std=CLIP_STD),
            EncoderConfig("eva02", "eva02", image_size=1024, patch=16, depth=24, width=1024, heads=16,
                          mlp_ratio=4 * 2 / 3, has_cls=False, mean=CLIP_MEAN, std=CLIP_STD),
            EncoderConfig("pix2struct", "pix2struct", image_size=720, patch=16, depth=18, width=1536, heads=24,
                          mlp_ratio=3968 / 1536, has_cls=False),
        ],
        llm=LLMConfig(hf_config={**VICUNA_7B, "vocab_size": vocab or 32000}),
        template="vicuna_v1",
        grid=32,
    )
