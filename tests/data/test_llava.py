"""Streaming LLaVA-format data, deterministic samples and shards, image loading."""

from __future__ import annotations

import json

import pytest

from meteor_cli.data import llava as L
from meteor_cli.errors import InputNotFoundError, InvalidInputError, UsageError


def _records(n, every_text_only=5):
    out = []
    for i in range(n):
        rec = {"id": f"r{i}", "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}
        if i % every_text_only:
            rec["image"] = f"img/{i}.png"
        out.append(rec)
    return out


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_streams_json_list_and_jsonl(tmp_path, fmt, monkeypatch):
    recs = _records(200)
    path = tmp_path / f"train.{fmt}"
    path.write_text(json.dumps(recs, indent=1) if fmt == "json" else "\n".join(map(json.dumps, recs)) + "\n")
    monkeypatch.setattr(L, "_CHUNK", 97)  # force objects to straddle buffer boundaries
    assert list(L.iter_json_records(path)) == recs


def test_malformed_and_missing(tmp_path):
    with pytest.raises(InputNotFoundError):
        list(L.iter_json_records(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('[{"id": 1}, {"id": 2,')
    with pytest.raises(InvalidInputError, match="record 1"):
        list(L.iter_json_records(bad))
    notobj = tmp_path / "n.jsonl"
    notobj.write_text('{"id": 1}\n[1, 2]\n')
    with pytest.raises(InvalidInputError, match="record 1 is a list"):
        list(L.iter_json_records(notobj))


def test_sample_is_deterministic_and_skips_text_only(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(_records(1000)))
    a = L.sample_records(path, fraction=0.01, seed=3)
    b = L.sample_records(path, fraction=0.01, seed=3)
    c = L.sample_records(path, fraction=0.01, seed=4)
    assert a == b and a.indices != c.indices
    assert len(a.indices) == 8  # round(0.01 * 800 image records)
    assert a.n_records == 1000 and a.n_without_image == 200
    assert a.indices == sorted(a.indices) and all(i % 5 for i in a.indices)
    assert a.ids == [f"r{i}" for i in a.indices]
    assert [i for i, _ in L.iter_selected(path, a.indices)] == a.indices
    assert len(L.sample_records(path, count=5000, seed=0).indices) == 800  # capped at what exists
    assert len(L.sample_records(path, fraction=1e-9, seed=0).indices) == 1  # at least one


def test_shards_partition_the_sample(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(_records(100)))
    s = L.sample_records(path, count=10, seed=0)
    parts = [s.shard(3, k) for k in range(3)]
    assert [len(p.indices) for p in parts] == [4, 4, 2]
    assert sum((p.indices for p in parts), []) == s.indices
    with pytest.raises(UsageError):
        s.shard(3, 3)


def test_sample_arguments(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps([{"id": 1, "conversations": []}]))
    with pytest.raises(InvalidInputError, match="none of its 1 records has an `image`"):
        L.sample_records(path, count=1)
    with pytest.raises(UsageError):
        L.sample_records(path)


def test_load_image_and_corrupt_files(tmp_path):
    from PIL import Image

    Image.new("L", (8, 6), 128).save(tmp_path / "ok.png")
    im = L.load_image(tmp_path / "ok.png")
    assert im.mode == "RGB" and im.size == (8, 6)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(OSError):
        L.load_image(tmp_path / "bad.png")
    with pytest.raises(OSError):
        L.load_image(tmp_path / "missing.png")
    assert L.resolve_image({"image": "a/b.png"}, tmp_path) == tmp_path / "a/b.png"
