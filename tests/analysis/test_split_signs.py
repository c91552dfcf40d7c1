"""The pieces of a split keep the sign of the tensor they cut (signs.py, ``SIGN_CARRIERS``).

transformers 5.25's Qwen3-Next cuts its decay ``g = -exp(A) * softplus(a) <= 0`` with
``torch.tensor_split(g, [n], dim=1)`` before the gated delta rule (the part it scans chunk by
chunk, the rest token by token). Every element of a piece is an element of ``g``, so each
piece is ``<= 0`` too, and ``exp`` of the causal pairwise decays of its cumulative sum stays
in [0, 1]: once block 0 is the identity, block 1 is proven as well. Judged by running: each
block returns its input exactly on large inputs, and each zeroed layer is needed.

Where the claim must not be made: a piece of a value whose sign is not known (``g`` beside
its negation in one tensor), and a piece written in place after the cut (``piece.neg_()``,
or a write to the tensor it was cut from) -- there ``exp`` overflows on large inputs and the
later block must be left alone, with a reason.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advnets import Two
from claims import assert_each_zeroed_needed, check_pass, fixed_inputs, params_of, snapshot
from zeta_fx import zero_init_pass

STEPS = 4


def _cut(g: torch.Tensor, how: str) -> torch.Tensor:
    """``g`` (batch, steps, heads) through one kind of split (a piece with all the steps)."""
    if how == "tensor_split":  # Qwen3-Next: chunked part and the rest (empty here)
        return torch.tensor_split(g, [STEPS], dim=1)[0]
    if how == "tensor_split_method":
        return g.tensor_split(2, dim=2)[0]  # the first half of the heads
    if how == "split":
        return torch.split(g, [3, 1], dim=2)[0]
    if how == "chunk":
        return g.chunk(2, dim=2)[1]
    if how == "unbind":
        return g.unbind(0)[1].unsqueeze(0).expand(2, -1, -1)
    if how == "narrow":
        return g.narrow(2, 1, 3)
    if how == "mixed":  # g beside -g (>= 0): a piece of a value of no known sign
        half = STEPS // 2
        return torch.tensor_split(torch.cat([g, -g], dim=1), [half, STEPS + half], dim=1)[1]
    if how == "piece_written":  # the piece is negated in place after the cut
        piece = torch.tensor_split(g, [STEPS], dim=1)[0]
        piece.neg_()
        return piece
    if how == "source_written":  # the tensor cut is negated after the cut: the piece sees it
        g = g.clone()
        piece = torch.tensor_split(g, [STEPS], dim=1)[0]
        g.mul_(-1.0)
        return piece
    raise ValueError(how)


class Decay(nn.Module):
    """The gated delta rule's pairwise decay on a piece of ``g``."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.v, self.out = nn.Linear(8, 4), nn.Linear(8, 8), nn.Linear(8, 8)
        self.A = nn.Parameter(torch.randn(4))

    def forward(self, x):
        g = -self.A.exp() * F.softplus(self.a(x))  # (batch, steps, heads), <= 0
        c = _cut(g, self.how).transpose(1, 2).cumsum(-1)
        mask = torch.ones(STEPS, STEPS, dtype=torch.bool).triu(1)
        w = (c.unsqueeze(-1) - c.unsqueeze(-2)).masked_fill(mask, float("-inf")).exp()
        return x + self.out(w.mean(1) @ self.v(x))


def _x(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, STEPS, 8, generator=torch.Generator().manual_seed(seed))


PROVEN = ["tensor_split", "tensor_split_method", "split", "chunk", "unbind", "narrow"]
NOT_PROVEN = ["mixed", "piece_written", "source_written"]
CAPTURES = [{}, {"example_inputs": (_x(),)}]  # symbolic (torch functions), export (aten)


@pytest.mark.parametrize("how", PROVEN)
@pytest.mark.parametrize("capture", CAPTURES, ids=["symbolic", "export"])
def test_a_piece_of_a_decay_keeps_its_sign_past_the_first_block(how, capture):
    torch.manual_seed(0)
    model = Two(lambda: Decay(how))
    before = snapshot(model)
    owners = ["b0.out", "b1.out"]
    report = check_pass(model, params=params_of(*owners), inputs=(_x(),), **capture)
    with torch.no_grad():
        for seed in range(3):
            x = _x(seed) * 30  # large enough that exp of a decay > 0 would overflow
            assert torch.equal(model(x), x), seed
    # each zeroed layer is needed
    assert_each_zeroed_needed(model, before, report, [(model, lambda x: x)],
                              fixed_inputs((_x(1),)))


@pytest.mark.parametrize("how", NOT_PROVEN)
@pytest.mark.parametrize("capture", CAPTURES, ids=["symbolic", "export"])
def test_a_piece_of_no_known_sign_leaves_the_later_block_alone(how, capture):
    torch.manual_seed(0)
    model = Two(lambda: Decay(how)).eval()
    with torch.no_grad():  # what a claim on b1 would meet: b1's decay overflows to inf
        b1 = model.b1
        g = -b1.A.exp() * F.softplus(b1.a(_x() * 30))
        c = _cut(g, how).transpose(1, 2).cumsum(-1)
        assert not torch.isfinite((c.unsqueeze(-1) - c.unsqueeze(-2)).tril().exp()).all()
    before = snapshot(model)
    report = zero_init_pass(model, **capture)
    assert "b1.out" not in report.modules, report.table()
    for name, value in model.state_dict().items():
        if name not in report.params:
            assert torch.equal(value, before[name]), name
    reasons = [s.reason for s in report.skipped if s.module == "b1.out"]
    assert reasons and any("non-finite" in r or "exp" in r for r in reasons), report.table()
