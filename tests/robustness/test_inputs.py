"""Every bad input is a named error with a documented exit code (issue #12, items 3, 9-13).

Each case feeds one damaged or hostile input through the boundary that reads that kind of file
(artifacts, safetensors, checkpoint directories, model configs, data files, images, outputs,
meteor.toml / METEOR_* variables) and asserts the exit code and that the message names what is
wrong — never exit 1 ("internal error … bug"). Models are the tiny preset, saved once per module.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest

from meteor_cli import artifacts as A
from meteor_cli.errors import (ExitCode, InputNotFoundError, InvalidInputError, OutputNotWritableError,
                               UsageError)

# --------------------------------------------------------------------------------------------
# Fixtures: one tiny checkpoint (single file and sharded), copied per test
# --------------------------------------------------------------------------------------------

TINY_ALLOCATION = {
    "strategy": "rank", "native_tokens": {"vit": 16, "clip": 64, "convnext": 16},
    "stage1": {"totals": [60, 40, 30], "encoders": {
        "vit": {"points": [0, 1, 2], "keep": [12, 10, 8]}, "clip": {"points": [0, 1, 2], "keep": [36, 24, 16]},
        "convnext": {"points": [3, 3, 3], "keep": [12, 6, 6]}}},
    "stage2": {"keep": 20},
}

RANKS = {
    "schema": "meteor.ranks/v1", "method": "nuclear", "grid": 4,
    "encoders": {"a": {"points": [0, 1], "rank": [0.5, 0.4], "std": [0.1, 0.1], "n_images": 3, "tokens": 64},
                 "b": {"points": [1, 1], "rank": [0.3, 0.3], "std": [0.1, 0.1], "n_images": 3, "tokens": 16}},
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``{"single": dir, "sharded": dir}``: the tiny preset saved whole and in shards of 200 kB."""
    from meteor_cli.model.checkpoint import load_model, save_checkpoint

    root = tmp_path_factory.mktemp("ckpts")
    vlm = load_model("tiny")
    save_checkpoint(vlm, root / "single")
    save_checkpoint(vlm, root / "sharded", max_shard_bytes=200_000)
    return {"single": root / "single", "sharded": root / "sharded"}


@pytest.fixture
def ckpt(saved, tmp_path):
    """A private copy of the single-file checkpoint: ``tmp_path / "ck"``."""
    return Path(shutil.copytree(saved["single"], tmp_path / "ck"))


@pytest.fixture
def sharded(saved, tmp_path):
    return Path(shutil.copytree(saved["sharded"], tmp_path / "ck"))


def _index(d: Path) -> dict:
    return json.loads((d / "model.safetensors.index.json").read_text())


def _set_index(d: Path, index: dict) -> None:
    (d / "model.safetensors.index.json").write_text(json.dumps(index))


def _err(res) -> str:
    return res.stderr if hasattr(res, "stderr") else res.output


def _named(res, code: int, *fragments: str) -> None:
    """The command exited with ``code`` and its stderr names every fragment; no 'internal error'."""
    err = _err(res)
    assert res.exit_code == code, (res.exit_code, err, res.stdout)
    assert "internal error" not in err
    for f in fragments:
        assert f in err, (f, err)


# --------------------------------------------------------------------------------------------
# Item 3: a shard index may not name a file outside the checkpoint directory
# --------------------------------------------------------------------------------------------


def _escape_absolute(d: Path, shard: str) -> str:
    outside = d.parent / "outside.safetensors"
    shutil.copy(d / shard, outside)
    return str(outside)


def _escape_dotdot(d: Path, shard: str) -> str:
    shutil.copy(d / shard, d.parent / "outside.safetensors")
    return "../outside.safetensors"


def _escape_symlink(d: Path, shard: str) -> str:
    outside = d.parent / "outside.safetensors"
    shutil.copy(d / shard, outside)
    (d / "link.safetensors").symlink_to(outside)
    return "link.safetensors"


def _escape_subdir(d: Path, shard: str) -> str:
    (d / "sub").mkdir()
    shutil.copy(d / shard, d / "sub" / shard)
    return f"sub/{shard}"


@pytest.mark.parametrize("escape", [_escape_absolute, _escape_dotdot, _escape_symlink, _escape_subdir],
                         ids=["absolute", "dotdot", "symlink", "subdir"])
