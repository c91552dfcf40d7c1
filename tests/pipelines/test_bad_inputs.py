"""Bad and awkward inputs: one test per kind.

Each checks the exception class AND what its message tells the user (what, where, what to
do), and that the model is bit-identical afterwards; or, where there is a sensible result,
that it was produced. The README's "Errors" section lists these kinds with the messages.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import fx, nn

from claims import assert_unchanged, snapshot
from zeta_fx import (CaptureError, NotAModuleError, NoWeightError, PlanFormatError,
                     PlanMismatchError, TiedParameterError, UnknownRuleError,
                     UnsupportedParameterError, ZeroInitPass, ZeroInitPlan, ZetaFxError,
                     zero_init_pass)
from zeta_fx.models import GPT
from zeta_fx.utils import init_zero_


class Block(nn.Module):
    """x + fc2(relu(fc1(x))): the pass zeroes fc2."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.relu(self.fc1(x)))


class Net(nn.Module):
    def __init__(self, width: int = 8, depth: int = 2) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(Block(width) for _ in range(depth)))
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))


def test_not_a_module() -> None:
    with pytest.raises(NotAModuleError, match=r"expects an nn.Module or a torch.fx.GraphModule, "
                                              r"got collections.OrderedDict") as info:
        zero_init_pass(Net().state_dict())
    assert isinstance(info.value, TypeError) and isinstance(info.value, ZetaFxError)
    assert "pass the model itself" in str(info.value)


def test_plan_applied_to_not_a_module() -> None:
    plan = zero_init_pass(Net(), dry_run=True).plan
    with pytest.raises(NotAModuleError, match="a plan applies to an nn.Module, got dict"):
        plan.apply({"blocks.0.fc2.weight": torch.ones(8, 8)})


def test_unknown_rule_name() -> None:
    model = Net()
    before = snapshot(model)
    with pytest.raises(UnknownRuleError) as info:
        zero_init_pass(model, rule="residual_last_branch")
    text = str(info.value)
    assert "unknown rule 'residual_last_branch'" in text
    assert "Did you mean 'residual_branch_last'?" in text
    assert "Valid rules:" in text and "output_layer" in text
    assert isinstance(info.value, KeyError)
    assert_unchanged(model, before)


def test_rule_of_the_wrong_type() -> None:
    with pytest.raises(TypeError, match="rule must be a rule name or a zeta_fx.rules.Rule, got int"):
        zero_init_pass(Net(), rule=42)


