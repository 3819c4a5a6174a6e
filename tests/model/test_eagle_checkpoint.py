"""Released EAGLE checkpoints through ``--model DIR``: loading, key mapping, EAGLE's forward, no weight reads on meta.

The checkpoints are tiny and random but in the RELEASE layout (tests/model/eagle_release.py): config.json
with ``model_type: eagle_llama`` and a tower string, float16 shards with an index, a stray ``*_old``
shard of garbage, a Llama tokenizer. The reference forward is EAGLE's, written step by step in that
file from the upstream modules and the stored tensors.
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from eagle_release import MEAN, STD, X5, eagle_pixels, reference_visual_tokens, stored, write_release  # noqa: E402

from meteor_cli.errors import ExitCode, InvalidInputError  # noqa: E402


def _image(seed: int = 0, size: tuple[int, int] = (40, 30)):
    from PIL import Image

    return Image.fromarray((np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype("uint8"))


def _eagle_ids(tok, prompt: str) -> tuple[list[int], list[int]]:
    """eagle/mm_utils.py tokenizer_image_token: chunks around <image>, BOS kept once; (before, after) the image."""
    chunks = [tok(c).input_ids for c in prompt.split("<image>")]
    offset = 1 if chunks[0] and chunks[0][0] == tok.bos_token_id else 0
    return chunks[0], chunks[1][offset:]


def _reference_logits(directory: Path, prompt: str, image) -> torch.Tensor:
    """EAGLE's prepare_inputs_labels_for_multimodal + LlamaForCausalLM on the stored tensors."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    cfg = json.loads((directory / "config.json").read_text())
    keys = set(LlamaConfig().to_dict())
    llm = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in cfg.items() if k in keys and k != "model_type"})).eval()
    sd = stored(directory)
    llm.load_state_dict({k: v for k, v in sd.items() if not k.startswith(("model.vision_tower", "model.mm_projector"))})
    tok = AutoTokenizer.from_pretrained(str(directory))
    before, after = _eagle_ids(tok, prompt)
    emb = llm.get_input_embeddings()
    vis = reference_visual_tokens(directory, eagle_pixels(image))
    x = torch.cat([emb(torch.tensor(before)), vis[0], emb(torch.tensor(after))])[None]
    with torch.no_grad():
        return llm(inputs_embeds=x).logits


def _meteor_logits(vlm, question: str, image) -> torch.Tensor:
    with torch.no_grad():
        inputs, _ = vlm.prepare(vlm.image_tensor(image)[None], [question])
        return vlm.llm(inputs_embeds=inputs.embeds, attention_mask=inputs.attention_mask).logits


