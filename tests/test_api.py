"""Report, plan, dry run, the FX pass, capture errors, options, and the command line."""

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.infra.pass_base import PassResult

from claims import assert_only_zeroed, snapshot
from zeta_fx import (NotAModuleError, PlanFormatError, PlanMismatchError,
                     UnknownRuleError, ZeroInitPass, ZeroInitPlan, zero_init_pass)
from zeta_fx.cli import main
from zeta_fx.models import GPT, SEResNet
from zeta_fx.rules import OutputLayer, ResidualBranchLast


def small_resnet():
    torch.manual_seed(0)
    return SEResNet(widths=(8, 16), depth=1)


def test_report_rows_columns_footer_and_data():
    model = small_resnet()
    report = zero_init_pass(model)
    assert report.modules == ["blocks.0.bn3", "blocks.1.bn3"]
    assert report.params == ["blocks.0.bn3.weight", "blocks.0.bn3.bias",
                             "blocks.1.bn3.weight", "blocks.1.bn3.bias"]
    row = report.touched[1]
    assert row["node"] == "blocks_1_bn3" and row["type"] == "BatchNorm2d"
    assert row["params"] == {"blocks.1.bn3.weight": [16], "blocks.1.bn3.bias": [16]}
    assert row["elements"] == 32
    assert "into `add_1`" in row["position"] and "projection blocks.1.downsample" in row["position"]
    text = str(report)
    header = text.splitlines()[0].split()
    assert header == ["node", "module", "type", "position", "zeroed", "elements"]
    total = sum(p.numel() for p in model.parameters())
    assert f"48 of {total:,} elements" in text
    data = json.loads(report.to_json())
    assert data["modules"] == report.modules and data["applied"] is True
    assert data["touched"][0]["module"] == "blocks.0.bn3"
    assert report.to_dict()["plan"]["entries"][0]["params"] == {"blocks.0.bn3.weight": [8],
                                                                 "blocks.0.bn3.bias": [8]}


@pytest.mark.parametrize("fmt,marker", [("github", "|"), ("grid", "+===="), ("html", "<table>")])
def test_any_tabulate_format(fmt, marker):
    report = zero_init_pass(small_resnet())
    assert marker in report.table(fmt)
    assert marker in f"{report:{fmt}}"
    with pytest.raises(TypeError):  # presentation is the report's: report.table(fmt)
        zero_init_pass(small_resnet(), tablefmt=fmt)


def test_dry_run_changes_nothing_and_plan_round_trips():
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


def test_plan_on_other_architecture_writes_nothing():
    plan = zero_init_pass(small_resnet(), dry_run=True).plan
    torch.manual_seed(0)
    other = SEResNet(widths=(8, 32), depth=1)  # same names, other shapes
    before = snapshot(other)
    with pytest.raises(PlanMismatchError, match=r"`blocks.1.bn3.weight` has shape \(32,\), the "
                                                r"plan expects \(16,\)") as info:
        plan.apply(other)
    assert "nothing was written" in str(info.value)
    assert_only_zeroed(other, before, set())
    gpt = GPT(n_layer=1)
    with pytest.raises(PlanMismatchError, match="is not a parameter of this model"):
        plan.apply(gpt)


@pytest.mark.parametrize("text", ["{not json", "[]", '{"format": "zeta_fx.plan", "version": 99}',
                                  '{"format": "zeta_fx.plan", "version": 1, "rule": "r", '
                                  '"model": "m", "entries": [{"module": "a"}]}'])
def test_corrupted_plan_text(text):
    with pytest.raises(PlanFormatError):
        ZeroInitPlan.from_json(text)


def test_fx_pass_modified_only_when_values_change():
    model = small_resnet()
    gm = fx.symbolic_trace(model)
    zero_pass = ZeroInitPass(rule="residual_branch_last")
    first = zero_pass(gm)
    assert isinstance(first, PassResult) and first.modified and first.graph_module is gm
    assert zero_pass.report.modules == ["blocks.0.bn3", "blocks.1.bn3"]
    # gm shares the model's parameters: the caller's own weights are the ones zeroed
    assert not model.blocks[0].bn3.weight.any()
    second = zero_pass(gm)
    assert not second.modified and second.graph_module is gm


def test_not_a_module():
    with pytest.raises(NotAModuleError, match="expects an nn.Module or a torch.fx.GraphModule, "
                                              "got builtins.dict"):
        zero_init_pass({"weight": torch.ones(2)})


def test_unknown_rule_lists_names_and_closest_match():
    model = small_resnet()
    before = snapshot(model)
    with pytest.raises(UnknownRuleError) as info:
        zero_init_pass(model, rule="residual_last_branch")
    message = str(info.value)
    assert "Did you mean 'residual_branch_last'?" in message
    assert "output_layer" in message and "residual_branch_last" in message
    assert_only_zeroed(model, before, set())


@fx.wrap
def softclip(x):
    return x * torch.tanh(x.abs())


class Wrapped(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return x + softclip(self.fc(x))


def test_users_declare_opaque_functions_zero_preserving():
    assert zero_init_pass(Wrapped()).modules == []
    model = Wrapped()
    report = zero_init_pass(model, zero_preserving=[softclip])
    assert report.modules == ["fc"]
    x = torch.randn(3, 8)
    assert torch.equal(model(x), x)


def test_rules_compose():
    torch.manual_seed(0)
    both = ResidualBranchLast() | OutputLayer()
    report = zero_init_pass(small_resnet(), rule=both, dry_run=True)
    assert report.modules == ["blocks.0.bn3", "blocks.1.bn3", "head"]
    only_head = zero_init_pass(small_resnet(), rule=both - "residual_branch_last", dry_run=True)
    assert only_head.modules == ["head"]
    none = zero_init_pass(small_resnet(), rule=ResidualBranchLast() & OutputLayer(), dry_run=True)
    assert none.modules == []


def test_logging_not_printing(caplog, capsys):
    import logging
    with caplog.at_level(logging.INFO, logger="zeta_fx"):
        zero_init_pass(small_resnet())
    assert capsys.readouterr().out == ""
    assert any("wrote 4 parameters in 2 modules" in r.message for r in caplog.records)


def test_cli_demo_and_rules(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "== se_resnet: SEResNet" in out and "== gpt: GPT" in out
    assert "blocks.5.bn3" in out and "h.3.mlp.c_proj" in out
    assert main(["rules"]) == 0
    out = capsys.readouterr().out
    assert "residual_branch_last" in out and "output_layer" in out


def test_python_dash_m_runs_the_demo():
    proc = subprocess.run([sys.executable, "-m", "zeta_fx", "demo", "gpt", "--format", "github"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| h_0_attn_c_proj |" in proc.stdout
