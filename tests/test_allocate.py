"""Rank-guided budget allocation (METHOD A3/A4) and `meteor allocate`."""

from __future__ import annotations

import json

import pytest

from meteor_cli import artifacts as A
from meteor_cli.errors import ExitCode, UsageError
from meteor_cli.pruning.allocation import allocate, allocate_point, build_allocation, geometric_totals

RANKS = {
    "schema": "meteor.ranks/v1", "method": "nuclear", "grid": 32,
    "encoders": {
        "clip": {"points": [7, 15, 23], "rank": [0.60, 0.50, 0.40], "std": [0.01] * 3, "n_images": 10, "tokens": 1024},
        "convnext": {"points": [39, 39, 39], "rank": [0.30, 0.30, 0.30], "std": [0.01] * 3, "n_images": 10, "tokens": 1024},
        "eva": {"points": [7, 15, 23], "rank": [0.20, 0.25, 0.10], "std": [0.01] * 3, "n_images": 10, "tokens": 4096},
        "pix2struct": {"points": [5, 11, 17], "rank": [0.45, 0.35, 0.50], "std": [0.01] * 3, "n_images": 10, "tokens": 2025},
    },
}


def test_geometric_totals_eagle_x4():
    assert geometric_totals(8169, 1193, 3) == [4302, 2265, 1193]  # docs/method.md §3.4: ≈ (4302, 2266, 1193)


@pytest.mark.parametrize("total", [4, 7, 100, 1193, 3000])
def test_every_point_sums_exactly_and_respects_caps(total):
    ranks = {n: e["rank"] for n, e in RANKS["encoders"].items()}
    native = {n: e["tokens"] for n, e in RANKS["encoders"].items()}
    totals = geometric_totals(8169, total, 3)
    keep = allocate(ranks, native, totals, "rank")
    for b, t in enumerate(totals):
        assert sum(k[b] for k in keep.values()) == t
    for n, k in keep.items():
        assert all(x >= 1 for x in k) and k[0] <= native[n] and all(b <= a for a, b in zip(k, k[1:]))


def test_rank_order_and_reverse():
    w = {"hi": 0.8, "mid": 0.5, "lo": 0.2}
    caps = {n: 10_000 for n in w}
    rank = allocate({n: [r] for n, r in w.items()}, caps, [1500], "rank")
    rev = allocate({n: [r] for n, r in w.items()}, caps, [1500], "rank-reverse")
    avg = allocate({n: [r] for n, r in w.items()}, caps, [1500], "average")
    assert rank == {"hi": [800], "mid": [500], "lo": [200]}  # exactly proportional
    assert rev["lo"][0] > rev["mid"][0] > rev["hi"][0]
    assert avg == {"hi": [500], "mid": [500], "lo": [500]}


def test_remainder_goes_to_largest_fraction_then_earlier_encoder():
    assert allocate_point(10, {"a": 1.0, "b": 1.0, "c": 1.0}, {"a": 9, "b": 9, "c": 9}) == {"a": 4, "b": 3, "c": 3}
    assert allocate_point(7, {"a": 1.0, "b": 2.0}, {"a": 9, "b": 9}) == {"a": 2, "b": 5}  # 2.33, 4.67 → 2, 5


def test_water_filling_and_minimum_one():
    # "small" can hold 10 tokens only: its excess flows to the others in proportion to their weights.
    got = allocate_point(100, {"small": 0.8, "a": 0.1, "b": 0.1}, {"small": 10, "a": 1000, "b": 1000})
    assert got == {"small": 10, "a": 45, "b": 45}
    assert allocate_point(3, {"x": 1000.0, "y": 0.001, "z": 0.001}, {"x": 10, "y": 10, "z": 10}) == {"x": 1, "y": 1, "z": 1}


def test_impossible_totals():
    with pytest.raises(UsageError, match="exceeds"):
        allocate_point(50, {"a": 1.0, "b": 1.0}, {"a": 20, "b": 20})
    with pytest.raises(UsageError, match="one token"):
        allocate_point(1, {"a": 1.0, "b": 1.0}, {"a": 20, "b": 20})


def test_budgets_at_least_the_native_tokens_keep_everything():
    native = {n: e["tokens"] for n, e in RANKS["encoders"].items()}
    keep = allocate({n: e["rank"] for n, e in RANKS["encoders"].items()}, native, [8169] * 3, "rank")
    assert keep == {n: [t] * 3 for n, t in native.items()}


