"""Released EAGLE checkpoints through the CLI: ``--template``, and Stages 1–2 on the shared grid positions.

The checkpoints are the tiny random ones of tests/model/eagle_release.py, in the release layout
(a 128-px mixture, a 4×4 shared grid, every tower kind).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from eagle_release import X4, X5, write_release  # noqa: E402

from meteor_cli.errors import ExitCode  # noqa: E402


@pytest.fixture(scope="module")
def x5(tmp_path_factory) -> Path:
    return write_release(tmp_path_factory.mktemp("eagle") / "Eagle-X5-tiny", X5)


@pytest.fixture(scope="module")
def x4_plus(tmp_path_factory) -> Path:
    return write_release(tmp_path_factory.mktemp("eagle") / "Eagle-X4-Plus-tiny", X4, llama3=True, seed=3)


def _image(path: Path, seed: int = 0) -> Path:
    import numpy as np
    from PIL import Image

    Image.fromarray((np.random.default_rng(seed).random((48, 64, 3)) * 255).astype("uint8")).save(path)
    return path


def _rows(res) -> list[dict]:
    assert res.exit_code == 0, res.stderr
    return [json.loads(x) for x in res.stdout.splitlines() if x.strip()]


# ------------------------------------------------------------------------------------------------
# --template
# ------------------------------------------------------------------------------------------------


def test_template_flag_overrides_the_tokenizers_choice(x4_plus, tmp_path, cli):
    """A Plus-style release picks ``eagle_llama3`` from its tokenizer; ``--template vicuna_v1``
    answers exactly as the model does when prompted in that template, which is another input."""
    from meteor_cli.model.checkpoint import load_model

    img = _image(tmp_path / "img.png")
    args = ["infer", "--model", str(x4_plus), "--image", str(img), "--prompt", "<image>\nwhat is shown",
            "--max-new-tokens", "6", "--device", "cpu"]
    default = _rows(cli(*args))[0]["text"]
    flagged = _rows(cli(*args, "--template", "vicuna_v1"))[0]["text"]
    vlm = load_model(str(x4_plus))
    assert vlm.cfg.template == "eagle_llama3"
    from PIL import Image

    pixels = vlm.image_tensor(Image.open(img).convert("RGB"))[None]
    prompt = ["<image>\nwhat is shown"]
    want_default = vlm.generate(pixels, prompt, max_new_tokens=6)[0]
    embeds_default = vlm.prepare(pixels, prompt)[0].embeds
    vlm.cfg.template = "vicuna_v1"
    want_flagged = vlm.generate(pixels, prompt, max_new_tokens=6)[0]
    assert vlm.prepare(pixels, prompt)[0].embeds.shape != embeds_default.shape  # the flag changes the prompt
    assert (default, flagged) == (want_default, want_flagged)
    assert default != flagged


@pytest.mark.parametrize("command", ["infer", "eval", "prune-llm"])
def test_unknown_template_lists_the_known_ones(x5, tmp_path, cli, command):
    args = {"infer": ["--image", str(_image(tmp_path / "i.png")), "--prompt", "<image>\nwhat"],
            "eval": ["--data", str(tmp_path)],
            "prune-llm": ["--heads", "2", "--calibrate", "--data", "d.json", "--target-tokens", "8"]}[command]
    res = cli(command, "--model", str(x5), *args, "--template", "vicuna", "--device", "cpu")
    assert res.exit_code == ExitCode.USAGE, res.stderr
    assert "--template 'vicuna'" in res.stderr
    for name in ("vicuna_v1", "eagle_llama3", "eagle_yi_chatml"):
        assert name in res.stderr


def test_prune_llm_calibrates_in_the_flagged_template(x4_plus, tmp_path, cli):
    from meteor_cli.data.synthvqa import generate

    generate(tmp_path / "sv", n_train=2, n_eval=0, seed=0)
    base = ["prune-llm", "--model", str(x4_plus), "--layers", "1", "--heads", "2", "--device", "cpu", "-q"]
    res = cli(*base, "--template", "vicuna_v1", "--out", "p.json")
    assert res.exit_code == ExitCode.USAGE and "--template is used by --calibrate only" in res.stderr
    res = cli(*base, "--calibrate", "--data", str(tmp_path / "sv" / "train.json"), "--count", "2",
              "--target-tokens", "8", "--template", "vicuna_v1", "--out", "p.json")
    assert res.exit_code == 0, res.stderr
    from meteor_cli.artifacts import read_artifact

    assert read_artifact(Path("p.json"), "meteor.prune-llm").body["calibration"]["template"] == "vicuna_v1"
