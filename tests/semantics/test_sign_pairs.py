"""Sign rules on items of tuples and two-operand maxima (``signs.py``), on small traced
graphs: the positions ``topk``/``sort``/``max(x, dim)`` return are ``>= 0`` and no more;
``var_mean``'s item 1 is a mean, with its input's sign; ``max(a, b)`` is ``<= 0`` only when
both are, and ``min(a, b)`` ``>= 0`` / ``> 0`` only when both are, whichever way the
capture binds ``b``. Each claim made here is true of the values: the test runs the graph
and checks it on random inputs too."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import fx

from zeta_fx.semantics.signs import at_most_one, nonnegative, nonpositive, positive

CHECKS = {"nonnegative": (nonnegative, lambda v: v >= 0),
          "positive": (positive, lambda v: v > 0),
          "nonpositive": (nonpositive, lambda v: v <= 0),
          "at_most_one": (at_most_one, lambda v: v <= 1)}


def outputs(fn, method: str):
    x, y = torch.randn(3, 5), torch.randn(3, 5)
    if method == "symbolic":
        gm = fx.symbolic_trace(fn)
    else:
        class M(torch.nn.Module):
            def forward(self, a, b):
                return fn(a, b)
        gm = torch.export.export(M(), (x, y)).module()
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    values = gm(x * 10, y * 10)
    return list(out), list(values)


CASES = [
    # (function, {check: expected})
    (lambda a, b: (-F.softplus(a)).max(-1, keepdim=True)[1].float(),
     dict(nonnegative=True, positive=False, nonpositive=False, at_most_one=False)),
    (lambda a, b: torch.softmax(a, -1).topk(2, -1)[1].float(),
     dict(nonnegative=True, positive=False, at_most_one=False)),
    (lambda a, b: torch.sigmoid(a).sort(-1)[1].float(),
     dict(nonnegative=True, positive=False, at_most_one=False)),
    (lambda a, b: torch.softmax(a, -1).topk(2, -1)[0],
     dict(nonnegative=True, positive=True)),
    (lambda a, b: torch.var_mean(a, -1)[1],
     dict(nonnegative=False, positive=False)),
    (lambda a, b: torch.var_mean(torch.exp(a), -1)[1],
     dict(nonnegative=True, positive=True)),
    (lambda a, b: torch.var_mean(a, -1)[0], dict(nonnegative=True)),
    (lambda a, b: torch.max(-torch.exp(a), b), dict(nonpositive=False)),
    (lambda a, b: torch.max(-torch.exp(a), -F.relu(b)), dict(nonpositive=True)),
    (lambda a, b: (-torch.exp(a)).max(-1)[0], dict(nonpositive=True)),
    (lambda a, b: torch.min(F.relu(a), b), dict(nonnegative=False, positive=False)),
    (lambda a, b: torch.min(torch.exp(a), torch.sigmoid(b)), dict(nonnegative=True,
                                                                  positive=True)),
]


@pytest.mark.parametrize("method", ["symbolic", "export"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_signs_of_pair_items_and_two_operand_extrema(case, method):
    fn, expected = CASES[case]
    nodes, values = outputs(lambda a, b: (fn(a, b),), method)
    for check, want in expected.items():
        rule, holds = CHECKS[check]
        assert rule(nodes[0]) is want, (check, nodes[0].format_node())
        if want:  # what is claimed is true of the values
            assert bool(holds(values[0]).all()), check
