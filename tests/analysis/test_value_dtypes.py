"""Each value's dtype (``zeta_fx.analysis.dtypes.ValueDtypes``) on a small traced graph: a
cast gives its dtype, a sum of two floating dtypes is promoted, a Python scalar keeps the
tensor's dtype, an input has the model's dtype. (The op-level rules, ``in_dtype`` and the
computation dtypes of norms, are in ``tests/semantics/test_semantics.py``.)"""

from __future__ import annotations

import torch
from torch import fx, nn

from zeta_fx.analysis.dtypes import ValueDtypes, model_dtype
from zeta_fx.analysis.view import GraphView


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)  # float32: the model's dtype
        self.register_buffer("scale", torch.ones(4, dtype=torch.float64))

    def forward(self, x):
        h = self.fc(x)
        a = h.half()             # a cast
        b = a + self.scale       # float16 + float64: promoted
        c = a * 2                # a Python scalar does not promote
        d = h.to(torch.bfloat16)
        return b, c, d


def test_casts_and_promotion():
    model = Mixed()
    gm = fx.symbolic_trace(model)
    dtypes = GraphView(gm, model).dtypes
    got = {n.name: dtypes[n] for n in gm.graph.nodes if n.op != "output"}
    assert got == {"x": torch.float32, "fc": torch.float32, "half": torch.float16,
                   "scale": torch.float64, "add": torch.float64, "mul": torch.float16,
                   "to": torch.bfloat16}
    # built on its own, it says the same
    alone = ValueDtypes(list(gm.graph.nodes), model)
    assert {n.name: alone[n] for n in gm.graph.nodes if n.op != "output"} == got
    assert model_dtype(model) == torch.float32
    assert dtypes[torch.zeros(1, dtype=torch.float16)] == torch.float16  # a tensor constant


def test_an_input_has_the_dtype_most_parameters_have():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)).half()
    gm = fx.symbolic_trace(model)
    dtypes = GraphView(gm, model).dtypes
    assert [dtypes[n] for n in gm.graph.nodes if n.op != "output"] == [torch.float16] * 3
