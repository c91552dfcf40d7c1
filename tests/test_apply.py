"""Around the write: dry runs that never write, claims checked by substitution before any
write, ``changed`` decided exactly, partial writes that say how to finish, and clear
refusals (dtypes, pruning, shared storage, corrupted plan files) before the first write."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.utils.prune as prune
from torch import nn

import zeta_fx
import zeta_fx.apply
from zeta_fx import (PartialWriteError, PlanFormatError, TiedParameterError,
                     UnsupportedParameterError, VerificationError, ZeroInitPass, ZeroInitPlan,
                     ZetaFxError, zero_init_pass)
from claims import assert_only_zeroed, assert_unchanged, snapshot


class Block(nn.Module):
    """``x + fc2(relu(bn(fc1(x))))`` with a buffer counting calls and RNG use on the skip."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.bn, self.fc2 = nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 4)
        self.drop = nn.Dropout(0.5)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls.add_(1)
        x = x + 0.0 * torch.rand_like(x)  # draws from the global RNG in every mode
        return x + self.fc2(self.drop(torch.relu(self.bn(self.fc1(x)))))


class Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x)))


class Overflow(nn.Module):
    """The branch overflows to inf before its last layer: 0 * inf = NaN at the merge."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return x + self.fc2(torch.exp(self.fc1(x) * 1000.0))


def versions(model: nn.Module) -> dict[str, int]:
    out = {n: t._version for n, t in model.named_parameters(remove_duplicate=False)}
    out.update({n: t._version for n, t in model.named_buffers(remove_duplicate=False)})
    return out


def modes(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


X = (torch.randn(3, 4),)


# -- 1. dry runs never write; the check is by substitution -----------------------------------

def test_dry_run_verify_leaves_every_tensor_counter_mode_and_rng_alone():
    torch.manual_seed(0)
    model = Block().train()
    x = torch.randn(3, 4)
    loss = model(x).square().sum()  # an autograd graph built before the call
    before, vers, train = snapshot(model), versions(model), modes(model)
    rng = torch.get_rng_state()
    report = zero_init_pass(model, dry_run=True, verify=True, example_inputs=(x,))
    assert not report.applied and report.changed
    assert [(r["module"], r["merge"], r["verified"]) for r in report.touched] == [
        ("fc2", "add_1", True)]
    assert_unchanged(model, before)          # parameters and buffers, bit for bit
    assert versions(model) == vers           # not even an in-place write of the same value
    assert modes(model) == train             # training flags restored
    assert torch.equal(torch.get_rng_state(), rng)
    loss.backward()                          # saved tensors were not modified
    assert model.fc2.weight.grad is not None


def test_verify_writes_only_after_every_claim_held():
    torch.manual_seed(0)
    model = Block().train()
    before, vers = snapshot(model), versions(model)
    rng = torch.get_rng_state()
    report = zero_init_pass(model, verify=True, example_inputs=X)
    assert report.applied and report.changed and report.touched[0]["verified"] is True
    assert_only_zeroed(model, before, {"fc2.weight", "fc2.bias"})
    changed_versions = {n for n, v in versions(model).items() if v != vers[n]}
    assert changed_versions == {"fc2.weight", "fc2.bias"}  # buffers: not written at all
    assert torch.equal(torch.get_rng_state(), rng)
    x = torch.randn(5, 4)
    assert torch.equal(model.eval()(x), x)  # the claim, on other inputs too


def test_a_failed_claim_writes_nothing_and_names_merge_module_and_difference():
    torch.manual_seed(0)
    model = Overflow()
    before, vers = snapshot(model), versions(model)
    with pytest.raises(VerificationError) as info:
        zero_init_pass(model, verify=True, example_inputs=(torch.ones(2, 4) * 3,))
    message = str(info.value)
    assert "merge `add` equal its skip `x`" in message and "`fc2`" in message
    assert "largest difference nan" in message and "Nothing was written" in message
    assert_unchanged(model, before)
    assert versions(model) == vers


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_encoder_layer_verifies_and_computes_its_skip(norm_first):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True,
                                       norm_first=norm_first)
    model = nn.Sequential(layer)
    x = torch.randn(2, 3, 8)
    before = snapshot(model)
    dry = zero_init_pass(model, dry_run=True, verify=True, example_inputs=(x,))
    assert [r["verified"] for r in dry.touched] == [True, True]
    assert_unchanged(model, before)
    report = zero_init_pass(model, verify=True, example_inputs=(x,))
    assert {r["module"] for r in report.touched} == {"0.self_attn.out_proj", "0.linear2"}
    model.eval()
    with torch.no_grad():  # the eval fast path, as in the check
        out = model(x)
        skip = x if norm_first else layer.norm2(layer.norm1(x))
    assert torch.equal(out, skip)


def test_transformer_decoder_layer_verifies():
    torch.manual_seed(0)

    class Dec(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dec = nn.TransformerDecoderLayer(8, 2, 16, dropout=0.0, batch_first=True)

        def forward(self, tgt, memory):
            return self.dec(tgt, memory)

    model = Dec()
    tgt, memory = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    report = zero_init_pass(model, verify=True, example_inputs=(tgt, memory))
    assert len(report.touched) == 3 and all(r["verified"] for r in report.touched)
    with torch.no_grad():
        d = model.dec
        assert torch.equal(model.eval()(tgt, memory), d.norm3(d.norm2(d.norm1(tgt))))


def test_composite_check_is_real_a_nan_reaching_the_branch_fails():
    torch.manual_seed(0)
    model = nn.Sequential(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True,
                                                     norm_first=True))
    x = torch.randn(2, 3, 8)
    x[0, 0, 0] = float("nan")  # attention mixes it into every position: 0 * NaN = NaN
    before = snapshot(model)
    with pytest.raises(VerificationError, match=r"zeroing `0.self_attn.out_proj`, `0.linear2` "
                                                r"should make the opaque layer `_0` compute"):
        zero_init_pass(model, verify=True, example_inputs=(x,))
    assert_unchanged(model, before)


# -- 2. `changed` is exact and eager ----------------------------------------------------------

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


# -- 3. partial writes ------------------------------------------------------------------------

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
    monkeypatch.setattr(zeta_fx.apply, "zero_tensor_", second_fails)
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


# -- 4. dtypes --------------------------------------------------------------------------------

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


# -- 5. plan files ----------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["Infinity", "-Infinity", "NaN", "1e999", "4.0", "-4", "true"])
def test_non_finite_or_non_integer_shapes_are_format_errors(bad):
    text = zero_init_pass(Plain(), dry_run=True).plan.to_json(indent=None)
    corrupted = text.replace('"fc2.bias": [4]', f'"fc2.bias": [{bad}]')
    assert corrupted != text
    with pytest.raises(PlanFormatError):
        ZeroInitPlan.from_json(corrupted)


@pytest.mark.parametrize("where", ["top", "entries"])
def test_deep_nesting_is_a_format_error(where):
    deep = "[" * 100_000 + "]" * 100_000
    text = deep if where == "top" else (
        '{"format": "zeta_fx.plan", "version": 1, "rule": "r", "model": "m", "entries": '
        + deep + "}")
    with pytest.raises(PlanFormatError, match="nested too deeply"):
        ZeroInitPlan.from_json(text)


def test_a_good_plan_still_round_trips():
    plan = zero_init_pass(Plain(), dry_run=True).plan
    assert ZeroInitPlan.from_json(plan.to_json()) == plan
    assert json.loads(plan.to_json())["entries"][0]["params"]["fc2.bias"] == [4]


# -- 6. pruning -------------------------------------------------------------------------------

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


# -- 7. storage ties --------------------------------------------------------------------------

def test_a_parameter_viewing_a_target_is_refused_naming_both():
    model = Plain()
    model.probe = nn.Linear(2, 4)  # not used in forward; its weight views fc2.weight
    model.probe.weight = nn.Parameter(model.fc2.weight.detach()[:, :2])
    before, vers = snapshot(model), versions(model)
    for kwargs in ({}, {"dry_run": True}, {"verify": True, "example_inputs": X}):
        with pytest.raises(TiedParameterError, match=r"`fc2.weight`.*`probe.weight`"):
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
