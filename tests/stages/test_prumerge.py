"""PruMerge+ as a Stage-1 policy: exact budgets, sorted kept positions, IQR outliers, merging by
hand, identity at full budgets, batch == singles through the tiny model, and the CLI."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from meteor_cli import artifacts as A
from meteor_cli.errors import ExitCode
from meteor_cli.model.checkpoint import load_model
from meteor_cli.model.encoders.base import TokenState
from meteor_cli.pruning import stage1 as S1
from meteor_cli.pruning.stage1 import PruMergePlus, prumerge_merge, prumerge_plus_select
from meteor_cli.pruning.stage2 import Stage2

BUDGETS = {"vit": [12, 10, 8], "clip": [40, 30, 20], "convnext": [14, 12, 6]}  # tiny: 16, 64, 16 tokens
ALLOC = {"strategy": "rank", "stage1": {"totals": [66, 52, 34], "encoders": {
    "vit": {"points": [0, 1, 2], "keep": [12, 10, 8]}, "clip": {"points": [0, 1, 2], "keep": [40, 30, 20]},
    "convnext": {"points": [3, 3, 3], "keep": [14, 12, 6]}}}, "stage2": {"keep": 40}}  # Stage 2 keeps all 34


@pytest.fixture(scope="module")
def vlm():
    return load_model("tiny")


class Recorder:
    """Wraps a Stage-1 hook and records what it returned at every (encoder, point)."""

    def __init__(self, hook):
        self.hook, self.calls = hook, []

    def __call__(self, name, j, state, adapter):
        out = self.hook(name, j, state, adapter)
        self.calls.append((name, j, state.x.shape[1], state.pos.clone(), out))
        return out


def _state(x: torch.Tensor) -> TokenState:
    B, n, _ = x.shape
    return TokenState(x=x, pos=torch.arange(n).expand(B, n), prefix=None, grid=(1, n))


def _adapter(attn: torch.Tensor | None):
    return SimpleNamespace(prune_points=[0], cls_attention=lambda state, block: attn)


@pytest.mark.parametrize("merge", ["prumerge", "mean"])
def test_budgets_exact_and_kept_positions_sorted(vlm, merge):
    rec = Recorder(PruMergePlus(BUDGETS, merge=merge))
    vlm.stage1 = rec
    try:
        with torch.no_grad():
            vis = vlm.encode_images(torch.rand(2, 3, 128, 128))
    finally:
        vlm.stage1 = None
    assert [(n, j) for n, j, *_ in rec.calls] == [(n, j) for n in BUDGETS for j in range(3)]
    for name, j, n_in, pos_in, (idx, x) in rec.calls:
        k = BUDGETS[name][j]
        assert idx.shape == (2, k) and x.shape[:2] == (2, k)  # exactly the budget, every sample
        assert torch.equal(idx, torch.sort(idx, dim=1).values) and all(len(set(r.tolist())) == k for r in idx)
        assert int(idx.max()) < n_in
    assert vis.per_encoder == {n: [b[-1]] * 2 for n, b in BUDGETS.items()}
    # original grid positions survive: the final positions are the last point's input positions at idx
    for (name, _, _, pos_in, (idx, _)), p in zip([c for c in rec.calls if c[1] == 2], vis.pos.split([8, 20, 6], 1)):
        assert torch.equal(p, torch.gather(pos_in, 1, idx)), name
        assert torch.equal(p, torch.sort(p, dim=1).values)


def test_the_model_uses_the_merged_values(vlm):
    """Same selection (pruning at the last point only), values dropped vs merged: the outputs differ."""
    imgs = torch.rand(2, 3, 128, 128)
    merged = PruMergePlus({"vit": [16, 16, 8], "clip": [64, 64, 20], "convnext": [16, 16, 6]}, merge="mean")
    vlm.stage1 = merged
    try:
        with torch.no_grad():
            z = vlm.encode_images(imgs)
            vlm.stage1 = lambda *a: None if (out := merged(*a)) is None else out[0]  # indices only
            z_sel = vlm.encode_images(imgs)
    finally:
        vlm.stage1 = None
    assert torch.equal(z.pos, z_sel.pos) and not torch.allclose(z.z, z_sel.z)


def test_train_with_prumerge(cli, tmp_path):
    from meteor_cli.data.synthvqa import generate

    generate(tmp_path / "sv", n_train=4, n_eval=0, seed=0)
    A.write_artifact(tmp_path / "plain.json", A.make_artifact("meteor.allocation", ALLOC))
    res = cli("train", "--model", "tiny", "--data", "sv/train.json", "--allocation", "plain.json", "--stage1-method",
              "prumerge+", "--batch-size", "2", "--max-steps", "1", "--lr", "1e-3", "--out", "m", "--device", "cpu",
              "-q", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["steps"] == 1


def test_a_clear_attention_outlier_is_kept_first():
    attn = torch.full((1, 16), 0.05)
    attn[0, 9] = 0.9  # the only IQR outlier
    assert prumerge_plus_select(attn, 1).tolist() == [[9]]
    # then the spatial samples arange(0, 15, ⌊⌊16/1⌋/3⌋ = 5) = 0, 5, 10, then the rest by attention
    assert prumerge_plus_select(attn, 4).tolist() == [[0, 5, 9, 10]]
    attn[0, 3] = 0.2  # a second outlier: kept before any sample, and the sampling step becomes ⌊⌊16/2⌋/3⌋ = 2
    assert prumerge_plus_select(attn, 2).tolist() == [[3, 9]]
    assert prumerge_plus_select(attn, 5).tolist() == [[0, 2, 3, 4, 9]]
    # 2 outliers + the 8 samples 0, 2, …, 14, then the rest by attention (all equal: the lowest index)
    assert prumerge_plus_select(attn, 11).tolist() == [[0, 1, 2, 3, 4, 6, 8, 9, 10, 12, 14]]
    # through the hook, with CLS attention from the adapter
    x = torch.randn(1, 16, 8)
    idx, _ = PruMergePlus({"e": [2]})("e", 0, _state(x), _adapter(attn))
    assert 9 in idx[0].tolist()


def test_merge_by_hand():
    x = torch.tensor([[[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]])
    a = torch.tensor([[0.4, 0.1, 0.3, 0.2]])
    keep = torch.tensor([[0, 2]])
    # mean: token 1 joins token 0, token 3 joins token 2; attention-weighted averages
    mean = prumerge_merge(x, a, keep, mode="mean")
    want = torch.tensor([[(0.4 * 1 + 0.1 * 0.9) / 0.5, (0.1 * 0.1) / 0.5],
                         [(0.2 * 0.1) / 0.5, (0.3 * 1 + 0.2 * 0.9) / 0.5]])
    assert torch.allclose(mean[0], want, atol=1e-6)  # [[0.98, 0.02], [0.04, 0.96]]
    # the reference rule: x_i + Σ a_j x_j over the nearest `neighbours` others (kept or pruned), raw weights
    one = prumerge_merge(x, a, keep, mode="prumerge", neighbours=1)
    assert torch.allclose(one[0], torch.tensor([[1.09, 0.01], [0.02, 1.18]]), atol=1e-6)
    two = prumerge_merge(x, a, keep, mode="prumerge", neighbours=2)  # x0's next nearest is token 3, x2's token 1
    assert torch.allclose(two[0], torch.tensor([[1.11, 0.19], [0.11, 1.19]]), atol=1e-6)


def test_hook_returns_merged_values_and_surrogate_without_cls():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 8)
    hook = PruMergePlus({"e": [5]}, merge="mean")
    idx, new = hook("e", 0, _state(x), _adapter(None))  # no CLS: mean-token dissimilarity as attention
    a = S1.attention_surrogate(x)
    assert torch.allclose(a.sum(1), torch.ones(2)) and bool((a >= 0).all())
    assert torch.equal(idx, prumerge_plus_select(a, 5))
    assert torch.allclose(new, prumerge_merge(x, a, idx, mode="mean"))
    assert not torch.allclose(new, torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, 8)))  # values did change
    assert hook("e", 0, _state(x[:, :5]), _adapter(None)) is None  # budget ≥ tokens: nothing to do


def test_budgets_at_least_the_tokens_change_nothing(vlm):
    imgs = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        ref = vlm.encode_images(imgs).z
        vlm.stage1 = PruMergePlus({"vit": [16, 20, 16], "clip": [64, 64, 99], "convnext": [16, 16, 16]})
        try:
            out = vlm.encode_images(imgs).z
        finally:
            vlm.stage1 = None
    assert torch.equal(out, ref)


@pytest.mark.parametrize("merge", ["prumerge", "mean"])
def test_batch_of_two_equals_two_singles(vlm, merge):
    imgs = torch.rand(2, 3, 128, 128)
    prompts = ["<image>\nwhat shape ?"] * 2
    vlm.stage1, vlm.stage2 = PruMergePlus(BUDGETS, merge=merge), Stage2(24)
    try:
        with torch.no_grad():
            both = vlm.encode_images(imgs)
            singles = [vlm.encode_images(imgs[b:b + 1]) for b in range(2)]
            texts = vlm.generate(imgs, prompts, max_new_tokens=3)
            single_texts = [vlm.generate(imgs[b:b + 1], prompts[:1], max_new_tokens=3)[0] for b in range(2)]
    finally:
        vlm.stage1 = vlm.stage2 = None
    assert both.z.shape == (2, 24, 192)
    for b in range(2):
        assert torch.allclose(both.z[b], singles[b].z[0], atol=1e-5)
        assert torch.equal(both.pos[b], singles[b].pos[0])
    assert texts == single_texts


def test_build_stage1_picks_the_registered_policy(vlm):
    assert isinstance(S1.build_stage1(ALLOC, vlm.encoders, "prumerge+"), PruMergePlus)
    assert isinstance(S1.build_stage1({**ALLOC, "stage1": {**ALLOC["stage1"], "method": "prumerge+"}}, vlm.encoders),
                      PruMergePlus)
    plain = S1.build_stage1(ALLOC, vlm.encoders)
    assert type(plain) is S1.Stage1 and plain.criterion == "meteor"
    from meteor_cli.errors import UsageError

    with pytest.raises(UsageError, match="unknown Stage-1 pruning policy 'prumerge'") as info:
        S1.build_stage1(ALLOC, vlm.encoders, "prumerge")
    assert "prumerge+" in str(info.value.hint)


def test_selectable_from_the_cli(cli, tmp_path, monkeypatch):
    from meteor_cli.data.synthvqa import generate

    res = cli("list", "policies", "--json")
    assert any(r["name"] == "prumerge+" and r["stage"] == 1 for r in json.loads(res.stdout)["policies"])
    ranks = {"method": "nuclear", "grid": 8, "encoders": {
        n: {"points": p, "rank": [0.5] * 3, "std": [0.0] * 3, "n_images": 1, "tokens": t}
        for n, p, t in (("vit", [0, 1, 2], 16), ("clip", [0, 1, 2], 64), ("convnext", [3, 3, 3], 16))}}
    A.write_artifact(tmp_path / "ranks.json", A.make_artifact("meteor.ranks", ranks))
    res = cli("allocate", "--ranks", "ranks.json", "--total", "30", "--fusion-keep", "20", "--stage1-method", "prumerge+")
    assert res.exit_code == 0, res.output
    assert A.read_artifact(tmp_path / "allocation.json")["stage1"]["method"] == "prumerge+"
    res = cli("allocate", "--ranks", "ranks.json", "--total", "30", "--stage1-method", "prumerg", "--out", "x.json")
    assert res.exit_code == ExitCode.USAGE and "did you mean 'prumerge+'" in res.stderr
    A.write_artifact(tmp_path / "plain.json", A.make_artifact("meteor.allocation", ALLOC))

    calls = []
    real = S1.prumerge_merge
    monkeypatch.setattr(S1, "prumerge_merge", lambda *a, **k: calls.append(1) or real(*a, **k))
    generate(tmp_path / "sv", n_train=0, n_eval=2, seed=0)
    infer = ["infer", "--model", "tiny", "--image", "sv/images/eval/000000.png", "--prompt", "what shape ?",
             "--max-new-tokens", "2", "--device", "cpu", "-q"]
    res = cli(*infer, "--allocation", "plain.json", "--stage1-method", "prumerge+")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["metadata"]["per_encoder"] == {"vit": 8, "clip": 20, "convnext": 6}
    assert len(calls) == 9  # 3 encoders × 3 points
    res = cli(*infer, "--allocation", "allocation.json")  # the allocation's own stage1.method
    assert res.exit_code == 0, res.output
    assert len(calls) > 9
    before = len(calls)
    res = cli(*infer, "--allocation", "plain.json")  # an allocation without a method: meteor, no merging
    assert res.exit_code == 0 and len(calls) == before
    res = cli("eval", "--model", "tiny", "--data", "sv", "--allocation", "plain.json", "--stage1-method", "prumerge+",
              "--max-new-tokens", "2", "--device", "cpu", "-q", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["settings"]["stage1_method"] == "prumerge+" and len(calls) == before + 2 * 9  # 2 questions
    for cmd in (infer, ["eval", "--model", "tiny", "--data", "sv", "--device", "cpu"],
                ["train", "--model", "tiny", "--data", "sv/train.json", "--device", "cpu"]):
        res = cli(*cmd, "--allocation", "plain.json", "--stage1-method", "prumerg")
        assert res.exit_code == ExitCode.USAGE and "did you mean 'prumerge+'" in res.stderr, cmd
        res = cli(*cmd, "--stage1-method", "prumerge+")
        assert res.exit_code == ExitCode.USAGE and "--stage1-method needs --allocation" in res.stderr, cmd
