"""`train --resume` and its faults: finished runs, damaged checkpoints, changed settings, kills,
orphans, a full disk, a second writer; plus --keep-last, the summary, progress in a log file and
new words when fine-tuning a word-level model.

Most cases drive the model-agnostic loop with a toy task (milliseconds); a few go through the
CLI with the ``tiny`` preset and a handful of steps.
"""

from __future__ import annotations

import errno
import io
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from meteor_cli.errors import ExitCode, InvalidInputError, UsageError
from meteor_cli.outdir import LOCK_NAME, DirectoryBusyError, DirectoryLock, OutputError, read_lock
from meteor_cli.progress import LineProgress, progress_bar
from meteor_cli.train import state as S
from meteor_cli.train.loop import TrainConfig, Trainer

from .toytask import ToyTask


def make(out, *, n=32, task=None, init_seed=0, **cfg):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    data = [(x[i], torch.tanh(x[i, :2])) for i in range(n)]
    torch.manual_seed(init_seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2))
    warnings: list[str] = []
    t = Trainer(model, data, task or ToyTask(), TrainConfig(**{"lr": 1e-2, "batch_size": 4, "max_steps": 6, **cfg}),
                out, warn=warnings.append)
    t.warnings = warnings  # type: ignore[attr-defined]
    return t


def weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def log_steps(out):
    return [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]


# -- the state format ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    {"step": 3, "betas": (0.9, 0.999), "nested": [(1, 2.5), {"a": None}]},
    {"by_int": {0: torch.arange(3), 7: {"exp_avg": torch.ones(2, 2)}}, "flag": True},
    {"nan": float("nan"), "inf": float("-inf"), "tiny": 5e-324, "big": 2**62},
    {"rng": np.random.RandomState(3).get_state(), "torch": torch.get_rng_state()},
    {"$odd": "a key that looks like a marker", "s": "x"},
])
def test_state_round_trips_exactly(tmp_path, value):
    S.save_state(value, tmp_path)
    back = S.load_state(tmp_path)

    def same(a, b):
        if isinstance(a, torch.Tensor):
            return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
        if isinstance(a, np.ndarray):
            return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
        if isinstance(a, float) and a != a:
            return isinstance(b, float) and b != b
        if isinstance(a, (tuple, list)):
            return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        return a == b and type(a) is type(b)

    assert same(value, back)


def test_resume_is_bit_exact_with_the_new_format(tmp_path):
    full = make(tmp_path / "full", save_every=2)
    full.fit()
    with pytest.raises(KeyboardInterrupt):
        make(tmp_path / "cut", save_every=2, task=ToyTask(interrupt_at=5)).fit()
    torch.manual_seed(99)
    resumed = make(tmp_path / "cut", save_every=2, init_seed=7)
    res = resumed.fit(resume=True)
    assert res.resumed_from == 4 and res.start_step == 4 and res.steps_this_run == 2
    assert torch.equal(weights(full.model), weights(resumed.model))


# -- finished, nothing, damaged, changed --------------------------------------------------------


def test_resume_of_a_finished_run_is_already_complete(tmp_path):
    make(tmp_path, save_every=2).fit()
    before = (tmp_path / "train_log.jsonl").read_text()
    res = make(tmp_path, save_every=2).fit(resume=True)
    assert res.already_complete and res.steps == 6 and res.steps_this_run == 0
    assert (tmp_path / "train_log.jsonl").read_text() == before


def test_resume_of_a_run_killed_before_its_final_model_writes_it(tmp_path):
    make(tmp_path, save_every=2).fit()
    for f in ("config.json", "model.safetensors"):
        (tmp_path / f).unlink()
    res = make(tmp_path, save_every=2).fit(resume=True)
    assert res.already_complete and (tmp_path / "config.json").is_file()
    assert torch.equal(load_file(str(tmp_path / "model.safetensors"))["0.weight"],
                       load_file(str(tmp_path / "checkpoints" / "step-0000006" / "model.safetensors"))["0.weight"])


def test_resume_with_nothing_to_resume_says_so_and_starts(tmp_path):
    t = make(tmp_path)
    res = t.fit(resume=True)
    assert res.resumed_from is None and res.steps == 6
    assert any("nothing to resume" in w for w in t.warnings)


