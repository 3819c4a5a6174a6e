"""Released EAGLE checkpoints (NVlabs/EAGLE, ``model_type: eagle_llama``) as meteor models.

``--model PATH/TO/Eagle-X5-7B`` works in every command through :data:`~meteor_cli.registry.MODEL_FORMATS`:
:func:`meteor_cli.model.checkpoint.read_config` / ``load_checkpoint`` ask each registered format
whether it recognises a directory; this one claims directories whose ``config.json`` has
``model_type: "eagle_llama"``.

What is read, and from where
    * ``config.json``: the tower string ``mm_vision_tower`` (``;``-separated, in channel-concat
      order; names EAGLE does not know are skipped, as EAGLE skips them), ``mm_hidden_size``
      (checked against the towers), ``image_aspect_ratio`` (``pad``) and the Llama keys.
    * ``model.safetensors.index.json`` (or a single ``model.safetensors``): the tensors and their
      files. Files the index does not name (``*_old.safetensors``) are never opened.
    * The safetensors *headers* (a few KB each, no tensor data): every tower's shapes — widths,
      depths, patch sizes, position tables, SAM's windows from its relative-position tables, the
      projector. So a config, a FLOP count or a meta-device model needs no weights.
    * Constants fixed by EAGLE's code rather than stored: the mixture input (1024), the shared grid
      (32), 64-wide attention heads, the det tower's 16×16 windows with global attention in blocks
      ``i % 3 == 2``, Pix2Struct's ``max_patches`` 2048. A scaled-down checkpoint (the tests') may
      override them in an optional ``config.json`` object ``meteor_eagle`` (keys :data:`DEFAULTS`);
      releases have none.
    * The tokenizer files; the conversation template follows from its special tokens
      (``<|eot_id|>`` → ``eagle_llama3``, ``<|im_start|>`` → ``eagle_yi_chatml``, else ``vicuna_v1``)
      unless ``meteor_eagle.template`` names one.

Loading
    The model is built with its parameters on the meta device (buffers real), then the weights
    stream in shard by shard, tensor by tensor, straight to the target device, each mapped by
    :func:`to_meteor` (inverse: :func:`to_release`). Before any tensor is read, every release
    tensor must map to a model parameter and every parameter must be covered, else an error names
    the tensors. At no point do two copies of the weights exist.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from meteor_cli.config import EncoderConfig, LLMConfig, ModelConfig
from meteor_cli.errors import ConfigError, InvalidInputError
from meteor_cli.registry import register_model_format

MODEL_TYPE = "eagle_llama"
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
TOWER_PREFIX = "model.vision_tower.vision_towers."
#: EAGLE's constants (multi_backbone_channel_concatenation_encoder.py and the tower files).
DEFAULTS: dict[str, Any] = {
    "image_size": 1024,       # the mixture's input side
    "grid": 32,               # the shared grid (32×32 = 1024 visual tokens)
    "head_dim": 64,           # every released tower: CLIP-L, EVA-02-L, Pix2Struct-L (SAM's is read)
    "det_window": 16,         # EVA-02 ViTDet window (tokens a side)
    "det_global_every": 3,    # global attention in blocks i % 3 == 2
    "det_rope_ref": 16,       # RoPE positions referred to the 16×16 pre-training grid
    "max_patches": 2048,      # Pix2Struct processor
    "template": None,         # None: from the tokenizer
}
#: Tower kinds EAGLE builds (load_vision_towers), with their meteor encoder family.
FAMILIES = {"clip": "eagle-clip", "convnext": "eagle-convnext", "sam": "eagle-sam", "det": "eagle-det",
            "pix2struct": "eagle-pix2struct"}
KNOWN_NAMES = {"clip-448": "clip", "convnext-1024": "convnext", "sam-1024": "sam", "det-1024": "det",
               "pix2struct-1024": "pix2struct"}
#: Release tensors that are deterministic buffers, recomputed rather than loaded (EVA's RoPE tables).
IGNORED = re.compile(r"(^|\.)(rope_win|rope_glb|rope)\.freqs_(cos|sin)$|(^|\.)position_ids$")

#: Per tower kind, the renames between a release's inner tensor names and the adapter's ``net``
#: names: ONE table, read both ways. Each rule ``(before, release, meteor, after)`` turns the
#: literal ``release`` into the literal ``meteor`` where it stands between the regular expressions
#: ``before`` and ``after`` (:func:`_rules` derives both directions; the back direction undoes
#: the rules in reverse order). ``""`` literals make pure prefixes (CLIP's ``vision_model.``,
#: SAM's ``vision_encoder.``).
RENAMES: dict[str, list[tuple[str, str, str, str]]] = {
    "clip": [("^", "vision_model.", "", "")],
    "convnext": [(r"^stages\.\d+\.blocks\.\d+", ".weight", ".gamma", "$")],  # EAGLE names the layer scale `weight`
    "sam": [("^", "", "vision_encoder.", "")],
    "det": [("", ".attn.q_bias", ".attn.q_proj.bias", "$"), ("", ".attn.v_bias", ".attn.v_proj.bias", "$"),
            ("", ".mlp.w1.", ".mlp.fc1_g.", ""), ("", ".mlp.w2.", ".mlp.fc1_x.", ""),
            ("", ".mlp.ffn_ln.", ".mlp.norm.", ""), ("", ".mlp.w3.", ".mlp.fc2.", "")],
    "pix2struct": [],
}


Rule = tuple["re.Pattern[str]", str]


def _rules(kind: str, to_meteor: bool) -> list[Rule]:
    """The compiled (pattern, literal) substitutions of :data:`RENAMES` for one direction."""
    out: list[Rule] = []
    for before, release, meteor, after in RENAMES[kind]:
        src, dst = (release, meteor) if to_meteor else (meteor, release)
        if not src and not before.startswith("^"):
            raise ValueError(f"RENAMES[{kind!r}]: an empty literal must be anchored at the start")
        out.append((re.compile(f"({before}){re.escape(src)}({after})"), dst))
    return out if to_meteor else out[::-1]


_FORWARD = {k: _rules(k, True) for k in RENAMES}
_BACKWARD = {k: _rules(k, False) for k in RENAMES}


def _apply(rules: list[Rule], name: str) -> str:
    for pat, dst in rules:
        name = pat.sub(lambda m, d=dst: m.group(1) + d + m.group(2), name)  # type: ignore[misc]
    return name


@dataclass
class Tower:
    index: int  # position in vision_towers (recognised names only, as EAGLE appends them)
    spec: str   # the tower string entry, e.g. "det-1024"
    kind: str   # clip, convnext, sam, det, pix2struct


@dataclass
class Release:
    """A parsed EAGLE checkpoint directory: its config, tensor → file map and tensor shapes."""

    directory: Path
    config: dict[str, Any]
    weight_map: dict[str, str]
    shapes: dict[str, list[int]]
    towers: list[Tower] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def tower_names(self) -> dict[int, str]:
        return {t.index: t.kind for t in self.towers}

    def tower_shapes(self, t: Tower) -> dict[str, list[int]]:
        pre = f"{TOWER_PREFIX}{t.index}.vision_tower."
        return {k[len(pre):]: v for k, v in self.shapes.items() if k.startswith(pre)}


# ------------------------------------------------------------------------------------------------
# Key mapping
# ------------------------------------------------------------------------------------------------


def to_meteor(key: str, towers: dict[int, str]) -> str | None:
    """The meteor parameter a release tensor loads into; None for ignored buffers (EVA's RoPE tables).

    Raises KeyError for a name outside EAGLE's layout."""
    if key.startswith(TOWER_PREFIX):
        m = re.match(r"(\d+)\.vision_tower\.(.+)$", key[len(TOWER_PREFIX):])
        if m is None or int(m.group(1)) not in towers:
            raise KeyError(key)
        inner = m.group(2)
        if IGNORED.search(inner):
            return None
        kind = towers[int(m.group(1))]
        return f"encoders.{kind}.net.{_apply(_FORWARD[kind], inner)}"
    m = re.match(r"model\.mm_projector\.([02])\.(weight|bias)$", key)
    if m:
        return f"projectors.fused.{m.group(1)}.{m.group(2)}"
    if key.startswith("model.mm_projector.") or key.startswith("model.vision_tower."):
        raise KeyError(key)
    if key.startswith("lm_head."):
        return "llm." + key
    if key.startswith("model."):
        return "llm." + key
    raise KeyError(key)


def to_release(name: str, towers: dict[int, str]) -> str:
    """The release tensor name of a meteor parameter (the inverse of :func:`to_meteor`)."""
    m = re.match(r"encoders\.([^.]+)\.net\.(.+)$", name)
    if m:
        index = {k: i for i, k in towers.items()}[m.group(1)]
        return f"{TOWER_PREFIX}{index}.vision_tower.{_apply(_BACKWARD[m.group(1)], m.group(2))}"
    m = re.match(r"projectors\.fused\.([02])\.(weight|bias)$", name)
    if m:
        return f"model.mm_projector.{m.group(1)}.{m.group(2)}"
    if name.startswith("llm."):
        return name[len("llm."):]
    raise KeyError(name)


# ------------------------------------------------------------------------------------------------
# Reading a directory (config + headers only)
# ------------------------------------------------------------------------------------------------


def is_eagle(directory: Path) -> bool:
    p = Path(directory) / "config.json"
    try:
        return p.is_file() and json.loads(p.read_text()).get("model_type") == MODEL_TYPE
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, OSError):
        return False


