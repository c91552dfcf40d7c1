"""Assertions shared by the tests: what became zero, what did not change, what is zero."""

from __future__ import annotations

import torch
from torch import fx, nn

from zeta_fx.analysis import GraphView


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, by FQN (tied tensors under each name), cloned."""
    out = {n: t.detach().clone() for n, t in model.named_parameters(remove_duplicate=False)}
    out.update({n: t.detach().clone() for n, t in model.named_buffers(remove_duplicate=False)})
    return out


def assert_only_zeroed(model: nn.Module, before: dict[str, torch.Tensor], params: set[str]) -> None:
    """``params`` are exactly zero now; every other parameter and buffer is bit-identical."""
    after = snapshot(model)
    assert set(after) == set(before)
    for name, value in after.items():
        if name in params:
            assert not value.any(), f"{name} should be zero"
            assert value.dtype == before[name].dtype
        else:
            assert torch.equal(value, before[name]), f"{name} changed"


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    """Every parameter and buffer is bit-identical to ``before`` (a :func:`snapshot`)."""
    assert_only_zeroed(model, before, set())


def branch_values(model: nn.Module, *inputs: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    """For every valid residual join: the value of each branch on a forward pass."""
    gm = fx.symbolic_trace(model)
    view = GraphView(gm, model)
    wanted = {b: j.merge.name for j in view.joins() if j.ok for b in j.branches}
    env: dict[str, list[torch.Tensor]] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n in wanted:
                env.setdefault(wanted[n], []).append(out.detach().clone())
            return out

    with torch.no_grad():
        Recorder(gm).run(*inputs)
    return env


def assert_branches_zero(model: nn.Module, *inputs: torch.Tensor, merges: set[str] | None = None
                         ) -> dict[str, list[torch.Tensor]]:
    """Every branch into ``merges`` (default: every valid join) is exactly zero."""
    values = branch_values(model, *inputs)
    for merge, branches in values.items():
        if merges is None or merge in merges:
            for value in branches:
                assert not value.any(), f"branch into {merge} is not zero"
    if merges is not None:
        assert merges <= set(values), f"joins not found: {merges - set(values)}"
    return values


def merges_of(report) -> set[str]:
    """The join nodes whose branches the report says it zeroed."""
    import re
    return {m for row in report.touched for m in re.findall(r"into `([\w.]+)`", row["position"])}


def check_pass(model: nn.Module, inputs: tuple, expected: set[str], rule="residual_branch_last",
               **options):
    """Run the pass and check: exactly ``expected`` modules zeroed (all their reported params
    zero), nothing else changed by a bit, every zeroed branch outputs exactly zero."""
    from zeta_fx import zero_init_pass

    model.eval()
    before = snapshot(model)
    report = zero_init_pass(model, rule=rule, **options)
    assert set(report.modules) == expected, report.table()
    assert_only_zeroed(model, before, set(report.params))
    if rule == "residual_branch_last":
        merges = merges_of(report)
        assert_branches_zero(model, *inputs, merges=merges)
    with torch.no_grad():
        model(*inputs)
    return report
