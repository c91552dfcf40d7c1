"""Apply (``zeta_fx.apply``): resolve and validate every target, then write in place.

``changed`` is decided exactly and before writing; a write failing part-way says what was
written and how to finish; targets that cannot be written (dtypes, pruning, ties, shared
storage) are refused before the first write. Verification by substitution is in
``test_verify.py``; plan files (JSON, format errors) in ``test_plan.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.utils.prune as prune
from torch import nn

from claims import assert_only_zeroed, assert_unchanged, snapshot, versions
import zeta_fx.apply.write
from zeta_fx import (PartialWriteError, TiedParameterError, UnsupportedParameterError,
                     ZeroInitPass, ZetaFxError, zero_init_pass)
from zeta_fx.models import GPT
from zeta_fx.rules import ByName


class Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x)))


X = (torch.randn(3, 4),)


# -- 1. `changed` is exact and eager --------------------------------------------------------

@pytest.mark.parametrize("value, changed", [(1e-30, True), (float("nan"), True),
                                            (1e-45, True), (-0.0, False), (0.0, False)])
def test_changed_is_exact_and_decided_before_writing(value, changed):
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.zero_()
        model[1].weight[0, 0] = value
    dry = zero_init_pass(model, rule="output_layer", dry_run=True)
    assert dry.changed is changed
    applied = dry.plan.apply(model)
    assert applied.changed is changed
    assert dry.changed is changed  # not re-read after the write


def test_zero_init_pass_reports_modified_for_a_tiny_weight():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.fill_(1e-30)
        model[1].bias.zero_()
    gm = torch.fx.symbolic_trace(model)
    zero = ZeroInitPass(rule="output_layer")
    assert zero(gm).modified is True
    assert zero(gm).modified is False


# -- 2. partial writes ----------------------------------------------------------------------

def test_a_write_failing_midway_says_what_was_written_and_applying_again_completes(monkeypatch):
    torch.manual_seed(0)
    model = Plain()
    plan = zero_init_pass(model, dry_run=True).plan
    calls = []

    def fused_fails(tensors):
        raise RuntimeError("fused kernel unavailable")

    def second_fails(tensor):
        calls.append(tensor)
        if len(calls) == 2:
            raise RuntimeError("device lost")
        with torch.no_grad():
            tensor.zero_()

    monkeypatch.setattr(torch, "_foreach_zero_", fused_fails)
    monkeypatch.setattr(zeta_fx.apply.write, "zero_tensor_", second_fails)
    with pytest.raises(PartialWriteError) as info:
        plan.apply(model)
    assert isinstance(info.value, ZetaFxError)
    message = str(info.value)
    assert "`fc2.weight`" in message and "`fc2.bias`" in message and "device lost" in message
    assert "1 of 2 planned tensors were written" in message and "apply the plan again" in message
    assert info.value.written == ["fc2.weight"] and info.value.unwritten == ["fc2.bias"]
    assert not model.fc2.weight.any() and model.fc2.bias.any()
    monkeypatch.undo()
    plan.apply(model)
    assert not model.fc2.weight.any() and not model.fc2.bias.any()


# -- 3. dtypes ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.float8_e8m0fnu])
def test_targets_that_cannot_hold_a_zero_are_refused_before_writing(dtype):
    plan = zero_init_pass(Plain(), dry_run=True).plan
    model = Plain()
    model.fc2.weight = nn.Parameter(torch.ones(4, 4).to(dtype), requires_grad=False)
    before = snapshot(model)
    with pytest.raises(UnsupportedParameterError) as info:
        plan.apply(model)
    message = str(info.value)
    assert "`fc2.weight`" in message and "module `fc2`" in message and str(dtype) in message
    assert "nothing was written" in message
    assert_unchanged(model, before)  # fc2.bias (float) was not written either


def test_float8_targets_are_zeroed_exactly():
    plan = zero_init_pass(Plain(), dry_run=True).plan
    model = Plain()
    model.fc2.weight = nn.Parameter(torch.randn(4, 4).to(torch.float8_e4m3fn),
                                    requires_grad=False)
    assert plan.apply(model).changed
    assert model.fc2.weight.dtype == torch.float8_e4m3fn
    assert not model.fc2.weight.view(torch.uint8).bitwise_and(0x7F).any()


# -- 4. pruning -----------------------------------------------------------------------------

def test_a_pruned_layer_is_refused_with_the_prune_remove_hint():
    plan = zero_init_pass(Plain(), dry_run=True).plan
    model = Plain()
    prune.l1_unstructured(model.fc2, "weight", amount=0.5)
    before = snapshot(model)
    with pytest.raises(UnsupportedParameterError) as info:
        plan.apply(model)
    message = str(info.value)
    assert "pruned" in message and "torch.nn.utils.prune.remove(" in message
    assert "'weight'" in message and "spectral" not in message
    assert_unchanged(model, before)
    # Whether the analysis refuses the pruned layer or leaves it alone, it is never zeroed.
    try:
        report = zero_init_pass(model)
    except UnsupportedParameterError as exc:
        assert "torch.nn.utils.prune.remove(" in str(exc)
    else:
        assert "fc2" not in report.modules
    assert_unchanged(model, before)
    prune.remove(model.fc2, "weight")
    assert plan.apply(model).params == ["fc2.weight", "fc2.bias"]


# -- 5. ties and storage --------------------------------------------------------------------

def test_tied_check_in_dry_run_and_by_name():
    model = GPT(n_layer=1, tie_weights=True)
    with pytest.raises(TiedParameterError, match="wte.weight"):
        zero_init_pass(model, rule="output_layer", dry_run=True)
    with pytest.raises(TiedParameterError, match="lm_head.weight"):
        zero_init_pass(model, rule=ByName("wte"))


def test_a_parameter_viewing_a_target_is_refused_naming_both():
    model = Plain()
    model.probe = nn.Linear(2, 4)  # not used in forward; its weight views fc2.weight
    model.probe.weight = nn.Parameter(model.fc2.weight.detach()[:, :2])
    before, vers = snapshot(model), versions(model)
    for kwargs in ({}, {"dry_run": True}, {"verify": True, "example_inputs": X}):
        with pytest.raises(TiedParameterError,
                           match=r"`fc2.weight` shares storage.*`probe.weight`"):
            zero_init_pass(model, **kwargs)
    assert_unchanged(model, before)
    assert versions(model) == vers
    report = zero_init_pass(model, allow_tied=True, verify=True, example_inputs=X)
    assert report.applied and not model.probe.weight.any()  # the user asked for both


def test_a_buffer_sharing_storage_is_refused():
    model = Plain()
    model.register_buffer("shadow", model.fc2.bias.detach()[1:3])
    before = snapshot(model)
    with pytest.raises(TiedParameterError, match=r"`fc2.bias`.*buffer `shadow`"):
        zero_init_pass(model)
    assert_unchanged(model, before)


def test_disjoint_slices_of_one_storage_are_not_ties():
    model = Plain()
    flat = torch.randn(32)
    model.fc2.weight = nn.Parameter(flat[:16].view(4, 4))
    model.fc1.weight = nn.Parameter(flat[16:].view(4, 4))
    before = snapshot(model)
    report = zero_init_pass(model, verify=True, example_inputs=X)
    assert report.params == ["fc2.weight", "fc2.bias"]
    assert_only_zeroed(model, before, {"fc2.weight", "fc2.bias"})

