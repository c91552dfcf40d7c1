"""Wrappers the pass sees through (DataParallel, torch.compile) in one process."""

from __future__ import annotations

import torch
from torch import nn

from zeta_fx import zero_init_pass
from zeta_fx.models import SEResNet
from zeta_fx.capture.wrappers import unwrap

EXPECTED = [f"blocks.{i}.bn3.{k}" for i in range(6) for k in ("weight", "bias")]


def test_data_parallel_is_traced_through_with_the_users_names():
    torch.manual_seed(0)
    wrapped = nn.DataParallel(SEResNet())  # no GPU: DataParallel just calls the module
    before = {k: v.clone() for k, v in wrapped.module.state_dict().items()}
    report = zero_init_pass(wrapped)
    assert report.params == EXPECTED and report.modules == [p[:-7] for p in EXPECTED[::2]]
    for name, value in wrapped.module.state_dict().items():
        assert torch.equal(value, torch.zeros_like(value) if name in EXPECTED else before[name])


def test_plans_cross_data_parallel_in_both_directions():
    torch.manual_seed(0)
    plan = zero_init_pass(SEResNet(), dry_run=True).plan
    wrapped = nn.DataParallel(SEResNet())
    assert plan.apply(wrapped).params == EXPECTED
    assert all(not wrapped.module.get_parameter(p).any() for p in EXPECTED)
    plain = SEResNet()
    prefixed = plan.to_json().replace('"blocks.', '"module.blocks.')
    type(plan).from_json(prefixed).apply(plain)
    assert all(not plain.get_parameter(p).any() for p in EXPECTED)


def test_unwrap_nested_wrappers_reports_the_prefix():
    inner = SEResNet()
    model, prefix = unwrap(nn.DataParallel(torch.compile(inner, backend="eager")))
    assert model is inner and prefix == "module._orig_mod."