def read_release(directory: str | Path) -> Release:
    """Parse ``config.json``, the index and the (checked) safetensors headers of the files it names."""
    from meteor_cli.artifacts import read_json_file, read_safetensors_header
    from meteor_cli.model.checkpoint import shard_files

    d = Path(directory)
    cfg = read_json_file(d / "config.json", "config.json", fix="re-download the checkpoint's config.json")
    files = shard_files(d)  # the index's shards: present, and confined to the directory
    if (d / INDEX).is_file():
        weight_map = dict(read_json_file(d / INDEX, "shard index")["weight_map"])
    else:
        weight_map = {k: SINGLE for k in read_safetensors_header(d / SINGLE) if k != "__metadata__"}
    shapes: dict[str, list[int]] = {}
    for fname, path in files.items():
        header = read_safetensors_header(path)
        for k, v in header.items():
            if k != "__metadata__" and weight_map.get(k) == fname:
                shapes[k] = list(v["shape"])
    absent = [k for k in weight_map if k not in shapes]
    if absent:
        raise InvalidInputError(f"{d}: tensor {absent[0]!r} is listed in the index but not in {weight_map[absent[0]]} "
                                f"({len(absent)} in all)", "the checkpoint is incomplete or its index is stale")
    options = {**DEFAULTS, **(cfg.get("meteor_eagle") or {})}
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"{d / 'config.json'}: meteor_eagle.{unknown[0]} is not a setting",
                          f"known: {', '.join(DEFAULTS)}")
    rel = Release(d, cfg, weight_map, shapes, options=options)
    spec = cfg.get("mm_vision_tower")
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"{d / 'config.json'}: mm_vision_tower is missing", "an EAGLE config names its towers, "
                          "e.g. clip-448;convnext-1024;sam-1024;det-1024;pix2struct-1024")
    for name in spec.split(";"):
        kind = KNOWN_NAMES.get(name)
        if kind is None:  # EAGLE's load_vision_towers skips names it does not know
            warnings.warn(f"{d.name}: mm_vision_tower entry {name!r} is not a tower EAGLE builds; skipped as EAGLE "
                          f"skips it (known: {', '.join(KNOWN_NAMES)})", stacklevel=2)
            continue
        if any(t.kind == kind for t in rel.towers):
            raise ConfigError(f"{d / 'config.json'}: mm_vision_tower names {name!r} twice")
        rel.towers.append(Tower(len(rel.towers), name, kind))
    if not any(t.kind == "convnext" for t in rel.towers):
        raise ConfigError(f"{d / 'config.json'}: mm_vision_tower {spec!r} has no convnext-1024",
                          "EAGLE always uses ConvNeXt (its image processor is the mixture's)")
    return rel


