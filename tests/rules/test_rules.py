"""The rules (``zeta_fx.rules``): residual_branch_last's options, output_layer, adaln_zero,
by_name/by_type/where, scoping, composition and the registry.

Each rule is checked by its exact zeroed set and by running the model; the site a row
carries (``row["site"]``) is checked as data. Ties are refused by apply (``test_apply.py``,
``test_bad_inputs.py``).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from claims import assert_unchanged, check_pass, params_of, snapshot
from zeta_fx import UnknownRuleError, zero_init_pass
from zeta_fx.cli import main
from zeta_fx.models import GPT, DiT, SEResNet, UNet
from zeta_fx.rules import (AdaLNZero, ByName, ByType, OutputLayer, ResidualBranchLast, Where,
                           get_rule, list_rules, register_rule)


# -- residual_branch_last: nested residuals ------------------------------------------------
class Inner(nn.Module):
    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.relu(self.fc1(x)))


class Outer(nn.Module):
    def __init__(self, dim: int = 8, with_proj: bool = True) -> None:
        super().__init__()
        self.inner1, self.inner2 = Inner(dim), Inner(dim)
        self.proj = nn.Linear(dim, dim) if with_proj else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(self.inner2(self.inner1(x)))


def test_nested_residuals_all_by_default():
    torch.manual_seed(0)
    model = Outer()
    check_pass(model, params=params_of("inner1.fc2", "inner2.fc2", "proj"))
    x = torch.randn(3, 8)
    assert torch.equal(model(x), x)
    assert torch.equal(model.inner1(x), x)


def test_nested_residuals_outermost_only():
    torch.manual_seed(0)
    model = Outer()
    report = check_pass(model, ResidualBranchLast(nested="outermost"), params=params_of("proj"))
    nested = [s for s in report.skipped if "nested='outermost'" in s.reason]
    assert len(nested) == 2
    x = torch.randn(3, 8)
    assert torch.equal(model(x), x)
    assert not torch.equal(model.inner1(x), x)
    with pytest.raises(ValueError, match="nested must be"):
        ResidualBranchLast(nested="inner")


def test_outer_branch_ending_in_residual_blocks_is_left_alone():
    model = Outer(with_proj=False)
    report = check_pass(model, params=params_of("inner1.fc2", "inner2.fc2"))
    outer = [s for s in report.skipped if "outside the branch" in s.reason]
    assert len(outer) == 1 and "without passing a layer" in outer[0].reason


# -- output_layer ----------------------------------------------------------------------------
def test_output_layer_classifier_head():
    model = SEResNet().eval()
    check_pass(model, "output_layer", params=params_of("head"))
    assert not model(torch.randn(2, 3, 32, 32)).any()


def test_output_layer_unet_final_conv():
    model = UNet().eval()
    check_pass(model, "output_layer", params=params_of("out.2"))
    assert not model(torch.randn(2, 3, 16, 16), torch.rand(2) * 1000).any()


def test_output_layer_dit_final_linear():
    model = DiT().eval()
    check_pass(model, OutputLayer(), params=params_of("final_layer.linear"))
    out = model(torch.randn(2, 4, 8, 8), torch.rand(2) * 1000, torch.tensor([1, 2]))
    assert out.shape == (2, 4, 8, 8) and not out.any()


# -- adaln_zero ------------------------------------------------------------------------------
DIT_ZEROED = params_of("blocks.0.adaLN_modulation.1", "blocks.1.adaLN_modulation.1",
                       "blocks.2.adaLN_modulation.1", "final_layer.adaLN_modulation.1",
                       "final_layer.linear")


def test_adaln_zero_matches_dits_own_initialisation():
    torch.manual_seed(0)
    model = DiT(depth=3).eval()
    report = check_pass(model, "adaln_zero", params=DIT_ZEROED)
    sites = {row["module"]: row["site"] for row in report.touched}
    assert {m: site["kind"] for m, site in sites.items()} == {
        "blocks.0.adaLN_modulation.1": "adaln", "blocks.1.adaLN_modulation.1": "adaln",
        "blocks.2.adaLN_modulation.1": "adaln", "final_layer.adaLN_modulation.1": "adaln",
        "final_layer.linear": "output"}
    # a modulation layer's own output is what becomes zero; no merge is claimed
    assert all(site["zero_at"] == site["node"] and not site["merge"]
               for site in sites.values() if site["kind"] == "adaln")
    # the timestep/label embedders only shift the conditioning: examined and left alone
    left = {s.module: s.reason for s in report.skipped}
    assert "never scales or gates" in left["t_embedder.2"]
    assert "never scales or gates" in left["y_embedder"]
    # every block is the identity and the model outputs zero, as with DiT's init
    x, c = torch.randn(2, 16, 32), torch.randn(2, 32)
    for block in model.blocks:
        assert torch.equal(block(x, c), x)
    assert not model(torch.randn(2, 4, 8, 8), torch.rand(2) * 1000, torch.tensor([0, 9])).any()


class Renamed(nn.Module):
    """adaLN-Zero with no telling names: found by what the layers do."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(dim, dim), nn.Linear(4, 3 * dim), nn.Linear(dim, 2)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.b(torch.nn.functional.silu(cond)).chunk(3, dim=-1)
        h = torch.nn.functional.layer_norm(x, x.shape[-1:]) * (1 + scale) + shift
        return self.c(x + gate * self.a(h))


