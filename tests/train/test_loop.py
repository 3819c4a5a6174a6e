"""The model-agnostic training loop: schedule, accumulation, resume, SIGTERM, NaN, DDP."""

from __future__ import annotations

import json
import math
import os
import signal

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from meteor_cli.errors import PreemptedError
from meteor_cli.train.loop import DistInfo, TrainConfig, Trainer, TrainingDivergedError, decay_groups, lr_at


class ToyTask:
    """Regression on fixed random data; the loss is a sum over target elements."""

    def __init__(self, nan_at: int | None = None, sigterm_at: int | None = None):
        self.calls = 0
        self.nan_at, self.sigterm_at = nan_at, sigterm_at

    def collate(self, samples):
        return {"x": torch.stack([s[0] for s in samples]), "y": torch.stack([s[1] for s in samples])}

    def to_device(self, batch, device):
        return {k: v.to(device) for k, v in batch.items()}

    def count(self, batch):
        return batch["y"].numel()

    def loss(self, model, batch):
        self.calls += 1
        if self.sigterm_at is not None and self.calls == self.sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)
        out = ((model(batch["x"]) - batch["y"]) ** 2).sum()
        return out * float("nan") if self.nan_at is not None and self.calls >= self.nan_at else out

    def save(self, model, directory):
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "model.safetensors"))
        (directory / "config.json").write_text("{}")

    def load(self, model, directory):
        model.load_state_dict(load_file(str(directory / "model.safetensors")))


def make_data(n=48):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    return [(x[i], torch.tanh(x[i, :2] * 2)) for i in range(n)]


def make_model(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Dropout(dropout), nn.Linear(16, 2))


def train(tmp, *, seed=0, dropout=0.0, task=None, resume=False, dist_info=None, **cfg):
    cfg = TrainConfig(**{"lr": 1e-2, "warmup": 0.1, "batch_size": 4, "max_steps": 6, **cfg})
    model = make_model(seed, dropout)
    trainer = Trainer(model, make_data(), task or ToyTask(), cfg, tmp, dist_info=dist_info)
    return trainer, trainer.fit(resume=resume)


def weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(lr=1.0, warmup=0.1, min_lr_ratio=0.1)
    lrs = [lr_at(s, 100, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # 10 warm-up steps
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))  # monotone decay afterwards
    assert lrs[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 89 / 90)))


def test_loss_decreases_and_log_is_written(tmp_path):
    trainer, res = train(tmp_path, max_steps=30, lr=5e-2)
    assert res.steps == 30 and res.samples == 120
    assert res.log[-1]["loss"] < 0.5 * res.log[0]["loss"]
    lines = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 31))
    assert {"loss", "lr", "samples_per_s", "grad_norm", "epoch"} <= set(lines[0])
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()


def test_weight_decay_shrinks_matrices_only():
    model = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 4), nn.LayerNorm(4))
    params = list(model.parameters())
    assert decay_groups(model, params, 0.0) == [{"params": params, "weight_decay": 0.0}]
    decay, rest = decay_groups(model, params, 0.1)
    assert decay["weight_decay"] == 0.1 and [p is model[1].weight for p in decay["params"]] == [True]
    assert {id(p) for p in rest["params"]} == {id(model[0].weight), id(model[1].bias), id(model[2].weight),
                                                id(model[2].bias)}
    # With no gradient signal, one AdamW step shrinks exactly the decayed matrix, by lr * wd.
    opt = torch.optim.AdamW(decay_groups(model, params, 0.5), lr=0.1)
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    for p, b in zip(params, before):
        expected = b * (1 - 0.1 * 0.5) if p is model[1].weight else b
        assert torch.allclose(p.detach(), expected)


def test_grad_accumulation_equals_a_bigger_batch(tmp_path):
    a, _ = train(tmp_path / "a", batch_size=8, grad_accum=1)
    b, _ = train(tmp_path / "b", batch_size=4, grad_accum=2)
    c, _ = train(tmp_path / "c", batch_size=2, grad_accum=4)
    assert torch.allclose(weights(a.model), weights(b.model), atol=1e-6)
    assert torch.allclose(weights(a.model), weights(c.model), atol=1e-6)


def test_sigterm_saves_then_resume_matches_an_uninterrupted_run(tmp_path):
    full, _ = train(tmp_path / "full", dropout=0.2, save_every=2)
    with pytest.raises(PreemptedError) as info:
        train(tmp_path / "cut", dropout=0.2, save_every=2, task=ToyTask(sigterm_at=3))
    assert info.value.exit_code == 75
    ckpts = sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir())
    assert ckpts == ["step-0000002", "step-0000003"]
    # Resume in a "new process": a differently initialised model, global RNG disturbed.
    torch.manual_seed(1234)
    resumed, res = train(tmp_path / "cut", seed=99, dropout=0.2, save_every=2, resume=True)
    assert res.resumed_from == 3 and res.steps == 6
    assert torch.equal(weights(full.model), weights(resumed.model))


def test_resume_refuses_a_different_global_batch(tmp_path):
    train(tmp_path, max_steps=2, save_every=1)
    from meteor_cli.errors import UsageError

    with pytest.raises(UsageError, match="global batch of 4"):
        train(tmp_path, batch_size=8, resume=True)


def test_nan_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(TrainingDivergedError, match="at step 3") as info:
        train(tmp_path, save_every=1, task=ToyTask(nan_at=3))
    assert info.value.exit_code == 7
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-0000001", "step-0000002"]


def _ddp_worker(rank, world, init_file, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        trainer, _ = train(out, dist_info=DistInfo(rank, world, rank), batch_size=4)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_ddp_equals_one_process_with_the_same_global_batch(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "ddp")), nprocs=2, join=True)
    single, _ = train(tmp_path / "single", batch_size=8)
    ddp = load_file(str(tmp_path / "ddp" / "model.safetensors"))
    for name, value in single.model.state_dict().items():
        assert torch.allclose(value, ddp[name], atol=1e-6), name
