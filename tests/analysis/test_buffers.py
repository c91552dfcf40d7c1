"""Data written into a fresh buffer is followed (zeta_fx.analysis.buffers), judged by running.

``out = torch.zeros_like(h); out[:, i] = ...`` reads only ``h``'s shape: without following
the writes, everything computed from ``out`` looked like a constant and the block had no row.
"""

from __future__ import annotations

import torch
from torch import nn

from claims import check_pass, snapshot, params_of
from zeta_fx import zero_init_pass
from zeta_fx.analysis.view import GraphView
from zeta_fx.capture import capture


class LoopFill(nn.Module):
    """A recurrent-style block: a zeros buffer filled step by step, then projected."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        h = self.fc1(x)
        out = torch.zeros_like(h)
        for i in range(4):
            out[:, i] = h[:, i] * 2
        return x + self.fc2(out)


class IndexAddView(nn.Module):
    """An MoE-style dispatch: expert output accumulated into a zeros buffer by index_add_
    and read through a view by the merge."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        out = x.new_zeros(x.shape)
        idx = torch.tensor([0, 2])
        out.index_add_(0, idx, self.fc2(torch.relu(self.fc1(x[idx]))))
        return x + out.view(x.shape)


class PartialWrite(nn.Module):
    """Only part of an ``x.clone()`` buffer is overwritten: the rest still holds ``x``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        out = x.clone()
        out[:, :2] = self.fc(x)[:, :2]
        return x + out * 1.0


def test_reads_of_a_filled_buffer_are_data():
    model = LoopFill()
    view = GraphView(capture(model, example_inputs=(torch.randn(3, 4),)), model)
    fc2 = view.by_name["fc2"]
    assert view.is_data[fc2]
    writes = [n for n in view.data_inputs[fc2] if n.name.startswith("setitem")]
    assert len(writes) == 4  # every step's write reaches the projection


def test_loop_filled_buffer_branch_is_zeroed_and_needed():
    torch.manual_seed(0)
    model = LoopFill()
    x = torch.randn(3, 4)
    report = check_pass(model, params=params_of("fc2"), inputs=(x,), example_inputs=(x,))
    assert report.modules == ["fc2"]
    assert torch.equal(model(x), x)  # the block is the identity, run on its own
    before = {k: v.clone() for k, v in LoopFill().state_dict().items()}
    # un-zeroing fc2 (its original nonzero weight) breaks the identity
    with torch.no_grad():
        model.fc2.weight.copy_(before["fc2.weight"])
    assert not torch.equal(model(x), x)


def test_a_write_the_search_cannot_follow_is_left_alone_with_a_row():
    for cls in (IndexAddView, PartialWrite):
        torch.manual_seed(0)
        model = cls()
        x = torch.randn(3, 4)
        before = snapshot(model)
        report = zero_init_pass(model, example_inputs=(x,))
        assert report.params == [] or cls is IndexAddView and set(report.params) == \
            params_of("fc2"), report.table()
        if not report.params:
            assert report.skipped, f"{cls.__name__}: the merge has no row"
            for name, value in model.state_dict().items():
                assert torch.equal(value, before[name]), name
        else:
            assert torch.equal(model(x), x)
