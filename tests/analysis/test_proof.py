"""The proof (``zeta_fx.analysis.proof.settle``), called directly on small traced graphs.

A rule proposes targets each proved on its own; ``settle`` keeps those whose claim holds
with every planned parameter zero, and leaves the others alone with the reason. End-to-end
cases (judged by running the model) are in ``tests/soundness/test_soundness.py``.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from zeta_fx.analysis.proof import settle
from zeta_fx.analysis.view import GraphView
from zeta_fx.rules import ResidualBranchLast


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x)))


class Reused(Block):
    """``fc2`` ends the branch and is called again after the merge."""

    def forward(self, x):
        h = x + self.fc2(torch.relu(self.fc1(x)))
        return self.fc2(h) * 2


class OnTheSkip(Block):
    """``fc2`` ends the branch and also makes the skip value."""

    def forward(self, x):
        s = self.fc2(x)
        return s + self.fc2(torch.relu(self.fc1(s)))


def _settle(model: nn.Module):
    view = GraphView(fx.symbolic_trace(model))
    selection = ResidualBranchLast().select(view)
    return selection, settle(view, selection)


def test_a_claim_that_holds_is_kept():
    selection, settled = _settle(Block())
    assert [t.module for t in settled.targets] == ["fc2"]
    assert settled.skipped == [] and settled.targets == selection.targets


def test_a_branch_end_also_used_elsewhere_is_left_alone_with_the_reason():
    selection, settled = _settle(Reused())
    assert [t.module for t in selection.targets] == ["fc2"]  # proposed on its own...
    assert settled.targets == []                              # ...but it does not hold
    (skipped,) = settled.skipped
    assert skipped.module == "fc2" and skipped.reason.startswith("left alone: ")
    assert "`fc2` is also used at `fc2_1`, where the rule does not select it" in skipped.reason


def test_a_branch_end_that_also_makes_the_skip_is_left_alone():
    selection, settled = _settle(OnTheSkip())
    assert [t.module for t in selection.targets] == ["fc2"]
    assert settled.targets == []
    (skipped,) = settled.skipped
    assert skipped.module == "fc2" and "zeroing it would change that use too" in skipped.reason
