"""Registries: registration, lookup, filters, duplicate warnings, entry-point plugins."""

from __future__ import annotations

import sys
import textwrap
import warnings

import pytest

from meteor_cli import registry as R
from meteor_cli.errors import UsageError


@pytest.fixture
def reg():
    return R.Registry("widget")


def test_register_get_and_list(reg):
    @reg.register("clip-vit", family="vit")
    def clip():
        """CLIP ViT adapter.

        More text."""

    @reg.register()
    def convnext():
        pass

    assert reg.get("clip-vit") is clip and "convnext" in reg and len(reg) == 2
    assert reg.list() == ["clip-vit", "convnext"] and reg.list("clip*") == ["clip-vit"]
    assert reg.list(exclude="clip*") == ["convnext"]
    entry = reg.entry("clip-vit")
    assert entry.description == "CLIP ViT adapter." and entry.meta == {"family": "vit"}
    assert entry.module == __name__


def test_unknown_name_suggests(reg):
    reg.add("fastv", object())
    with pytest.raises(UsageError) as info:
        reg.get("fastvv")
    assert "unknown widget 'fastvv'" in info.value.message and "'fastv'" in info.value.hint


def test_duplicate_registration_warns_and_later_wins(reg):
    reg.add("x", 1)
    with pytest.warns(R.DuplicateRegistrationWarning, match="widget 'x' registered twice"):
        reg.add("x", 2)
    assert reg.get("x") == 2


def test_policy_stage_is_recorded_and_filterable(monkeypatch):
    monkeypatch.setattr(R, "POLICIES", R.PolicyRegistry())

    @R.register_policy("p1", stage=1)
    def p1(): ...

    @R.register_policy("p3", stage=3)
    def p3(): ...

    @R.register_policy("p3", stage=2)
    def p3_fusion(): ...

    assert R.list_policies(stage=3) == ["p3"] and R.list_policies() == ["p1", "p3"]
    assert R.POLICIES.get("p3", stage=3) is p3 and R.POLICIES.get("p3", stage=2) is p3_fusion
    assert R.POLICIES.get("p1") is p1  # unambiguous without a stage
    with pytest.raises(UsageError, match="several stages"):
        R.POLICIES.get("p3")
    with pytest.raises(UsageError, match="unknown Stage-1 pruning policy 'p3'"):
        R.POLICIES.get("p3", stage=1)
    with pytest.warns(R.DuplicateRegistrationWarning):
        R.register_policy("p3", stage=3)(p3)
    with pytest.raises(ValueError):
        R.register_policy("bad", stage=4)


def _install_fake_distribution(root, module_source: str, entry: str):
    """A minimal installed distribution on sys.path: a module plus a dist-info with entry points."""
    (root / "meteor_test_plugin.py").write_text(textwrap.dedent(module_source))
    info = root / "meteor_test_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: meteor-test-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[meteor.plugins]\ntestplug = {entry}\n")


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("meteor_test_plugin", None)


def test_plugin_discovered_through_entry_point(plugin_path):
    _install_fake_distribution(plugin_path, """
        from meteor_cli.registry import BENCHMARKS
        def register():
            BENCHMARKS.add("plugin-bench", object(), description="from a plugin")
    """, "meteor_test_plugin:register")
    try:
        assert R.load_plugins() == ["testplug"]
        assert R.BENCHMARKS.entry("plugin-bench").description == "from a plugin"
    finally:
        R.BENCHMARKS.unregister("plugin-bench")


def test_plugin_module_registers_on_import(plugin_path):
    _install_fake_distribution(plugin_path, """
        from meteor_cli.registry import register_encoder
        @register_encoder("plugin-enc", family="test")
        class PluginEncoder:
            '''An encoder from a plugin.'''
    """, "meteor_test_plugin")
    try:
        R.load_plugins()
        assert R.ENCODERS.entry("plugin-enc").description == "An encoder from a plugin."
    finally:
        R.ENCODERS.unregister("plugin-enc")


def test_broken_plugin_warns_and_does_not_break(plugin_path):
    _install_fake_distribution(plugin_path, "raise RuntimeError('needs CANN')\n", "meteor_test_plugin")
    with pytest.warns(UserWarning, match="meteor plugin 'testplug'.*needs CANN"):
        assert R.load_plugins() == []


def test_meteor_list_shows_plugin_entries(plugin_path, cli, monkeypatch):
    _install_fake_distribution(plugin_path, """
        from meteor_cli.registry import register_policy
        @register_policy("plugin-policy", stage=2, description="keeps the first tokens")
        def keep_first(*a, **k): ...
    """, "meteor_test_plugin")
    monkeypatch.setattr(R, "_loaded", False)
    try:
        import json

        res = cli("list", "policies", "--json")
        data = json.loads(res.stdout)
        assert data["plugins"] == ["testplug"]
        row = next(r for r in data["policies"] if r["name"] == "plugin-policy")
        assert row["stage"] == 2 and row["description"] == "keeps the first tokens"
    finally:
        R.POLICIES.unregister("plugin-policy")


def test_registration_warnings_are_warnings_not_errors(reg):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reg.add("a", 1)  # first registration: silent


def test_the_shipped_example_plugin(tmp_path, monkeypatch):
    """plugins/meteor-example-plugin, discovered through its entry point, registers a working policy."""
    import torch
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "plugins" / "meteor-example-plugin"
    monkeypatch.syspath_prepend(str(root))
    info = tmp_path / "meteor_example_plugin-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: meteor-example-plugin\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[meteor.plugins]\nexample = meteor_example_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert "example" in R.load_plugins()
        policy = R.POLICIES.get("keep-first", stage=2)
        res = policy(torch.randn(2, 10, 4), torch.tensor([0] * 6 + [1] * 4), 5)
        assert res.indices.tolist() == [[0, 1, 2, 6, 7]] * 2 and res.per_encoder.tolist() == [[3, 2]] * 2
    finally:
        R.POLICIES.unregister("keep-first")
        sys.modules.pop("meteor_example_plugin", None)
