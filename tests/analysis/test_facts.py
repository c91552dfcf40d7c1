"""The zero facts (``zeta_fx.analysis.facts``), op by op: what zeroing some parameters does to a value.

Each case is a tiny forward; the fact the interpretation gives is compared with what the
value really is after zeroing, on random inputs (a ``ZERO`` fact must be an exact zero, a
``FINITE`` or ``PARTLY_ZERO`` one must be finite), and with the fact the table should give.
Users can declare more ops zero-preserving (``zero_preserving=``).
"""

from __future__ import annotations

from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from zeta_fx import zero_init_pass
from zeta_fx.analysis.facts import Fact, ZeroFacts, join, product, total
from zeta_fx.semantics.keys import bind, op_key
from zeta_fx.semantics.modules import known_module
from zeta_fx.rules import OutputLayer, ResidualBranchLast

Z, FIN, P, U = Fact.ZERO, Fact.FINITE, Fact.PARTLY_ZERO, Fact.UNKNOWN


class Net(nn.Module):
    """``fn(self, x)`` with a 4x4 linear ``fc`` (zeroed) and a few tensors to combine."""

    def __init__(self, fn: Callable) -> None:
        super().__init__()
        self.fn = fn
        self.fc = nn.Linear(4, 4)
        self.w = nn.Parameter(torch.rand(4) + 0.5)
        self.register_buffer("inf", torch.full((4,), float("-inf")))
        self.register_buffer("buf", torch.rand(4) + 0.5)

    def forward(self, x):
        return self.fn(self, x)


CASES = {
    # name: (forward, expected fact of the output once fc is zeroed)
    "linear": (lambda m, x: m.fc(x), Z),
    "relu": (lambda m, x: torch.relu(m.fc(x)), Z),
    "gelu_method": (lambda m, x: F.gelu(m.fc(x)).view(-1, 4), Z),
    "sigmoid": (lambda m, x: torch.sigmoid(m.fc(x)), FIN),
    "mul_data": (lambda m, x: m.fc(x) * x, Z),
    "mul_inf_buffer": (lambda m, x: m.fc(x) * m.inf, U),
    "add_data": (lambda m, x: m.fc(x) + x, FIN),
    "add_zero_const": (lambda m, x: m.fc(x) + 0.0, Z),
    "sub_alpha": (lambda m, x: torch.sub(m.fc(x), m.fc(x), alpha=2), Z),
    "add_buffer": (lambda m, x: m.fc(x) + m.buf, FIN),
    "div_by_norm": (lambda m, x: m.fc(x) / m.fc(x).norm(), U),
    "div_by_param": (lambda m, x: m.fc(x) / m.w, Z),
    "rsqrt": (lambda m, x: torch.rsqrt(m.fc(x)), U),
    "log": (lambda m, x: torch.log(m.fc(x)), U),
    "pow_neg": (lambda m, x: m.fc(x) ** -1, U),
    "pow_pos": (lambda m, x: m.fc(x) ** 2, Z),
    "exp": (lambda m, x: torch.exp(m.fc(x)), FIN),
    "where_scalar": (lambda m, x: torch.where(x > 0, m.fc(x), 0.5), P),
    "where_zero": (lambda m, x: torch.where(x > 0, m.fc(x), 0.0), Z),
    "masked_fill_inf": (lambda m, x: m.fc(x).masked_fill(x > 0, float("-inf")), U),
    "clamp_positive_min": (lambda m, x: m.fc(x).clamp(min=0.1), FIN),
    "clamp_around_zero": (lambda m, x: m.fc(x).clamp(-1, 1), Z),
    "hardtanh_negative": (lambda m, x: F.hardtanh(m.fc(x), -1.0, -0.25), FIN),
    "pad_zero": (lambda m, x: F.pad(m.fc(x), (1, 1)), Z),
    "pad_value": (lambda m, x: F.pad(m.fc(x), (1, 1), value=2.0), P),
    "cat_with_data": (lambda m, x: torch.cat([m.fc(x), x], dim=-1), P),
    "layer_norm_eps": (lambda m, x: F.layer_norm(m.fc(x), (4,)), Z),
    "layer_norm_eps0": (lambda m, x: F.layer_norm(m.fc(x), (4,), eps=0.0), U),
    "normalize_eps0": (lambda m, x: F.normalize(m.fc(x), dim=-1, eps=0.0), U),
    "normalize": (lambda m, x: F.normalize(m.fc(x), dim=-1), Z),
    "one_plus_w": (lambda m, x: F.layer_norm(x, (4,)) * (1 + m.fc.weight.sum(0)), FIN),
    "softmax_then_v": (lambda m, x: torch.softmax(x, -1) @ m.fc(x).T, Z),
    "sdpa_value": (lambda m, x: F.scaled_dot_product_attention(
        x[None, None], x[None, None], m.fc(x)[None, None]), Z),
    "unknown_op": (lambda m, x: torch.erfinv(torch.special.i0(m.fc(x))), U),
}


