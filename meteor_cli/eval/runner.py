"""Run a model over a benchmark's questions with any combination of the three pruning stages.

Records per sample what users of pruning tools keep asking for: the output, whether it is
correct, the tokens kept at every stage (Stage 1 totals, Stage 2 per encoder, Stage 3 per LLM
layer and layer-averaged) and the time the batch took.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch



def install_pruning(vlm: Any, allocation: dict[str, Any] | None, prune_llm: dict[str, Any] | None, seed: int = 0,
                    stage1_method: str | None = None, stage1_options: dict[str, Any] | None = None) -> Any:
    """Hook Stages 1-2 from an allocation body into ``vlm``; return an LLMPruner (Stage 3) or None.

    ``stage1_method``: a registered Stage-1 policy overriding the allocation's ``stage1.method``
    (``stage1_options``: its options, over the allocation's ``stage1.options``); Stage 2 runs the
    registered policy named by the allocation's ``stage2.method`` (default ``meteor``).
    """
    from meteor_cli.pruning.stage1 import build_stage1
    from meteor_cli.pruning.stage2 import build_stage2

    vlm.stage1 = vlm.stage2 = None
    if allocation is not None and callable(getattr(vlm, "require_stage1", None)):
        vlm.require_stage1("--allocation (Stages 1-2)")  # a transformers VLM whose tower has no Stage-1 adapter
    if allocation is not None and not getattr(vlm, "encoders", None):
        from meteor_cli.errors import UsageError

        raise UsageError(f"--allocation (Stages 1-2) is for models with prunable encoders, not a {type(vlm).__name__}",
                         "drop --allocation; Stage 3 (--prune-llm) runs on this model")
    if allocation is not None:
        vlm.stage1 = build_stage1(allocation, vlm.encoders, stage1_method, seed=seed, options=stage1_options)
        grids = [(a.cfg.grid, a.cfg.grid) for a in vlm.encoders.values()]
        vlm.stage2 = build_stage2(allocation, seed=seed, grids=grids)  # the registered policy of stage2.method
    if prune_llm is None:
        return None
    from meteor_cli.pruning.llm_policies import make_policy
    from meteor_cli.pruning.llm_pruner import LLMPruner

    settings = {k: v for k, v in prune_llm.items() if k not in ("method", "model", "calibration")}
    return LLMPruner(vlm.llm, make_policy(prune_llm["method"], **settings))


def images_for(vlm: Any, images: Sequence[Any]) -> Any:
    """PIL images as ``vlm`` takes them: its own ``image_batch`` (transformers VLMs: the processor
    resizes), else a (B, 3, S, S) tensor squared as the model's ``image_tensor`` does it (the
    largest encoder resolution; EAGLE releases pad to a square first)."""
    if hasattr(vlm, "image_batch"):
        return vlm.image_batch(images)
    return torch.stack([vlm.image_tensor(im) for im in images])


def _token_record(inputs: Any, vis: Any, sess: Any, b: int, n_layers: int) -> dict[str, Any]:
    """Sample ``b``'s token counts after a ``generate(..., details=True)``: visual tokens into the LLM,
    prompt text tokens, per encoder, and Stage 3's kept counts per pruning layer with their layer average."""
    from meteor_cli.pruning.schedule import layer_averaged_tokens

    n_vis = inputs.visual_len[b]
    if sess is not None and sess.kept:
        layers = sorted(sess.kept)
        kept = [len(sess.kept[p][b]) for p in layers]
        s3 = {"layers": layers, "kept": kept, "layer_averaged": layer_averaged_tokens(n_vis, layers, kept, n_layers)}
    else:
        s3 = {"layers": [], "kept": [], "layer_averaged": float(n_vis)}
    return {"visual_tokens": n_vis, "text_tokens": int(inputs.attention_mask[b].sum()) - n_vis,
            "per_encoder": {k: v[b] for k, v in vis.per_encoder.items()}, "stage3": s3}


# ------------------------------------------------------------------------------------------------
# meteor eval: benchmark items × evaluation settings, rows streamed to a per-sample sink
# ------------------------------------------------------------------------------------------------


