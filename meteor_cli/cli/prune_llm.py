"""``meteor prune-llm``: Stage-3 settings — instance-adaptive, text-guided pruning in the LLM.

Validates the settings against the model's LLM (depth, heads) and writes ``prune-llm.json``
(``meteor.prune-llm/v1``), which ``meteor eval``, ``meteor infer`` and ``meteor flops`` read.

    meteor prune-llm --model ckpt/ --layers 4,12,20 --heads 5 --lambda 50 --out prune-llm.json
    meteor prune-llm --model ckpt/ --method fastv --layers 2 --drop-ratio 0.5 --out fastv.json
    meteor prune-llm --model ckpt/ --method fixed --layers 4,12,20 --keep 390,172,78 --out fixed.json
    meteor prune-llm --model ckpt/ --method dart --layers 2 --keep 0.222 --option pivot_image=4 --out dart.json
    meteor prune-llm --model ckpt/ --calibrate --data dev.json --target-tokens 242 --out prune-llm.json
    # calibrate with Stage 1-2 active, on an eval question file (prompts and images suffice):
    meteor prune-llm --model ckpt/ --calibrate --allocation allocation.json \
                     --data synthvqa/eval/questions.jsonl --target-tokens 16 --out prune-llm.json

With ``--allocation`` the calibration runs the model with that allocation's Stage 1-2 applied, so
``--target-tokens`` is met by the combined pipeline (the tokens Stage 3 sees are those Stage 2
kept); use the same allocation in ``meteor eval``/``infer``.

``--visual-tokens 64|128|192`` states a budget the way VisionZip, DART, CDPruner and FlowCut report
it: ``fixed``/``all-heads`` keep that many visual tokens from layer 2 (or ``--layers``) on;
``meteor`` calibrates its scale so the layer-averaged count is that many::

    meteor prune-llm --model llava-1.5-7b-hf/ --method fixed --visual-tokens 64 --out fixed-64.json
    meteor prune-llm --model llava-1.5-7b-hf/ --calibrate --data dev.json --visual-tokens 128 --out meteor-128.json
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from meteor_cli.cli import _click as click
from meteor_cli.cli.common import AllowOutsideRoot, ParameterSource, Run, meteor_command, stage1_method_for
from meteor_cli.cli.templates import TemplateOption, apply_template, check_template
from meteor_cli.errors import InvalidInputError, UsageError


class Query(str, Enum):
    text = "text"
    last = "last"
    last_instruction = "last-instruction"


class Agg(str, Enum):
    mean = "mean"
    sum = "sum"


def _ints_or_floats(text: str | None, option: str) -> list[Any] | None:
    if text is None:
        return None
    try:
        return [int(v) if v.strip().isdigit() else float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{option} {text!r} must be comma-separated numbers", f"e.g. {option} 4,12,20") from None


def _policy_options(method: str, raw: list[str] | None) -> dict[str, Any]:
    """``--option NAME=VALUE`` as settings, checked against the fields of the registered policy ``method``."""
    from dataclasses import fields

    from meteor_cli.pruning.stage1 import _option_value
    from meteor_cli.registry import POLICIES, load_builtins_and_plugins

    if not raw:
        return {}
    load_builtins_and_plugins()
    names = sorted(f.name for f in fields(POLICIES.get(method, stage=3)))
    out: dict[str, Any] = {}
    for item in raw:
        name, sep, value = item.partition("=")
        key = name.strip().replace("-", "_")
        if not sep or key not in names:
            raise UsageError(f"--option {item!r}: the Stage-3 policy {method!r} has no setting {key!r}" if sep else
                             f"--option {item!r} is not NAME=VALUE", f"its settings: {', '.join(names)}")
        out[key] = _option_value(value.strip())
    return out


def llm_dims(spec: str) -> dict[str, Any]:
    """Depth and heads of the LLM in ``spec``: an HF causal-LM directory or a meteor model."""
    path = Path(spec)
    cfg_file = path / "config.json" if path.is_dir() else path
    if cfg_file.suffix == ".json" and cfg_file.is_file():
        try:
            cfg = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"{cfg_file} is not valid JSON: {exc.msg}", "check the model directory") from None
        if "num_hidden_layers" in cfg:  # a plain Hugging Face LLM directory
            return {"num_layers": cfg["num_hidden_layers"], "num_heads": cfg["num_attention_heads"],
                    "family": cfg.get("model_type")}
        from meteor_cli.model.hf_vlm import family_of

        if path.is_dir() and family_of(path) is not None:  # a transformers VLM: its language model
            from transformers import AutoConfig

            text = AutoConfig.from_pretrained(path, local_files_only=True).get_text_config()
            return {"num_layers": text.num_hidden_layers, "num_heads": text.num_attention_heads,
                    "family": cfg.get("model_type"), "text_family": text.model_type}
    from meteor_cli.model.checkpoint import load_model_config

    hf = load_model_config(spec).llm.resolved_hf_config()
    return {"num_layers": hf["num_hidden_layers"], "num_heads": hf["num_attention_heads"], "family": hf.get("model_type")}


#: Where single-layer budgets prune (FastV's K = 2, DART's layer 2), scaled to shallow models.
BUDGET_LAYER = 2


def visual_token_budget(method: str, n: int, layers: list[Any] | None, keep: list[Any] | None, calibrate: bool,
                        target: float | None, num_layers: int) -> tuple[list[Any] | None, list[Any] | None, float | None]:
    """``--visual-tokens N`` as (layers, keep, target_tokens) for ``method``.

    fixed / all-heads: keep N visual tokens from the first pruning layer on (``--layers``, default
    layer 2); meteor: calibrate the layer-averaged count to N; sparsevlm: its published counts for
    N = 64, 96, 128 or 192. FastV and PDrop budgets are ratios
    of each image's own count, so a fixed N has no meaning for them: an error says what to use.
    """
    if method in ("fixed", "all-heads"):
        if keep is not None:
            raise UsageError("--visual-tokens and --keep both set the kept counts", "give one of them")
        layers = layers or [min(BUDGET_LAYER, num_layers - 1)]
        return layers, [n] * len(layers), target
    if method == "sparsevlm":
        from meteor_cli.pruning.sparsevlm import REFERENCE_COUNTS

        if keep is not None:
            raise UsageError("--visual-tokens and --keep both set the kept counts", "give one of them")
        if n not in REFERENCE_COUNTS:
            raise UsageError(f"--visual-tokens {n}: SparseVLM publishes its kept counts for "
                             f"{', '.join(map(str, REFERENCE_COUNTS))} tokens only",
                             "pick one of those, give --keep counts per layer, or compare at any budget with "
                             "`meteor eval --method sparsevlm --visual-tokens N` (its schedule scaled to N)")
        return layers, list(REFERENCE_COUNTS[n]), target
    if method == "meteor":
        if not calibrate:
            raise UsageError("--visual-tokens with --method meteor is the target of --calibrate",
                             "add --calibrate --data DATA (or use --method fixed --visual-tokens N)")
        if target is not None and target != n:
            raise UsageError(f"--visual-tokens {n} and --target-tokens {target} disagree", "give one of them")
        return layers, keep, float(n)
    raise UsageError(f"--visual-tokens has no meaning for --method {method} (its budget is a ratio of each image's tokens)",
                     "use --drop-ratio (fastv) / --keep ratios (pdrop), or --method fixed --visual-tokens N")


@meteor_command("prune-llm", uses_device=True)
def main(
    model: Annotated[str | None, typer.Option(
        "--model", help="Checkpoint directory, preset, config JSON, or a Hugging Face causal-LM directory.")] = None,
    method: Annotated[str, typer.Option(
        "--method", help="Stage-3 policy: meteor, fixed, all-heads, fastv, pdrop, dart, sparsevlm "
                         "(`meteor list policies`).")] = "meteor",
    layers: Annotated[str | None, typer.Option(
        "--layers", help="0-based LLM layers to prune before, comma-separated (default: round(L·{4,12,20}/32); "
                         "fastv: its layer K; pdrop: round(L·{8,16,24}/32)).")] = None,
    heads: Annotated[int, typer.Option("--heads", min=1, help="Top-k attention heads used for scoring.")] = 5,
    lam: Annotated[float, typer.Option("--lambda", help="Budget scale λ: larger keeps more tokens (meteor).")] = 50.0,
    scale: Annotated[float, typer.Option("--scale", help="Calibration constant c in K = c·λ·ΣVAV (meteor).")] = 1.0,
    k_min: Annotated[int, typer.Option("--k-min", min=1, help="Fewest visual tokens kept at a layer (meteor).")] = 1,
    query: Annotated[Query, typer.Option(
        "--query", help="Query rows: text (all text after the image), last, last-instruction. Default: text; "
                        "fastv last, pdrop last-instruction, sparsevlm its text raters.")] = Query.text,
    agg: Annotated[Agg, typer.Option("--agg", help="Aggregate attention over the query rows: mean or sum.")] = Agg.mean,
    keep: Annotated[str | None, typer.Option(
        "--keep", help="fixed/all-heads: counts or ratios per layer (e.g. 390,172,78); pdrop: ratios of N0; "
                       "dart: one count or ratio at its layer K.")] = None,
    drop_ratio: Annotated[float, typer.Option(
        "--drop-ratio", min=0.0, max=0.99, help="fastv: fraction R of the visual tokens removed at layer K.")] = 0.5,
    option: Annotated[list[str] | None, typer.Option(
        "--option", help="NAME=VALUE setting of the policy (repeatable; its fields, e.g. pivot_image=4, pivot_text=4, "
                         "pivot_by=value for dart).")] = None,
    calibrate: Annotated[bool, typer.Option(
        "--calibrate", help="Fit the scale c on --data so the layer-averaged token count hits --target-tokens.")] = False,
    data: Annotated[Path | None, typer.Option(
        "--data", help="Calibration data: LLaVA instruction data, or a LLaVA question file (JSONL with "
                       "`image` and `text`, no answers needed).")] = None,
    image_root: Annotated[Path | None, typer.Option(
        "--image-root", help="Image directory for --data (default: the data file's directory; see README "
                             "\"Image paths\").")] = None,
    allow_outside_root: AllowOutsideRoot = False,
    allocation: Annotated[Path | None, typer.Option(
        "--allocation", help="Calibrate with these Stage 1-2 budgets applied (allocation artifact), so the "
                             "target is met by the combined pipeline.")] = None,
    template: TemplateOption = None,
    target_tokens: Annotated[float | None, typer.Option(
        "--target-tokens", help="Layer-averaged visual tokens to calibrate for.")] = None,
    count: Annotated[int, typer.Option("--count", min=1, help="Calibration samples.")] = 64,
    visual_tokens: Annotated[int | None, typer.Option(
        "--visual-tokens", min=1,
        help="Budget as VisionZip/DART/CDPruner report it (64, 128, 192): visual tokens kept. fixed/all-heads: "
             "kept from --layers on (default: layer 2, where FastV/DART prune); meteor: the layer-averaged "
             "target of --calibrate.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output prune-llm artifact (`-` = stdout).")] = Path("prune-llm.json"),
    run: Run = None,  # type: ignore[assignment]
) -> None:
    """Choose (and optionally calibrate) Stage-3 pruning inside the LLM."""
    from meteor_cli.artifacts import make_artifact, write_artifact
    from meteor_cli.pruning.llm_policies import make_policy

    if model is None:
        raise UsageError("--model is required", "pass the checkpoint (or HF LLM directory) the settings are for")
    if str(out) == "-" and run.json:
        raise UsageError("--out - and --json both write to stdout", "drop one of them")
    check_template(template)
    dims = llm_dims(model)
    layer_list = _ints_or_floats(layers, "--layers")
    keep_list = _ints_or_floats(keep, "--keep")
    if visual_tokens is not None:
        layer_list, keep_list, target_tokens = visual_token_budget(method, visual_tokens, layer_list, keep_list,
                                                                   calibrate, target_tokens, dims["num_layers"])
    settings: dict[str, Any] = {"layers": layer_list, "heads": heads, "lam": lam, "scale": scale, "k_min": k_min,
                                "query": query.value, "agg": agg.value, "r": drop_ratio}
    given = click.get_current_context().get_parameter_source
    if method in ("fastv", "pdrop", "sparsevlm") and given("query") == ParameterSource.DEFAULT:
        settings.pop("query")  # the policy's own query rows: last token, last instruction token, raters
    if method == "fastv" and layer_list:
        settings["k"] = layer_list[0]
    if method == "all-heads":
        settings.pop("heads")  # the point of this baseline: no head filtering
    if method == "sparsevlm" and given("heads") == ParameterSource.DEFAULT:
        settings.pop("heads")  # its own default: 14 of 32 heads, scaled to the LLM
    if method == "pdrop":
        settings["ratios"] = keep_list
    elif keep_list is not None:
        settings["keep"] = keep_list
    settings.update(_policy_options(method, option))
    policy = make_policy(method, **settings)
    policy.validate(dims["num_layers"], dims["num_heads"])
    if allocation is not None and not calibrate:
        raise UsageError("--allocation is used by --calibrate only", "add --calibrate, or drop --allocation")
    if template is not None and not calibrate:
        raise UsageError("--template is used by --calibrate only", "add --calibrate, or drop --template")
    if calibrate:
        if method != "meteor":
            raise UsageError("--calibrate fits the scale of the meteor policy only", "drop --calibrate or use --method meteor")
        if data is None or target_tokens is None:
            raise UsageError("--calibrate needs --data and --target-tokens", "e.g. --data dev.json --target-tokens 242")
        calibration = _calibrate(run, model, policy, data, image_root, target_tokens, count,
                                 allocation=allocation, allow_outside_root=allow_outside_root, template=template)
    else:
        calibration = None
    body = {"method": method, **policy.to_dict(), "model": {"spec": model, **dims}, "calibration": calibration}
    if visual_tokens is not None:
        body["visual_tokens"] = visual_tokens
    inputs = ([model] if Path(model).exists() else []) + ([allocation] if calibrate and allocation else [])
    art = make_artifact("meteor.prune-llm", body, inputs=inputs)
    write_artifact(out, art)

    def human() -> None:
        desc = ", ".join(f"{k}={v}" for k, v in policy.to_dict().items())
        typer.echo(f"Stage 3: {method} ({desc}) on a {dims['num_layers']}-layer, {dims['num_heads']}-head LLM")
        if calibration:
            with_alloc = (f" with Stage 1-2 from {calibration['allocation']['path']} ({calibration['stage2_visual']:.1f} "
                          "tokens into the LLM)" if calibration.get("allocation") else "")
            typer.echo(f"calibrated scale c = {calibration['scale']:.4g}: layer-averaged {calibration['achieved']:.1f} "
                       f"visual tokens (target {calibration['target']}, spread ±{calibration['std']:.1f} over "
                       f"{calibration['n']} samples){with_alloc}; per-layer means "
                       f"{[round(x, 1) for x in calibration['per_layer_mean']]}")
        if str(out) != "-":
            typer.echo(f"wrote {out}")

    run.emit(art.to_dict(), human, stdout_used=str(out) == "-")


def calibration_prompt(record: dict[str, Any], index: int) -> str:
    """The prompt of a calibration record, with ``<image>`` marking the image (first if absent).

    Accepts LLaVA instruction records (the first human turn of ``conversations``; no answer
    needed) and LLaVA question records (``text``, as in an eval ``questions.jsonl``).

    Raises:
        InvalidInputError: neither is present or well-formed; names the record.
    """
    from meteor_cli.data.llava import record_id

    where = f"record #{index} (id {record_id(record, index)})"
    convs = record.get("conversations")
    text: Any = None
    if convs is not None:
        if not isinstance(convs, list):
            raise InvalidInputError(f"{where}: `conversations` is a {type(convs).__name__}, not a list of turns",
                                    'each turn is {"from": "human"|"gpt", "value": "..."}')
        text = next((t.get("value") for t in convs if isinstance(t, dict) and t.get("from") == "human"), None)
        if not isinstance(text, str) or not text.strip():
            raise InvalidInputError(f"{where}: no human turn with a text `value` in `conversations`",
                                    "calibration needs a prompt per image")
    else:
        text = record.get("text")
        if not isinstance(text, str) or not text.strip():
            raise InvalidInputError(f"{where}: has neither `conversations` nor a `text` prompt",
                                    "pass LLaVA instruction data or a LLaVA question file (image + text)")
    return text if "<image>" in text else "<image>\n" + text


def _calibrate(run: Run, model: str, policy: Any, data: Path, image_root: Path | None, target: float, count: int,
               *, allocation: Path | None = None, allow_outside_root: bool = False, template: str | None = None) -> dict:
    """Fit the meteor policy's scale c so the mean layer-averaged visual tokens hit ``target``.

    With ``allocation`` the model runs with that Stage 1-2 applied, so the tokens Stage 3 prunes
    are those Stage 2 kept and the target holds for the combined pipeline.
    """
    import statistics

    import torch

    from meteor_cli.artifacts import input_ref, read_artifact
    from meteor_cli.data.llava import image_root_for, iter_selected, load_image, resolve_image, sample_records
    from meteor_cli.eval.runner import images_for, install_pruning
    from meteor_cli.model.checkpoint import load_model
    from meteor_cli.pruning.llm_pruner import LLMPruner, text_config
    from meteor_cli.pruning.schedule import calibrate_scale, layer_averaged_tokens

    alloc = read_artifact(allocation, "meteor.allocation", what="--allocation") if allocation else None
    method1 = stage1_method_for(alloc.body, None) if alloc else None
    root = image_root_for(data, image_root)
    vlm = apply_template(load_model(model, run.device.torch, seed=run.seed), template)
    if alloc is not None:
        install_pruning(vlm, alloc.body, None, seed=run.seed, stage1_method=method1)
    chosen = sample_records(data, count=count, seed=run.seed)
    imgs, prompts, unreadable = [], [], []
    for i, rec in iter_selected(data, chosen.indices):
        prompt = calibration_prompt(rec, i)
        path = resolve_image(rec, root, index=i, allow_outside_root=allow_outside_root)
        try:
            imgs.append(load_image(path))
        except OSError:
            unreadable.append(str(path))
            continue
        prompts.append(prompt)
    if not imgs:
        raise InvalidInputError(f"{data}: none of the {len(chosen.indices)} calibration images is readable "
                                f"(first: {unreadable[:2]})", "check --data and --image-root")
    if unreadable:
        run.warn(f"calibration: skipped {len(unreadable)} unreadable images (first: {unreadable[:2]})")

    def batch_images(i: int) -> Any:
        ims = images_for(vlm, imgs[i:i + 8])
        return ims.to(run.device.torch) if isinstance(ims, torch.Tensor) else ims

    with torch.no_grad():
        batches = [vlm.prepare(batch_images(i), prompts[i:i + 8])[0] for i in range(0, len(imgs), 8)]
    pruner = LLMPruner(vlm.llm, policy)
    n_layers = text_config(vlm.llm).num_hidden_layers
    last: dict = {}

    def measure(scale: float) -> float:
        policy.scale = scale
        avgs, per_layer = [], []
        for inp in batches:
            with torch.no_grad(), pruner.session(inp.visual_start, inp.visual_len, attention_mask=inp.attention_mask) as sess:
                if hasattr(vlm, "prefill"):  # a transformers VLM runs its own forward (embeddings, M-RoPE)
                    vlm.prefill(inp)
                else:
                    vlm.llm(inputs_embeds=inp.embeds, attention_mask=inp.attention_mask)
            for b in range(len(inp.visual_len)):
                kept = [len(sess.kept[p][b]) for p in policy.layers]
                per_layer.append(kept)
                avgs.append(layer_averaged_tokens(inp.visual_len[b], policy.layers, kept, n_layers))
        last[scale] = (avgs, per_layer)
        return sum(avgs) / len(avgs)

    with run.progress(desc="calibrating", unit="eval") as bar:
        def tracked(scale: float) -> float:
            bar.update(1)
            return measure(scale)

        cal = calibrate_scale(tracked, target, tol=0.02)
    policy.scale = cal.scale
    avgs, per_layer = last[cal.scale]
    if cal.relative_error > 0.02:
        run.warn(f"calibration reached {cal.achieved:.1f} tokens, not the target {target} (limits of the scale range)")
    stage2_visual = sum(v for inp in batches for v in inp.visual_len) / len(avgs)
    return {"scale": cal.scale, "target": target, "achieved": cal.achieved, "std": statistics.pstdev(avgs),
            "n": len(avgs), "per_layer_mean": [sum(col) / len(col) for col in zip(*per_layer)],
            "data": str(data), "iterations": cal.iterations, "stage2_visual": stage2_visual,
            "allocation": input_ref(allocation) if allocation else None, "stage1_method": method1,
            "template": getattr(getattr(vlm, "cfg", None), "template", None)}
