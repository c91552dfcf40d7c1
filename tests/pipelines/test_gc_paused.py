"""The verbs pause Python's cyclic garbage collector while they run and leave it as the
caller had it: on after a call that succeeded or raised, still off for a caller that had
turned it off. Whether it was paused is observed from inside the user's own forward, which
every capture runs or traces."""
from __future__ import annotations

import gc

import pytest
import torch
from torch import nn

from zeta_fx import gate_residuals, init_pass, zero_init_pass
from zeta_fx.errors import ZetaFxError


SEEN: list[bool] = []  # outside the model: a verb restores what the model holds


class Watched(nn.Module):
    """A residual block that records, each time its forward runs, whether the collector is on."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)
        SEEN.clear()

    def forward(self, x):
        SEEN.append(gc.isenabled())
        return x + self.fc2(torch.relu(self.fc1(x)))


VERBS = {
    "zero_init_pass": lambda m, **kw: zero_init_pass(m, **kw),
    "init_pass": lambda m, **kw: init_pass(m, init="zero", **kw),
    "gate_residuals": lambda m, **kw: gate_residuals(m, **kw),
}


@pytest.mark.parametrize("verb", sorted(VERBS))
@pytest.mark.parametrize("capture", ["symbolic", "export", "concrete"])
def test_collector_paused_inside_and_restored_after(verb, capture):
    model = Watched()
    assert gc.isenabled()
    VERBS[verb](model, capture=capture, example_inputs=(torch.randn(2, 4),))
    assert SEEN and not any(SEEN)
    assert gc.isenabled()
    assert model.fc2.weight.abs().sum() == 0 or verb == "gate_residuals"


def test_collector_back_on_after_an_error():
    model = Watched()
    with pytest.raises(ZetaFxError):
        zero_init_pass(model, rule="no_such_rule")
    with pytest.raises(ZetaFxError):
        zero_init_pass(model, capture="export", example_inputs=(torch.randn(2, 3),))
    assert gc.isenabled()


def test_a_caller_that_paused_it_keeps_it_paused():
    model = Watched()
    gc.disable()
    try:
        zero_init_pass(model, dry_run=True)
        assert not gc.isenabled()
        with pytest.raises(ZetaFxError):
            zero_init_pass(model, rule="no_such_rule")
        assert not gc.isenabled()
    finally:
        gc.enable()
