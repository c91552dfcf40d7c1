"""The rule base class, its combinators, and :func:`get_rule`, which makes a rule of a name.

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

import fnmatch
from typing import Any, Iterable

from zeta_fx.analysis.view import GraphView
from zeta_fx.rules.registry import UNNAMED, rule_factory
from zeta_fx.rules.selection import Selection, Skipped, Target

__all__ = ["Rule", "Union", "Intersection", "Difference", "get_rule", "rule_scopes"]


class Rule:
    """Base class: subclasses set ``name`` and ``description`` and implement :meth:`find`.

    Every rule takes ``within=`` (an FQN prefix) and ``exclude=`` (FQNs or globs; a module is
    excluded when it or a module above it matches): :meth:`select` keeps only the targets in
    that scope and reports the others as left alone, with the reason. This is the one way
    to scope a rule.

    >>> import torch
    >>> from zeta_fx import zero_init_pass
    >>> from zeta_fx.models import GPT
    >>> from zeta_fx.rules import ResidualBranchLast
    >>> rule = ResidualBranchLast(within="h.1", exclude="*.mlp")
    >>> rule.name
    "residual_branch_last[within='h.1', exclude=['*.mlp']]"
    >>> zero_init_pass(GPT(n_layer=2), rule=rule).modules
    ['h.1.attn.c_proj']
    """

    name: str = UNNAMED
    description: str = ""
    within: str = ""
    exclude: tuple[str, ...] = ()

    def __init__(self, *, within: str | None = None,
                 exclude: "str | Iterable[str]" = ()) -> None:
        self.within = (within or "").strip(".")
        self.exclude = (exclude,) if isinstance(exclude, str) else tuple(exclude)
        if not all(isinstance(p, str) and p for p in self.exclude):
            raise TypeError(f"exclude holds FQNs or glob patterns (non-empty strings), got "
                            f"{exclude!r}")
        parts = ([f"within={self.within!r}"] if self.within else []) + \
            ([f"exclude={list(self.exclude)!r}"] if self.exclude else [])
        if parts:
            self.name = f"{self.name}[{', '.join(parts)}]"

    def find(self, view: GraphView) -> Selection:
        """What the rule picks in the whole graph, and what it left alone (subclasses)."""
        raise NotImplementedError(f"{type(self).__name__} must implement find(view)")

    def select(self, view: GraphView) -> Selection:
        """:meth:`find`, restricted to the rule's ``within``/``exclude`` scope."""
        found = self.find(view)
        if not self.within and not self.exclude:
            return found
        out = Selection(skipped=[s for s in found.skipped
                                 if not s.module or (self._inside(s.module)
                                                     and not self._excluded_by(s.module))])
        for t in found.targets:
            if not self._inside(t.module):
                out.skipped.append(Skipped(t.nodes[0], t.module, f"outside within="
                                           f"{self.within!r} ({t.position})", self.name))
            elif (pattern := self._excluded_by(t.module)) is not None:
                out.skipped.append(Skipped(t.nodes[0], t.module, f"excluded by "
                                           f"exclude={pattern!r} ({t.position})", self.name))
            else:
                out.targets.append(t)
        return out

    def _excluded_by(self, fqn: str) -> str | None:
        parts = fqn.split(".") if fqn else []
        for pattern in self.exclude:
            for n in range(len(parts), 0, -1):
                if fnmatch.fnmatchcase(".".join(parts[:n]), pattern):
                    return pattern
        return None

    def _inside(self, fqn: str) -> bool:
        return not self.within or fqn == self.within or fqn.startswith(self.within + ".")

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


def _key(target: Target) -> tuple[str, ...]:
    return target.params


class _Combined(Rule):
    def __init__(self, left: Rule, right: Rule) -> None:
        super().__init__()
        self.left, self.right = left, right
        self.name = f"({left.name} {self.symbol} {right.name})"
        self.description = f"{left.name} {self.symbol} {right.name}"

    symbol = "?"


class Union(_Combined):
    """Everything either rule selects."""

    symbol = "|"

    def find(self, view: GraphView) -> Selection:
        a, b = self.left.select(view), self.right.select(view)
        targets = a.targets + b.targets
        chosen = {t.module for t in targets}
        skipped = [s for s in a.skipped + b.skipped if not (s.module and s.module in chosen)]
        return Selection(targets, skipped)


class Intersection(_Combined):
    """What both rules select."""

    symbol = "&"

    def find(self, view: GraphView) -> Selection:
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

    def find(self, view: GraphView) -> Selection:
        a, b = self.left.select(view), self.right.select(view)
        excluded = {_key(t) for t in b.targets}
        targets = [t for t in a.targets if _key(t) not in excluded]
        skipped = a.skipped + [Skipped(t.nodes[0], t.module, f"excluded by {self.right.name}",
                                       self.name)
                               for t in a.targets if _key(t) in excluded]
        return Selection(targets, skipped)


def get_rule(rule: "Rule | str", **options: Any) -> Rule:
    """A rule object from a rule or a registered name; ``options`` go to its constructor.

    >>> get_rule("residual_branch_last").name
    'residual_branch_last'
    >>> get_rule("residual_branch_last", nested="outermost").nested
    'outermost'

    timm's and torchvision's names run the same rule, which the report names:

    >>> get_rule("zero_init_last").name, get_rule("zero_init_residual").name
    ('residual_branch_last', 'residual_branch_last')
    >>> get_rule("residual_brnch_last")
    Traceback (most recent call last):
    ...
    zeta_fx.errors.UnknownRuleError: unknown rule 'residual_brnch_last'. Did you mean 'residual_branch_last'? Valid rules: adaln_zero, output_layer, residual_branch_last (aliases: zero_init_last, zero_init_residual)
    """
    if isinstance(rule, Rule):
        if options:
            raise TypeError(f"options {sorted(options)} apply to a rule name; pass them to "
                            f"{type(rule).__name__}(...) instead")
        return rule
    if not isinstance(rule, str):
        raise TypeError(f"rule must be a rule name or a zeta_fx.rules.Rule, got "
                        f"{type(rule).__name__}")
    return rule_factory(rule)(**options)


def rule_scopes(rule: Rule) -> list[tuple[str, str]]:
    """The ``within=`` prefixes of ``rule`` and of every rule it composes, with the name of
    the rule that holds each (a scope that names no module would silently select nothing).

    >>> from zeta_fx.rules import OutputLayer, ResidualBranchLast
    >>> rule_scopes(ResidualBranchLast(within="h.1") | OutputLayer())
    [("residual_branch_last[within='h.1']", 'h.1')]
    """
    out: list[tuple[str, str]] = []
    stack = [rule]
    while stack:
        current = stack.pop()
        if current.within:
            out.append((current.name, current.within))
        stack += [r for r in (getattr(current, "right", None), getattr(current, "left", None))
                  if isinstance(r, Rule)]
    return out
