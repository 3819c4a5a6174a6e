"""Artifacts: schema envelope, provenance, validation errors, atomic writes, stdin/stdout."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from importlib.metadata import version

import pytest
import torch

from meteor_cli import artifacts as A
from meteor_cli.errors import ExitCode, InputNotFoundError, InvalidInputError, UnsupportedVersionError

ALLOCATION = {
    "strategy": "rank",
    "stage1": {"totals": [30, 12], "encoders": {"clip": {"points": [1, 3], "keep": [20, 8]},
                                                 "convnext": {"points": [3, 3], "keep": [10, 4]}}},
    "stage2": {"keep": 8},
}


def _write(path, kind="meteor.allocation", body=ALLOCATION, inputs=()):
    art = A.make_artifact(kind, body, inputs=inputs, command=["meteor", "allocate", "--total", "12"])
    A.write_artifact(path, art)
    return art


def test_json_round_trip_keeps_body_and_provenance(tmp_path):
    src = tmp_path / "ranks.json"
    src.write_text("{}")
    path = tmp_path / "allocation.json"
    _write(path, inputs=[src])
    art = A.read_artifact(path, "meteor.allocation")
    assert art.schema == "meteor.allocation/v1" and art.kind == "meteor.allocation" and art.version == 1
    assert art.body == ALLOCATION
    assert art.producer["command"] == "meteor allocate --total 12"
    assert art.producer["torch_version"] == version("torch") and art.producer["meteor_version"] == version("meteor")
    assert art.producer["created_utc"].endswith("Z")
    assert set(art.producer) == {"command", "meteor_version", "torch_version", "git_sha", "created_utc"}
    assert art.inputs == [{"path": str(src), "sha256": A.sha256_file(src)}]
    raw = json.loads(path.read_text())
    assert list(raw)[:3] == ["schema", "producer", "inputs"] and raw["stage2"] == {"keep": 8}


def test_new_artifacts_are_validated_before_writing(tmp_path):
    bad = {**ALLOCATION, "stage2": {"keep": 0}}
    with pytest.raises(InvalidInputError, match="stage2.keep"):
        A.make_artifact("meteor.allocation", bad)


def test_stdout_and_stdin(tmp_path, monkeypatch, capsysbinary):
    art = A.make_artifact("meteor.prune-llm", {"method": "meteor", "layers": [4, 12, 20]})
    A.write_artifact("-", art)
    blob = capsysbinary.readouterr().out
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(blob)))
    back = A.read_artifact("-", "meteor.prune-llm")
    assert back.body == {"method": "meteor", "layers": [4, 12, 20]} and back.path == "<stdin>"


@pytest.mark.parametrize(
    "content, error, fragment",
    [
        ('{"schema": "meteor.allocation/v1", ', InvalidInputError, "not valid JSON at line 1"),
        ('[1, 2]', InvalidInputError, "a meteor artifact is a JSON object"),
        ('{"strategy": "rank"}', InvalidInputError, "field 'schema' is missing"),
        ('{"schema": "allocation"}', InvalidInputError, "expected 'meteor.<kind>/v<N>'"),
        ('{"schema": "meteor.ranks/v1", "method": "nuclear", "encoders": {}}', InvalidInputError,
         "is a meteor.ranks/v1 artifact"),
        ('{"schema": "meteor.allocation/v2"}', UnsupportedVersionError, "written by a newer meteor"),
        ('{"schema": "meteor.allocation/v1", "strategy": "rank", "stage1": []}', InvalidInputError,
         "field 'stage1' must be an object"),
    ],
)
def test_bad_artifacts_name_file_field_and_fix(tmp_path, content, error, fragment):
    path = tmp_path / "allocation.json"
    path.write_text(content)
    with pytest.raises(error) as info:
        A.read_artifact(path, "meteor.allocation")
    assert fragment in info.value.message
    assert str(path) in info.value.message and info.value.hint


def test_body_validation_checks_sums(tmp_path):
    path = tmp_path / "allocation.json"
    obj = {"schema": "meteor.allocation/v1", **json.loads(json.dumps(ALLOCATION))}
    obj["stage1"]["totals"] = [31, 12]
    path.write_text(json.dumps(obj))
    with pytest.raises(InvalidInputError, match=r"field 'stage1.totals\[0\]' is 31 but the encoders keep 30"):
        A.read_artifact(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InputNotFoundError, match="does not exist"):
        A.read_artifact(tmp_path / "nope.json")
    with pytest.raises(InputNotFoundError, match="is a directory"):
        A.read_artifact(tmp_path)


def test_atomic_write_leaves_no_partial_file_on_error(tmp_path):
    target = tmp_path / "ranks.json"
    target.write_text("old")

    class Boom(RuntimeError):
        pass

    with pytest.raises(Boom):
        with A.atomic_path(target) as tmp:
            tmp.write_text("half of the new conte")
            raise Boom
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ranks.json"]  # temp file removed


def test_atomic_write_survives_a_killed_process(tmp_path):
    """A process that dies mid-write (no cleanup at all) never leaves a partial target."""
    target = tmp_path / "allocation.json"
    script = textwrap.dedent(f"""
        import os
        from meteor_cli.artifacts import atomic_path
        with atomic_path({str(target)!r}) as tmp:
            with open(tmp, "w") as f:
                f.write('{{"schema": "meteor.alloc')
                f.flush()
                os._exit(9)   # simulated crash: no exception handling, no rename
    """)
    proc = subprocess.run([sys.executable, "-c", script])
    assert proc.returncode == 9
    assert not target.exists()
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert all(name.startswith(".allocation.json.") for name in leftovers)  # only the hidden temp file


def test_safetensors_round_trip_with_provenance(tmp_path):
    tensors = {"kept": torch.arange(6).reshape(2, 3), "scores": torch.rand(2, 5)}
    path = tmp_path / "kept.safetensors"
    A.save_tensors(path, tensors, kind="meteor.kept", inputs=[{"path": "x.json", "sha256": "00"}],
                   command="meteor infer", metadata={"encoder": "clip"})
    back, meta = A.load_tensors(path)
    assert set(back) == {"kept", "scores"} and torch.equal(back["kept"], tensors["kept"])
    prov = A.tensors_provenance(meta)
    assert prov["schema"] == "meteor.kept/v1" and prov["producer"]["command"] == "meteor infer"
    assert prov["inputs"] == [{"path": "x.json", "sha256": "00"}] and meta["encoder"] == "clip"
    assert A.read_tensors_metadata(path) == meta


def test_safetensors_through_stdout_and_stdin(monkeypatch, capsysbinary):
    A.save_tensors("-", {"x": torch.ones(3)}, kind="meteor.kept")
    blob = capsysbinary.readouterr().out
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(blob)))
    back, meta = A.load_tensors("-")
    assert torch.equal(back["x"], torch.ones(3)) and meta["meteor.schema"] == "meteor.kept/v1"


def test_damaged_safetensors_is_invalid_input(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(InvalidInputError, match="not a safetensors file"):
        A.load_tensors(path)


# -- the same through the CLI: `meteor inspect` -----------------------------------------------


def test_inspect_valid_artifact(cli, tmp_path):
    _write(tmp_path / "allocation.json")
    res = cli("inspect", "allocation.json", "--json")
    assert res.exit_code == 0
    data = json.loads(res.stdout)
    assert data["valid"] and data["schema"] == "meteor.allocation/v1" and data["stage2"] == {"keep": 8}
    human = cli("inspect", "allocation.json")
    assert "valid meteor.allocation/v1" in human.stdout and "meteor allocate --total 12" in human.stdout


def test_inspect_reads_stdin(cli, tmp_path):
    _write(tmp_path / "a.json")
    res = cli("inspect", "-", "--json", input=(tmp_path / "a.json").read_text())
    assert res.exit_code == 0 and json.loads(res.stdout)["strategy"] == "rank"


def test_inspect_safetensors(cli, tmp_path):
    A.save_tensors(tmp_path / "t.safetensors", {"w": torch.zeros(2, 3)}, kind="meteor.kept")
    data = json.loads(cli("inspect", "t.safetensors", "--json").stdout)
    assert data["tensors"] == {"w": {"dtype": "F32", "shape": [2, 3]}} and data["schema"] == "meteor.kept/v1"


@pytest.mark.parametrize(
    "content, code",
    [
        (None, ExitCode.NOT_FOUND),
        ("{oops", ExitCode.INVALID_INPUT),
        ('{"schema": "meteor.ranks/v1", "method": "nuclear"}', ExitCode.INVALID_INPUT),
        ('{"schema": "meteor.ranks/v7", "method": "nuclear", "encoders": {}}', ExitCode.UNSUPPORTED_VERSION),
    ],
)
def test_inspect_exit_codes_and_writes_nothing(cli, tmp_path, content, code):
    if content is not None:
        (tmp_path / "ranks.json").write_text(content)
    before = sorted(os.listdir(tmp_path))
    res = cli("inspect", "ranks.json")
    assert res.exit_code == code
    assert res.stderr.startswith("meteor: error: ") and "Traceback" not in res.stderr
    assert res.stdout == ""
    assert sorted(os.listdir(tmp_path)) == before
