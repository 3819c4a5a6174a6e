"""Robustness (issue #12, part C): image paths stay inside the image root, one image-root rule,
`rank-estimate merge` refuses parts that are not exactly one run's shards, rank-estimate samples
distinct images, and `prune-llm --calibrate` runs with Stage 1-2 and on question files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from meteor_cli import artifacts as A
from meteor_cli.data import llava as L
from meteor_cli.data.synthvqa import generate
from meteor_cli.errors import ExitCode, InvalidInputError

CPU = ("--device", "cpu", "-q")


def _png(path: Path, shade: int = 128) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (shade, 0, 0)).save(path)
    return path


# ---------------------------------------------------------------------------------------------
# resolve_image: confined to the root by default
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path):
    """root/ with images, an outside/ secret, and symlinks inside root to both."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    _png(root / "a" / "in.png")
    _png(outside / "secret.png")
    (root / "link_out.png").symlink_to(outside / "secret.png")
    (root / "dir_out").symlink_to(outside, target_is_directory=True)
    (root / "link_in.png").symlink_to(root / "a" / "in.png")
    return root, outside


OUTSIDE = {
    "dotdot": "../outside/secret.png",
    "dotdot-after-dir": "a/../../outside/secret.png",
    "absolute": "{outside}/secret.png",
    "symlink-file": "link_out.png",
    "symlink-dir": "dir_out/secret.png",
}
INSIDE = {
    "plain": "a/in.png",
    "dot-slash": "./a/in.png",
    "dotdot-staying-inside": "a/../a/in.png",
    "absolute-inside": "{root}/a/in.png",
    "symlink-inside": "link_in.png",
}


@pytest.mark.parametrize("case", list(OUTSIDE))
def test_paths_leaving_the_root_are_refused_by_default(tree, case):
    root, outside = tree
    image = OUTSIDE[case].format(root=root, outside=outside)
    rec = {"id": "r7", "image": image}
    with pytest.raises(L.ImageOutsideRootError) as err:
        L.resolve_image(rec, root, index=3)
    msg = str(err.value)
    assert "record #3 (id r7)" in msg and repr(image) in msg and str(root.resolve()) in msg
    assert "--allow-outside-root" in msg and err.value.exit_code == ExitCode.INVALID_INPUT
    # the explicit opt-in reads it
    assert L.load_image(L.resolve_image(rec, root, allow_outside_root=True)).size == (8, 8)


@pytest.mark.parametrize("case", list(INSIDE))
def test_paths_inside_the_root_are_read(tree, case):
    root, outside = tree
    got = L.resolve_image({"image": INSIDE[case].format(root=root, outside=outside)}, root)
    assert got.is_relative_to(root.resolve()) and L.load_image(got).size == (8, 8)


@pytest.mark.parametrize("image", [None, 3, "", ["a.png"], "a\0.png"])
def test_an_image_field_that_is_not_a_path_is_named(tmp_path, image):
    with pytest.raises(InvalidInputError, match=r"record #5 \(id q\): `image` is"):
        L.resolve_image({"question_id": "q", "image": image}, tmp_path, index=5)


# ---------------------------------------------------------------------------------------------
# One image-root rule
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data, root, expect", [
    ("sv/train.json", None, "sv"),                 # train / rank-estimate / prune-llm
    ("sv/eval/questions.jsonl", None, "sv"),       # infer --questions, prune-llm on a question file
    ("sv", None, "sv"),                            # eval --data DIR
    ("sv/eval", None, "sv"),                       # eval --data DIR/eval
    ("plain/q.jsonl", None, "plain"),
    ("sv/eval/questions.jsonl", "imgs", "imgs"),   # --image-root always wins
])
def test_one_image_root_rule(tmp_path, data, root, expect):
    generate(tmp_path / "sv", n_train=1, n_eval=1, seed=0)
    (tmp_path / "plain").mkdir()
    assert L.image_root_for(data, root) == Path(expect)
    # and the SynthVQA records really resolve there, for train and eval files alike
    if data.startswith("sv") and root is None:
        for f in ("sv/train.json", "sv/eval/questions.jsonl"):
            rec = next(L.iter_json_records(f))
            assert L.resolve_image(rec, L.image_root_for(data)).is_file()