def _truncate(path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


DAMAGE = {
    "state json garbage": lambda c: (c / "trainer_state.json").write_text("{not json"),
    "state json other format": lambda c: (c / "trainer_state.json").write_text('{"format": "x", "state": {}}'),
    "state tensors truncated": lambda c: _truncate(c / "trainer_state.safetensors"),
    "state tensors missing": lambda c: (c / "trainer_state.safetensors").unlink(),
    "weights truncated": lambda c: _truncate(c / "model.safetensors"),
    "weights missing": lambda c: (c / "model.safetensors").unlink(),
    "a tensor missing": lambda c: save_file({"x": torch.zeros(1)}, str(c / "trainer_state.safetensors")),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, damage):
    full = make(tmp_path / "full", save_every=2)
    full.fit()
    with pytest.raises(KeyboardInterrupt):
        make(tmp_path / "cut", save_every=2, task=ToyTask(interrupt_at=5)).fit()
    DAMAGE[damage](tmp_path / "cut" / "checkpoints" / "step-0000004")
    t = make(tmp_path / "cut", save_every=2)
    res = t.fit(resume=True)
    assert res.resumed_from == 2
    assert any("skipping damaged checkpoint(s) step-0000004" in w and "resuming from step-0000002" in w
               for w in t.warnings), t.warnings
    assert torch.equal(weights(full.model), weights(t.model))
    assert log_steps(tmp_path / "cut") == [1, 2, 3, 4, 5, 6]


def test_no_intact_checkpoint_is_a_named_error(tmp_path):
    make(tmp_path, save_every=3).fit()
    for c in (tmp_path / "checkpoints").iterdir():
        (c / "trainer_state.json").write_text("[")
    with pytest.raises(InvalidInputError, match="no intact checkpoint.*step-0000006.*step-0000003"):
        make(tmp_path, save_every=3, max_steps=9).fit(resume=True, force=True)


@pytest.mark.parametrize("change, shown", [
    ({"lr": 2e-2}, "--lr 0.01 -> 0.02"),
    ({"warmup": 0.1}, "--warmup 0.03 -> 0.1"),
    ({"max_steps": 8}, "--max-steps 6 -> 8"),
    ({"weight_decay": 0.1}, "--weight-decay 0.0 -> 0.1"),
    ({"seed": 5}, "--seed 0 -> 5"),
    ({"n": 40}, "training samples 32 -> 40"),
])
def test_changed_settings_are_refused_unless_forced(tmp_path, change, shown):
    with pytest.raises(KeyboardInterrupt):
        make(tmp_path, save_every=2, task=ToyTask(interrupt_at=3)).fit()
    with pytest.raises(UsageError, match="other settings") as info:
        make(tmp_path, save_every=2, **change).fit(resume=True)
    assert shown in info.value.message and "--force" in info.value.hint
    t = make(tmp_path, save_every=2, **change)
    res = t.fit(resume=True, force=True)
    assert res.resumed_from == 2 and any(shown in w and "(--force)" in w for w in t.warnings)


def test_a_fresh_run_into_a_directory_with_a_run_is_refused_then_forced(tmp_path):
    make(tmp_path, save_every=2).fit()
    with pytest.raises(UsageError, match="already holds a training run .checkpoints up to step 6"):
        make(tmp_path).fit()
    res = make(tmp_path, max_steps=3).fit(force=True)
    assert res.steps == 3 and log_steps(tmp_path) == [1, 2, 3]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-0000003"]


# -- kills, orphans, full disks ------------------------------------------------------------------


@pytest.mark.parametrize("kill_at", [3, 5, 6])
def test_the_log_never_repeats_a_step_after_a_kill(tmp_path, kill_at):
    with pytest.raises(KeyboardInterrupt):
        make(tmp_path, save_every=2, task=ToyTask(interrupt_at=kill_at)).fit()
    assert log_steps(tmp_path) == list(range(1, kill_at))
    with open(tmp_path / "train_log.jsonl", "a") as f:
        f.write('{"step": 9, "lo')  # a line the kill cut in half
    make(tmp_path, save_every=2).fit(resume=True)
    assert log_steps(tmp_path) == [1, 2, 3, 4, 5, 6]


def test_orphaned_temporary_directories_are_cleaned(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        make(tmp_path, save_every=2, task=ToyTask(interrupt_at=3)).fit()
    (tmp_path / "checkpoints" / ".step-0000004.k2j3h4").mkdir()
    (tmp_path / "checkpoints" / ".step-0000004.k2j3h4" / "model.safetensors").write_bytes(b"half")
    (tmp_path / ".final.abc123").mkdir()
    t = make(tmp_path, save_every=2)
    t.fit(resume=True)
    assert not list(tmp_path.glob(".final.*")) and not list((tmp_path / "checkpoints").glob(".*"))
    assert any("removed 2 temporary directories" in w for w in t.warnings)


def _enospc(name):
    def boom(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", name)
    return boom


@pytest.mark.parametrize("where", ["weights", "state", "final", "log"])
def test_a_full_disk_names_the_device_and_the_file(tmp_path, monkeypatch, where):
    t = make(tmp_path, save_every=2)
    if where == "weights":
        monkeypatch.setattr(t.task, "save", lambda model, d: _enospc(str(d / "model.safetensors"))())
    elif where == "state":
        import meteor_cli.train.loop as loop

        monkeypatch.setattr(loop, "save_state", lambda state, d: _enospc(str(d / "trainer_state.safetensors"))())
    elif where == "final":
        monkeypatch.setattr(t, "save_checkpoint", lambda: None)
        monkeypatch.setattr(t.task, "save", lambda model, d: _enospc(str(d / "model.safetensors"))())
    else:
        import builtins

        real_open = builtins.open
        monkeypatch.setattr(builtins, "open", lambda f, mode="r", *a, **k: _enospc(str(f))()
                            if str(f).endswith("train_log.jsonl") and "a" in mode else real_open(f, mode, *a, **k))
    with pytest.raises(OutputError) as info:
        t.fit()
    msg = info.value.message
    assert msg.startswith("no space left on ") and " while writing " in msg, msg
    expected = {"weights": "checkpoints/step-0000002/model.safetensors",
                "state": "checkpoints/step-0000002/trainer_state.safetensors",
                "final": f"{tmp_path.name}/model.safetensors", "log": "train_log.jsonl"}[where]
    assert expected in msg and ".step-" not in msg
    assert info.value.exit_code == ExitCode.NOT_FOUND and "--resume" in info.value.hint
    assert not list(tmp_path.rglob(".step-*")) and not list(tmp_path.glob(".final.*"))  # nothing half-written
    assert not (tmp_path / LOCK_NAME).exists()


@pytest.mark.parametrize("keep", [1, 3])
def test_keep_last(tmp_path, keep):
    make(tmp_path, save_every=1, keep_checkpoints=keep).fit()
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == [f"step-{s:07d}" for s in range(7 - keep, 7)]


def test_keep_last_zero_is_refused():
    with pytest.raises(UsageError, match="--keep-last 0"):
        TrainConfig(keep_checkpoints=0)


# -- the lock ------------------------------------------------------------------------------------


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _write_lock(out, pid, host):
    out.mkdir(parents=True, exist_ok=True)
    (out / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": host, "command": "meteor train",
                                             "since": "2026-01-01T00:00:00Z"}))


@pytest.mark.parametrize("holder", ["live here", "other host"])
def test_a_second_writer_is_refused_naming_the_holder(tmp_path, holder):
    pid, host = (os.getppid(), socket.gethostname()) if holder == "live here" else (123, "node-elsewhere")
    _write_lock(tmp_path, pid, host)
    with pytest.raises(DirectoryBusyError) as info:
        make(tmp_path).fit()
    assert f"PID {pid} on host {host}" in info.value.message and LOCK_NAME in info.value.hint
    assert not (tmp_path / "train_log.jsonl").exists()


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path):
    pid = _dead_pid()
    _write_lock(tmp_path, pid, socket.gethostname())
    t = make(tmp_path)
    assert t.fit().steps == 6
    assert any(f"locked by PID {pid}" in w and "taking the lock over" in w for w in t.warnings)
    assert not (tmp_path / LOCK_NAME).exists()  # released at the end


