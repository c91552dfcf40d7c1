"""The planner (``zeta_fx.plan.planner.build_plan``) on small traced graphs: a settled
selection's targets become one entry per module (a module that ends two branches is one
entry with both sites), with its parameters and shapes; a selection with nothing left makes
an empty plan that still carries the reasons. Plans as data (JSON, pickle) are in
``test_plan.py``."""

from __future__ import annotations

import torch
from torch import fx, nn

from zeta_fx.analysis.proof import settle
from zeta_fx.analysis.view import GraphView
from zeta_fx.plan.planner import build_plan
from zeta_fx.rules import ResidualBranchLast


class TwoBlocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 6)

    def forward(self, x):
        h = x + self.fc2(torch.relu(self.fc1(x)))
        h = h + self.fc2(torch.relu(h))  # fc2 ends this branch too
        return self.fc3(h)


class Shortcut(nn.Module):
    """A branch ending in a buffer sum: left alone, nothing planned."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)
        self.register_buffer("b", torch.ones(4))

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x))) + self.b + x


def _plan(model: nn.Module):
    view = GraphView(fx.symbolic_trace(model), model)
    selection = settle(view, ResidualBranchLast().select(view))
    return selection, build_plan(view, selection, "residual_branch_last")


def test_targets_are_grouped_by_module_into_entries():
    selection, plan = _plan(TwoBlocks())
    assert [t.module for t in selection.targets] == ["fc2", "fc2"]  # two targets...
    (entry,) = plan.entries                                          # ...one entry
    assert entry.module == "fc2"
    assert dict(entry.params) == {"fc2.weight": (4, 4), "fc2.bias": (4,)}
    assert sorted(site.merge for site in entry.sites) == ["add", "add_1"]
    assert plan.params == ["fc2.weight", "fc2.bias"] and plan.modules == ["fc2"]
    assert plan.skipped == ()


def test_nothing_settled_makes_an_empty_plan_with_the_reason():
    _, plan = _plan(Shortcut())
    assert plan.entries == () and plan.params == []
    (skipped,) = plan.skipped
    assert "`b` is a buffer or constant, not a parameter" in skipped.reason
