"""The residual joins (``zeta_fx.analysis.joins``), called directly on small traced graphs.

``find_joins`` lists every additive merge of two or more data paths with its verdict: an
identity skip and a projection skip are joins (fork, skip, branch); an FPN-like top-down sum
whose inner value is also an output is not; ``cat`` is not a merge at all.
``additive_operands`` reads a sum's operands with their signs. End-to-end checks of the same
structures (running the model after the pass) are in ``test_analysis.py`` and
``test_structures.py``.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from zeta_fx.analysis.joins import additive_operands, find_joins
from zeta_fx.analysis.view import GraphView


class IdentitySkip(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x)))


class ProjectionSkip(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.proj = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(4, 8)

    def forward(self, x):
        return self.proj(x) + self.fc2(torch.relu(self.fc1(x)))


class TopDownSum(nn.Module):
    """FPN-like: ``lat(c) + p5`` where ``p5`` is also an output: not a residual join."""

    def __init__(self):
        super().__init__()
        self.body, self.top, self.lat = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        c = self.body(x)
        p5 = self.top(c)
        return self.lat(c) + p5, p5


class Dense(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return torch.cat([x, self.fc(x)], -1)


class Subtract(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return x - self.fc(x)


def _joins(model: nn.Module):
    view = GraphView(fx.symbolic_trace(model))
    return view, find_joins(view)


def _names(nodes) -> list[str]:
    return [n.name for n in nodes]


def test_an_identity_skip_is_a_join_from_the_input():
    _, (join,) = _joins(IdentitySkip())
    assert join.ok and join.merge.name == "add"
    assert (join.fork.name, join.skip.name, join.skip_kind) == ("x", "x", "identity")
    assert _names(join.branches) == ["fc2"]


def test_a_projection_skip_is_a_join_whose_skip_is_the_projection():
    _, (join,) = _joins(ProjectionSkip())
    assert join.ok
    assert (join.fork.name, join.skip.name, join.skip_kind) == ("x", "proj", "projection")
    assert _names(join.branches) == ["fc2"]


def test_a_top_down_sum_is_a_merge_but_not_a_join():
    _, (join,) = _joins(TopDownSum())
    assert not join.ok and join.merge.name == "add"
    assert join.reason.startswith("not a residual join")
    assert "`top` is also used by `output`" in join.reason


def test_cat_is_not_a_merge():
    view, joins = _joins(Dense())
    assert joins == []
    assert all(additive_operands(view, n) is None for n in view.nodes)


def test_additive_operands_carry_their_signs():
    view, (join,) = _joins(Subtract())
    assert join.ok and _names(join.branches) == ["fc"]
    operands = additive_operands(view, join.merge)
    assert [(a.name, c) for a, c in operands] == [("x", 1.0), ("fc", -1.0)]
    # not additive: the input, a layer
    assert additive_operands(view, view.nodes[0]) is None
    assert additive_operands(view, next(n for n in view.nodes if n.name == "fc")) is None
