"""``scatter_reduce``: every reduction of zeros is zero (``sum``, ``prod``, ``mean``,
``amax``, ``amin``; a mean divides by a count of at least one), so a branch that scatters a
zeroed layer's output into fresh zeros is zero, with or without ``include_self``. Where the
tensor scattered into is not zero (``include_self`` keeps a nonzero entry, or entries nothing
is scattered to stay as they were, or ``amax`` of zeros meets a negative entry), the branch
is not zero and must be left alone. Every claim is judged by running the model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from claims import check_pass

REDUCES = ["sum", "prod", "mean", "amax", "amin"]


class Scatter(nn.Module):
    """``x + into.scatter_reduce(0, index, fc(x[:3]), reduce, include_self)``, ``into``
    fresh zeros or a buffer ``base`` (ones, or minus ones)."""

    def __init__(self, reduce: str, include_self: bool, base: float | None = None,
                 in_place: bool = False, cast: bool = False) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.reduce, self.include_self, self.in_place, self.cast = reduce, include_self, \
            in_place, cast
        # rows 0 and 2 receive (row 0 twice in column 0); rows 1, 3, 4, 5 receive nothing
        self.register_buffer("index", torch.tensor([[0, 2, 0, 2], [2, 0, 2, 0], [0, 0, 2, 2]]))
        self.register_buffer("base", None if base is None else torch.full((6, 4), base))

    def forward(self, x):
        into = torch.zeros_like(x) if self.base is None else self.base.clone()
        if self.cast:
            into = into.to(torch.float32)
        h = self.fc(x[:3])
        if self.in_place:
            out = into.scatter_reduce_(0, self.index, h, self.reduce,
                                       include_self=self.include_self)
        else:
            out = into.scatter_reduce(0, self.index, h, self.reduce,
                                      include_self=self.include_self)
        return x + out


def _x() -> torch.Tensor:
    return torch.randn(6, 4)


@pytest.mark.parametrize("include_self", [True, False])
@pytest.mark.parametrize("reduce", REDUCES)
def test_scattering_a_zeroed_layer_into_zeros_is_zero(reduce, include_self):
    torch.manual_seed(0)
    model = Scatter(reduce, include_self)
    x = _x()
    check_pass(model, params={"fc.weight", "fc.bias"}, inputs=(x,))
    assert torch.equal(model(x), x)


@pytest.mark.parametrize("options", [dict(in_place=True), dict(cast=True),
                                     dict(in_place=True, cast=True)])
def test_in_place_and_cast_accumulators(options):
    torch.manual_seed(0)
    model = Scatter("sum", True, **options)
    x = _x()
    check_pass(model, params={"fc.weight", "fc.bias"}, inputs=(x,))
    assert torch.equal(model(x), x)


@pytest.mark.parametrize("include_self", [True, False])
@pytest.mark.parametrize("reduce", REDUCES)
@pytest.mark.parametrize("base", [1.0, -1.0])
def test_scattering_into_a_nonzero_tensor_is_left_alone(reduce, include_self, base):
    # rows nothing is scattered to keep `base`; with include_self the scattered rows
    # reduce `base` too (amax of zeros and -1 is 0 there, but -1 stays elsewhere)
    torch.manual_seed(0)
    model = Scatter(reduce, include_self, base=base)
    x = _x()
    report = check_pass(model, params=set(), inputs=(x,))
    assert report.skipped
    with torch.no_grad():  # the branch really is not zero with fc zeroed
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        assert not torch.equal(model(x), x)


def test_a_written_zeros_buffer_is_not_fresh_zeros():
    # `zeros.add_(g(x))` then a cast: the cast holds g(x), not zeros, so `fc` alone does not
    # make the branch zero; the zero search goes into the buffer's writes and zeroes `g` too
    class Written(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.g = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            acc = torch.zeros_like(x)
            acc.add_(self.g(x))
            into = acc.to(torch.float32)
            index = torch.zeros(3, 4, dtype=torch.long)
            return x + into.scatter_reduce(0, index, self.fc(x[:3]), "sum")

    torch.manual_seed(0)
    x = _x()
    model = Written()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    check_pass(model, params={"fc.weight", "fc.bias", "g.weight", "g.bias"}, inputs=(x,))
    assert torch.equal(model(x), x)
    for layer in ("fc", "g"):  # each is needed: with its values back the merge is not x
        with torch.no_grad():
            for name in ("weight", "bias"):
                model.get_parameter(f"{layer}.{name}").copy_(before[f"{layer}.{name}"])
            assert not torch.equal(model(x), x), layer
            for name in ("weight", "bias"):
                model.get_parameter(f"{layer}.{name}").zero_()


def test_a_zeros_buffer_written_with_data_is_not_fresh_zeros():
    # `zeros.add_(x)`: the buffer holds the input itself; zeroing fc cannot make it zero
    class WrittenWithData(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            acc = torch.zeros_like(x)
            acc.add_(x * 2)
            into = acc.to(torch.float32)
            index = torch.zeros(3, 4, dtype=torch.long)
            return x + into.scatter_reduce(0, index, self.fc(x[:3]), "sum")

    torch.manual_seed(0)
    x = _x()
    model = WrittenWithData()
    report = check_pass(model, params=set(), inputs=(x,))
    assert report.skipped, report.table()
    with torch.no_grad():  # and zeroing fc really does not make the merge its skip
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        assert not torch.equal(model(x), x)
