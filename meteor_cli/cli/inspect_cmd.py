"""``meteor inspect``: pretty-print and validate any meteor artifact.

Accepts JSON artifacts (ranks, allocation, prune-llm, metrics, flops), safetensors files and
checkpoint directories. Exits 0 when the artifact is valid, with the documented error codes
otherwise, so it doubles as a check in scripts. Safetensors headers are checked against the
file (every tensor's byte range lies inside it: a truncated copy is caught without reading the
data); a checkpoint's shards must all be present and inside it; ``--verify`` reads every tensor::

    meteor inspect allocation.json
    meteor rank-estimate ... --out - | meteor inspect -
    meteor inspect ranks.json --json | jq .encoders
    meteor inspect ckpt/ --verify          # read every tensor too
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer

from meteor_cli.cli.common import Run, meteor_command, rich_console


def _describe_safetensors(path: Path, verify: bool = False) -> dict[str, Any]:
    """Header, provenance and tensor table of a safetensors file; every tensor's byte range is
    checked against the file size (a truncated file is an error, exit 4). ``verify`` reads
    every tensor too and refuses non-finite values."""
    from meteor_cli.artifacts import read_safetensors_header, tensors_provenance, verify_safetensors
    from meteor_cli.errors import InvalidInputError

    header = dict(read_safetensors_header(path))
    meta = header.pop("__metadata__", None) or {}
    tensors = {k: {"dtype": v.get("dtype"), "shape": v.get("shape")} for k, v in sorted(header.items())}
    numel = sum(math.prod(t["shape"]) for t in tensors.values())
    out = {"format": "safetensors", "path": str(path), **tensors_provenance(meta),
           "metadata": {k: v for k, v in meta.items() if not k.startswith("meteor.")},
           "n_tensors": len(tensors), "n_elements": numel, "tensors": tensors}
    if verify:
        checked = verify_safetensors(path)
        if checked["non_finite"]:
            (name, n), more = next(iter(checked["non_finite"].items())), len(checked["non_finite"]) - 1
            raise InvalidInputError(f"{path}: tensor {name!r} holds {n} NaN/inf value(s)"
                                    + (f" (and {more} more tensor(s))" if more else ""),
                                    "the weights are damaged (or training diverged); use an earlier checkpoint")
        out["verified"] = {"n_tensors": checked["n_tensors"], "n_bytes": checked["n_bytes"]}
    return out


def _describe_dir(path: Path, verify: bool = False) -> dict[str, Any]:
    """A checkpoint directory: config.json (every field checked), the weights (``model.safetensors``
    or every shard its index names: present, inside the directory, each tensor's bytes inside its
    file, each indexed tensor in its shard) and the tokenizer files."""
    from meteor_cli.artifacts import read_json_file
    from meteor_cli.errors import InputNotFoundError, InvalidInputError

    files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    out: dict[str, Any] = {"format": "checkpoint", "path": str(path), "files": files}
    cfg = path / "config.json"
    is_meteor = False
    if cfg.is_file():
        out["config"] = read_json_file(cfg, "config.json", fix="the checkpoint is damaged")
        from meteor_cli.model.hf_vlm import family_of

        is_meteor = isinstance(out["config"], dict) and str(out["config"].get("format", "")).startswith("meteor.checkpoint")
        family = None if is_meteor else family_of(path)
        if family is not None:  # a transformers VLM (LLaVA-1.5, LLaVA-NeXT, Qwen2-VL): what meteor sees in it
            out["format"] = "transformers-vlm"
            out["model"] = family.describe(path)
        if is_meteor:
            from meteor_cli.model.checkpoint import read_config

            read_config(path).validate()  # a bad field is reported with its name (exit code 4)
    from meteor_cli.model.checkpoint import INDEX, TOKENIZER_FILES, WEIGHTS, has_weights, model_format_of, shard_files

    fmt = None if is_meteor else model_format_of(path)
    if fmt is not None:  # a registered foreign layout (e.g. an EAGLE release): its summary, from headers only
        out["model"] = fmt.describe(path)
    if is_meteor or has_weights(path):
        if not has_weights(path):
            raise InputNotFoundError(f"{path} has neither {WEIGHTS} nor {INDEX}", "the checkpoint is incomplete")
        weights = shard_files(path)  # confined to the directory, every shard present
        described = {name: _describe_safetensors(p, verify) for name, p in weights.items()}
        if INDEX in files and WEIGHTS not in weights:
            weight_map = read_json_file(path / INDEX, "shard index")["weight_map"]
            for tensor, shard in weight_map.items():
                if tensor not in described[shard]["tensors"]:
                    raise InvalidInputError(f"{path / INDEX}: tensor {tensor!r} is mapped to {shard}, which does not "
                                            "hold it", "the shards and the index do not match; re-save the checkpoint")
        if is_meteor and not any((path / f).is_file() for f in TOKENIZER_FILES):
            raise InputNotFoundError(f"{path} has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, ...)",
                                     "the checkpoint is incomplete: copy the tokenizer files written with it back in")
        out["weights"] = sorted(weights)
    else:
        described = {}
    # files a foreign format's index does not name (EAGLE's *_old shards) are never its weights: not opened
    others = [f for f in files if f.endswith(".safetensors") and f not in described and fmt is None]
    described.update({f: _describe_safetensors(path / f, verify) for f in others})
    out["safetensors"] = list(described.values())
    for st in out["safetensors"]:
        st.pop("tensors")  # a checkpoint lists hundreds; `meteor inspect DIR/model.safetensors` shows them
    return out


@meteor_command("inspect")
def main(
    artifact: Annotated[str, typer.Argument(
        help="Artifact to show: JSON or safetensors file, checkpoint directory, a preset that ships weights "
             "(tiny-synthvqa), or - for stdin.",
        metavar="ARTIFACT")],
    verify: Annotated[bool, typer.Option(
        "--verify", help="Also read every tensor of safetensors files (slow for large checkpoints) and refuse "
                         "NaN/inf values; without it only headers and byte ranges are checked.")] = False,
    run: Run = None,  # type: ignore[assignment]
) -> None:
    """Validate an artifact and print what it contains and how it was produced."""
    from meteor_cli.artifacts import STDIO, read_artifact, sniff

    path = Path(artifact)
    if artifact != STDIO and not path.exists():
        from meteor_cli.model.checkpoint import checkpoint_dir_of

        path = checkpoint_dir_of(artifact) or path  # a preset with weights names its checkpoint directory
    fmt = "json" if artifact == STDIO else sniff(path)
    if fmt == "json":
        art = read_artifact(artifact)
        data: dict[str, Any] = {"format": "json", "valid": True, **art.to_dict()}
    elif fmt == "safetensors":
        data = {"valid": True, **_describe_safetensors(path, verify)}
    else:
        data = {"valid": True, **_describe_dir(path, verify)}

    def human() -> None:
        from rich.pretty import Pretty

        console = rich_console()
        schema = data.get("schema") or data["format"]
        console.print(f"[bold green]valid[/bold green] {schema}: {artifact}")
        prod = data.get("producer") or {}
        if prod:
            console.print(f"  produced by: {prod.get('command')}")
            console.print(f"  meteor {prod.get('meteor_version')}, torch {prod.get('torch_version')}, "
                          f"git {prod.get('git_sha') or '-'}, {prod.get('created_utc')}")
        for ref in data.get("inputs") or []:
            console.print(f"  input: {ref.get('path')}  sha256 {str(ref.get('sha256'))[:16]}…")
        body = {k: v for k, v in data.items() if k not in ("schema", "producer", "inputs", "valid", "format", "path")}
        console.print(Pretty(body, max_length=20, max_string=120))

    run.emit(data, human)
