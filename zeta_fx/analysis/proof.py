"""The proof: keep only the claims that hold together, for the whole graph.

A rule proposes targets, each proved on its own (a residual branch over its region). Put
together, they must still hold: a parameter is zeroed only where every use of it is one the
rule selected, never on a skip path, and with *all* the planned parameters zero, every
claim is checked again by the zero facts over the whole graph — each claimed merge's
branch operands exactly ``ZERO`` and its skip finite, each other target's value ``ZERO``.
A claim that fails is dropped with every target of its cover (the layers that together make
one value zero), and the check runs again until nothing changes.

>>> import torch
>>> from torch import fx, nn
>>> from zeta_fx.analysis.view import GraphView
>>> from zeta_fx.rules import ResidualBranchLast
>>> class Block(nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)
...     def forward(self, x):
...         return x + self.fc2(torch.relu(self.fc1(x)))
>>> view = GraphView(fx.symbolic_trace(Block()))
>>> settled = settle(view, ResidualBranchLast().select(view))
>>> [t.module for t in settled.targets], settled.skipped
(['fc2'], [])
"""

from __future__ import annotations

from typing import Any

from torch.fx import Node

from zeta_fx.analysis.facts.sweep import Fact
from zeta_fx.rules.selection import Selection, Skipped, Target
from zeta_fx.analysis.view import GraphView


__all__ = ["settle"]

_MAX_ROUNDS = 64


def settle(view: "GraphView", selection: "Selection") -> "Selection":
    """``selection`` less every cover whose claim does not hold with all targets zeroed."""

    targets = list(selection.targets)
    skipped = list(selection.skipped)
    joins = view.residual_joins
    skip_params = _skip_params(view)
    names = view.by_name  # built when first asked (a failing or output claim)
    for rounds in range(_MAX_ROUNDS):
        drop: dict[str, str] = {}  # cover -> reason
        selected_nodes: dict[str, set[str]] = {}
        for t in targets:
            for p in t.params:
                selected_nodes.setdefault(p, set()).update(t.nodes)
        for t in targets:
            if not t.cover:
                continue  # chosen by name or type, not by position: no claim to keep
            for p in t.params:
                if p in skip_params:
                    drop.setdefault(_cover(t), f"`{p}` is used on the skip path into "
                                               f"`{skip_params[p]}`, which is never zeroed")
                others = [c.name for c in view.consumers.get(p, ())
                          if c.name not in selected_nodes[p]]
                if others:
                    sites = ", ".join(f"`{n}`" for n in others[:3])
                    drop.setdefault(_cover(t), f"`{t.module or p}` is also used at {sites}, "
                                               "where the rule "
                                               "does not select it; zeroing it would change "
                                               "that use too")
        if not drop:
            zeroed = {p for t in targets for p in t.params}
            facts = view.facts(zeroed) if zeroed else None
            failing: list[tuple[int, str, str]] = []
            for t in targets:
                if facts is None or not t.cover or _cover(t) in drop:
                    continue
                why = _claim_fails(view, facts, t, joins, names)
                if why:
                    drop[_cover(t)] = why
                    at = names.get(t.merge or t.zero_at or t.nodes[0])
                    failing.append((view.index.get(at, 0) if at is not None else 0,
                                    _cover(t), why))
            if failing:
                # A claim that fails on its own (its branch alone, everything else as it
                # was) is dropped with that reason. One that fails only with the others may
                # be poisoned by a failure upstream: drop the earliest and look again.
                alone = {}
                for _, cover, _why in failing:
                    own = _alone(view, cover, targets, joins)
                    if own:
                        alone[cover] = own
                if alone:
                    drop = alone
                elif rounds < _MAX_ROUNDS // 2:
                    first = min(failing)
                    drop = {first[1]: first[2]}
        if not drop:
            break
        kept = []
        for t in targets:
            reason = drop.get(_cover(t))
            if reason is None:
                kept.append(t)
            else:
                skipped.append(Skipped(t.nodes[0], t.module, f"left alone: {t.position}: "
                                                               f"{reason}", t.rule))
        targets = kept
    return Selection(targets, skipped)


