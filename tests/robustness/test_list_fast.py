"""`meteor list` imports no model code, and lists exactly what the registries hold (issue #12).

The built-in registrations are read from source (meteor_cli.catalog); these tests keep that
honest: the listing without imports equals the listing after importing every built-in, and it
runs without torch. A built-in registered in a way the catalog cannot read (a loop, computed
names) fails `test_every_builtin_is_declared_statically`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from meteor_cli import catalog as C
from meteor_cli import registry as R

LIST_IN_SUBPROCESS = textwrap.dedent("""
    import json, sys
    from meteor_cli.cli.app import main
    sys.argv = ["meteor", "list", "--json"]
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    print(json.dumps({"torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules,
                      "code": code}), file=sys.stderr)
""")


def test_meteor_list_imports_no_torch_and_matches_the_registries():
    out = subprocess.run([sys.executable, "-c", LIST_IN_SUBPROCESS], capture_output=True, text=True, timeout=120)
    status = json.loads(out.stderr.strip().splitlines()[-1])
    assert status == {"torch": False, "transformers": False, "code": 0}, out.stderr
    lazy = json.loads(out.stdout)
    R.load_builtins_and_plugins()
    imported, _ = C.catalog()
    assert {k: v for k, v in lazy.items() if k != "plugins"} == imported
    expected = {kind: [e.name for e in reg.entries()] for kind, reg in R.REGISTRIES.items()}
    assert {kind: [r["name"] for r in rows] for kind, rows in imported.items()} == expected
    assert len(lazy["policies"]) >= 10 and {"clip", "convnext", "vit"} <= {r["name"] for r in lazy["encoders"]}


def test_every_builtin_is_declared_statically():
    for module in R.BUILTIN_MODULES:
        for sub, path in C._module_files(module):
            C.declared_entries(sub, path)  # raises _Dynamic for a registration only an import can read


@pytest.mark.parametrize("source, dynamic", [
    ('@register_policy("a", stage=2, description="d")\ndef a(): ...\n', False),
    ('@register_benchmark("b")\nclass B:\n    """First line.\n\n    more"""\n', False),
    ('register_policy("c", stage=1, description="d")(lambda b, **k: b)\n', False),
    ('for n in ("x", "y"):\n    register_policy(n, stage=1, description=n)(lambda b: b)\n', True),
    ('NAME = "z"\n@register_preset(NAME)\ndef z(): ...\n', True),
    ('from elsewhere import f\nregister_policy("f", stage=2)(f)\n', True),
    ('def later():\n    register_encoder("e")(object)\n', True),
])
def test_declared_entries_reads_literals_and_refuses_the_rest(tmp_path, source, dynamic):
    path = tmp_path / "m.py"
    path.write_text(source)
    if dynamic:
        with pytest.raises(C._Dynamic):
            C.declared_entries("m", path)
    else:
        (entry,) = C.declared_entries("m", path)
        assert entry["name"] in "abc" and entry["module"] == "m"
        if entry["name"] == "b":
            assert entry["description"] == "First line."


def test_a_dynamic_builtin_module_is_imported_and_listed(tmp_path, monkeypatch):
    pkg = tmp_path / "meteor_dyn_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text(textwrap.dedent("""
        from meteor_cli.registry import register_benchmark
        for _n in ("dyn-a", "dyn-b"):
            register_benchmark(_n, description="made in a loop")(object)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(R, "BUILTIN_MODULES", ["meteor_dyn_pkg.mod"])
    monkeypatch.setattr(R, "_loaded", False)
    try:
        rows, _ = C.catalog(["benchmarks"], "dyn-*")
        assert [r["name"] for r in rows["benchmarks"]] == ["dyn-a", "dyn-b"]
    finally:
        R.BENCHMARKS.unregister("dyn-a")
        R.BENCHMARKS.unregister("dyn-b")
        sys.modules.pop("meteor_dyn_pkg.mod", None)
        sys.modules.pop("meteor_dyn_pkg", None)


@pytest.mark.parametrize("args", [["list"], ["list", "--json"], ["--help"], ["list", "encoders"]])
def test_closed_stdout_exits_0(args):
    """`meteor list | head`: the reader goes away; meteor stops quietly with exit 0."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before meteor writes anything: every write fails with EPIPE
    try:
        out = subprocess.run([sys.executable, "-m", "meteor_cli", *args], stdout=write, stderr=subprocess.PIPE,
                             timeout=120)
    finally:
        os.close(write)
    assert out.returncode == 0, out.stderr.decode()
    assert b"Traceback" not in out.stderr and b"internal error" not in out.stderr
