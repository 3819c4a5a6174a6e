"""A two-layer regression task for the trainer's robustness tests (resume, security, locks).

It implements the task protocol meteor's Trainer drives (collate, to_device, count, loss, save,
load) with real safetensors checkpoints, so resume and checkpoint code runs exactly as for a VLM.
"""

from __future__ import annotations

import torch
from safetensors.torch import load_file, save_file


class ToyTask:
    """Squared error of a small model; ``interrupt_at`` raises KeyboardInterrupt at that loss call
    (a kill between checkpoints)."""

    def __init__(self, interrupt_at: int | None = None):
        self.calls, self.interrupt_at = 0, interrupt_at

    def collate(self, samples):
        return {"x": torch.stack([s[0] for s in samples]), "y": torch.stack([s[1] for s in samples])}

    def to_device(self, batch, device):
        return batch

    def count(self, batch):
        return batch["y"].numel()

    def loss(self, model, batch):
        self.calls += 1
        if self.interrupt_at is not None and self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        return ((model(batch["x"]) - batch["y"]) ** 2).sum()

    def save(self, model, directory):
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "model.safetensors"))
        (directory / "config.json").write_text("{}")

    def load(self, model, directory):
        model.load_state_dict(load_file(str(directory / "model.safetensors")))