def _alone(view: "GraphView", cover: str, targets: list["Target"], joins) -> str:
    """Why the claim of ``cover`` fails with only its own parameters zero, or ``""``."""
    members = [t for t in targets if t.cover == cover]
    if not members or not members[0].merge or members[0].merge not in joins:
        return ""
    return local_reason(view, joins[members[0].merge],
                        tuple(dict.fromkeys(p for t in members for p in t.params)))


def local_reason(view: "GraphView", join, params: tuple[str, ...]) -> str:
    """Why zeroing ``params`` alone does not make every branch operand of ``join`` zero (the
    region between fork and merge swept, and every weight the parameters reach), or ``""``.

    >>> import torch
    >>> from torch import fx, nn
    >>> from zeta_fx.analysis.view import GraphView
    >>> class Block(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc = nn.Linear(4, 4)
    ...     def forward(self, x):
    ...         h = self.fc(x)
    ...         return x + h / h.norm()
    >>> view = GraphView(fx.symbolic_trace(Block()))
    >>> local_reason(view, view.joins()[0], ("fc.weight", "fc.bias"))
    'zeroing `fc.weight`, `fc.bias` does not make `truediv` exactly zero: `truediv` divides by `norm`, which may be zero'
    """
    readers = {n for n in (*join.inner, join.merge)}
    sweep = set(join.region) | readers | view.weight_closure(params)
    facts = view.facts(params, sweep)
    for op in join.branch_operands:
        reader = merge_reader(join, op)
        if facts.fact_at(op, reader) != Fact.ZERO:
            name = f"`{op.name}`" if isinstance(op, Node) else repr(op)
            why = facts.why_at(op, reader) if isinstance(op, Node) else \
                f"the constant {op!r} is not zero"
            return (f"zeroing {', '.join(f'`{p}`' for p in params[:4])} does not make "
                    f"{name} exactly zero: {why}")
    if facts.fact(join.skip) == Fact.UNKNOWN:
        return f"the skip `{join.skip.name}` may become non-finite: {facts.why(join.skip)}"
    return ""


def merge_reader(join: Any, operand: Any) -> Node:
    """The node of ``join``'s sum that reads ``operand`` (the merge, or an inner add)."""
    if isinstance(operand, Node):
        inside = join.sum_nodes
        for user in operand.users:
            if user in inside:
                return user
    return join.merge


def _cover(target: "Target") -> str:
    return target.cover


def _skip_params(view: "GraphView") -> dict[str, str]:
    """Parameters used by a layer on the skip path of a residual join -> that merge."""
    out: dict[str, str] = {}
    for join in view.joins():
        if not join.ok or join.skip is None:
            continue
        for node in join.sides.get(join.skip, ()):
            if node in view.layer_nodes:
                roots = set(view.param_roots.get(node, ()))
                if node.op == "call_module":
                    roots |= set(view.params_of_module(node.target))
                for inp in node.all_input_nodes:
                    roots |= set(view.param_roots.get(inp, ()))
                for p in roots:
                    out.setdefault(p, join.merge.name)
    return out


def _claim_fails(view: "GraphView", facts, target: "Target", joins, names) -> str:
    """Why ``target``'s claim does not hold under ``facts``, or ``""``."""
    if target.merge:
        join = joins.get(target.merge)
        if join is None:
            return f"`{target.merge}` is not a residual join"
        for operand in join.branch_operands:
            reader = merge_reader(join, operand)
            fact = facts.fact_at(operand, reader)
            if fact != Fact.ZERO:
                label = f"`{operand.name}`" if isinstance(operand, Node) else repr(operand)
                why = facts.why_at(operand, reader) if isinstance(operand, Node) else \
                    "a constant"
                return (f"with every planned parameter zero, {label} is "
                        f"{fact.name.lower().replace('_', ' ')}, not zero ({why})")
        if facts.fact(join.skip) == Fact.UNKNOWN:
            return (f"with every planned parameter zero, the skip `{join.skip.name}` may be "
                    f"non-finite ({facts.why(join.skip)})")
        return ""
    value = names.get(target.zero_at or target.nodes[0])
    if value is None:
        return ""
    node = value
    if node.op == "call_module" and view.module_kind(node.target)[0] == "composite":
        return ""  # a composite leaf's hidden branches: its own table proves them
    fact = facts.fact(node)
    if fact != Fact.ZERO:
        return (f"with every planned parameter zero, `{node.name}` is "
                f"{fact.name.lower().replace('_', ' ')}, not zero ({facts.why(node)})")
    return ""
