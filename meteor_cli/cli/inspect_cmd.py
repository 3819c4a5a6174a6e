"""``meteor inspect``: pretty-print and validate any meteor artifact.

Accepts JSON artifacts (ranks, allocation, prune-llm, metrics, flops), safetensors files and
checkpoint directories. Exits 0 when the artifact is valid, with the documented error codes
otherwise, so it doubles as a check in scripts::

    meteor inspect allocation.json
    meteor rank-estimate ... --out - | meteor inspect -
    meteor inspect ranks.json --json | jq .encoders
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from meteor_cli.cli.common import Run, meteor_command


def _describe_safetensors(path: Path) -> dict[str, Any]:
    from meteor_cli.artifacts import _safetensors_header, tensors_provenance

    with open(path, "rb") as f:
        header = _safetensors_header(f, str(path))
    meta = header.pop("__metadata__", None) or {}
    tensors = {k: {"dtype": v.get("dtype"), "shape": v.get("shape")} for k, v in sorted(header.items())}
    numel = sum(int(__import__("math").prod(t["shape"] or [1])) for t in tensors.values())
    return {"format": "safetensors", "path": str(path), **tensors_provenance(meta),
            "metadata": {k: v for k, v in meta.items() if not k.startswith("meteor.")},
            "n_tensors": len(tensors), "n_elements": numel, "tensors": tensors}


def _describe_dir(path: Path) -> dict[str, Any]:
    files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    out: dict[str, Any] = {"format": "checkpoint", "path": str(path), "files": files}
    cfg = path / "config.json"
    if cfg.is_file():
        try:
            out["config"] = json.loads(cfg.read_text())
        except json.JSONDecodeError as exc:
            from meteor_cli.errors import InvalidInputError

            raise InvalidInputError(f"{cfg} is not valid JSON: {exc.msg}", "the checkpoint is damaged") from None
        if isinstance(out["config"], dict) and out["config"].get("format", "").startswith("meteor.checkpoint"):
            from meteor_cli.model.checkpoint import read_config

            read_config(path).validate()  # a bad field is reported with its name (exit code 4)
    out["safetensors"] = [_describe_safetensors(path / f) for f in files if f.endswith(".safetensors")]
    for st in out["safetensors"]:
        st.pop("tensors")  # a checkpoint lists hundreds; `meteor inspect DIR/model.safetensors` shows them
    return out


@meteor_command("inspect")
def main(
    artifact: Annotated[str, typer.Argument(
        help="Artifact to show: JSON or safetensors file, checkpoint directory, a preset that ships weights "
             "(tiny-synthvqa), or - for stdin.",
        metavar="ARTIFACT")],
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
        data = {"valid": True, **_describe_safetensors(path)}
    else:
        data = {"valid": True, **_describe_dir(path)}

    def human() -> None:
        from rich.console import Console
        from rich.pretty import Pretty

        console = Console(soft_wrap=True)
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
