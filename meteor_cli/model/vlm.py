"""The multi-encoder VLM: encoders → (Stage 1) → per-encoder projectors → (Stage 2) → LLM (Stage 3).

Pruning stages plug in as hooks; the model does not know which policy runs:

* ``stage1(name, j, state, adapter) -> idx (B, k) | (idx, x (B, k, D)) | None`` at each encoder
  pruning point j: the kept tokens (sorted indices), with their new values when a policy merges;
* ``stage2(z (B, N, d), encoder_ids (N,), pos (B, N)) -> idx (B, K) | (idx, z (B, K, d)) | None`` on the
  fused tokens: the kept tokens, with new values when a policy pools (``pool``); a hook whose
  ``takes_sample_ids`` is true also gets ``sample_ids=`` one content key per image (:func:`sample_keys`);
* Stage 3 is an :class:`~meteor_cli.pruning.llm_pruner.LLMPruner` around the LLM's layers,
  opened per batch with the visual spans :meth:`MultiEncoderVLM.prepare` returns.

Fusion ``post-projection`` (METEOR): one ``mlp2x_gelu`` projector per encoder, tokens
concatenated along the token axis, grouped by encoder. ``pre-projection`` (EAGLE baseline, and
released EAGLE checkpoints): every final map resampled to a common grid, channels concatenated,
one projector; Stages 1–2 then act on the shared grid positions (:meth:`MultiEncoderVLM._pre_projection`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from meteor_cli.config import ModelConfig
from meteor_cli.model.encoders import build_encoder
from meteor_cli.model.llm import LLMInputs, build_inputs, build_llm


def mlp2x_gelu(d_in: int, d_out: int) -> nn.Sequential:
    """LLaVA/EAGLE's projector: Linear → GELU → Linear."""
    return nn.Sequential(nn.Linear(d_in, d_out), nn.GELU(), nn.Linear(d_out, d_out))


@dataclass
class VisualTokens:
    z: torch.Tensor  # (B, N, d) LLM-space visual tokens
    encoder_ids: torch.Tensor  # (N,) which encoder each token came from
    pos: torch.Tensor  # (B, N) grid position of each token in its encoder
    per_encoder: dict[str, list[int]] = field(default_factory=dict)  # tokens per encoder, per sample


def sample_keys(images: torch.Tensor) -> list[int]:
    """One 62-bit key per image of a (B, ...) batch, from its bytes: what a seeded per-sample policy
    (``random``) draws from, so a sample gets the same picks whatever batch or shard it is in."""
    import hashlib

    flat = images.detach().to("cpu").contiguous()
    return [int.from_bytes(hashlib.blake2b(flat[b].numpy().tobytes(), digest_size=8).digest(), "little") >> 2
            for b in range(flat.shape[0])]


