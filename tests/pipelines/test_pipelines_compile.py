"""``torch.compile`` after the pass: same outputs as eager, no hooks, graph breaks or recompiles.

The compile backend is ``aot_eager`` (Dynamo capture plus AOTAutograd, no code generation):
it exercises everything the pass could disturb (guards, graph breaks, parameter handling)
and runs in seconds on a small CPU. Inductor adds code generation only.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend

from zeta_fx import zero_init_pass
from zeta_fx.models import GPT, SEResNet
from zeta_fx.rules import OutputLayer, ResidualBranchLast

pytestmark = pytest.mark.slow  # torch.compile: seconds per model

CASES = {
    "seresnet": (SEResNet, lambda: torch.randn(2, 3, 16, 16), "residual_branch_last"),
    "gpt": (lambda: GPT(n_layer=2), lambda: torch.randint(0, 64, (2, 8)),
            ResidualBranchLast() | OutputLayer()),
}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _hooks(model: nn.Module) -> list[tuple[str, str, tuple]]:
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
             "_backward_pre_hooks", "_state_dict_hooks", "_load_state_dict_pre_hooks")
    return [(name, kind, tuple(getattr(m, kind).items()))
            for name, m in model.named_modules() for kind in kinds]


def _global_hooks() -> tuple[int, ...]:
    from torch.nn.modules import module as m
    return (len(m._global_forward_hooks), len(m._global_forward_pre_hooks),
            len(m._global_backward_hooks), len(m._global_backward_pre_hooks))


@pytest.mark.parametrize("case", CASES)
def test_compiled_after_pass_matches_eager_without_hooks_or_breaks(case):
    make, inputs, rule = CASES[case]
    torch.manual_seed(0)
    model = make().eval()
    x = inputs()
    hooks, global_hooks = _hooks(model), _global_hooks()
    breaks_before = torch._dynamo.explain(model)(x).graph_break_count
    torch._dynamo.reset()

    report = zero_init_pass(model, rule)
    assert report.changed and report.params

    assert _hooks(model) == hooks and _global_hooks() == global_hooks
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == breaks_before == 0
    torch._dynamo.reset()

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter)
    with torch.no_grad():
        eager = model(x)
        out = compiled(x)
        again = compiled(inputs())
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-6)
    assert again.shape == eager.shape
    assert counter.frame_count == 1  # one graph, compiled once, reused for new inputs


@pytest.mark.parametrize("case", CASES)
def test_pass_on_an_already_compiled_model_causes_no_recompile(case):
    make, inputs, rule = CASES[case]
    torch.manual_seed(0)
    model = make().eval()
    x = inputs()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter)
    with torch.no_grad():
        before = compiled(x)
    assert counter.frame_count == 1

    report = zero_init_pass(compiled, rule)  # sees through torch.compile's wrapper
    assert not any(p.startswith("_orig_mod.") for p in report.params)
    assert all(not model.get_parameter(p).any() for p in report.params)

    with torch.no_grad():
        after = compiled(x)
        eager = model(x)
    assert counter.frame_count == 1  # zeroing values in place triggers no recompile
    torch.testing.assert_close(after, eager, rtol=1e-5, atol=1e-6)
    assert not torch.equal(after, before)  # and the compiled model sees the new values

    plan = report.plan  # a plan applies to the compiled wrapper too, by the user's FQNs
    torch.manual_seed(0)
    other = make().eval()
    assert plan.apply(torch.compile(other, backend="eager")).params == report.params
    assert all(not other.get_parameter(p).any() for p in report.params)