def test_the_lock_holds_pid_and_host_while_training(tmp_path):
    seen = {}

    class Peek(ToyTask):
        def loss(self, model, batch):
            seen.update(read_lock(tmp_path) or {})
            return super().loss(model, batch)

    make(tmp_path, task=Peek()).fit()
    assert seen["pid"] == os.getpid() and seen["host"] == socket.gethostname()
    with DirectoryLock(tmp_path / "x") as lock:  # re-entrant in one process, released by the outer one
        with DirectoryLock(tmp_path / "x"):
            pass
        assert lock.path.exists()
    assert not lock.path.exists()


def test_a_directory_the_lock_created_goes_away_if_nothing_was_written(tmp_path):
    with DirectoryLock(tmp_path / "a" / "b"):
        assert (tmp_path / "a" / "b" / LOCK_NAME).is_file()
    assert not (tmp_path / "a").exists()
    with DirectoryLock(tmp_path / "c"):
        (tmp_path / "c" / "model.safetensors").write_bytes(b"x")
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["model.safetensors"]


def test_only_rank_zero_locks(tmp_path):
    DirectoryLock(tmp_path, enabled=False).acquire()
    assert not (tmp_path / LOCK_NAME).exists()


# -- progress in a log file -----------------------------------------------------------------------


def test_progress_in_a_log_is_plain_lines_every_interval(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("meteor_cli.progress.time.monotonic", lambda: clock[0])
    buf = io.StringIO()
    bar = progress_bar(total=100, desc="training", unit="step", file=buf, interval=10)
    assert isinstance(bar, LineProgress)
    for _ in range(100):
        clock[0] += 0.5
        bar.update(1)
        bar.set_postfix(loss="1.2345")
    bar.close()
    bar.close()  # twice: one last line only
    lines = buf.getvalue().splitlines()
    assert "\r" not in buf.getvalue() and len(lines) == 6  # at 0.5 s, 10.5, 20.5, 30.5, 40.5, then the last
    assert lines[-1].startswith("training: 100/100 step (100.0%) elapsed 0:50, 2.00 step/s") and "loss=1.2345" in lines[-1]
    assert "eta 0:" in lines[1]
    bar = LineProgress(total=2, desc="demo", file=buf, interval=0)
    bar.set_postfix_str("train")
    bar.update(1)
    assert buf.getvalue().splitlines()[-1].endswith("| train")


def test_progress_on_a_terminal_is_a_tqdm_bar():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    from tqdm.auto import tqdm

    bar = progress_bar(total=3, file=Tty())
    assert isinstance(bar, tqdm)
    bar.close()


def test_progress_interval_from_the_environment(monkeypatch):
    monkeypatch.setenv("METEOR_PROGRESS_SECONDS", "2.5")
    assert LineProgress(total=1, file=io.StringIO()).interval == 2.5
    monkeypatch.setenv("METEOR_PROGRESS_SECONDS", "soon")
    with pytest.raises(UsageError, match="METEOR_PROGRESS_SECONDS='soon'"):
        LineProgress(total=1, file=io.StringIO())


# -- the CLI --------------------------------------------------------------------------------------

BASE = ["--model", "tiny", "--data", "sv/train.json", "--lr", "1e-3", "--batch-size", "4", "--device", "cpu",
        "--save-every", "1", "--max-steps", "2", "--out", "run"]


@pytest.fixture
def synth(tmp_path):
    from meteor_cli.data.synthvqa import generate

    generate(tmp_path / "sv", n_train=8, n_eval=0, seed=0)


def test_cli_resume_summary_then_already_complete(cli, synth, tmp_path):
    assert cli("train", *BASE, "-q").exit_code == 0
    import shutil

    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step-0000002")
    res = cli("train", *BASE, "--resume")
    assert res.exit_code == 0, res.output
    assert "trained 1 step (steps 2-2, resumed from step 1) in " in res.stdout
    assert "\r" not in res.stderr and "training: 2/2 step (100.0%)" in res.stderr  # plain lines in a log
    res = cli("train", *BASE, "--resume", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["already_complete"] and out["steps"] == 2 and out["steps_this_run"] == 0
    res = cli("train", *BASE, "--resume", "--lr", "5e-4", "-q")
    assert res.exit_code == ExitCode.USAGE and "--lr 0.001 -> 0.0005" in res.stderr and "--force" in res.stderr


def test_summary_lines():
    from pathlib import Path

    from meteor_cli.cli.train import _summary_line
    from meteor_cli.train.loop import TrainResult

    assert _summary_line(TrainResult(2, 8, None, 0.0, 2, [], start_step=2, already_complete=True), Path("run")) == \
        "already complete: run holds the final model of all 2 steps; nothing to do"
    line = _summary_line(TrainResult(1210, 0, 0.5, 10.2, 1200, [], start_step=1200), Path("run"))
    assert line == "trained 10 steps (steps 1201-1210, resumed from step 1200) in 10s, final loss 0.5000; model in run"


def test_cli_refuses_a_locked_out_before_loading_anything(cli, synth, tmp_path):
    _write_lock(tmp_path / "run", os.getppid(), socket.gethostname())
    res = cli("train", *BASE, "-q")
    assert res.exit_code == ExitCode.USAGE
    assert f"is in use by PID {os.getppid()} on host {socket.gethostname()}" in res.stderr


def test_cli_help_documents_keep_last_force_and_unknown_words(cli):
    res = cli("train", "--help")
    for flag in ("--keep-last", "--force", "--unknown-words", "older ones are deleted"):
        assert flag in res.stdout


# -- new words when fine-tuning a word-level model -----------------------------------------------


def _with_new_words(tmp_path):
    recs = json.loads((tmp_path / "sv" / "train.json").read_text())
    for r in recs:
        r["conversations"][1]["value"] = "a rectangle, not a zigzag"
    (tmp_path / "sv" / "new.json").write_text(json.dumps(recs))


def test_unknown_words_are_found_and_added():
    from meteor_cli.data.tokenizer import build_word_tokenizer, extend_word_tokenizer, unknown_words

    tok = build_word_tokenizer(["is there a circle ?", "yes"])
    assert unknown_words(tok, ["<image>\nIs there a Rectangle? NOT a circle."]) == ["rectangle", "not", "."]
    big = extend_word_tokenizer(tok, ["rectangle", "not"])
    assert len(big) == len(tok) + 2 and big.get_vocab()["not"] == len(tok) + 1
    assert big("a circle")["input_ids"] == tok("a circle")["input_ids"]  # old ids unchanged
    assert big.unk_token_id not in big("<image> rectangle not")["input_ids"]
    assert big.convert_ids_to_tokens(big("<image>")["input_ids"]) == ["<image>"]


def test_fine_tuning_with_new_words_extends_vocabulary_and_embeddings(cli, synth, tmp_path):
    from meteor_cli.model.checkpoint import load_checkpoint

    _with_new_words(tmp_path)
    args = ["--model", "tiny-synthvqa", "--data", "sv/new.json", "--batch-size", "2", "--max-steps", "1",
            "--device", "cpu", "--lr", "1e-4"]
    res = cli("train", *args, "--unknown-words", "refuse", "--out", "refused", "-q")
    assert res.exit_code == ExitCode.INVALID_INPUT
    assert "rectangle, not, zigzag" in res.stderr and not (tmp_path / "refused" / "config.json").exists()
    res = cli("train", *args, "--out", "ft", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["added_words"] == ["rectangle", "not", "zigzag"]
    assert "added 3 new word(s)" in res.stderr
    model = load_checkpoint(tmp_path / "ft")
    tok = model.tokenizer
    n = len(tok)
    assert model.llm.config.vocab_size == n and model.llm.get_input_embeddings().weight.shape[0] == n
    assert model.llm.get_output_embeddings().weight.shape[0] == n
    ids = tok("rectangle not zigzag")["input_ids"]
    assert tok.unk_token_id not in ids and sorted(ids) == [n - 3, n - 2, n - 1]
    new_rows = model.llm.get_input_embeddings().weight[-3:]
    assert torch.isfinite(new_rows).all() and new_rows.norm(dim=1).min() > 0


@pytest.mark.parametrize("shape", ["a file", "below a file"])
def test_out_that_cannot_be_a_directory_is_named(tmp_path, shape):
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" if shape == "a file" else tmp_path / "f" / "run"
    with pytest.raises((UsageError, OutputError)) as info:
        make(out).fit()
    assert str(tmp_path / "f") in info.value.message
