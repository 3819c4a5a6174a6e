"""Pictures of the visual tokens METEOR kept: one panel per encoder and pruning stage.

The data model is family-neutral, so any model that knows where its kept tokens came from can be
drawn:

* :class:`KeptTrace` — per *grid* (an encoder's patch grid, or the common grid of a
  pre-projection model) its size, and a list of :class:`Panel` s: for one grid and one stage
  (a Stage-1 pruning point, Stage 2, a Stage-3 layer) the ORIGINAL raster positions still kept;
* :func:`render_kept` — the image drawn once per panel, pruned patches dimmed, ``kept/total``
  in each panel's title; the panel layout is stored in the PNG (text chunk ``meteor.panels``) so
  scripts and tests can find every panel and cell without re-deriving the geometry.

Producing a trace
    meteor's :class:`~meteor_cli.model.vlm.MultiEncoderVLM` carries each token's original grid
    position through every stage (``TokenState.pos`` inside the encoders, ``VisualTokens.pos``
    after fusion, and Stage 3's kept indices into the visual span), and :class:`KeptRecorder`
    turns one ``generate(details=True)`` call into one trace per sample. Another model family
    (EAGLE checkpoints, Hugging Face VLMs) provides positions either by giving its model a
    ``kept_recorder()`` method returning an object with the same two methods as
    :class:`KeptRecorder` (a context manager, then ``traces(...)``), which :func:`recorder_for`
    prefers, or by filling a :class:`KeptTrace` itself and calling :func:`render_kept`.

Example::

    with KeptRecorder(vlm) as rec:
        texts, inputs, vis, sess = vlm.generate(images, prompts, stage3=pruner, details=True)
    trace = rec.traces(vis, sess)[0]
    render_kept(pil_image, trace).save("kept.png")     # or save_kept(…) for an atomic write
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Brightness of a pruned patch relative to the picture (kept patches are drawn unchanged).
DIM = 0.3
#: Target side of one panel in pixels (each patch is drawn as a square of ``PANEL // grid`` pixels, at least 2).
PANEL = 160
TITLE_H = 16
LABEL_W = 72
GAP = 6


@dataclass
class Panel:
    """One grid at one stage.

    Attributes:
        grid: the grid's name (an encoder's name, or ``fused``).
        stage: the column key: ``stage1/0``… (the j-th Stage-1 point), ``stage2``, ``stage3/L``.
        title: what the panel says before ``kept/total`` (``S1 blk 2``, ``S2``, ``S3 L4``).
        kept: original raster positions (row-major on the grid) still present after that stage.
        at: the encoder block (Stage 1) or LLM layer (Stage 3) the stage acts at; None for Stage 2.
    """

    grid: str
    stage: str
    title: str
    kept: list[int]
    at: int | None = None


@dataclass
class KeptTrace:
    """Where the kept tokens of one sample sit, stage by stage."""

    grids: dict[str, tuple[int, int]]  # name → (rows, columns)
    panels: list[Panel] = field(default_factory=list)
    #: grid name → the part of the image it covers, as fractions (x0, y0, x1, y1) (a centre crop);
    #: a grid not named covers the whole image.
    crops: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)

    def columns(self) -> list[str]:
        """Stage keys in the order they happen (panels' first appearance)."""
        return list(dict.fromkeys(p.stage for p in self.panels))

    def counts(self) -> dict[str, dict[str, int]]:
        """``{stage: {grid: kept}}``."""
        out: dict[str, dict[str, int]] = {}
        for p in self.panels:
            out.setdefault(p.stage, {})[p.grid] = len(p.kept)
        return out


# --------------------------------------------------------------------------------------------
# Recording a trace from meteor's own model
# --------------------------------------------------------------------------------------------


class KeptRecorder:
    """Record the original positions kept by a :class:`~meteor_cli.model.vlm.MultiEncoderVLM`.

    While the recorder is entered, the model's Stage-1 hook is wrapped (installed as a no-op when
    there is none, which prunes nothing and changes no output); every pruning point stores the
    kept tokens' ``TokenState.pos``. Stage 2 and Stage 3 are read afterwards from what
    ``generate(details=True)`` returns: ``VisualTokens.pos``/``encoder_ids`` and the Stage-3
    session's kept indices into the visual span, chained layer after layer.
    """

    def __init__(self, vlm: Any) -> None:
        self.vlm = vlm
        self._orig: Any = None
        self.stage1: dict[str, list[tuple[int, Any]]] = {}  # encoder → [(block, pos (B, k))] per point
        self.grid_of: dict[str, tuple[int, int]] = {}

    def __enter__(self) -> KeptRecorder:
        self._orig = self.vlm.stage1
        self.stage1, self.grid_of = {}, {}
        self.vlm.stage1 = self._hook
        return self

    def __exit__(self, *exc: Any) -> None:
        self.vlm.stage1 = self._orig

    def _hook(self, name: str, j: int, state: Any, adapter: Any) -> Any:
        out = self._orig(name, j, state, adapter) if self._orig is not None else None
        idx = out[0] if isinstance(out, tuple) else out
        pos = state.pos if idx is None else state.pos.gather(1, idx)
        self.stage1.setdefault(name, []).append((int(adapter.prune_points[j]), pos.detach().cpu()))
        self.grid_of[name] = (int(state.grid[0]), int(state.grid[1]))
        return out

    def _grid(self, name: str) -> tuple[int, int]:
        if name in self.grid_of:
            return self.grid_of[name]
        g = int(self.vlm.encoders[name].cfg.grid)
        return (g, g)

    def traces(self, vis: Any, sess: Any = None) -> list[KeptTrace]:
        """One :class:`KeptTrace` per sample of the last ``generate`` (``vis``: its VisualTokens;
        ``sess``: its Stage-3 session, or None)."""
        names = list(self.vlm.encoders)
        fused = getattr(self.vlm.cfg, "fusion", "post-projection") == "pre-projection"
        B = int(vis.pos.shape[0])
        out = []
        for b in range(B):
            grids = {n: self._grid(n) for n in names}
            panels = [Panel(n, f"stage1/{j}", f"S1 blk {blk}", sorted(int(x) for x in pos[b].tolist()), blk)
                      for n in names for j, (blk, pos) in enumerate(self.stage1.get(n, []))]
            pos_b = [int(x) for x in vis.pos[b].tolist()]
            if fused:
                g = int(self.vlm.cfg.grid)
                grids["fused"] = (g, g)
                owners = ["fused"] * len(pos_b)
            else:
                ids = vis.encoder_ids if vis.encoder_ids.dim() == 1 else vis.encoder_ids[b]
                owners = [names[int(i)] for i in ids.tolist()]
                panels += [Panel(n, "stage2", "S2", sorted(p for p, o in zip(pos_b, owners) if o == n)) for n in names]
            current = list(range(len(pos_b)))
            for layer in sorted(sess.kept) if sess is not None and sess.kept else []:
                current = [current[int(i)] for i in sess.kept[layer][b].tolist()]
                for n in (["fused"] if fused else names):
                    panels.append(Panel(n, f"stage3/{layer}", f"S3 L{layer}",
                                        sorted(pos_b[i] for i in current if owners[i] == n), int(layer)))
            out.append(KeptTrace(grids, panels))
        return out


def recorder_for(model: Any) -> Any:
    """The recorder of kept positions for ``model``: its own ``kept_recorder()`` when it has one
    (other model families), else :class:`KeptRecorder` (meteor's MultiEncoderVLM)."""
    own = getattr(model, "kept_recorder", None)
    return own() if callable(own) else KeptRecorder(model)


def summarize(trace: KeptTrace, encoders: Sequence[str]) -> dict[str, Any]:
    """Token counts per stage and encoder, as ``meteor infer`` reports them::

        {"stage1": {enc: {"blocks": [...], "kept": [...], "native": N}},
         "stage2": {enc: kept}, "stage3": {"layers": [...], "per_encoder": {enc: [...]}}}
    """
    s1: dict[str, Any] = {}
    s2: dict[str, int] = {}
    s3_layers: list[int] = []
    s3: dict[str, list[int]] = {}
    for p in trace.panels:
        if p.stage.startswith("stage1/"):
            h, w = trace.grids[p.grid]
            e = s1.setdefault(p.grid, {"blocks": [], "kept": [], "native": h * w})
            e["blocks"].append(p.at)
            e["kept"].append(len(p.kept))
        elif p.stage == "stage2":
            s2[p.grid] = len(p.kept)
        elif p.stage.startswith("stage3/"):
            layer = int(p.at if p.at is not None else p.stage.split("/")[1])
            if layer not in s3_layers:
                s3_layers.append(layer)
            s3.setdefault(p.grid, []).append(len(p.kept))
    for name in encoders:
        if name in trace.grids and name not in s1:
            h, w = trace.grids[name]
            s1[name] = {"blocks": [], "kept": [], "native": h * w}
    return {"stage1": s1, "stage2": s2, "stage3": {"layers": s3_layers, "per_encoder": s3}}


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def layout(trace: KeptTrace) -> tuple[tuple[int, int], list[dict[str, Any]]]:
    """Canvas size and, per panel, its box ``[x0, y0, x1, y1]`` (the picture, title excluded),
    grid ``[rows, cols]``, patch side ``cell`` in pixels, and ``kept``/``total``."""
    rows = [g for g in trace.grids if any(p.grid == g for p in trace.panels)]
    cols = trace.columns()
    cell = {g: max(2, PANEL // max(trace.grids[g])) for g in rows}
    size = {g: (cell[g] * trace.grids[g][1], cell[g] * trace.grids[g][0]) for g in rows}
    col_w = max((w for w, _ in size.values()), default=PANEL)
    y, boxes = GAP, []
    row_top: dict[str, int] = {}
    for g in rows:
        row_top[g] = y
        y += TITLE_H + size[g][1] + GAP
    for p in trace.panels:
        c = cols.index(p.stage)
        x0 = LABEL_W + c * (col_w + GAP)
        y0 = row_top[p.grid] + TITLE_H
        w, h = size[p.grid]
        gh, gw = trace.grids[p.grid]
        boxes.append({"grid_name": p.grid, "stage": p.stage, "title": p.title, "box": [x0, y0, x0 + w, y0 + h],
                      "grid": [gh, gw], "cell": cell[p.grid], "kept": len(p.kept), "total": gh * gw})
    width = LABEL_W + len(cols) * (col_w + GAP)
    return (max(width, LABEL_W + col_w), max(y, TITLE_H + GAP)), boxes


def render_kept(image: Any, trace: KeptTrace) -> Any:
    """A PIL image: one row per grid, one column per stage; in each panel the picture with the
    patches pruned by then dimmed to :data:`DIM` brightness, titled ``TITLE kept/total``. The
    layout (:func:`layout`) is attached as ``img.info["meteor.panels"]`` and written into the PNG
    by :func:`save_kept`."""
    from PIL import Image, ImageDraw

    (W, H), boxes = layout(trace)
    canvas = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font, small = _font(11), _font(10)
    rgb = image.convert("RGB")
    base_cache: dict[str, tuple[Any, Any]] = {}
    labelled: set[str] = set()
    for p, box in zip(trace.panels, boxes):
        x0, y0, x1, y1 = box["box"]
        if p.grid not in base_cache:
            src = rgb
            if p.grid in trace.crops:
                fx0, fy0, fx1, fy1 = trace.crops[p.grid]
                src = rgb.crop((round(fx0 * rgb.width), round(fy0 * rgb.height), round(fx1 * rgb.width),
                                round(fy1 * rgb.height)))
            base = src.resize((x1 - x0, y1 - y0), Image.BILINEAR)
            base_cache[p.grid] = (base, Image.eval(base, lambda v: int(v * DIM)))
        base, dim = base_cache[p.grid]
        gh, gw = box["grid"]
        mask = Image.new("L", (gw, gh), 0)
        px = mask.load()
        for pos in p.kept:
            px[pos % gw, pos // gw] = 255
        canvas.paste(Image.composite(base, dim, mask.resize(base.size, Image.NEAREST)), (x0, y0))
        draw.text((x0, y0 - TITLE_H + 2), f"{p.title} {box['kept']}/{box['total']}", fill=(0, 0, 0), font=small)
        if p.grid not in labelled:
            draw.text((4, y0 + 2), p.grid, fill=(0, 0, 0), font=font)
            labelled.add(p.grid)
    canvas.info["meteor.panels"] = json.dumps(boxes)
    return canvas


def save_kept(path: str | Path, image: Any, trace: KeptTrace, meta: Mapping[str, Any] | None = None) -> Path:
    """Render and write a PNG atomically, with the panel layout (and ``meta``) in its text chunks."""
    from PIL.PngImagePlugin import PngInfo

    from meteor_cli.artifacts import atomic_path

    img = render_kept(image, trace)
    info = PngInfo()
    info.add_text("meteor.panels", img.info["meteor.panels"])
    for k, v in (meta or {}).items():
        info.add_text(f"meteor.{k}", v if isinstance(v, str) else json.dumps(v))
    target = Path(path)
    with atomic_path(target, suffix=".png") as tmp:
        img.save(tmp, format="PNG", pnginfo=info)
    return target


def read_panels(path: str | Path) -> list[dict[str, Any]]:
    """The panel layout stored in a PNG written by :func:`save_kept`."""
    from PIL import Image

    with Image.open(path) as im:
        return json.loads(im.text["meteor.panels"])


__all__ = ["KeptRecorder", "KeptTrace", "Panel", "layout", "read_panels", "recorder_for", "render_kept", "save_kept",
           "summarize"]
