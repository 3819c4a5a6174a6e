"""Tiny random EAGLE checkpoints written in the RELEASE layout, and EAGLE's forward as a reference.

The writer builds every tower from its upstream module (HF CLIP/SAM/Pix2Struct, timm ConvNeXt) or,
for the det tower, as the raw tensors of EVA-02's ViTDet, and names the tensors as an EAGLE
release does (``model.vision_tower.vision_towers.{i}.vision_tower.*`` with transformers-4 CLIP
names, ConvNeXt's ``weight`` layer scale, EVA's ``q_bias``/``w1``/``ffn_ln``, RoPE buffers),
independently of meteor's key mapping. Weights are stored in float16 in three shards with an
index, plus a stray ``*_old`` shard of garbage bytes and a stale ``index_old.json`` that a loader
must never open. Geometry: a 128-px mixture on a 4×4 shared grid (config.json ``meteor_eagle``).

:func:`reference_visual_tokens` is EAGLE's forward step by step (eagle/model/multimodal_encoder/*,
vision_models/eva_vit.py), written here from the same upstream modules and the stored tensors —
window attention by partitioning the map into windows, EVA's own RoPE formula, Pix2Struct through
``Pix2StructImageProcessor`` — so it shares no code with meteor's adapters.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

X5 = "clip-448;convnext-1024;sam-1024;det-1024;pix2struct-1024"
X4 = "clip-448;convnext-1024;det-1024;pix2struct-1024"
MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]
S, GRID = 128, 4  # mixture input and shared grid of the tiny checkpoints
OPTIONS = {"image_size": S, "grid": GRID, "head_dim": 16, "det_window": 4, "max_patches": 40}
WIDTH = {"clip": 32, "convnext": 32, "sam": 32, "det": 32, "pix2struct": 32}
LLM_HIDDEN = 64
DET = {"patch": 16, "depth": 3, "heads": 2, "pretrain": 5, "mlp": int(32 * 4 * 2 / 3), "window": 4}
WORDS = "what is shown in the image a red blue square circle yes no describe color of this picture".split()


def make_tokenizer(llama3: bool = False):
    """A word-level Llama tokenizer (``LlamaTokenizerFast``) built offline with ``tokenizers``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaTokenizerFast

    from meteor_cli.model.llm import TEMPLATES

    specials = ["<unk>", "<s>", "</s>"]
    if llama3:
        specials += ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]
    words: list[str] = []
    texts = [TEMPLATES["eagle_llama3" if llama3 else "vicuna_v1"][0], " ".join(WORDS)]
    for t in texts:
        for s_ in specials:
            t = t.replace(s_, " ")
        for w in pre_tokenizers.Whitespace().pre_tokenize_str(t.replace("{user}", " ")):
            if w[0] not in words:
                words.append(w[0])
    vocab = {w: i for i, w in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    bos, eos = ("<|begin_of_text|>", "<|eot_id|>") if llama3 else ("<s>", "</s>")
    out = LlamaTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token="<unk>", pad_token="<unk>",
                             add_bos_token=True, clean_up_tokenization_spaces=False)
    out.add_special_tokens({"additional_special_tokens": [t for t in specials if t not in ("<unk>", bos, eos)]})
    return out


def _clip(seed: int) -> dict[str, torch.Tensor]:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    m = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                         image_size=24, patch_size=8))
    return {"vision_model." + k: v for k, v in m.state_dict().items() if "position_ids" not in k}


def _convnext(seed: int) -> dict[str, torch.Tensor]:
    from timm.models.convnext import ConvNeXt

    torch.manual_seed(seed)
    m = ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), norm_eps=1e-5, num_classes=10)
    for p in m.parameters():  # timm initialises the layer scale at 1e-6: make every branch count
        if p.ndim == 1:
            p.data.normal_(0, 0.5)
    return {k.replace(".gamma", ".weight"): v for k, v in m.state_dict().items()}


