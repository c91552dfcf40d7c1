"""A sum that reads a buffer filled by writes (joins.py ``written``; Layers.read_groups).

``out = torch.zeros_like(x); out[:, :2] = f(x); return x + out``: the merge's second operand
is the buffer itself, with no op in between. It is followed into the graph through its last
write, while the proof checks the buffer as the merge reads it: a write through a view of
``x.clone()`` leaves the rest of ``x`` there, and must never be proven zero. Judged by
running the model.
"""

from __future__ import annotations

import torch
from torch import nn

from claims import check_pass, params_of, snapshot
from zeta_fx import zero_init_pass


class TwoSliceWrites(nn.Module):
    """Two layers each fill half of a zeros buffer that the merge reads directly."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        out = torch.zeros_like(x)
        out[:, :2] = self.fc1(x)[:, :2]
        out[:, 2:] = self.fc2(x)[:, 2:]
        return x + out


class CopyInto(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        out = x.new_zeros(x.shape)
        out.copy_(self.fc(x))
        return x + out


class ZerosViewWrite(nn.Module):
    """A zeros buffer written through a view of half of it: the other half stays zero."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        out = torch.zeros_like(x)
        out[:, :2].copy_(self.fc(x)[:, :2])
        return x + out


class CloneSliceWrite(nn.Module):
    """Half of ``x.clone()`` overwritten: the merge adds ``x`` to (a copy of) ``x``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        out = x.clone()
        out[:, :2] = self.fc(x)[:, :2]
        return x + out


class CloneViewCopy(nn.Module):
    """The same, written through a view of the clone (the write's own node reads only the
    view): checking the write alone would prove it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        out = x.clone()
        half = out[:, :2]
        half.copy_(self.fc(x)[:, :2])
        return x + out


class OnesSliceWrite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        out = torch.ones_like(x)
        out[:, :2] = self.fc(x)[:, :2]
        return x + out


def _needed(model: nn.Module, x: torch.Tensor, before: dict, owners: list[str]) -> None:
    """Restoring any one zeroed module's parameters breaks the identity."""
    for owner in owners:
        module = model.get_submodule(owner)
        saved = {n: p.detach().clone() for n, p in module.named_parameters()}
        with torch.no_grad():
            for n, p in module.named_parameters():
                p.copy_(before[f"{owner}.{n}"])
        assert not torch.equal(model(x), x), owner
        with torch.no_grad():
            for n, p in module.named_parameters():
                p.copy_(saved[n])


def test_a_merge_reading_a_filled_zeros_buffer_zeroes_every_writer():
    for cls, owners in ((TwoSliceWrites, ["fc1", "fc2"]), (CopyInto, ["fc"]),
                        (ZerosViewWrite, ["fc"])):
        torch.manual_seed(0)
        model = cls()
        x = torch.randn(3, 4)
        before = snapshot(model)
        params = set().union(*(params_of(o) for o in owners))
        report = check_pass(model, params=params, inputs=(x,), example_inputs=(x,))
        assert sorted(report.modules) == owners, report.table()
        with torch.no_grad():
            assert torch.equal(model(x), x)  # the block is the identity
            y = torch.randn(5, 4) * 100
            assert torch.equal(model(y), y)
            _needed(model, x, before, owners)


def test_a_write_into_a_clone_of_the_fork_is_never_proven():
    for cls in (CloneSliceWrite, CloneViewCopy, OnesSliceWrite):
        torch.manual_seed(0)
        model = cls()
        x = torch.randn(3, 4)
        before = snapshot(model)
        report = zero_init_pass(model, example_inputs=(x,))
        assert report.params == [], (cls.__name__, report.table())
        for name, value in model.state_dict().items():
            assert torch.equal(value, before[name]), name
        reasons = [s.reason for s in report.skipped if s.node != "output"]
        assert reasons, f"{cls.__name__}: the merge has no row"
        assert not any("no branch operand has a parameter" in r for r in reasons), reasons
        assert any("as made" in r or "not zero" in r for r in reasons), reasons


class ScaledBuffer(nn.Module):
    """The branch reads the filled buffer through an op (``out * 2``): the search must go
    into the writes, not take ``zeros_like`` for the branch's value."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        out = torch.zeros_like(x)
        out[:, :2] = self.fc1(x)[:, :2]
        out.index_add_(0, torch.tensor([0, 2]), self.fc2(x)[:2])
        return x + out * 2.0


class UnzeroableWrite(nn.Module):
    """What is written into the zeros buffer (``exp``) is never zero."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        out = torch.zeros_like(x)
        out[:, :2] = torch.exp(self.fc(x)[:, :2])
        return x + out * 2.0


def test_the_search_follows_the_writes_into_a_zeros_buffer():
    torch.manual_seed(0)
    model = ScaledBuffer()
    x = torch.randn(3, 4)
    before = snapshot(model)
    report = check_pass(model, params=params_of("fc1") | params_of("fc2"), inputs=(x,),
                        example_inputs=(x,))
    assert sorted(report.modules) == ["fc1", "fc2"]
    with torch.no_grad():
        assert torch.equal(model(x), x)
        _needed(model, x, before, ["fc1", "fc2"])


def test_a_zeros_buffer_filled_with_what_never_is_zero_says_so():
    torch.manual_seed(0)
    model = UnzeroableWrite()
    x = torch.randn(3, 4)
    before = snapshot(model)
    report = zero_init_pass(model, example_inputs=(x,))
    assert report.params == []
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    reasons = [s.reason for s in report.skipped]
    # before: "no branch operand has a parameter to zero" (zeros_like taken for the value)
    assert not any("no branch operand has a parameter" in r for r in reasons), reasons
    assert any("exp" in r for r in reasons), reasons


class RowFilled(nn.Module):
    """``t[0].fill_(1.0)``: basic indexing of one tensor is a view of its first row, so the
    write reaches the merge (it was taken for a tuple item with a storage of its own)."""

    def __init__(self, source: str) -> None:
        super().__init__()
        self.source = source
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if self.source == "buffer":
            h = torch.zeros_like(x)
            h.copy_(self.fc(x))
        elif self.source == "layer":
            h = self.fc(x)
        else:
            h = self.fc(x) * 2
        h[0].fill_(1.0)
        return x + h


class AddsTheFork(nn.Module):
    """The buffer is filled with ``fc(x)`` and then has ``x`` added: never zero."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        out = torch.zeros_like(x)
        out.copy_(self.fc(x))
        out.add_(x)
        return x + out


class Accumulated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        out = torch.zeros_like(x)
        out.index_put_((torch.tensor([0, 1]),), self.fc(x)[:2], accumulate=True)
        return x + out


def test_a_write_to_a_row_of_the_branch_value_is_seen():
    for model in (RowFilled("buffer"), RowFilled("layer"), RowFilled("op"), AddsTheFork()):
        torch.manual_seed(0)
        x = torch.randn(3, 4)
        before = snapshot(model)
        report = zero_init_pass(model, example_inputs=(x,))
        assert report.params == [], report.table()
        for name, value in model.state_dict().items():
            assert torch.equal(value, before[name]), name
        assert report.skipped, report.table()


def test_an_accumulating_write_into_zeros_is_proven():
    torch.manual_seed(0)
    model = Accumulated()
    x = torch.randn(3, 4)
    before = snapshot(model)
    check_pass(model, params=params_of("fc"), inputs=(x,), example_inputs=(x,))
    with torch.no_grad():
        assert torch.equal(model(x), x)
        _needed(model, x, before, ["fc"])
