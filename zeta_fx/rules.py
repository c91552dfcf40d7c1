"""Rules: each reads a :class:`~zeta_fx.analysis.GraphView` and names what to zero, with a reason.

Rules are small objects. Use them by name (``"residual_branch_last"``) or build them with
options; combine them with ``|`` (either), ``&`` (both) and ``-`` (the first, except what the
second selects).

>>> import torch
>>> from torch import nn
>>> from zeta_fx import zero_init_pass
>>> from zeta_fx.rules import ResidualBranchLast, OutputLayer
>>> class Net(nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.fc1, self.fc2, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)
...     def forward(self, x):
...         return self.head(x + self.fc2(torch.relu(self.fc1(x))))
>>> zero_init_pass(Net(), rule=ResidualBranchLast() | OutputLayer()).modules
['fc2', 'head']
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Callable

from torch.fx import Node

from zeta_fx.analysis import Blocked, GraphView, Join, owner_of
from zeta_fx.errors import UnknownRuleError

__all__ = ["Target", "Skipped", "Selection", "Rule", "ResidualBranchLast", "OutputLayer",
           "register_rule", "get_rule", "list_rules"]


@dataclass(frozen=True)
class Target:
    """One layer a rule wants zeroed at one graph position."""

    module: str
    params: tuple[str, ...]
    nodes: tuple[str, ...]
    position: str
    rule: str
    # Targets with the same non-empty ``cover`` zero one value together (the layers that
    # end one branch): the plan keeps all of them or none.
    cover: str = ""


@dataclass(frozen=True)
class Skipped:
    """A candidate a rule examined and left alone, with the reason in words."""

    node: str
    module: str
    reason: str
    rule: str


@dataclass
class Selection:
    """What a rule picked and what it left alone."""

    targets: list[Target] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


class Rule:
    """Base class: subclasses set ``name`` and ``description`` and implement :meth:`select`."""

    name: str = "rule"
    description: str = ""

    def select(self, view: GraphView) -> Selection:
        raise NotImplementedError(f"{type(self).__name__} must implement select(view)")

    def __or__(self, other: "Rule") -> "Rule":
        return Union(self, _as_rule(other))

    def __and__(self, other: "Rule") -> "Rule":
        return Intersection(self, _as_rule(other))

    def __sub__(self, other: "Rule") -> "Rule":
        return Difference(self, _as_rule(other))

    def __repr__(self) -> str:
        return self.name


def _as_rule(rule: "Rule | str") -> "Rule":
    return get_rule(rule) if isinstance(rule, str) else rule


def _join_position(view: GraphView, join: Join) -> str:
    skip = "identity"
    if join.skip_kind == "projection":
        owners = [view.layer(n).owner for n in join.skip_layers]
        skip = f"projection {owner_of([o + '.x' for o in owners]) or ', '.join(owners)}"
    return f"branch into `{join.merge.name}` from `{join.fork.name}`, skip: {skip}"


class ResidualBranchLast(Rule):
    """The last layer of each residual branch, so that every residual block starts as identity.

    ``nested="all"`` (default) zeroes every branch, inner residual blocks included;
    ``nested="outermost"`` keeps only branches not inside another residual branch.
    """

    name = "residual_branch_last"
    description = "last layer of each residual branch (each residual block starts as identity)"

    def __init__(self, nested: str = "all") -> None:
        if nested not in ("all", "outermost"):
            raise ValueError(f"nested must be 'all' or 'outermost', got {nested!r}")
        self.nested = nested

    def select(self, view: GraphView) -> Selection:
        out = Selection()
        joins = [j for j in view.joins()]
        inside_other: dict[Node, Node] = {}
        if self.nested == "outermost":
            for j in joins:
                if j.ok:
                    for node in j.region:
                        inside_other.setdefault(node, j.merge)
        skip_of = {n: j.merge for j in joins if j.ok for n in j.skip_layers}
        for join in joins:
            merge = join.merge.name
            if not join.ok:
                out.skipped.append(Skipped(merge, "", join.reason, self.name))
                continue
            if join.merge in inside_other:
                out.skipped.append(Skipped(
                    merge, "", f"nested inside the branch into `{inside_other[join.merge].name}` "
                               "(nested='outermost')", self.name))
                continue
            position = _join_position(view, join)
            for branch in join.branches:
                result = view.zero_cover(branch, join.sides[branch].__contains__)
                if isinstance(result, Blocked):
                    layer = view.layer(result.node)
                    out.skipped.append(Skipped(
                        branch.name, layer.owner if layer else "",
                        f"branch into `{merge}` from `{join.fork.name}` left alone: "
                        f"{result.reason}", self.name))
                    continue
                on_skip = [n for n in result.layers if n in skip_of]
                if on_skip:
                    # The branch ends in a residual block with a projection shortcut: making
                    # it zero would zero that block's skip, which is never done.
                    n = on_skip[0]
                    out.skipped.append(Skipped(
                        branch.name, view.layer(n).owner,
                        f"branch into `{merge}` from `{join.fork.name}` left alone: zeroing it "
                        f"needs `{n.name}`, on the projection skip of the join into "
                        f"`{skip_of[n].name}`", self.name))
                    continue
                for node in result.layers:
                    layer = view.layer(node)
                    out.targets.append(Target(layer.owner, layer.params, (node.name,),
                                              position, self.name, cover=f"{merge}:{branch.name}"))
        return out


class OutputLayer(Rule):
    """The last zeroable layer on the way to each graph output (classifier head, final conv)."""

    name = "output_layer"
    description = "last layer before each model output (classifier head, final conv, final linear)"

    def select(self, view: GraphView) -> Selection:
        out = Selection()
        outputs = view.outputs()
        for i, value in enumerate(outputs):
            result = view.zero_cover(value, lambda n: view.is_data[n] and n.op != "placeholder")
            label = f"output {i}" if len(outputs) > 1 else "the output"
            if isinstance(result, Blocked):
                layer = view.layer(result.node)
                out.skipped.append(Skipped(value.name, layer.owner if layer else "",
                                           f"{label} left alone: {result.reason}", self.name))
                continue
            for node in result.layers:
                layer = view.layer(node)
                out.targets.append(Target(layer.owner, layer.params, (node.name,),
                                          f"last layer before {label} `{value.name}`", self.name,
                                          cover=f"output:{value.name}"))
        return out


def _key(target: Target) -> tuple[str, ...]:
    return target.params


class _Combined(Rule):
    def __init__(self, left: Rule, right: Rule) -> None:
        self.left, self.right = left, right
        self.name = f"({left.name} {self.symbol} {right.name})"
        self.description = f"{left.name} {self.symbol} {right.name}"

    symbol = "?"


class Union(_Combined):
    """Everything either rule selects."""

    symbol = "|"

    def select(self, view: GraphView) -> Selection:
        a, b = self.left.select(view), self.right.select(view)
        targets = a.targets + b.targets
        chosen = {t.module for t in targets}
        skipped = [s for s in a.skipped + b.skipped if not (s.module and s.module in chosen)]
        return Selection(targets, skipped)


class Intersection(_Combined):
    """What both rules select."""

    symbol = "&"

    def select(self, view: GraphView) -> Selection:
        a, b = self.left.select(view), self.right.select(view)
        keys_b = {_key(t) for t in b.targets}
        keys_a = {_key(t) for t in a.targets}
        targets = [t for t in a.targets if _key(t) in keys_b]
        skipped = a.skipped + b.skipped
        skipped += [Skipped(t.nodes[0], t.module, f"selected by {self.left.name} but not by "
                            f"{self.right.name}", self.name)
                    for t in a.targets if _key(t) not in keys_b]
        skipped += [Skipped(t.nodes[0], t.module, f"selected by {self.right.name} but not by "
                            f"{self.left.name}", self.name)
                    for t in b.targets if _key(t) not in keys_a]
        return Selection(targets, skipped)


class Difference(_Combined):
    """What the first rule selects, except what the second selects."""

    symbol = "-"

    def select(self, view: GraphView) -> Selection:
        a, b = self.left.select(view), self.right.select(view)
        excluded = {_key(t) for t in b.targets}
        targets = [t for t in a.targets if _key(t) not in excluded]
        skipped = a.skipped + [Skipped(t.nodes[0], t.module, f"excluded by {self.right.name}",
                                       self.name)
                               for t in a.targets if _key(t) in excluded]
        return Selection(targets, skipped)


# -- registry ---------------------------------------------------------------------------
_REGISTRY: dict[str, Callable[[], Rule]] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_rule(name: str, factory: Callable[[], Rule], description: str) -> None:
    """Make ``factory()`` available as ``rule=name`` and in ``zeta-fx rules``."""
    _REGISTRY[name] = factory
    _DESCRIPTIONS[name] = description


def list_rules() -> dict[str, str]:
    """Rule names and their one-line descriptions, in registration order."""
    return dict(_DESCRIPTIONS)


def get_rule(rule: "Rule | str") -> Rule:
    """A rule object from a rule or a registered name.

    >>> get_rule("residual_branch_last").name
    'residual_branch_last'
    """
    if isinstance(rule, Rule):
        return rule
    if not isinstance(rule, str):
        raise TypeError(f"rule must be a rule name or a zeta_fx.rules.Rule, got "
                        f"{type(rule).__name__}")
    factory = _REGISTRY.get(rule)
    if factory is None:
        names = sorted(_REGISTRY)
        close = difflib.get_close_matches(rule, names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownRuleError(f"unknown rule {rule!r}.{hint} Valid rules: {', '.join(names)}")
    return factory()


for _cls in (ResidualBranchLast, OutputLayer):
    register_rule(_cls.name, _cls, _cls.description)