def test_image_root_rule_from_inside_an_eval_folder(tmp_path, monkeypatch):
    generate(tmp_path / "sv", n_train=0, n_eval=1, seed=0)
    monkeypatch.chdir(tmp_path / "sv" / "eval")
    assert L.image_root_for("questions.jsonl").resolve() == (tmp_path / "sv").resolve()


# ---------------------------------------------------------------------------------------------
# Every command that reads LLaVA data confines paths, and has --allow-outside-root
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def escaping(tmp_path):
    """sv/ (SynthVQA) whose first train record and first question point outside via `../`."""
    generate(tmp_path / "sv", n_train=4, n_eval=2, seed=0)
    shutil.copy(tmp_path / "sv" / "images" / "train" / "000000.png", tmp_path / "outside.png")
    recs = json.loads((tmp_path / "sv" / "train.json").read_text())
    recs[0]["image"] = "../outside.png"
    (tmp_path / "sv" / "train.json").write_text(json.dumps(recs))
    qs = [json.loads(x) for x in (tmp_path / "sv" / "eval" / "questions.jsonl").read_text().splitlines()]
    qs[0]["image"] = "../outside.png"
    (tmp_path / "sv" / "eval" / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qs))
    return recs[0]["id"], qs[0]["question_id"]


COMMANDS = {
    "rank-estimate": ["rank-estimate", "--model", "tiny", "--data", "sv/train.json", "--sample", "1.0", "--grid", "4"],
    "prune-llm": ["prune-llm", "--model", "tiny", "--calibrate", "--data", "sv/train.json", "--target-tokens", "40",
                  "--count", "4", "--heads", "4"],
    "prune-llm-questions": ["prune-llm", "--model", "tiny", "--calibrate", "--data", "sv/eval/questions.jsonl",
                            "--target-tokens", "40", "--count", "2", "--heads", "4"],
    "train": ["train", "--model", "tiny", "--data", "sv/train.json", "--max-steps", "1", "--batch-size", "2",
              "--out", "ck"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_commands_refuse_paths_outside_the_root(cli, escaping, tmp_path, command):
    rid = escaping[1] if command.endswith("questions") else escaping[0]
    res = cli(*COMMANDS[command], *CPU)
    assert res.exit_code == ExitCode.INVALID_INPUT, res.output
    assert f"id {rid}" in res.stderr and "'../outside.png'" in res.stderr and "--allow-outside-root" in res.stderr
    assert "internal error" not in res.stderr
    assert not any(p.name in ("ranks.json", "prune-llm.json", "ck") for p in tmp_path.iterdir())
    if command != "train":  # the opt-in reads it (train's opt-in: test_train_data_opt_in, cheaper)
        res = cli(*COMMANDS[command], "--allow-outside-root", *CPU)
        assert res.exit_code == 0, res.output


def test_train_data_opt_in(escaping, tmp_path):
    from meteor_cli.train.vlm_task import load_vlm_data

    data = load_vlm_data(tmp_path / "sv" / "train.json", tmp_path / "sv", 32, allow_outside_root=True)
    assert data.ids[0] == escaping[0] and len(data.ids) == 4


def test_the_shared_option_gets_each_commands_own_variable(cli, monkeypatch):
    """One `AllowOutsideRoot` declaration, used by several commands: each has its own METEOR_* name."""
    for command, other in (("rank-estimate", "TRAIN"), ("train", "RANK_ESTIMATE")):
        env_cmd = command.replace("-", "_").upper()
        res = cli(command, "--show-config", "--json", env={f"METEOR_{env_cmd}_ALLOW_OUTSIDE_ROOT": "1"})
        rows = {r["option"]: r for r in json.loads(res.stdout)["options"]}
        assert rows["--allow-outside-root"]["value"] is True
        assert rows["--allow-outside-root"]["source"] == f"environment (METEOR_{env_cmd}_ALLOW_OUTSIDE_ROOT)"
        res = cli(command, "--show-config", "--json", env={f"METEOR_{other}_ALLOW_OUTSIDE_ROOT": "1"})
        rows = {r["option"]: r for r in json.loads(res.stdout)["options"]}
        assert rows["--allow-outside-root"]["value"] is False


# ---------------------------------------------------------------------------------------------
# rank-estimate: distinct images
# ---------------------------------------------------------------------------------------------


def _dup_data(tmp_path: Path) -> Path:
    """12 records over 5 distinct images: repeats, `./` spellings and a symlink alias."""
    d = tmp_path / "dup"
    for k in range(5):
        _png(d / "img" / f"{k}.png", shade=40 * k)
    (d / "img" / "alias.png").symlink_to(d / "img" / "0.png")
    names = ["img/0.png", "img/1.png", "./img/1.png", "img/2.png", "img/alias.png", "img/3.png", "img/3.png",
             "img/4.png", "img/0.png", "img/../img/2.png", "img/4.png", "img/1.png"]
    recs = [{"id": f"r{i}", "image": n, "conversations": [{"from": "human", "value": "<image>\nq"},
                                                          {"from": "gpt", "value": "a"}]} for i, n in enumerate(names)]
    recs.insert(3, {"id": "text-only", "conversations": recs[0]["conversations"]})
    (d / "train.json").write_text(json.dumps(recs))
    return d / "train.json"


def test_sampling_counts_distinct_images(tmp_path):
    path = _dup_data(tmp_path)
    s = L.sample_records(path, fraction=1.0, seed=0, distinct_images=True)
    assert len(s.indices) == 5 and s.population == 5 and s.n_duplicate_images == 7 and s.n_without_image == 1
    images = {os.path.realpath(L.resolve_image(rec, path.parent)) for _, rec in L.iter_selected(path, s.indices)}
    assert len(images) == 5
    assert len(L.sample_records(path, count=100, seed=0, distinct_images=True).indices) == 5
    assert len(L.sample_records(path, count=100, seed=0).indices) == 12  # records, without the option


def test_rank_estimate_samples_distinct_images(cli, tmp_path):
    _dup_data(tmp_path)
    res = cli("rank-estimate", "--model", "tiny", "--data", "dup/train.json", "--count", "50", "--grid", "4", *CPU)
    assert res.exit_code == 0, res.output
    art = A.read_artifact(tmp_path / "ranks.json", "meteor.ranks")
    assert art["n_images"] == 5 and len(set(art["sample"]["ids"])) == 5
    assert art["sample"]["distinct_images"] is True and art["sample"]["population_images"] == 5
    assert art["sample"]["duplicate_image_records"] == 7


# ---------------------------------------------------------------------------------------------
# rank-estimate merge: only exactly the shards of one run
# ---------------------------------------------------------------------------------------------

BASE = ["rank-estimate", "--model", "tiny", "--data", "sv/train.json", "--grid", "4", "--batch-size", "4", *CPU]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Three shards of one run, its unsharded result, and shard 1 of runs that differ in one thing."""
    from typer.testing import CliRunner

    from meteor_cli.cli.app import app
    from meteor_cli.model.checkpoint import load_model, save_checkpoint

    d = tmp_path_factory.mktemp("shards")
    generate(d / "sv", n_train=10, n_eval=0, seed=0)
    (d / "sv2").mkdir()
    recs = json.loads((d / "sv" / "train.json").read_text())
    (d / "sv2" / "train.json").write_text(json.dumps(recs[::-1]))  # same images, other file
    save_checkpoint(load_model("tiny"), d / "ck")
    cwd = os.getcwd()
    os.chdir(d)
    try:
        runner = CliRunner()

        def run(out: str, *extra: str) -> None:
            res = runner.invoke(app, [*BASE, "--count", "6", *extra, "--out", out])
            assert res.exit_code == 0, res.output

        for k in range(3):
            run(f"p{k}.json", "--num-chunks", "3", "--chunk-idx", str(k))
        run("all.json")
        run("seed1.json", "--num-chunks", "3", "--chunk-idx", "1", "--seed", "1")
        run("ckpt.json", "--num-chunks", "3", "--chunk-idx", "1", "--model", "ck")
        run("data2.json", "--num-chunks", "3", "--chunk-idx", "1", "--data", "sv2/train.json", "--image-root", "sv")
        run("count5.json", "--num-chunks", "3", "--chunk-idx", "1", "--count", "5")
        run("two1.json", "--num-chunks", "2", "--chunk-idx", "1")
        run("hrank.json", "--num-chunks", "3", "--chunk-idx", "1", "--method", "hrank")
        res = runner.invoke(app, ["rank-estimate", "merge", "p0.json", "p1.json", "p2.json", "--out", "merged.json",
                                  "-q"])
        assert res.exit_code == 0, res.output
        part = json.loads((d / "p1.json").read_text())  # tampered: one id swapped
        part["sample"]["ids"][0] = "train-999999"
        (d / "edited.json").write_text(json.dumps(part))
        old = json.loads((d / "p1.json").read_text())  # as an older meteor wrote it
        for key in ("data_sha256", "model", "n_sampled", "sample_sha256", "distinct_images"):
            old["sample"].pop(key)
        (d / "old.json").write_text(json.dumps(old))
    finally:
        os.chdir(cwd)
    return d


def _merge(cli, d: Path, *names: str):
    return cli("rank-estimate", "merge", *(str(d / n) for n in names), "--out", "out.json", "-q")


@pytest.mark.parametrize("parts, code, words", [
    (["p0.json", "p2.json"], ExitCode.NOT_FOUND, "shard(s) 1 of 3 missing"),
    (["p0.json"], ExitCode.NOT_FOUND, "shard(s) 1, 2 of 3 missing"),
    (["p0.json", "p1.json", "p1.json", "p2.json"], ExitCode.INVALID_INPUT, "shard 1 of 3 was given twice"),
    (["p0.json", "p1.json", "p2.json", "p2.json"], ExitCode.INVALID_INPUT, "(the same file twice)"),
    (["p0.json", "seed1.json", "p2.json"], ExitCode.INVALID_INPUT, "sample.seed is 1 vs 0"),
    (["p0.json", "ckpt.json", "p2.json"], ExitCode.INVALID_INPUT, "model is"),
    (["p0.json", "data2.json", "p2.json"], ExitCode.INVALID_INPUT, "sample.data_sha256"),
    (["p0.json", "count5.json", "p2.json"], ExitCode.INVALID_INPUT, "sample.count is 5 vs 6"),
    (["p0.json", "two1.json", "p2.json"], ExitCode.INVALID_INPUT, "sample.num_chunks is 2 vs 3"),
    (["p0.json", "hrank.json", "p2.json"], ExitCode.INVALID_INPUT, 'method is "hrank" vs "nuclear"'),
    (["p0.json", "edited.json", "p2.json"], ExitCode.INVALID_INPUT, "are not the sample they were drawn from"),
    (["old.json", "p0.json", "p2.json"], ExitCode.INVALID_INPUT, "written by an older meteor"),
    (["merged.json", "p0.json"], ExitCode.INVALID_INPUT, "an already merged file"),
    (["p0.json", "p1.json", "p2.json", "seed1.json"], ExitCode.INVALID_INPUT, "sample.seed"),
])
def test_merge_refuses_what_is_not_one_run(cli, shards, tmp_path, parts, code, words):
    res = _merge(cli, shards, *parts)
    assert res.exit_code == code, res.output
    assert words in res.stderr and "internal error" not in res.stderr
    assert not (tmp_path / "out.json").exists()


def test_merge_in_any_order_equals_the_unsharded_run(cli, shards, tmp_path):
    res = _merge(cli, shards, "p2.json", "p0.json", "p1.json")
    assert res.exit_code == 0, res.output
    merged, whole = A.read_artifact(tmp_path / "out.json"), A.read_artifact(shards / "all.json")
    assert merged["sample"]["ids"] == whole["sample"]["ids"] and merged["n_images"] == 6
    assert merged["sample"]["sample_sha256"] == whole["sample"]["sample_sha256"]
    for name, e in whole["encoders"].items():
        assert merged["encoders"][name]["rank"] == pytest.approx(e["rank"], rel=1e-12)


def test_every_part_records_its_run(shards):
    s = A.read_artifact(shards / "p1.json")["sample"]
    assert (s["seed"], s["count"], s["num_chunks"], s["chunk_idx"], s["n_sampled"]) == (0, 6, 3, 1, 6)
    assert len(s["data_sha256"]) == 64 and len(s["sample_sha256"]) == 64 and s["distinct_images"] is True
    assert s["model"]["spec"] == "tiny" and s["model"]["weights_sha256"] is None
    ck = A.read_artifact(shards / "ckpt.json")["sample"]["model"]
    assert ck["spec"] == "ck" and len(ck["weights_sha256"]) == 64


# ---------------------------------------------------------------------------------------------
# prune-llm --calibrate: Stage 1-2 applied, question files accepted
# ---------------------------------------------------------------------------------------------

ALLOCATION = {"strategy": "rank", "stage1": {"totals": [60, 40, 30], "encoders": {
    "vit": {"points": [0, 1, 2], "keep": [12, 10, 8]}, "clip": {"points": [0, 1, 2], "keep": [36, 24, 16]},
    "convnext": {"points": [3, 3, 3], "keep": [12, 6, 6]}}}, "stage2": {"keep": 24}}


def test_calibration_with_the_allocation_meets_the_combined_target(cli, tmp_path):
    generate(tmp_path / "sv", n_train=0, n_eval=8, seed=0)
    A.write_artifact(tmp_path / "allocation.json", A.make_artifact("meteor.allocation", ALLOCATION))
    res = cli("prune-llm", "--model", "tiny", "--calibrate", "--allocation", "allocation.json", "--data",
              "sv/eval/questions.jsonl", "--target-tokens", "16", "--count", "8", "--heads", "4", *CPU, "--json")
    assert res.exit_code == 0, res.output
    cal = json.loads(res.stdout)["calibration"]
    assert cal["stage2_visual"] == 24 and cal["allocation"]["path"] == "allocation.json" and cal["n"] == 8
    assert abs(cal["achieved"] - 16) / 16 <= 0.02
    # the combined pipeline, measured by eval on the same questions, keeps what was calibrated
    res = cli("eval", "--model", "tiny", "--data", "sv", "--allocation", "allocation.json", "--prune-llm",
              "prune-llm.json", "--max-new-tokens", "1", *CPU, "--json")
    assert res.exit_code == 0, res.output
    tokens = json.loads(res.stdout)["tokens"]
    assert tokens["stage2_visual"] == 24 and abs(tokens["stage3_layer_averaged"] - 16) / 16 <= 0.05


def test_allocation_without_calibrate_is_a_usage_error(cli, tmp_path):
    A.write_artifact(tmp_path / "allocation.json", A.make_artifact("meteor.allocation", ALLOCATION))
    res = cli("prune-llm", "--model", "tiny", "--allocation", "allocation.json", *CPU)
    assert res.exit_code == ExitCode.USAGE and "--calibrate" in res.stderr


@pytest.mark.parametrize("record, prompt", [
    ({"image": "x.png", "text": "What shape?"}, "<image>\nWhat shape?"),
    ({"image": "x.png", "text": "Look: <image> what?"}, "Look: <image> what?"),
    ({"image": "x.png", "conversations": [{"from": "human", "value": "<image>\nq"}]}, "<image>\nq"),
    ({"image": "x.png", "conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]},
     "<image>\nq"),
])
def test_calibration_prompts_need_no_answer(record, prompt):
    from meteor_cli.cli.prune_llm import calibration_prompt

    assert calibration_prompt(record, 0) == prompt


@pytest.mark.parametrize("record, words", [
    ({"id": "z", "image": "x.png"}, "neither `conversations` nor a `text`"),
    ({"id": "z", "image": "x.png", "conversations": "hi"}, "`conversations` is a str"),
    ({"id": "z", "image": "x.png", "conversations": [{"from": "gpt", "value": "a"}]}, "no human turn"),
    ({"id": "z", "image": "x.png", "text": 7}, "neither `conversations` nor a `text`"),
])
def test_bad_calibration_records_are_named(record, words):
    from meteor_cli.cli.prune_llm import calibration_prompt

    with pytest.raises(InvalidInputError, match="record #4 \\(id z\\)") as err:
        calibration_prompt(record, 4)
    assert words in str(err.value)
