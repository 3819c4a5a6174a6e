"""Stage 2 runs the registered policy its method names (plugins included); unknown names are errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from meteor_cli import registry as R
from meteor_cli.errors import UsageError
from meteor_cli.pruning import stage2 as S2

CALLS: list[dict] = []


def keep_first(z: torch.Tensor, encoder_ids: torch.Tensor, keep: int, *, seed: int = 0) -> S2.Stage2Result:
    """Test policy: the first ``keep`` tokens of the encoder-grouped sequence, nothing else."""
    CALLS.append({"keep": keep, "seed": seed})
    idx = torch.arange(keep, device=z.device).expand(z.shape[0], keep)
    return S2.Stage2Result(idx, None, S2._counts(idx, encoder_ids, int(encoder_ids.max()) + 1))


@pytest.fixture
def first_k():
    R.load_builtins_and_plugins()
    R.register_policy("test-first-k", stage=2, description="keeps the first K tokens (test)")(keep_first)
    CALLS.clear()
    yield "test-first-k"
    R.POLICIES.unregister("test-first-k", stage=2)


@pytest.fixture(scope="module")
def vlm():
    from meteor_cli.model.checkpoint import load_model

    return load_model("tiny")


def test_registered_policy_is_the_one_applied(first_k):
    z = torch.randn(2, 30, 8)
    ids = torch.tensor([0] * 10 + [1] * 12 + [2] * 8)
    hook = S2.Stage2(7, first_k, seed=3, score="mean")
    assert hook.policy is keep_first and hook.options == {"seed": 3}  # only the options its signature takes
    idx = hook(z, ids, torch.zeros(2, 30, dtype=torch.long))
    assert idx.tolist() == [list(range(7))] * 2 and CALLS == [{"keep": 7, "seed": 3}]
    assert hook.last.per_encoder.tolist() == [[7, 0, 0]] * 2
    # the same hook from an allocation body (what eval / infer / train install)
    built = S2.build_stage2({"stage2": {"keep": 5, "method": first_k}}, seed=1)
    assert built.policy is keep_first and built.keep == 5 and built.options == {"seed": 1}


def test_builtin_names_still_run_their_policies():
    z = torch.randn(1, 12, 16)
    ids = torch.tensor([0] * 6 + [1] * 6)
    for name, fn in (("meteor", S2.collaborative_prune), ("separate", S2.separate_prune), ("random", S2.random_prune)):
        hook = S2.Stage2(5, name, seed=2)
        assert hook.policy is fn
        assert torch.equal(hook(z, ids, None), S2.Stage2(5, name, seed=2).policy(z, ids, 5, **hook.options).indices)
    assert S2.Stage2(5, "random", seed=2).options == {"seed": 2}
    assert S2.Stage2(5, "meteor", score="mean").options == {"score": "mean", "floor": 0.0, "max_bytes": 256 << 20}


def test_unknown_name_is_an_error_naming_the_registered_ones(first_k):
    with pytest.raises(UsageError, match="unknown Stage-2 pruning policy 'keep-frist'") as info:
        S2.Stage2(10, "keep-frist")
    for name in ("meteor", "random", "separate", first_k):
        assert name in info.value.hint
    with pytest.raises(UsageError, match="fusion architecture"):
        S2.Stage2(10, "pre-projection")
    with pytest.raises(UsageError, match="unknown Stage-2"):  # found before any model is loaded
        from meteor_cli.cli.common import stage1_method_for

        stage1_method_for({"stage1": {"encoders": {}}, "stage2": {"keep": 5, "method": "nope"}}, None)


def test_plugin_policy_runs_inside_the_model(first_k, vlm):
    """Through install_pruning (eval / infer / train): the allocation's stage2.method decides what runs."""
    from meteor_cli.eval.runner import install_pruning

    imgs = torch.rand(2, 3, 128, 128)
    alloc = {"stage1": {"encoders": {"vit": {"keep": [16] * 3}, "clip": {"keep": [64] * 3},
                                     "convnext": {"keep": [16] * 3}}},
             "stage2": {"keep": 20, "method": first_k}}
    with torch.no_grad():
        ref = vlm.encode_images(imgs)
        install_pruning(vlm, alloc, None, seed=4)
        try:
            out = vlm.encode_images(imgs)
        finally:
            vlm.stage1 = vlm.stage2 = None
    assert CALLS == [{"keep": 20, "seed": 4}]
    assert torch.equal(out.z, ref.z[:, :20])  # exactly the first 20 tokens: all 16 of vit, then 4 of clip
    assert out.per_encoder == {"vit": [16, 16], "clip": [4, 4], "convnext": [0, 0]}


def test_the_shipped_example_plugin_runs_as_stage2(tmp_path, monkeypatch):
    """plugins/meteor-example-plugin's keep-first, discovered through its entry point, is what Stage2 runs."""
    root = Path(__file__).resolve().parents[2] / "plugins" / "meteor-example-plugin"
    monkeypatch.syspath_prepend(str(root))
    info = tmp_path / "meteor_example_plugin-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: meteor-example-plugin\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[meteor.plugins]\nexample = meteor_example_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    R.load_builtins_and_plugins()
    try:
        assert "example" in R.load_plugins()
        hook = S2.Stage2(5, "keep-first", seed=9)
        assert hook.options == {}  # keep_first takes no options
        idx = hook(torch.randn(2, 10, 4), torch.tensor([0] * 6 + [1] * 4), None)
        assert idx.tolist() == [[0, 1, 2, 6, 7]] * 2 and hook.last.per_encoder.tolist() == [[3, 2]] * 2
    finally:
        R.POLICIES.unregister("keep-first")
        sys.modules.pop("meteor_example_plugin", None)
