"""transformers VLMs (LLaVA-1.5, LLaVA-NeXT, Qwen2-VL) through the CLI and Stage 3.

Tiny random-initialised instances of each class are built from configs and saved with their
processor (tests/model/hf_vlm_builders.py), then loaded through ``load_model`` / the CLI.
"""

from __future__ import annotations

import json

import pytest
import torch

from meteor_cli.model.checkpoint import load_model
from meteor_cli.pruning.llm_policies import make_policy
from meteor_cli.pruning.llm_pruner import LLMPruner

from .hf_vlm_builders import BUILDERS, images

FAMILIES = list(BUILDERS)
PROMPTS = ["<image>\nwhat color is the square", "how many objects are in the image"]
SIZES = [(112, 84), (56, 112)]  # two sizes: LLaVA-NeXT picks different tile grids, Qwen2-VL different grids


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hfvlm")
    return {name: build(root / name) for name, build in BUILDERS.items()}


def _policy(method: str, **kw):
    pol = make_policy(method, **kw)
    pol.validate(4, 4)
    return pol


def _pruned(vlm, policy):
    return LLMPruner(vlm.llm, policy)


@pytest.mark.parametrize("family", FAMILIES)
def test_detected_and_loaded_with_own_processor(dirs, family):
    from meteor_cli.model.hf_vlm import family_of

    vlm = load_model(str(dirs[family]))
    assert family_of(dirs[family]) is type(vlm)
    assert type(vlm.hf).__name__ == type(vlm).hf_class
    text = vlm.chat_text("<image>\nwhat color")
    assert text.endswith("assistant ") or text.endswith("assistant :")
    inputs, vis = vlm.prepare(images(2, sizes=SIZES), PROMPTS)
    ids = inputs.input_ids
    for b in range(2):  # the span is exactly the image-token run
        s, n = inputs.visual_start[b], inputs.visual_len[b]
        assert (ids[b, s:s + n] == vlm.image_token_id).all()
        assert (ids[b, :s] != vlm.image_token_id).all() and (ids[b, s + n:] != vlm.image_token_id).all()
    assert inputs.attention_mask[:, -1].all()  # left padding


@pytest.mark.parametrize("family", FAMILIES)
def test_large_lambda_gives_identical_logits(dirs, family):
    vlm = load_model(str(dirs[family]))
    inputs, _ = vlm.prepare(images(2, sizes=SIZES), PROMPTS)
    with torch.no_grad():
        ref = vlm.prefill(inputs).logits
        pruner = _pruned(vlm, _policy("meteor", layers=[1, 3], heads=2, lam=1e9))
        with pruner.session(inputs.visual_start, inputs.visual_len, attention_mask=inputs.attention_mask) as sess:
            got = vlm.prefill(inputs).logits
    assert [len(k) for k in sess.kept[1]] == inputs.visual_len
    assert torch.equal(ref, got)
    pruner.remove()
    with torch.no_grad():
        assert torch.equal(vlm.prefill(inputs).logits, ref)  # removed: the model is as before


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_equals_per_sample_and_counts_are_what_was_asked(dirs, family):
    vlm = load_model(str(dirs[family]))
    ims = images(2, sizes=SIZES)
    pruner = _pruned(vlm, _policy("fixed", layers=[1, 3], keep=[5, 3], heads=2))
    texts, inputs, _, sess = vlm.generate(ims, PROMPTS, max_new_tokens=4, stage3=pruner, details=True)
    assert {p: [len(k) for k in v] for p, v in sess.kept.items()} == {1: [5, 5], 3: [3, 3]}
    for b in range(2):
        t1, _, _, s1 = vlm.generate(ims[b:b + 1], PROMPTS[b:b + 1], max_new_tokens=4, stage3=pruner, details=True)
        assert t1 == [texts[b]]
        for p in (1, 3):
            assert torch.equal(s1.kept[p][0], sess.kept[p][b])
    if family == "llava_next":  # two image sizes in one batch: different tile grids, different span lengths
        assert inputs.visual_len[0] != inputs.visual_len[1]


