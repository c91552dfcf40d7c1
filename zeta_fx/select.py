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
import difflib

from zeta_fx.errors import NotAModuleError, UnknownModuleError, UnsupportedParameterError
from zeta_fx.ops import ZeroOps
from zeta_fx.proof import settle
from zeta_fx.rules import Rule, get_rule, rule_scopes
from zeta_fx.selection import Selection
from zeta_fx.wrappers import check_not_sharded, check_traceable, unwrap

__all__ = ["Traced", "trace_and_select", "check_module_names", "nearest_names"]


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
    leaf_modules = tuple(leaf_modules)
    check_module_names(model, leaf_modules=leaf_modules,
                       within=[(f"within= of rule {name}", scope)
                               for name, scope in rule_scopes(rule_obj)])
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


def nearest_names(name: str, model: nn.Module, n: int = 3) -> list[str]:
    """The module FQNs of ``model`` nearest to ``name`` (for an error message)."""
    names = [fqn for fqn, _ in model.named_modules() if fqn]
    close = difflib.get_close_matches(name, names, n=n, cutoff=0.5)
    if not close:  # the name's parent's children, then the top level
        parent = name.rpartition(".")[0]
        close = [f for f in names if f.rpartition(".")[0] == parent][:n] or \
            [f for f in names if "." not in f][:n]
    return close


def check_module_names(model: nn.Module, *, leaf_modules: Iterable[LeafSpec] = (),
                       within: Iterable[tuple[str, str]] = (),
                       focus: Iterable[str] = (), leaf_label: str = "leaf_modules",
                       focus_label: str = "focus") -> None:
    """Refuse every FQN or class that would scope the pass but matches no module of
    ``model``: a typo there would silently change nothing. ``within`` holds (where it was
    given, FQN prefix) pairs; ``focus`` FQN prefixes of a picture. ``leaf_label`` and
    ``focus_label`` say how the caller spelt the option (``--leaf`` on the command line).

    >>> from torch import nn
    >>> check_module_names(nn.Sequential(nn.Linear(2, 2)), leaf_modules=["1"])
    Traceback (most recent call last):
    ...
    zeta_fx.errors.UnknownModuleError: leaf_modules: '1' names no module of Sequential; nearest: '0'. Give a module FQN (model.named_modules() lists them), 'prefix.*' for every module under prefix, or a module class; nothing was traced or written
    """
    modules = [(fqn, m) for fqn, m in model.named_modules()]
    names = [fqn for fqn, _ in modules if fqn]
    # a graph module from torch.export keeps FQNs in its parameters' names only
    names += sorted({fqn.rpartition(".")[0] for fqn, _ in
                     [*model.named_parameters(), *model.named_buffers()]} - set(names) - {""})
    owner = type(model).__name__
    advice = ("Give a module FQN (model.named_modules() lists them), 'prefix.*' for every "
              "module under prefix, or a module class; nothing was traced or written")

    def refuse(where: str, name: str, nearest: list[str], scope: bool = False) -> None:
        listed = ", ".join(map(repr, nearest)) if nearest else "(the model has no submodules)"
        what = ("Give the FQN of a module (model.named_modules() lists them); everything "
                "under it is in scope; nothing was traced or written") if scope else advice
        raise UnknownModuleError(f"{where}: {name!r} names no module of {owner}; nearest: "
                                 f"{listed}. {what}")

    for leaf in leaf_modules:
        if isinstance(leaf, type):
            if not any(isinstance(m, leaf) for _, m in modules):
                kinds = sorted({type(m).__name__ for _, m in modules})
                close = difflib.get_close_matches(leaf.__name__, kinds, n=3, cutoff=0.3)
                refuse(leaf_label, leaf.__name__, close or kinds[:3])
        elif isinstance(leaf, str):
            prefix = leaf[:-1] if leaf.endswith(".*") else None
            if not any(n == leaf or (prefix is not None and n.startswith(prefix))
                       for n in names):
                refuse(leaf_label, leaf, nearest_names(leaf.removesuffix(".*"), model))
    for where, scope in within:
        if not any(n == scope or n.startswith(scope + ".") for n in names):
            refuse(where, scope, nearest_names(scope, model), scope=True)
    for prefix in focus:
        prefix = prefix.strip(".")
        if prefix and not any(n == prefix or n.startswith(prefix + ".") for n in names):
            refuse(focus_label, prefix, nearest_names(prefix, model), scope=True)