def test_adaln_zero_is_derived_from_the_graph_not_from_names():
    model = Renamed()
    report = check_pass(model, "adaln_zero", params=params_of("b", "c"))
    assert [(row["module"], row["site"]["kind"]) for row in report.touched] == [
        ("b", "adaln"), ("c", "output")]
    x = torch.randn(3, 8)
    assert not model(x, torch.randn(3, 4)).any()


def test_adaln_zero_on_unet_leaves_additive_timestep_embedding():
    model = UNet().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = zero_init_pass(model, AdaLNZero())
    # no modulation found: nothing zeroed, not even the output layer, and the report says so
    assert report.params == [] and all(torch.equal(v, before[k])
                                       for k, v in model.state_dict().items())
    assert any(s.reason.startswith("no adaLN modulation found") and "OutputLayer()" in s.reason
               for s in report.skipped)
    assert "no adaLN modulation found" in report.table()
    # composed with output_layer, the output is zeroed
    report = check_pass(model, AdaLNZero() | OutputLayer(), params=params_of("out.2"))
    shifts = [s for s in report.skipped if "never scales or gates" in s.reason]
    assert sorted(s.module for s in shifts) == sorted(
        f"{b}.emb_layers.1" for b in ("down.0", "down.1", "mid_res1", "mid_res2", "up.0", "up.1"))
    assert all("(from `t`)" in s.reason for s in shifts)