def _facts(forward: Callable) -> tuple[Net, fx.GraphModule, ZeroFacts]:
    torch.manual_seed(0)
    model = Net(forward)
    gm = fx.symbolic_trace(model)
    facts = ZeroFacts(gm, model, zeroed={"fc.weight", "fc.bias"})
    return model, gm, facts


def _output_fact(gm: fx.GraphModule, facts: ZeroFacts) -> Fact:
    out = next(n for n in gm.graph.nodes if n.op == "output")
    return facts[out.args[0]]


@pytest.mark.parametrize("name", sorted(CASES))
def test_fact_of_each_op_and_what_the_value_really_is(name):
    forward, expected = CASES[name]
    model, gm, facts = _facts(forward)
    fact = _output_fact(gm, facts)
    assert fact == expected, facts.why(next(n for n in gm.graph.nodes if n.op == "output").args[0])
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        for seed in range(3):
            x = torch.randn(3, 4, generator=torch.Generator().manual_seed(seed))
            value = model(x)
            if fact == Z:
                assert not value.any() and torch.isfinite(value).all(), value
            elif fact in (FIN, P):
                assert torch.isfinite(value).all(), value


def test_why_names_the_op_that_lost_zero():
    _, gm, facts = _facts(CASES["div_by_norm"][0])
    assert "divides by" in facts.why("truediv") and "may be zero" in facts.why("truediv")
    _, gm, facts = _facts(CASES["where_scalar"][0])
    assert "0.5" in facts.why("where")


def test_values_the_zeroing_does_not_reach_are_as_they_were():
    _, gm, facts = _facts(lambda m, x: (m.fc(x), torch.relu(x)))
    relu = next(n for n in gm.graph.nodes if n.name == "relu")
    assert not facts.changed(relu) and facts[relu] == FIN


def test_lattice():
    assert join(Z, Z) == Z and join(Z, FIN) == P and join(FIN, FIN) == FIN
    assert join(P, U) == U and join() == Z
    assert product(Z, FIN) == Z and product(Z, P) == Z and product(Z, U) == U
    assert total(Z, FIN) == FIN and total(Z, Z) == Z and total(P, P) == P
    assert bool(Z)  # a fact is a fact: ZERO is not falsy


def test_one_key_and_one_binding_for_torch_method_and_aten_forms():
    gm = fx.symbolic_trace(lambda x, y: (torch.add(x, other=y, alpha=2), x.add_(y), x + y,
                                         torch.sub(input=x, other=y)))
    calls = [n for n in gm.graph.nodes if n.op in ("call_function", "call_method")]
    assert [op_key(n) for n in calls][:4] == [("add", False), ("add", True), ("add", False),
                                             ("sub", False)]
    assert bind(calls[0])["alpha"] == 2 and bind(calls[3])["input"].name == "x"
    aten = torch.ops.aten.add.Tensor
    graph = fx.Graph()
    a, b = graph.placeholder("a"), graph.placeholder("b")
    node = graph.call_function(aten, (a, b), {"alpha": 3})
    assert op_key(node) == ("add", False)
    assert bind(node) == {"input": a, "other": b, "alpha": 3}


def test_a_module_is_its_class_only_with_its_own_forward_and_no_hooks():
    class Lora(nn.Linear):
        def forward(self, x):
            return super().forward(x) + 1

    assert known_module(nn.Linear(2, 2))[0] == "linear"
    assert known_module(Lora(2, 2))[0] is None
    hooked = nn.Linear(2, 2)
    hooked.register_forward_hook(lambda m, i, o: o + 1)
    kind, why = known_module(hooked)
    assert kind is None and "forward hook" in why
    pruned = nn.Linear(2, 2)
    from torch.nn.utils import prune

    prune.l1_unstructured(pruned, "weight", 0.5)
    kind, why = known_module(pruned)
    assert kind is None and "prune.remove" in why
    normed = torch.nn.utils.parametrizations.weight_norm(nn.Linear(2, 2))
    assert known_module(normed)[0] == "linear"  # weight_norm: zeroing g gives an exact zero


def test_a_composite_leaf_passes_finite_values_on_so_later_claims_hold():
    """nn.TransformerEncoder is opaque to tracing; with its hidden branches zeroed it
    computes its skip, a finite value: the head after it is still provably the output's
    last layer (this was UNKNOWN, and the head's claim was dropped)."""
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.TransformerEncoder(
                nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2)
            self.head = nn.Linear(16, 4)

        def forward(self, x):
            return self.head(self.enc(x))

    torch.manual_seed(0)
    model = Model().eval()
    x = torch.randn(2, 5, 16)
    report = zero_init_pass(model, rule=ResidualBranchLast() | OutputLayer(), verify=True,
                            example_inputs=(x,))
    assert report.modules == ["enc.layers.0.self_attn.out_proj", "enc.layers.0.linear2",
                              "enc.layers.1.self_attn.out_proj", "enc.layers.1.linear2", "head"]
    with torch.no_grad():
        assert not model(x).any()


# -- ops users declare -------------------------------------------------------------------------
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

