"""Model configuration: encoders, projectors, fusion, LLM — plain dataclasses with JSON round trip.

A ``ModelConfig`` fully describes a multi-encoder VLM; checkpoints store it as ``config.json``.
Every validation error names the offending field (``encoders[1].image_size``) and exits with
code 4 through :class:`~meteor_cli.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from meteor_cli.errors import ConfigError, InputNotFoundError

FUSIONS = ("post-projection", "pre-projection")
TEMPLATES = ("plain", "vicuna_v1", "llama3", "chatml", "eagle_llama3", "eagle_yi_chatml")
#: How an image becomes the model's square input: ``stretch`` (bilinear resize to the square, meteor's
#: default) or ``pad`` (LLaVA/EAGLE ``image_aspect_ratio: pad``: pasted at the centre of a square filled
#: with the first encoder's mean colour as integers, then a bicubic resize).
IMAGE_MODES = ("stretch", "pad")
#: Encoder families that cannot drop tokens inside (convolutions, SAM's windows): Stage 1 prunes
#: only their final map, so every pruning point is their last block (METHOD A2).
OUTPUT_PRUNED = ("convnext", "sam")


def default_prune_points(depth: int) -> list[int]:
    """After 0-based blocks round(L·j/3)−1, j = 1..3 (METHOD A2): 24 → [7, 15, 23], 18 → [5, 11, 17]."""
    return [max(0, round(depth * j / 3) - 1) for j in (1, 2, 3)]


@dataclass
class EncoderConfig:
    """One vision encoder.

    Attributes:
        name: unique name inside the model ("clip", "convnext", …); keys budgets and ranks.
        family: registered encoder family (``meteor list encoders``): vit, clip, siglip, eva02,
            convnext, pix2struct, sam.
        image_size: input side in pixels; must be a multiple of ``patch``.
        patch: patch size (transformers) or total stride (ConvNeXt: 32).
        depth: number of blocks (transformers) or stages (ConvNeXt).
        width: hidden width of the output tokens (SAM: the neck's output channels).
        heads: attention heads (transformers).
        mlp_ratio: MLP hidden width / width (EVA-02: the SwiGLU ratio, 8/3; Pix2Struct: d_ff / width).
        has_cls: whether a CLS token is prepended (kept out of budgets); read by vit and eva02 — CLIP
            always has one; ConvNeXt, SigLIP, Pix2Struct and SAM never do.
        dims: ConvNeXt stage widths; SAM: [transformer width, width] (None: the transformer is
            ``width`` wide). ``width`` must equal the last.
        stage_depths: ConvNeXt blocks per stage.
        weights: local weight file (timm) or directory (HF); None = random initialisation.
        prune_points: 0-based blocks after which Stage 1 prunes; default round(L·j/3)−1, and for
            the families in :data:`OUTPUT_PRUNED` three times the last block (their final map).
        mean, std: input normalisation.
        options: settings only one family reads (e.g. the window of EAGLE's ``det`` tower); see
            that adapter's docstring. None for the built-in families.
    """

    name: str
    family: str
    image_size: int
    patch: int
    depth: int
    width: int
    heads: int = 4
    mlp_ratio: float = 4.0
    has_cls: bool = True
    dims: list[int] | None = None
    stage_depths: list[int] | None = None
    weights: str | None = None
    prune_points: list[int] | None = None
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    options: dict[str, Any] | None = None

    def validate(self, where: str) -> None:
        if self.image_size % self.patch:
            raise ConfigError(f"{where}.image_size: {self.image_size} is not a multiple of the patch size {self.patch}",
                              f"use a multiple of {self.patch}")
        if self.depth < 1 or self.width < 1:
            raise ConfigError(f"{where}: depth and width must be positive")
        from meteor_cli.registry import ENCODERS

        output_only = self.family in OUTPUT_PRUNED or (
            self.family in ENCODERS and bool(getattr(ENCODERS.get(self.family), "output_pruned", False)))
        if self.prune_points is None:
            self.prune_points = [self.depth - 1] * 3 if output_only else default_prune_points(self.depth)
        if any(not 0 <= p < self.depth for p in self.prune_points) or sorted(self.prune_points) != self.prune_points:
            raise ConfigError(f"{where}.prune_points: {self.prune_points} must be ascending block indices in 0..{self.depth - 1}")
        if output_only and any(p != self.depth - 1 for p in self.prune_points):
            raise ConfigError(f"{where}.prune_points: {self.family} can only be pruned on its final map",
                              f"use [{self.depth - 1}] once per pruning point")
        if self.family == "convnext" and (not self.dims or self.dims[-1] != self.width):
            raise ConfigError(f"{where}.dims: ConvNeXt needs stage widths ending in width {self.width}")
        if self.family == "sam" and self.dims is not None and (len(self.dims) != 2 or self.dims[-1] != self.width):
            raise ConfigError(f"{where}.dims: SAM takes [transformer width, width {self.width}], got {self.dims}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch

    @property
    def num_tokens(self) -> int:
        """Patch tokens on the native grid (CLS excluded)."""
        return self.grid * self.grid


@dataclass
class LLMConfig:
    """The language model: a local Hugging Face directory, or an inline HF config (random init)."""

    path: str | None = None
    hf_config: dict[str, Any] | None = None
    attn_implementation: str = "sdpa"

    def validate(self) -> None:
        if (self.path is None) == (self.hf_config is None):
            raise ConfigError("llm: give exactly one of llm.path (a local HF directory) and llm.hf_config")
        if self.path is not None and not (Path(self.path) / "config.json").is_file():
            raise InputNotFoundError(f"llm.path: {self.path} has no config.json", "pass a local Hugging Face model directory")

    def resolved_hf_config(self) -> dict[str, Any]:
        if self.hf_config is not None:
            return dict(self.hf_config)
        return json.loads((Path(self.path) / "config.json").read_text())  # type: ignore[arg-type]


@dataclass
class ModelConfig:
    """A multi-encoder VLM: encoders → per-encoder projectors → fusion → LLM."""

    encoders: list[EncoderConfig]
    llm: LLMConfig
    fusion: str = "post-projection"
    template: str = "plain"
    #: Common grid for pre-projection fusion (EAGLE: 32).
    grid: int = 8
    projector_hidden: int | None = None
    #: How images are squared before the encoders (:data:`IMAGE_MODES`).
    image_mode: str = "stretch"

    def __post_init__(self) -> None:
        self.encoders = [e if isinstance(e, EncoderConfig) else EncoderConfig(**e) for e in self.encoders]
        if not isinstance(self.llm, LLMConfig):
            self.llm = LLMConfig(**self.llm)

    def validate(self) -> ModelConfig:
        if not self.encoders:
            raise ConfigError("encoders: a model needs at least one encoder")
        names = [e.name for e in self.encoders]
        if len(set(names)) != len(names):
            raise ConfigError(f"encoders: names must be unique, got {names}")
        from meteor_cli.registry import ENCODERS, load_builtins_and_plugins

        load_builtins_and_plugins()
        for i, e in enumerate(self.encoders):
            if e.family not in ENCODERS:
                raise ConfigError(f"encoders[{i}].family: {e.family!r} is not a registered encoder family",
                                  f"registered: {', '.join(ENCODERS.list())}")
            e.validate(f"encoders[{i}]")
        if self.fusion not in FUSIONS:
            raise ConfigError(f"fusion: {self.fusion!r}", f"choose from {', '.join(FUSIONS)}")
        if self.image_mode not in IMAGE_MODES:
            raise ConfigError(f"image_mode: {self.image_mode!r}", f"choose from {', '.join(IMAGE_MODES)}")
        if self.template not in TEMPLATES:
            raise ConfigError(f"template: {self.template!r}", f"choose from {', '.join(TEMPLATES)}")
        self.llm.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any, *, where: str = "model config") -> ModelConfig:
        """Build from parsed JSON, checking every field's JSON type first: a wrong one is a
        :class:`ConfigError` naming the file and the field (``encoders[1].image_size``)."""
        check_fields(cls, d, where, "")
        try:
            return cls(**d)
        except TypeError as exc:
            raise ConfigError(f"{where}: {exc}", "compare with `meteor inspect` of a working checkpoint") from None

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        from meteor_cli.artifacts import read_json_file

        p = Path(path)
        if not p.is_file() and not p.exists():
            raise InputNotFoundError(f"model config {p} does not exist", "pass a preset name, a checkpoint or a config JSON")
        data = read_json_file(p, "model config", fix="fix the JSON syntax (or pass a preset / checkpoint)")
        return cls.from_dict(data.get("model", data), where=str(p))


_JSON_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list",
               dict: "an object"}


def _type_ok(value: Any, tp: Any) -> bool:
    """Whether a parsed-JSON ``value`` fits the annotation ``tp`` (``true`` is not an integer)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin is list or tp is list:
        args = typing.get_args(tp)
        return isinstance(value, list) and (not args or all(_type_ok(v, args[0]) for v in value))
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    if dataclasses.is_dataclass(tp):
        return isinstance(value, (dict, tp))
    return True


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp) if a is not type(None)) + \
            (" (or null)" if type(None) in typing.get_args(tp) else "")
    if origin is list:
        args = typing.get_args(tp)
        return f"a list of {_describe(args[0]).removeprefix('an ').removeprefix('a ')}s" if args else "a list"
    if dataclasses.is_dataclass(tp):
        return "an object"
    return _JSON_NAMES.get(origin or tp, str(tp))