def _need(shapes: dict[str, list[int]], key: str, where: str) -> list[int]:
    if key not in shapes:
        raise InvalidInputError(f"{where}: tensor {key!r} is missing", "the EAGLE checkpoint is incomplete")
    return shapes[key]


def _count(shapes: dict[str, list[int]], pattern: str) -> int:
    return len({m.group(1) for k in shapes if (m := re.match(pattern, k))})


def tower_config(rel: Release, t: Tower) -> EncoderConfig:
    """The :class:`EncoderConfig` of one tower, its shapes read from the checkpoint's headers."""
    from meteor_cli.model.eagle.towers import CLIP_MEAN, CLIP_STD, EaglePix2Struct

    s = rel.tower_shapes(t)
    where = f"{rel.directory.name} tower {t.index} ({t.spec})"
    o = rel.options
    hd = int(o["head_dim"])
    base = {"name": t.kind, "family": FAMILIES[t.kind], "has_cls": False, "mean": CLIP_MEAN, "std": CLIP_STD}
    size = int(o["image_size"])
    if t.kind == "clip":
        w, _, p, _ = _need(s, "vision_model.embeddings.patch_embedding.weight", where)
        n = _need(s, "vision_model.embeddings.position_embedding.weight", where)[0] - 1
        g = math.isqrt(n)
        mlp = _need(s, "vision_model.encoder.layers.0.mlp.fc1.weight", where)[0]
        return EncoderConfig(**base, image_size=g * p, patch=p, depth=_count(s, r"vision_model\.encoder\.layers\.(\d+)\."),
                             width=w, heads=w // hd, options={"mlp": mlp})
    if t.kind == "convnext":
        n_stages = _count(s, r"stages\.(\d+)\.")
        dims = [_need(s, f"stages.{i}.blocks.0.conv_dw.weight", where)[0] for i in range(n_stages)]
        depths = [_count(s, rf"stages\.{i}\.blocks\.(\d+)\.") for i in range(n_stages)]
        stem = _need(s, "stem.0.weight", where)[-1]
        head = s.get("head.fc.weight", [0])[0]
        return EncoderConfig(**base, image_size=size, patch=stem * 2 ** (n_stages - 1), depth=n_stages, width=dims[-1],
                             dims=dims, stage_depths=depths, options={"head_classes": head})
    if t.kind == "sam":
        d, _, p, _ = _need(s, "patch_embed.projection.weight", where)
        side = _need(s, "pos_embed", where)[1]
        depth = _count(s, r"layers\.(\d+)\.")
        spans = [(_need(s, f"layers.{i}.attn.rel_pos_h", where)[0] + 1) // 2 for i in range(depth)]
        head_dim = _need(s, "layers.0.attn.rel_pos_h", where)[1]
        windows = {x for x in spans if x != side}
        if len(windows) > 1:
            raise InvalidInputError(f"{where}: windowed layers have different windows {sorted(windows)}")
        neck = _need(s, "neck.conv1.weight", where)[0]
        return EncoderConfig(**base, image_size=side * p, patch=2 * p, depth=depth, width=4 * neck, heads=d // head_dim,
                             options={"mlp": _need(s, "layers.0.mlp.lin1.weight", where)[0], "transformer_width": d,
                                      "neck": neck, "window": windows.pop() if windows else side,
                                      "global_blocks": [i for i, x in enumerate(spans) if x == side]})
    if t.kind == "det":
        d, _, p, _ = _need(s, "patch_embed.proj.weight", where)
        depth = _count(s, r"blocks\.(\d+)\.")
        every = int(o["det_global_every"])
        return EncoderConfig(**base, image_size=size, patch=p, depth=depth, width=d, heads=d // hd,
                             options={"mlp": _need(s, "blocks.0.mlp.w1.weight", where)[0],
                                      "pretrain_grid": math.isqrt(_need(s, "pos_embed", where)[1] - 1),
                                      "window": int(o["det_window"]), "rope_ref": int(o["det_rope_ref"]),
                                      "global_blocks": [i for i in range(depth) if i % every == every - 1]})
    # pix2struct
    d, pp = _need(s, "embeddings.patch_projection.weight", where)
    p = math.isqrt(pp // 3)
    inner = _need(s, "encoder.layer.0.attention.query.weight", where)[0]
    rows = EaglePix2Struct.rows(size, p, int(o["max_patches"]))
    return EncoderConfig(**base, image_size=rows * p, patch=p, depth=_count(s, r"encoder\.layer\.(\d+)\."), width=d,
                         heads=inner // hd, options={"mlp": _need(s, "encoder.layer.0.mlp.wi_0.weight", where)[0],
                                                     "d_kv": hd, "max_patches": int(o["max_patches"]),
                                                     "seq_len": _need(s, "embeddings.row_embedder.weight", where)[0]})


def llm_config(rel: Release) -> dict[str, Any]:
    """The Llama config inside an EAGLE config (the ``mm_*`` and training keys dropped)."""
    from transformers import LlamaConfig

    keep = set(LlamaConfig().to_dict()) - {"architectures", "transformers_version", "_name_or_path", "torch_dtype",
                                           "dtype", "model_type"}
    hf = {k: v for k, v in rel.config.items() if k in keep}
    hf["model_type"] = "llama"
    return hf


def pick_template(rel: Release) -> str:
    """The conversation template: ``meteor_eagle.template``, else from the tokenizer's special tokens."""
    if rel.options.get("template"):
        return str(rel.options["template"])
    text = ""
    for name in ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "tokenizer.json"):
        p = rel.directory / name
        if p.is_file():
            text += p.read_text(errors="replace")
    if "<|eot_id|>" in text:
        return "eagle_llama3"
    if "<|im_start|>" in text:
        return "eagle_yi_chatml"
    return "vicuna_v1"


def model_config(rel: Release) -> ModelConfig:
    """meteor's :class:`ModelConfig` of a release: EAGLE's towers, pre-projection fusion on the shared grid."""
    encoders = [tower_config(rel, t) for t in rel.towers]
    where = rel.directory / "config.json"
    total = sum(e.width for e in encoders)
    declared = rel.config.get("mm_hidden_size")
    if declared is not None and int(declared) != total:
        raise ConfigError(f"{where}: mm_hidden_size {declared} but the towers {[t.spec for t in rel.towers]} give "
                          f"{total} channels ({' + '.join(str(e.width) for e in encoders)})",
                          "the tower string and the weights come from different models")
    proj = _need(rel.shapes, "model.mm_projector.0.weight", str(rel.directory))
    if proj[1] != total:
        raise InvalidInputError(f"{rel.directory}: model.mm_projector.0.weight takes {proj[1]} channels, the towers give "
                                f"{total}", "the tower string and the weights come from different models")
    if rel.config.get("mm_projector_type", "mlp2x_gelu") != "mlp2x_gelu":
        raise ConfigError(f"{where}: mm_projector_type {rel.config['mm_projector_type']!r}",
                          "meteor reads EAGLE checkpoints with the mlp2x_gelu projector (all releases)")
    aspect = rel.config.get("image_aspect_ratio", "pad")
    if aspect != "pad":
        raise ConfigError(f"{where}: image_aspect_ratio {aspect!r}", "meteor reproduces EAGLE's 'pad' (all releases)")
    return ModelConfig(encoders=encoders, llm=LLMConfig(hf_config=llm_config(rel)), fusion="pre-projection",
                       template=pick_template(rel), grid=int(rel.options["grid"]), image_mode="pad")


def weight_names(rel: Release) -> dict[str, str | None]:
    """Every release tensor → its meteor parameter (None: ignored buffer); an error names unmapped tensors."""
    towers = rel.tower_names
    out: dict[str, str | None] = {}
    bad = []
    for k in rel.weight_map:
        try:
            out[k] = to_meteor(k, towers)
        except KeyError:
            bad.append(k)
    if bad:
        raise InvalidInputError(f"{rel.directory}: {len(bad)} tensor(s) have no place in the model: {', '.join(bad[:5])}"
                                + (" …" if len(bad) > 5 else ""),
                                "the tower string (mm_vision_tower) and the weights disagree, or the checkpoint is "
                                "not an EAGLE release")
    return out


# ------------------------------------------------------------------------------------------------
# Building and loading
# ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Create every ``nn.Parameter`` on the meta device (no memory, no initialisation cost) while
    buffers stay real (rotary tables, normalisation constants) — the same trick as accelerate's
    ``init_empty_weights(include_buffers=False)``."""
    original = nn.Module.register_parameter

    def register(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(self, name, param)
        if param is not None and param.device.type != "meta":
            self._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def build_empty(rel: Release, tokenizer: Any = None) -> Any:
    """The meteor model of a release with every parameter on the meta device (nothing read)."""
    from meteor_cli.model.vlm import MultiEncoderVLM

    with parameters_on_meta():
        return MultiEncoderVLM(model_config(rel), tokenizer)


def _assign(model: nn.Module, name: str, value: torch.Tensor) -> None:
    mod_name, _, attr = name.rpartition(".")
    mod = model.get_submodule(mod_name)
    old = mod._parameters[attr]
    mod._parameters[attr] = nn.Parameter(value, requires_grad=old.requires_grad if old is not None else True)


def load_weights(vlm: nn.Module, rel: Release, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = torch.float32) -> None:
    """Stream the release's tensors into ``vlm`` (built by :func:`build_empty`), shard by shard.

    Checks before reading anything: every tensor maps to a parameter of the same shape, every
    parameter is covered (tied LM heads excepted). ``dtype`` None keeps the stored dtype."""
    from safetensors import safe_open

    names = weight_names(rel)
    params = dict(vlm.named_parameters(remove_duplicate=False))
    tied = bool(getattr(vlm.llm.config, "tie_word_embeddings", False))
    towers = rel.tower_names
    for k, n in names.items():
        if n is None:
            continue
        if n not in params:
            raise InvalidInputError(f"{rel.directory}: tensor {k!r} has no place in the model (as {n!r})",
                                    "the tower string (mm_vision_tower) and the weights disagree")
        if list(params[n].shape) != rel.shapes[k]:
            raise InvalidInputError(f"{rel.directory}: tensor {k!r} has shape {tuple(rel.shapes[k])}, the model built "
                                    f"from config.json needs {tuple(params[n].shape)}",
                                    "config.json and the weights come from different models")
    covered = {n for n in names.values() if n is not None}
    missing = [to_release(n, towers) for n in params if n not in covered and not (tied and n == "llm.lm_head.weight")]
    if missing:
        raise InvalidInputError(f"{rel.directory}: {len(missing)} tensor(s) the model needs are not in the checkpoint: "
                                f"{', '.join(missing[:5])}" + (" …" if len(missing) > 5 else ""),
                                "the checkpoint is incomplete, or its tower string names a tower it has no weights for")
    for fname in sorted(set(rel.weight_map.values())):
        with safe_open(str(rel.directory / fname), framework="pt", device="cpu") as f:
            for k in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                if rel.weight_map.get(k) != fname or names.get(k) is None:
                    continue
                t = f.get_tensor(k)
                _assign(vlm, names[k], t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point()
                                                else t.dtype))
    if tied:
        vlm.llm.tie_weights()
    vlm.to(device)


def load(directory: str | Path, device: str | torch.device = "cpu", *, dtype: torch.dtype | None = None,
         meta: bool = False) -> Any:
    """A ready meteor model of the EAGLE checkpoint in ``directory``.

    ``dtype`` None: float32 on the CPU, the stored dtype (fp16/bf16) on an accelerator. ``meta``:
    return the model with its parameters on the meta device, reading no weight file."""
    from transformers import AutoTokenizer

    from transformers import LlamaConfig

    rel = read_release(directory)
    # the Llama config spares AutoTokenizer from reading config.json (model_type eagle_llama is unknown to transformers)
    tok = AutoTokenizer.from_pretrained(str(directory), config=LlamaConfig(**llm_config(rel)))
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token or tok.eos_token
    vlm = build_empty(rel, tok)
    if meta:
        return vlm
    dev = torch.device(device)
    load_weights(vlm, rel, dev, dtype if dtype is not None else (torch.float32 if dev.type == "cpu" else None))
    return vlm.eval()


@register_model_format("eagle", description="NVlabs/EAGLE releases (config.json model_type eagle_llama): "
                       "Eagle-X4/X5-7B/13B, X4-8B-Plus, X5-34B-Plus")
class EagleFormat:
    """The registry entry: ``detect`` / ``read_config`` / ``load`` (see :data:`~meteor_cli.registry.MODEL_FORMATS`)."""

    @staticmethod
    def detect(directory: Path) -> bool:
        return is_eagle(directory)

    @staticmethod
    def read_config(directory: Path) -> ModelConfig:
        return model_config(read_release(directory))

    @staticmethod
    def load(directory: Path, device: str | torch.device = "cpu") -> Any:
        return load(directory, device)

    @staticmethod
    def describe(directory: Path) -> dict[str, Any]:
        """What ``meteor inspect DIR`` shows: towers, shapes, files used and ignored (headers only)."""
        rel = read_release(directory)
        cfg = model_config(rel).validate()
        files = sorted(p.name for p in Path(directory).iterdir() if p.suffix == ".safetensors")
        used = sorted(set(rel.weight_map.values()))
        n_params = sum(math.prod(s) for k, s in rel.shapes.items() if not IGNORED.search(k))
        return {"model_format": "eagle", "mm_vision_tower": rel.config.get("mm_vision_tower"),
                "towers": [{"index": t.index, "name": t.spec, "family": e.family, "input": e.image_size,
                            "grid": e.grid, "width": e.width, "depth": e.depth}
                           for t, e in zip(rel.towers, cfg.encoders)],
                "visual_tokens": cfg.grid**2, "template": cfg.template, "n_parameters": n_params,
                "weight_files": used, "ignored_files": [f for f in files if f not in used]}