def test_shard_index_outside_the_checkpoint_is_refused(sharded, cli, escape):
    from meteor_cli.model.checkpoint import read_weights

    index = _index(sharded)
    first = sorted(set(index["weight_map"].values()))[0]
    target = escape(sharded, first)
    index["weight_map"] = {k: (target if v == first else v) for k, v in index["weight_map"].items()}
    _set_index(sharded, index)
    with pytest.raises(InvalidInputError, match="shard") as info:
        read_weights(sharded)
    assert "outside" in info.value.message or "inside the checkpoint" in info.value.message
    _named(cli("inspect", str(sharded)), ExitCode.INVALID_INPUT, "model.safetensors.index.json")


def test_sharded_checkpoint_loads_and_inspects(sharded, cli):
    from meteor_cli.model.checkpoint import load_checkpoint

    assert len(set(_index(sharded)["weight_map"].values())) > 1
    load_checkpoint(sharded)
    res = cli("inspect", str(sharded), "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["valid"] is True


# --------------------------------------------------------------------------------------------
# Item 9: safetensors — truncated, huge or lying headers
# --------------------------------------------------------------------------------------------


def _truncate_data(p: Path) -> None:
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) - 1000])


def _huge_header(p: Path) -> None:
    p.write_bytes(struct.pack("<Q", 1 << 60) + b"{}")


def _header_longer_than_file(p: Path) -> None:
    p.write_bytes(struct.pack("<Q", 5000) + b'{"a": 1}')


def _header_not_json(p: Path) -> None:
    p.write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{[")


def _short_file(p: Path) -> None:
    p.write_bytes(b"\x01\x02")


def _lying_offsets(p: Path) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 8]}}).encode()
    p.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))


def _bool_shape(p: Path) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}).encode()
    p.write_bytes(struct.pack("<Q", len(header)) + header + bytes(4))


BAD_SAFETENSORS = {
    "truncated": (_truncate_data, "truncated"),
    "huge-header": (_huge_header, "header claims"),
    "header-past-end": (_header_longer_than_file, "truncated"),
    "header-not-json": (_header_not_json, "not valid JSON"),
    "shorter-than-8": (_short_file, "8-byte header"),
    "offsets-lie": (_lying_offsets, "needs 64 bytes"),
    "bool-shape": (_bool_shape, "shape"),
}


@pytest.mark.parametrize("damage", list(BAD_SAFETENSORS))
def test_damaged_weights_are_named_by_inspect_and_load(ckpt, cli, damage):
    from meteor_cli.model.checkpoint import load_checkpoint

    fn, fragment = BAD_SAFETENSORS[damage]
    fn(ckpt / "model.safetensors")
    _named(cli("inspect", str(ckpt / "model.safetensors")), ExitCode.INVALID_INPUT, fragment)
    _named(cli("inspect", str(ckpt)), ExitCode.INVALID_INPUT, "model.safetensors")
    with pytest.raises(InvalidInputError, match="model.safetensors"):
        load_checkpoint(ckpt)


def test_load_tensors_refuses_truncated_file(tmp_path):
    import torch

    A.save_tensors(tmp_path / "t.safetensors", {"x": torch.ones(100)})
    _truncate_data_small = (tmp_path / "t.safetensors").read_bytes()[:-10]
    (tmp_path / "t.safetensors").write_bytes(_truncate_data_small)
    with pytest.raises(InvalidInputError, match="truncated"):
        A.load_tensors(tmp_path / "t.safetensors")


# --------------------------------------------------------------------------------------------
# Item 9: checkpoint directories — tokenizer, config.json
# --------------------------------------------------------------------------------------------


def test_checkpoint_without_tokenizer_files(ckpt, cli):
    from meteor_cli.model.checkpoint import load_checkpoint

    for f in ckpt.glob("tokenizer*"):
        f.unlink()
    with pytest.raises(InputNotFoundError, match="no tokenizer files"):
        load_checkpoint(ckpt)
    _named(cli("inspect", str(ckpt)), ExitCode.NOT_FOUND, "no tokenizer files")


def test_damaged_tokenizer_file(ckpt):
    from meteor_cli.model.checkpoint import load_checkpoint

    (ckpt / "tokenizer.json").write_text('{"version": ')
    with pytest.raises(InvalidInputError, match="tokenizer"):
        load_checkpoint(ckpt)


