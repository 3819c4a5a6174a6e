"""Released EAGLE checkpoints through the CLI: ``--template``, and Stages 1–2 on the shared grid positions.

The checkpoints are the tiny random ones of tests/model/eagle_release.py, in the release layout
(a 128-px mixture, a 4×4 shared grid, every tower kind).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from meteor_cli import artifacts as A
from meteor_cli.errors import ExitCode


def _image(path: Path, seed: int = 0) -> Path:
    import numpy as np
    from PIL import Image

    Image.fromarray((np.random.default_rng(seed).random((48, 64, 3)) * 255).astype("uint8")).save(path)
    return path


def _rows(res) -> list[dict]:
    assert res.exit_code == 0, res.stderr
    return [json.loads(x) for x in res.stdout.splitlines() if x.strip()]


# ------------------------------------------------------------------------------------------------
# --template
# ------------------------------------------------------------------------------------------------


def test_template_flag_overrides_the_tokenizers_choice(x4_plus, tmp_path, cli):
    """A Plus-style release picks ``eagle_llama3`` from its tokenizer; ``--template vicuna_v1``
    answers exactly as the model does when prompted in that template, which is another input."""
    from meteor_cli.model.checkpoint import load_model

    img = _image(tmp_path / "img.png")
    args = ["infer", "--model", str(x4_plus), "--image", str(img), "--prompt", "<image>\nwhat is shown",
            "--max-new-tokens", "6", "--device", "cpu"]
    default = _rows(cli(*args))[0]["text"]
    flagged = _rows(cli(*args, "--template", "vicuna_v1"))[0]["text"]
    vlm = load_model(str(x4_plus))
    assert vlm.cfg.template == "eagle_llama3"
    from PIL import Image

    pixels = vlm.image_tensor(Image.open(img).convert("RGB"))[None]
    prompt = ["<image>\nwhat is shown"]
    want_default = vlm.generate(pixels, prompt, max_new_tokens=6)[0]
    embeds_default = vlm.prepare(pixels, prompt)[0].embeds
    vlm.cfg.template = "vicuna_v1"
    want_flagged = vlm.generate(pixels, prompt, max_new_tokens=6)[0]
    assert vlm.prepare(pixels, prompt)[0].embeds.shape != embeds_default.shape  # the flag changes the prompt
    assert (default, flagged) == (want_default, want_flagged)
    assert default != flagged


@pytest.mark.parametrize("command", ["infer", "eval", "prune-llm"])
def test_unknown_template_lists_the_known_ones(x5, tmp_path, cli, command):
    args = {"infer": ["--image", str(_image(tmp_path / "i.png")), "--prompt", "<image>\nwhat"],
            "eval": ["--data", str(tmp_path)],
            "prune-llm": ["--heads", "2", "--calibrate", "--data", "d.json", "--target-tokens", "8"]}[command]
    res = cli(command, "--model", str(x5), *args, "--template", "vicuna", "--device", "cpu")
    assert res.exit_code == ExitCode.USAGE, res.stderr
    assert "--template 'vicuna'" in res.stderr
    for name in ("vicuna_v1", "eagle_llama3", "eagle_yi_chatml"):
        assert name in res.stderr


def test_prune_llm_calibrates_in_the_flagged_template(x4_plus, tmp_path, cli):
    from meteor_cli.data.synthvqa import generate

    generate(tmp_path / "sv", n_train=2, n_eval=0, seed=0)
    base = ["prune-llm", "--model", str(x4_plus), "--layers", "1", "--heads", "2", "--device", "cpu", "-q"]
    res = cli(*base, "--template", "vicuna_v1", "--out", "p.json")
    assert res.exit_code == ExitCode.USAGE and "--template is used by --calibrate only" in res.stderr
    res = cli(*base, "--calibrate", "--data", str(tmp_path / "sv" / "train.json"), "--count", "2",
              "--target-tokens", "8", "--template", "vicuna_v1", "--out", "p.json")
    assert res.exit_code == 0, res.stderr
    from meteor_cli.artifacts import read_artifact

    assert read_artifact(Path("p.json"), "meteor.prune-llm").body["calibration"]["template"] == "vicuna_v1"


# ------------------------------------------------------------------------------------------------
# Stages 1–2 on the shared grid positions (pre-projection fusion)
# ------------------------------------------------------------------------------------------------

NATIVE = {"clip": 9, "convnext": 16, "sam": 16, "det": 64, "pix2struct": 36}  # tokens of each tiny tower


@pytest.fixture(scope="module")
def pipeline(x5, tmp_path_factory):
    """synth data → rank-estimate → allocate (pruned, and at full budget) on the tiny X5, through the CLI."""
    from typer.testing import CliRunner

    from meteor_cli.cli.app import app
    from meteor_cli.data.synthvqa import generate

    d = tmp_path_factory.mktemp("pipe")
    generate(d / "sv", n_train=6, n_eval=3, seed=0)
    run = CliRunner()

    def cli(*args: str):
        res = run.invoke(app, list(args), env={"COLUMNS": "200"})
        assert res.exit_code == 0, (args, res.stderr)
        return res

    cli("rank-estimate", "--model", str(x5), "--data", str(d / "sv" / "train.json"), "--count", "3", "--device", "cpu",
        "--out", str(d / "ranks.json"), "-q")
    cli("allocate", "--ranks", str(d / "ranks.json"), "--total", "40", "--fusion-keep", "6", "--out",
        str(d / "alloc.json"), "-q")
    cli("allocate", "--ranks", str(d / "ranks.json"), "--total", str(sum(NATIVE.values())), "--fusion-keep", "16",
        "--out", str(d / "full.json"), "-q")
    return d


def _body(path: Path) -> dict:
    from meteor_cli.artifacts import read_artifact

    return read_artifact(path, "meteor.allocation" if "alloc" in path.name or "full" in path.name else "meteor.ranks").body


def test_rank_estimate_and_allocate_on_a_release(pipeline):
    """Transformer towers get three points inside (round(L·j/3)−1), ConvNeXt and SAM their last
    block three times; every point's budgets sum exactly to its total."""
    ranks = _body(pipeline / "ranks.json")["encoders"]
    assert {n: e["tokens"] for n, e in ranks.items()} == NATIVE
    assert {n: e["points"] for n, e in ranks.items()} == {"clip": [0, 0, 1], "convnext": [3, 3, 3], "sam": [1, 1, 1],
                                                          "det": [0, 1, 2], "pix2struct": [0, 0, 1]}
    assert all(len(e["rank"]) == 3 and all(r > 0 for r in e["rank"]) for e in ranks.values())
    alloc = _body(pipeline / "alloc.json")
    enc = alloc["stage1"]["encoders"]
    for b, total in enumerate(alloc["stage1"]["totals"]):
        assert sum(e["keep"][b] for e in enc.values()) == total
    assert alloc["stage1"]["totals"][-1] == 40 and alloc["stage2"]["keep"] == 6
    full = _body(pipeline / "full.json")["stage1"]["encoders"]
    assert {n: e["keep"] for n, e in full.items()} == {n: [k] * 3 for n, k in NATIVE.items()}