def _replay_inputs(vlm, inputs, out):
    """The no-cache inputs of prompt + generated tokens (Qwen2-VL: text token types for the new ids)."""
    feats = dict(inputs.features)
    L = inputs.input_ids.shape[1]
    new = out.shape[1] - L
    feats["input_ids"] = out
    feats["attention_mask"] = torch.cat([inputs.attention_mask, torch.ones(out.shape[0], new, dtype=inputs.attention_mask.dtype)], 1)
    if "mm_token_type_ids" in feats:
        mm = feats["mm_token_type_ids"]
        feats["mm_token_type_ids"] = torch.cat([mm, torch.zeros(mm.shape[0], new, dtype=mm.dtype)], 1)
    return feats


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_generation_equals_uncached_replay(dirs, family):
    vlm = load_model(str(dirs[family]))
    inputs, _ = vlm.prepare(images(2, sizes=SIZES), PROMPTS)
    pruner = _pruned(vlm, _policy("meteor", layers=[1, 3], heads=2, lam=3.0))
    out, sess = vlm.generate_ids(inputs, max_new_tokens=5, stage3=pruner)
    assert any(len(k) < n for k, n in zip(sess.kept[1], inputs.visual_len)), "nothing was pruned: the test is vacuous"
    L = inputs.input_ids.shape[1]
    feats = _replay_inputs(vlm, inputs, out)
    with torch.no_grad(), pruner.session(inputs.visual_start, inputs.visual_len, attention_mask=feats["attention_mask"],
                                         prompt_len=[L, L], replay=sess.kept):
        logits = vlm.hf(**feats, use_cache=False).logits
    new = out.shape[1] - L
    logits[..., vlm.image_token_id] = float("-inf")  # generation suppresses the placeholder token
    pred = logits[:, -new - 1:-1].argmax(-1)  # pruned sequences are left-packed: the answer is the tail
    for b in range(out.shape[0]):
        gen = out[b, L:].tolist()
        n = gen.index(vlm.tokenizer.eos_token_id) + 1 if vlm.tokenizer.eos_token_id in gen else new
        assert pred[b, :n].tolist() == gen[:n]


def test_qwen2_vl_mrope_positions_are_kept_not_renumbered(dirs):
    vlm = load_model(str(dirs["qwen2_vl"]))
    inputs, _ = vlm.prepare(images(2, sizes=SIZES), PROMPTS)
    f = inputs.features
    rope, _ = vlm.hf.model.get_rope_index(f["input_ids"], image_grid_thw=f["image_grid_thw"],
                                          attention_mask=f["attention_mask"], mm_token_type_ids=f["mm_token_type_ids"])
    pruner = _pruned(vlm, _policy("fixed", layers=[1], keep=[3], heads=2))
    with torch.no_grad(), pruner.session(inputs.visual_start, inputs.visual_len, attention_mask=inputs.attention_mask) as sess:
        vlm.prefill(inputs)
    st = sess.state
    assert st.rope is not None
    for b in range(2):
        src = st.source[b][st.valid[b]]
        assert torch.equal(st.rope[b][st.valid[b]], rope[:, b, src].T)  # each kept token keeps its (t, h, w) ids
        assert int(st.visual[b].sum()) == 3


def test_qwen2_vl_pruned_generation_same_under_eager_and_sdpa(dirs):
    from meteor_cli.model.hf_vlm.qwen2_vl import Qwen2VL

    outs = {}
    for impl in ("eager", "sdpa"):
        vlm = Qwen2VL.from_pretrained(dirs["qwen2_vl"], attn_implementation=impl)
        assert vlm.text_config._attn_implementation == impl
        inputs, _ = vlm.prepare(images(2, sizes=SIZES), PROMPTS)
        pruner = _pruned(vlm, _policy("meteor", layers=[1, 3], heads=2, lam=3.0))
        out, sess = vlm.generate_ids(inputs, max_new_tokens=6, stage3=pruner)
        outs[impl] = (out, {p: [k.tolist() for k in v] for p, v in sess.kept.items()})
    assert torch.equal(outs["eager"][0], outs["sdpa"][0])
    assert outs["eager"][1] == outs["sdpa"][1]


def test_llava_under_a_flash_style_kernel_equals_sdpa(dirs):
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    from meteor_cli.model.hf_vlm.llava import Llava
    from tests.llm.test_flash_masks import NAME, varlen_reference

    AttentionInterface.register(NAME, varlen_reference)
    AttentionMaskInterface.register(NAME, flash_attention_mask)
    try:
        outs = []
        for impl in ("sdpa", {"text_config": NAME, "vision_config": "sdpa", "": "sdpa"}):
            vlm = Llava.from_pretrained(dirs["llava"], attn_implementation=impl)
            inputs, _ = vlm.prepare(images(2, sizes=SIZES), PROMPTS)
            pruner = _pruned(vlm, _policy("meteor", layers=[1, 3], heads=2, lam=3.0))
            assert pruner.padding_masks == (impl != "sdpa")
            out, sess = vlm.generate_ids(inputs, max_new_tokens=5, stage3=pruner)
            outs.append((out, {p: [k.tolist() for k in v] for p, v in sess.kept.items()}))
        assert torch.equal(outs[0][0], outs[1][0]) and outs[0][1] == outs[1][1]
    finally:
        AttentionInterface._global_mapping.pop(NAME, None)
        AttentionMaskInterface._global_mapping.pop(NAME, None)