def _sam(seed: int) -> dict[str, torch.Tensor]:
    from transformers import SamVisionConfig, SamVisionModel

    torch.manual_seed(seed)
    m = SamVisionModel(SamVisionConfig(hidden_size=32, output_channels=8, num_hidden_layers=2, num_attention_heads=2,
                                       mlp_dim=64, image_size=S, patch_size=16, window_size=4, global_attn_indexes=[1],
                                       initializer_range=0.02))
    for p in m.parameters():
        p.data.normal_(0, 0.1)  # SAM's own init leaves rel-pos tables and norms trivial
    sd = {k[len("vision_encoder."):]: v for k, v in m.state_dict().items()}
    return {k: v for k, v in sd.items() if not k.startswith(("neck.conv2", "neck.layer_norm2"))}


def _eva_rope(dim: int, pt: int, ft: int) -> tuple[torch.Tensor, torch.Tensor]:
    """EVA's VisionRotaryEmbeddingFast tables (ft², 2·dim): 'lang' frequencies, t = arange(ft)/ft·pt,
    each frequency repeated for an interleaved pair, rows then columns."""
    freqs = 1.0 / (10000 ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
    t = torch.arange(ft) / ft * pt
    f = torch.einsum("i,f->if", t, freqs).repeat_interleave(2, -1)  # (ft, dim)
    grid = torch.cat([f[:, None, :].expand(ft, ft, -1), f[None, :, :].expand(ft, ft, -1)], -1)
    return grid.cos().reshape(ft * ft, -1), grid.sin().reshape(ft * ft, -1)


def _det(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    D, mlp, P = 32, DET["mlp"], DET["pretrain"]

    def r(*shape: int, std: float = 0.1) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    sd = {"patch_embed.proj.weight": r(D, 3, 16, 16, std=0.02), "patch_embed.proj.bias": r(D),
          "pos_embed": r(1, P * P + 1, D)}
    hd = D // DET["heads"]
    for name, ft in (("rope_win", DET["window"]), ("rope_glb", S // 16)):
        cos, sin = _eva_rope(hd // 2, 16, ft)
        sd[f"{name}.freqs_cos"], sd[f"{name}.freqs_sin"] = cos, sin
    for i in range(DET["depth"]):
        b = f"blocks.{i}."
        sd |= {b + "norm1.weight": 1 + r(D), b + "norm1.bias": r(D), b + "norm2.weight": 1 + r(D), b + "norm2.bias": r(D),
               b + "attn.q_proj.weight": r(D, D, std=0.2), b + "attn.k_proj.weight": r(D, D, std=0.2),
               b + "attn.v_proj.weight": r(D, D, std=0.2), b + "attn.q_bias": r(D), b + "attn.v_bias": r(D),
               b + "attn.proj.weight": r(D, D, std=0.2), b + "attn.proj.bias": r(D),
               b + "mlp.w1.weight": r(mlp, D, std=0.2), b + "mlp.w1.bias": r(mlp),
               b + "mlp.w2.weight": r(mlp, D, std=0.2), b + "mlp.w2.bias": r(mlp),
               b + "mlp.ffn_ln.weight": 1 + r(mlp), b + "mlp.ffn_ln.bias": r(mlp),
               b + "mlp.w3.weight": r(D, mlp, std=0.2), b + "mlp.w3.bias": r(D)}
        rope = "rope_glb" if i % 3 == 2 else "rope_win"  # EVA's shared RoPE module, saved under every block too
        sd[b + "attn.rope.freqs_cos"], sd[b + "attn.rope.freqs_sin"] = (sd[f"{rope}.freqs_cos"].clone(),
                                                                          sd[f"{rope}.freqs_sin"].clone())
    return sd


def _pix2struct(seed: int) -> dict[str, torch.Tensor]:
    from transformers import Pix2StructVisionConfig, Pix2StructVisionModel

    torch.manual_seed(seed)
    m = Pix2StructVisionModel(Pix2StructVisionConfig(hidden_size=32, patch_embed_hidden_size=3 * 256, d_ff=48, d_kv=16,
                                                     num_hidden_layers=2, num_attention_heads=2, seq_len=64))
    for p in m.parameters():
        p.data.normal_(0, 0.1)
    return dict(m.state_dict())


BUILDERS = {"clip": _clip, "convnext": _convnext, "sam": _sam, "det": _det, "pix2struct": _pix2struct}


def release_tensors(towers: str, vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every tensor of a tiny release, named as EAGLE names them (float32, before storage)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    sd: dict[str, torch.Tensor] = {}
    kinds = [n.split("-")[0] for n in towers.split(";")]
    for i, kind in enumerate(kinds):
        for k, v in BUILDERS[kind](seed + i).items():
            sd[f"model.vision_tower.vision_towers.{i}.vision_tower.{k}"] = v
    total = sum(WIDTH[k] for k in kinds)
    g = torch.Generator().manual_seed(seed + 99)
    sd["model.mm_projector.0.weight"] = torch.randn(LLM_HIDDEN, total, generator=g) * 0.1
    sd["model.mm_projector.0.bias"] = torch.randn(LLM_HIDDEN, generator=g) * 0.1
    sd["model.mm_projector.2.weight"] = torch.randn(LLM_HIDDEN, LLM_HIDDEN, generator=g) * 0.1
    sd["model.mm_projector.2.bias"] = torch.randn(LLM_HIDDEN, generator=g) * 0.1
    torch.manual_seed(seed + 7)
    llm = LlamaForCausalLM(LlamaConfig(**llama_keys(vocab)))
    sd |= {k: v for k, v in llm.state_dict().items()}
    return {k: v.contiguous() for k, v in sd.items()}


def llama_keys(vocab: int) -> dict[str, Any]:
    return {"vocab_size": vocab, "hidden_size": LLM_HIDDEN, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 512, "rms_norm_eps": 1e-5,
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "tie_word_embeddings": False}


def write_release(directory: Path, towers: str = X5, *, llama3: bool = False, seed: int = 0,
                  drop: str | None = None, rename: tuple[str, str] | None = None) -> Path:
    """A tiny EAGLE checkpoint in the release layout; ``drop``/``rename`` damage one tensor name."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(llama3)
    tok.save_pretrained(directory)
    sd = release_tensors(towers, len(tok), seed)
    kinds = [n.split("-")[0] for n in towers.split(";")]
    config = {"architectures": ["EagleLlamaForCausalLM"], "model_type": "eagle_llama", **llama_keys(len(tok)),
              "mm_vision_tower": towers, "mm_hidden_size": sum(WIDTH[k] for k in kinds), "mm_projector_type": "mlp2x_gelu",
              "mm_vision_select_layer": -2, "image_aspect_ratio": "pad", "mm_use_im_start_end": False,
              "mm_use_im_patch_token": False, "torch_dtype": "float16", "meteor_eagle": OPTIONS}
    if llama3:
        config |= {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    if drop:
        sd.pop(drop)
    if rename:
        sd[rename[1]] = sd.pop(rename[0])
    names = list(sd)
    shards = [names[i::3] for i in range(3)]
    weight_map = {}
    for j, part in enumerate(shards, 1):
        fname = f"model-{j:05d}-of-00003.safetensors"
        save_file({k: sd[k].half() for k in part}, str(directory / fname), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(part, fname)
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (directory / "model-00001-of-00003_old.safetensors").write_bytes(b"\x07" * 64)  # must never be opened
    (directory / "model.safetensors.index_old.json").write_text(json.dumps(
        {"weight_map": {"model.bogus": "model-00001-of-00003_old.safetensors"}}))
    return directory


def stored(directory: Path) -> dict[str, torch.Tensor]:
    """The tensors the index names, as stored, in float32."""
    from safetensors.torch import load_file

    wm = json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"]
    out: dict[str, torch.Tensor] = {}
    for f in sorted(set(wm.values())):
        out |= {k: v.float() for k, v in load_file(str(directory / f)).items()}
    return out


# ------------------------------------------------------------------------------------------------
# EAGLE's forward, step by step
# ------------------------------------------------------------------------------------------------


def eagle_pixels(image: Any) -> torch.Tensor:
    """process_images with image_aspect_ratio 'pad': expand2square with the mean colour, then the
    ConvNeXt tower's CLIPImageProcessor (size = crop = the mixture input, bicubic). transformers 5's
    PIL-backed processors are the transformers-4 ones EAGLE ran (the default torchvision ones differ:
    another bicubic kernel, and Pix2Struct's standardisation with the unbiased std)."""
    from PIL import Image
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as CLIPImageProcessor

    w, h = image.size
    side = max(w, h)
    square = Image.new(image.mode, (side, side), tuple(int(x * 255) for x in MEAN))
    square.paste(image, ((side - w) // 2, (side - h) // 2))
    proc = CLIPImageProcessor(size=S, crop_size={"height": S, "width": S}, resample=3, image_mean=MEAN, image_std=STD,
                              do_center_crop=True, do_normalize=True, do_resize=True)
    return proc(images=square, return_tensors="pt")["pixel_values"]


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size:
        return x
    return F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=True)


def _tower(sd: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    pre = f"model.vision_tower.vision_towers.{i}.vision_tower."
    return {k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}


def ref_clip(t: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    m = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                         image_size=24, patch_size=8, attn_implementation="eager")).eval()
    m.load_state_dict({k[len("vision_model."):]: v for k, v in t.items()}, strict=True)
    x = _resize(x, 24)  # clip-448 runs at 336 in releases: the position table's size
    h = m.embeddings(x)
    h = m.pre_layrnorm(h[:, 1:])  # hr_clip_encoder: CLS dropped before pre_layrnorm
    for layer in m.encoder.layers:
        h = layer(h, None)
        h = h[0] if isinstance(h, tuple) else h
    b, n, c = h.shape
    return h.transpose(1, 2).reshape(b, c, 3, 3)


def ref_convnext(t: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    from timm.models.convnext import ConvNeXt

    m = ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), norm_eps=1e-5, num_classes=10).eval()
    m.load_state_dict({k.replace("blocks.0.weight", "blocks.0.gamma"): v for k, v in t.items()}, strict=True)
    h = m.stem(x)
    for stage in m.stages:
        h = stage(h)
    return h


def ref_sam(t: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    from transformers import SamVisionConfig, SamVisionModel

    m = SamVisionModel(SamVisionConfig(hidden_size=32, output_channels=8, num_hidden_layers=2, num_attention_heads=2,
                                       mlp_dim=64, image_size=S, patch_size=16, window_size=4,
                                       global_attn_indexes=[1])).eval()
    enc = m.vision_encoder
    enc.neck.conv2, enc.neck.layer_norm2 = nn.Identity(), nn.Identity()
    enc.load_state_dict(t, strict=True)
    h = enc.patch_embed(x) + enc.pos_embed
    for layer in enc.layers:
        h = layer(h)
        h = h[0] if isinstance(h, tuple) else h
    h = enc.neck.conv1(h.permute(0, 3, 1, 2))
    u = h.mean(1, keepdim=True)  # ShortSamVisionNeck's channels-first LayerNorm (eps 1e-6)
    h = (h - u) / torch.sqrt((h - u).pow(2).mean(1, keepdim=True) + 1e-6)
    h = t["neck.layer_norm1.weight"][:, None, None] * h + t["neck.layer_norm1.bias"][:, None, None]
    return F.pixel_unshuffle(h, 2)


def _eva_rotate(x: torch.Tensor) -> torch.Tensor:
    x = x.reshape(*x.shape[:-1], -1, 2)
    return torch.stack((-x[..., 1], x[..., 0]), -1).flatten(-2)


def ref_det(t: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """EVAViT.forward with window_block_indexes = blocks i % 3 != 2, window 4 (tiny), xattn False."""
    D, H, w = 32, DET["heads"], DET["window"]
    hd = D // H
    h = F.conv2d(x, t["patch_embed.proj.weight"], t["patch_embed.proj.bias"], stride=16).permute(0, 2, 3, 1)
    B, G = h.shape[0], h.shape[1]
    P = DET["pretrain"]
    pos = F.interpolate(t["pos_embed"][:, 1:].reshape(1, P, P, D).permute(0, 3, 1, 2), size=(G, G), mode="bicubic",
                        align_corners=False).permute(0, 2, 3, 1)
    h = h + pos
    rope_win, rope_glb = _eva_rope(hd // 2, 16, w), _eva_rope(hd // 2, 16, G)
    for i in range(DET["depth"]):
        b = f"blocks.{i}."
        windowed = i % 3 != 2
        short = h
        y = F.layer_norm(h, (D,), t[b + "norm1.weight"], t[b + "norm1.bias"], 1e-6)
        if windowed:  # window_partition (G is a multiple of w: no padding)
            y = y.reshape(B, G // w, w, G // w, w, D).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, D)
        else:
            y = y.reshape(B, G * G, D)
        n = y.shape[1]
        q = F.linear(y, t[b + "attn.q_proj.weight"], t[b + "attn.q_bias"]).reshape(-1, n, H, hd).permute(0, 2, 1, 3)
        k = F.linear(y, t[b + "attn.k_proj.weight"]).reshape(-1, n, H, hd).permute(0, 2, 1, 3)
        v = F.linear(y, t[b + "attn.v_proj.weight"], t[b + "attn.v_bias"]).reshape(-1, n, H, hd).permute(0, 2, 1, 3)
        cos, sin = rope_win if windowed else rope_glb
        q, k = q * cos + _eva_rotate(q) * sin, k * cos + _eva_rotate(k) * sin
        a = ((q * hd**-0.5) @ k.transpose(-2, -1)).softmax(-1)
        y = F.linear((a @ v).transpose(1, 2).reshape(-1, n, D), t[b + "attn.proj.weight"], t[b + "attn.proj.bias"])
        if windowed:  # window_unpartition
            y = y.reshape(B, G // w, G // w, w, w, D).permute(0, 1, 3, 2, 4, 5).reshape(B, G, G, D)
        else:
            y = y.reshape(B, G, G, D)
        h = short + y
        z = F.layer_norm(h, (D,), t[b + "norm2.weight"], t[b + "norm2.bias"], 1e-6)
        hidden = F.silu(F.linear(z, t[b + "mlp.w1.weight"], t[b + "mlp.w1.bias"])) * \
            F.linear(z, t[b + "mlp.w2.weight"], t[b + "mlp.w2.bias"])
        hidden = F.layer_norm(hidden, (hidden.shape[-1],), t[b + "mlp.ffn_ln.weight"], t[b + "mlp.ffn_ln.bias"], 1e-6)
        h = h + F.linear(hidden, t[b + "mlp.w3.weight"], t[b + "mlp.w3.bias"])
    return h.permute(0, 3, 1, 2)


def ref_pix2struct(t: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    from transformers import Pix2StructVisionConfig, Pix2StructVisionModel
    from transformers.models.pix2struct.image_processing_pil_pix2struct import \
        Pix2StructImageProcessorPil as Pix2StructImageProcessor

    m = Pix2StructVisionModel(Pix2StructVisionConfig(hidden_size=32, patch_embed_hidden_size=3 * 256, d_ff=48, d_kv=16,
                                                     num_hidden_layers=2, num_attention_heads=2, seq_len=64,
                                                     attn_implementation="eager")).eval()
    m.load_state_dict(t, strict=True)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    raw = (x * std + mean) * 255.0  # de_normalize
    proc = Pix2StructImageProcessor(is_vqa=False, max_patches=OPTIONS["max_patches"],
                                    patch_size={"height": 16, "width": 16})
    inputs = proc(images=[im.numpy() for im in raw.float()], return_tensors="pt", input_data_format="channels_first")
    h = m(flattened_patches=inputs["flattened_patches"], attention_mask=inputs["attention_mask"]).last_hidden_state
    rows = int(math.isqrt(int(inputs["attention_mask"][0].sum())))
    b, _, c = h.shape
    h = h[:, : rows * rows].transpose(1, 2).reshape(b, c, rows, rows)
    return F.interpolate(h.float(), size=(GRID, GRID), mode="bilinear", align_corners=True)


REFS = {"clip": ref_clip, "convnext": ref_convnext, "sam": ref_sam, "det": ref_det, "pix2struct": ref_pix2struct}


@torch.no_grad()
def reference_visual_tokens(directory: Path, pixels: torch.Tensor) -> torch.Tensor:
    """MultiBackboneChannelConcatenationVisionTower.forward + mm_projector on the stored tensors."""
    sd = stored(directory)
    towers = json.loads((directory / "config.json").read_text())["mm_vision_tower"].split(";")
    feats = []
    for i, name in enumerate(towers):
        f = REFS[name.split("-")[0]](_tower(sd, i), pixels)
        if f.shape[-1] != GRID:
            f = F.interpolate(f.float(), size=(GRID, GRID), mode="bilinear", align_corners=True)
        feats.append(f.flatten(2).transpose(1, 2))
    x = torch.cat(feats, -1)
    x = F.gelu(F.linear(x, sd["model.mm_projector.0.weight"], sd["model.mm_projector.0.bias"]))
    return F.linear(x, sd["model.mm_projector.2.weight"], sd["model.mm_projector.2.bias"])
