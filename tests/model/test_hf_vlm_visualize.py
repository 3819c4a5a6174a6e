"""``meteor infer --visualize`` on transformers VLMs: every visual token on its grid, Stage-3 panels as kept."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from meteor_cli.visualize import read_panels

from .hf_vlm_builders import BUILDERS, images

#: Visual-span grids of one 80x48 image (landscape: LLaVA crops its centre, NeXT picks the 64x32 pinpoint).
#: NeXT: 2x2 tiles = an 8x8 grid, unpadded to 4 rows of 8 (+ 4 newline tokens); Qwen2-VL: 84x56 -> 6x4 patches -> 3x2.
GRIDS = {"llava": {"vision": [4, 4]}, "llava_next": {"base": [4, 4], "tiles": [4, 8]}, "qwen2_vl": {"vision": [2, 3]}}


@pytest.mark.parametrize("family", list(BUILDERS))
def test_infer_visualize_draws_the_kept_tokens(cli, hf_vlm_dirs, tmp_path, family):
    d = str(hf_vlm_dirs[family])
    images(1, sizes=[(80, 48)])[0].save(tmp_path / "img.png")
    res = cli("prune-llm", "--model", d, "--method", "fixed", "--layers", "1,3", "--keep", "5,3", "--heads", "2",
              "--out", "p.json")
    assert res.exit_code == 0, res.output
    res = cli("infer", "--model", d, "--image", "img.png", "--prompt", "what color", "--prune-llm", "p.json",
              "--max-new-tokens", "1", "--visualize", "viz", "--out", "a.jsonl", "-q")
    assert res.exit_code == 0, res.output
    row = json.loads((tmp_path / "a.jsonl").read_text().splitlines()[0])
    meta = row["metadata"]
    assert meta["stage3"]["kept"] == [5, 3]
    panels = read_panels(tmp_path / row["visualization"])
    grids = GRIDS[family]
    assert {p["grid_name"]: p["grid"] for p in panels} == grids
    by = {(p["grid_name"], p["stage"]): p["kept"] for p in panels}
    on_grids = sum(r * c for r, c in grids.values())
    newlines = meta["visual_tokens"] - on_grids  # LLaVA-NeXT: one newline token per row of the tile grid
    assert newlines == (4 if family == "llava_next" else 0)
    assert sum(by[(g, "input")] for g in grids) == on_grids  # every grid token drawn before pruning
    for j, (layer, kept) in enumerate(zip((1, 3), (5, 3))):  # drawn per layer; newline tokens are on no grid
        drawn = [by[(g, f"stage3/{layer}")] for g in grids]
        assert kept - newlines <= sum(drawn) <= kept
        assert sum(drawn) == kept or family == "llava_next"
        assert drawn == [meta["stage3"]["per_encoder"][g][j] for g in grids]
    with Image.open(tmp_path / row["visualization"]) as im:
        assert im.size[0] > 0 and im.text["meteor.prompt"] == "what color"


def test_layout_positions_follow_the_pruned_indices(hf_vlm_dirs):
    """Stage-3 panels hold the ORIGINAL raster positions of the kept span tokens (chained across layers)."""
    from meteor_cli.model.checkpoint import load_model
    from meteor_cli.pruning.llm_policies import make_policy
    from meteor_cli.pruning.llm_pruner import LLMPruner

    vlm = load_model(str(hf_vlm_dirs["llava_next"]))
    pol = make_policy("fixed", layers=[1, 3], keep=[9, 4], heads=2)
    pol.validate(4, 4)
    pruner = LLMPruner(vlm.llm, pol)
    with vlm.kept_recorder() as rec:
        _, inputs, vis, sess = vlm.generate(images(1, sizes=[(80, 48)]), ["what color"], max_new_tokens=1,
                                            stage3=pruner, details=True)
    trace = rec.traces(vis, sess)[0]
    lay = vlm.token_layout(inputs, 0, (80, 48))
    first = [int(i) for i in sess.kept[1][0]]
    second = [first[int(i)] for i in sess.kept[3][0]]
    for layer, idx in ((1, first), (3, second)):
        for g in ("base", "tiles"):
            want = sorted(lay.owners[i][1] for i in idx if lay.owners[i] is not None and lay.owners[i][0] == g)
            got = next(p.kept for p in trace.panels if p.grid == g and p.stage == f"stage3/{layer}")
            assert got == want
