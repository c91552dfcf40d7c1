"""``ZeroInitPass`` inside ``torch.fx.passes.infra.pass_manager.PassManager`` with ``steps > 1``."""

from __future__ import annotations

import operator

import torch
from torch import fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult
from torch.fx.passes.infra.pass_manager import PassManager

from claims import snapshot
from zeta_fx import ZeroInitPass
from zeta_fx.models import SEResNet

EXPECTED = [f"blocks.{i}.bn3.{k}" for i in range(6) for k in ("weight", "bias")]


class CountCalls(PassBase):
    """Another pass in the pipeline: looks, never changes anything."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def call(self, gm: fx.GraphModule) -> PassResult:
        self.calls += 1
        return PassResult(gm, False)


class AddToTorchAdd(PassBase):
    """Another pass that rewrites the graph once: ``a + b`` becomes ``torch.add(a, b)``."""

    def call(self, gm: fx.GraphModule) -> PassResult:
        modified = False
        for node in gm.graph.nodes:
            if node.op == "call_function" and node.target is operator.add:
                node.target = torch.add
                modified = True
        return PassResult(gm, modified)


def _traced(seed: int = 0) -> fx.GraphModule:
    torch.manual_seed(seed)
    return fx.symbolic_trace(SEResNet())


def test_one_report_and_no_duplicate_work_over_steps():
    gm = _traced()
    before = snapshot(gm)
    zero, other = ZeroInitPass(), CountCalls()
    result = PassManager([zero, other], steps=3)(gm)
    assert result.modified
    assert other.calls == 2  # step 2 changed nothing, so the manager stopped there
    assert zero.analyses == 1  # the second step did not trace or analyse again
    assert zero.report.params == EXPECTED and zero.report.changed and zero.report.applied
    assert zero.last_report is zero.report
    for name, value in gm.state_dict().items():
        assert torch.equal(value, torch.zeros_like(value) if name in EXPECTED else before[name])


def test_graph_rewritten_by_another_pass_is_analysed_again_keeping_the_report():
    gm = _traced()
    zero = ZeroInitPass()
    result = PassManager([zero, AddToTorchAdd()], steps=3)(gm)
    assert result.modified
    assert zero.analyses == 2  # the rewritten graph is looked at once more, then no more
    assert not zero.last_report.changed and zero.last_report.params == EXPECTED
    assert zero.report.changed and zero.report.params == EXPECTED  # the run that did the work
    assert "torch.add" in gm.code and " + " not in gm.code


def test_reinitialised_parameters_are_zeroed_again():
    gm = _traced()
    zero = ZeroInitPass()
    assert zero(gm).modified
    with torch.no_grad():
        gm.get_submodule("blocks.3.bn3").weight.fill_(1.0)
    assert zero(gm).modified
    assert zero.analyses == 2 and zero.report.changed
    assert not gm.get_submodule("blocks.3.bn3").weight.any()
    assert not zero(gm).modified and zero.analyses == 2


def test_dry_run_pass_never_modifies():
    gm = _traced()
    before = snapshot(gm)
    zero = ZeroInitPass(dry_run=True)
    assert not PassManager([zero], steps=2)(gm).modified
    assert zero.analyses == 1 and not zero.report.applied and zero.report.params == EXPECTED
    for name, value in gm.state_dict().items():
        assert torch.equal(value, before[name]), name