def _cfg(d: Path) -> dict:
    return json.loads((d / "config.json").read_text())


def _edit(change):
    def apply(d: Path) -> None:
        cfg = _cfg(d)
        change(cfg["model"])
        (d / "config.json").write_text(json.dumps({"format": cfg["format"], "model": cfg["model"]}))
    return apply


def _raw(text: bytes):
    def apply(d: Path) -> None:
        (d / "config.json").write_bytes(text)
    return apply


BAD_CONFIGS = {
    "not-json": (_raw(b'{"format": "meteor.checkpoint/v1", "model": {'), "not valid JSON at line 1"),
    "not-utf8": (_raw(b'{"format": "\xff"}'), "not UTF-8"),
    "a-list": (_raw(b"[1, 2]"), "must hold an object"),
    "model-a-string": (_raw(b'{"format": "meteor.checkpoint/v1", "model": "tiny"}'), "field 'model'"),
    "image-size-string": (_edit(lambda m: m["encoders"][0].update(image_size="big")), "encoders[0].image_size"),
    "depth-true": (_edit(lambda m: m["encoders"][1].update(depth=True)), "encoders[1].depth"),
    "encoders-string": (_edit(lambda m: m.update(encoders="vit")), "encoders must be a list"),
    "encoder-not-object": (_edit(lambda m: m.update(encoders=[1])), "encoders[0]"),
    "llm-list": (_edit(lambda m: m.update(llm=[])), "llm."),
    "unknown-field": (_edit(lambda m: m["encoders"][0].update(imagesize=64)), "imagesize: unknown field"),
    "missing-field": (_edit(lambda m: m["encoders"][0].pop("depth")), "encoders[0].depth is missing"),
    "prune-points-strings": (_edit(lambda m: m["encoders"][0].update(prune_points=["1"])), "prune_points"),
    "mean-string": (_edit(lambda m: m["encoders"][0].update(mean="0.5")), "encoders[0].mean"),
}


@pytest.mark.parametrize("damage", list(BAD_CONFIGS))
def test_bad_config_json_is_named(ckpt, cli, damage):
    fn, fragment = BAD_CONFIGS[damage]
    fn(ckpt)
    res = cli("flops", "--model", str(ckpt), "--out", "flops.json")
    _named(res, ExitCode.INVALID_INPUT, fragment)
    assert not Path("flops.json").exists()
    _named(cli("inspect", str(ckpt)), ExitCode.INVALID_INPUT)


def test_model_config_json_file_with_wrong_types(cli, tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"encoders": [{"name": "v", "family": "vit", "image_size": 32,
                                                               "patch": "8", "depth": 2, "width": 16}],
                                                 "llm": {"hf_config": {}}}))
    _named(cli("flops", "--model", "m.json"), ExitCode.INVALID_INPUT, "m.json", "encoders[0].patch")


def test_llm_config_that_transformers_refuses(ckpt):
    from meteor_cli.model.checkpoint import load_checkpoint

    _edit(lambda m: m["llm"]["hf_config"].update(model_type="no-such-llm"))(ckpt)
    with pytest.raises(InvalidInputError, match="config.json"):
        load_checkpoint(ckpt)


# --------------------------------------------------------------------------------------------
# Items 9 and 10: JSON artifacts — bounded reads, wrong types, budgets that do not fit
# --------------------------------------------------------------------------------------------


def _alloc(**changes):
    body = json.loads(json.dumps(TINY_ALLOCATION))
    for path, value in changes.items():
        node = body
        *parents, last = path.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    return body


BAD_ALLOCATIONS = {
    "keep-strings": (_alloc(stage1__encoders__vit__keep=["12", "10", "8"]), "stage1.encoders.vit.keep"),
    "keep-true": (_alloc(stage1__encoders__vit__keep=[True, True, True]), "stage1.encoders.vit.keep"),
    "stage2-true": (_alloc(stage2__keep=True), "stage2.keep"),
    "keep-grows": (_alloc(stage1__encoders__vit__keep=[8, 10, 12]), "must not grow"),
    "keep-over-native": (_alloc(stage1__encoders__vit__keep=[17, 10, 8], stage1__totals=[65, 40, 30]),
                         "more than the encoder's 16 native tokens"),
    "native-true": (_alloc(native_tokens={"vit": True, "clip": 64, "convnext": 16}), "native_tokens"),
    "points-descending": (_alloc(stage1__encoders__vit__points=[2, 1, 0]), "ascending"),
    "points-count": (_alloc(stage1__encoders__vit__points=[0, 1]), "pruning points for 3 budgets"),
    "encoder-not-object": (_alloc(stage1__encoders__vit=[12, 10, 8]), "stage1.encoders.vit"),
    "totals-strings": (_alloc(stage1__totals=["60", "40", "30"]), "stage1.totals"),
}


