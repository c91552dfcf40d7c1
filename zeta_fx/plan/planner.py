"""The planner: a rule's settled selection becomes a plan, plain data addressed by FQN.

Targets are grouped by module; a module also used where the rule does not select it is left
alone (and with it every target of a cover that needed it); weight-norm magnitudes stand in
for the weights they compute; the initialiser (``init``) sets each entry's action.

>>> import torch
>>> from torch import fx, nn
>>> from zeta_fx.analysis.view import GraphView
>>> from zeta_fx.analysis.proof import settle
>>> from zeta_fx.rules import ResidualBranchLast
>>> class Block(nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)
...     def forward(self, x):
...         return x + self.fc2(torch.relu(self.fc1(x)))
>>> model = Block()
>>> view = GraphView(fx.symbolic_trace(model), model)
>>> plan = build_plan(view, settle(view, ResidualBranchLast().select(view)), "residual_branch_last")
>>> [(e.module, e.sites[0].merge, e.sites[0].skip, e.action.kind) for e in plan.entries]
[('fc2', 'add', 'x', 'zero')]
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn
from torch.fx import Node

from zeta_fx.analysis.view import GraphView
from zeta_fx.errors import UnsupportedParameterError
from zeta_fx.plan.records import PlanEntry, Plan
from zeta_fx.rules.selection import Selection, Site, Skipped, Target
from zeta_fx.semantics.modules import pruning_problem


__all__ = ["build_plan", "Branches", "Init"]


class Branches:
    """What an initialiser may ask about the residual branches of a plan, read from the view.

    ``count`` is the number of residual branches (distinct merges of residual sites);
    :meth:`depth` a site's 0-based branch index in graph order; :meth:`layers` the weight
    layers on a branch, in graph order.
    """

    def __init__(self, view: GraphView, entries: Iterable[PlanEntry]) -> None:
        self.view = view
        nodes = view.by_name
        merges = {s.merge for e in entries for s in e.sites if s.kind == "residual" and s.merge}
        order = sorted((m for m in merges if m in nodes), key=lambda m: view.index[nodes[m]])
        self._depth = {m: i for i, m in enumerate(order)}
        self.count = len(order)

    def module_type(self, fqn: str) -> str:
        return self.view.module_type(fqn)

    def depth(self, site: Site) -> int:
        return self._depth.get(site.merge, -1)

    def layers(self, site: Site) -> list[tuple[str, str, tuple[int, ...], str]]:
        """(module FQN, weight FQN, shape, graph node) of each weight layer on the branch
        that ends at ``site``'s merge, in graph order."""
        join = self.view.residual_joins.get(site.merge)
        if join is None:
            return []
        side: set[Node] = set()
        for operand in join.branch_operands:
            if isinstance(operand, Node):
                side |= join.sides.get(operand, frozenset())
        out: list[tuple[str, str, tuple[int, ...], str]] = []
        seen: set[str] = set()
        for node in sorted(side, key=self.view.index.__getitem__):
            layer = self.view.layer(node) if node in self.view.layer_nodes else None
            if layer is None or not layer.zeroable:
                continue
            for fqn in layer.params:
                tensor = self.view.params.get(fqn)
                if tensor is not None and tensor.dim() >= 2 and fqn not in seen:
                    seen.add(fqn)
                    out.append((layer.owner, fqn, tuple(tensor.shape), node.name))
        return out


class Init:
    """What the planner asks of an initialiser (the ones users pick are in
    :mod:`zeta_fx.inits`): ``name`` (shown in the report and recorded in the plan) and
    :meth:`actions`, which maps the planner's entries to entries with actions."""

    name = "init"

    def actions(self, entries: list[PlanEntry], branches: Branches,
                params: dict[str, torch.Tensor]) -> Iterable[PlanEntry]:
        raise NotImplementedError(f"{type(self).__name__} must implement actions()")

    def left_alone(self, entries: list[PlanEntry]) -> list[Skipped]:
        """The planner's entries this initialiser leaves as they are, each with the reason
        (the report lists them with the candidates left alone)."""
        return []

    def __repr__(self) -> str:
        return self.name