@dataclass
class EvalSetting:
    """One (method, budget) setting of a ``meteor eval`` run: what to install before generating."""

    method: str
    budget: int | None = None
    allocation: dict[str, Any] | None = None
    prune_llm: dict[str, Any] | None = None
    stage1_method: str | None = None
    stage1_options: dict[str, Any] | None = None  # ``--stage1-option`` values for the Stage-1 policy
    #: meteor's Stage 3 at a budget: its scale is calibrated in the run so the layer-averaged
    #: visual tokens are this many (``meteor_cli.eval.methods.calibrate_meteor``).
    calibrate_to: float | None = None
    #: meteor's Stage 3 where the span depends on the image (LLaVA-NeXT tiles, Qwen2-VL): the scale is
    #: calibrated so the layer-averaged visual tokens are this FRACTION of each sample's span into the
    #: LLM on average (``calibrate_to`` is then None).
    calibrate_ratio: float | None = None

    @property
    def label(self) -> str:
        return self.method if self.budget is None else f"{self.method}@{self.budget}"

    def identity(self) -> dict[str, Any]:
        """What makes two settings the same run (JSON-ready)."""
        return {"method": self.method, "budget": self.budget, "allocation": self.allocation,
                "prune_llm": self.prune_llm, "stage1_method": self.stage1_method,
                **({"stage1_options": self.stage1_options} if self.stage1_options else {}),
                **({"calibrate_to": self.calibrate_to} if self.calibrate_to is not None else {}),
                **({"calibrate_ratio": self.calibrate_ratio} if self.calibrate_ratio is not None else {})}

    @classmethod
    def from_identity(cls, s: dict[str, Any]) -> EvalSetting:
        """The setting an :meth:`identity` describes (``meteor eval merge``)."""
        return cls(s["method"], s["budget"], s["allocation"], s["prune_llm"], s["stage1_method"],
                   s.get("stage1_options"), s.get("calibrate_to"), s.get("calibrate_ratio"))


def _chunks(seq: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


@torch.no_grad()
def evaluate_items(vlm: Any, items: Sequence[tuple[int, Any]], settings: Sequence[EvalSetting], *,
                   done: set[tuple[str, int]], sink: Callable[[list[dict[str, Any]]], None], run_id: str,
                   batch_size: int = 1, max_new_tokens: int = 16, seed: int = 0,
                   progress: Callable[[int], None] | None = None,
                   prepare: Callable[[EvalSetting], None] | None = None) -> int:
    """Generate answers for every (setting, item) not in ``done``; rows go to ``sink`` batch by batch.

    ``items`` are ``(pos, Item)`` with ``pos`` the item's place in the whole (unsharded) run, so
    rows from shards and resumed runs sort back into one order. An image that cannot be read
    gives a row with ``skipped`` (the reason) instead of an answer. ``prepare(setting)`` runs
    first for every setting with work left (e.g. calibrating meteor's Stage 3). Each setting is installed in
    turn and removed before the next (Stage 3's layer wrappers included), so one loaded model
    gives every setting exactly what a run of that setting alone gives. Returns the rows written.
    """
    from meteor_cli.pruning.llm_pruner import text_config

    n_layers = text_config(vlm.llm).num_hidden_layers
    written = 0
    for setting in settings:
        pending = [(pos, it) for pos, it in items if (setting.label, pos) not in done]
        if not pending:
            continue
        if prepare is not None:
            prepare(setting)
        stage3 = install_pruning(vlm, setting.allocation, setting.prune_llm, seed=seed,
                                 stage1_method=setting.stage1_method, stage1_options=setting.stage1_options)
        try:
            written += _evaluate_setting(vlm, setting, pending, stage3, sink=sink, run_id=run_id, batch_size=batch_size,
                                         max_new_tokens=max_new_tokens, n_layers=n_layers, progress=progress)
        finally:  # the next setting starts from the unpruned model
            if stage3 is not None:
                stage3.remove()
            vlm.stage1 = vlm.stage2 = None
    return written


def _evaluate_setting(vlm: Any, setting: EvalSetting, pending: Sequence[tuple[int, Any]], stage3: Any, *,
                      sink: Callable[[list[dict[str, Any]]], None], run_id: str, batch_size: int,
                      max_new_tokens: int, n_layers: int, progress: Callable[[int], None] | None) -> int:
    from meteor_cli.eval.benchmarks.base import open_image

    written = 0
    for batch in _chunks(pending, batch_size):
        rows: list[dict[str, Any]] = []
        ok: list[tuple[int, Any, Any]] = []
        for pos, it in batch:
            head = {"run": run_id, "pos": pos, "method": setting.method, "budget": setting.budget,
                    "setting": setting.label}
            try:
                ok.append((pos, it, open_image(it.image)))
            except Exception as exc:  # OSError, bad base64, decompression bomb: skip and count
                rows.append({**head, **it.record(), "skipped": f"{type(exc).__name__}: {exc}"})
        if ok:
            imgs = images_for(vlm, [im for _, _, im in ok])
            prompts = [it.prompt if "<image>" in it.prompt else "<image>\n" + it.prompt for _, it, _ in ok]
            t0 = time.perf_counter()
            texts, inputs, vis, sess = vlm.generate(imgs, prompts, max_new_tokens=max_new_tokens, stage3=stage3,
                                                    details=True)
            dt = (time.perf_counter() - t0) / len(ok)
            for b, (pos, it, _) in enumerate(ok):
                rows.append({"run": run_id, "pos": pos, "method": setting.method, "budget": setting.budget,
                             "setting": setting.label, **it.record(), "text": texts[b],
                             **_token_record(inputs, vis, sess, b, n_layers), "seconds": round(dt, 4)})
        rows.sort(key=lambda r: r["pos"])
        sink(rows)
        written += len(rows)
        if progress is not None:
            progress(len(batch))
    return written