class DataDependent(nn.Module):
    """Python control flow on a tensor value: symbolic tracing cannot follow it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.fc(x)
        return x


class HasUntraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = Block()
        self.gate = DataDependent()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.block(x))


def test_untraceable_model_without_example_inputs() -> None:
    model = HasUntraceable()
    before = snapshot(model)
    with pytest.raises(CaptureError) as info:
        zero_init_pass(model)
    text = str(info.value)
    assert "symbolic tracing failed in `gate` (DataDependent)" in text
    assert "TraceError" in text                       # the cause
    assert "leaf_modules=[DataDependent]" in text     # what to do
    assert "example_inputs" in text
    assert_unchanged(model, before)


def test_untraceable_submodule_marked_as_leaf_works() -> None:
    model = HasUntraceable()
    report = zero_init_pass(model, leaf_modules=["gate"])
    assert report.params == ["block.fc2.weight", "block.fc2.bias"]


class TakesAFlag(nn.Module):
    """A non-tensor argument used in control flow."""

    def __init__(self) -> None:
        super().__init__()
        self.block = Block()

    def forward(self, x: torch.Tensor, mode: str = "train") -> torch.Tensor:
        if mode == "train":
            return self.block(x)
        return x


def test_non_tensor_input_in_control_flow() -> None:
    model = TakesAFlag()
    before = snapshot(model)
    with pytest.raises(CaptureError, match=r"the model's own forward \(TakesAFlag\)") as info:
        zero_init_pass(model)
    assert "example_inputs=(...)" in str(info.value)
    assert "leaf_modules" not in str(info.value)  # the root cannot be a leaf of its own trace
    assert_unchanged(model, before)


def test_uninitialised_lazy_modules() -> None:
    class Lazy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.LazyLinear(8), nn.LazyLinear(8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.fc2(torch.relu(self.fc1(x)))

    model = Lazy()
    with pytest.raises(UnsupportedParameterError) as info:
        zero_init_pass(model)
    text = str(info.value)
    assert "`fc1.weight` is an uninitialised lazy parameter" in text
    assert "run one forward pass" in text and "nothing was written" in text
    # The sensible path: materialise, then the pass works.
    model(torch.randn(2, 8))
    assert zero_init_pass(model).params == ["fc2.weight", "fc2.bias"]
    assert not model.fc2.weight.any()


def test_tied_parameters() -> None:
    model = GPT(n_layer=1, tie_weights=True)
    before = snapshot(model)
    with pytest.raises(TiedParameterError) as info:
        zero_init_pass(model, rule="output_layer")
    text = str(info.value)
    assert "`lm_head.weight` is tied to `wte.weight`" in text
    assert "allow_tied=True" in text and "nothing was written" in text
    assert_unchanged(model, before)
    # Opting in zeroes the one shared tensor.
    report = zero_init_pass(model, rule="output_layer", allow_tied=True)
    assert report.params == ["lm_head.weight"]
    assert not model.wte.weight.any() and model.wte.weight is model.lm_head.weight


def test_weight_norm_parametrization_zeroes_the_magnitude() -> None:
    model = Block()
    torch.nn.utils.parametrizations.weight_norm(model.fc2)
    before = snapshot(model)
    report = zero_init_pass(model)
    assert report.modules == ["fc2"]
    assert report.params == ["fc2.parametrizations.weight.original0", "fc2.bias"]
    weight = model.fc2.weight
    assert torch.isfinite(weight).all() and not weight.any()
    x = torch.randn(4, 8)
    assert torch.equal(model(x), x)
    planned = set(report.params)
    for k, v in model.state_dict().items():
        if k not in planned:
            assert torch.equal(v, before[k]), k
    # Training still works: the gradient reaches g.
    model(x).square().sum().backward()
    g = model.fc2.parametrizations.weight.original0
    assert g.grad is not None and torch.isfinite(g.grad).all()


def test_legacy_weight_norm_hook_zeroes_the_magnitude() -> None:
    model = Block()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.nn.utils.weight_norm(model.fc2)
    report = zero_init_pass(model)
    assert report.params == ["fc2.weight_g", "fc2.bias"]
    assert model.fc2.weight_v.any()
    x = torch.randn(4, 8)
    assert torch.equal(model(x), x)                  # the hook recomputes weight = 0
    assert torch.isfinite(model.fc2.weight).all() and not model.fc2.weight.any()


def test_spectral_norm_parametrization_is_left_alone_with_the_remedy() -> None:
    # W / sigma(W) is never an exact zero: the layer is opaque, its branch left alone
    model = Block()
    torch.nn.utils.parametrizations.spectral_norm(model.fc2)
    before = snapshot(model)
    report = zero_init_pass(model)
    assert report.params == []
    text = " ".join(s.reason for s in report.skipped)
    assert "computed by the parametrization SpectralNorm" in text
    assert "remove_parametrizations(module, 'weight')" in text
    assert_unchanged(model, before)


def test_legacy_spectral_norm_hook_is_left_alone_with_the_remedy() -> None:
    model = Block()
    torch.nn.utils.spectral_norm(model.fc2)
    before = snapshot(model)
    report = zero_init_pass(model)
    assert report.params == []
    text = " ".join(s.reason for s in report.skipped)
    assert "SpectralNorm" in text and "remove_spectral_norm" in text
    assert_unchanged(model, before)


def test_parameters_created_under_inference_mode() -> None:
    with torch.inference_mode():
        model = Net()
    before = snapshot(model)
    with pytest.raises(UnsupportedParameterError) as info:
        zero_init_pass(model)
    text = str(info.value)
    assert "`blocks.0.fc2.weight` (module `blocks.0.fc2`) was created under " \
           "torch.inference_mode()" in text
    assert "build the model outside inference_mode" in text
    assert_unchanged(model, before)


def test_plan_applied_to_a_different_architecture_writes_nothing() -> None:
    plan = zero_init_pass(Net(depth=3), dry_run=True).plan
    other = Net(depth=2)          # blocks.0 and blocks.1 match, blocks.2 is missing
    before = snapshot(other)
    with pytest.raises(PlanMismatchError) as info:
        plan.apply(other)
    text = str(info.value)
    assert "does not fit this `Net`" in text
    assert ("`blocks.2.fc2.weight` (module `blocks.2.fc2`, Linear) is not a parameter of this "
            "model") in text
    assert "nothing was written" in text
    assert_unchanged(other, before)   # atomic: blocks.0/1.fc2 were not zeroed either


def test_plan_with_a_wrong_shape_writes_nothing() -> None:
    plan = zero_init_pass(Net(width=8), dry_run=True).plan
    other = Net(width=4)
    before = snapshot(other)
    with pytest.raises(PlanMismatchError) as info:
        plan.apply(other)
    assert "`blocks.0.fc2.weight` has shape (4, 4), the plan expects (8, 8)" in str(info.value)
    assert "nothing was written" in str(info.value)
    assert_unchanged(other, before)


@pytest.mark.parametrize("text, message", [
    ('{"format": "zeta_fx.plan", "version": 1, "entries": [', "the plan is not valid JSON"),
    ("[1, 2, 3]", 'not a zeta_fx plan: expected a JSON object with "format": "zeta_fx.plan"'),
    ('{"format": "zeta_fx.plan", "version": 99, "rule": "r", "model": "m", "entries": []}',
     "plan version 99 is not supported"),
    ('{"format": "zeta_fx.plan", "version": 1, "rule": "r", "model": "m", '
     '"entries": [{"module": "fc2"}]}', "plan entry 0 (module `fc2`): field `params` is missing"),
    ('{"format": "zeta_fx.plan", "version": 1, "rule": "r", "model": "m", "entries": '
     '[{"module": "fc2", "module_type": "Linear", "params": {"fc2.weight": ["x"]}, '
     '"nodes": [], "positions": [], "rule": "r"}]}',
     "plan entry 0 (module `fc2`): field `params`: a shape holds non-negative integers, got 'x'"),
])
def test_corrupted_plan_file(tmp_path, text: str, message: str) -> None:
    path = tmp_path / "plan.json"
    path.write_text(text)
    with pytest.raises(PlanFormatError) as info:
        ZeroInitPlan.from_json(path.read_text())
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_truncated_plan_file_of_a_real_plan(tmp_path) -> None:
    text = zero_init_pass(Net(), dry_run=True).plan.to_json()
    (tmp_path / "plan.json").write_text(text[: len(text) // 2])
    with pytest.raises(PlanFormatError, match="write plans with ZeroInitPlan.to_json"):
        ZeroInitPlan.from_json((tmp_path / "plan.json").read_text())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models(dtype: torch.dtype) -> None:
    model = Net().to(dtype)
    report = zero_init_pass(model)
    assert report.modules == ["blocks.0.fc2", "blocks.1.fc2"]
    for name, p in model.named_parameters():
        assert p.dtype == dtype and p.requires_grad, name
    assert not model.blocks[0].fc2.weight.any()
    x = torch.randn(4, 8, dtype=dtype)
    assert torch.equal(model.blocks(x), x)            # every block is the identity
    model(x).float().square().sum().backward()
    assert model.blocks[0].fc2.weight.grad.dtype == dtype
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_init_zero_on_a_module_without_weight() -> None:
    relu = nn.ReLU()
    with pytest.raises(NoWeightError) as info:
        init_zero_(relu)
    text = str(info.value)
    assert "torch.nn.modules.activation.ReLU has no `weight` tensor to zero" in text
    assert "exists(layer, 'weight')" in text
    assert isinstance(info.value, TypeError)


def test_init_zero_on_a_tensor() -> None:
    t = torch.ones(3)
    with pytest.raises(NoWeightError, match=r"expects an nn.Module with a `weight`, got Tensor; "
                                            r"to zero a bare tensor use `torch.nn.init.zeros_"):
        init_zero_(t)
    assert torch.equal(t, torch.ones(3))


def test_init_zero_on_a_norm_without_affine() -> None:
    bn = nn.BatchNorm1d(4, affine=False)
    with pytest.raises(NoWeightError, match="BatchNorm1d has no `weight` tensor"):
        init_zero_(bn)


def test_second_run_is_idempotent() -> None:
    model = Net()
    first = zero_init_pass(model)
    assert first.changed and first.applied
    after_first = snapshot(model)
    second = zero_init_pass(model)
    assert second.params == first.params
    assert not second.changed
    assert_unchanged(model, after_first)
    gm = fx.symbolic_trace(Net())
    p = ZeroInitPass()
    assert p(gm).modified is True
    assert p(gm).modified is False


def test_model_with_nothing_to_do() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    before = snapshot(model)
    report = zero_init_pass(model)
    assert report.modules == [] and report.params == [] and report.touched == []
    assert report.skipped == []
    assert not report.changed
    assert "Sequential: rule residual_branch_last found nothing to zero" in str(report)
    assert report.to_dict()["params"] == []
    assert_unchanged(model, before)


def test_model_whose_only_join_is_refused_says_why() -> None:
    class RepVGG(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            return self.a(x) + self.b(x)

    model = RepVGG()
    before = snapshot(model)
    report = zero_init_pass(model)
    assert report.params == []
    assert "found nothing to zero (1 candidate left alone)" in str(report)
    assert "no path is clearly the skip" in report.skipped[0].reason
    assert_unchanged(model, before)


def test_branch_blocked_by_an_unknown_op_names_it() -> None:
    class Clamped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return x + torch.sigmoid(self.fc(x))

    model = Clamped()
    before = snapshot(model)
    report = zero_init_pass(model)
    assert report.params == []
    assert "`torch.sigmoid` at `sigmoid` maps zero to a non-zero value" in report.skipped[0].reason
    assert_unchanged(model, before)


def test_bad_zero_preserving_entry() -> None:
    with pytest.raises(TypeError, match="zero_preserving entries must be functions, method names "
                                        "or nn.Module subclasses; got 3"):
        zero_init_pass(Net(), zero_preserving=[3])


def test_bad_rule_option() -> None:
    from zeta_fx.rules import ResidualBranchLast
    with pytest.raises(ValueError, match="nested must be 'all' or 'outermost', got 'inner'"):
        ResidualBranchLast(nested="inner")


def test_frozen_parameters_are_zeroed_and_stay_frozen() -> None:
    model = Net()
    for p in model.parameters():
        p.requires_grad_(False)
    report = zero_init_pass(model)
    assert report.modules == ["blocks.0.fc2", "blocks.1.fc2"]
    assert not model.blocks[1].fc2.weight.any()
    assert not any(p.requires_grad for p in model.parameters())


def test_dry_run_writes_nothing() -> None:
    model = Net()
    before = snapshot(model)
    report = zero_init_pass(model, dry_run=True)
    assert not report.applied and report.changed
    assert report.params == ["blocks.0.fc2.weight", "blocks.0.fc2.bias",
                             "blocks.1.fc2.weight", "blocks.1.fc2.bias"]
    assert_unchanged(model, before)


def test_plan_json_round_trip_keeps_weight_norm_mapping() -> None:
    def make() -> Block:
        m = Block()
        torch.nn.utils.parametrizations.weight_norm(m.fc2)
        return m

    plan = ZeroInitPlan.from_json(zero_init_pass(make(), dry_run=True).plan.to_json())
    assert json.loads(plan.to_json())["entries"][0]["params"] == {
        "fc2.parametrizations.weight.original0": [8, 1], "fc2.bias": [8]}
    other = make()
    plan.apply(other)
    assert not other.fc2.weight.any()
