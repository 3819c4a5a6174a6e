"""Every registered benchmark states the on-disk layouts it reads; `meteor list benchmarks` shows them."""

from __future__ import annotations

import json

from meteor_cli.eval.benchmarks import Benchmark
from meteor_cli.registry import BENCHMARKS, load_builtins_and_plugins


def test_every_benchmark_is_a_module_with_layouts():
    load_builtins_and_plugins()
    for name in BENCHMARKS.list():
        entry = BENCHMARKS.entry(name)
        cls = entry.obj
        assert issubclass(cls, Benchmark) and cls.name == name, name
        assert cls.layouts and all(tree.strip() for tree in cls.layouts.values()), name
        assert entry.meta.get("layout"), f"{name} registers no layout summary"
        assert entry.module == f"meteor_cli.eval.benchmarks.{entry.module.rsplit('.', 1)[-1]}"


def test_list_benchmarks_shows_the_layout(cli):
    res = cli("list", "benchmarks", "--json")
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.stdout)["benchmarks"]}
    assert rows["synthvqa"]["layout"] == "synthvqa"


def test_unknown_benchmark_lists_the_known(cli):
    res = cli("eval", "--model", "tiny", "--data", ".", "--benchmark", "nope", "--device", "cpu")
    assert res.exit_code == 2 and "synthvqa" in res.stderr
