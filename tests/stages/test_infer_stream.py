"""`meteor infer` as a stream: JSONL requests in, one flushed JSON line per request out, in input
order; a bad request is an inline `error` (exit 8); `--visualize` draws the kept patches."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from meteor_cli import artifacts as A
from meteor_cli.errors import ExitCode
from meteor_cli.visualize import DIM, read_panels

ALLOC = {"strategy": "rank", "stage1": {"totals": [60, 40, 30], "encoders": {
    "vit": {"points": [0, 1, 2], "keep": [12, 10, 8]}, "clip": {"points": [0, 1, 2], "keep": [36, 24, 16]},
    "convnext": {"points": [3, 3, 3], "keep": [12, 6, 6]}}}, "stage2": {"keep": 20}}
COLOUR = (220, 180, 90)


def _setup(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    Image.new("RGB", (96, 96), COLOUR).save(tmp_path / "img" / "plain.png")
    Image.new("RGB", (96, 96), COLOUR).save(tmp_path / "outside.png")
    Image.effect_noise((80, 64), 60).convert("RGB").save(tmp_path / "img" / "noise.png")
    Image.new("RGB", (8, 8), COLOUR).save(tmp_path / "img" / "tiny.png")
    (tmp_path / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    A.write_artifact(tmp_path / "a.json", A.make_artifact("meteor.allocation", ALLOC))
    A.write_artifact(tmp_path / "p.json", A.make_artifact("meteor.prune-llm", {
        "method": "fixed", "layers": [1, 3], "keep": [12, 5], "heads": 5}))


def _lines(*reqs: dict | str) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in reqs)


def test_jsonl_in_order_with_inline_errors_and_limit(cli, tmp_path):
    _setup(tmp_path)
    reqs = _lines({"question_id": "a", "image": "plain.png", "text": "what colour ?"},
                  {"question_id": "b", "image": "broken.png", "text": "what colour ?"},
                  "{not json",
                  {"question_id": "c", "image": "noise.png", "prompt": "<image>\nwhat shape ?"},
                  {"question_id": "d", "image": "tiny.png", "text": "what ?"},
                  {"question_id": "e", "image": "plain.png", "text": "   "},
                  {"question_id": "out", "image": "../outside.png", "text": "what ?"},
                  {"question_id": "f", "image": "plain.png", "text": "never read (--limit)"})
    res = cli("infer", "--model", "tiny", "--questions", "-", "--image-root", "img", "--allocation", "a.json",
              "--prune-llm", "p.json", "--max-new-tokens", "2", "--device", "cpu", "--limit", "7", "--batch-size", "2",
              input=reqs)
    assert res.exit_code == ExitCode.PARTIAL == 8, res.output
    rows = [json.loads(x) for x in res.stdout.splitlines()]
    assert [r["question_id"] for r in rows] == ["a", "b", None, "c", "d", "e", "out"]
    ok = {r["question_id"]: r for r in rows if "error" not in r}
    assert set(ok) == {"a", "c"}
    errors = {r["line"]: r["error"] for r in rows if "error" in r}
    assert "cannot read image" in errors[2] and "not valid JSON" in errors[3]
    assert "smaller than one 32-pixel patch" in errors[5] and "empty prompt" in errors[6]
    assert "'../outside.png'" in errors[7] and "--allow-outside-root" in errors[7]  # confined to --image-root
    meta = ok["a"]["metadata"]
    assert meta["stage1"]["vit"] == {"blocks": [0, 1, 2], "kept": [12, 10, 8], "native": 16}
    assert meta["stage1"]["clip"]["kept"] == [36, 24, 16] and meta["stage1"]["convnext"]["kept"] == [12, 6, 6]
    assert sum(meta["stage2"].values()) == 20 == meta["visual_tokens"] and meta["stage2"] == meta["per_encoder"]
    assert meta["stage3"]["kept"] == [12, 5]
    assert [sum(v[i] for v in meta["stage3"]["per_encoder"].values()) for i in range(2)] == [12, 5]
    t = meta["timing"]
    assert t["prefill_s"] > 0 and t["decode_s"] >= 0 and t["decode_steps"] == 1 and t["batch"] == 2
    assert "answered 2 request(s), 5 failed" in res.stderr

    # a file, --out FILE (written atomically), paths outside the root allowed, every request fine → exit 0
    (tmp_path / "q.jsonl").write_text(_lines({"question_id": 7, "image": "plain.png", "text": "hi"},
                                             {"question_id": 8, "image": "../outside.png", "text": "hi"}))
    res = cli("infer", "--model", "tiny", "--questions", "q.jsonl", "--image-root", "img", "--max-new-tokens", "1",
              "--device", "cpu", "--out", "ans.jsonl", "--json", "-q", "--allow-outside-root")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) | {"seconds": 0} == {"answered": 2, "failed": 0, "out": "ans.jsonl", "seconds": 0}
    row, row8 = (json.loads(x) for x in (tmp_path / "ans.jsonl").read_text().splitlines())
    assert row["question_id"] == 7 and row["metadata"]["visual_tokens"] == 96 and row["metadata"]["stage3"]["kept"] == []
    assert row8["question_id"] == 8 and "error" not in row8
    assert cli("infer", "--model", "tiny", "--questions", "q.jsonl", "--image", "img/plain.png", "--prompt", "x",
               "--device", "cpu").exit_code == ExitCode.USAGE


def _count_highlighted(png: Image.Image, panel: dict) -> int:
    x0, y0, _, _ = panel["box"]
    rows, cols = panel["grid"]
    c = panel["cell"]
    kept = 0
    for r in range(rows):
        for col in range(cols):
            px = png.getpixel((x0 + col * c + c // 2, y0 + r * c + c // 2))
            if px == COLOUR:
                kept += 1
            else:  # a pruned patch is the picture dimmed
                assert all(abs(a - int(b * DIM)) <= 1 for a, b in zip(px, COLOUR)), (panel, px)
    return kept


def test_visualize_one_panel_per_stage_and_counts_match(cli, tmp_path):
    _setup(tmp_path)
    reqs = _lines({"question_id": "q/1", "image": "plain.png", "text": "what colour ?"})
    res = cli("infer", "--model", "tiny", "--questions", "-", "--image-root", "img", "--allocation", "a.json",
              "--prune-llm", "p.json", "--max-new-tokens", "1", "--device", "cpu", "-q", "--visualize", "viz",
              input=reqs)
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout)
    png_path = tmp_path / row["visualization"]
    assert png_path == tmp_path / "viz" / "q_1.png" and png_path.is_file()
    panels = read_panels(png_path)
    meta = row["metadata"]
    # one panel per encoder and stage: 3 Stage-1 points + Stage 2 + 2 Stage-3 layers, for 3 encoders
    assert len(panels) == 3 * (3 + 1 + 2)
    assert [p["stage"] for p in panels if p["grid_name"] == "vit"] == [
        "stage1/0", "stage1/1", "stage1/2", "stage2", "stage3/1", "stage3/3"]
    expected = {}
    for enc in ("vit", "clip", "convnext"):
        for j, k in enumerate(meta["stage1"][enc]["kept"]):
            expected[(enc, f"stage1/{j}")] = k
        expected[(enc, "stage2")] = meta["stage2"][enc]
        for layer, k in zip(meta["stage3"]["layers"], meta["stage3"]["per_encoder"][enc]):
            expected[(enc, f"stage3/{layer}")] = k
    with Image.open(png_path) as im:
        png = im.convert("RGB")
        for p in panels:
            assert p["total"] == p["grid"][0] * p["grid"][1]
            assert p["kept"] == expected[(p["grid_name"], p["stage"])]
            assert _count_highlighted(png, p) == p["kept"], p
    # pruning really shrinks what is highlighted, and the counts fit in each panel's grid
    vit = [p["kept"] for p in panels if p["grid_name"] == "vit"]
    assert vit[:3] == [12, 10, 8] and vit == sorted(vit, reverse=True)


@pytest.mark.skipif(sys.platform == "win32", reason="select() on pipes")
def test_stream_is_flushed_per_line(tmp_path):
    """The first answer arrives while stdin is still open: `meteor infer --questions - | jq` works mid-stream."""
    _setup(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "meteor_cli", "infer", "--model", "tiny", "--questions", "-",
                             "--image-root", "img", "--max-new-tokens", "1", "--device", "cpu", "-q"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path, env=env)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(_lines({"question_id": "first", "image": "plain.png", "text": "what ?"}))
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 240)
        assert ready, "no answer line while stdin is open"
        first = json.loads(proc.stdout.readline())
        assert first["question_id"] == "first" and "text" in first
        assert proc.poll() is None  # still waiting for more requests
        proc.stdin.write(_lines({"question_id": "second", "image": "missing.png", "text": "what ?"}))
        proc.stdin.close()
        rest = [json.loads(x) for x in proc.stdout.read().splitlines()]
        assert [r["question_id"] for r in rest] == ["second"] and "does not exist" in rest[0]["error"]
        assert proc.wait(timeout=60) == ExitCode.PARTIAL
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_transformers_vlm_streams_too(cli, tmp_path):
    """A transformers VLM (LLaVA in miniature) answers the same stream with its Stage-3 counts, and
    --visualize draws its kept patches (tests/model/test_hf_vlm_visualize.py checks the panels)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "model" / "hf_vlm_builders.py"
    spec = importlib.util.spec_from_file_location("hf_vlm_builders", path)
    assert spec is not None and spec.loader is not None
    builders = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builders)
    d = builders.build_llava(tmp_path / "llava")
    _setup(tmp_path)
    A.write_artifact(tmp_path / "p3.json", A.make_artifact("meteor.prune-llm", {
        "method": "fixed", "layers": [1, 3], "keep": [3, 2], "heads": 2}))
    args = ["infer", "--model", str(d), "--questions", "-", "--image-root", "img", "--prune-llm", "p3.json",
            "--max-new-tokens", "2", "--device", "cpu", "-q"]
    res = cli(*args, input=_lines({"question_id": "a", "image": "noise.png", "text": "what ?"},
                                  {"question_id": "b", "image": "broken.png", "text": "what ?"}))
    assert res.exit_code == ExitCode.PARTIAL, res.output
    a, b = (json.loads(x) for x in res.stdout.splitlines())
    assert a["metadata"]["stage3"]["kept"] == [3, 2] and a["metadata"]["visual_tokens"] == 16
    assert a["metadata"]["stage1"] == {"vision": {"blocks": [], "kept": [], "native": 16}}  # no Stage 1 on the tower
    assert a["metadata"]["timing"]["prefill_s"] > 0
    assert b["question_id"] == "b" and "cannot read image" in b["error"]
    res = cli(*args, "--visualize", "viz", input=_lines({"question_id": "a", "image": "noise.png", "text": "x"}))
    assert res.exit_code == 0, res.output
    panels = read_panels(tmp_path / json.loads(res.stdout)["visualization"])
    assert [(p["stage"], p["kept"], p["total"]) for p in panels] == [("input", 16, 16), ("stage3/1", 3, 16),
                                                                      ("stage3/3", 2, 16)]