def test_eval_and_infer_keep_exactly_the_allocated_positions(x5, pipeline, cli):
    """Stage 1 keeps each tower's budgets at its points (inside clip/det/pix2struct), Stage 2 exactly
    ``stage2.keep`` shared positions for every sample."""
    alloc = _body(pipeline / "alloc.json")
    sv = pipeline / "sv"
    res = cli("eval", "--model", str(x5), "--data", str(sv), "--allocation", str(pipeline / "alloc.json"),
              "--max-new-tokens", "2", "--device", "cpu", "--out", "m.json", "-q")
    assert res.exit_code == 0, res.stderr
    rows = [json.loads(x) for x in Path("m.samples.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["visual_tokens"] == 6 and r["per_encoder"] == {"fused": 6} for r in rows)
    rows = _rows(cli("infer", "--model", str(x5), "--questions", str(sv / "eval" / "questions.jsonl"), "--allocation",
                     str(pipeline / "alloc.json"), "--max-new-tokens", "2", "--device", "cpu", "-q"))
    for r in rows:
        m = r["metadata"]
        assert m["visual_tokens"] == 6
        assert {n: s["kept"] for n, s in m["stage1"].items()} == {n: e["keep"] for n, e in
                                                                  alloc["stage1"]["encoders"].items()}
        assert {n: s["blocks"] for n, s in m["stage1"].items()} == {n: e["points"] for n, e in
                                                                    alloc["stage1"]["encoders"].items()}


def test_full_budget_equals_the_unpruned_release_exactly(x5, pipeline, cli):
    """Budgets equal to every token: logits bit-identical to the unpruned model; the CLI answers alike."""
    from PIL import Image

    from meteor_cli.eval.runner import install_pruning
    from meteor_cli.model.checkpoint import load_model

    vlm = load_model(str(x5))
    img = Image.open(next((pipeline / "sv" / "images" / "eval").glob("*.png"))).convert("RGB")
    pixels = vlm.image_tensor(img)[None]

    def logits():
        with torch.no_grad():
            inputs, vis = vlm.prepare(pixels, ["<image>\nwhat is shown"])
            return vlm.llm(inputs_embeds=inputs.embeds, attention_mask=inputs.attention_mask).logits, vis

    plain, _ = logits()
    install_pruning(vlm, _body(pipeline / "full.json"), None)
    assert vlm.stage1 is not None and vlm.stage2 is not None
    full, vis = logits()
    assert torch.equal(full, plain) and vis.z.shape[1] == 16
    q = ["--questions", str(pipeline / "sv" / "eval" / "questions.jsonl"), "--max-new-tokens", "3", "--device", "cpu",
         "-q"]
    a = _rows(cli("infer", "--model", str(x5), *q))
    b = _rows(cli("infer", "--model", str(x5), "--allocation", str(pipeline / "full.json"), *q))
    assert [r["text"] for r in a] == [r["text"] for r in b]


def test_stage2_alone_keeps_the_unpruned_tokens_of_the_chosen_positions(x5, pipeline):
    """Without Stage-1 pruning, Stage 2 only selects: the tokens are the unpruned model's at the kept
    positions (the projector acts per position; a matmul over fewer rows may round differently), in raster order."""
    from meteor_cli.model.checkpoint import load_model
    from meteor_cli.pruning.stage2 import Stage2

    vlm = load_model(str(x5))
    pixels = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        plain = vlm.encode_images(pixels)
        for method in ("meteor", "random", "divprune"):
            vlm.stage2 = Stage2(5, method)
            vis = vlm.encode_images(pixels)
            assert vis.pos.shape == (2, 5) and torch.equal(vis.pos, vis.pos.sort(1).values)
            torch.testing.assert_close(vis.z, torch.gather(plain.z, 1, vis.pos.unsqueeze(-1).expand(-1, -1, 64)),
                                       rtol=1e-5, atol=1e-6)


def test_position_redundancy_drops_duplicates_and_uncovered_positions_first():
    """METHOD's Stage-2 invariant on positions: the position whose towers duplicate each other is
    dropped first; a position no tower covers any more ranks after every covered one."""
    from meteor_cli.pruning.positions import position_scores, select_positions
    from meteor_cli.pruning.stage2 import Stage2

    E, P = 2, 8
    c = torch.eye(E * P).view(1, E, P, E * P).clone()  # every (tower, position) orthogonal to every other
    c[0, 1, 3] = c[0, 0, 3]  # at position 3 the second tower repeats the first
    covered = torch.ones(1, E, P, dtype=torch.bool)
    for score in ("sum", "mean", "encoder-mean"):
        s = position_scores(c, covered, score)
        assert int(s.argmax()) == 3 and (s[0, torch.arange(P) != 3] == 0).all()
    covered[0, :, 6] = False
    s = position_scores(c, covered, "sum")
    assert torch.isinf(s[0, 6]) and int(torch.topk(s[0], 2).indices[1]) == 3
    # through select_positions, with the contributions as W0·x (identity W0, channels = towers' blocks)
    fused = torch.cat([c[0, 0], c[0, 1]], dim=-1)[None]  # (1, P, 2·E·P)
    w0 = torch.cat([torch.eye(E * P), torch.eye(E * P)], dim=1)
    res = select_positions(Stage2(6, "meteor"), fused, covered, [E * P, E * P], w0)
    assert res.indices.tolist() == [[0, 1, 2, 4, 5, 7]]


def test_divprune_on_positions_picks_among_the_projected_tokens(x5):
    """DivPrune on a release selects what its reference selects: the LLM-input tokens (the shared
    projector's output) at the covered positions, by greedy max-min diversity."""
    from meteor_cli.model.checkpoint import load_model
    from meteor_cli.pruning.divprune import divprune_select
    from meteor_cli.pruning.stage2 import Stage2

    pixels = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        vlm = load_model(str(x5))
        plain = vlm.encode_images(pixels)
        vlm.stage2 = Stage2(7, "divprune")
        vis = vlm.encode_images(pixels)
    for b in range(2):
        assert torch.equal(vis.pos[b], divprune_select(plain.z[b], 7))


def test_stage2_settings_without_meaning_on_positions_are_refused():
    from meteor_cli.errors import UsageError
    from meteor_cli.pruning.positions import select_positions
    from meteor_cli.pruning.stage2 import Stage2

    with pytest.raises(UsageError, match="no meaning"):
        select_positions(Stage2(2, "separate"), torch.rand(1, 4, 6), torch.ones(1, 2, 4, dtype=torch.bool),
                         [3, 3], torch.rand(5, 6))


def test_a_stage2_floor_is_met_by_shared_positions():
    """``meteor allocate``'s default floor (0.5) keeps each encoder's share: on shared positions every
    kept position keeps every encoder, so the selection is the floor-free one."""
    from meteor_cli.pruning.positions import select_positions
    from meteor_cli.pruning.stage2 import Stage2

    g = torch.Generator().manual_seed(0)
    fused, w = torch.rand(2, 6, 6, generator=g), torch.rand(5, 6, generator=g)
    covered = torch.ones(2, 2, 6, dtype=torch.bool)
    free = select_positions(Stage2(3, "meteor", floor=0.0), fused, covered, [3, 3], w)
    floored = select_positions(Stage2(3, "meteor", floor=0.5), fused, covered, [3, 3], w)
    assert torch.equal(free.indices, floored.indices) and free.indices.shape == (2, 3)


def test_normalised_resampling_mixes_only_surviving_tokens(x5):
    """A tower that lost tokens in Stage 1 is resampled by normalised interpolation: a shared
    position reached only by one survivor carries that survivor's value; one reached by none is
    uncovered (zeros, and the position is scored last)."""
    from meteor_cli.model.checkpoint import load_model

    vlm = load_model(str(x5))
    keep = torch.tensor([[0, 63]])  # det (8×8 grid on the 4×4 shared grid): two opposite corners survive

    def hook(name, j, state, adapter):
        return keep if name == "det" and j == 2 else None

    vlm.stage1 = hook
    captured = {}
    real = vlm.encoders["det"].finalize

    def spy(state):
        captured["x"] = state.x
        return real(state)

    vlm.encoders["det"].finalize = spy
    with torch.no_grad():
        from meteor_cli.pruning.stage2 import Stage2

        vlm.stage2 = Stage2(16, "meteor")  # keeps all 16 positions: nothing selected, fused values visible
        states = {n: vlm.run_encoder(n, torch.rand(1, 3, 128, 128)) for n in vlm.encoders}
    off = sum(vlm.encoders[n].width for n in ["clip", "convnext", "sam"])
    fused = {}

    def grab(module, args, out):
        fused["x"] = args[0]

    h = vlm.projectors["fused"][0].register_forward_hook(grab)
    with torch.no_grad():
        vlm._pre_projection(states, 1)
    h.remove()
    det = fused["x"][0, :, off:off + 32]  # (16, 32): the det tower's channels at every shared position
    torch.testing.assert_close(det[0], captured["x"][0, 0], rtol=1e-6, atol=1e-6)  # corner (0, 0): token 0 alone
    torch.testing.assert_close(det[15], captured["x"][0, 1], rtol=1e-6, atol=1e-6)  # corner (3, 3): token 63 alone
    assert (det[5] == 0).all() and (det[10] == 0).all()  # the middle: no survivor within reach


# ------------------------------------------------------------------------------------------------
# train --fusion post-projection from a release
# ------------------------------------------------------------------------------------------------


def test_train_post_projection_from_a_release(x5, pipeline, cli):
    """``train --fusion post-projection`` splits the shared projector: per tower, the first layer is
    its column block of ``mm_projector.0`` (bias copied), the second a copy of ``mm_projector.2``;
    with the projectors frozen the saved ones are exactly those; Stages 1–2 run in the loop and the
    trained checkpoint answers with the allocation's Stage-2 count of tokens."""
    from .eagle_release import stored

    from meteor_cli.model.checkpoint import load_model

    sv = pipeline / "sv"
    res = cli("train", "--model", str(x5), "--data", str(sv / "train.json"), "--fusion", "post-projection",
              "--allocation", str(pipeline / "alloc.json"), "--max-steps", "1", "--batch-size", "2", "--limit", "2",
              "--freeze", "projectors", "--out", "ck", "--device", "cpu", "--json", "-q")
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["steps"] == 1 and summary["final_loss"] is not None and summary["final_loss"] > 0
    vlm = load_model("ck")
    assert vlm.cfg.fusion == "post-projection" and list(vlm.projectors) == list(NATIVE)
    sd = {k: v.float() for k, v in stored(x5).items() if k.startswith("model.mm_projector.")}
    c0 = 0
    for name, p in vlm.projectors.items():
        w = vlm.encoders[name].width
        assert torch.equal(p[0].weight, sd["model.mm_projector.0.weight"][:, c0:c0 + w]), name
        assert torch.equal(p[0].bias, sd["model.mm_projector.0.bias"])
        assert torch.equal(p[2].weight, sd["model.mm_projector.2.weight"])
        assert torch.equal(p[2].bias, sd["model.mm_projector.2.bias"])
        c0 += w
    assert c0 == sd["model.mm_projector.0.weight"].shape[1]
    with torch.no_grad():  # unpruned: every tower's native tokens, grouped by tower
        assert vlm.encode_images(torch.rand(1, 3, 128, 128)).per_encoder == {n: [k] for n, k in NATIVE.items()}
    rows = _rows(cli("infer", "--model", "ck", "--questions", str(sv / "eval" / "questions.jsonl"), "--allocation",
                     str(pipeline / "alloc.json"), "--max-new-tokens", "2", "--device", "cpu", "--limit", "1", "-q"))
    assert rows[0]["metadata"]["visual_tokens"] == 6
    res = cli("train", "--model", "ck", "--data", str(sv / "train.json"), "--fusion", "pre-projection",
              "--max-steps", "1", "--out", "ck2", "--device", "cpu", "-q")
    assert res.exit_code == ExitCode.USAGE and "pre-projection → post-projection" in res.stderr


def test_flops_count_the_projector_over_the_kept_positions(x5, pipeline, cli):
    """With an allocation, the shared projector runs on ``stage2.keep`` positions only: the analytic
    count says so and agrees with fvcore's count of the real forward (within 1 %), and the LLM
    sees the same number of visual tokens."""
    alloc = _body(pipeline / "alloc.json")
    res = cli("flops", "--model", str(x5), "--allocation", str(pipeline / "alloc.json"), "--count", "both",
              "--text-tokens", "8", "--json")
    assert res.exit_code == 0, res.stderr
    body = json.loads(res.stdout)
    fv = body["fvcore"]
    row = fv["components"]["projector/fused"]
    assert fv["input"]["visual_tokens_into_llm"] == alloc["stage2"]["keep"] == 6
    assert abs(row["difference"]) <= 0.01, row
    assert abs(fv["components"]["llm/prefill"]["difference"]) <= 0.01, fv["components"]["llm/prefill"]
    unpruned = json.loads(cli("flops", "--model", str(x5), "--convention", "macs", "--json").stdout)
    pruned = json.loads(cli("flops", "--model", str(x5), "--allocation", str(pipeline / "alloc.json"),
                            "--convention", "macs", "--json").stdout)
    # mlp2x_gelu is linear in the positions: 6 of the 16 shared positions cost 6/16 of the unpruned projector
    assert pruned["components"]["projector/fused"] == pytest.approx(unpruned["components"]["projector/fused"] * 6 / 16)


def test_flops_count_divprune_projecting_every_position(x5, pipeline, cli, tmp_path):
    """divprune selects among the projector's outputs, so it projects all 16 positions: the analytic
    count says so and agrees with fvcore's count of the real forward."""
    body = _body(pipeline / "alloc.json")
    body["stage2"]["method"] = "divprune"
    A.write_artifact(tmp_path / "dp.json", A.make_artifact("meteor.allocation", body))
    res = cli("flops", "--model", str(x5), "--allocation", str(tmp_path / "dp.json"), "--count", "both",
              "--text-tokens", "8", "--json")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    unpruned = json.loads(cli("flops", "--model", str(x5), "--convention", "macs", "--json").stdout)
    macs = json.loads(cli("flops", "--model", str(x5), "--allocation", str(tmp_path / "dp.json"), "--convention",
                          "macs", "--json").stdout)
    assert macs["components"]["projector/fused"] == unpruned["components"]["projector/fused"]
    assert out["fvcore"]["input"]["visual_tokens_into_llm"] == 6
    assert abs(out["fvcore"]["components"]["projector/fused"]["difference"]) <= 0.01
