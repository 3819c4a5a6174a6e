"""Model presets (``meteor list presets``).

* ``tiny`` — three encoders of different families and resolutions (timm ViT at 64 px: 16
  tokens; HF CLIP at 128 px: 64 tokens; timm ConvNeXt at 128 px: 16 tokens — 96 visual tokens)
  and a 4-layer Llama (hidden 192). Small enough to train on SynthVQA on 2 CPU cores.
* ``small`` — the same families at 224–256 px (196 + 256 + 64 = 516 visual tokens) and an
  8-layer Llama (hidden 512): a model whose CPU prefill is long enough to benchmark.

Both start from random weights and use a word-level tokenizer over SynthVQA's vocabulary
(:func:`synthvqa_tokenizer`); ``meteor train`` rebuilds it from the training data.
"""

from __future__ import annotations

from functools import lru_cache
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
    from meteor_cli.data.synthvqa import SHORT_ANSWER, make_item
    from meteor_cli.data.tokenizer import build_word_tokenizer
    from meteor_cli.model.llm import TEMPLATES

    texts = []
    for i in range(400):  # every question form and answer word occurs well within 400 items
        it = make_item(0, "vocab", i)
        texts += [it.question + SHORT_ANSWER, it.answer]
    texts += ["".join(chr(c) for c in range(ord("a"), ord("z") + 1)), " ".join("0123456789")]
    letters = [" ".join("abcdefghijklmnopqrstuvwxyz0123456789")]
    return build_word_tokenizer(texts, extra_texts=[t for pair in TEMPLATES.values() for t in pair] + letters)


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