@pytest.mark.parametrize("case", list(BAD_ALLOCATIONS))
def test_bad_allocation_fields_are_named(cli, tmp_path, case):
    body, fragment = BAD_ALLOCATIONS[case]
    (tmp_path / "a.json").write_text(json.dumps({"schema": "meteor.allocation/v1", **body}))
    _named(cli("inspect", "a.json"), ExitCode.INVALID_INPUT, "a.json", fragment)


def test_allocation_beyond_the_encoder_depth_is_refused(cli, tmp_path):
    body = _alloc(stage1__encoders__vit__points=[0, 1, 7])
    A.write_artifact(tmp_path / "a.json", A.make_artifact("meteor.allocation", body))
    _named(cli("flops", "--model", "tiny", "--allocation", "a.json"), ExitCode.INVALID_INPUT,
           "stage1.encoders.vit.points", "beyond the encoder's depth")


def test_allocation_for_another_model_is_refused(cli, tmp_path):
    body = _alloc(native_tokens={"vit": 16, "clip": 256, "convnext": 16})
    A.write_artifact(tmp_path / "a.json", A.make_artifact("meteor.allocation", body))
    _named(cli("flops", "--model", "tiny", "--allocation", "a.json"), ExitCode.INVALID_INPUT, "native_tokens.clip")


def test_allocation_that_fits_is_accepted(cli, tmp_path):
    A.write_artifact(tmp_path / "a.json", A.make_artifact("meteor.allocation", TINY_ALLOCATION))
    res = cli("flops", "--model", "tiny", "--allocation", "a.json", "--out", "f.json")
    assert res.exit_code == 0, res.output


BAD_RANKS = {
    "tokens-true": ({"tokens": True}, "encoders.a.tokens"),
    "rank-strings": ({"rank": ["0.5", "0.4"]}, "encoders.a.rank"),
    "n-images-true": ({"n_images": True}, "encoders.a.n_images"),
    "points-float": ({"points": [0.5, 1]}, "encoders.a.points"),
}


@pytest.mark.parametrize("case", list(BAD_RANKS))
def test_bad_ranks_fields_are_named(cli, tmp_path, case):
    change, fragment = BAD_RANKS[case]
    ranks = json.loads(json.dumps(RANKS))
    ranks["encoders"]["a"].update(change)
    (tmp_path / "r.json").write_text(json.dumps(ranks))
    _named(cli("allocate", "--ranks", "r.json", "--total", "20"), ExitCode.INVALID_INPUT, fragment)
    assert not Path("allocation.json").exists()


BAD_PRUNE_LLM = {
    "layers-true": ({"layers": [True, 2]}, "layers"),
    "layers-descending": ({"layers": [3, 1]}, "strictly increasing"),
    "heads-true": ({"heads": True}, "heads"),
    "keep-strings": ({"keep": ["12"]}, "keep"),
    "lam-zero": ({"lam": 0}, "lam"),
}


@pytest.mark.parametrize("case", list(BAD_PRUNE_LLM))
def test_bad_prune_llm_fields_are_named(cli, tmp_path, case):
    change, fragment = BAD_PRUNE_LLM[case]
    body = {"schema": "meteor.prune-llm/v1", "method": "meteor", "layers": [1, 3], "heads": 2, "lam": 50.0,
            "keep": [12, 5], **change}
    (tmp_path / "p.json").write_text(json.dumps(body))
    _named(cli("inspect", "p.json"), ExitCode.INVALID_INPUT, "p.json", fragment)


