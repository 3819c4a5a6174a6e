"""Load time and peak memory of EAGLE checkpoints through meteor's ``eagle`` format.

Three cases, each in a fresh subprocess (peak RSS is per process):

* ``x5-meta`` — a full-size Eagle-X5-7B layout (CLIP-L/14-336, ConvNeXt-XXL, SAM-L, EVA-02-L det,
  Pix2Struct-L, Vicuna-7B: the release's tensor names and shapes) written as sparse shards: real
  headers, the full file size, no tensor bytes on disk. Times ``read_config`` (headers), the meta-device
  build, and ``meteor flops``; peak RSS shows nothing of the ~18 GB of weights is ever held.
* ``stream`` — a real-weights release (tiny towers, a 16-layer 1024-wide Llama, fp16 in 4 shards)
  loaded by the streaming loader; peak RSS over the float32 model's bytes (1 = one copy).
* ``naive`` — the same directory loaded the obvious way for comparison (every shard read into one
  state dict, then ``load_state_dict``): the ratio two copies cost.

    .venv/bin/python bench/eagle_load.py            # table
    .venv/bin/python bench/eagle_load.py --json     # one JSON object
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    """Peak resident memory of this process in MiB: Linux's VmHWM (ru_maxrss survives exec, so a
    subprocess would report its parent's peak), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def x5_config(llm_layers: int = 32, hidden: int = 4096, inter: int = 11008, vocab: int = 32000):
    from meteor_cli.config import EncoderConfig, LLMConfig, ModelConfig
    from meteor_cli.model.eagle.towers import CLIP_MEAN, CLIP_STD
    from meteor_cli.model.presets import llama_config

    c = {"has_cls": False, "mean": CLIP_MEAN, "std": CLIP_STD}
    enc = [
        EncoderConfig("clip", "eagle-clip", 336, 14, 24, 1024, 16, options={"mlp": 4096}, **c),
        EncoderConfig("convnext", "eagle-convnext", 1024, 32, 4, 3072, dims=[384, 768, 1536, 3072],
                      stage_depths=[3, 4, 30, 3], options={"head_classes": 1024}, **c),
        EncoderConfig("sam", "eagle-sam", 1024, 32, 24, 1024, 16, options={
            "mlp": 4096, "transformer_width": 1024, "neck": 256, "window": 14, "global_blocks": [5, 11, 17, 23]}, **c),
        EncoderConfig("det", "eagle-det", 1024, 16, 24, 1024, 16, options={
            "mlp": 2730, "pretrain_grid": 14, "window": 16, "rope_ref": 16,
            "global_blocks": [i for i in range(24) if i % 3 == 2]}, **c),
        EncoderConfig("pix2struct", "eagle-pix2struct", 720, 16, 18, 1536, 24, options={
            "mlp": 3968, "d_kv": 64, "max_patches": 2048, "seq_len": 4096}, **c),
    ]
    llm = {**llama_config(vocab, hidden, llm_layers, hidden // 128, hidden // 128, inter), "tie_word_embeddings": False,
           "bos_token_id": 1, "eos_token_id": 2, "max_position_embeddings": 4096}
    return ModelConfig(encoders=enc, llm=LLMConfig(hf_config=llm), fusion="pre-projection", template="vicuna_v1",
                       grid=32, image_mode="pad")


def write_release(directory: Path, cfg, *, data: bool, shards: int = 4, options: dict | None = None) -> int:
    """An EAGLE release directory for ``cfg`` (names via meteor's inverse mapping); ``data`` False:
    sparse shards (headers, no data). Returns the number of parameters."""
    import torch
    from safetensors.torch import save_file

    from meteor_cli.data.tokenizer import build_word_tokenizer
    from meteor_cli.model.eagle.format import parameters_on_meta, to_release
    from meteor_cli.model.vlm import MultiEncoderVLM

    with parameters_on_meta():
        vlm = MultiEncoderVLM(cfg)
    towers = {i: e.name for i, e in enumerate(cfg.encoders)}
    shapes = {to_release(n, towers): list(p.shape) for n, p in vlm.named_parameters()}
    directory.mkdir(parents=True, exist_ok=True)
    names = list(shapes)
    parts = [names[i::shards] for i in range(shards)]
    weight_map = {}
    g = torch.Generator().manual_seed(0)
    for j, part in enumerate(parts, 1):
        fname = f"model-{j:05d}-of-{shards:05d}.safetensors"
        weight_map |= dict.fromkeys(part, fname)
        if data:
            save_file({k: (torch.randn(*shapes[k], generator=g) * 0.02).half() for k in part}, str(directory / fname))
            continue
        header, off = {}, 0
        for k in part:
            n = 2 * math.prod(shapes[k])
            header[k] = {"dtype": "F16", "shape": shapes[k], "data_offsets": [off, off + n]}
            off += n
        blob = json.dumps(header).encode()
        with open(directory / fname, "wb") as f:  # sparse: the full size on paper, no tensor bytes on disk
            f.write(len(blob).to_bytes(8, "little") + blob)
            f.truncate(8 + len(blob) + off)
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    hf = dict(cfg.llm.hf_config)
    hf.pop("model_type")
    widths = sum(e.width for e in cfg.encoders)
    (directory / "config.json").write_text(json.dumps({
        "model_type": "eagle_llama", "architectures": ["EagleLlamaForCausalLM"], **hf,
        "mm_vision_tower": ";".join(f"{e.name}-{448 if e.name == 'clip' else 1024}" for e in cfg.encoders),
        "mm_hidden_size": widths, "mm_projector_type": "mlp2x_gelu", "image_aspect_ratio": "pad",
        **({"meteor_eagle": options} if options else {})}))
    tok = build_word_tokenizer(["what is shown in the image"])
    tok.save_pretrained(directory)
    return sum(math.prod(s) for s in shapes.values())


def small_towers_config():
    """Tiny towers (the tests' geometry) + a 16-layer 1024-wide Llama: ~0.27 B parameters, mostly LLM."""
    from meteor_cli.config import EncoderConfig, ModelConfig

    cfg = x5_config(llm_layers=16, hidden=1024, inter=2816)
    c = {"has_cls": False, "mean": cfg.encoders[0].mean, "std": cfg.encoders[0].std}
    enc = [
        EncoderConfig("clip", "eagle-clip", 24, 8, 2, 32, 2, options={"mlp": 64}, **c),
        EncoderConfig("convnext", "eagle-convnext", 1024, 32, 4, 32, dims=[8, 16, 24, 32], stage_depths=[1, 1, 1, 1],
                      options={"head_classes": 10}, **c),
        EncoderConfig("det", "eagle-det", 1024, 16, 3, 64, 1, options={"mlp": 170, "pretrain_grid": 14, "window": 16,
                                                                        "rope_ref": 16, "global_blocks": [2]}, **c),
        EncoderConfig("pix2struct", "eagle-pix2struct", 720, 16, 2, 32, 2, options={
            "mlp": 48, "d_kv": 16, "max_patches": 2048, "seq_len": 4096}, **c),
    ]
    return ModelConfig(encoders=enc, llm=cfg.llm, fusion="pre-projection", template="vicuna_v1", grid=32,
                       image_mode="pad")


def _case(case: str, directory: str) -> dict:
    """Runs inside the subprocess."""
    import torch

    import meteor_cli.model.eagle  # noqa: F401  (torch, timm, transformers: the floor every case pays)

    d = Path(directory)
    base = _rss_mb()
    t0 = time.perf_counter()
    if case == "x5-meta":
        from meteor_cli.model.checkpoint import read_config
        from meteor_cli.model.eagle.format import build_empty, read_release

        cfg = read_config(d).validate()
        t1 = time.perf_counter()
        vlm = build_empty(read_release(d))
        t2 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "meteor_cli", "flops", "--model", str(d), "--json"],
                             capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        t3 = time.perf_counter()
        assert out.returncode == 0, out.stderr
        n = sum(p.numel() for p in vlm.parameters())
        return {"case": case, "parameters": n, "read_config_s": t1 - t0, "meta_build_s": t2 - t1,
                "flops_cli_s": t3 - t2, "visual_tokens": cfg.grid**2,
                "flops_total_G": json.loads(out.stdout)["total"] / 1e9, "peak_rss_mb": _rss_mb(),
                "base_rss_mb": base, "weights_fp16_gb": 2 * n / 1e9}
    if case == "stream":
        from meteor_cli.model.eagle.format import load

        vlm = load(d, "cpu")
    else:  # naive: every shard into one dict, then load_state_dict
        from safetensors.torch import load_file

        from meteor_cli.model.eagle.format import build_empty, read_release, to_meteor
        from meteor_cli.model.vlm import MultiEncoderVLM

        rel = read_release(d)
        vlm = MultiEncoderVLM(build_empty(rel).cfg)
        sd = {}
        for f in sorted(set(rel.weight_map.values())):
            sd |= load_file(str(d / f))
        vlm.load_state_dict({to_meteor(k, rel.tower_names): v.float() for k, v in sd.items()}, strict=False)
        del sd
    dt = time.perf_counter() - t0
    nbytes = sum(p.numel() * p.element_size() for p in vlm.parameters())
    return {"case": case, "parameters": sum(p.numel() for p in vlm.parameters()), "load_s": dt,
            "model_fp32_mb": nbytes / 2**20, "peak_rss_mb": _rss_mb(), "base_rss_mb": base,
            "peak_over_model": (_rss_mb() - base) / (nbytes / 2**20), "dtype": str(next(vlm.parameters()).dtype),
            "torch_threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(_case(args.case, args.dir)))
        return
    sys.path.insert(0, str(ROOT))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        full, real = Path(tmp) / "Eagle-X5-7B-headers", Path(tmp) / "Eagle-small-real"
        write_release(full, x5_config(), data=False)
        write_release(real, small_towers_config(), data=True, options={"head_dim": 16})
        for case, d in (("x5-meta", full), ("stream", real), ("naive", real)):
            out = subprocess.run([sys.executable, __file__, "--case", case, "--dir", str(d)], capture_output=True,
                                 text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            if out.returncode:
                raise SystemExit(out.stderr)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}))


if __name__ == "__main__":
    main()