VICUNA = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the user's questions. USER: <image>\nwhat is shown ASSISTANT:")
LLAMA3 = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nA chat between a curious user and an "
          "artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's "
          "questions.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n<image>\nwhat is shown<|eot_id|>"
          "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_x5_loads_and_forward_equals_eagle(x5):
    """Every tower kind (det with window + global blocks), the fusion, the projector and the LLM = EAGLE's forward."""
    from meteor_cli.model.checkpoint import load_model

    vlm = load_model(str(x5))
    assert [(n, e.cfg.family) for n, e in vlm.encoders.items()] == [
        ("clip", "eagle-clip"), ("convnext", "eagle-convnext"), ("sam", "eagle-sam"), ("det", "eagle-det"),
        ("pix2struct", "eagle-pix2struct")]
    det = vlm.encoders["det"]
    assert det.window == 4 and det.global_blocks == {2} and det.cfg.grid == 8  # 4 windows of 4×4, block 2 global
    assert vlm.cfg.fusion == "pre-projection" and vlm.cfg.template == "vicuna_v1" and vlm.cfg.image_mode == "pad"
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in vlm.parameters())
    img = _image()
    pixels = eagle_pixels(img)  # EAGLE's processor (pad with the mean colour, PIL bicubic, CLIP normalisation)
    ours = (vlm.image_tensor(img)[None] - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(ours, pixels, rtol=0, atol=1e-6)
    with torch.no_grad():
        vis = vlm.encode_images(vlm.image_tensor(img)[None])
    assert vis.z.shape == (1, 16, 64)
    torch.testing.assert_close(vis.z, reference_visual_tokens(x5, pixels), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_meteor_logits(vlm, "<image>\nwhat is shown", img), _reference_logits(x5, VICUNA, img),
                               rtol=1e-5, atol=1e-5)


def test_x4_plus_llama3_template(x4_plus):
    """An X4 tower string and a Plus-style Llama-3 tokenizer: template picked from the tokenizer, prompt = EAGLE's."""
    from meteor_cli.model.checkpoint import load_model

    vlm = load_model(str(x4_plus))
    assert list(vlm.encoders) == ["clip", "convnext", "det", "pix2struct"]
    assert vlm.cfg.template == "eagle_llama3"
    img = _image(1, (30, 44))
    torch.testing.assert_close(_meteor_logits(vlm, "<image>\nwhat is shown", img),
                               _reference_logits(x4_plus, LLAMA3, img), rtol=1e-5, atol=1e-5)


def test_key_mapping_covers_every_tensor_both_ways(x5):
    from meteor_cli.model.eagle.format import IGNORED, build_empty, read_release, to_meteor, to_release

    rel = read_release(x5)
    vlm = build_empty(rel)
    params = {n for n, _ in vlm.named_parameters()}
    assert all(p.device.type == "meta" for p in vlm.parameters())
    towers = rel.tower_names
    mapped = {}
    for k in rel.weight_map:
        m = to_meteor(k, towers)
        if m is None:
            assert IGNORED.search(k) and ".rope" in k or "rope_" in k  # only EVA's RoPE buffers are not loaded
            continue
        assert m in params, k
        assert to_release(m, towers) == k
        mapped[m] = k
    assert set(mapped) == params  # every parameter comes from exactly one release tensor
    assert len(mapped) == len(set(mapped.values()))
    # the layout's distinctive names are where they belong
    assert to_meteor("model.vision_tower.vision_towers.1.vision_tower.stages.2.blocks.0.weight", towers) == \
        "encoders.convnext.net.stages.2.blocks.0.gamma"
    assert to_meteor("model.vision_tower.vision_towers.3.vision_tower.blocks.1.mlp.ffn_ln.bias", towers) == \
        "encoders.det.net.blocks.1.mlp.norm.bias"
    assert to_meteor("model.vision_tower.vision_towers.3.vision_tower.blocks.0.attn.q_bias", towers) == \
        "encoders.det.net.blocks.0.attn.q_proj.bias"
    assert to_meteor("model.mm_projector.2.weight", towers) == "projectors.fused.2.weight"
    assert to_meteor("lm_head.weight", towers) == "llm.lm_head.weight"


@pytest.mark.parametrize("which", ["x5", "x4_plus"])
def test_one_rename_table_round_trips_every_key(which, request):
    """The key mapping is ONE table (``RENAMES``) read both ways: over a release's full key set,
    release → meteor → release and meteor → release → meteor are identities, and every rule of
    the table is used by some tensor (no dead rule)."""
    from meteor_cli.model.eagle import format as F

    rel = F.read_release(request.getfixturevalue(which))
    towers = rel.tower_names
    params = [n for n, _ in F.build_empty(rel).named_parameters()]
    loaded = [k for k in rel.weight_map if F.to_meteor(k, towers) is not None]
    assert [F.to_release(F.to_meteor(k, towers), towers) for k in loaded] == loaded
    assert [F.to_meteor(F.to_release(n, towers), towers) for n in params] == params
    assert sorted(F.to_release(n, towers) for n in params) == sorted(loaded)
    if which == "x5":
        pre = {t.kind: f"{F.TOWER_PREFIX}{t.index}.vision_tower." for t in rel.towers}
        inner = {kind: [k[len(p):] for k in loaded if k.startswith(p)] for kind, p in pre.items()}
        for kind, rules in F.RENAMES.items():
            for (pat, _), rule in zip(F._FORWARD[kind], rules):
                assert any(pat.search(k) for k in inner[kind]), (kind, rule)


@pytest.mark.parametrize("damage", ["drop", "rename"])
def test_missing_or_renamed_tensor_is_named(tmp_path, cli, damage):
    key = "model.vision_tower.vision_towers.3.vision_tower.blocks.1.attn.k_proj.weight"
    kw = {"drop": key} if damage == "drop" else {"rename": (key, key.replace("k_proj", "key_proj"))}
    d = write_release(tmp_path / "broken", X5, **kw)
    from meteor_cli.model.checkpoint import load_model

    with pytest.raises(InvalidInputError) as err:
        load_model(str(d))
    named = key if damage == "drop" else key.replace("k_proj", "key_proj")
    assert named in str(err.value)
    res = cli("infer", "--model", str(d), "--image", str(_save(tmp_path)), "--prompt", "<image>\nwhat", "--device", "cpu")
    assert res.exit_code == ExitCode.INVALID_INPUT and named in res.stderr


def _save(tmp_path: Path) -> Path:
    p = tmp_path / "img.png"
    _image(0, (64, 48)).save(p)  # infer refuses images smaller than the largest patch (ConvNeXt's 32)
    return p


def test_old_files_are_never_opened(x5, monkeypatch):
    """Only the files the index names are read (the stray *_old shard is garbage: opening it would fail)."""
    import safetensors

    from meteor_cli.model.checkpoint import load_model

    opened: list[str] = []
    real = safetensors.safe_open

    def spy(path, *a, **kw):
        opened.append(Path(path).name)
        return real(path, *a, **kw)

    monkeypatch.setattr(safetensors, "safe_open", spy)
    load_model(str(x5))
    assert sorted(set(opened)) == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert len(opened) == 3  # each shard once: streamed, never read twice


def _garbage_weights(src: Path, dst: Path) -> Path:
    """A copy of ``src`` whose shards keep their header and size while every tensor byte is garbage
    (0xFF: NaN in float16), so any weight that were read would show."""
    shutil.copytree(src, dst)
    for f in dst.glob("model-0000?-of-00003.safetensors"):
        raw = f.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        f.write_bytes(raw[: 8 + n] + b"\xff" * (len(raw) - 8 - n))
    return dst


def test_flops_and_inspect_read_no_weights(x5, tmp_path, cli, monkeypatch):
    """On the meta path nothing reads tensor data: the same answers from shards whose tensor bytes are
    garbage, with safetensors' readers made to fail (chmod cannot block reads when tests run as root)."""
    before = cli("flops", "--model", str(x5), "--json")
    assert before.exit_code == 0, before.stderr
    n_params = sum(v.numel() for k, v in stored(x5).items() if "rope" not in k)
    stripped = _garbage_weights(x5, tmp_path / "garbage")
    import safetensors
    import safetensors.torch

    def refuse(*a, **kw):
        raise AssertionError("a weight file was read")

    monkeypatch.setattr(safetensors, "safe_open", refuse)
    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    after = cli("flops", "--model", str(stripped), "--json")
    assert after.exit_code == 0, after.stderr
    assert json.loads(after.stdout)["total"] == json.loads(before.stdout)["total"] > 0
    res = cli("inspect", str(stripped), "--json")
    assert res.exit_code == 0, res.stderr
    model = json.loads(res.stdout)["model"]
    assert [t["name"] for t in model["towers"]] == X5.split(";")
    assert model["visual_tokens"] == 16 and model["ignored_files"] == ["model-00001-of-00003_old.safetensors"]
    assert model["n_parameters"] == n_params
    from meteor_cli.model.eagle.format import build_empty, read_release

    vlm = build_empty(read_release(stripped))  # a meta-device model from headers alone
    assert sum(p.numel() for p in vlm.parameters()) == model["n_parameters"]


def test_infer_cli_on_a_release(x5, tmp_path, cli):
    res = cli("infer", "--model", str(x5), "--image", str(_save(tmp_path)), "--prompt", "<image>\nwhat is shown",
              "--max-new-tokens", "3", "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    row = json.loads(res.stdout.splitlines()[0])
    assert isinstance(row["text"], str) and row["metadata"]["visual_tokens"] == 16
    assert row["metadata"]["per_encoder"] == {"fused": 16}


def test_tower_flops_equal_the_counter(x5):
    """``meteor flops``' cost model of every EAGLE tower equals FlopCounterMode on the tower's forward;
    the det tower's count is the windowed attention EAGLE computes, so the dense masked attention
    meteor runs exceeds it by exactly the masked-out scores (2·n·(n − n·w²/G²)·D per window block)."""
    from meteor_cli.flops import encoder_macs
    from meteor_cli.model.checkpoint import load_model

    from .test_encoder_flops import counted

    vlm = load_model(str(x5))
    x = vlm.image_tensor(_image())[None]
    for name, enc in vlm.encoders.items():
        got = counted(lambda: vlm.run_encoder(name, x))
        want = 2 * encoder_macs(enc.cfg)
        if name == "det":
            n, D = enc.cfg.num_tokens, enc.cfg.width
            masked = 2 * n * (n - n * enc.window**2 / n) * D * (enc.cfg.depth - len(enc.global_blocks))
            want += 2 * masked
        assert got == want, name


def _rows(res) -> list[dict]:
    assert res.exit_code == 0, res.stderr
    return [json.loads(x) for x in res.stdout.splitlines() if x.strip()]


def test_stage3_on_a_release(x5, tmp_path, cli):
    """Stage 3 needs nothing tower-specific: a full budget answers as the unpruned model, a pruned
    schedule keeps what it promises, and every registered Stage-3 policy runs on a release."""
    from meteor_cli.data.synthvqa import generate

    generate(tmp_path / "sv", n_train=0, n_eval=1, seed=0)
    q = ["--questions", "sv/eval/questions.jsonl", "--image-root", "sv", "--max-new-tokens", "4", "--device", "cpu",
         "-q"]
    plain = _rows(cli("infer", "--model", str(x5), *q))
    assert cli("prune-llm", "--model", str(x5), "--method", "fixed", "--layers", "1", "--keep", "16", "--heads", "2",
               "--out", "full.json", "--device", "cpu", "-q").exit_code == 0
    full = _rows(cli("infer", "--model", str(x5), "--prune-llm", "full.json", *q))
    assert [r["text"] for r in full] == [r["text"] for r in plain]
    assert all(r["metadata"]["stage3"]["kept"] == [16] for r in full)
    for method, args, kept in [("fixed", ["--layers", "1", "--keep", "5", "--heads", "2"], [5]),
                               ("fastv", ["--layers", "1", "--drop-ratio", "0.75"], [4]),
                               ("pdrop", ["--layers", "1", "--keep", "0.5"], [8]),
                               ("all-heads", ["--layers", "1", "--keep", "6"], [6]),
                               ("meteor", ["--layers", "1", "--heads", "2"], None)]:
        res = cli("prune-llm", "--model", str(x5), "--method", method, *args, "--out", f"{method}.json",
                  "--device", "cpu", "-q")
        assert res.exit_code == 0, (method, res.stderr)
        rows = _rows(cli("infer", "--model", str(x5), "--prune-llm", f"{method}.json", *q))
        s3 = [r["metadata"]["stage3"] for r in rows]
        if kept is not None:
            assert all(s["kept"] == kept for s in s3), (method, s3)
        assert all(all(k <= 16 for k in s["kept"]) and s["layer_averaged"] <= 16 for s in s3), (method, s3)
