"""The front of every verb: capture the model, build the view, run the rule, settle it.

``zero_init_pass``/``init_pass`` plan and apply what comes out; ``gate_residuals`` rewrites
the graph at the same joins. Both start here, so both refuse the same inputs the same way.

>>> import torch
>>> from torch import nn
>>> traced = trace_and_select(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)), "output_layer")
>>> [t.module for t in traced.selection.targets], traced.rule.name
(['1'], 'output_layer')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from torch import fx, nn
from torch.nn.parameter import UninitializedTensorMixin

from zeta_fx.analysis import GraphView
from zeta_fx.capture import LeafSpec
from zeta_fx.capture import capture as capture_graph
from zeta_fx.errors import NotAModuleError, UnsupportedParameterError
from zeta_fx.ops import ZeroOps
from zeta_fx.proof import settle
from zeta_fx.rules import Rule, get_rule
from zeta_fx.selection import Selection
from zeta_fx.wrappers import check_not_sharded, check_traceable, unwrap

__all__ = ["Traced", "trace_and_select"]


@dataclass(frozen=True)
class Traced:
    """The model (wrappers removed), its graph, the view over it, the rule, and the rule's
    settled selection: every claim in it proved with all its targets zero."""

    model: nn.Module
    gm: fx.GraphModule
    view: GraphView
    rule: Rule
    selection: Selection


def trace_and_select(model: nn.Module, rule: Rule | str, *, verb: str = "zero_init_pass",
                     example_inputs: tuple[Any, ...] | None = None,
                     example_kwargs: dict[str, Any] | None = None,
                     leaf_modules: Iterable[LeafSpec] = (),
                     zero_preserving: Iterable[Any] = (),
                     capture: str = "auto") -> Traced:
    """Capture ``model``, analyse it, and return ``rule``'s settled selection.

    Refuses, before anything else happens: a non-module, a sharded model (plan on the meta
    device instead), uninitialised lazy parameters. DDP and ``torch.compile`` wrappers are
    seen through: FQNs are the inner model's own.
    """
    if not isinstance(model, nn.Module):
        raise NotAModuleError(
            f"{verb} expects an nn.Module or a torch.fx.GraphModule, got "
            f"{type(model).__module__}.{type(model).__qualname__}; pass the model itself")
    rule_obj = get_rule(rule)
    model = unwrap(model)[0]
    if not isinstance(model, fx.GraphModule):  # already traced: sharding is checked below
        check_traceable(model)
    ops = ZeroOps.default().declare(zero_preserving) if zero_preserving else None
    gm = capture_graph(model, leaf_modules=leaf_modules, example_inputs=example_inputs,
                       example_kwargs=example_kwargs, method=capture)
    view = GraphView(gm, model, ops)
    check_not_sharded(model, view.params)
    lazy = next((name for name, p in view.params.items()
                 if isinstance(p, UninitializedTensorMixin)), None)
    if lazy is not None:
        raise UnsupportedParameterError(
            f"`{lazy}` is an uninitialised lazy parameter; run one forward pass to "
            f"materialise the lazy modules, then run {verb}; nothing was written")
    return Traced(model, gm, view, rule_obj, settle(view, rule_obj.select(view)))
