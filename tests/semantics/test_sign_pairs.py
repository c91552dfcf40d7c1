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
    (lambda a, b: torch.softmax(a, -1).topk(2, -1)[-1].float(),
     dict(nonnegative=True, positive=False, at_most_one=False)),
    (lambda a, b: torch.var_mean(a, -1)[-1], dict(nonnegative=False, positive=False)),
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


# -- random compositions: every sign claimed holds of the values ---------------------------------

UNARY = [torch.exp, torch.neg, torch.sigmoid, F.relu, torch.abs, lambda a: torch.softmax(a, -1),
         F.softplus, lambda a: a.sum(-1, keepdim=True), lambda a: a.mean(-1, keepdim=True),
         lambda a: a.cumsum(-1), lambda a: a.max(-1, keepdim=True)[0],
         lambda a: a.max(-1, keepdim=True)[1].float(), lambda a: a.topk(2, -1)[0],
         lambda a: a.topk(2, -1)[1].float(), lambda a: a.sort(-1)[0],
         lambda a: a.min(-1, keepdim=True)[0], lambda a: a.amax(-1, keepdim=True), torch.sqrt,
         lambda a: a.clamp(min=1e-6), lambda a: a.clamp(min=0.0, max=1.0),
         lambda a: a.clamp(max=0.0), lambda a: a + 1e-6, lambda a: 1 - a, lambda a: a - 1,
         lambda a: a ** 2, lambda a: a * a, F.logsigmoid, lambda a: torch.log_softmax(a, -1),
         lambda a: a.transpose(0, 1), lambda a: a.half().float(),
         lambda a: torch.var_mean(a, -1, keepdim=True)[1],
         lambda a: torch.var_mean(a, -1, keepdim=True)[0], F.hardsigmoid,
         lambda a: a.norm(dim=-1, keepdim=True), torch.exp2,
         lambda a: F.pad(a, (1, 1), value=-1.0), lambda a: a.masked_fill(a > 0, 0.0),
         lambda a: a.masked_fill(a > 0, -1.0), lambda a: a.var(-1, keepdim=True),
         lambda a: a.gather(-1, torch.zeros_like(a, dtype=torch.long)), lambda a: a[..., -2:],
         lambda a: a.clamp(min=-1.0), F.relu6, lambda a: a.kthvalue(2, -1)[0],
         lambda a: a.kthvalue(2, -1)[1].float(), lambda a: a.cummax(-1)[0],
         lambda a: a.median(-1)[0], lambda a: a.mode(-1)[1].float()]
BINARY = [torch.add, torch.sub, torch.mul, torch.max, torch.min, torch.maximum, torch.minimum,
          lambda a, b: torch.where(a > b, a, b), lambda a, b: torch.add(a, b, alpha=-1),
          lambda a, b: torch.sub(a, b, alpha=-1), torch.div, torch.fmax,
          lambda a, b: a.masked_fill(b > 0, float("-inf"))]
SCALES = (1.0, 1e-3, 100.0, -100.0, 1e4, -1e4)


def _composition(rng, n):
    ops = [(("u", rng.randrange(len(UNARY))) if rng.random() < 0.7 else
            ("b", rng.randrange(len(BINARY)))) for _ in range(n)]

    def fn(x, y):
        a = x
        for kind, i in ops:
            a = UNARY[i](a) if kind == "u" else BINARY[i](a, y)
        return a
    return fn, ops


@pytest.mark.slow
def test_signs_claimed_of_random_compositions_hold_of_their_values():
    """``>= 0``, ``<= 0``, ``<= 1`` wherever finite, on inputs up to 1e4 either way; ``> 0``
    on moderate inputs (in float32 ``exp`` and ``sigmoid`` underflow to 0 far out, taken
    so: docs/limitations.md), never after a ``-inf`` fill (``exp(-inf)`` is 0; see
    ``test_exp_of_a_neg_inf_fill_is_not_positive``)."""
    import random
    rng = random.Random(0)
    wrong, claimed = [], 0
    for _ in range(400):
        fn, ops = _composition(rng, rng.randint(1, 4))
        try:
            gm = fx.symbolic_trace(fn)
            gen = torch.Generator().manual_seed(0)
            runs = [(scale, gm(torch.randn(4, 6, generator=gen) * scale,
                               torch.randn(4, 6, generator=gen) * scale))
                    for scale in SCALES for _ in range(2)]
        except (RuntimeError, IndexError, ValueError):
            continue  # shapes that do not compose
        out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
        masked = ("b", len(BINARY) - 1) in ops
        for check, (rule, holds) in CHECKS.items():
            if check == "positive" and masked or not rule(out):
                continue
            claimed += 1
            for scale, v in runs:
                if check == "positive" and abs(scale) > 1:
                    continue
                v = v[torch.isfinite(v)]
                if not bool(holds(v).all()):
                    wrong.append((check, ops, scale))
                    break
    assert claimed > 150, claimed  # the rules do prove things here
    assert not wrong, wrong[:5]


@pytest.mark.xfail(strict=True, reason="positive() takes exp/softmax to be > 0, but of a "
                   "-inf fill they are exactly 0; no false merge claim found from it (a "
                   "division by such a value is inf in the model as given too)")
def test_exp_of_a_neg_inf_fill_is_not_positive():
    nodes, _ = outputs(lambda a, b: (torch.exp(a.masked_fill(b > 0, float("-inf"))),),
                       "symbolic")
    assert positive(nodes[0]) is False