def build_plan(view: GraphView, selection: Selection, rule: str,
               init: Init | None = None, seed: int | None = None) -> Plan:
    """Merge a rule's targets by module, drop modules also used where they must not be
    zeroed (a shared module that is last-on-branch at one site and elsewhere in another),
    and let ``init`` (default: zero) set each entry's action."""
    targets, partial = _without_partial_covers(view, list(selection.targets))
    grouped: dict[str, dict[str, Any]] = {}
    for target in targets:
        group = grouped.setdefault(target.module, {"params": {}, "sites": {}, "rules": {}})
        for fqn in target.params:
            group["params"][fqn] = None
        for site in target.sites():
            group["sites"].setdefault(site.node, site)
        group["rules"][target.rule] = None
    skipped = list(selection.skipped) + partial
    entries = []
    for module, group in grouped.items():
        chosen = set(group["sites"])
        other_sites = sorted({c.name for fqn in group["params"]
                              for c in view.consumers.get(fqn, ()) if c.name not in chosen},
                             key=lambda n: view.index[view.by_name[n]])
        if other_sites:
            sites = ", ".join(f"`{n}`" for n in other_sites[:3])
            skipped.append(Skipped(
                next(iter(group["sites"])), module,
                f"`{module}` is also used at {sites}, where the rule does not select it; "
                "zeroing it would change that use too", ", ".join(group["rules"])))
            continue
        params = _planned_params(view, group["params"])
        entries.append(PlanEntry(module, view.module_type(module), params,
                                 tuple(group["sites"].values()), ", ".join(group["rules"])))
    name = "zero"
    if init is not None:
        skipped += init.left_alone(entries)
        entries = list(init.actions(entries, Branches(view, entries), view.params))
        name = init.name
    return Plan(tuple(entries), rule, type(view.root).__name__, tuple(skipped), name,
                        seed)


def _without_partial_covers(view: GraphView, targets: list[Target]
                            ) -> tuple[list[Target], list[Skipped]]:
    """Drop the targets of every cover (the layers that together zero one branch) that
    lost a member: a module also used where the rule does not select it is left alone
    (``build_plan`` reports it), and then zeroing the others would not make that branch
    zero. Repeats until stable, since dropping a target can leave its module with an
    unselected use."""
    left_alone: list = []
    while True:
        nodes: dict[str, set[str]] = {}
        params: dict[str, set[str]] = {}
        for t in targets:
            nodes.setdefault(t.module, set()).update(t.nodes)
            params.setdefault(t.module, set()).update(t.params)
        shared = {m for m in nodes for fqn in params[m] for c in view.consumers.get(fqn, ())
                  if c.name not in nodes[m]}
        broken = {t.cover: t.module for t in targets if t.module in shared and t.cover}
        partners = [t for t in targets if t.cover in broken and t.module not in shared]
        if not partners:
            return targets, left_alone
        left_alone += [Skipped(t.nodes[0], t.module,
                               f"left alone: the branch it ends ({t.position}) is only zero "
                               f"if `{broken[t.cover]}` is zeroed too, and that is also used "
                               "where the rule does not select it", t.rule) for t in partners]
        targets = [t for t in targets if not (t.cover in broken and t.module not in shared)]


def _planned_params(view: GraphView, fqns: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """The stored parameters to zero for a layer's ``fqns``, with their shapes.

    ``weight_norm`` (``torch.nn.utils.parametrizations`` or the legacy hook) computes
    ``weight = g * v / ||v||``: zeroing the magnitude ``g`` gives an exact zero, finite
    weight, so ``g`` is planned instead. Other computed weights (``spectral_norm``: W / sigma(W)
    is never zero) are refused before anything is written. (Lazy parameters never get here:
    capture refuses them.)
    """
    params: dict[str, tuple[int, ...]] = {}
    for fqn in fqns:
        stored = fqn if fqn in view.params else _weight_norm_magnitude(view.root, fqn)
        params[stored] = tuple(view.params[stored].shape)
    return params


def _weight_norm_magnitude(model: nn.Module, fqn: str) -> str:
    from torch.nn.utils import parametrize
    from torch.nn.utils.weight_norm import WeightNorm

    owner, _, name = fqn.rpartition(".")
    module = model.get_submodule(owner) if owner else model
    prefix = f"{owner}." if owner else ""
    if parametrize.is_parametrized(module, name):
        chain = list(module.parametrizations[name])
        if len(chain) == 1 and type(chain[0]).__name__ == "_WeightNorm":
            return f"{prefix}parametrizations.{name}.original0"
        kinds = ", ".join(type(p).__name__.lstrip("_") for p in chain)
        raise UnsupportedParameterError(
            f"`{fqn}` (module `{owner}`) is computed by the parametrization {kinds}; no "
            "stored tensor can be zeroed to make it an exact, finite zero (spectral_norm "
            "divides by the largest singular value). Remove it with torch.nn.utils.parametrize"
            f".remove_parametrizations(module, {name!r}) before the pass, or leave this layer "
            "out of the rule; nothing was written")
    problem = pruning_problem(module, owner, name)
    if problem is not None:
        raise UnsupportedParameterError(problem)
    hooks = list(module._forward_pre_hooks.values())
    if any(isinstance(h, WeightNorm) and h.name == name for h in hooks):
        return f"{prefix}{name}_g"
    kinds = ", ".join(type(h).__name__ for h in hooks if getattr(h, "name", None) == name)
    raise UnsupportedParameterError(
        f"`{fqn}` (module `{owner}`) is not a stored parameter"
        + (f" but computed by a {kinds} hook" if kinds else "")
        + "; zeroing it would not last. Remove the reparametrisation (e.g. "
        "torch.nn.utils.remove_spectral_norm) before the pass; nothing was written")