class FiLMBlock(nn.Module):
    """Unchunked gate and separate scale linears: adaLN-Zero's rule still finds them."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.scale, self.gate = nn.Linear(4, dim), nn.Linear(4, dim)
        self.out = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = x * (1 + self.scale(cond))
        x = x + self.gate(cond) * self.fc(h)
        return self.out(x)


def test_adaln_zero_without_chunk():
    model = FiLMBlock()
    report = check_pass(model, "adaln_zero", params=params_of("scale", "gate", "out"))
    kinds = {row["module"]: row["site"]["kind"] for row in report.touched}
    assert kinds == {"scale": "adaln", "gate": "adaln", "out": "output"}


@pytest.mark.parametrize("make, roles", [
    (lambda: DiT(depth=3), {"blocks.0.adaLN_modulation.1": ({"shift": 2, "scale": 2, "gate": 2},
                                                            6),
                            "final_layer.adaLN_modulation.1": ({"shift": 1, "scale": 1}, 2)}),
    (Renamed, {"b": ({"shift": 1, "scale": 1, "gate": 1}, 3)}),
    (FiLMBlock, {"gate": ({"gate": 1}, 1), "scale": ({"scale": 1}, 1)}),
], ids=["dit", "renamed", "film"])
def test_adaln_sites_name_each_modulation_role(make, roles):
    """Each modulation layer's site lists the roles its output plays on the data path (one
    per use) and how many chunks it is split into; the prose says the same."""
    report = zero_init_pass(make(), rule="adaln_zero", dry_run=True)
    sites = {row["module"]: row["site"] for row in report.touched}
    for module, (counts, chunks) in roles.items():
        site = sites[module]
        assert {r: site["roles"].count(r) for r in set(site["roles"])} == counts, site
        assert site["chunks"] == chunks, site
        words = ", ".join(f"{n} {r}" for r, n in counts.items())
        assert words in site["position"], site["position"]


# -- ByName / ByType / Where / scoping / combination ------------------------------------
def test_by_name_glob_on_fqns():
    model = GPT(n_layer=2)
    expected = params_of("h.0.attn.c_proj", "h.0.mlp.c_proj", "h.1.attn.c_proj", "h.1.mlp.c_proj")
    check_pass(model, ByName("*.c_proj"), params=expected)
    with pytest.raises(ValueError, match="glob"):
        ByName()
    typo = zero_init_pass(GPT(n_layer=1), rule=ByName("*.cproj"), dry_run=True)
    assert typo.params == []
    assert [s.reason for s in typo.skipped] == ["no module of `GPT` matches ByName('*.cproj')"]


def test_by_type_batchnorm():
    model = SEResNet(depth=1)
    bns = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) > 5
    check_pass(model, ByType(nn.BatchNorm2d), params=params_of(*bns))
    with pytest.raises(TypeError, match="nn.Module subclasses"):
        ByType("BatchNorm2d")


def test_by_type_multihead_attention_zeroes_out_proj_only():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            return self.attn(x, x, x)[0]

    check_pass(Net(), ByType(nn.MultiheadAttention), params=params_of("attn.out_proj"))


def test_where_predicate_and_scoping():
    model = GPT(n_layer=3)
    rule = Where(lambda fqn, m: isinstance(m, nn.Linear) and fqn.endswith("c_fc"),
                 within="h.1")
    report = check_pass(model, rule, params=params_of("h.1.mlp.c_fc"))
    outside = [s for s in report.skipped if "outside within='h.1'" in s.reason]
    assert sorted(s.module for s in outside) == ["h.0.mlp.c_fc", "h.2.mlp.c_fc"]


def test_scope_exclude_glob_and_prefix():
    model = GPT(n_layer=2)
    rule = ResidualBranchLast(exclude=["h.0", "*.mlp"])
    report = check_pass(model, rule, params=params_of("h.1.attn.c_proj"))
    reasons = {s.module: s.reason for s in report.skipped if "excluded by" in s.reason}
    assert set(reasons) == {"h.0.attn.c_proj", "h.0.mlp.c_proj", "h.1.mlp.c_proj"}
    assert "exclude='h.0'" in reasons["h.0.attn.c_proj"]
    assert "exclude='*.mlp'" in reasons["h.1.mlp.c_proj"]
    scoped = get_rule("residual_branch_last", within="h.1.")  # options pass through by name
    assert scoped.name == "residual_branch_last[within='h.1']"
    assert zero_init_pass(GPT(n_layer=2), rule=scoped, dry_run=True).modules == [
        "h.1.attn.c_proj", "h.1.mlp.c_proj"]
    with pytest.raises(TypeError, match="exclude holds"):
        OutputLayer(exclude=[None])


def test_combinations_union_intersection_difference():
    model = UNet()
    both = zero_init_pass(model, rule=ByName("out.*") | "residual_branch_last", dry_run=True)
    assert set(both.modules) == {"out.0", "out.2", "down.0.out_layers.3", "down.1.out_layers.3",
                                 "mid_res1.out_layers.3", "mid_attn.proj_out",
                                 "mid_res2.out_layers.3", "up.0.out_layers.3",
                                 "up.1.out_layers.3"}
    convs = ResidualBranchLast() & ByType(nn.Conv1d)
    assert zero_init_pass(model, rule=convs, dry_run=True).modules == ["mid_attn.proj_out"]
    minus = ResidualBranchLast() - ByName("up.*")
    assert zero_init_pass(model, rule=minus, dry_run=True).modules == [
        "down.0.out_layers.3", "down.1.out_layers.3", "mid_res1.out_layers.3",
        "mid_attn.proj_out", "mid_res2.out_layers.3"]


def test_rules_compose(small_resnet):
    torch.manual_seed(0)
    both = ResidualBranchLast() | OutputLayer()
    report = zero_init_pass(small_resnet(), rule=both, dry_run=True)
    assert report.modules == ["blocks.0.bn3", "blocks.1.bn3", "head"]
    only_head = zero_init_pass(small_resnet(), rule=both - "residual_branch_last", dry_run=True)
    assert only_head.modules == ["head"]
    none = zero_init_pass(small_resnet(), rule=ResidualBranchLast() & OutputLayer(), dry_run=True)
    assert none.modules == []


# -- registry --------------------------------------------------------------------------------
def test_registry_lists_rules_with_descriptions(capsys):
    rules = list_rules()
    assert {"residual_branch_last", "output_layer", "adaln_zero"} <= set(rules)
    assert all(desc and "\n" not in desc for desc in rules.values())
    assert isinstance(get_rule("adaln_zero"), AdaLNZero)
    assert main(["rules"]) == 0
    out = capsys.readouterr().out
    for name, desc in rules.items():
        assert any(line.startswith(name) and desc in line for line in out.splitlines())


def test_registry_decorator_passes_options_through():
    @register_rule
    class AttnOut(ByName):
        name = "test_attention_out"
        description = "attention output projections"

        def __init__(self, **options):
            super().__init__("*.attn.c_proj", **options)
            self.name = "test_attention_out" + self.name.partition("]")[0].partition(")")[2]

    try:
        assert list_rules()["test_attention_out"] == "attention output projections"
        report = zero_init_pass(GPT(n_layer=2), rule=get_rule("test_attention_out", within="h.1"),
                                dry_run=True)
        assert report.modules == ["h.1.attn.c_proj"]
        with pytest.raises(TypeError):
            get_rule("test_attention_out", nonsense=1)
        with pytest.raises(TypeError, match="apply to a rule name"):
            get_rule(OutputLayer(), within="h.0")
    finally:
        from zeta_fx.rules import registry
        registry._REGISTRY.pop("test_attention_out", None)


def test_unknown_rule_name_lists_valid_names_and_closest_match():
    model = GPT(n_layer=1)
    before = snapshot(model)
    with pytest.raises(UnknownRuleError) as info:
        zero_init_pass(model, rule="adaln_zer0")
    message = str(info.value)
    assert "'adaln_zer0'" in message and "Did you mean 'adaln_zero'?" in message
    for name in list_rules():
        assert name in message
    assert_unchanged(model, before)