def apply_stage2(hook: Callable[..., Any], z: torch.Tensor, encoder_ids: torch.Tensor,
                 pos: torch.Tensor, keys: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run a Stage-2 hook on the fused tokens ``z`` (B, N, d): ``(z, encoder ids, pos)`` after it —
    the ids (B, K) of the kept tokens when it pruned, the (N,) ids unchanged when it returned None.
    ``keys`` (:func:`sample_keys` of the images) go to a hook whose ``takes_sample_ids`` is true."""
    if keys is not None and getattr(hook, "takes_sample_ids", False):
        kept = hook(z, encoder_ids, pos, sample_ids=keys)
    else:
        kept = hook(z, encoder_ids, pos)
    if kept is None:
        return z, encoder_ids, pos
    idx, values = kept if isinstance(kept, tuple) else (kept, None)
    z = values if values is not None else torch.gather(z, 1, idx.unsqueeze(-1).expand(-1, -1, z.shape[-1]))
    return z, encoder_ids[idx], torch.gather(pos, 1, idx)


class MultiEncoderVLM(nn.Module):
    def __init__(self, cfg: ModelConfig, tokenizer: Any = None) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.encoders = nn.ModuleDict({e.name: build_encoder(e) for e in cfg.encoders})
        self.llm = build_llm(cfg.llm)
        d = self.llm.config.hidden_size
        if cfg.fusion == "post-projection":
            self.projectors = nn.ModuleDict({e.name: mlp2x_gelu(e.width, d) for e in cfg.encoders})
        else:
            self.projectors = nn.ModuleDict({"fused": mlp2x_gelu(sum(e.width for e in cfg.encoders), d)})
        self.stage1: Callable[..., torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None] | None = None
        self.stage2: Callable[..., torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None] | None = None

    # -- vision --------------------------------------------------------------------------------

    @property
    def image_size(self) -> int:
        """Side of the square image the model takes (the largest encoder input)."""
        return max(e.cfg.image_size for e in self.encoders.values())

    def image_tensor(self, image: Any) -> torch.Tensor:
        """A PIL image → (3, S, S) floats in [0, 1], squared as ``cfg.image_mode`` says (the input of :meth:`encode_images`)."""
        from meteor_cli.pruning.estimate import image_tensor

        return image_tensor(image, self.image_size, mode=self.cfg.image_mode, fill=self.cfg.encoders[0].mean)

    def run_encoder(self, name: str, images: torch.Tensor):
        """Encoder ``name`` on (B, 3, H, W) images, Stage 1 at its pruning points (:meth:`EncoderAdapter.run_pruned`)."""
        adapter = self.encoders[name]
        return adapter.finalize(adapter.run_pruned(adapter.embed(adapter.preprocess(images)), name, self.stage1))

    def encode_images(self, images: torch.Tensor) -> VisualTokens:
        """(B, 3, H, W) floats in [0, 1] → visual tokens in the LLM's space."""
        states = {name: self.run_encoder(name, images) for name in self.encoders}
        B = images.shape[0]
        if self.cfg.fusion == "pre-projection":
            return self._pre_projection(states, B, sample_keys(images) if self.stage2 is not None else None)
        zs, ids, pos = [], [], []
        for i, (name, s) in enumerate(states.items()):
            zs.append(self.projectors[name](s.x))
            ids.append(torch.full((s.x.shape[1],), i, dtype=torch.long, device=s.x.device))
            pos.append(s.pos)
        z, enc_ids, p = torch.cat(zs, 1), torch.cat(ids), torch.cat(pos, 1)
        if self.stage2 is not None:
            keys = sample_keys(images) if getattr(self.stage2, "takes_sample_ids", False) else None
            z, kept_ids, p = apply_stage2(self.stage2, z, enc_ids, p, keys)
            if kept_ids.dim() == 2:  # (B, K): Stage 2 pruned
                per = {n: (kept_ids == i).sum(1).tolist() for i, n in enumerate(states)}
                return VisualTokens(z, kept_ids, p, per)
        per = {n: [s.x.shape[1]] * B for n, s in states.items()}
        return VisualTokens(z, enc_ids, p, per)

    def _pre_projection(self, states: dict[str, Any], B: int, keys: list[int] | None = None) -> VisualTokens:
        """EAGLE's fusion: every final map on the shared g×g grid, channels concatenated, one projector.

        With Stage 1 (docs/eagle.md, METEOR-style defaults): an encoder that lost tokens is
        resampled by normalised interpolation — its zero-filled map and its 0/1 map of surviving
        tokens go through the same ``to_grid``, and the first is divided by the second — so a grid
        position mixes only surviving tokens; a position none of them reaches is *uncovered* by
        that encoder and gets zeros in its channels (its term ``W0_e·x_e`` vanishes). An encoder
        that kept every token takes EAGLE's plain path, bit for bit.
        With Stage 2: :func:`~meteor_cli.pruning.positions.select_positions` keeps ``stage2.keep``
        positions, scored per encoder with the projector's column blocks ``W0[:, cols_e]·x_e``
        and fused across encoders; the LLM gets those positions' tokens in raster order.
        """
        g = self.cfg.grid
        maps, covered = [], []
        for n, s in states.items():
            enc = self.encoders[n]
            fmap = enc.to_grid(enc.feature_map(s), g)
            h, w = s.grid
            if s.x.shape[1] < h * w:  # Stage 1 dropped tokens of this encoder
                hit = torch.zeros(B, 1, h * w, dtype=torch.float32, device=s.x.device)
                hit.scatter_(2, s.pos.unsqueeze(1), 1.0)
                cover = enc.to_grid(hit.view(B, 1, h, w), g).float()
                fmap = torch.where(cover > 0, fmap.float() / cover.clamp_min(torch.finfo(torch.float32).tiny),
                                   torch.zeros((), device=fmap.device)).to(fmap.dtype)
                covered.append(cover[:, 0].flatten(1) > 0)
            else:
                covered.append(torch.ones(B, g * g, dtype=torch.bool, device=s.x.device))
            maps.append(fmap)
        fused = torch.cat(maps, dim=1).flatten(2).transpose(1, 2)  # (B, g², ΣD)
        pos = torch.arange(g * g, device=fused.device).expand(B, -1)
        z = None  # the projector's output, when Stage 2 computed it to choose (divprune)
        if self.stage2 is not None:
            from meteor_cli.pruning.positions import select_positions

            widths = [self.encoders[n].width for n in states]
            # `meteor flops --count fvcore` wraps the hook in a marker and keeps the policy in _flops_stage2
            policy = self.__dict__.get("_flops_stage2") or self.stage2
            res = select_positions(policy, fused, torch.stack(covered, 1), widths, self.projectors["fused"][0].weight,
                                   sample_ids=keys, project=self.projectors["fused"])
            if res is not None:
                pos, z = res.indices, res.projected
                fused = torch.gather(fused, 1, pos.unsqueeze(-1).expand(-1, -1, fused.shape[-1]))
        if z is None:
            z = self.projectors["fused"](fused)
        ids = torch.zeros(pos.shape[1], dtype=torch.long, device=z.device)
        return VisualTokens(z, ids, pos, {"fused": [pos.shape[1]] * B})

    # -- language ------------------------------------------------------------------------------

    def prepare(self, images: torch.Tensor, prompts: list[str], answers: list[str] | None = None,
                turns: list[list[tuple[str, str]]] | None = None) -> tuple[LLMInputs, VisualTokens]:
        vis = self.encode_images(images)
        inputs = build_inputs(self.tokenizer, self.llm.get_input_embeddings(), self.cfg.template, prompts, vis.z, answers,
                              turns)
        return inputs, vis

    def loss_sum(self, images: torch.Tensor, prompts: list[str], answers: list[str],
                 turns: list[list[tuple[str, str]]] | None = None) -> tuple[torch.Tensor, int]:
        """Sum of answer-token cross-entropies and the number of answer tokens.

        ``turns``: per sample, the later (question, answer) exchanges of a multi-turn conversation;
        the image is encoded once and every answer is a target.
        """
        inputs, _ = self.prepare(images, prompts, answers, turns)
        logits = self.llm(inputs_embeds=inputs.embeds, attention_mask=inputs.attention_mask).logits
        target = inputs.labels[:, 1:]  # type: ignore[index]
        loss = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target.flatten(), ignore_index=-100,
                                           reduction="sum")
        return loss, int((target != -100).sum())

    def forward(self, images: torch.Tensor, prompts: list[str], answers: list[str],
                turns: list[list[tuple[str, str]]] | None = None) -> tuple[torch.Tensor, int]:
        """Training forward (what DDP wraps): ``(sum of answer-token losses, number of answer tokens)``."""
        return self.loss_sum(images, prompts, answers, turns)

    @torch.no_grad()
    def generate(self, images: torch.Tensor, prompts: list[str], *, max_new_tokens: int = 16,
                 temperature: float = 0.0, stage3: Any = None, details: bool = False) -> Any:
        """Answers as text. ``stage3``: an installed LLMPruner (pruning at prefill, static decode).

        With ``details=True`` returns ``(texts, inputs, visual_tokens, stage3_session_or_None)``.
        """
        import contextlib

        inputs, vis = self.prepare(images, prompts)
        ctx = stage3.session(inputs.visual_start, inputs.visual_len, attention_mask=inputs.attention_mask) \
            if stage3 is not None else contextlib.nullcontext()
        kw: dict[str, Any] = {"do_sample": temperature > 0}
        if temperature > 0:
            kw["temperature"] = temperature
        with ctx as sess:
            out = self.llm.generate(inputs_embeds=inputs.embeds, attention_mask=inputs.attention_mask,
                                    max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                                    eos_token_id=self.tokenizer.eos_token_id, **kw)
        texts = [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]
        return (texts, inputs, vis, sess) if details else texts
