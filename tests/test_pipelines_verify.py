"""``verify=True``: a forward pass proves every zeroed branch outputs exactly zero."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zeta_fx import zero_init_pass
from zeta_fx.errors import ExampleInputsError, TiedParameterError, VerificationError
from zeta_fx.models import GPT, SEResNet
from zeta_fx.rules import OutputLayer, ResidualBranchLast
from claims import assert_unchanged as _assert_same
from claims import snapshot as _snapshot


class CosBranch(nn.Module):
    """``x + cos(fc2(relu(fc1(x))))``: cos(0) = 1, so zeroing ``fc2`` leaves the branch at 1."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return x + torch.cos(self.fc2(torch.relu(self.fc1(x))))


class Tally(nn.Module):
    """Identity that counts its calls in a buffer (kept a leaf, so it runs only at run time)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls.add_(1)
        return x


class Counter(nn.Module):
    """A residual block whose forward also counts calls in a buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.tally = nn.Linear(4, 4), nn.Linear(4, 4), Tally()

    def forward(self, x):
        return self.tally(x) + self.fc2(torch.relu(self.fc1(x)))


def test_verify_seresnet_every_row_verified_and_model_trains_on():
    torch.manual_seed(0)
    model = SEResNet().train()
    before = _snapshot(model)
    report = zero_init_pass(model, verify=True, example_inputs=(torch.randn(2, 3, 16, 16),))
    rows = report.touched
    assert [r["module"] for r in rows] == [f"blocks.{i}.bn3" for i in range(6)]
    assert all(r["verified"] is True for r in rows)
    assert [r["zero_at"] for r in rows] == ["mul"] + [f"mul_{i}" for i in range(1, 6)]
    assert model.training and all(m.training for m in model.modules())  # mode restored
    for name, value in model.state_dict().items():  # running stats untouched by the check
        if name in report.params:
            assert not value.any(), name
        else:
            assert torch.equal(value, before[name]), name
    table = report.table("github")
    assert "| verified" in table.splitlines()[0] and table.count("| zero ") == 6
    assert report.to_dict()["touched"][0]["verified"] is True


def test_verify_gpt_with_kwargs_and_output_rule():
    torch.manual_seed(0)
    model = GPT(n_layer=2)
    idx = torch.randint(0, 64, (2, 8))
    report = zero_init_pass(model, ResidualBranchLast() | OutputLayer(), verify=True,
                            example_kwargs={"idx": idx})
    assert [(r["module"], r["verified"]) for r in report.touched] == [
        ("h.0.attn.c_proj", True), ("h.0.mlp.c_proj", True), ("h.1.attn.c_proj", True),
        ("h.1.mlp.c_proj", True), ("lm_head", True)]
    assert not model(idx).any()  # the output layer is zero, so the logits are


def test_without_verify_rows_say_unchecked():
    report = zero_init_pass(SEResNet())
    assert {r["verified"] for r in report.touched} == {None}
    assert "verified" not in str(report).splitlines()[0]


def test_verify_without_inputs_is_refused_before_anything():
    model = SEResNet()
    before = _snapshot(model)
    with pytest.raises(ExampleInputsError, match=r"example_inputs=\(\.\.\.\).*nothing was written"):
        zero_init_pass(model, verify=True)
    _assert_same(model, before)


def test_failed_verification_restores_bit_exactly_and_names_the_node():
    torch.manual_seed(0)
    model = CosBranch()
    before = _snapshot(model)
    # Declaring cos zero-preserving is wrong (cos(0) = 1): the check must catch it.
    with pytest.raises(VerificationError) as info:
        zero_init_pass(model, zero_preserving=[torch.cos], verify=True,
                       example_inputs=(torch.randn(3, 4),))
    message = str(info.value)
    # The claim is at the merge: add = x + cos(0) = x + 1, one away from its skip x.
    assert "zeroing `fc2` (node `fc2`) should make merge `add` equal its skip `x`" in message
    assert "largest difference 1" in message
    assert "zero_preserving" in message and "Nothing was written" in message
    _assert_same(model, before)
    # Without the wrong declaration the rule leaves the branch alone, and says why.
    report = zero_init_pass(model, verify=True, example_inputs=(torch.randn(3, 4),))
    assert report.touched == [] and "torch.cos" in report.skipped[0].reason
    _assert_same(model, before)


def test_state_changed_by_the_check_forward_is_put_back():
    torch.manual_seed(0)
    model = Counter()
    before = _snapshot(model)
    report = zero_init_pass(model, verify=True, example_inputs=(torch.randn(2, 4),),
                            leaf_modules=[Tally])
    assert [(r["module"], r["verified"]) for r in report.touched] == [("fc2", True)]
    assert model.tally.calls.item() == 0.0  # the check's forward left no trace
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]) != (name in report.params), name


def test_storage_shared_with_a_zeroed_parameter_is_refused_before_writing():
    torch.manual_seed(0)
    model = Counter()
    model.probe = nn.Linear(4, 4)  # unused in forward; its weight is a view of fc2.weight
    model.probe.weight = nn.Parameter(model.fc2.weight.detach()[:, :])
    before = _snapshot(model)
    with pytest.raises(TiedParameterError, match=r"`fc2.weight` shares storage.*`probe.weight`"):
        zero_init_pass(model, verify=True, example_inputs=(torch.randn(3, 4),),
                       leaf_modules=[Tally])
    _assert_same(model, before)


def test_bad_inputs_fail_with_the_node_and_restore():
    torch.manual_seed(0)
    model = SEResNet()
    before = _snapshot(model)
    with pytest.raises(VerificationError, match=r"(?s)failed at node `stem_0`.*example_inputs"):
        zero_init_pass(model, verify=True, example_inputs=(torch.randn(2, 5, 8, 8),))
    _assert_same(model, before)
    with pytest.raises(ExampleInputsError, match="takes 1"):
        zero_init_pass(model, verify=True, example_inputs=(torch.randn(1), torch.randn(1)))
    with pytest.raises(ExampleInputsError, match="does not take"):
        zero_init_pass(model, verify=True, example_kwargs={"x": torch.randn(1, 3, 8, 8),
                                                           "y": 1})
    _assert_same(model, before)


def test_dry_run_verify_checks_then_undoes():
    torch.manual_seed(0)
    model = SEResNet()
    before = _snapshot(model)
    report = zero_init_pass(model, dry_run=True, verify=True,
                            example_inputs=(torch.randn(1, 3, 8, 8),))
    assert not report.applied and report.changed
    assert all(r["verified"] is True for r in report.touched)
    _assert_same(model, before)