# -- through the CLI ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from typer.testing import CliRunner

    from meteor_cli.cli.app import app

    out = tmp_path_factory.mktemp("sv") / "sv"
    res = CliRunner().invoke(app, ["synth", "--out", str(out), "--train", "8", "--eval", "8", "--image-size", "64", "-q"])
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_cli_inspect_prune_llm_eval_infer(cli, dirs, synth, family, tmp_path):
    d = str(dirs[family])
    res = cli("inspect", d, "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["model"]["model_type"] == family and info["model"]["text_model"]["layers"] == 4
    assert info["model"]["chat_template"] and info["model"]["parameters"] > 0
    res = cli("prune-llm", "--model", d, "--method", "fixed", "--layers", "1,3", "--keep", "3,2", "--heads", "2",
              "--out", "p.json")
    assert res.exit_code == 0, res.output
    body = json.loads((tmp_path / "p.json").read_text())
    assert body["model"]["num_layers"] == 4 and body["model"]["num_heads"] == 4
    res = cli("eval", "--model", d, "--data", str(synth), "--limit", "4", "--batch-size", "2", "--prune-llm", "p.json",
              "--max-new-tokens", "3", "--out", "m.json", "-q")
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (tmp_path / "m.samples.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["stage3"]["kept"] == [3, 2] for r in rows)
    res = cli("infer", "--model", d, "--questions", str(synth / "eval" / "questions.jsonl"), "--image-root", str(synth),
              "--max-new-tokens", "2", "--out", "a.jsonl", "-q")
    assert res.exit_code == 0, res.output


def test_cli_calibrate_on_a_vlm(cli, dirs, synth, tmp_path):
    res = cli("prune-llm", "--model", str(dirs["qwen2_vl"]), "--calibrate", "--data", str(synth / "train.json"),
              "--target-tokens", "8", "--heads", "2", "--layers", "1,3", "--count", "4", "--out", "c.json", "-q")
    assert res.exit_code == 0, res.output
    cal = json.loads((tmp_path / "c.json").read_text())["calibration"]
    assert cal["n"] == 4 and cal["achieved"] > 0


def test_allocation_is_refused_for_a_vlm_without_a_tower_adapter(cli, dirs, synth, tmp_path, monkeypatch):
    from meteor_cli.model.hf_vlm.qwen2_vl import Qwen2VL

    monkeypatch.setattr(Qwen2VL, "stage1_missing", "no Stage-1 adapter (test: a family without one)")
    res = cli("rank-estimate", "--model", str(dirs["qwen2_vl"]), "--data", str(synth / "train.json"), "--out", "r.json")
    assert res.exit_code == 2
    assert "Qwen2VLForConditionalGeneration" in res.output and "Stage-1 adapter" in res.output
    res = cli("train", "--model", str(dirs["llava"]), "--data", str(synth / "train.json"), "--out", "ck")
    assert res.exit_code == 2 and "flops" in res.output  # the list of commands that take the directory


@pytest.mark.parametrize("n", [3, 5])
def test_visual_tokens_budget_is_what_is_kept(cli, dirs, synth, tmp_path, n):
    d = str(dirs["llava"])  # 16 visual tokens per image
    res = cli("prune-llm", "--model", d, "--method", "fixed", "--visual-tokens", str(n), "--heads", "2", "--out", "v.json")
    assert res.exit_code == 0, res.output
    body = json.loads((tmp_path / "v.json").read_text())
    assert body["layers"] == [2] and body["keep"] == [n] and body["visual_tokens"] == n
    res = cli("eval", "--model", d, "--data", str(synth), "--limit", "2", "--prune-llm", "v.json", "--max-new-tokens", "2",
              "--out", "m.json", "-q")
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (tmp_path / "m.samples.jsonl").read_text().splitlines()]
    assert all(r["stage3"]["kept"] == [n] for r in rows)


def test_visual_tokens_budget_errors(cli, dirs):
    d = str(dirs["llava"])
    res = cli("prune-llm", "--model", d, "--method", "fastv", "--visual-tokens", "64")
    assert res.exit_code == 2 and "--drop-ratio" in res.output
    res = cli("prune-llm", "--model", d, "--visual-tokens", "64")
    assert res.exit_code == 2 and "--calibrate" in res.output
    res = cli("prune-llm", "--model", d, "--method", "fixed", "--visual-tokens", "64", "--keep", "3")
    assert res.exit_code == 2 and "--keep" in res.output


def test_visual_tokens_sets_the_calibration_target(cli, dirs, synth, tmp_path):
    res = cli("prune-llm", "--model", str(dirs["llava"]), "--calibrate", "--data", str(synth / "train.json"),
              "--visual-tokens", "8", "--heads", "2", "--layers", "1,3", "--count", "2", "--out", "c.json", "-q")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "c.json").read_text())["calibration"]["target"] == 8.0
