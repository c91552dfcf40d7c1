"""Rules: each reads a :class:`~zeta_fx.analysis.GraphView` and names what to zero, with a reason.

Rules are small objects. Use them by name (``"residual_branch_last"``) or build them with
options; combine them with ``|`` (either), ``&`` (both) and ``-`` (the first, except what the
second selects).

>>> import torch
>>> from torch import nn
>>> from zeta_fx import zero_init_pass
>>> from zeta_fx.rules.families import ResidualBranchLast, OutputLayer
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

import dataclasses
import difflib
import fnmatch
from typing import Any, Callable, Iterable

from torch import nn
from torch.fx import Node

from zeta_fx.analysis.view import Blocked, Found, GraphView, Join, owner_of
from zeta_fx.analysis.facts.sweep import Fact
from zeta_fx.semantics.keys import op_key
from zeta_fx.semantics.modules import opaque_reason
from zeta_fx.semantics.tables import ADDITIVE, CARRIERS, MULTIPLY, PASS_THROUGH, SPLITS
from zeta_fx.semantics.composite import composite_branches
from zeta_fx.errors import UnknownRuleError
from zeta_fx.rules.selection import Selection, Skipped, Target

__all__ = ["Target", "Skipped", "Selection", "Rule", "ResidualBranchLast", "OutputLayer",
           "AdaLNZero", "ByName", "ByType", "Where", "register_rule", "get_rule", "list_rules",
           "ALIASES", "rule_scopes"]


class Rule:
    """Base class: subclasses set ``name`` and ``description`` and implement :meth:`find`.

    Every rule takes ``within=`` (an FQN prefix) and ``exclude=`` (FQNs or globs; a module is
    excluded when it or a module above it matches): :meth:`select` keeps only the targets in
    that scope and reports the others as left alone, with the reason. This is the one way
    to scope a rule.

    >>> import torch
    >>> from zeta_fx import zero_init_pass
    >>> from zeta_fx.models import GPT
    >>> rule = ResidualBranchLast(within="h.1", exclude="*.mlp")
    >>> rule.name
    "residual_branch_last[within='h.1', exclude=['*.mlp']]"
    >>> zero_init_pass(GPT(n_layer=2), rule=rule).modules
    ['h.1.attn.c_proj']
    """

    name: str = "rule"
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


def _join_position(view: GraphView, join: Join) -> str:
    skip = "identity"
    if join.skip_kind == "projection":
        owners = [view.layer(n).owner for n in join.skip_layers]
        skip = f"projection {owner_of([o + '.x' for o in owners]) or ', '.join(owners)}"
    return f"branch into `{join.merge.name}` from `{join.fork.name}`, skip: {skip}"


def _join_site(view: GraphView, join: Join) -> dict[str, Any]:
    """The structured site of a residual join, for :class:`~zeta_fx.rules.selection.Target`."""
    return {"kind": "residual", "merge": join.merge.name, "skip": join.skip.name,
            "fork": join.fork.name, "skip_kind": join.skip_kind,
            "skip_modules": tuple(view.layer(n).owner for n in join.skip_layers)}


def _zero_at(join: Join) -> str:
    """The value the branch zeroing makes zero: the one data branch term, if there is one."""
    return join.branches[0].name if len(join.branch_operands) == 1 and join.branches else ""


def operand_cover(view: GraphView, join: Join, operand: Any) -> Found | Blocked:
    """The nearest layers whose zeroing makes one operand of ``join``'s sum zero: a data
    branch searched within its own side of the join; a parameter added beside the join,
    zeroed at the add that reads it; a constant, which must already be zero."""
    if isinstance(operand, Node) and view.is_data[operand]:
        return view.zero_cover(operand, join.sides.get(operand, frozenset()).__contains__)
    found = view.zero_cover(operand, lambda n: False)
    if isinstance(found, Found) and found.sites:
        reader = next((u for u in (*join.inner, join.merge) if operand in u.args or
                       operand in u.kwargs.values()), join.merge)
        found = Found(tuple((reader, ps) for _, ps in found.sites), 0, found.chain)
    return found


def branch_cover(view: GraphView, join: Join) -> Found | Blocked:
    """The nearest layers whose zeroing should make every branch operand of ``join`` zero.

    Each operand other than the skip (data branches, parameters, buffers and constants
    added beside the join) is searched for its nearest zeroable layers. This is a proposal:
    :func:`zeta_fx.analysis.proof.settle` proves it with the zero facts, or leaves the join alone
    with the reason the facts give.
    """
    sites: list[tuple[Node, tuple[str, ...]]] = []
    chain: list[Node] = []
    for operand in join.branch_operands:
        found = operand_cover(view, join, operand)
        if isinstance(found, Blocked):
            return found
        sites.extend(found.sites)
        chain.extend(found.chain)
    sites = list(dict.fromkeys(sites))
    if not sites:
        return Blocked(join.merge, "no branch operand has a parameter to zero")
    on_skip = [n for n, _ in sites if n in join.sides.get(join.skip, ())]
    if on_skip:
        return Blocked(on_skip[0], f"zeroing it needs `{on_skip[0].name}`, on the skip path")
    return Found(tuple(sites), 0, tuple(dict.fromkeys(chain)))


class ResidualBranchLast(Rule):
    """The last layer of each residual branch, so that every residual block starts as identity.

    ``nested="all"`` (default) zeroes every branch, inner residual blocks included;
    ``nested="outermost"`` keeps only branches not inside another residual branch.
    """

    name = "residual_branch_last"
    description = "last layer of each residual branch (each residual block starts as identity)"

    def __init__(self, nested: str = "all", *, within: str | None = None,
                 exclude: "str | Iterable[str]" = ()) -> None:
        if nested not in ("all", "outermost"):
            raise ValueError(f"nested must be 'all' or 'outermost', got {nested!r}")
        self.nested = nested
        super().__init__(within=within, exclude=exclude)

    def find(self, view: GraphView) -> Selection:
        out = Selection()
        joins = view.joins()
        inside_other: dict[Node, Node] = {}
        if self.nested == "outermost":
            for j in joins:
                if j.ok:
                    for node in j.region:
                        inside_other.setdefault(node, j.merge)
        for join in joins:
            merge = join.merge.name
            if not join.ok:
                reason = view.side_input_reason(join) or join.reason
                out.skipped.append(Skipped(merge, "", reason, self.name))
                continue
            if join.merge in inside_other:
                out.skipped.append(Skipped(
                    merge, "", f"nested inside the branch into `{inside_other[join.merge].name}` "
                               "(nested='outermost')", self.name))
                continue
            found = branch_cover(view, join)
            if isinstance(found, Blocked):
                layer = view.layer(found.node) if found.node in view.layer_nodes else None
                out.skipped.append(Skipped(
                    join.branches[0].name if join.branches else merge,
                    layer.owner if layer is not None and layer.owner else "",
                    f"branch into `{merge}` from `{join.fork.name}` left alone: "
                    f"{found.reason}", self.name))
                continue
            position = _join_position(view, join)
            for node, params in found.sites:
                out.targets.append(Target(owner_of(params), params, (node.name,), position,
                                          self.name, _zero_at(join), cover=f"join:{merge}",
                                          **_join_site(view, join)))
        self._select_composites(view, inside_other, out)
        return out

    def _select_composites(self, view: GraphView, inside_other: dict[Node, Node],
                           out: Selection) -> None:
        """Residual branches hidden inside opaque leaves (``nn.TransformerEncoder``, ...)."""
        if not view.ops.composites:
            return
        kinds = tuple(view.ops.composites)
        is_kind: dict[type, bool] = {}  # isinstance(module, kinds), asked once per class
        for node in view.nodes:
            if node.op != "call_module" or not view.is_data.get(node):
                continue
            module = view.module(node.target)
            cls = type(module)
            hit = is_kind.get(cls)
            if hit is None:
                hit = is_kind[cls] = isinstance(module, kinds)
            if not hit:
                continue
            branches = composite_branches(module, view.ops.composites)
            if branches is None:
                continue
            kind = type(module).__name__
            why = view.module_kind(node.target)[1] or next(
                (f"`{fqn}`: {r}" for fqn, sub in module.named_modules() if fqn
                 for r in [opaque_reason(sub)] if r), "")
            if why:
                out.skipped.append(Skipped(node.name, node.target,
                                           f"`{node.target}` ({kind}) is left alone: {why}; "
                                           "its hidden residual branches are only known for "
                                           "the class's own forward", self.name))
                continue
            for branch in branches:
                owner = f"{node.target}.{branch.module}" if node.target else branch.module
                if node in inside_other:
                    out.skipped.append(Skipped(
                        node.name, owner, f"{branch.what} of `{node.target}` ({kind}) is nested "
                        f"inside the branch into `{inside_other[node].name}` "
                        "(nested='outermost')", self.name))
                    continue
                out.targets.append(Target(
                    owner, tuple(f"{owner}.{p}" for p in branch.params), (node.name,),
                    f"{branch.what} inside `{node.target}` ({kind}, opaque to tracing)",
                    self.name, cover=f"composite:{node.name}:{branch.module}",
                    kind="composite"))


class OutputLayer(Rule):
    """The last zeroable layer on the way to each graph output (classifier head, final conv)."""

    name = "output_layer"
    description = "last layer before each model output (classifier head, final conv, final linear)"

    def find(self, view: GraphView) -> Selection:
        out = Selection()
        outputs = view.outputs()
        for i, value in enumerate(outputs):
            result = view.zero_cover(value, lambda n: view.is_data[n] and n.op != "placeholder")
            label = f"output {i}" if len(outputs) > 1 else "the output"
            if isinstance(result, Found):
                facts = view.facts(result.params)  # the whole graph: outputs are few
                if facts[value] != Fact.ZERO:
                    result = Blocked(value, f"zeroing {', '.join(f'`{p}`' for p in result.params[:4])}"
                                            f" does not make it exactly zero: {facts.why(value)}")
            if isinstance(result, Blocked):
                layer = view.layer(result.node) if result.node in view.layer_nodes else None
                out.skipped.append(Skipped(value.name, layer.owner if layer else "",
                                           f"{label} left alone: {result.reason}", self.name))
                continue
            for node, params in result.sites:
                out.targets.append(Target(owner_of(params), params, (node.name,),
                                          f"last layer before {label} `{value.name}`", self.name,
                                          value.name, cover=f"output:{value.name}",
                                          kind="output"))
        return out


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


# -- adaLN-Zero ---------------------------------------------------------------------------
def _op_name(node: Node) -> str:
    return op_key(node)[0] if node.op in ("call_function", "call_method") else ""


class AdaLNZero(Rule):
    """What DiT's adaLN-Zero initialisation zeroes, found from the graph.

    Every *conditioning* layer — a layer computed from some graph inputs (timestep, class
    label) whose output, chunked or not, scales or gates a value computed from another input
    (the data path) — plus the last layer before each output. On DiT that is each block's
    ``adaLN_modulation`` linear, the final layer's modulation and the final linear. A
    conditioning layer that only shifts (is only added, like a guided-diffusion ResBlock's
    timestep embedding) is left alone, and the report says so. A model with no such
    modulation (a UNet) gets nothing zeroed, not even its output layer, and one row left
    alone that says no modulation was found; compose with :class:`OutputLayer` to zero the
    output anyway.

    >>> import torch
    >>> from zeta_fx import zero_init_pass
    >>> from zeta_fx.models import DiT
    >>> zero_init_pass(DiT(depth=1), rule="adaln_zero").modules
    ['blocks.0.adaLN_modulation.1', 'final_layer.adaLN_modulation.1', 'final_layer.linear']
    """

    name = "adaln_zero"
    description = ("adaLN-Zero: conditioning layers producing shift/scale/gate of the data "
                   "path, and the output layer; nothing where no modulation is found")

    def find(self, view: GraphView) -> Selection:
        out = Selection()
        deps = view.input_deps
        # The data path starts at the first graph input that reaches an output (``x`` in
        # ``forward(x, t, y)``); a conditioning value does not depend on it.
        reach = 0
        for value in view.outputs():
            reach |= deps.get(value, 0)
        data_bit = reach & -reach

        def conditioning(n: Node) -> bool:
            return bool(deps.get(n)) and not deps[n] & data_bit

        gate_targets: list[Target] = []
        ungated: list[list[Target]] = []
        for join in view.joins():
            if join.ok and deps.get(join.merge, 0) & data_bit:
                targets, gated = self._gate_join(view, join, conditioning, out)
                if gated:
                    gate_targets += targets
                elif targets:
                    ungated.append(targets)
        if gate_targets:
            # an adaLN model: a branch with no gate (PixArt's cross-attention) is zeroed at
            # its last layer, so that each block is the identity
            for targets in ungated:
                gate_targets += targets
        stream = {j.merge for j in view.joins() if j.ok}
        gates = {b for j in view.joins() if j.ok for b in j.branches}
        for node in view.nodes:
            layer = view.layer(node)
            if layer is None or not layer.zeroable or not conditioning(node):
                continue
            sites, pieces, other = self._sites(view, node, deps[node], stream)
            if not sites:
                continue
            roles = [("gate" if site in gates else "scale") if kind == "mul" else "shift"
                     for site, kind in sites]
            source = ", ".join(f"`{n}`" for n in view.input_names(deps[node]))
            if "scale" not in roles and "gate" not in roles:
                where = ", ".join(f"`{site.name}`" for site, _ in sites[:3])
                out.skipped.append(Skipped(
                    node.name, layer.owner,
                    f"conditioning layer (from {source}) is only added to the data path at "
                    f"{where}: it shifts but never scales or gates, so adaLN-Zero leaves it "
                    "alone", self.name))
                continue
            if other is not None:
                out.skipped.append(Skipped(
                    node.name, layer.owner,
                    f"conditioning layer (from {source}) modulates the data path but its "
                    f"output also feeds `{other.name}`: zeroing it would cut that signal too",
                    self.name))
                continue
            counts = ", ".join(f"{roles.count(r)} {r}" for r in ("shift", "scale", "gate")
                               if r in roles)
            split = f", chunked into {pieces}" if pieces > 1 else ""
            out.targets.append(Target(
                layer.owner, layer.params, (node.name,),
                f"adaLN modulation from {source}: {counts} of the data path{split}", self.name,
                node.name, cover=f"adaln:{node.name}", kind="adaln", roles=tuple(roles),
                chunks=pieces))
        # the gates' own targets, where the modulation layers above do not already say it
        listed = {(t.nodes, t.params) for t in out.targets}
        out.targets += [t for t in gate_targets if (t.nodes, t.params) not in listed]
        if not out.targets:
            # not an adaLN model: zeroing its output alone is output_layer's job, not this
            # rule's, and doing it silently would hide that nothing was found
            out.skipped.append(Skipped(
                "", "", "no adaLN modulation found: no layer computed from the conditioning "
                "inputs alone scales or gates the data path, so adaln_zero zeroes nothing "
                "(to zero the output layer, use rule=\"output_layer\" or compose: "
                "AdaLNZero() | OutputLayer())", self.name))
            return out
        final = OutputLayer().select(view)
        out.targets += [dataclasses.replace(t, rule=self.name) for t in final.targets]
        out.skipped += [Skipped(s.node, s.module, s.reason, self.name) for s in final.skipped]
        return out

    def _gate_join(self, view: GraphView, join: Join, conditioning, out: Selection
                   ) -> tuple[list[Target], bool]:
        """Make residual ``join`` the identity: each branch through its gate (the
        conditioning factor it is multiplied by: zero the layers and tables that make the
        gate), or, for a branch without one (PixArt's cross-attention), its last layer."""
        sites: list[tuple[Node, tuple[str, ...]]] = []
        gated = 0
        for operand in join.branch_operands:
            gate = self._gate_of(view, operand, conditioning)
            if gate is not None:
                found = view.zero_cover(gate, conditioning)
                gated += 1
            else:
                found = operand_cover(view, join, operand)
            if isinstance(found, Blocked):
                if gated:
                    out.skipped.append(Skipped(
                        join.merge.name, "", f"gated branch into `{join.merge.name}` left "
                                             f"alone: {found.reason}", self.name))
                return [], False
            sites.extend(found.sites)
        what = "adaLN gate of the branch" if gated else "last layer of the ungated branch"
        position = f"{what} into `{join.merge.name}` from `{join.fork.name}`"
        kind = "adaln-join" if gated else "adaln-ungated"
        return [Target(owner_of(params), params, (node.name,), position, self.name,
                       cover=f"{kind}:{join.merge.name}", **_join_site(view, join))
                for node, params in dict.fromkeys(sites)], bool(gated)

    @staticmethod
    def _gate_of(view: GraphView, operand: Any, conditioning) -> Node | None:
        """The conditioning factor of ``gate * f(x)`` (through casts and views), if any."""
        node = operand
        for _ in range(4):
            if not isinstance(node, Node) or node.op not in ("call_function", "call_method"):
                return None
            key = view.op_key(node)[0]
            if key in MULTIPLY:
                factors = [a for a in node.args[:2] if isinstance(a, Node) and view.is_data[a]]
                gates = [a for a in factors if conditioning(a)]
                if len(factors) == 2 and len(gates) == 1:
                    return gates[0]
                return None
            if key not in PASS_THROUGH:
                return None
            node = node.args[0] if node.args else None
        return None

    @staticmethod
    def _sites(view: GraphView, layer: Node, mask: int, stream: set[Node]
               ) -> tuple[list[tuple[Node, str]], int, Node | None]:
        """Where ``layer``'s output, carried through chunk/unsqueeze/casts, meets the data
        path (a ``mul`` or ``add`` whose other operand depends on an input ``layer`` does not)."""
        deps = view.input_deps
        sites: list[tuple[Node, str]] = []
        pieces = 1
        other: Node | None = None
        seen = {layer}
        stack = [layer]
        while stack:
            value = stack.pop()
            for user in view.data_users[value]:
                if user in seen:
                    continue
                seen.add(user)
                name = _op_name(user)
                others = [n for n in view.data_inputs[user] if n is not value]
                if name in CARRIERS or (name in ADDITIVE and not others):
                    if name in SPLITS:
                        pieces = max(pieces, sum(1 for u in view.data_users[user]))
                    stack.append(user)
                    continue
                kind = "mul" if name in MULTIPLY else "add" if name in ADDITIVE else None
                if kind is None or user in stream:
                    if other is None and kind is None and user not in stream:
                        other = user  # a use that is no modulation (another embedding path)
                    continue
                if any(deps.get(o, 0) & ~mask for o in others):
                    sites.append((user, kind))
                elif other is None:
                    other = user
        return sorted(sites, key=lambda s: view.index[s[0]]), pieces, other


# -- selection by module name, type or predicate ------------------------------------------
class _ModuleRule(Rule):
    """Base of rules that pick modules by FQN or type rather than by graph position.

    A matching module's zeroable parameters are those a known layer type zeroes (a
    MultiheadAttention's ``out_proj``) or, for other modules, its own direct parameters; each
    graph node that uses them is listed. Containers without direct parameters are not
    matches themselves (their children are).
    """

    def matches(self, fqn: str, module: nn.Module) -> bool:
        raise NotImplementedError

    def what(self, fqn: str, module: nn.Module) -> str:
        raise NotImplementedError

    def find(self, view: GraphView) -> Selection:
        out = Selection()
        matched = False
        for fqn, module in view.root.named_modules():
            if not self.matches(fqn, module):
                continue
            matched = True
            names = view.ops.layer_params_of_module(module)
            if names is None:
                names = tuple(n for n, _ in module.named_parameters(recurse=False))
            prefix = f"{fqn}." if fqn else ""
            params = tuple(prefix + n for n in names if prefix + n in view.params)
            if not params:
                if any(True for _ in module.parameters(recurse=False)) or \
                        view.ops.layer_params_of_module(module) is not None:
                    out.skipped.append(Skipped("", fqn, f"{self.what(fqn, module)}, but "
                                               "has no weight or bias to zero", self.name))
                continue
            nodes = tuple(dict.fromkeys(n.name for p in params
                                        for n in view.consumers.get(p, ())))
            if not nodes:
                out.skipped.append(Skipped("", owner_of(params), f"{self.what(fqn, module)}, "
                                           "but is not used by the traced forward", self.name))
                continue
            out.targets.append(Target(owner_of(params), params, nodes,
                                      self.what(fqn, module), self.name))
        if not matched:
            out.skipped.append(Skipped("", "", f"no module of `{type(view.root).__name__}` "
                                       f"matches {self.name}", self.name))
        return out


class ByName(_ModuleRule):
    """Modules whose FQN matches any of the glob ``patterns`` (``fnmatch``: ``*``, ``?``).

    >>> import torch
    >>> from zeta_fx import zero_init_pass
    >>> from zeta_fx.models import GPT
    >>> zero_init_pass(GPT(n_layer=1), rule=ByName("*.c_proj")).modules
    ['h.0.attn.c_proj', 'h.0.mlp.c_proj']
    """

    def __init__(self, *patterns: str, within: str | None = None,
                 exclude: "str | Iterable[str]" = ()) -> None:
        if not patterns or not all(isinstance(p, str) and p for p in patterns):
            raise ValueError(f"ByName needs one or more non-empty glob patterns, got "
                             f"{patterns!r}")
        self.patterns = patterns
        self.name = f"ByName({', '.join(map(repr, patterns))})"
        self.description = f"modules whose FQN matches {', '.join(patterns)}"
        super().__init__(within=within, exclude=exclude)

    def matches(self, fqn: str, module: nn.Module) -> bool:
        return bool(fqn) and any(fnmatch.fnmatchcase(fqn, p) for p in self.patterns)

    def what(self, fqn: str, module: nn.Module) -> str:
        hit = next(p for p in self.patterns if fnmatch.fnmatchcase(fqn, p))
        return f"name matches `{hit}`"


class ByType(_ModuleRule):
    """Modules that are instances of any of ``types`` (``nn.BatchNorm2d``, ...)."""

    def __init__(self, *types: type[nn.Module], within: str | None = None,
                 exclude: "str | Iterable[str]" = ()) -> None:
        if not types or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in types):
            raise TypeError(f"ByType needs one or more nn.Module subclasses, got {types!r}")
        self.types = types
        self.name = f"ByType({', '.join(t.__name__ for t in types)})"
        self.description = f"modules of type {', '.join(t.__name__ for t in types)}"
        super().__init__(within=within, exclude=exclude)

    def matches(self, fqn: str, module: nn.Module) -> bool:
        return isinstance(module, self.types)

    def what(self, fqn: str, module: nn.Module) -> str:
        return f"is a {type(module).__name__}"


