"""An example meteor plugin (``pip install -e plugins/meteor-example-plugin``).

Registers a Stage-2 policy, ``keep-first``: keep the first tokens of every encoder in proportion
to its count — a deliberately naive baseline that shows the policy signature
(``(z (B, N, d), encoder_ids (N,), keep) -> Stage2Result``) and how ``meteor list`` shows plugins.
"""

from __future__ import annotations

import torch

from meteor_cli.pruning.stage2 import Stage2Result, quotas
from meteor_cli.registry import register_policy


@register_policy("keep-first", stage=2, description="keep each encoder's first tokens (example plugin)")
def keep_first(z: torch.Tensor, encoder_ids: torch.Tensor, keep: int) -> Stage2Result:
    B, N, _ = z.shape
    c = int(encoder_ids.max()) + 1
    counts = [int((encoder_ids == i).sum()) for i in range(c)]
    idx = torch.cat([torch.nonzero(encoder_ids == i).flatten()[:q] for i, q in enumerate(quotas(counts, min(keep, N)))])
    idx = torch.sort(idx).values.expand(B, -1)
    per = torch.tensor([quotas(counts, min(keep, N))] * B)
    return Stage2Result(idx, None, per)
