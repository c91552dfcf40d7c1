"""Values computed under ``torch.no_grad()``: under ``torch.export`` a subgraph run by
``wrap_with_set_grad_enabled``, whose outputs are the subgraph's computation on its operands.
The zero facts and the zero search read through it, and a router's ``-inf`` mask built as a
margin below the row's maximum (Phi-MoE's sparsemixer, often under ``no_grad``) is proven to
keep each row's maximum, so the softmax over it stays finite. Every claim is judged by
running the model (``check_pass``); the structures that must not be proven are drawn too:
a negative margin (it masks the maximum), a margin measured on another tensor, a second
round with every entry of a row scattered away, a no_grad body that does not keep zero.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from claims import check_pass
from zeta_fx.capture import capture

NEG_INF = float("-inf")


class Scaled(nn.Module):
    """``x + g(fc(x))`` with ``g`` computed under ``torch.no_grad()``."""

    def __init__(self, body) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.body = body

    def forward(self, x):
        h = self.fc(x)
        with torch.no_grad():
            y = self.body(h, x)
        return x + y


def _x() -> torch.Tensor:
    return torch.randn(2, 3, 4)


def test_the_graph_holds_a_no_grad_subgraph():
    gm = capture(Scaled(lambda h, x: h * 2), example_inputs=(_x(),), method="export")
    assert any("wrap_with_set_grad_enabled" in str(n.target) for n in gm.graph.nodes)


@pytest.mark.parametrize("body", [lambda h, x: h * 2, lambda h, x: torch.relu(h).transpose(0, 1)
                                  .transpose(0, 1), lambda h, x: h * x])
def test_a_branch_through_no_grad_is_zeroed(body):
    torch.manual_seed(0)
    model = Scaled(body)
    x = _x()
    check_pass(model, params={"fc.weight", "fc.bias"}, inputs=(x,), example_inputs=(x,),
               capture="export")
    assert torch.equal(model(x), x)


@pytest.mark.parametrize("body", [lambda h, x: torch.cos(h), lambda h, x: h + 1.0,
                                  lambda h, x: h / h.sum()])
def test_a_no_grad_body_that_does_not_keep_zero_is_left_alone(body):
    torch.manual_seed(0)
    x = _x()
    report = check_pass(Scaled(body), params=set(), inputs=(x,), example_inputs=(x,),
                        capture="export")
    assert report.skipped


class Router(nn.Module):
    """A mixture of experts whose gate masks the scores more than ``margin`` (relative)
    below the row's best with ``-inf`` and softmaxes them; with ``second``, a second round
    as Phi-MoE's sparsemixer: the best ``scattered`` entries set to ``-inf``, the margin
    measured on the unmasked scores."""

    def __init__(self, n: int = 4, margin: float = 0.02, no_grad: bool = True,
                 second: bool = False, scattered: int = 1, against: str = "scores",
                 at_least: bool = False) -> None:
        super().__init__()
        self.at_least = at_least
        self.n, self.margin, self.no_grad = n, margin, no_grad
        self.second, self.scattered, self.against = second, scattered, against
        self.gate = nn.Linear(8, n, bias=False)
        self.experts = nn.Linear(8, 8 * n)

    def _mask(self, t, s):
        with torch.no_grad() if self.no_grad else contextlib.nullcontext():
            top = t.max(dim=-1, keepdim=True)[0]
            if self.against == "double":
                s = s * 2
            gap = (top - s) / s.abs().clamp(min=top)
            return gap >= self.margin if self.at_least else gap > self.margin

    def forward(self, x):
        scores = self.gate(x)
        w = scores.masked_fill(self._mask(scores, scores), NEG_INF).softmax(-1)
        if self.second:
            best = scores.topk(self.scattered, dim=-1)[1]
            rest = torch.scatter(scores, -1, best, NEG_INF)
            w = w + rest.masked_fill(self._mask(rest, scores), NEG_INF).softmax(-1)
        out = self.experts(x).unflatten(-1, (self.n, 8))
        return x + (w.unsqueeze(-1) * out).sum(-2)


class Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        return x + self.lin(x)


def _two(**kw) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(Plain(), Router(**kw))  # the gate reads a value the zeroing changed


PLAIN = {"0.lin.weight", "0.lin.bias"}
BOTH = PLAIN | {"1.experts.weight", "1.experts.bias"}


@pytest.mark.parametrize("kw", [dict(), dict(no_grad=False), dict(second=True),
                                dict(second=True, no_grad=False), dict(margin=0.0),
                                dict(second=True, n=2), dict(at_least=True)])
def test_a_margin_mask_keeps_each_rows_maximum(kw):
    model = _two(**kw)
    x = torch.randn(2, 5, 8)
    check_pass(model, params=BOTH, inputs=(x,), example_inputs=(x,), capture="export")
    assert torch.equal(model(x), x)


@pytest.mark.parametrize("kw", [dict(margin=-0.1), dict(against="double"),
                                dict(at_least=True, margin=0.0),
                                dict(second=True, scattered=4),
                                dict(second=True, n=2, scattered=2)])
def test_a_mask_that_may_blank_a_row_is_left_alone(kw):
    # a negative margin masks the maximum too, and so does `gap >= 0`; a margin measured on 2 * scores masks it
    # where the best score is negative; scattering every entry away leaves a row of -inf:
    # a softmax over such a row is NaN, and NaN * 0 is not 0
    model = _two(**kw)
    x = torch.randn(2, 5, 8)
    report = check_pass(model, params=PLAIN, inputs=(x,), example_inputs=(x,),
                        capture="export")
    assert "1.experts" in [s.module for s in report.skipped], report.table()


def test_a_negative_margin_really_blanks_rows():
    # why the cases above must be left alone: equal nonzero scores are masked entirely
    torch.manual_seed(0)
    router = Router(margin=-0.1)
    with torch.no_grad():
        router.gate.weight.fill_(0.1)
        assert torch.isnan(router(torch.ones(1, 2, 8))).all()


class Rescaled(nn.Module):
    """Two weights rescaled together under ``no_grad`` (RWKV's eval-mode rescale): each
    item of the subgraph is computed from its own weight only."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False)

    def forward(self, x):
        with torch.no_grad():
            w1, w2 = self.fc1.weight / 2, self.fc2.weight * 3
        h = x + torch.nn.functional.linear(x, w1)
        return h + torch.nn.functional.linear(torch.relu(h), w2)


def test_weights_given_back_by_one_no_grad_subgraph_are_each_their_own():
    torch.manual_seed(0)
    model = Rescaled()
    x = _x()
    gm = capture(model, example_inputs=(x,), method="export")
    assert sum("wrap_with_set_grad_enabled" in str(n.target) for n in gm.graph.nodes) == 1
    report = check_pass(model, params={"fc1.weight", "fc2.weight"}, inputs=(x,),
                        example_inputs=(x,), capture="export")
    assert set(report.modules) == {"fc1", "fc2"}
    assert torch.equal(model(x), x)
    with torch.no_grad():  # each is needed: either one back breaks the identity
        for fc in (model.fc1, model.fc2):
            fc.weight.fill_(0.5)
            assert not torch.equal(model(x), x)
            fc.weight.zero_()