class Where(_ModuleRule):
    """Modules for which ``predicate(fqn, module)`` is true."""

    def __init__(self, predicate: Callable[[str, nn.Module], bool],
                 description: str | None = None, *, within: str | None = None,
                 exclude: "str | Iterable[str]" = ()) -> None:
        if not callable(predicate):
            raise TypeError(f"Where needs a callable predicate(fqn, module), got "
                            f"{type(predicate).__name__}")
        self.predicate = predicate
        label = getattr(predicate, "__name__", "predicate")
        self.name = f"Where({label})"
        self.description = description or f"modules for which {label}(fqn, module) is true"
        super().__init__(within=within, exclude=exclude)

    def matches(self, fqn: str, module: nn.Module) -> bool:
        return bool(self.predicate(fqn, module))

    def what(self, fqn: str, module: nn.Module) -> str:
        return f"selected by {self.name}"


# -- registry ---------------------------------------------------------------------------
_REGISTRY: dict[str, Callable[..., Rule]] = {}

# Names other libraries give the same recipe: timm's ``zero_init_last`` and torchvision's
# ``zero_init_residual`` zero the last layer (or norm) of each residual branch.
ALIASES: dict[str, str] = {
    "zero_init_last": "residual_branch_last",
    "zero_init_residual": "residual_branch_last",
}


