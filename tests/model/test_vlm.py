"""The model core: adapters block by block, projectors/fusion, LLM inputs, checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from meteor_cli.config import EncoderConfig, LLMConfig, ModelConfig
from meteor_cli.errors import ConfigError, InputNotFoundError, InvalidInputError, UsageError
from meteor_cli.model.checkpoint import load_checkpoint, load_model, save_checkpoint
from meteor_cli.model.encoders import build_encoder
from meteor_cli.model.presets import llama_config, synthvqa_tokenizer
from meteor_cli.model.vlm import MultiEncoderVLM

ENCODERS = [
    EncoderConfig("v", "vit", image_size=32, patch=8, depth=3, width=32, heads=2),
    EncoderConfig("c", "clip", image_size=32, patch=8, depth=3, width=32, heads=2),
    EncoderConfig("n", "convnext", image_size=64, patch=32, depth=4, width=32, has_cls=False, dims=[8, 16, 24, 32],
                  stage_depths=[1, 1, 1, 1]),
]


def tiny_cfg(fusion="post-projection"):
    return ModelConfig(encoders=[EncoderConfig(**vars(e)) for e in ENCODERS],
                       llm=LLMConfig(hf_config=llama_config(len(synthvqa_tokenizer()), 64, 2, 4, 2, 128)),
                       fusion=fusion, grid=4)


@pytest.mark.parametrize("cfg", ENCODERS, ids=lambda c: c.family)
def test_segments_equal_the_ordinary_forward(cfg):
    cfg = EncoderConfig(**vars(cfg))
    cfg.validate("enc")
    enc = build_encoder(cfg).eval()
    x = enc.preprocess(torch.rand(2, 3, 40, 40))
    with torch.no_grad():
        seg = enc.forward_segments(x)
        ref = enc.forward_features(x)
    assert torch.allclose(seg.tokens(), ref, atol=1e-5)
    assert seg.x.shape == (2, cfg.num_tokens, cfg.width)
    assert enc.feature_map(seg).shape == (2, cfg.width, cfg.grid, cfg.grid)


def test_gather_keeps_positions_and_cls_attention():
    cfg = EncoderConfig(**vars(ENCODERS[0]))
    cfg.validate("enc")
    enc = build_encoder(cfg).eval()
    with torch.no_grad():
        st = enc.run_blocks(enc.embed(enc.preprocess(torch.rand(2, 3, 32, 32))), 0, 2)
        a = enc.cls_attention(st, 1)
    assert a.shape == (2, 16) and torch.all(a >= 0) and torch.all(a.sum(-1) <= 1 + 1e-6)
    idx = torch.tensor([[0, 5, 9], [2, 3, 15]])
    kept = st.gather(idx)
    assert torch.equal(kept.pos, idx) and torch.equal(kept.x[1, 2], st.x[1, 15])
    fmap = enc.feature_map(kept)
    assert torch.equal(fmap[1, :, 3, 3], st.x[1, 15]) and fmap[1].abs().sum(0).count_nonzero() == 3


@pytest.mark.parametrize("fusion", ["post-projection", "pre-projection"])
def test_batch_of_two_equals_two_singles(fusion):
    torch.manual_seed(0)
    m = MultiEncoderVLM(tiny_cfg(fusion), synthvqa_tokenizer()).eval()
    imgs = torch.rand(2, 3, 48, 48)
    prompts = ["<image>\nWhat color is the circle?", "<image>\nHow many shapes are there?"]
    answers = ["red", "3"]
    with torch.no_grad():
        both, n = m.loss_sum(imgs, prompts, answers)
        singles = [m.loss_sum(imgs[i:i + 1], prompts[i:i + 1], answers[i:i + 1]) for i in range(2)]
    assert n == sum(s[1] for s in singles)
    assert both.item() == pytest.approx(sum(s[0].item() for s in singles), rel=1e-4)
    vis = m.encode_images(imgs)
    expected = 16 + 16 + 4 if fusion == "post-projection" else 16
    assert vis.z.shape == (2, expected, 64)


@pytest.mark.parametrize("template", ["plain", "vicuna_v1", "chatml"])
def test_multi_turn_conversations_train_every_answer(template):
    from meteor_cli.model.llm import answer_ids
    from meteor_cli.train.vlm_task import VLMTask

    torch.manual_seed(0)
    cfg = tiny_cfg()
    cfg.template = template
    m = MultiEncoderVLM(cfg, synthvqa_tokenizer()).eval()
    imgs = torch.rand(2, 3, 32, 32)
    prompts = ["<image>\nWhat color is the circle?", "<image>\nHow many shapes are there?"]
    turns = [[("How many shapes are there?", "3"), ("Is there a red square in the image?", "no")], []]
    with torch.no_grad():
        inputs, _ = m.prepare(imgs, prompts, ["red", "2"], turns)
        both, n = m.loss_sum(imgs, prompts, ["red", "2"], turns)
        first, _ = m.loss_sum(imgs[:1], prompts[:1], ["red"])
        logits = m.llm(inputs_embeds=inputs.embeds, attention_mask=inputs.attention_mask).logits
    tok = m.tokenizer
    expected = [answer_ids(tok, template, a) for a in ("red", "3", "no")]
    assert inputs.labels[0][inputs.labels[0] != -100].tolist() == sum(expected, [])
    assert n == sum(map(len, expected)) + len(answer_ids(tok, template, "2"))
    # The collate count the training loop normalises by is the same number.
    batch = VLMTask(tok, template).collate([(imgs[0], prompts[0], "red", turns[0]), (imgs[1], prompts[1], "2", [])])
    assert batch["n"] == n
    # Causal: the first answer's loss does not depend on the turns after it.
    lab = inputs.labels[0, 1:]
    ce = torch.nn.functional.cross_entropy(logits[0, :-1], lab.clamp(min=0), reduction="none")[lab != -100]
    assert ce[:len(expected[0])].sum().item() == pytest.approx(first.item(), rel=1e-4)
    assert both.item() > first.item()


def test_exchanges_of_llava_records():
    from meteor_cli.train.vlm_task import exchanges

    rec = {"id": "r1", "conversations": [{"from": "human", "value": "<image>\nq1"}, {"from": "gpt", "value": "a1"},
                                         {"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"},
                                         {"from": "human", "value": "trailing"}]}
    assert exchanges(rec, 0) == [("<image>\nq1", "a1"), ("q2", "a2")]
    with pytest.raises(InvalidInputError, match="record r1 has no gpt turn"):
        exchanges({"id": "r1", "conversations": rec["conversations"][:1]}, 0)
    with pytest.raises(InvalidInputError, match="record r2 has no human turn"):
        exchanges({"id": "r2", "conversations": [{"from": "gpt", "value": "a"}]}, 0)


def test_visual_span_is_computed_from_the_prompt():
    m = MultiEncoderVLM(tiny_cfg(), synthvqa_tokenizer()).eval()
    inputs, vis = m.prepare(torch.rand(2, 3, 32, 32), ["<image>\nhow many?", "what color is the <image> circle ?"])
    for b in range(2):
        s = inputs.visual_start[b]
        assert torch.equal(inputs.embeds[b, s:s + 36], vis.z[b].to(inputs.embeds.dtype))
    assert inputs.visual_start[0] != inputs.visual_start[1]  # different text before the image
    with pytest.raises(UsageError, match="exactly once"):
        m.prepare(torch.rand(1, 3, 32, 32), ["no placeholder here"])


def test_save_load_identical_and_mismatch_named(tmp_path):
    torch.manual_seed(1)
    m = MultiEncoderVLM(tiny_cfg(), synthvqa_tokenizer()).eval()
    save_checkpoint(m, tmp_path / "ck")
    back = load_checkpoint(tmp_path / "ck")
    imgs = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m.loss_sum(imgs, ["<image>\nq"], ["a"])[0], back.loss_sum(imgs, ["<image>\nq"], ["a"])[0])
    assert back.generate(imgs, ["<image>\nq"], max_new_tokens=3) == m.generate(imgs, ["<image>\nq"], max_new_tokens=3)
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    cfg["model"]["encoders"][0]["width"] = 48
    (tmp_path / "ck" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InvalidInputError, match="tensor 'encoders.v."):
        load_checkpoint(tmp_path / "ck")
    with pytest.raises(InputNotFoundError):
        load_checkpoint(tmp_path / "nothing")


def test_sharded_checkpoint_round_trip(tmp_path):
    torch.manual_seed(2)
    m = MultiEncoderVLM(tiny_cfg(), synthvqa_tokenizer()).eval()
    save_checkpoint(m, tmp_path / "ck", max_shard_bytes=200_000)
    index = json.loads((tmp_path / "ck" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and not (tmp_path / "ck" / "model.safetensors").exists()
    assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    back = load_checkpoint(tmp_path / "ck")
    for (k, a), (_, b) in zip(m.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k
    (tmp_path / "ck" / shards[1]).unlink()
    with pytest.raises(InputNotFoundError, match=f"shard {shards[1]}"):
        load_checkpoint(tmp_path / "ck")


def test_config_errors_name_the_field(tmp_path):
    bad = tiny_cfg()
    bad.encoders[0].image_size = 30
    with pytest.raises(ConfigError, match=r"encoders\[0\].image_size: 30 is not a multiple of the patch size 8"):
        bad.validate()
    bad = tiny_cfg()
    bad.encoders[1].family = "eva99"
    with pytest.raises(ConfigError, match=r"encoders\[1\].family: 'eva99' is not a registered"):
        bad.validate()
    missing = EncoderConfig(**{**vars(ENCODERS[0]), "weights": str(tmp_path / "none.safetensors")})
    missing.validate("e")
    with pytest.raises(InputNotFoundError, match="none.safetensors"):
        build_encoder(missing)
    cfg = tiny_cfg()
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again.to_dict() == cfg.to_dict()


def test_presets_build():
    m = load_model("tiny")
    vis = m.encode_images(torch.rand(1, 3, 128, 128))
    assert vis.z.shape == (1, 96, 192) and vis.per_encoder == {"vit": [16], "clip": [64], "convnext": [16]}
