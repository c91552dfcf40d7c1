"""Names users know (issue 21): timm's and torchvision's rule names, uncalled initialiser
factories, and scoping names (``leaf_modules=``, ``within=``, ``--leaf``, ``--focus``) that
match nothing — each an error that lists the nearest names and leaves the model as it was."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from zeta_fx import init_pass, inits, zero_init_pass
from zeta_fx.cli import main
from zeta_fx.errors import UnknownModuleError, UnknownRuleError
from zeta_fx.models import GPT
from zeta_fx.rules import OutputLayer, ResidualBranchLast


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(model, before):
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("alias", ["zero_init_last", "zero_init_residual"])
def test_library_names_run_residual_branch_last_and_the_report_says_so(alias):
    torch.manual_seed(0)
    model = GPT(n_layer=2)
    report = zero_init_pass(model, rule=alias)
    expected = zero_init_pass(GPT(n_layer=2), rule="residual_branch_last", dry_run=True)
    assert report.modules == expected.modules
    assert report.plan.rule == "residual_branch_last"
    assert "residual_branch_last" in str(report)


def test_torchvision_zero_init_residual_alias_zeroes_the_same_bn_as_torchvision():
    torchvision = pytest.importorskip("torchvision")
    ours = torchvision.models.resnet18()
    report = zero_init_pass(ours, rule="zero_init_residual")
    theirs = torchvision.models.resnet18(zero_init_residual=True)
    zeroed = sorted(n for n, p in theirs.named_parameters() if n.endswith("bn2.weight")
                    and not p.any())
    assert sorted(p for p in report.params if p.endswith(".weight")) == zeroed


def test_unknown_rule_suggests_the_nearest_name_alias_included():
    with pytest.raises(UnknownRuleError, match="Did you mean 'zero_init_last'"):
        zero_init_pass(GPT(n_layer=1), rule="zero_init_lst")


@pytest.mark.parametrize("factory, name", [(inits.scaled_normal, "scaled_normal(std=0.02)"),
                                           (inits.fixup, "fixup()")])
def test_uncalled_factory_is_called_with_its_defaults(factory, name):
    model = GPT(n_layer=2)
    report = init_pass(model, init=factory, seed=0)
    assert report.plan.init == name
    assert report.params


def test_initialiser_class_needing_arguments_is_refused_before_anything_runs():
    model = GPT(n_layer=1)
    before = _state(model)
    with pytest.raises(TypeError, match=r"init=Custom\(\.\.\.\)"):
        init_pass(model, init=inits.Custom)
    assert _same(model, before)


@pytest.mark.parametrize("leaf, nearest", [("h.0.atn", "'h.0.attn'"),
                                           ("blocks.*", "'wte'"),
                                           (nn.MultiheadAttention, "")])
def test_leaf_modules_that_match_nothing_list_the_nearest(leaf, nearest):
    model = GPT(n_layer=2)
    before = _state(model)
    with pytest.raises(UnknownModuleError, match="leaf_modules") as info:
        zero_init_pass(model, leaf_modules=[leaf])
    assert nearest in str(info.value) and "nothing was traced or written" in str(info.value)
    assert _same(model, before)


def test_within_that_matches_nothing_is_an_error_also_inside_composed_rules():
    model = GPT(n_layer=2)
    before = _state(model)
    with pytest.raises(UnknownModuleError, match=r"within=.*'h\.3'.*nearest: 'h\.1'"):
        zero_init_pass(model, rule=OutputLayer() | ResidualBranchLast(within="h.3"))
    assert _same(model, before)
    # a real prefix still works
    assert zero_init_pass(model, rule=ResidualBranchLast(within="h.1")).modules == \
        ["h.1.attn.c_proj", "h.1.mlp.c_proj"]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_leaf_and_focus_typos_list_the_nearest(capsys, tmp_path):
    code, _, err = run(capsys, "plan", "zeta_fx.models:GPT", "--kw", "n_layer=2",
                       "--leaf", "h.0.mpl")
    assert code == 2 and "--leaf: 'h.0.mpl' names no module of GPT; nearest: 'h.0.mlp'" in err
    code, _, err = run(capsys, "plan", "zeta_fx.models:GPT", "--kw", "n_layer=2",
                       "--focus", "h.7", "--draw", str(tmp_path / "g.dot"))
    assert code == 2 and "--focus: 'h.7'" in err and "'h.1'" in err
    assert not (tmp_path / "g.dot").exists()


def test_cli_focus_without_draw_is_an_error(capsys):
    code, out, err = run(capsys, "plan", "zeta_fx.models:GPT", "--kw", "n_layer=2",
                         "--focus", "h.0")
    assert code == 2 and out == "" and "add --draw OUT.svg" in err


def test_cli_rules_lists_the_aliases(capsys):
    code, out, _ = run(capsys, "rules")
    assert code == 0 and "zero_init_last" in out and "alias of residual_branch_last" in out