def register_rule(factory: Callable[..., Rule]) -> Callable[..., Rule]:
    r"""Decorator: make a rule class, or a function returning a rule, usable by name.

    The name is the class's ``name`` (or the function's ``__name__``); the one-line
    description, shown by ``zeta-fx rules``, is the class's ``description`` (or the first
    line of the function's docstring). :func:`get_rule` passes options through, the way
    timm's ``create_model`` does.

    >>> @register_rule
    ... def attention_out(**options):
    ...     '''the attention output projections (by name)'''
    ...     return ByName("*.attn.c_proj", **options)
    >>> list_rules()["attention_out"]
    'the attention output projections (by name)'
    >>> get_rule("attention_out", within="h.0").name
    "ByName('*.attn.c_proj')[within='h.0']"
    >>> del _REGISTRY["attention_out"]
    """
    if not callable(factory):
        raise TypeError(f"register_rule decorates a Rule subclass or a function returning a "
                        f"rule, got {type(factory).__name__}")
    name = factory.name if isinstance(factory, type) else factory.__name__
    if not isinstance(name, str) or not name or name == Rule.name:
        raise ValueError(f"{factory!r} has no rule name: set the class attribute `name`")
    _REGISTRY[name] = factory
    return factory


def _description(factory: Callable[..., Rule]) -> str:
    if isinstance(factory, type):
        return factory.description
    return ((factory.__doc__ or "").strip().splitlines() or [""])[0]


def list_rules() -> dict[str, str]:
    """Rule names and their one-line descriptions, in registration order."""
    return {name: _description(f) for name, f in _REGISTRY.items()}


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
    factory = _REGISTRY.get(rule) or _REGISTRY.get(ALIASES.get(rule, ""))
    if factory is None:
        names = sorted(_REGISTRY)
        aliases = sorted(a for a, target in ALIASES.items() if target in _REGISTRY)
        close = difflib.get_close_matches(rule, names + aliases, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        also = f" (aliases: {', '.join(aliases)})" if aliases else ""
        raise UnknownRuleError(f"unknown rule {rule!r}.{hint} Valid rules: "
                               f"{', '.join(names)}{also}")
    return factory(**options)


def rule_scopes(rule: Rule) -> list[tuple[str, str]]:
    """The ``within=`` prefixes of ``rule`` and of every rule it composes, with the name of
    the rule that holds each (a scope that names no module would silently select nothing).

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


for _cls in (ResidualBranchLast, OutputLayer, AdaLNZero):
    register_rule(_cls)
