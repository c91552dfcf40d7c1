"""Operands read for their metadata only (``h.type_as(x)``, ``h.to(x)``, ``x.new_tensor(v)``,
``h.expand_as(x)``) are not data uses: a fork or skip value that also lends its dtype to a
cast still forks a join, and a parameter that lends its dtype is not consumed by the cast.

Judged by running: the exact parameters zeroed, every other bit kept, the zeroed branch
outputs zero, and each merge equals its skip on the captured graph (``check_pass``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from claims import OutputRecorder, assert_unchanged, check_pass, params_of, snapshot
from zeta_fx import zero_init_pass
from zeta_fx.analysis import GraphView

SEQ = (torch.randn(2, 5, 8),)


class CastBack(nn.Module):
    """Wan's ``(x.float() + f(x.float())).type_as(...)``: the skip's float copy (a value
    strictly between the fork ``x`` and the merge) is also read for its dtype."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)

    def forward(self, x):
        h = x.float()
        y = h + self.fc2(F.gelu(self.fc1(x.float())))
        if self.how == "type_as":
            return y.type_as(h)
        if self.how == "to":
            return y.to(h)
        return y * h.new_tensor(1.0)


def test_cast_to_the_skips_dtype_is_not_a_use_of_the_skip():
    for how, capture in [("type_as", "symbolic"), ("to", "symbolic"), ("new_tensor", "symbolic"),
                         ("type_as", "export"), ("to", "export"), ("type_as", "concrete")]:
        torch.manual_seed(0)
        model = CastBack(how)
        check_pass(model, params=params_of("fc2"), inputs=SEQ, capture=capture,
                   example_inputs=SEQ)
        rec = OutputRecorder(model, ["fc2"])
        x = torch.randn(2, 5, 8)
        assert torch.equal(model(x), x), how
        rec.assert_all_zero()


def test_metadata_operand_is_left_out_of_data_inputs():
    gm = fx.symbolic_trace(CastBack("type_as"))
    view = GraphView(gm)
    nodes = {n.name: n for n in gm.graph.nodes}
    cast = nodes["type_as"]
    assert [n.name for n in view.data_inputs[cast]] == ["add"]
    assert cast not in view.data_users[nodes["float_1"]]
    assert view.data_users[nodes["float_1"]] == [nodes["add"]]
    assert view.is_data[cast]


class CastToWeight(nn.Module):
    """``fc(x).type_as(fc.weight)`` reads the weight's dtype, not its values: the weight is
    consumed only by ``fc``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x))).type_as(self.fc2.weight)


def test_cast_to_a_parameters_dtype_does_not_consume_it():
    torch.manual_seed(0)
    model = CastToWeight()
    check_pass(model, params=params_of("fc2"), inputs=SEQ)


class GammaCast(nn.Module):
    """LayerScale whose gain is cast to the data's dtype first: still a weight, and the
    layer nearest the merge."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)
        self.gamma = nn.Parameter(torch.full((8,), 0.5))

    def forward(self, x):
        return x + self.gamma.type_as(x) * self.fc2(torch.relu(self.fc1(x)))


def test_parameter_cast_to_the_datas_dtype_stays_a_weight():
    torch.manual_seed(0)
    model = GammaCast()
    check_pass(model, params={"gamma"}, inputs=SEQ)
    x = torch.randn(2, 5, 8)
    assert torch.equal(model(x), x)


class ValueOnlyInDtype(nn.Module):
    """The layer lends only its dtype to what is added: zeroing it changes nothing, so no
    layer may be claimed for this merge."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return x + torch.relu(x).type_as(self.fc(x)) + torch.tanh(x).expand_as(self.fc(x))


def test_a_layer_read_for_its_dtype_is_not_a_branch_end():
    torch.manual_seed(0)
    model = ValueOnlyInDtype()
    before = snapshot(model)
    report = zero_init_pass(model)
    assert report.params == () or not report.params, report.table()
    assert_unchanged(model, before)


class ExpandToSkip(nn.Module):
    """A pooled branch broadcast to the skip's shape with ``expand_as(h)``, where ``h`` (the
    skip, computed from the fork) is read for its shape only."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)

    def forward(self, x):
        h = x * 2.0
        g = self.fc2(F.silu(self.fc1(x.mean(1, keepdim=True))))
        return h + g.expand_as(h)


def test_expand_as_the_skip_is_not_a_use_of_the_skip():
    torch.manual_seed(0)
    model = ExpandToSkip()
    check_pass(model, params=params_of("fc2"), inputs=SEQ)
    x = torch.randn(2, 5, 8)
    assert torch.equal(model(x), x * 2.0)
