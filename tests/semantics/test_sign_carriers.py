"""Which ops carry a sign from their input (signs.py), on small traced graphs.

The pieces of a split hold elements of the tensor they cut: every elementwise sign of the
tensor holds for each piece (``tensor_split``, ``split``, ``chunk``, ``unbind``,
``narrow``), as each capture spells them (torch functions and methods, aten overloads). A
piece of a value of no known sign has none. Item 1 of ``topk``/``sort``/``max(x, dim)`` is
positions, not values: ``>= 0`` (0 among them, up to the dimension's size), never ``> 0``,
``<= 1`` or ``<= 0`` because the values were; the difference of each claim is checked on
the values the graph computes.
"""

from __future__ import annotations

import pytest
import torch
from torch import fx

from zeta_fx.semantics.signs import at_most_one, nonnegative, nonpositive, positive

PIECES = {
    "tensor_split": lambda g: torch.tensor_split(g, [3], dim=1)[1],
    "tensor_split_sections": lambda g: g.tensor_split(2, dim=1)[0],
    "split": lambda g: torch.split(g, [1, 4], dim=1)[1],
    "split_method": lambda g: g.split(2, dim=1)[2],
    "chunk": lambda g: g.chunk(2, dim=0)[1],
    "unbind": lambda g: g.unbind(1)[4],
    "narrow": lambda g: g.narrow(1, 1, 3),
}

# torch.export's first call in a process takes seconds
CAPTURES = ["symbolic", pytest.param("export", marks=pytest.mark.slow)]


def _outputs(fn, capture: str) -> tuple[fx.GraphModule, list[fx.Node]]:
    class M(torch.nn.Module):
        def forward(self, x):
            return fn(x)
    if capture == "symbolic":
        gm = fx.symbolic_trace(M())
    else:
        gm = torch.export.export(M(), (torch.randn(4, 5),)).module()
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    return gm, list(out) if isinstance(out, (tuple, list)) else [out]


def _values(gm: fx.GraphModule, x: torch.Tensor) -> list[torch.Tensor]:
    out = gm(x)
    return list(out) if isinstance(out, (tuple, list)) else [out]


@pytest.mark.parametrize("capture", CAPTURES)
@pytest.mark.parametrize("cut", sorted(PIECES))
def test_a_piece_has_the_signs_of_the_tensor_it_cuts(cut, capture):
    piece = PIECES[cut]
    gm, (neg, pos, gate, free) = _outputs(
        lambda x: (piece(-torch.exp(x)), piece(torch.exp(x)), piece(torch.sigmoid(x)),
                   piece(x)), capture)
    assert nonpositive(neg) and not nonnegative(neg)
    assert positive(pos) and nonnegative(pos) and not nonpositive(pos)
    assert at_most_one(gate) and positive(gate)
    # a piece of a value of no known sign: nothing is claimed (and indeed it has both signs)
    assert not any(f(free) for f in (nonpositive, nonnegative, positive, at_most_one))
    values = _values(gm, torch.randn(4, 5, generator=torch.Generator().manual_seed(0)) * 3)
    assert (values[0] <= 0).all() and (values[1] > 0).all() and (values[2] <= 1).all()
    assert (values[3] < 0).any() and (values[3] > 0).any()


@pytest.mark.parametrize("capture", CAPTURES)
def test_positions_are_not_values(capture):
    gm, items = _outputs(lambda x: (
        torch.sigmoid(x).topk(2, -1)[1], torch.sigmoid(x).topk(2, -1)[0],
        torch.sigmoid(x).max(-1)[1], (-torch.exp(x)).sort(-1)[-1]), capture)
    top_idx, top_val, max_idx, sort_idx = items
    values = _values(gm, torch.randn(4, 5, generator=torch.Generator().manual_seed(1)))
    # the positions include 0 and values above 1 (so neither > 0 nor <= 1 nor <= 0 holds)
    assert (values[0] == 0).any() or (values[2] == 0).any()
    assert (values[3] > 1).any()
    for idx in (top_idx, max_idx):
        assert not positive(idx) and not at_most_one(idx)
    assert not nonpositive(sort_idx)
    assert positive(top_val)  # the values keep the input's signs


@pytest.mark.parametrize("capture", CAPTURES)
def test_a_slice_of_a_pair_holds_both_items_and_no_sign(capture):
    # (values, positions)[0:][0] is the values; (var, mean)[:][0] the variance: a slice of
    # the pair carries neither item's sign, whichever item is read from it afterwards
    gm, (values_, variance) = _outputs(lambda x: (
        (-torch.exp(x)).topk(2, -1)[0:][0], torch.var_mean(-torch.exp(x), -1)[:][0]),
        capture)
    values = _values(gm, torch.randn(4, 5, generator=torch.Generator().manual_seed(2)))
    assert (values[0] < 0).all()  # the values, not positions: not >= 0
    assert (values[1] > 0).all()  # the variance, not the mean of -exp(x): not <= 0
    assert not nonnegative(values_) and not positive(values_)
    assert not nonpositive(variance)