def test_keep_ratio_zero_is_refused(cli, tmp_path):
    (tmp_path / "r.json").write_text(json.dumps(RANKS))
    _named(cli("allocate", "--ranks", "r.json", "--keep-ratio", "0"), ExitCode.USAGE, "--keep-ratio")
    assert cli("allocate", "--ranks", "r.json", "--keep-ratio", "0.5").exit_code == 0


@pytest.mark.parametrize("source", ["/dev/zero", "fifo", "big"])
def test_json_inputs_are_read_with_a_bound(cli, tmp_path, monkeypatch, source):
    if source == "fifo":
        os.mkfifo(tmp_path / "fifo")
        path, fragment, code = str(tmp_path / "fifo"), "not a regular file", ExitCode.INVALID_INPUT
    elif source == "big":
        monkeypatch.setattr(A, "MAX_JSON_BYTES", 1000)
        (tmp_path / "big.json").write_text(json.dumps({**RANKS, "pad": "x" * 2000}))
        path, fragment, code = "big.json", "larger than", ExitCode.INVALID_INPUT
    else:
        path, fragment, code = source, "not a regular file", ExitCode.INVALID_INPUT
    _named(cli("allocate", "--ranks", path, "--total", "20"), code, fragment)


def test_non_utf8_artifact(cli, tmp_path):
    (tmp_path / "r.json").write_bytes(json.dumps(RANKS).encode().replace(b"nuclear", b"nucl\xe9ar"))
    _named(cli("allocate", "--ranks", "r.json", "--total", "20"), ExitCode.INVALID_INPUT, "not UTF-8")


# --------------------------------------------------------------------------------------------
# Item 9: data files — encoding, conversations, images
# --------------------------------------------------------------------------------------------


def test_non_utf8_data_file(tmp_path):
    from meteor_cli.data.llava import iter_json_records

    (tmp_path / "d.json").write_bytes(b'[{"id": "1", "image": "a.png", "conversations": []}, {"id": "caf\xe9"}]')
    with pytest.raises(InvalidInputError, match="not UTF-8"):
        list(iter_json_records(tmp_path / "d.json"))


def test_non_utf8_question_file(tmp_path):
    from meteor_cli.eval.benchmarks import read_jsonl

    (tmp_path / "q.jsonl").write_bytes(b'{"question_id": 1}\n{"question_id": "\xff"}\n')
    with pytest.raises(InvalidInputError, match=r"q.jsonl:2: not UTF-8"):
        read_jsonl(tmp_path / "q.jsonl", ["question_id"])


BAD_CONVERSATIONS = {
    "a-string": ("USER: hi ASSISTANT: hello", "'conversations' is str"),
    "turn-without-value": ([{"from": "human", "value": "q"}, {"from": "gpt"}], "conversations[1] has no 'value'"),
    "list-value": ([{"from": "human", "value": ["q"]}, {"from": "gpt", "value": "a"}],
                   "conversations[0].value is list"),
    "turn-a-string": (["q", "a"], "conversations[0] is str"),
    "from-missing": ([{"value": "q"}], "conversations[0] has no 'from'"),
}


@pytest.mark.parametrize("case", list(BAD_CONVERSATIONS))
def test_malformed_conversations_are_named(case):
    from meteor_cli.data.tokenizer import texts_of
    from meteor_cli.train.vlm_task import exchanges

    conv, fragment = BAD_CONVERSATIONS[case]
    rec = {"id": "r7", "image": "a.png", "conversations": conv}
    with pytest.raises(InvalidInputError, match="record r7") as info:
        exchanges(rec, 0)
    assert fragment in info.value.message
    with pytest.raises(InvalidInputError, match="record r7"):
        list(texts_of([rec]))


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width × height`` pixels (no pixel data): what a bomb looks like."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_decompression_bomb_is_an_unreadable_image(tmp_path):
    from meteor_cli.data.llava import UnreadableImageError, load_image

    _png_header_only(tmp_path / "bomb.png", 15_000, 15_000)  # 225 megapixels
    with pytest.raises(OSError, match="bomb.png") as info:
        load_image(tmp_path / "bomb.png")
    assert isinstance(info.value, UnreadableImageError)


