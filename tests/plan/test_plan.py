"""The plan (``zeta_fx.plan``): plain data addressed by FQN, its JSON, and what it refuses.

A plan holds nothing live (no module, tensor or graph), round-trips through JSON and pickle,
and applies to another instance of the same architecture. Corrupted texts are
``PlanFormatError``s; plans written before sites were data (version 1) are still read. The
errors users meet with plan files are also in ``test_bad_inputs.py`` (one test per kind,
as the README lists them).
"""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from torch import nn

from claims import assert_only_zeroed, snapshot
from zeta_fx import PlanFormatError, ZeroInitPlan, zero_init_pass
from zeta_fx.models import GPT

# What zeta_fx wrote for ``small_resnet`` before sites were data (plan version 1).
V1_PLAN = (
    '{"format": "zeta_fx.plan", "version": 1, "rule": "residual_branch_last", "model": '
    '"SEResNet", "entries": [{"module": "blocks.0.bn3", "module_type": "BatchNorm2d", '
    '"params": {"blocks.0.bn3.weight": [8], "blocks.0.bn3.bias": [8]}, "nodes": '
    '["blocks_0_bn3"], "positions": ["branch into `add` from `stem_2`, skip: identity"], '
    '"rule": "residual_branch_last", "zero_at": ["mul"], "merges": ["add"], "skips": '
    '["stem_2"]}, {"module": "blocks.1.bn3", "module_type": "BatchNorm2d", "params": '
    '{"blocks.1.bn3.weight": [16], "blocks.1.bn3.bias": [16]}, "nodes": ["blocks_1_bn3"], '
    '"positions": ["branch into `add_1` from `blocks_0_relu_2`, skip: projection '
    'blocks.1.downsample"], "rule": "residual_branch_last", "zero_at": ["mul_1"], "merges": '
    '["add_1"], "skips": ["blocks_1_downsample_1"]}]}')


# -- plain data ------------------------------------------------------------------------------
def test_the_plan_is_plain_data():
    plan = zero_init_pass(GPT(n_layer=1), dry_run=True).plan
    assert ZeroInitPlan.from_json(plan.to_json()) == plan
    assert pickle.loads(pickle.dumps(plan)) == plan
    live = (nn.Module, torch.Tensor, torch.fx.Graph, torch.fx.Node)

    def walk(value):
        assert not isinstance(value, live), type(value)
        if isinstance(value, dict):
            for k, v in value.items():
                walk(k), walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)
        elif hasattr(value, "__dataclass_fields__"):
            for name in value.__dataclass_fields__:
                walk(getattr(value, name))
        else:
            assert isinstance(value, (str, int, float, type(None))), type(value)

    walk(plan)


def test_dry_run_changes_nothing_and_plan_round_trips(small_resnet):
    model = small_resnet()
    before = snapshot(model)
    report = zero_init_pass(model, dry_run=True)
    assert not report.applied and report.changed
    assert "would zero (dry run)" in str(report)
    assert_only_zeroed(model, before, set())
    text = report.plan.to_json()
    plan = ZeroInitPlan.from_json(text)
    assert plan == report.plan
    other = small_resnet()
    before_other = snapshot(other)
    applied = plan.apply(other)
    assert applied.modules == report.modules
    assert_only_zeroed(other, before_other, set(report.params))


def test_version_1_plans_are_still_read(small_resnet):
    plan = zero_init_pass(small_resnet(), dry_run=True).plan
    old = ZeroInitPlan.from_json(V1_PLAN)
    assert (old.rule, old.model, old.init, old.seed) == (plan.rule, plan.model, "zero", None)
    assert old.modules == plan.modules and old.params == plan.params
    assert [e.action for e in old.entries] == [e.action for e in plan.entries]

    def sites(p):
        return [(s.kind, s.node, s.merge, s.skip, s.zero_at, s.position)
                for e in p.entries for s in e.sites]

    assert sites(old) == sites(plan)  # fork and skip kind were not recorded then
    model = small_resnet()
    before = snapshot(model)
    assert old.apply(model).params == plan.params
    assert_only_zeroed(model, before, set(plan.params))


# -- format errors ---------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["Infinity", "-Infinity", "NaN", "1e999", "4.0", "-4", "true"])
def test_non_finite_or_non_integer_shapes_are_format_errors(bad, small_resnet):
    text = zero_init_pass(small_resnet(), dry_run=True).plan.to_json(indent=None)
    corrupted = text.replace('"blocks.0.bn3.bias": [8]', f'"blocks.0.bn3.bias": [{bad}]')
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


def test_a_good_plan_still_round_trips(small_resnet):
    plan = zero_init_pass(small_resnet(), dry_run=True).plan
    assert ZeroInitPlan.from_json(plan.to_json()) == plan
    assert json.loads(plan.to_json())["entries"][0]["params"]["blocks.0.bn3.bias"] == [8]



def test_a_callable_plan_off_the_branches_round_trips():
    """Its figures hold depth -1 (no residual branch): a figure may be a negative integer."""
    from zeta_fx import init_pass

    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    fill = lambda tensor, site: tensor.fill_(0.5)  # noqa: E731
    plan = init_pass(model, rule="output_layer", init=fill, dry_run=True).plan
    assert dict(plan.entries[0].action.figures)["depth"] == -1
    again = ZeroInitPlan.from_json(plan.to_json())
    assert again == plan
    again.apply(model, init=fill)
    assert bool((model[1].weight == 0.5).all())
