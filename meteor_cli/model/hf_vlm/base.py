"""What every transformers VLM family shares: loading, chat prompts, visual spans, generation.

A family module (``llava.py``, ``llava_next.py``, ``qwen2_vl.py``) subclasses
:class:`HFVisionLanguageModel` and registers it under the ``model_type`` of its ``config.json``
(:func:`~meteor_cli.registry.register_model_family`). A new family is one new file.

The wrapper gives meteor's commands the interface of :class:`~meteor_cli.model.vlm.MultiEncoderVLM`
that they use (``llm``, ``tokenizer``, ``prepare``, ``generate(..., stage3=, details=)``), on top
of the unmodified transformers model and the checkpoint's own processor and chat template:

* prompts go through ``processor.apply_chat_template`` (an image entry, then the question with
  any ``<image>`` marker removed) and then the processor itself, which expands the image
  placeholder to one token per visual feature (LLaVA-NeXT: base tile + anyres tiles + one
  ``image_newline`` per row; Qwen2-VL: the merged patches between ``<|vision_start|>`` and
  ``<|vision_end|>``);
* batches are LEFT-padded (what generation and Stage 3 both need);
* the visual span of each sample is found from the image-token id in ``input_ids``
  (:meth:`HFVisionLanguageModel.visual_spans`): the positions whose id is
  ``config.image_token_id``, which must be one contiguous run per sample;
* Stage 3 (:class:`~meteor_cli.pruning.llm_pruner.LLMPruner`) wraps the layers of
  ``hf.get_decoder()``; the VLM's own forward builds the embeddings and (Qwen2-VL) the M-RoPE
  positions, which the pruner records and keeps.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from meteor_cli.errors import InvalidInputError, UsageError

IMAGE = "<image>"


@dataclass
class HFInputs:
    """A processed, left-padded batch and where its visual tokens are.

    ``features`` is what the processor returned (``input_ids``, ``attention_mask``,
    ``pixel_values``, ``image_sizes`` / ``image_grid_thw`` / ``mm_token_type_ids``…), on the model's device.
    """

    features: dict[str, torch.Tensor]
    attention_mask: torch.Tensor
    visual_start: list[int]
    visual_len: list[int]
    prompt_len: list[int]

    @property
    def input_ids(self) -> torch.Tensor:
        return self.features["input_ids"]


@dataclass
class VisionSummary:
    """Visual tokens per sample, in the shape ``meteor eval`` rows report (one encoder: the tower).

    ``inputs`` (the processed batch) and ``image_sizes`` ((W, H) per sample) let
    :class:`HFKeptRecorder` place each visual token on its image grid; ``kept_owners`` (set when
    Stages 1-2 pruned the tower) says where each token of a pruned span came from.
    """

    per_encoder: dict[str, list[int]] = field(default_factory=dict)
    inputs: HFInputs | None = field(default=None, repr=False)
    image_sizes: list[tuple[int, int]] = field(default_factory=list)
    kept_owners: list[TokenOwners] | None = field(default=None, repr=False)


#: Where each token of one sample's visual span sits: (grid name, raster position), or None for a
#: token on no grid (LLaVA-NeXT's ``image_newline``).
TokenOwners = list[tuple[str, int] | None]


@dataclass
class TokenLayout:
    """The grids of one sample's visual span and the owner of every span token.

    Attributes:
        grids: grid name → (rows, columns).
        owners: one entry per span token, in span order (:data:`TokenOwners`).
        crops: grid name → the part of the image the grid covers, as fractions (x0, y0, x1, y1)
            (LLaVA-1.5's centre crop); grids not named cover the whole image.
    """

    grids: dict[str, tuple[int, int]]
    owners: TokenOwners
    crops: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)


class HFKeptRecorder:
    """:func:`meteor_cli.visualize.recorder_for`'s recorder for a transformers VLM.

    Nothing is hooked: entering and leaving do nothing, and :meth:`traces` reads the batch kept on
    the :class:`VisionSummary` and the Stage-3 session's kept indices (chained layer after layer, as
    for meteor's models). Each sample's trace has an ``input`` panel (every visual token on its
    grid), after Stages 1-2 on the tower a ``stage2`` panel ("S1-2": the tokens the LLM got, from
    :attr:`VisionSummary.kept_owners`), and one panel per Stage-3 layer and grid.
    """

    def __init__(self, vlm: HFVisionLanguageModel) -> None:
        self.vlm = vlm

    def __enter__(self) -> HFKeptRecorder:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def traces(self, vis: VisionSummary, sess: Any = None) -> list[Any]:
        """One :class:`~meteor_cli.visualize.KeptTrace` per sample of the last ``generate``."""
        from meteor_cli.visualize import KeptTrace, Panel

        if vis.inputs is None:
            raise UsageError("no processed batch to trace", "call generate(..., details=True) inside the recorder")
        out = []
        for b, n in enumerate(vis.inputs.visual_len):
            lay = self.vlm.token_layout(vis.inputs, b, vis.image_sizes[b] if b < len(vis.image_sizes) else None)
            full = lay.owners
            if vis.kept_owners is not None:
                lay = TokenLayout(lay.grids, vis.kept_owners[b], lay.crops)
            if len(lay.owners) != n:
                raise InvalidInputError(f"sample {b}: the layout places {len(lay.owners)} visual tokens but the "
                                        f"span has {n}", "the processor and the model config disagree; re-save them together")
            names = list(lay.grids)

            def on(grid: str, idx: list[int], _owners: TokenOwners | None = None, _lay: TokenLayout = lay) -> list[int]:
                src = _lay.owners if _owners is None else _owners
                return sorted(o[1] for i in idx if (o := src[i]) is not None and o[0] == grid)

            current = list(range(n))
            panels = [Panel(g, "input", "input", on(g, list(range(len(full))), full)) for g in names]
            if vis.kept_owners is not None:
                panels += [Panel(g, "stage2", "S1-2", on(g, current)) for g in names]
            for layer in sorted(sess.kept) if sess is not None and sess.kept else []:
                current = [current[int(i)] for i in sess.kept[layer][b].tolist()]
                panels += [Panel(g, f"stage3/{layer}", f"S3 L{layer}", on(g, current), int(layer)) for g in names]
            out.append(KeptTrace(dict(lay.grids), panels, crops=dict(lay.crops)))
        return out


class HFVisionLanguageModel(nn.Module):
    """A transformers VLM with one vision tower, behind meteor's model interface.

    Subclasses set :attr:`hf_class` (the transformers class name) and register themselves with
    ``@register_model_family(<config model_type>)``.
    """

    #: The transformers class this family loads (``LlavaForConditionalGeneration``…).
    hf_class: ClassVar[str] = ""
    #: Name of the one encoder in reports (``per_encoder``), ranks and allocations.
    tower: ClassVar[str] = "vision"
    #: Why Stage 1 cannot run on this family's tower (None where it can: :attr:`encoders` is then the tower).
    stage1_missing: ClassVar[str | None] = "this family's vision tower has no Stage-1 adapter"

    def __init__(self, hf: nn.Module, processor: Any, source: str | Path | None = None) -> None:
        super().__init__()
        self.hf = hf
        self.processor = processor
        self.source = None if source is None else str(source)
        self.processor.tokenizer.padding_side = "left"
        #: Stage 1-2 hooks as on MultiEncoderVLM (``meteor_cli.eval.runner.install_pruning``): they run on
        #: the tower of families with a Stage-1 adapter (:attr:`encoders`; LLaVA-1.5, LLaVA-NeXT per tile).
        self.stage1: Any = None
        self.stage2: Any = None
        self._adapters: dict[str, Any] = {}  # a plain dict: the adapter wraps hf's tower, not a second copy

    # -- loading -----------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu", *,
                        attn_implementation: str | None = None) -> HFVisionLanguageModel:
        """Load the model and its processor (tokenizer, image processor, chat template) from a local directory."""
        import transformers
        from transformers import AutoProcessor

        d = Path(directory)
        model_cls = getattr(transformers, cls.hf_class)
        kw: dict[str, Any] = {"local_files_only": True}
        if attn_implementation is not None:
            kw["attn_implementation"] = attn_implementation
        try:
            processor = AutoProcessor.from_pretrained(d, local_files_only=True)
        except (OSError, ValueError, TypeError) as exc:
            raise InvalidInputError(f"{d}: cannot load the processor of this {cls.hf_class} checkpoint ({exc})",
                                    "the directory needs processor_config.json / preprocessor_config.json and the "
                                    "tokenizer files that `processor.save_pretrained(DIR)` writes") from None
        if not hasattr(processor, "tokenizer") or not hasattr(processor, "image_processor"):
            raise InvalidInputError(f"{d}: AutoProcessor loaded a {type(processor).__name__}, not a multimodal processor",
                                    "save the model's processor (not only its tokenizer) into the directory")
        hf = model_cls.from_pretrained(d, **kw).to(device).eval()
        return cls(hf, processor, d)

    # -- what commands read ------------------------------------------------------------------

    @property
    def llm(self) -> nn.Module:
        """The module Stage 3 attaches to: the whole VLM (its ``get_decoder()`` is the text model)."""
        return self.hf

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def text_config(self) -> Any:
        return self.hf.config.get_text_config()

    @property
    def image_token_id(self) -> int:
        return int(self.hf.config.image_token_id)

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @classmethod
    def build_meta(cls, directory: str | Path) -> nn.Module:
        """The transformers model of ``directory`` on the meta device: shapes only, no weights read."""
        import transformers
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(directory, local_files_only=True)
        with torch.device("meta"):
            return getattr(transformers, cls.hf_class)._from_config(cfg)

    @classmethod
    def describe(cls, directory: str | Path) -> dict[str, Any]:
        """What ``meteor inspect`` shows for a directory of this family (from its config; no weights loaded)."""
        hf = cls.build_meta(directory)
        t = hf.config.get_text_config()
        v = hf.config.vision_config
        d = Path(directory)
        template = (d / "chat_template.jinja").is_file() or (d / "chat_template.json").is_file() or \
            "chat_template" in (read_hf_config(d) or {}) or \
            "chat_template" in json.loads((d / "processor_config.json").read_text() or "{}") \
            if (d / "processor_config.json").is_file() else (d / "chat_template.jinja").is_file()
        return {"family": cls.__name__, "hf_class": cls.hf_class, "model_type": hf.config.model_type,
                "text_model": {"model_type": t.model_type, "layers": t.num_hidden_layers, "heads": t.num_attention_heads,
                               "kv_heads": getattr(t, "num_key_value_heads", None), "hidden": t.hidden_size},
                "vision_model": {"model_type": getattr(v, "model_type", None),
                                 "layers": getattr(v, "num_hidden_layers", getattr(v, "depth", None))},
                "image_token_id": int(hf.config.image_token_id),
                "parameters": sum(p.numel() for p in hf.parameters()),
                "chat_template": bool(template)}

    # -- counting (meteor flops; see meteor_cli.model.hf_vlm.flops) --------------------------

    @classmethod
    def default_image_size(cls, config: Any) -> tuple[int, int]:
        """The image size (W, H) ``meteor flops`` counts when ``--image-size`` is not given: the tower's tile."""
        side = int(config.vision_config.image_size)
        return side, side

    @classmethod
    def visual_geometry(cls, config: Any, image_processor: dict[str, Any], processor: dict[str, Any],
                        size: tuple[int, int]) -> Any:
        """The :class:`~meteor_cli.model.hf_vlm.flops.VisualGeometry` of one W×H image (from the
        model config and the saved processor settings; nothing is run)."""
        raise UsageError(f"meteor flops has no visual-token count for {cls.hf_class}",
                         "a family module implements visual_geometry() and vision_parts() to be counted")

    @classmethod
    def vision_parts(cls, hf: nn.Module) -> tuple[nn.Module, list[nn.Module], nn.Module, int]:
        """(patch embedding, tower blocks the model runs, projector, attention width) of a (meta) model."""
        raise UsageError(f"meteor flops has no vision-tower count for {cls.hf_class}",
                         "a family module implements visual_geometry() and vision_parts() to be counted")

    @classmethod
    def pruned_tokens(cls, geo: Any, kept: int, native: int) -> tuple[float, float, dict[str, Any]]:
        """(visual tokens into the LLM, features through the projector, detail) when every tower pass
        lets ``kept`` of its ``native`` patch tokens out of Stages 1-2 (``meteor flops --allocation``):
        here one pass, its kept tokens plus the CLS feature under ``full``."""
        n = kept + (geo.tokens - native)
        return n, n, {}

    # -- Stage 1 on the tower (LLaVA-1.5, LLaVA-NeXT per tile: meteor_cli.model.hf_vlm.tower;
    #    Qwen2-VL: meteor_cli.model.hf_vlm.qwen2_vl_tower) --

    @classmethod
    def stage1_config(cls, config: Any, image_processor: dict[str, Any]) -> Any:
        """The :class:`~meteor_cli.config.EncoderConfig` of the tower as Stage 1, ``allocate``,
        ``eval --method`` and ``flops --allocation`` see it (here LLaVA's CLIP tower)."""
        from meteor_cli.model.hf_vlm.tower import tower_config

        return tower_config(cls.tower, config, image_processor)

    @classmethod
    def stage1_tower_tokens(cls, geo: Any, tcfg: Any) -> tuple[int, int, int]:
        """How one tower pass of an image of geometry ``geo`` counts for ``flops --allocation``:
        (budget tokens it starts with, tower tokens per budget token, tower tokens never pruned):
        here the patch tokens, one each, plus the CLS token."""
        return tcfg.num_tokens, 1, 1

    @classmethod
    def require_stage1(cls, what: str = "Stage 1") -> None:
        """A :class:`UsageError` naming why ``what`` cannot run on this family (nothing where it can)."""
        if cls.stage1_missing is not None:
            raise UsageError(f"{what} is not available for {cls.hf_class}: {cls.stage1_missing}",
                             "prune this model in the LLM with --prune-llm (Stage 3); Stage 1 runs on "
                             "LlavaForConditionalGeneration, LlavaNextForConditionalGeneration and "
                             "Qwen2VLForConditionalGeneration directories")

    @property
    def encoders(self) -> dict[str, Any]:
        """``{tower name: encoder adapter}`` as meteor's Stage 1 and rank estimation see the tower:
        the model's own CLIP ``vision_tower`` as one meteor encoder
        (:class:`~meteor_cli.model.hf_vlm.tower.HFCLIPTower`) named :attr:`tower`, up to
        ``vision_feature_layer``, pruned at ``round(L·j/3)−1``. Empty for families without a
        Stage-1 adapter (:attr:`stage1_missing`)."""
        if self.stage1_missing is not None:
            return {}
        if self.tower not in self._adapters:
            from meteor_cli.model.hf_vlm.llava import saved_image_processor
            from meteor_cli.model.hf_vlm.tower import HFCLIPTower, tower_config

            cfg = tower_config(self.tower, self.hf.config, saved_image_processor(self.processor))
            self._adapters[self.tower] = HFCLIPTower(cfg, self.hf.model.vision_tower)
        return dict(self._adapters)

    def image_tensor(self, image: Any) -> torch.Tensor:
        """One PIL image → ``pixel_values`` as the model's processor makes them (rank estimation):
        (3, S, S) for LLaVA-1.5, (tiles, 3, S, S) for LLaVA-NeXT (each tile one sample)."""
        self.require_stage1("rank-estimate")
        return self.processor.image_processor(images=[image], return_tensors="pt")["pixel_values"][0]

    def tower_pixels(self, features: dict[str, Any]) -> torch.Tensor:
        """The (N, 3, S, S) crops the tower runs on for a processed batch (one per image here;
        LLaVA-NeXT: every image's tiles, concatenated)."""
        return features["pixel_values"]

    def pack_kept(self, z: torch.Tensor, pos: torch.Tensor,
                  features: dict[str, Any]) -> tuple[list[torch.Tensor], list[TokenOwners]]:
        """Each sample's features for the LLM from the kept, projected tower tokens ``z`` (N, k, d)
        and their grid positions ``pos`` (N, k), one row per :meth:`tower_pixels` crop (here one per
        sample, in the order Stage 1 left them; LLaVA-NeXT rebuilds its anyres packing), and where
        each feature sits (:data:`TokenOwners`, on the grids of :meth:`token_layout`)."""
        extra = int(z.shape[1]) - int(pos.shape[1])  # the CLS feature first under `full`: on no grid
        owners: list[TokenOwners] = [[None] * extra + [(self.tower, int(p)) for p in row] for row in pos.tolist()]
        return list(z.unbind(0)), owners

    def prune_vision(self, features: dict[str, Any], starts: list[int],
                     lens: list[int]) -> tuple[dict[str, Any], list[int], list[int], list[TokenOwners]]:
        """Tower → Stage 1 → projector (→ Stage 2) on :meth:`tower_pixels`, packed per sample by
        :meth:`pack_kept`; then ``input_ids`` with one placeholder per kept feature and the
        features passed as ``mm_encoder_outputs`` (no ``pixel_values``) to the unmodified
        forward/generate: (features, span starts, span lengths, owners of the span tokens)."""
        self.require_stage1()
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        from meteor_cli.model.hf_vlm.tower import project_tower, rebuild_inputs

        adapter = self.encoders[self.tower]
        full = self.hf.config.vision_feature_select_strategy == "full"
        z, pos = project_tower(adapter, self.tower, self.tower_pixels(features), self.hf.model.multi_modal_projector,
                               full=full, stage1=self.stage1, stage2=self.stage2)
        feats, owners = self.pack_kept(z, pos, features)
        n = [int(f.shape[0]) for f in feats]
        rest = {k: v for k, v in features.items() if k != "pixel_values"}
        out, new_starts = rebuild_inputs(rest, starts, lens, n, self.image_token_id, int(self.tokenizer.pad_token_id or 0))
        out["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=feats)}
        return out, new_starts, n, owners

    # -- inputs ------------------------------------------------------------------------------

    def chat_text(self, prompt: str) -> str:
        """The templated prompt for one question: the model's chat template, an image, then the text."""
        template = getattr(self.processor, "chat_template", None)
        if not template:
            raise InvalidInputError(f"{self.source}: the processor has no chat template",
                                    "save one with the processor (chat_template.jinja) — meteor uses the model's own")
        question = prompt.replace(IMAGE, "").strip()
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def image_batch(self, images: Sequence[Any]) -> list[Any]:
        """Images as the processor takes them (PIL, any size: the processor resizes and tiles)."""
        return list(images)

    def visual_spans(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[list[int], list[int]]:
        """(start, length) of each sample's visual tokens, found from the image-token id."""
        starts, lens = [], []
        for b, row in enumerate(input_ids):
            pos = torch.nonzero((row == self.image_token_id) & attention_mask[b].bool(), as_tuple=False).flatten()
            if len(pos) == 0:
                raise UsageError(f"sample {b} has no image tokens (id {self.image_token_id})",
                                 "each question needs one image")
            if int(pos[-1] - pos[0]) + 1 != len(pos):
                raise UsageError(f"sample {b}: its image tokens are not one contiguous span (several images?)",
                                 "Stage 3 prunes one image per sample; ask about one image at a time")
            starts.append(int(pos[0]))
            lens.append(len(pos))
        return starts, lens

    def process(self, images: Sequence[Any], prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """The processor's batch (left-padded), on the model's device."""
        texts = [self.chat_text(p) for p in prompts]
        batch = self.processor(images=list(images), text=texts, return_tensors="pt", padding=True)
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def prepare(self, images: Sequence[Any], prompts: Sequence[str], answers: Sequence[str] | None = None,
                turns: Any = None) -> tuple[HFInputs, VisionSummary]:
        """Process a batch and locate its visual tokens (``answers``/``turns``: training only, not supported)."""
        if answers is not None or turns is not None:
            raise UsageError(f"training a {self.hf_class} is not supported by meteor",
                             "fine-tune with transformers, then evaluate/prune the saved directory here")
        feats = self.process(images, prompts)
        starts, lens = self.visual_spans(feats["input_ids"], feats["attention_mask"])
        owners = None
        if self.stage1 is not None or self.stage2 is not None:
            feats, starts, lens, owners = self.prune_vision(feats, starts, lens)
        L = feats["input_ids"].shape[1]
        inputs = HFInputs(feats, feats["attention_mask"], starts, lens, [L] * len(lens))
        sizes = [tuple(int(x) for x in im.size) for im in images if hasattr(im, "size") and not callable(im.size)]
        return inputs, VisionSummary({self.tower: list(lens)}, inputs, sizes, owners)  # type: ignore[arg-type]

    # -- where the visual tokens sit (meteor infer --visualize) ------------------------------

    def kept_recorder(self) -> HFKeptRecorder:
        """The recorder ``meteor infer --visualize`` uses (:func:`meteor_cli.visualize.recorder_for`)."""
        return HFKeptRecorder(self)

    def token_layout(self, inputs: HFInputs, b: int, image_size: tuple[int, int] | None) -> TokenLayout:
        """The grids of sample ``b``'s visual span (``image_size``: its original (W, H))."""
        raise UsageError(f"{self.hf_class} cannot place its visual tokens on an image grid",
                         "a family module implements token_layout() for --visualize")

    # -- running -----------------------------------------------------------------------------

    def prefill(self, inputs: HFInputs, **kwargs: Any) -> Any:
        """One forward over the processed batch (no generation); returns the model output."""
        return self.hf(**inputs.features, **kwargs)

    @torch.no_grad()
    def generate(self, images: Sequence[Any], prompts: Sequence[str], *, max_new_tokens: int = 16,
                 temperature: float = 0.0, stage3: Any = None, details: bool = False) -> Any:
        """Answers as text (greedy with ``temperature=0``), Stage 3 pruning once at prefill.

        With ``details=True`` returns ``(texts, inputs, vision_summary, stage3_session_or_None)``.
        """
        inputs, vis = self.prepare(images, prompts)
        out, sess = self.generate_ids(inputs, max_new_tokens=max_new_tokens, temperature=temperature, stage3=stage3)
        texts = [t.strip() for t in self.tokenizer.batch_decode(out[:, inputs.input_ids.shape[1]:],
                                                                skip_special_tokens=True)]
        return (texts, inputs, vis, sess) if details else texts

    def generate_ids(self, inputs: HFInputs, *, max_new_tokens: int = 16, temperature: float = 0.0,
                     stage3: Any = None) -> tuple[torch.Tensor, Any]:
        """``hf.generate`` on a processed batch: (prompt + generated ids, Stage-3 session or None)."""
        ctx = stage3.session(inputs.visual_start, inputs.visual_len, attention_mask=inputs.attention_mask) \
            if stage3 is not None else contextlib.nullcontext()
        kw: dict[str, Any] = {"do_sample": temperature > 0}
        if temperature > 0:
            kw["temperature"] = temperature
        tok = self.tokenizer
        # The image placeholder is never a valid answer token (a generated one would make the next
        # forward over prompt + answer expect another image): suppress it.
        with ctx as sess:
            out = self.hf.generate(**inputs.features, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                                   eos_token_id=tok.eos_token_id, suppress_tokens=[self.image_token_id], **kw)
        return out, sess


def read_hf_config(directory: str | Path) -> dict[str, Any] | None:
    """``config.json`` of a transformers model directory, or None when it is not one."""
    from meteor_cli.artifacts import read_json_file

    p = Path(directory) / "config.json"
    if not p.is_file():
        return None
    data = read_json_file(p, "config.json", expect=None, fix="check the model directory")
    if not isinstance(data, dict) or "format" in data:  # meteor's own checkpoints carry "format"
        return None
    return data


__all__ = ["HFInputs", "HFKeptRecorder", "HFVisionLanguageModel", "TokenLayout", "TokenOwners", "VisionSummary",
           "read_hf_config"]
