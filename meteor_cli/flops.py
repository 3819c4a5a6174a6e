"""Analytic FLOP counts for multi-encoder VLMs, with the convention stated (docs/evaluation.md §2).

FLOP figures in the token-pruning literature disagree mostly because of conventions, so every
number here carries its convention and formula:

* ``macs``  — one multiply-accumulate counts 1 (fvcore's "flop").
* ``flops`` — one multiply-accumulate counts 2 (``torch.utils.flop_counter``; nanoGPT's MFU).
* ``fastv`` — FastV's eq. 5 for each LLM decoder layer with n tokens, width d, FFN width m:
  ``4nd² + 2n²d + 2ndm`` (MACs, two FFN matrices, no GQA); encoders and projectors in MACs.
  Use it to compare with published FastV / PDrop / SparseVLM / METEOR tables.

The exact ``macs`` count of a Llama-family layer (GQA-aware, SwiGLU with three matrices) is::

    q, o:     2·n·d·(H·dh)          k, v: 2·n·d·(Hkv·dh)
    QKᵀ, AV:  2·H·n·n_ctx·dh        (n_ctx = keys seen; prefill: n, full square as in FastV)
    MLP:      3·n·d·m

A ViT block with n tokens, width D and MLP width M: ``4nD² + 2n²D + 2nDM`` MACs (qkv, proj,
two attention matmuls, two MLP matrices). Only matrix products are counted: norms, softmax,
activations, rotary embeddings and residual adds are left out (each is O(n·d), under 1 % here), as
fvcore does.

Vision encoders are counted by their registered adapter (:func:`encoder_macs` dispatches on
``family`` through the encoder registry; each adapter class states its own cost with
``embed_macs`` / ``block_macs`` / ``finalize_macs``, see
:class:`~meteor_cli.model.encoders.base.EncoderAdapter`). With n tokens in a block (prefix
included), width D, attention width A = heads·(D // heads), MLP width M and patch p:

* ``vit``, ``clip``, ``siglip``: :func:`vit_block_macs` ``4nDA + 2n²A + 2nDM``; patch embedding
  ``N·3p²·D``; CLIP always has a CLS token, SigLIP never.
* ``eva02``: the same attention, SwiGLU MLP with three matrices: ``4nDA + 2n²A + 3nDM``.
* ``pix2struct``: T5-style attention (A = heads·d_kv) and gated-GELU MLP (three matrices, M = d_ff):
  ``4nDA + 2n²A + 3nDM``; the patch projection is a linear layer ``N·3p²·D``.
* ``sam``: :func:`sam_block_macs` — windowed blocks work on the map zero-padded to a multiple
  of the window (T tokens) with decomposed relative positions (two einsums); the neck adds
  ``N·C·W + 9·N·W²`` (1×1 and 3×3 convolutions, C the transformer width, W = ``width``).
* ``convnext``: :func:`convnext_macs`.

Stage 1 shrinks the blocks after each pruning point (:func:`stage1_tokens`); SAM and ConvNeXt are
pruned only on their final map, so their cost never changes. Stage-1/Stage-2 *scoring* (CLS rows,
similarities) is not included.

>>> dims = LLMDims(layers=32, hidden=4096, intermediate=11008, heads=32, kv_heads=32, vocab=32000)
>>> round(llm_layer_macs(dims, 576, convention="fastv") / 1e9, 2)   # one Vicuna-7B layer, 576 tokens
93.31
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

CONVENTIONS = ("macs", "flops", "fastv")
FORMULAS = {
    "fastv": "LLM layer: 4nd^2 + 2n^2d + 2ndm (FastV eq. 5); encoders/projectors: MACs",
    "macs": "multiply-accumulates: Llama layer 2nd(H+Hkv)dh + 2Hn*n_ctx*dh + 3ndm; ViT block 4nD^2 + 2n^2D + 2nDM "
            "(per-family encoder formulas: meteor_cli.flops)",
    "flops": "2 x multiply-accumulates (same terms as macs)",
}


@dataclass(frozen=True)
class LLMDims:
    """Shapes of a decoder-only LLM."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    head_dim: int | None = None

    @property
    def dh(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @classmethod
    def from_hf_config(cls, cfg: Any) -> LLMDims:
        get = cfg.get if isinstance(cfg, dict) else lambda k, d=None: getattr(cfg, k, d)
        return cls(get("num_hidden_layers"), get("hidden_size"), get("intermediate_size"), get("num_attention_heads"),
                   get("num_key_value_heads") or get("num_attention_heads"), get("vocab_size"), get("head_dim"))


def _check(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; choose from {CONVENTIONS}")


def llm_layer_macs(d: LLMDims, n: float, n_ctx: float | None = None, *, convention: str = "macs") -> float:
    """One decoder layer over ``n`` new tokens attending to ``n_ctx`` keys (default ``n``)."""
    _check(convention)
    n_ctx = n if n_ctx is None else n_ctx
    if convention == "fastv":
        return 4 * n * d.hidden**2 + 2 * n * n_ctx * d.hidden + 2 * n * d.hidden * d.intermediate
    proj = 2 * n * d.hidden * d.heads * d.dh + 2 * n * d.hidden * d.kv_heads * d.dh
    attn = 2 * d.heads * n * n_ctx * d.dh
    mlp = 3 * n * d.hidden * d.intermediate
    macs = proj + attn + mlp
    return 2 * macs if convention == "flops" else macs


def llm_prefill(d: LLMDims, text: int, visual: Sequence[float], *, convention: str = "macs",
                lm_head_tokens: int = 1) -> float:
    """Prefill cost; ``visual[l]`` = visual tokens entering layer l (Stage-3 schedule)."""
    if len(visual) != d.layers:
        raise ValueError(f"visual has {len(visual)} entries for {d.layers} layers")
    total = sum(llm_layer_macs(d, text + v, convention=convention) for v in visual)
    head = lm_head_tokens * d.hidden * d.vocab
    return total + (2 * head if convention == "flops" else head)


def llm_decode(d: LLMDims, context: Sequence[float], new_tokens: int, *, convention: str = "macs") -> float:
    """Cost of ``new_tokens`` decode steps with a KV cache; ``context[l]`` = keys cached at layer l."""
    total = 0.0
    for t in range(new_tokens):
        total += sum(llm_layer_macs(d, 1, c + t + 1, convention=convention) for c in context)
        head = d.hidden * d.vocab
        total += 2 * head if convention == "flops" else head
    return total


def add_llm_costs(rep: FlopReport, d: LLMDims, text: int, visual: Sequence[float], new_tokens: int, *,
                  convention: str) -> None:
    """Add ``llm/prefill`` and, with ``new_tokens``, ``llm/decode`` to ``rep`` for one Stage-3
    schedule (``visual[l]`` tokens entering layer l; decoding caches ``text + visual[l]`` keys)."""
    rep.add("llm/prefill", llm_prefill(d, text, visual, convention=convention))
    if new_tokens:
        rep.add("llm/decode", llm_decode(d, [text + v for v in visual], new_tokens, convention=convention))


def vit_block_macs(n: float, width: int, mlp: int, *, attn_dim: int | None = None, mlp_mats: int = 2) -> float:
    """One pre-norm transformer block over ``n`` tokens, in MACs: q, k, v and output projections
    ``4·n·width·attn_dim``, ``QKᵀ`` and ``AV`` ``2·n²·attn_dim``, an MLP of ``mlp_mats`` matrices
    ``mlp_mats·n·width·mlp`` (2: fc1, fc2; 3: gated — SwiGLU, gated-GELU)."""
    a = width if attn_dim is None else attn_dim
    return 4 * n * width * a + 2 * n * n * a + mlp_mats * n * width * mlp


def vit_macs(tokens_per_block: Sequence[float], width: int, mlp: int, *, patch: int = 0, channels: int = 3,
             n_embed: float | None = None, convention: str = "macs") -> float:
    """A ViT: patch embedding over ``n_embed`` patches, then one block per entry of
    ``tokens_per_block`` (tokens entering that block, so Stage-1 pruning shows up)."""
    _check(convention)
    embed = (n_embed if n_embed is not None else tokens_per_block[0]) * patch * patch * channels * width
    blocks = sum(vit_block_macs(n, width, mlp) for n in tokens_per_block)
    macs = embed + blocks
    return 2 * macs if convention == "flops" else macs


def sam_block_macs(grid: int, width: int, mlp: int, window: int) -> float:
    """One SAM (ViT-Det) block on a ``grid``×``grid`` map, in MACs; ``window`` 0 = global attention.

    Windowed: the map is zero-padded to ``T = (⌈grid/window⌉·window)²`` tokens, cut into
    window×window windows, and qkv, attention and the output projection run on all T (padding
    included): ``4·T·width²`` + ``2·T·window²·width`` (``QKᵀ``, ``AV`` inside each window) +
    ``2·T·window·width`` (decomposed relative positions: one einsum per axis). Global: T = grid²,
    keys = grid², relative positions ``T·2·grid·width``. The MLP ``2·grid²·width·mlp`` runs on the
    unpadded map.
    """
    if window:
        side = -(-grid // window) * window
        t, keys, rel = side * side, window * window, 2 * window
    else:
        t, keys, rel = grid * grid, grid * grid, 2 * grid
    return 4 * t * width * width + 2 * t * keys * width + t * rel * width + 2 * grid * grid * width * mlp


def stage1_tokens(num_tokens: int, depth: int, prune_points: Sequence[int],
                  keep: Sequence[float] | None = None) -> tuple[list[float], float]:
    """Patch tokens entering each block (prefix excluded), and those leaving the encoder, when
    ``keep[j]`` tokens remain after block ``prune_points[j]`` (None: no pruning).

    >>> stage1_tokens(16, 4, [0, 2, 3], [12, 8, 4])
    ([16, 12, 12, 8], 4)
    """
    keep = [num_tokens] * len(prune_points) if keep is None else list(keep)
    if len(keep) != len(prune_points):
        raise ValueError(f"{len(keep)} budgets for {len(prune_points)} pruning points")
    n, per_block, j = num_tokens, [], 0
    for blk in range(depth):
        per_block.append(n)
        while j < len(prune_points) and prune_points[j] == blk:
            n = min(n, keep[j])
            j += 1
    return per_block, n


def encoder_macs(cfg: Any, keep: Sequence[float] | None = None, *, convention: str = "macs") -> float:
    """An encoder of config ``cfg`` (an ``EncoderConfig``) with Stage-1 budgets ``keep`` (one per
    pruning point; None: unpruned), counted by the adapter registered for ``cfg.family``
    (``EncoderAdapter.macs``). Nothing is built: the count comes from the config alone."""
    _check(convention)
    from meteor_cli.registry import ENCODERS, load_builtins_and_plugins

    load_builtins_and_plugins()
    per_block, final = stage1_tokens(cfg.num_tokens, cfg.depth, cfg.prune_points or [], keep)
    macs = ENCODERS.get(cfg.family).macs(cfg, per_block, final)
    return 2 * macs if convention == "flops" else macs


def convnext_macs(image: int, depths: Sequence[int], dims: Sequence[int], *, convention: str = "macs",
                  kernel: int = 7, mlp_ratio: int = 4, channels: int = 3) -> float:
    """ConvNeXt: stem (4×4/4), per block a depthwise k×k conv and two pointwise layers, and
    2×2/2 downsampling between stages. Pruning its output saves nothing inside (METHOD A2)."""
    _check(convention)
    side = image // 4
    macs = side * side * 16 * channels * dims[0]
    for i, (depth, dim) in enumerate(zip(depths, dims)):
        if i:
            side //= 2
            macs += side * side * 4 * dims[i - 1] * dim
        hw = side * side
        macs += depth * (hw * dim * kernel * kernel + 2 * hw * dim * mlp_ratio * dim)
    return 2 * macs if convention == "flops" else macs


def projector_macs(n: float, d_in: int, d_out: int, *, convention: str = "macs") -> float:
    """``mlp2x_gelu``: Linear(d_in, d_out) then Linear(d_out, d_out) over n tokens."""
    _check(convention)
    macs = n * d_in * d_out + n * d_out * d_out
    return 2 * macs if convention == "flops" else macs


@dataclass
class FlopReport:
    """Counts per component under one convention (fvcore-style query methods)."""

    convention: str
    components: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, value: float, note: str | None = None) -> None:
        self.components[name] = self.components.get(name, 0.0) + float(value)
        if note:
            self.notes[name] = note

    def total(self, prefix: str = "") -> float:
        return sum(v for k, v in self.components.items() if k.startswith(prefix))

    def by_component(self) -> dict[str, float]:
        return dict(self.components)

    def to_json(self) -> dict[str, Any]:
        return {"convention": self.convention, "formula": FORMULAS[self.convention],
                "components": self.by_component(), "total": self.total(), "notes": self.notes}


# --------------------------------------------------------------------------------------------
# Measured: fvcore's FlopCountAnalysis on a real forward, pruning hooks installed
# --------------------------------------------------------------------------------------------

#: Operators that are matrix products (what the analytic count covers); fvcore's other handled
#: operators (norms, pooling, interpolation) are reported apart as ``other``.
MATRIX_OPS = frozenset({"addmm", "bmm", "conv", "_convolution", "einsum", "matmul", "mm", "linear",
                        "scaled_dot_product_attention"})

SDPA_NOTE = ("fvcore has no handle for aten::scaled_dot_product_attention (SDPA, used by timm, CLIP and the "
             "LLM); meteor adds one that counts its two matrix products over the full, unmasked score matrix, "
             "B*H*Lq*Lk*(dk + dv) multiply-adds (GQA: H = query heads), as the analytic formulas do")


def sdpa_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for ``aten::scaled_dot_product_attention``: ``QKᵀ`` and ``AV`` in MACs."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(x) for x in inputs[:3])
    assert q is not None and k is not None and v is not None
    batch = 1
    for d in q[:-2]:
        batch *= d
    lq, dk, lk, dv = q[-2], q[-1], k[-2], v[-1]
    return int(batch * lq * lk * (dk + dv))


class _Marker(nn.Module):
    """A parameter-free module around a callable, so fvcore's trace scopes (caller mode) name the
    work done inside it: an encoder, a pruning stage's scoring."""

    def __init__(self, fn: Any) -> None:
        super().__init__()
        self._fn = [fn]  # a list: never registered as a submodule

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._fn[0](*args, **kwargs)


class _Probe(nn.Module):
    """One prefill of a MultiEncoderVLM as a traceable module: image (1, 3, S, S) → last logits.

    The text is ``text`` token ids after the visual tokens (so every text token is a Stage-3 query
    row); logits are computed for the last position only (``logits_to_keep=1``, as in generation).
    """

    def __init__(self, vlm: Any, stage3: Any, text_ids: Any) -> None:
        super().__init__()
        self.vlm, self.stage3 = vlm, stage3
        self.text_ids = text_ids
        self.marks = nn.ModuleDict()
        for name in vlm.encoders:
            self.marks[f"enc_{name}"] = _Marker(lambda images, _n=name: type(vlm).run_encoder(vlm, _n, images))
            self.marks[f"s1_{name}"] = _Marker(lambda *a: vlm._flops_stage1(*a))
        self.marks["s2"] = _Marker(lambda *a: vlm._flops_stage2(*a))
        if stage3 is not None:
            self.marks["s3"] = _Marker(lambda *a: type(stage3).score(stage3, *a))
        self.kept: dict[int, int] = {}
        self.visual = 0

    def forward(self, images: Any) -> Any:
        vlm, marks = self.vlm, self.marks
        vlm.run_encoder = lambda name, imgs: marks[f"enc_{name}"](imgs)
        if vlm.stage1 is not None:
            vlm._flops_stage1, vlm.stage1 = vlm.stage1, lambda name, *a: marks[f"s1_{name}"](name, *a)
        if vlm.stage2 is not None:
            vlm._flops_stage2, vlm.stage2 = vlm.stage2, lambda *a: marks["s2"](*a)
        if self.stage3 is not None:
            self.stage3.score = lambda *a: marks["s3"](*a)
        try:
            vis = vlm.encode_images(images)
            text = vlm.llm.get_input_embeddings()(self.text_ids)
            embeds = torch.cat([vis.z.to(text.dtype), text], dim=1)
            self.visual = int(vis.z.shape[1])
            if self.stage3 is None:
                return vlm.llm(inputs_embeds=embeds, use_cache=False, logits_to_keep=1).logits
            with self.stage3.session([0], [self.visual]) as sess:
                logits = vlm.llm(inputs_embeds=embeds, use_cache=False, logits_to_keep=1).logits
            self.kept = {p: len(k[0]) for p, k in sorted(sess.kept.items())}
            return logits
        finally:
            del vlm.run_encoder
            for hook in ("stage1", "stage2"):
                saved = vlm.__dict__.pop(f"_flops_{hook}", None)
                if saved is not None:
                    setattr(vlm, hook, saved)
            if self.stage3 is not None:
                del self.stage3.score


@dataclass
class MeasuredFlops:
    """fvcore's count of one prefill, in MACs, split like :class:`FlopReport`.

    Attributes:
        components: ``encoder/NAME``, ``projector/NAME`` (or ``projector/fused``), ``llm/prefill``:
            matrix products only (what the analytic count covers), the pruning scoring excluded.
        other: per component, fvcore's other counted operators (norms, pooling, interpolation).
        pruning: the scoring work of each stage (``stage1``, ``stage2``, ``stage3``), which the
            analytic count leaves out.
        visual_tokens: tokens that entered the LLM; stage3_kept: layer → visual tokens kept (this input).
        unsupported: operators fvcore saw but did not count (elementwise ops, softmax, …), with counts.
    """

    components: dict[str, float]
    other: dict[str, float]
    pruning: dict[str, float]
    visual_tokens: int
    stage3_kept: dict[int, int]
    unsupported: dict[str, int]


def fvcore_macs(vlm: Any, text_tokens: int, *, stage3: Any = None, seed: int = 0) -> MeasuredFlops:
    """Trace one prefill of ``vlm`` (its Stage-1/2 hooks and the Stage-3 pruner ``stage3`` as
    installed) on a seeded random image and ``text_tokens`` random text tokens with fvcore's
    ``FlopCountAnalysis`` (ancestor mode "caller"), with :func:`sdpa_flop_jit` for SDPA."""
    import warnings

    with warnings.catch_warnings():  # fvcore's import uses the deprecated torch.jit.script
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis

    if text_tokens < 1:
        raise ValueError("the measured forward needs at least one text token")
    g = torch.Generator().manual_seed(seed)
    size = max(e.cfg.image_size for e in vlm.encoders.values())
    device = next(vlm.parameters()).device
    image = torch.rand(1, 3, size, size, generator=g).to(device)
    vocab = int(vlm.llm.config.vocab_size)
    ids = torch.randint(4, max(5, vocab), (1, text_tokens), generator=g).to(device)
    probe = _Probe(vlm, stage3, ids).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fca = FlopCountAnalysis(probe, (image,))
        fca.set_op_handle("aten::scaled_dot_product_attention", sdpa_flop_jit)
        fca.ancestor_mode("caller").unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        fca.tracer_warnings("none")
        per = fca.by_module_and_operator()
        unsupported = dict(fca.unsupported_ops(""))

    def split(scope: str) -> tuple[float, float]:
        ops = per.get(scope, {})
        mat = sum(v for k, v in ops.items() if k in MATRIX_OPS)
        return float(mat), float(sum(ops.values()) - mat)

    comps: dict[str, float] = {}
    other: dict[str, float] = {}
    pruning = {"stage1": 0.0, "stage2": 0.0, "stage3": 0.0}
    for name in vlm.encoders:
        m, o = split(f"marks.enc_{name}")
        sm, so = split(f"marks.s1_{name}")
        comps[f"encoder/{name}"], other[f"encoder/{name}"] = m - sm, o - so
        pruning["stage1"] += sm + so
    for name in vlm.projectors:
        comps[f"projector/{name}"], other[f"projector/{name}"] = split(f"vlm.projectors.{name}")
    pruning["stage2"] = sum(split("marks.s2"))
    m, o = split("vlm.llm")
    sm, so = split("marks.s3")
    comps["llm/prefill"], other["llm/prefill"] = m - sm, o - so
    pruning["stage3"] = sm + so
    total_m, total_o = split("")
    rest = total_m + total_o - sum(comps.values()) - sum(other.values()) - sum(pruning.values())
    if abs(rest) > 0.5:
        other["outside components"] = rest  # e.g. pre-projection fusion's interpolation
    return MeasuredFlops(comps, other, pruning, probe.visual, probe.kept, unsupported)


__all__ = ["CONVENTIONS", "FORMULAS", "FlopReport", "LLMDims", "add_llm_costs", "convnext_macs", "encoder_macs", "llm_decode",
           "llm_layer_macs", "llm_prefill", "MeasuredFlops", "fvcore_macs", "sdpa_flop_jit", "projector_macs", "sam_block_macs", "stage1_tokens", "vit_block_macs",
           "vit_macs"]
