#!/usr/bin/env python3
"""Developer tasks that need nothing but Python 3.10+ and pip (no make, no shell tricks).

    python3 tasks.py test [PYTEST ARGS]   create .venv if needed, install meteor, run the test suite
    python3 tasks.py demo [DIR] [--quick] create .venv if needed, install meteor, run `meteor demo`
    python3 tasks.py venv                 only (re)install into .venv
    python3 tasks.py completions          regenerate completions/meteor.{bash,zsh,fish}
    python3 tasks.py pretrain-tiny        the recipe of the tiny SynthVQA model (hours on 2 cores; resumable)
    python3 tasks.py embed-tiny [CKPT [PRESET]]  ship a trained checkpoint as an embedded preset (tiny-synthvqa-v2)

The virtual environment lives in ``.venv`` (override with ``METEOR_VENV=DIR``). It is reinstalled
whenever ``pyproject.toml`` or ``constraints.txt`` change. Every install passes
``-c constraints.txt``, which pins torch/torchvision to the pair that works with timm on the
project machines (see docs/environment.md).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("METEOR_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".meteor-install-stamp"
SHELLS = ("bash", "zsh", "fish")


def sh(*cmd: str | Path, **kw: object) -> None:
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kw)  # type: ignore[arg-type]


def _fingerprint() -> str:
    h = hashlib.sha256()
    for name in ("pyproject.toml", "constraints.txt"):
        h.update((ROOT / name).read_bytes())
    return h.hexdigest()


def venv() -> None:
    """Create ``.venv`` and install meteor with its dev extra, unless already up to date."""
    if sys.version_info < (3, 10):
        sys.exit(f"meteor needs Python 3.10 or newer; this is {sys.version.split()[0]}")
    if STAMP.exists() and STAMP.read_text() == _fingerprint() and PY.exists():
        return
    if not PY.exists():
        sh(sys.executable, "-m", "venv", VENV)
    sh(PY, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    sh(PY, "-m", "pip", "install", "-c", ROOT / "constraints.txt", "-e", f"{ROOT}[dev]")
    STAMP.write_text(_fingerprint())


def test(args: list[str]) -> None:
    venv()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    os.chdir(ROOT)
    os.execve(str(PY), [str(PY), "-m", "pytest", *args], env)


def demo(args: list[str]) -> None:
    """``meteor demo``: the whole pipeline on the embedded model, METEOR next to the baselines.

    ``python3 tasks.py demo [DIR] [--quick] [--resume]`` (DIR defaults to a fresh temporary directory).
    """
    venv()
    flags = [a for a in args if a.startswith("--")]
    dirs = [a for a in args if not a.startswith("--")]
    out = Path(dirs[0]) if dirs else Path(tempfile.mkdtemp(prefix="meteor-demo-"))
    print(f"demo output directory: {out}", flush=True)
    sh(BIN / "meteor", "--version")
    sh(BIN / "meteor", "demo", "--out", out, *flags)


def completions(args: list[str]) -> None:
    """Write completions/meteor.<shell>, generated from the installed CLI."""
    venv()
    target = ROOT / "completions"
    target.mkdir(exist_ok=True)
    for shell in SHELLS:
        script = subprocess.run(
            [str(PY), "-m", "meteor_cli"], env={**os.environ, "_METEOR_COMPLETE": f"source_{shell}"},
            capture_output=True, text=True, check=True,
        ).stdout
        (target / f"meteor.{shell}").write_text(script)
        print(f"wrote {target / f'meteor.{shell}'}")


def pretrain_tiny(args: list[str]) -> None:
    """The recipe of the embedded tiny-synthvqa model (resumable: rerun to continue).

    Phase 1: SynthVQA 50k/800 at 128 px (seed 0) with 8 questions per training image (multi-turn:
    the image is encoded once for every answer), the `tiny` preset from scratch, AdamW 1e-3, batch
    16, cosine with 3 % warm-up, 2.5 epochs (7.8k steps, ~97 min on 2 cores), runs/tiny-synthvqa/.
    Phase 2: 2k more steps at 5e-4 on 40k fresh images (seed 1) from phase 1, ~21 min,
    runs/tiny-synthvqa-c2/.
    Phase 3: 5.5k more steps at 5e-4 with weight decay 0.05 on 50k fresh images (seed 2) from
    phase 2, ~53 min, runs/tiny-synthvqa-c3/ (tiny-synthvqa v1, 4 LLM layers). (Phases 1-2 used
    SynthVQA generator v1, whose OCR conversations always asked the full read first; v2 differs
    only in that.)
    Phase 4 (the first tiny-synthvqa v2): the v1 LLM deepened to 8 layers by identity depth up-scaling
    (meteor_cli/model/grow.py: the 8-layer model starts with exactly v1's logits), then 4.5k steps at
    4e-4, weight decay 0.05, batch 16, on generator-v4 data: 25k OCR-only images drawn
    `--ocr-style large` (seed 10) + 30k general/hallucination/chart images (seed 11), shuffled
    together (runs/mix7.json, OCR on 45 % of the images), ~95 min on 2 cores, runs/tiny-synthvqa-v2/.
    Phase 5: 3.6k more steps from phase 4 at 3e-4 (cosine, warm-up 3 %,
    weight decay 0.05, batch 16) on an OCR-rich generator-v4 mix: 40k `--ocr-style large` OCR images
    (seed 12) + 28k general/hallucination/chart images (seed 13) (runs/mix8.json, OCR on 59 % of the
    images), ~88 min on 2 cores, runs/tiny-synthvqa-v2b/.
    Phase 6 (shipped as `tiny-synthvqa-v2`): 4.6k more steps from phase 5, same settings, on fresh images:
    40k `large` OCR (seeds 14, 16) + 34k general/hallucination/chart (seeds 15, 17) (runs/mix9.json, OCR on
    54 % of the images), ~80 min on 2 cores, runs/tiny-synthvqa-v2c/; `python3 tasks.py embed-tiny` ships it.
    (The shipped runs started from float16 embedded copies — phase 4 from v1's, phases 5 and 6 from the
    previous phase's;
    the float32 chain differs only by that rounding.) (An earlier phase 4 on generator-v3
    `cells` OCR never learned to read: docs/synthvqa.md.) Evaluation seeds 0 (development), 1234 and
    77 (held out) are never trained on.
    """
    venv()
    meteor = BIN / "meteor"
    runs = ROOT / "runs"
    phases = [
        # (data dir, synth args, train out, train args)
        (runs / "synthvqa", ["--train", "50000", "--eval", "800", "--seed", "0"], runs / "tiny-synthvqa",
         ["--model", "tiny", "--lr", "1e-3", "--epochs", "2.5", "--save-every", "200"]),
        (runs / "synthvqa-s1", ["--train", "40000", "--eval", "0", "--seed", "1"], runs / "tiny-synthvqa-c2",
         ["--model", str(runs / "tiny-synthvqa"), "--lr", "5e-4", "--max-steps", "2000", "--save-every", "500"]),
        (runs / "synthvqa-s2", ["--train", "50000", "--eval", "0", "--seed", "2"], runs / "tiny-synthvqa-c3",
         ["--model", str(runs / "tiny-synthvqa-c2"), "--lr", "5e-4", "--weight-decay", "0.05", "--max-steps", "5500",
          "--save-every", "500"]),
    ]
    for data, synth_args, out, train_args in phases:
        if (out / "model.safetensors").is_file():
            continue  # this phase is finished
        if not (data / "train.json").exists():
            sh(meteor, "synth", "--out", data, *synth_args, "--image-size", "128", "--turns", "8",
               "--ocr-style", "free")  # phases 1-3 predate generator v3
        resume = ["--resume"] if (out / "checkpoints").exists() else []
        sh(meteor, "train", *train_args, "--data", data / "train.json", "--batch-size", "16", "--warmup", "0.03",
           "--out", out, "--device", "cpu", *resume, *args)

    # Phase 4: deepen to 8 layers, train on generator-v4 data (large-glyph OCR images + the other families).
    others = "general,hallucination,chart"
    out4, init = runs / "tiny-synthvqa-v2", runs / "tiny-synthvqa-v2-init"
    if not (out4 / "model.safetensors").is_file() and not (init / "model.safetensors").exists():
        sh(PY, "-c", "import sys; from meteor_cli.model.grow import deepen; deepen(sys.argv[1], sys.argv[2], 8)",
           runs / "tiny-synthvqa-c3", init)
    _v2_phase(runs, init, out4, "mix7.json", "4e-4", "4500", args,
              ("sv4-ocr10", "25000", "10", "ocr"), ("sv4-s11", "30000", "11", others))
    # Phase 5: an OCR-rich mix (40k large-OCR images, seed 12 + 28k others, seed 13).
    out5 = runs / "tiny-synthvqa-v2b"
    _v2_phase(runs, out4, out5, "mix8.json", "3e-4", "3600", args,
              ("sv4-ocr12", "40000", "12", "ocr"), ("sv4-s13", "28000", "13", others))
    # Phase 6: one more pass on fresh images (40k large-OCR, seeds 14/16 + 34k others, seeds 15/17).
    _v2_phase(runs, out5, runs / "tiny-synthvqa-v2c", "mix9.json", "3e-4", "4600", args,
              ("sv4-ocr14", "30000", "14", "ocr"), ("sv4-s15", "24000", "15", others),
              ("sv4-ocr16", "10000", "16", "ocr"), ("sv4-s17", "10000", "17", others))


def _v2_phase(runs: Path, init: Path, out: Path, mix_name: str, lr: str, steps: str, args: list[str],
              *sets: tuple[str, str, str, str]) -> None:
    """One phase of the 8-layer model (unless finished): draw each generator-v4 training set ``(name,
    images, seed, families)`` (OCR `--ocr-style large`), shuffle them into ``runs/mix_name``, then train
    ``init`` for ``steps`` at ``lr`` (cosine, 3 % warm-up, weight decay 0.05, batch 16) into ``out``."""
    if (out / "model.safetensors").is_file():
        return
    meteor = BIN / "meteor"
    for name, images, seed, families in sets:
        if not (runs / name / "train.json").exists():
            sh(meteor, "synth", "--out", runs / name, "--train", images, "--seed", seed, "--families", families,
               "--eval", "0", "--image-size", "128", "--turns", "8", "--ocr-style", "large")
    mix = runs / mix_name
    if not mix.exists():
        sh(PY, "-c", _MIX, runs, mix, *(name for name, *_ in sets))
    resume = ["--resume"] if (out / "checkpoints").exists() else []
    sh(meteor, "train", "--model", init, "--data", mix, "--image-root", runs, "--lr", lr, "--weight-decay", "0.05",
       "--warmup", "0.03", "--batch-size", "16", "--max-steps", steps, "--save-every", "250", "--out", out,
       "--device", "cpu", *resume, *args)


#: Concatenate SynthVQA training sets (image paths made relative to their common root) and shuffle.
_MIX = (
    "import json, random, sys\n"
    "from pathlib import Path\n"
    "root, out, names = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]\n"
    "recs = []\n"
    "for n in names:\n"
    "    for r in json.loads((root / n / 'train.json').read_text()):\n"
    "        recs.append({**r, 'id': f\"{n}-{r['id']}\", 'image': f\"{n}/{r['image']}\"})\n"
    "random.Random(0).shuffle(recs)\n"
    "out.write_text(json.dumps(recs))\n"
)


def embed_tiny(args: list[str]) -> None:
    """Copy a trained checkpoint (default runs/tiny-synthvqa-v2c, the recipe's last phase) into the package as float16
    weights, as the preset PRESET (default tiny-synthvqa-v2; v1 is `embed-tiny runs/tiny-synthvqa-c3 tiny-synthvqa`)."""
    venv()
    src = Path(args[0]) if args else ROOT / "runs" / "tiny-synthvqa-v2c"
    preset = args[1] if len(args) > 1 else "tiny-synthvqa-v2"  # the asset directory (= preset name) to write
    code = (
        "import sys, shutil, torch\n"
        "from pathlib import Path\n"
        "from safetensors.torch import load_file, save_file\n"
        "from meteor_cli.artifacts import atomic_dir\n"
        "src, dst = Path(sys.argv[1]), Path(sys.argv[2])\n"
        "with atomic_dir(dst) as tmp:\n"
        "    for f in src.iterdir():\n"
        "        if f.is_file() and f.suffix in ('.json', '.txt') and f.name != 'train_log.jsonl':\n"
        "            shutil.copy2(f, tmp / f.name)\n"
        "    sd = {k: v.half() if v.is_floating_point() else v for k, v in load_file(str(src / 'model.safetensors')).items()}\n"
        "    save_file(sd, str(tmp / 'model.safetensors'), metadata={'source': str(src.name), 'dtype': 'float16'})\n"
    )
    sh(PY, "-c", code, src, ROOT / "meteor_cli" / "assets" / preset)


def clean(args: list[str]) -> None:
    shutil.rmtree(VENV, ignore_errors=True)


TASKS = {"venv": lambda a: venv(), "test": test, "demo": demo, "completions": completions, "clean": clean,
         "pretrain-tiny": pretrain_tiny, "embed-tiny": embed_tiny}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in TASKS:
        sys.exit(__doc__)
    TASKS[sys.argv[1]](sys.argv[2:])