def check_fields(cls: type, data: Any, where: str, prefix: str) -> None:
    """Check the JSON types of ``data`` against the dataclass ``cls`` (recursing into encoders and
    llm); raise :class:`ConfigError` naming ``where`` and the dotted field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {prefix or 'the model configuration'} must be an object, got "
                          f"{type(data).__name__}", "compare with `meteor inspect` of a working checkpoint")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            raise ConfigError(f"{where}: {prefix}{key}: unknown field",
                              f"did you mean {close[0]!r}?" if close else f"fields: {', '.join(fields)}")
    for name, f in fields.items():
        path = f"{prefix}{name}"
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
                raise ConfigError(f"{where}: {path} is missing", "compare with `meteor inspect` of a working checkpoint")
            continue
        value, tp = data[name], hints[name]
        if cls is ModelConfig and name == "encoders":
            if not isinstance(value, list):
                raise ConfigError(f"{where}: encoders must be a list of encoder objects, got {type(value).__name__}")
            for i, e in enumerate(value):
                if not isinstance(e, EncoderConfig):
                    check_fields(EncoderConfig, e, where, f"encoders[{i}].")
            continue
        if cls is ModelConfig and name == "llm":
            if not isinstance(value, LLMConfig):
                check_fields(LLMConfig, value, where, "llm.")
            continue
        if not _type_ok(value, tp):
            raise ConfigError(f"{where}: {path} is {json.dumps(value) if _jsonable(value) else repr(value)}, "
                              f"must be {_describe(tp)}", "compare with `meteor inspect` of a working checkpoint")


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
    except (TypeError, ValueError):
        return False
    return True