@pytest.mark.parametrize("max_failed, ok", [(0.5, True), (0.0, False)])
def test_decompression_bomb_is_counted_and_honours_max_failed(tmp_path, max_failed, ok):
    from PIL import Image

    from meteor_cli.train.vlm_task import load_vlm_data

    Image.new("RGB", (8, 8), "red").save(tmp_path / "ok.png")
    _png_header_only(tmp_path / "bomb.png", 15_000, 15_000)
    conv = [{"from": "human", "value": "<image>\ncolour?"}, {"from": "gpt", "value": "red"}]
    recs = [{"id": "ok", "image": "ok.png", "conversations": conv}, {"id": "bomb", "image": "bomb.png", "conversations": conv}]
    (tmp_path / "d.json").write_text(json.dumps(recs))
    if ok:
        with pytest.warns(UserWarning, match="bomb"):
            data = load_vlm_data(tmp_path / "d.json", tmp_path, 16, max_failed=max_failed)
        assert data.ids == ["ok"] and data.failed == ["bomb"]
    else:
        with pytest.warns(UserWarning), pytest.raises(InvalidInputError, match="1 of 2 images could not be read"):
            load_vlm_data(tmp_path / "d.json", tmp_path, 16, max_failed=max_failed)


def test_empty_eval_data_and_empty_shard(cli, tmp_path):
    from meteor_cli.data.synthvqa import generate

    generate(tmp_path / "sv", n_train=0, n_eval=2, seed=0)
    res = cli("eval", "--model", "tiny", "--data", "sv", "--num-chunks", "4", "--chunk-idx", "3", "--device", "cpu")
    _named(res, ExitCode.USAGE, "--chunk-idx 3 of --num-chunks 4 selects no question")
    for f in (tmp_path / "sv").rglob("*.jsonl"):
        f.write_text("")
    res = cli("eval", "--model", "tiny", "--data", "sv", "--device", "cpu")
    _named(res, ExitCode.INVALID_INPUT, "no questions")


# --------------------------------------------------------------------------------------------
# Item 9: outputs that cannot be written
# --------------------------------------------------------------------------------------------


def _ranks_file(tmp_path: Path) -> None:
    (tmp_path / "r.json").write_text(json.dumps(RANKS))


def test_out_onto_an_existing_directory(cli, tmp_path):
    _ranks_file(tmp_path)
    (tmp_path / "outdir").mkdir()
    _named(cli("allocate", "--ranks", "r.json", "--total", "20", "--out", "outdir"), ExitCode.NOT_FOUND,
           "outdir is an existing directory")


def test_out_below_a_file(cli, tmp_path):
    _ranks_file(tmp_path)
    (tmp_path / "afile").write_text("x")
    _named(cli("allocate", "--ranks", "r.json", "--total", "20", "--out", "afile/sub/a.json"), ExitCode.NOT_FOUND,
           "afile is a file, not a directory")


@pytest.mark.parametrize("err, fragment", [(errno.ENOSPC, "no space left on"), (errno.EROFS, "read-only"),
                                           (errno.EACCES, "permission denied")])
def test_out_on_a_full_or_read_only_disk(cli, tmp_path, monkeypatch, err, fragment):
    _ranks_file(tmp_path)

    def fail(*a, **k):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(A.os, "fsync", fail)
    _named(cli("allocate", "--ranks", "r.json", "--total", "20", "--out", "a.json"), ExitCode.NOT_FOUND,
           fragment, "a.json")
    assert not Path("a.json").exists() and not list(tmp_path.glob(".a.json.*"))


def test_directory_output_onto_a_file_and_full_disk(tmp_path, monkeypatch):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputNotWritableError, match="is an existing file"):
        with A.atomic_dir(tmp_path / "f"):
            pass
    with pytest.raises(OutputNotWritableError, match="no space left on .* while writing"):
        with A.atomic_dir(tmp_path / "d") as tmp:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "model.safetensors"))
    assert not (tmp_path / "d").exists() and [p.name for p in tmp_path.iterdir()] == ["f"]


