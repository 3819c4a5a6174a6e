"""Stage 3 inside an unmodified Hugging Face causal LM: prune visual tokens between decoder layers.

How it attaches (hooks, not forks)
----------------------------------
:class:`LLMPruner` replaces each ``model.layers[i]`` of the HF decoder by a thin
:class:`_PrunableLayer` that *holds* the original layer and calls it. Outside a
:meth:`LLMPruner.session` the wrappers are pass-through, so the model behaves exactly as before.
Inside a session the first forward is the **prefill**; at each pruning layer ``p`` (before the
layer runs):

1. the policy scores the visual tokens from the attention of a few *query rows* only, recomputed
   from layer ``p``'s own ``input_layernorm``, ``q_proj``/``k_proj`` and rotary embedding at the
   tokens' position ids (GQA-aware; float32 softmax). Nothing depends on the attention kernel, so
   eager, SDPA and flash attention give the same kept set, and no layer ever runs twice (the KV
   cache bug of FastV's cached variant cannot happen);
2. the policy returns, per sample, the sorted indices of the visual tokens to keep (ragged);
3. every sample is re-packed: all its text tokens plus its kept visual tokens, in order,
   **left-padded** to the longest sample. Hidden states, position ids (the ORIGINAL ids, gaps
   kept — METHOD A11) and the padding mask are gathered with the same indices; the 4-D
   attention mask and the rotary embeddings are rebuilt for the new length. Left packing keeps
   the last real token of every sample at the last position, which is what ``generate()`` reads.

Every later layer's KV cache therefore holds only what that layer saw. Decoding steps attend
to the retained set (static pruning, decided once at prefill): the wrappers of pruned layers
extend their own key-padding masks, and positions continue from the *unpruned* prompt length
because HF derives them from layer 0's cache, which is never pruned.

State-based policies
--------------------
A policy that computes its own scores (DART from hidden states, SparseVLM from attention it
corrects) defines ``score_states(layer, hidden, pos_emb, session)`` — called at its score layer instead of the
query-attention computation, its result kept as that layer's scores — and
``select_states(p, scores, hidden, session, decoder)`` — called at the pruning layer with the
hidden states entering it, returning the kept visual indices per sample.

Replay
------
``session(..., replay=kept)`` applies recorded kept indices instead of scoring. A no-cache
forward over prompt + generated tokens with the prefill's kept indices reproduces cached
greedy decoding (the test of METHOD Part A's last invariant).

Supported families: those whose decoder exposes ``layers``, ``rotary_emb`` and layers with
``input_layernorm`` and ``self_attn.{q_proj,k_proj}`` (Llama/Vicuna, Qwen2, Mistral), also as the
language model of a transformers VLM (``LlavaForConditionalGeneration``,
``LlavaNextForConditionalGeneration``, ``Qwen2VLForConditionalGeneration``: ``get_decoder()``
is the text model, depth and heads come from ``config.get_text_config()``).

Multimodal rotary positions (Qwen2-VL's M-RoPE)
-----------------------------------------------
When the decoder is called with 3-D position ids (``(3, B, L)`` temporal/height/width, or
``(4, B, L)`` with the text positions first, as Qwen2-VL's ``generate`` passes them), a forward
pre-hook on the decoder records them at prefill; they are gathered with the kept tokens like the
1-D ids (never renumbered) and the rotary embeddings of pruned layers are rebuilt from them.

Masks after pruning are given to each layer in the form its attention kernel takes:

* ``eager``, ``sdpa`` (and other kernels with 4-D masks): additive float (B, 1, q, K) masks;
* the flash-attention family (``flash_attention_2/3/4`` and any implementation registered with
  transformers' ``flash_attention_mask``): the 2-D (B, K) key-padding mask, ALWAYS passed even
  when nothing is padded. FlashAttention is causal bottom-right within the unpadded tokens,
  which is exactly the left-packed layout; and without a mask transformers would read the gaps
  that pruning leaves in the position ids of a single sequence as *several packed sequences*
  and cut the attention at every gap.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from meteor_cli.errors import UsageError

SUPPORTED_FAMILIES = ("llama", "qwen2", "mistral")


# --------------------------------------------------------------------------------------------
# Locating the parts of an HF decoder
# --------------------------------------------------------------------------------------------


def text_config(model: nn.Module) -> Any:
    """The config of the language model: ``config.get_text_config()`` for a VLM, else ``config``."""
    cfg = getattr(model, "config", None)
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def decoder_of(model: nn.Module) -> nn.Module:
    """The decoder stack (``LlamaModel`` etc.) of a causal LM, checking it has what Stage 3 needs."""
    family = getattr(getattr(model, "config", None), "model_type", None)
    dec = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", model)
    ok = hasattr(dec, "layers") and hasattr(dec, "rotary_emb") and all(
        hasattr(layer, "input_layernorm") and hasattr(getattr(layer, "self_attn", None), "q_proj")
        for layer in (dec.layers[0].layer if isinstance(dec.layers[0], _PrunableLayer) else dec.layers[0],)
    )
    if not ok:
        raise UsageError(
            f"Stage-3 pruning has no adapter for model family {family!r}",
            f"supported families: {', '.join(SUPPORTED_FAMILIES)} (decoders with layers, rotary_emb, "
            "input_layernorm and self_attn.q_proj/k_proj)",
        )
    return dec


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in the rotate-half form used by Llama/Qwen2/Mistral.

    x: (B, H, L, dh); cos/sin: (B, L, dh) as returned by the model's ``rotary_emb``.
    """
    return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)


