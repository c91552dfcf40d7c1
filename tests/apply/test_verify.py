"""Verification (``verify=True``, ``zeta_fx.apply.verify``): every claim checked before any write.

The check evaluates the graph with the zeroed values substituted (nothing is written to do
it): every claimed merge must equal its skip, every output-layer value must be zero. A dry
run with ``verify=True`` leaves every tensor, version counter, training flag and the RNG as
they were; a failed claim writes nothing and names the merge, the module and the
difference; opaque composite leaves (``nn.TransformerEncoderLayer``) are checked too.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from claims import assert_only_zeroed, assert_unchanged, snapshot, versions
from zeta_fx import zero_init_pass
from zeta_fx.errors import ExampleInputsError, VerificationError
from zeta_fx.models import GPT, SEResNet
from zeta_fx.rules import OutputLayer, ResidualBranchLast


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


class Overflow(nn.Module):
    """The branch overflows to inf before its last layer: 0 * inf = NaN at the merge."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return x + self.fc2(torch.exp(self.fc1(x) * 1000.0))


def modes(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


X = (torch.randn(3, 4),)


# -- claims checked by substitution; dry runs never write -----------------------------------

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


def test_verify_seresnet_every_row_verified_and_model_trains_on():
    torch.manual_seed(0)
    model = SEResNet().train()
    before = snapshot(model)
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
    before = snapshot(model)
    with pytest.raises(ExampleInputsError, match=r"example_inputs=\(\.\.\.\).*nothing was written"):
        zero_init_pass(model, verify=True)
    assert_unchanged(model, before)


def test_failed_verification_restores_bit_exactly_and_names_the_node():
    torch.manual_seed(0)
    model = CosBranch()
    before = snapshot(model)
    # Declaring cos zero-preserving is wrong (cos(0) = 1): the check must catch it.
    with pytest.raises(VerificationError) as info:
        zero_init_pass(model, zero_preserving=[torch.cos], verify=True,
                       example_inputs=(torch.randn(3, 4),))
    message = str(info.value)
    # The claim is at the merge: add = x + cos(0) = x + 1, one away from its skip x.
    assert "zeroing `fc2` (node `fc2`) should make merge `add` equal its skip `x`" in message
    assert "largest difference 1" in message
    assert "zero_preserving" in message and "Nothing was written" in message
    assert_unchanged(model, before)
    # Without the wrong declaration the rule leaves the branch alone, and says why.
    report = zero_init_pass(model, verify=True, example_inputs=(torch.randn(3, 4),))
    assert report.touched == [] and "torch.cos" in report.skipped[0].reason
    assert_unchanged(model, before)


def test_state_changed_by_the_check_forward_is_put_back():
    torch.manual_seed(0)
    model = Counter()
    before = snapshot(model)
    report = zero_init_pass(model, verify=True, example_inputs=(torch.randn(2, 4),),
                            leaf_modules=[Tally])
    assert [(r["module"], r["verified"]) for r in report.touched] == [("fc2", True)]
    assert model.tally.calls.item() == 0.0  # the check's forward left no trace
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]) != (name in report.params), name


def test_bad_inputs_fail_with_the_node_and_restore():
    torch.manual_seed(0)
    model = SEResNet()
    before = snapshot(model)
    with pytest.raises(VerificationError, match=r"(?s)failed at node `stem_0`.*example_inputs"):
        zero_init_pass(model, verify=True, example_inputs=(torch.randn(2, 5, 8, 8),))
    assert_unchanged(model, before)
    with pytest.raises(ExampleInputsError, match="takes 1"):
        zero_init_pass(model, verify=True, example_inputs=(torch.randn(1), torch.randn(1)))
    with pytest.raises(ExampleInputsError, match="does not take"):
        zero_init_pass(model, verify=True, example_kwargs={"x": torch.randn(1, 3, 8, 8),
                                                           "y": 1})
    assert_unchanged(model, before)


# -- opaque composite leaves ----------------------------------------------------------------

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

