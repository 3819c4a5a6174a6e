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
activations and residual adds are left out (each is O(n·d), under 1 % here), as fvcore does.

>>> dims = LLMDims(layers=32, hidden=4096, intermediate=11008, heads=32, kv_heads=32, vocab=32000)
>>> round(llm_layer_macs(dims, 576, convention="fastv") / 1e9, 2)   # one Vicuna-7B layer, 576 tokens
93.31
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

CONVENTIONS = ("macs", "flops", "fastv")
FORMULAS = {
    "fastv": "LLM layer: 4nd^2 + 2n^2d + 2ndm (FastV eq. 5); encoders/projectors: MACs",
    "macs": "multiply-accumulates: Llama layer 2nd(H+Hkv)dh + 2Hn*n_ctx*dh + 3ndm; ViT block 4nD^2 + 2n^2D + 2nDM",
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


def vit_macs(tokens_per_block: Sequence[float], width: int, mlp: int, *, patch: int = 0, channels: int = 3,
             n_embed: float | None = None, convention: str = "macs") -> float:
    """A ViT: patch embedding over ``n_embed`` patches, then one block per entry of
    ``tokens_per_block`` (tokens entering that block, so Stage-1 pruning shows up)."""
    _check(convention)
    embed = (n_embed if n_embed is not None else tokens_per_block[0]) * patch * patch * channels * width
    blocks = sum(4 * n * width**2 + 2 * n * n * width + 2 * n * width * mlp for n in tokens_per_block)
    macs = embed + blocks
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


__all__ = ["CONVENTIONS", "FORMULAS", "FlopReport", "LLMDims", "convnext_macs", "llm_decode", "llm_layer_macs",
           "llm_prefill", "projector_macs", "vit_macs"]