# --------------------------------------------------------------------------------------------
# Scores: attention of a few query rows, recomputed from a layer's own weights
# --------------------------------------------------------------------------------------------


def query_attention(
    layer: nn.Module,
    hidden: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    query_idx: torch.Tensor,
    query_valid: torch.Tensor,
    key_valid: torch.Tensor,
) -> torch.Tensor:
    """Attention probabilities of selected query rows over all keys, as ``layer`` would compute them.

    Args:
        layer: an HF decoder layer (its ``input_layernorm`` and ``self_attn.q_proj/k_proj`` are used).
        hidden: (B, L, d) the hidden states entering the layer.
        position_embeddings: (cos, sin), each (B, L, dh), at the tokens' position ids.
        query_idx: (B, Q) packed positions of the query rows (padded; see ``query_valid``).
        query_valid: (B, Q) bool.
        key_valid: (B, L) bool, False for padding.

    Returns:
        (B, H, Q, L) float32 probabilities; rows of invalid queries are zero. Causal: query at
        position t sees keys at positions ≤ t. GQA: key heads are repeated to the query heads.
    """
    attn = layer.self_attn
    B, L, _ = hidden.shape
    dh = attn.head_dim
    h = layer.input_layernorm(hidden)
    cos, sin = (t.expand(B, -1, -1) for t in position_embeddings)  # HF shares one row across the batch
    hq = torch.gather(h, 1, query_idx.unsqueeze(-1).expand(-1, -1, h.shape[-1]))  # (B, Q, d): query rows only
    q = attn.q_proj(hq).view(B, hq.shape[1], -1, dh).transpose(1, 2)  # (B, H, Q, dh)
    k = attn.k_proj(h).view(B, L, -1, dh).transpose(1, 2)  # (B, Hkv, L, dh)
    cq = torch.gather(cos, 1, query_idx.unsqueeze(-1).expand(-1, -1, dh))
    sq = torch.gather(sin, 1, query_idx.unsqueeze(-1).expand(-1, -1, dh))
    q = apply_rope(q.float(), cq.float(), sq.float())
    k = apply_rope(k.float(), cos.float(), sin.float())
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # GQA: (B, H, L, dh)
    logits = q @ k.transpose(-1, -2) / math.sqrt(dh)  # (B, H, Q, L)
    keys = torch.arange(L, device=hidden.device)
    allowed = (keys[None, None, :] <= query_idx[:, :, None]) & key_valid[:, None, :]  # (B, Q, L)
    logits = logits.masked_fill(~allowed[:, None], float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.where(query_valid[:, None, :, None], probs, torch.zeros((), dtype=probs.dtype))


def query_index(query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) bool query rows → (B, Q) packed positions (padded with 0) and (B, Q) validity."""
    q_counts = query.sum(1)
    Q = max(1, int(q_counts.max()))
    q_idx = torch.zeros(query.shape[0], Q, dtype=torch.long, device=query.device)
    q_valid = torch.arange(Q, device=query.device)[None, :] < q_counts[:, None]
    for b in range(query.shape[0]):
        pos = torch.nonzero(query[b], as_tuple=False).flatten()
        q_idx[b, :len(pos)] = pos
    return q_idx, q_valid


# --------------------------------------------------------------------------------------------
# The packed sequence and its bookkeeping
# --------------------------------------------------------------------------------------------


@dataclass
class PackedState:
    """The token layout entering the current layer (left-padded to the longest sample).

    Attributes:
        valid: (B, L) bool, False for padding.
        visual: (B, L) bool, True for visual tokens still present.
        query: (B, L) bool, True for the policy's query rows.
        position_ids: (B, L) original position ids (gaps where tokens were dropped).
        source: (B, L) index of each token in the sequence given to the model (-1 for padding).
        rope: (B, L, 3) multimodal rotary position ids (M-RoPE), original values; None for 1-D RoPE.
    """

    valid: torch.Tensor
    visual: torch.Tensor
    query: torch.Tensor
    position_ids: torch.Tensor
    source: torch.Tensor
    rope: torch.Tensor | None = None

    def repack(self, keep: torch.Tensor) -> tuple[PackedState, torch.Tensor]:
        """Keep the positions where ``keep`` (B, L) is True, left-padded; returns the new state and
        the (B, L') gather index into the current layout (pads point at position 0)."""
        counts = keep.sum(1)
        Lp = int(counts.max())
        B, L = keep.shape
        # Stable order of kept positions, right-aligned: kept ones sort last, in original order.
        order = torch.argsort(keep.to(torch.int8), dim=1, stable=True)[:, L - Lp:]  # (B, Lp)
        new_valid = torch.arange(Lp, device=keep.device)[None, :] >= (Lp - counts)[:, None]
        index = torch.where(new_valid, order, torch.zeros_like(order))

        def g(x: torch.Tensor, fill: Any) -> torch.Tensor:
            # a 0-d fill tensor, not full_like(…, bool): torch.jit (fvcore's `meteor flops --count`) cannot trace that
            return torch.where(new_valid, torch.gather(x, 1, index), torch.tensor(fill, dtype=x.dtype, device=x.device))

        rope = None if self.rope is None else torch.gather(self.rope, 1, index[..., None].expand(-1, -1, self.rope.shape[-1]))
        return PackedState(new_valid, g(self.visual, False), g(self.query, False), g(self.position_ids, 1),
                           g(self.source, -1), rope), index

    def rotary_position_ids(self) -> torch.Tensor:
        """What the decoder's ``rotary_emb`` takes: (B, L) ids, or (3, B, L) for M-RoPE."""
        return self.position_ids if self.rope is None else self.rope.permute(2, 0, 1)


def takes_padding_masks(model: nn.Module) -> bool:
    """True when ``model``'s attention takes 2-D key-padding masks (the flash-attention family)."""
    impl = getattr(text_config(model), "_attn_implementation", None) or ""
    try:
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask
    except ImportError:  # pragma: no cover - older transformers
        return "flash" in impl
    try:
        return ALL_MASK_ATTENTION_FUNCTIONS[impl] is flash_attention_mask
    except KeyError:
        return "flash" in impl


def additive_mask(valid_keys: torch.Tensor, q_len: int, dtype: torch.dtype, causal_offset: int | None = None) -> torch.Tensor:
    """(B, 1, q, K) additive mask: keys must be valid and (causally) not after the query.

    The last ``q_len`` keys are the queries themselves (prefill: all keys; decode: the new
    tokens appended after the cache).
    """
    B, K = valid_keys.shape
    qpos = torch.arange(K - q_len, K, device=valid_keys.device) if causal_offset is None else \
        torch.arange(causal_offset, causal_offset + q_len, device=valid_keys.device)
    allowed = valid_keys[:, None, :] & (torch.arange(K, device=valid_keys.device)[None, None, :] <= qpos[None, :, None])
    mask = torch.zeros(B, 1, q_len, K, dtype=dtype, device=valid_keys.device)
    return mask.masked_fill(~allowed[:, None], torch.finfo(dtype).min)


# --------------------------------------------------------------------------------------------
# Sessions and the layer wrapper
# --------------------------------------------------------------------------------------------


@dataclass
class Session:
    """State of one pruned generation: prefill layout, kept indices, per-layer cache masks."""

    pruner: LLMPruner
    attention_mask: torch.Tensor | None
    visual_start: torch.Tensor  # (B,) long
    visual_len: torch.Tensor  # (B,) long
    prompt_len: torch.Tensor | None  # (B,) long: end of the prompt (queries stop here); None = whole input
    replay: dict[int, list[torch.Tensor]] | None = None
    phase: str = "prefill"
    state: PackedState | None = None
    pos_emb: tuple[torch.Tensor, torch.Tensor] | None = None
    layer_mask: torch.Tensor | None = None  # what pruned layers get as attention_mask (see LLMPruner.mask)
    pruned: bool = False
    #: Layer → per-sample kept indices into the visual tokens entering that layer (ascending).
    kept: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    #: Layer → visual tokens entering that layer, per sample.
    entering: dict[int, list[int]] = field(default_factory=dict)
    #: Layer → (B, L_cache) key validity of that layer's KV cache (pruned layers only).
    cache_valid: dict[int, torch.Tensor] = field(default_factory=dict)
    _scores: dict[int, Any] = field(default_factory=dict)
    warned_no_visual: bool = False
    #: Position ids the decoder itself was called with at prefill (3-D for M-RoPE), see the pre-hook.
    decoder_position_ids: torch.Tensor | None = None
    #: While ``policy.query_rows`` runs at prefill: (hidden (B, L, d) entering layer 0, visual (B, L) bool).
    layer0_input: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- bookkeeping helpers ---------------------------------------------------------------

    def _init_state(self, hidden: torch.Tensor, position_ids: torch.Tensor | None) -> None:
        B, L, _ = hidden.shape
        dev = hidden.device
        ar = torch.arange(L, device=dev)[None, :].expand(B, L)
        valid = self.attention_mask.bool().to(dev) if self.attention_mask is not None else torch.ones(B, L, dtype=torch.bool, device=dev)
        vs, vl = self.visual_start.to(dev)[:, None], self.visual_len.to(dev)[:, None]
        visual = (ar >= vs) & (ar < vs + vl) & valid
        end = self.prompt_len.to(dev)[:, None] if self.prompt_len is not None else torch.full_like(vs, L)
        after = (ar >= vs + vl) & (ar < end) & valid
        self.layer0_input = (hidden, visual)  # for query_rows that read the LLM's input (SparseVLM's raters)
        query = self.pruner.policy.query_rows(after, valid, self)
        self.layer0_input = None
        rope = None
        dec_pos = self.decoder_position_ids
        if dec_pos is not None and dec_pos.ndim == 3:  # M-RoPE: (3, B, L), or (4, B, L) with text ids first
            rope = dec_pos[-3:].to(dev).expand(3, B, L).permute(1, 2, 0).clone()
            if position_ids is None and dec_pos.shape[0] == 4:
                position_ids = dec_pos[0]
        if position_ids is None:
            position_ids = ar
        self.state = PackedState(valid, visual, query, position_ids.to(dev).expand(B, L).clone(), ar.clone(), rope)

    def visual_indices(self) -> list[torch.Tensor]:
        """Per sample, packed positions of its visual tokens (ascending)."""
        assert self.state is not None
        return [torch.nonzero(v, as_tuple=False).flatten() for v in self.state.visual]


class _PrunableLayer(nn.Module):
    """Holds one unmodified decoder layer; applies the session's layout around it."""

    def __init__(self, layer: nn.Module, index: int, pruner: LLMPruner) -> None:
        super().__init__()
        self.layer = layer
        self.index = index
        self._pruner = [pruner]  # a list, so the pruner is not registered as a submodule

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.layer, name)  # attention_type, self_attn, … for code that inspects layers

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        sess = self._pruner[0].current
        if sess is None:
            return self.layer(hidden_states, *args, **kwargs)
        if sess.phase == "prefill":
            return self._prefill(sess, hidden_states, *args, **kwargs)
        return self._decode(sess, hidden_states, *args, **kwargs)

    def _prefill(self, sess: Session, hidden: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        pruner = self._pruner[0]
        if self.index == 0:
            sess._init_state(hidden, kwargs.get("position_ids"))
        # Scores for a pruning at THIS layer come from the tokens entering it; scores this layer gives
        # a LATER pruning (FastV/DART/SparseVLM score from layer p-1) from what survives its own pruning.
        scores_for = pruner.score_layers.get(self.index)
        if scores_for == self.index:
            pruner.score(sess, self.layer, self.index, hidden, sess.pos_emb if sess.pruned else kwargs["position_embeddings"])
        if self.index in pruner.policy.layers:
            hidden = pruner.prune(sess, self.index, hidden)
        if scores_for not in (None, self.index):
            pruner.score(sess, self.layer, self.index, hidden, sess.pos_emb if sess.pruned else kwargs["position_embeddings"])
        if sess.pruned:
            kwargs["attention_mask"] = sess.layer_mask
            kwargs["position_ids"] = sess.state.position_ids
            kwargs["position_embeddings"] = sess.pos_emb
            sess.cache_valid[self.index] = sess.state.valid
        out = self.layer(hidden, *args, **kwargs)
        if self.index == pruner.num_layers - 1:
            sess.phase = "decode"
        return out

    def _decode(self, sess: Session, hidden: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.index in sess.cache_valid:
            q = hidden.shape[1]
            valid = torch.cat([sess.cache_valid[self.index], torch.ones(hidden.shape[0], q, dtype=torch.bool,
                                                                        device=hidden.device)], dim=1)
            sess.cache_valid[self.index] = valid
            kwargs["attention_mask"] = self._pruner[0].mask(valid, q, hidden.dtype)
        return self.layer(hidden, *args, **kwargs)


class LLMPruner:
    """Stage-3 pruning installed around the decoder layers of an HF causal LM.

    Example::

        pruner = LLMPruner(hf_model, MeteorPolicy(layers=[4, 12, 20], heads=5, lam=50))
        with pruner.session(visual_start, visual_len, attention_mask=mask) as sess:
            out = hf_model.generate(inputs_embeds=emb, attention_mask=mask, max_new_tokens=16)
        sess.kept      # {layer: [kept visual indices per sample]}
        pruner.remove()  # the model is exactly as before
    """

    def __init__(self, model: nn.Module, policy: Any) -> None:
        self.model = model
        self.decoder = decoder_of(model)
        self.num_layers = len(self.decoder.layers)
        self.policy = policy
        self.padding_masks = takes_padding_masks(model)
        policy.validate(self.num_layers, self._num_heads())
        #: score layer → the pruning layer it scores for (one each: a policy scores at a fixed offset)
        self.score_layers = {policy.score_layer(p): p for p in policy.layers}
        self.current: Session | None = None
        self._originals = list(self.decoder.layers)
        self.decoder.layers = nn.ModuleList([_PrunableLayer(layer, i, self) for i, layer in enumerate(self._originals)])
        self._hook = self.decoder.register_forward_pre_hook(self._record_positions, with_kwargs=True)

    def _record_positions(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Keep the position ids the decoder is called with at prefill (M-RoPE's 3-D ids live only there)."""
        sess = self.current
        if sess is not None and sess.phase == "prefill":
            sess.decoder_position_ids = kwargs.get("position_ids")

    def _num_heads(self) -> int:
        return int(text_config(self.model).num_attention_heads)

    def mask(self, valid_keys: torch.Tensor, q_len: int, dtype: torch.dtype) -> torch.Tensor:
        """The attention mask of a pruned layer: (B, K) bool for flash kernels, else additive 4-D."""
        if self.padding_masks:
            return valid_keys
        return additive_mask(valid_keys, q_len, dtype)

    def remove(self) -> None:
        """Put the original layers back."""
        self.decoder.layers = nn.ModuleList(self._originals)
        self._hook.remove()

    @contextlib.contextmanager
    def session(
        self,
        visual_start: Sequence[int] | torch.Tensor,
        visual_len: Sequence[int] | torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        prompt_len: Sequence[int] | torch.Tensor | None = None,
        replay: dict[int, list[torch.Tensor]] | None = None,
    ) -> Iterator[Session]:
        """Prune during the next forward (the prefill); later forwards decode against it.

        Args:
            visual_start, visual_len: (B,) where each sample's visual tokens sit in the input.
            attention_mask: (B, L) 1 for real tokens, 0 for (left) padding; None = no padding.
            prompt_len: (B,) end of each prompt; tokens after it (e.g. generated answers in a
                replay forward) are never queries. None = the whole input is the prompt.
            replay: kept indices recorded by an earlier session (``sess.kept``) to apply as is.
        """
        t = lambda v: torch.as_tensor(v, dtype=torch.long)  # noqa: E731
        sess = Session(self, attention_mask, t(visual_start), t(visual_len),
                       None if prompt_len is None else t(prompt_len), replay)
        self.current = sess
        try:
            yield sess
        finally:
            self.current = None

    # -- the two steps at a pruning layer ----------------------------------------------------

    def score(self, sess: Session, layer: nn.Module, index: int, hidden: torch.Tensor,
              pos_emb: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Compute the policy's scores from the input of layer ``index`` (replay: nothing to do)."""
        if sess.replay is not None:
            return
        st = sess.state
        assert st is not None
        if hasattr(self.policy, "score_states"):  # a policy with its own scores (DART, SparseVLM)
            sess._scores[index] = self.policy.score_states(layer, hidden, pos_emb, sess)
            return
        q_idx, q_valid = query_index(st.query)
        with torch.no_grad():
            probs = query_attention(layer, hidden, pos_emb, q_idx, q_valid, st.valid)  # (B, H, Q, L)
        vis = sess.visual_indices()
        sess._scores[index] = [probs[b][:, q_valid[b]][:, :, vis[b]] for b in range(len(vis))]  # (H, Q_b, N_b)

    def prune(self, sess: Session, p: int, hidden: torch.Tensor) -> torch.Tensor:
        st = sess.state
        assert st is not None
        vis = sess.visual_indices()
        sess.entering[p] = [len(v) for v in vis]
        if sess.replay is not None:
            kept = [k.to(hidden.device) for k in sess.replay[p]]
        else:
            attn = sess._scores.pop(self.policy.score_layer(p))
            if hasattr(self.policy, "select_states"):
                kept = self.policy.select_states(p, attn, hidden, sess, self.decoder)
            else:
                kept = [self.policy.select(p, a, n, sess, b) for b, (a, n) in enumerate(zip(attn, sess.entering[p]))]
            if all(n == 0 for n in sess.entering[p]) and not sess.warned_no_visual:
                import warnings

                warnings.warn("Stage 3: the prompt has no visual tokens; nothing is pruned", stacklevel=2)
                sess.warned_no_visual = True
        sess.kept[p] = [k.cpu() for k in kept]
        if not sess.pruned and all(len(k) == n for k, n in zip(kept, sess.entering[p])):
            return hidden  # nothing dropped yet: leave HF's own masks and rotary embeddings in place
        keep = st.valid & ~st.visual
        for b, (v, k) in enumerate(zip(vis, kept)):
            keep[b, v[k]] = True
        new_state, index = st.repack(keep)
        hidden = torch.gather(hidden, 1, index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        sess.state = new_state
        sess.pos_emb = self.decoder.rotary_emb(hidden, position_ids=new_state.rotary_position_ids())
        sess.layer_mask = self.mask(new_state.valid, new_state.valid.shape[1], hidden.dtype)
        sess.pruned = True
        return hidden


__all__ = ["LLMPruner", "PackedState", "Session", "additive_mask", "apply_rope", "decoder_of", "query_attention",
           "query_index", "takes_padding_masks", "text_config"]
