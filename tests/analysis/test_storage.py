"""Storages (``zeta_fx.analysis.storage``): which reads see which writes.

A value read after a node wrote its storage in place (through any alias: a view, ``.data``,
``out=``, an in-place activation) is a stale read; reads before the write and copies are
not. (Moved from ``test_semantics.py``: these call the analysis, not the op records.)
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from zeta_fx.analysis.storage import Storages
from zeta_fx.analysis.view import GraphView


# -- storages: which reads see which writes ------------------------------------------------

def _stale(fn):
    gm = fx.symbolic_trace(fn)
    storage = Storages(list(gm.graph.nodes), gm)
    return {(v.name, r.name): [w.name for w in ws] for r in gm.graph.nodes
            for v, ws in storage.stale_reads(r)}, storage


@pytest.mark.parametrize("write", [
    lambda x: x.T.mul_(2), lambda x: x.data.clamp_(0), lambda x: x.view(-1).add_(1),
    lambda x: x.to(x.dtype).mul_(2), lambda x: x.detach().zero_(),
    lambda x: torch.add(x, 1, out=x), lambda x: F.silu(x, inplace=True),
    lambda x: x.unfold(1, 2, 2).mul_(0), lambda x: x[:, :2].mul_(0),
], ids=["T", "data", "view", "to", "detach", "out", "inplace", "unfold", "slice"])
def test_a_write_through_any_alias_is_seen_by_later_reads(write):
    def f(x):
        write(x)
        return x + 1
    stale, storage = _stale(f)
    last = storage.nodes[-2].name  # the `x + 1` the output returns
    assert any(v == "x" and r == last for v, r in stale), stale


def test_reads_before_the_write_and_copies_are_not_stale():
    def f(x):
        y = x + 1           # read before the write
        c = x.clone()
        x.mul_(2)
        return y + c
    stale, _ = _stale(f)
    assert stale == {}


def test_a_module_state_write_is_seen_by_every_other_read():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("steps", torch.zeros(()))

        def forward(self, x):
            y = x * self.steps
            self.steps.add_(1)   # read before, written after: seen by the next call
            return y
    tracer = fx.Tracer()
    tracer.proxy_buffer_attributes = True
    gm = fx.GraphModule(M(), tracer.trace(M()))
    storage = Storages(list(gm.graph.nodes), gm)
    mul = next(n for n in gm.graph.nodes if n.name == "mul")
    assert [w.name for _, ws in storage.stale_reads(mul) for w in ws] == ["add_"]


def test_the_view_of_a_graph_sees_a_write_through_a_view_as_a_stale_read():
    def f(x):
        v = x.view(-1)
        y = x + 1        # before the write: not stale
        v.mul_(2)
        return x * 3, y  # after it: `x` is stale here
    gm = fx.symbolic_trace(f)
    storage = GraphView(gm).storage
    stale = {r.name: [(v.name, [w.name for w in ws]) for v, ws in storage.stale_reads(r)]
             for r in gm.graph.nodes if storage.stale_reads(r)}
    assert stale == {"mul": [("x", ["mul_"])]}
    (read,) = storage.stale_reads(next(n for n in gm.graph.nodes if n.name == "mul"))
    assert storage.describe_write(read) == "`x` is written in place by `mul_` through the view `view`"
