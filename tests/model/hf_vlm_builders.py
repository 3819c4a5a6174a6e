"""Tiny random-initialised transformers VLMs saved as local directories, built offline.

Each builder writes what ``save_pretrained`` writes for a real checkpoint: ``config.json``,
``model.safetensors``, and the processor (tokenizer trained here with the ``tokenizers``
library, an image processor with small sizes, a chat template). Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ("the a an what which is are in on of image picture shape color colour red blue green yellow object objects "
         "answer question single word phrase using there how many yes no one two three four square circle triangle "
         "left right top bottom tallest bar chart text say does").split()

LLAVA_TEMPLATE = ("{% for m in messages %}{{ m['role'] }} : {% for c in m['content'] %}{% if c['type'] == 'image' %}"
                  "<image> {% else %}{{ c['text'] }}{% endif %}{% endfor %} {% endfor %}"
                  "{% if add_generation_prompt %}assistant :{% endif %}")
QWEN_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }} {% for c in m['content'] %}"
                 "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}"
                 "{% endif %}{% endfor %}<|im_end|> {% endfor %}{% if add_generation_prompt %}<|im_start|>assistant {% endif %}")


def tokenizer(specials: list[str]):
    """A word-level fast tokenizer (lower-cased), with ``specials`` as special tokens."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<s>", "</s>", *specials, "user", "assistant", ":", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", extra_special_tokens=specials)


def _clip(**kw):
    """A CLIP vision config: the tests' tiny one (32 px / 8: 16 tokens), any field overridable."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(**{"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
                               "num_attention_heads": 2, "image_size": 32, "patch_size": 8, **kw})


def _text(model_type: str, vocab: int, **kw):
    """A text config of ``model_type``: the tests' tiny 4-layer, 64-wide one, any field overridable."""
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, **{"vocab_size": vocab, "hidden_size": 64, "intermediate_size": 128,
                                               "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
                                               "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3, **kw})


def build_llava(out: Path, *, text_model: str = "llama", seed: int = 0) -> Path:
    """LLaVA-1.5 in miniature: CLIP-32px/8 (16 patch tokens, CLS dropped) + MLP + 4-layer Llama-64."""
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = tokenizer(["<image>"])
    ip = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, chat_template=LLAVA_TEMPLATE)
    cfg = LlavaConfig(vision_config=_clip(), text_config=_text(text_model, len(tok)), vision_feature_layer=-2,
                      image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default")
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration._from_config(cfg)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


PINPOINTS = [[32, 64], [64, 32], [64, 64]]


def build_llava_next(out: Path, *, seed: int = 0) -> Path:
    """LLaVA-NeXT in miniature: anyres tiles of 32 px over pinpoints 32x64/64x32/64x64, newline tokens."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessor, LlavaNextProcessor

    tok = tokenizer(["<image>"])
    ip = LlavaNextImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                 image_grid_pinpoints=PINPOINTS)
    proc = LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                              num_additional_image_tokens=1, chat_template=LLAVA_TEMPLATE)
    cfg = LlavaNextConfig(vision_config=_clip(), text_config=_text("llama", len(tok)), vision_feature_layer=-2,
                          image_token_id=tok.convert_tokens_to_ids("<image>"), image_grid_pinpoints=PINPOINTS,
                          vision_feature_select_strategy="default")
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration._from_config(cfg)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


def build_qwen2_vl(out: Path, *, seed: int = 0) -> Path:
    """Qwen2-VL in miniature: 2-block ViT (patch 14, 2x2 merge), 4-layer M-RoPE text model (sections 2/3/3)."""
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil, Qwen2VLProcessor,
                              Qwen2VLVideoProcessor)

    specials = ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>", "<|im_start|>", "<|im_end|>"]
    tok = tokenizer(specials)
    pixels = {"min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 16}
    proc = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessorPil(**pixels), tokenizer=tok,
                            video_processor=Qwen2VLVideoProcessor(**pixels), chat_template=QWEN_TEMPLATE)
    ids = {s: tok.convert_tokens_to_ids(s) for s in specials}
    text = _text("qwen2_vl_text", len(tok), rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                              "mrope_section": [2, 3, 3]})
    cfg = Qwen2VLConfig(text_config=text.to_dict(),
                        vision_config={"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "patch_size": 14,
                                       "spatial_merge_size": 2, "temporal_patch_size": 2},
                        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration._from_config(cfg)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


BUILDERS = {"llava": build_llava, "llava_next": build_llava_next, "qwen2_vl": build_qwen2_vl}


def images(n: int = 2, seed: int = 0, sizes: list[tuple[int, int]] | None = None):
    """``n`` random RGB PIL images (sizes (w, h), default 50x40)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = sizes or [(50, 40)] * n
    return [Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8")) for w, h in sizes]
