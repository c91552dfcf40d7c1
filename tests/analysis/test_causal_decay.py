"""Facts past the first block for gated decays (signs.py: ``at_most_one``, ``_causal_decay``).

Once block 0 is the identity, block 1 reads a changed value and its guards must be proven
again. Two of them, judged by running the models:

- the gated delta rule's pairwise decay (Qwen3-Next): ``exp`` of
  ``c.unsqueeze(-1) - c.unsqueeze(-2)`` masked above the diagonal with ``-inf``, ``c`` a
  cumulative sum of values ``<= 0``: the kept entries are ``<= 0``, so ``exp`` is in [0, 1].
  With the difference the other way round, or a mask that keeps an entry above the diagonal,
  ``exp`` may overflow, and the later block must be left alone;
- RecurrentGemma's ``sqrt(1 - a²)`` with ``a² = exp(2 · (-8 · sigmoid · softplus))``: ``a² <= 1``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from advnets import Two
from claims import assert_each_zeroed_needed, check_pass, fixed_inputs, params_of, snapshot
from zeta_fx import zero_init_pass

STEPS = 4


class Decay(nn.Module):
    def __init__(self, swap: bool = False, diagonal: int = 1) -> None:
        super().__init__()
        self.swap, self.diagonal = swap, diagonal
        self.a, self.v, self.out = nn.Linear(8, 4), nn.Linear(8, 8), nn.Linear(8, 8)
        self.A = nn.Parameter(torch.randn(4))

    def forward(self, x):
        g = (-self.A.exp() * F.softplus(self.a(x))).transpose(1, 2)  # <= 0
        c = g.cumsum(-1)
        diff = c.unsqueeze(-2) - c.unsqueeze(-1) if self.swap else \
            c.unsqueeze(-1) - c.unsqueeze(-2)
        mask = torch.ones(STEPS, STEPS, dtype=torch.bool).triu(self.diagonal)
        w = diff.masked_fill(mask, float("-inf")).exp()
        return x + self.out(w.mean(1) @ self.v(x))


class Gamma(nn.Module):
    """RecurrentGemma's input normalisation, ``x * sqrt(1 - a²)``."""

    def __init__(self) -> None:
        super().__init__()
        self.gate, self.out = nn.Linear(8, 8), nn.Linear(8, 8)
        self.p = nn.Parameter(torch.randn(8))

    def forward(self, x):
        log_a = -8.0 * torch.sigmoid(self.gate(x)) * F.softplus(self.p)
        return x + self.out(x * torch.sqrt(1 - torch.exp(2 * log_a)))


def _x(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, STEPS, 8, generator=torch.Generator().manual_seed(seed))


def test_both_blocks_are_proven_past_the_first():
    for make in (Decay, Gamma):
        torch.manual_seed(0)
        model = Two(make)
        before = snapshot(model)
        owners = ["b0.out", "b1.out"]
        report = check_pass(model, params=params_of(*owners), inputs=(_x(),),
                            example_inputs=(_x(),))
        with torch.no_grad():
            for seed in range(3):
                x = _x(seed) * 10
                assert torch.equal(model(x), x)
        assert_each_zeroed_needed(model, before, report, [(model, lambda x: x)],
                                  fixed_inputs((_x(1),)))


def test_a_decay_that_may_grow_leaves_the_later_block_alone():
    for kw in ({"swap": True}, {"diagonal": 2}):
        torch.manual_seed(0)
        model = Two(lambda: Decay(**kw))
        before = snapshot(model)
        report = zero_init_pass(model, example_inputs=(_x(),))
        assert "b1.out" not in report.modules, (kw, report.table())
        for name, value in model.state_dict().items():
            if not name.startswith("b0.out"):
                assert torch.equal(value, before[name]), name
        reasons = [s.reason for s in report.skipped if s.module == "b1.out"]
        assert reasons and any("exp" in r or "non-finite" in r for r in reasons), \
            (kw, report.table())
