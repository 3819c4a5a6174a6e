"""``meteor allocate``: Stage-1 and Stage-2 token budgets from ``ranks.json``.

Each encoder gets, at each pruning point, a share of that point's total proportional to the
rank of its feature maps (METEOR's rank-guided assignment); the result is exact (sums match),
capped at the tokens an encoder still has, and at least one token per encoder.

    meteor allocate --ranks ranks.json --total 1193 --fusion-keep 576 --out allocation.json
    meteor rank-estimate ... --out - | meteor allocate --ranks - --keep-ratio 0.15 --out allocation.json
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from meteor_cli.cli.common import STAGE1_OPTION_HELP, Run, meteor_command, rich_console, stage1_options_for
from meteor_cli.errors import UsageError
from meteor_cli.pruning import DEFAULT_FLOOR, DEFAULT_SCORE


class Strategy(str, Enum):
    rank = "rank"
    average = "average"
    rank_reverse = "rank-reverse"


class Schedule(str, Enum):
    geometric = "geometric"
    explicit = "explicit"


@meteor_command("allocate")
def main(
    ranks: Annotated[Path | None, typer.Option(
        "--ranks", help="Ranks artifact from `meteor rank-estimate` (`-` = stdin).")] = None,
    total: Annotated[int | None, typer.Option(
        "--total", min=1, help="Tokens kept over all encoders after the last Stage-1 point (EAGLE-X4: 1193).")] = None,
    keep_ratio: Annotated[float | None, typer.Option(
        "--keep-ratio", min=0.0, max=1.0, help="Alternative to --total: fraction of the native tokens kept.")] = None,
    fusion_keep: Annotated[int, typer.Option(
        "--fusion-keep", min=1, help="Stage-2 budget: tokens kept after cross-encoder pruning.")] = 576,
    strategy: Annotated[Strategy, typer.Option(
        "--strategy", help="rank (proportional to rank), average (equal shares), rank-reverse (∝ 1/rank).")] = Strategy.rank,
    schedule: Annotated[Schedule, typer.Option(
        "--schedule", help="Per-point totals: geometric from the native count to --total, or explicit (--totals).")] = Schedule.geometric,
    totals: Annotated[str | None, typer.Option(
        "--totals", help="Explicit per-point totals, comma-separated (with --schedule explicit), e.g. 4302,2265,1193.")] = None,
    stage1_method: Annotated[str, typer.Option(
        "--stage1-method", help="Stage-1 policy: meteor, similarity, random, prumerge+, visionzip (`meteor list policies`).")] = "meteor",
    stage1_option: Annotated[list[str] | None, typer.Option("--stage1-option", help=STAGE1_OPTION_HELP)] = None,
    dominant: Annotated[int | None, typer.Option(
        "--dominant", min=0, help="visionzip: dominant tokens per encoder at its last point (VisionZip's "
        "`dominant=`; = --stage1-option dominant=N).")] = None,
    contextual: Annotated[int | None, typer.Option(
        "--contextual", min=0, help="visionzip: contextual (merged) tokens per encoder (VisionZip's `contextual=`).")] = None,
    stage2_method: Annotated[str, typer.Option(
        "--stage2-method", help="Stage-2 policy: meteor (collaborative), separate, random, pool, divprune "
                                "(`meteor list policies`).")] = "meteor",
    stage2_score: Annotated[str, typer.Option(
        "--stage2-score", help="Redundancy score of the meteor Stage-2 policy: sum (the paper's), or the "
        "\\[inferred] normalised mean, encoder-mean, zscore (docs/synthvqa.md compares them).")] = DEFAULT_SCORE,
    stage2_floor: Annotated[float, typer.Option(
        "--stage2-floor", min=0.0, max=1.0, help="\\[inferred] Each encoder first keeps this fraction of its "
        "proportional share of --fusion-keep, the rest is chosen jointly (0 = the paper's joint selection; "
        "the default 0.5 with sum was chosen on a SynthVQA development seed).")] = DEFAULT_FLOOR,
    model: Annotated[str | None, typer.Option(
        "--model", help="Check the ranks' encoders against this model (preset, checkpoint, config JSON or "
        "transformers LLaVA-1.5 / LLaVA-NeXT / Qwen2-VL directory; on LLaVA-NeXT the budgets apply to every anyres "
        "tile, on Qwen2-VL to every image, in LLM tokens (2x2 merge windows)).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output allocation artifact (`-` = stdout).")] = Path("allocation.json"),
    run: Run = None,  # type: ignore[assignment]
) -> None:
    """Turn encoder ranks into per-encoder, per-point token budgets (Stages 1 and 2)."""
    from meteor_cli.artifacts import make_artifact, read_artifact, write_artifact
    from meteor_cli.pruning.allocation import build_allocation

    if ranks is None:
        raise UsageError("--ranks is required", "pass the ranks.json written by `meteor rank-estimate` (or - for stdin)")
    if str(out) == "-" and run.json:
        raise UsageError("--out - and --json both write to stdout", "drop one of them")
    explicit = None
    if schedule is Schedule.explicit:
        if not totals:
            raise UsageError("--schedule explicit needs --totals", "e.g. --totals 4302,2265,1193")
        try:
            explicit = [int(t) for t in totals.split(",")]
        except ValueError:
            raise UsageError(f"--totals {totals!r} is not a comma-separated list of integers") from None
    elif totals:
        raise UsageError("--totals is only used with --schedule explicit", "add --schedule explicit")
    art = read_artifact(ranks, "meteor.ranks", what="--ranks")
    if model is not None:
        _check_model(model, art["encoders"])
    body = build_allocation(art.body, total=total, keep_ratio=keep_ratio, fusion_keep=fusion_keep,
                            strategy=strategy.value, totals=explicit)
    from meteor_cli.pruning.stage1 import resolve_stage1_method
    from meteor_cli.pruning.stage2 import check_score_options, resolve_stage2_method

    resolve_stage1_method(None, stage1_method)  # unknown names fail here, with suggestions
    resolve_stage2_method(None, stage2_method)  # likewise; pre-projection is refused (a fusion, not a selection)
    check_score_options(stage2_score, stage2_floor)
    body["stage1"]["method"] = stage1_method
    if (dominant is not None or contextual is not None) and stage1_method != "visionzip":
        raise UsageError("--dominant/--contextual are VisionZip's counts", "add --stage1-method visionzip")
    sugar = [f"{k}={v}" for k, v in (("dominant", dominant), ("contextual", contextual)) if v is not None]
    options1 = stage1_options_for(body, stage1_method, [*(stage1_option or []), *sugar] or None)
    if options1:
        body["stage1"]["options"] = options1
    body["stage2"].update(method=stage2_method, score=stage2_score, floor=stage2_floor)
    result = make_artifact("meteor.allocation", body, inputs=[ranks])
    write_artifact(out, result)
    final = body["stage1"]["totals"][-1]
    if fusion_keep >= final:
        run.warn(f"--fusion-keep {fusion_keep} >= the {final} tokens left after Stage 1: Stage 2 prunes nothing")

    def human() -> None:
        from rich.table import Table

        enc = body["stage1"]["encoders"]
        table = Table(title=f"Stage-1 budgets ({strategy.value}); Stage 2 keeps {fusion_keep}", title_justify="left")
        table.add_column("encoder")
        table.add_column("native", justify="right")
        table.add_column("rank per point")
        table.add_column("keep per point")
        for name, e in enc.items():
            r = art["encoders"][name]["rank"]
            table.add_row(name, str(body["native_tokens"][name]), " ".join(f"{x:.3f}" for x in r),
                          " → ".join(map(str, e["keep"])))
        table.add_row("total", str(sum(body["native_tokens"].values())), "", " → ".join(map(str, body["stage1"]["totals"])))
        rich_console().print(table)
        if str(out) != "-":
            typer.echo(f"wrote {out}", err=True)

    run.emit(result.to_dict(), human, stdout_used=str(out) == "-")


def _check_model(spec: str, encoders: dict) -> None:
    """The ranks must name exactly the model's encoders."""
    from meteor_cli.errors import InvalidInputError

    from meteor_cli.model.checkpoint import load_model_config

    from meteor_cli.model.hf_vlm import family_of

    fam = family_of(spec)
    if fam is not None:  # a transformers VLM: its one tower (LLaVA-1.5), or a named refusal
        fam.require_stage1("allocate --model")
        names = [fam.tower]
    else:
        names = [e.name for e in load_model_config(spec).encoders]
    if sorted(names) != sorted(encoders):
        raise InvalidInputError(f"--ranks covers encoders {sorted(encoders)} but model {spec!r} has {sorted(names)}",
                                "estimate the ranks with the same model (`meteor rank-estimate --model ...`)")
