"""Planning on the meta device; the JSON plan applied after ``to_empty()`` and init."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from claims import snapshot
from zeta_fx import zero_init_pass
from zeta_fx.errors import ExampleInputsError, UnsupportedParameterError
from zeta_fx.models import GPT, SEResNet
from zeta_fx import ZeroInitPlan
from zeta_fx.rules import OutputLayer, ResidualBranchLast

RULE = ResidualBranchLast() | OutputLayer()


def _init_like_new(model: nn.Module, seed: int) -> None:
    """The model's own init after ``to_empty()``: every module's ``reset_parameters``."""
    torch.manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    for buf_name, buf in model.named_buffers():  # BatchNorm statistics back to their start
        if buf_name.endswith("running_var"):
            buf.fill_(1.0)
        elif buf_name.endswith(("running_mean", "num_batches_tracked")):
            buf.zero_()


def test_planning_a_huge_model_on_meta_allocates_nothing():
    # ~13 G parameters (52 GB in float32): planning it must not touch parameter memory.
    with torch.device("meta"):
        model = GPT(vocab_size=32000, block_size=4096, n_layer=4, n_head=64, dim=16384)
    report = zero_init_pass(model, RULE, dry_run=True)
    assert all(p.is_meta for p in model.parameters())
    assert not report.applied
    expected = [f"h.{i}.{part}.c_proj.{kind}" for i in range(4) for part in ("attn", "mlp")
                for kind in ("weight", "bias")] + ["lm_head.weight"]
    assert report.params == expected
    assert report.plan.entries[0].params["h.0.attn.c_proj.weight"] == (16384, 16384)


@pytest.mark.parametrize("make, rule", [
    (lambda: SEResNet(), "residual_branch_last"),
    (lambda: GPT(n_layer=3), RULE),
], ids=["seresnet", "gpt"])
def test_meta_plan_applies_after_to_empty_and_init(make, rule):
    with torch.device("meta"):
        meta = make()
    text = zero_init_pass(meta, rule, dry_run=True).plan.to_json()

    model = meta.to_empty(device="cpu")
    _init_like_new(model, seed=1)
    before = snapshot(model)
    plan = ZeroInitPlan.from_json(text)
    report = plan.apply(model)

    assert report.applied and report.changed
    after = model.state_dict()
    assert {k for k in plan.params if after[k].any()} == set()
    for name, value in after.items():
        if name not in plan.params:
            assert torch.equal(value, before[name]), name

    # The same plan on a fresh CPU instance zeroes the same set as a direct pass on a twin.
    torch.manual_seed(0)
    fresh = make()
    torch.manual_seed(0)
    twin = make()
    direct = zero_init_pass(twin, rule)
    assert ZeroInitPlan.from_json(text).apply(fresh).params == direct.params
    assert direct.params == plan.params
    for (name, a), b in zip(fresh.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(a, b), name


def test_meta_plan_round_trips_through_json_unchanged():
    with torch.device("meta"):
        plan = zero_init_pass(SEResNet(), dry_run=True).plan
    again = ZeroInitPlan.from_json(plan.to_json())
    assert again == plan
    assert [e.zero_at for e in again.entries] == [e.zero_at for e in plan.entries]
    assert all(z for e in plan.entries for z in e.zero_at)


def test_writing_meta_parameters_is_refused():
    with torch.device("meta"):
        model = SEResNet()
    with pytest.raises(UnsupportedParameterError) as info:
        zero_init_pass(model)
    message = str(info.value)
    assert "blocks.0.bn3.weight" in message and "meta device" in message
    assert "dry_run=True" in message and "to_empty()" in message


def test_verify_on_meta_is_refused_before_anything():
    with torch.device("meta"):
        model = SEResNet()
    with pytest.raises(ExampleInputsError, match="meta device"):
        zero_init_pass(model, verify=True, example_inputs=(torch.randn(1, 3, 8, 8),))