def test_unreadable_directory_for_output_is_named(tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(A.tempfile, "mkstemp", refuse)
    with pytest.raises(OutputNotWritableError, match="permission denied"):
        A.atomic_write(tmp_path / "x.json", "{}")


def test_usage_error_is_not_swallowed():
    assert issubclass(OutputNotWritableError, A.MeteorError) and not issubclass(OutputNotWritableError, UsageError)


# --------------------------------------------------------------------------------------------
# Item 11: `meteor inspect` checks what it calls valid
# --------------------------------------------------------------------------------------------


def test_inspect_missing_shard(sharded, cli):
    shard = sorted(set(_index(sharded)["weight_map"].values()))[-1]
    (sharded / shard).unlink()
    _named(cli("inspect", str(sharded)), ExitCode.NOT_FOUND, f"shard {shard}", "is missing")


def test_inspect_truncated_shard(sharded, cli):
    shard = sorted(set(_index(sharded)["weight_map"].values()))[0]
    _truncate_data(sharded / shard)
    _named(cli("inspect", str(sharded)), ExitCode.INVALID_INPUT, shard, "truncated")


def test_inspect_index_mapping_a_tensor_to_the_wrong_shard(sharded, cli):
    index = _index(sharded)
    shards = sorted(set(index["weight_map"].values()))
    name = next(k for k, v in index["weight_map"].items() if v == shards[0])
    index["weight_map"][name] = shards[1]
    _set_index(sharded, index)
    _named(cli("inspect", str(sharded)), ExitCode.INVALID_INPUT, repr(name), "does not hold it")


def test_inspect_verify_reads_every_tensor(ckpt, cli):
    from safetensors.torch import load_file, save_file

    res = cli("inspect", str(ckpt), "--verify", "--json")
    assert res.exit_code == 0, res.output
    verified = json.loads(res.stdout)["safetensors"][0]["verified"]
    assert verified["n_tensors"] > 100 and verified["n_bytes"] > 1_000_000
    sd = load_file(str(ckpt / "model.safetensors"))
    name = sorted(k for k, v in sd.items() if v.is_floating_point())[0]
    sd[name].view(-1)[0] = float("nan")
    save_file(sd, str(ckpt / "model.safetensors"))
    assert cli("inspect", str(ckpt)).exit_code == 0  # headers and ranges are fine
    _named(cli("inspect", str(ckpt), "--verify"), ExitCode.INVALID_INPUT, repr(name), "NaN/inf")


# --------------------------------------------------------------------------------------------
# Item 12: a bad value names where it came from
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("toml, env, code, fragments", [
    ('seed = "abc"\n', {}, ExitCode.INVALID_INPUT, ["meteor.toml top level", "seed = 'abc'"]),
    ('[allocate]\ntotal = "x"\n', {}, ExitCode.INVALID_INPUT, ["meteor.toml [allocate]", "total = 'x'"]),
    ('[allocate]\ntotal = true\n', {}, ExitCode.INVALID_INPUT, ["[allocate]: total = true", "not true/false"]),
    ('fusion-keep = [1, 2]\n', {}, ExitCode.INVALID_INPUT, ["top level: fusion-keep is a TOML array"]),
    ('device = "tpu"\n', {}, ExitCode.USAGE, ["unknown device 'tpu'", "meteor.toml top level"]),
    ("", {"METEOR_SEED": "abc"}, ExitCode.USAGE, ["METEOR_SEED='abc'"]),
    ("", {"METEOR_ALLOCATE_TOTAL": "x"}, ExitCode.USAGE, ["METEOR_ALLOCATE_TOTAL='x'"]),
    ("", {"METEOR_DEVICE": "tpu"}, ExitCode.USAGE, ["unknown device 'tpu'", "METEOR_DEVICE"]),
])
def test_bad_values_name_their_source(cli, tmp_path, toml, env, code, fragments):
    if toml:
        (tmp_path / "meteor.toml").write_text(toml)
    res = cli("allocate", "--ranks", "r.json", env=env)
    _named(res, code, *fragments)
    unset = {"METEOR_ALLOCATE_SEED", "METEOR_ALLOCATE_DEVICE", "METEOR_SEED", "METEOR_DEVICE",
             "METEOR_TOTAL"} - set(env)
    assert not any(v in res.stderr for v in unset), res.stderr  # never blames a variable that is not set


# --------------------------------------------------------------------------------------------
# Item 13: artifacts are written with the user's umask
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                        (0o002, 0o664, 0o775)])
def test_outputs_follow_the_umask(tmp_path, umask, file_mode, dir_mode):
    import stat

    old = os.umask(umask)
    try:
        A.atomic_write(tmp_path / "a.json", "{}")
        with A.atomic_dir(tmp_path / "d") as tmp:
            (tmp / "x").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == dir_mode
