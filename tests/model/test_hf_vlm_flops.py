"""``meteor flops`` on transformers VLMs: visual-token counts equal the processors', costs by hand, no weights read."""

from __future__ import annotations

import json
import shutil

import pytest

from .hf_vlm_builders import BUILDERS, images

#: (W, H): square, landscape, portrait, odd sizes — LLaVA-NeXT picks different tile grids and
#: unpads differently, Qwen2-VL resizes to different grids (one below min_pixels, one above max_pixels).
SIZES = [(32, 32), (112, 84), (56, 112), (50, 40), (300, 90), (20, 200)]
PLACEHOLDER = {"llava": "<image>", "llava_next": "<image>", "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>"}


@pytest.fixture
def dirs(hf_vlm_dirs):
    return hf_vlm_dirs


@pytest.mark.parametrize("family", list(BUILDERS))
def test_visual_tokens_equal_what_the_processor_writes(dirs, family):
    from transformers import AutoConfig, AutoProcessor

    from meteor_cli.model.hf_vlm import family_of
    from meteor_cli.model.hf_vlm.flops import image_processor_settings, processor_settings

    d = dirs[family]
    fam = family_of(d)
    cfg = AutoConfig.from_pretrained(d, local_files_only=True)
    proc = AutoProcessor.from_pretrained(d, local_files_only=True)
    ip, pp = image_processor_settings(d), processor_settings(d)
    seen = set()
    for (w, h), img in zip(SIZES, images(len(SIZES), sizes=SIZES)):
        batch = proc(images=[img], text=[f"{PLACEHOLDER[family]} what color"], return_tensors="pt")
        real = int((batch["input_ids"] == cfg.image_token_id).sum())
        geo = fam.visual_geometry(cfg, ip, pp, (w, h))
        assert geo.tokens == real, (family, (w, h), geo)
        seen.add(real)
        if family == "llava_next":  # the tower runs on the base image + every tile the processor made
            assert geo.tower_passes == batch["pixel_values"].shape[1]
        if family == "qwen2_vl":  # the tower runs on the patches the processor made
            assert geo.tower_tokens == int(batch["image_grid_thw"].prod())
    assert (len(seen) == 1) == (family == "llava")  # only LLaVA-1.5 is independent of the image size


def _hand_llava(text: int, schedule: list[int], convention: str) -> float:
    """The tiny LLaVA (tests/model/hf_vlm_builders.py) by hand: CLIP 32 px / 8 (16 patches + CLS, 3 blocks,
    width 32, MLP 64), projector 32->64->64, 4-layer Llama width 64, MLP 128, 4 heads, 2 kv heads, vocab 57."""
    n = 17
    tower = 16 * (3 * 8 * 8 * 32) + 3 * (4 * n * 32 * 32 + 2 * n * n * 32 + 2 * n * 32 * 64)
    projector = 16 * (32 * 64 + 64 * 64)
    llm = 0
    for v in schedule:
        t = text + v
        if convention == "fastv":
            llm += 4 * t * 64 * 64 + 2 * t * t * 64 + 2 * t * 64 * 128
        else:  # q, o: 2·t·64·64; k, v: 2·t·64·32; QKᵀ, AV: 2·4·t²·16; SwiGLU: 3·t·64·128
            llm += 2 * t * 64 * 64 + 2 * t * 64 * 32 + 2 * 4 * t * t * 16 + 3 * t * 64 * 128
    return tower + projector + llm + 64 * 57  # + lm_head on the last token


@pytest.mark.parametrize("convention", ["fastv", "macs"])
def test_llava_counted_by_hand_with_a_prune_llm_schedule_and_no_weights(cli, dirs, tmp_path, convention):
    d = tmp_path / "llava"
    shutil.copytree(dirs["llava"], d)
    res = cli("prune-llm", "--model", str(d), "--method", "fixed", "--layers", "1,3", "--keep", "5,3", "--heads", "2",
              "--out", "p.json")
    assert res.exit_code == 0, res.output
    (d / "model.safetensors").unlink()  # counted on meta: the weights are never needed
    assert json.loads((d / "config.json").read_text())["text_config"]["vocab_size"] == 57
    res = cli("flops", "--model", str(d), "--prune-llm", "p.json", "--text-tokens", "10", "--convention", convention,
              "--out", "f.json")
    assert res.exit_code == 0, res.output
    body = json.loads((tmp_path / "f.json").read_text())
    assert body["visual_tokens"]["into_llm"] == 16 and body["model"]["weights_read"] is False
    assert body["visual_tokens"]["layer_averaged"] == (16 + 5 + 5 + 3) / 4
    pruned, unpruned = _hand_llava(10, [16, 5, 5, 3], convention), _hand_llava(10, [16] * 4, convention)
    assert body["total"] == pytest.approx(pruned, rel=1e-12)
    assert body["unpruned_total"] == pytest.approx(unpruned, rel=1e-12)
    assert body["ratio"] == pytest.approx(pruned / unpruned, rel=1e-12) and body["ratio"] < 1


def test_flops_cli_on_next_and_qwen_and_its_errors(cli, dirs, tmp_path):
    res = cli("flops", "--model", str(dirs["llava_next"]), "--image-size", "112x84", "--convention", "flops")
    assert res.exit_code == 0, res.output
    assert "LlavaNextForConditionalGeneration" in res.output and "5 pass(es)" in res.output
    res = cli("flops", "--model", str(dirs["qwen2_vl"]), "--image-size", "112x84", "--out", "q.json")
    assert res.exit_code == 0, res.output
    body = json.loads((tmp_path / "q.json").read_text())
    assert body["visual_tokens"]["into_llm"] == 12 and body["image"]["detail"]["resized"] == [112, 84]
    assert body["ratio"] == 1.0
    res = cli("flops", "--model", str(dirs["llava"]), "--image-size", "abc")
    assert res.exit_code == 2 and "--image-size" in res.output
    (tmp_path / "a.json").write_text("{}")
    from meteor_cli.model.hf_vlm.qwen2_vl import Qwen2VL

    with pytest.MonkeyPatch.context() as mp:  # a family without a Stage-1 adapter is refused before the file is read
        mp.setattr(Qwen2VL, "stage1_missing", "no Stage-1 adapter (test)")
        res = cli("flops", "--model", str(dirs["qwen2_vl"]), "--allocation", "a.json")
    assert res.exit_code == 2 and "flops --allocation" in res.output and "Stage-1 adapter" in res.output
    res = cli("flops", "--model", "tiny", "--image-size", "64")
    assert res.exit_code == 2 and "transformers VLM" in res.output