def test_build_allocation_body():
    body = build_allocation(RANKS, total=1193, fusion_keep=576)
    assert body["stage1"]["totals"] == [4302, 2265, 1193] and body["stage2"] == {"keep": 576}
    assert body["stage1"]["encoders"]["clip"]["points"] == [7, 15, 23]
    art = A.make_artifact("meteor.allocation", body)  # the schema's own validation agrees
    assert art.schema == "meteor.allocation/v1"
    ratio = build_allocation(RANKS, keep_ratio=0.15)
    assert ratio["stage1"]["totals"][-1] == round(0.15 * 8169)
    with pytest.raises(UsageError, match="exactly one of --total and --keep-ratio"):
        build_allocation(RANKS, total=10, keep_ratio=0.1)


def _write_ranks(path):
    body = {k: v for k, v in RANKS.items() if k != "schema"}
    A.write_artifact(path, A.make_artifact("meteor.ranks", body))


def test_cli_writes_a_valid_allocation(cli, tmp_path):
    _write_ranks(tmp_path / "ranks.json")
    res = cli("allocate", "--ranks", "ranks.json", "--total", "1193", "--fusion-keep", "576")
    assert res.exit_code == 0, res.output
    art = A.read_artifact(tmp_path / "allocation.json", "meteor.allocation")
    assert art["stage1"]["totals"] == [4302, 2265, 1193]
    assert art.inputs[0]["sha256"] == A.sha256_file(tmp_path / "ranks.json")
    assert "4302 → 2265 → 1193" in res.stdout


def test_cli_pipes_through_stdin_and_stdout(cli, tmp_path):
    _write_ranks(tmp_path / "ranks.json")
    res = cli("allocate", "--ranks", "-", "--keep-ratio", "0.1", "--schedule", "explicit", "--totals",
              "5000,2000,817", "--strategy", "average", "--out", "-", input=(tmp_path / "ranks.json").read_text())
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["schema"] == "meteor.allocation/v1" and data["strategy"] == "average"
    assert data["stage1"]["totals"] == [5000, 2000, 817] and data["stage2"]["method"] == "meteor"
    res = cli("allocate", "--ranks", "ranks.json", "--total", "100", "--stage2-method", "random", "--out", "-")
    assert json.loads(res.stdout)["stage2"] == {"keep": 576, "method": "random", "score": "sum", "floor": 0.5}
    res = cli("allocate", "--ranks", "ranks.json", "--total", "100", "--stage2-method", "randm")
    assert res.exit_code == ExitCode.USAGE and "did you mean 'random'" in res.stderr


@pytest.mark.parametrize("args, code, message", [
    ([], ExitCode.USAGE, "--ranks is required"),
    (["--ranks", "nope.json", "--total", "10"], ExitCode.NOT_FOUND, "does not exist"),
    (["--ranks", "ranks.json", "--total", "99999"], ExitCode.USAGE, "must be between 1 and the 8169"),
    (["--ranks", "ranks.json", "--total", "10", "--totals", "1,2,3"], ExitCode.USAGE, "--schedule explicit"),
    (["--ranks", "ranks.json", "--schedule", "explicit", "--totals", "10,20,5"], ExitCode.USAGE, "must not increase"),
    (["--ranks", "alloc.json", "--total", "10"], ExitCode.INVALID_INPUT, "is a meteor.allocation/v1 artifact"),
])
def test_cli_errors_write_nothing(cli, tmp_path, args, code, message):
    _write_ranks(tmp_path / "ranks.json")
    A.write_artifact(tmp_path / "alloc.json", A.make_artifact("meteor.allocation", build_allocation(RANKS, total=100)))
    res = cli("allocate", *args)
    assert res.exit_code == code, res.output
    assert message in res.stderr
    assert not (tmp_path / "allocation.json").exists()


def test_model_check_names_the_encoders(cli, tmp_path):
    _write_ranks(tmp_path / "ranks.json")
    res = cli("allocate", "--ranks", "ranks.json", "--total", "100", "--model", "tiny")
    assert res.exit_code == ExitCode.INVALID_INPUT and "model 'tiny' has ['clip', 'convnext', 'vit']" in res.stderr


def test_help_labels_the_inferred_stage2_options(cli):
    """The normalised scores and the floor are not in the paper: `--help` says so (rich markup would eat a bare
    ``[inferred]``) and shows the defaults chosen on a development seed."""
    res = cli("allocate", "--help")
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert text.count("[inferred]") >= 2 and "[default: sum]" in text and "[default: 0.5]" in text, text
