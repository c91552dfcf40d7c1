"""The user-facing verb, ``zero_init_pass``, and the same as an FX pass, ``ZeroInitPass``.

>>> import torch
>>> from torch import nn
>>> from zeta_fx import zero_init_pass
>>> class Block(nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
...         self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
...     def forward(self, x):
...         return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))
>>> block = Block()
>>> report = zero_init_pass(block, rule="residual_branch_last")
>>> report.modules
['bn2']
>>> x = torch.randn(2, 8, 4, 4)
>>> torch.equal(block.eval()(x), torch.relu(x))
True
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

from torch import fx, nn
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from zeta_fx.analysis import GraphView
from zeta_fx.capture import LeafSpec, capture
from zeta_fx.errors import NotAModuleError
from zeta_fx.ops import ZeroOps
from zeta_fx.plan import ZeroInitPlan, build_plan, dry_run_report
from zeta_fx.report import ZeroInitReport
from zeta_fx.rules import Rule, get_rule

__all__ = ["zero_init_pass", "plan_zero_init", "ZeroInitPass"]

logger = logging.getLogger("zeta_fx")


def plan_zero_init(model: nn.Module, rule: Rule | str = "residual_branch_last", *,
                   example_inputs: tuple[Any, ...] | None = None,
                   example_kwargs: dict[str, Any] | None = None,
                   leaf_modules: Iterable[LeafSpec] = (),
                   zero_preserving: Iterable[Any] = ()) -> ZeroInitPlan:
    """Trace ``model`` and return the plan ``rule`` makes for it; nothing is written."""
    return _plan(model, rule, example_inputs=example_inputs, example_kwargs=example_kwargs,
                 leaf_modules=leaf_modules, zero_preserving=zero_preserving)[0]


def _plan(model: nn.Module, rule: Rule | str, *, example_inputs: tuple[Any, ...] | None,
          example_kwargs: dict[str, Any] | None, leaf_modules: Iterable[LeafSpec],
          zero_preserving: Iterable[Any]) -> tuple[ZeroInitPlan, GraphView]:
    if not isinstance(model, nn.Module):
        raise NotAModuleError(
            f"zero_init_pass expects an nn.Module or a torch.fx.GraphModule, got "
            f"{type(model).__module__}.{type(model).__qualname__}; pass the model itself")
    rule_obj = get_rule(rule)
    ops = ZeroOps.default().declare(zero_preserving) if zero_preserving else None
    gm = capture(model, leaf_modules=leaf_modules)
    view = GraphView(gm, model, ops)
    selection = rule_obj.select(view)
    return build_plan(view, selection, rule_obj.name, model), view


def zero_init_pass(model: nn.Module, rule: Rule | str = "residual_branch_last", *,
                   dry_run: bool = False,
                   example_inputs: tuple[Any, ...] | None = None,
                   example_kwargs: dict[str, Any] | None = None,
                   leaf_modules: Iterable[LeafSpec] = (),
                   zero_preserving: Iterable[Any] = (),
                   allow_tied: bool = False,
                   tablefmt: str = "simple") -> ZeroInitReport:
    """Zero the layers ``rule`` finds in ``model`` and report what was touched and skipped.

    ``model`` is an ``nn.Module`` (traced with ``torch.fx.symbolic_trace``) or a
    ``GraphModule`` from any tracer; the zeroed parameters are the caller's own, written in
    place. ``rule`` is a registered name (``zeta_fx.rules.list_rules()``) or a rule object.
    ``dry_run=True`` validates and reports without writing. ``leaf_modules`` keeps modules
    opaque to tracing; ``zero_preserving`` declares more ops that map zero to zero;
    ``allow_tied`` lets a rule zero a parameter tied to one it did not select.
    """
    plan, view = _plan(model, rule, example_inputs=example_inputs,
                       example_kwargs=example_kwargs, leaf_modules=leaf_modules,
                       zero_preserving=zero_preserving)
    if dry_run:
        report = dry_run_report(plan, model, allow_tied=allow_tied, _named=view.params)
    else:
        report = plan.apply(model, allow_tied=allow_tied, _named=view.params)
    report.tablefmt = tablefmt
    return report


class ZeroInitPass(PassBase):
    """``zero_init_pass`` as a ``torch.fx.passes.infra`` pass.

    ``modified`` is true only when a parameter value changed, so a second run reports no
    change; the last report is kept as ``.report``.

    >>> import torch
    >>> from torch import fx, nn
    >>> gm = fx.symbolic_trace(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1)))
    >>> p = ZeroInitPass(rule="output_layer")
    >>> p(gm).modified, p(gm).modified
    (True, False)
    """

    def __init__(self, rule: Rule | str = "residual_branch_last", **options: Any) -> None:
        super().__init__()
        self.rule = get_rule(rule)
        self.options = options
        self.report: ZeroInitReport | None = None

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        self.report = zero_init_pass(graph_module, self.rule, **self.options)
        return PassResult(graph_module, self.report.changed and self.report.applied)
