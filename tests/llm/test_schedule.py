"""Layer-averaged token counts (Table 3 invariants) and scale calibration on a real tiny Llama."""

from __future__ import annotations

import pytest
import torch

from meteor_cli.pruning.llm_policies import MeteorPolicy
from meteor_cli.pruning.llm_pruner import LLMPruner
from meteor_cli.pruning.schedule import calibrate_scale, layer_averaged_tokens, tokens_per_layer

from .conftest import make_inputs, tiny_llama


@pytest.mark.parametrize("n, layers, kept, avg", [
    (576, [1], [288], 297.0),
    (576, [4, 12, 20], [390, 172, 78], 241.75),
    (576, [4, 12, 20], [525, 252, 122], 312.0),
    (576, [4, 12, 20], [396, 170, 76], 242.0),
    (288, [4, 12, 20], [226, 80, 36], 126.0),
    (576, [4, 12, 20], [226, 80, 36], 162.0),
])
def test_table3_layer_averages(n, layers, kept, avg):
    assert layer_averaged_tokens(n, layers, kept, 32) == avg


def test_tokens_per_layer():
    assert tokens_per_layer(10, [1, 3], [6, 2], 5) == [10, 6, 6, 2, 2]


def test_calibration_hits_its_target_within_2_percent():
    """Fit c on a real (tiny, random) Llama with the real pruning: the achieved mean is within 2 %."""
    model = tiny_llama(layers=8)
    prompts = [(4, 6), (6, 9), (3, 5), (5, 12)]
    embeds, mask, starts, lens = make_inputs(model, prompts, n_vis=48)
    policy = MeteorPolicy(layers=[1, 3, 5], heads=3, lam=50.0)
    pruner = LLMPruner(model, policy)

    def measure(scale):
        policy.scale = scale
        with torch.no_grad(), pruner.session(starts, lens, attention_mask=mask) as sess:
            model(inputs_embeds=embeds, attention_mask=mask)
        per_sample = [layer_averaged_tokens(48, policy.layers, [len(sess.kept[p][b]) for p in policy.layers], 8)
                      for b in range(len(prompts))]
        return sum(per_sample) / len(per_sample)

    target = 30.0
    cal = calibrate_scale(measure, target, tol=0.02)
    assert cal.relative_error <= 0.02, cal
    assert measure(cal.scale) == pytest.approx(cal.achieved)
    assert measure(cal.scale * 0.5) < cal.achieved < measure(cal.scale * 2)  # the scale really moves the budget
