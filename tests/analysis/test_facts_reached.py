"""Divisions the zeroing reaches: a value it changed may now be zero where it was not.

Before the pass the model's own values are taken to be finite; after it, a division, an
``rsqrt`` or an eps-free norm whose input the zeroing changed is finite only if its divisor
is provably positive (``v + eps`` with ``v >= 0``, ``clamp(min=eps)``, ``exp``, ``sigmoid``,
``softmax`` and their sums). Each fact is checked against the zeroed model on inputs that
make the divisor zero.
"""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

from zeta_fx import zero_init_pass
from zeta_fx.analysis import GraphView
from zeta_fx.analysis.facts import Fact


class Block(nn.Module):
    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x)))


NORMALISERS = {
    # name: (x -> normalised x, provably finite after a changed input?)
    "l2": (lambda x: x / x.norm(dim=-1, keepdim=True), False),
    "rms0": (lambda x: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True)), False),
    "rms_eps": (lambda x: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6), True),
    "sqrt_eps": (lambda x: x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6), True),
    "clamped": (lambda x: x / x.norm(dim=-1, keepdim=True).clamp(min=1e-6), True),
    "softmax_sum": (lambda x: x / torch.softmax(x, -1).topk(2, -1)[0].sum(-1, keepdim=True),
                    True),
    "relu_sum": (lambda x: x / torch.relu(x).sum(-1, keepdim=True), False),
    "min_mixed": (lambda x: x / torch.minimum(x.abs() + 1, x), False),
}


class Net(nn.Module):
    """block 0, then the normaliser on a ReLU of the stream, then block 1 (claimed or not)."""

    def __init__(self, normalise) -> None:
        super().__init__()
        self.b0, self.b1 = Block(), Block()
        self.gate = nn.Linear(4, 4)
        self.normalise = normalise

    def forward(self, x):
        h = self.b0(x)
        h = h + self.normalise(torch.relu(self.gate(h)))
        return self.b1(h)


@pytest.mark.parametrize("name", sorted(NORMALISERS))
def test_a_changed_divisor_is_finite_only_when_provably_positive(name):
    normalise, finite = NORMALISERS[name]
    torch.manual_seed(0)
    net = Net(normalise)
    report = zero_init_pass(net, rule="residual_branch_last", dry_run=True)
    view = GraphView(fx.symbolic_trace(net), net)
    facts = view.facts(tuple(p for p in report.params if p.startswith("b0.")))
    # h + normalise(...): what block 1 reads
    merge = next(n for n in view.nodes if n.op == "call_module" and n.target == "b1.fc1").args[0]
    assert (facts.fact(merge) == Fact.FINITE) is finite, facts.why(merge)
    # block 1 is claimed exactly when what flows into it is provably finite
    assert ("b1.fc2" in report.modules) is finite, report.table()
    if not finite:
        # and rightly: a gate whose ReLU is all off makes the divisor zero after the pass
        with torch.no_grad():
            net.gate.weight.zero_()
            net.gate.bias.fill_(-1.0)
        x = torch.randn(3, 4)
        zero_init_pass(net, rule="residual_branch_last")
        with torch.no_grad():
            h = net.b0(x)
            h = h + normalise(torch.relu(net.gate(h)))
        assert not torch.isfinite(h).all()
