"""Residual branches: the rule that zeroes the last layer of each, and the covers it and
the adaLN-Zero rule share (which layers make a join's branch operands zero).
"""

from __future__ import annotations

from typing import Any, Iterable

from torch.fx import Node

from zeta_fx.analysis.view import Blocked, Found, GraphView, Join, owner_of
from zeta_fx.semantics.modules import opaque_reason
from zeta_fx.semantics.composite import composite_branches
from zeta_fx.rules.base import Rule
from zeta_fx.rules.selection import Selection, Skipped, Target

__all__ = ["ResidualBranchLast", "branch_cover", "operand_cover", "join_site"]


def _join_position(view: GraphView, join: Join) -> str:
    skip = "identity"
    if join.skip_kind == "projection":
        owners = [view.layer(n).owner for n in join.skip_layers]
        skip = f"projection {owner_of([o + '.x' for o in owners]) or ', '.join(owners)}"
        if not any(view.structured_layer(n) for n in join.skip_layers):
            # res_scale(x): the fork scaled elementwise by the skip's own parameter
            skip = f"`{join.skip.name}` = {' . '.join(reversed(owners))}({join.fork.name}), " \
                   "scaled by its own parameter"
    return f"branch into `{join.merge.name}` from `{join.fork.name}`, skip: {skip}"


def join_site(view: GraphView, join: Join) -> dict[str, Any]:
    """The structured site of a residual join, for :class:`~zeta_fx.rules.selection.Target`."""
    return {"kind": "residual", "merge": join.merge.name, "skip": join.skip.name,
            "fork": join.fork.name, "skip_kind": join.skip_kind,
            "skip_modules": tuple(view.layer(n).owner for n in join.skip_layers)}


def _zero_at(join: Join) -> str:
    """The value the branch zeroing makes zero: the one data branch term, if there is one."""
    if len(join.branch_operands) != 1 or not join.branches or \
            join.branch_operands[0] is not join.branches[0]:
        return ""  # several operands, or a buffer filled by writes: the merge is the claim
    return join.branches[0].name


def operand_cover(view: GraphView, join: Join, operand: Any) -> Found | Blocked:
    """The nearest layers whose zeroing makes one operand of ``join``'s sum zero: a data
    branch searched within its own side of the join; a parameter added beside the join,
    zeroed at the add that reads it; a constant, which must already be zero; a buffer the
    sum reads after writes filled it, as it was made and at every write it sees."""
    if isinstance(operand, Node) and operand in join.written.values():
        return _buffer_cover(view, join, operand)
    if isinstance(operand, Node) and view.is_data[operand]:
        return view.zero_cover(operand, join.sides.get(operand, frozenset()).__contains__)
    found = view.zero_cover(operand, lambda n: False)
    if isinstance(found, Found) and found.sites:
        reader = next((u for u in (*join.inner, join.merge) if operand in u.args or
                       operand in u.kwargs.values()), join.merge)
        found = Found(tuple((reader, ps) for _, ps in found.sites), 0, found.chain)
    return found


def _buffer_cover(view: GraphView, join: Join, buffer: Node) -> Found | Blocked:
    """The layers whose zeroing makes ``buffer`` zero as the sum reads it: what each
    write it sees wrote, searched within the branch, and the buffer as made (zero only if
    made by ``zeros_like`` and the like; a ``clone`` of the fork holds the fork's values)."""
    reader = next((u for u in join.sum_nodes if buffer in u.all_input_nodes), join.merge)
    groups = view.layers.read_groups(buffer, reader)
    if isinstance(groups, str):
        return Blocked(reader, groups)
    inside = join.sides.get(buffer, frozenset()).__contains__
    writers = next((ws for v, ws in view.storage.stale_reads(reader) if v is buffer), ())
    sites: list[tuple[Node, tuple[str, ...]]] = []
    chain: list[Node] = []
    for i, group in enumerate(groups):
        best: Found | Blocked | None = None
        for value in group:
            got = view.zero_cover(value, inside)
            if i and isinstance(got, Blocked) and i <= len(writers):
                got = Blocked(got.node, f"`{writers[i - 1].name}` writes into "
                                        f"`{buffer.name}` what is not zero: {got.reason}")
            elif value is buffer and isinstance(got, Blocked):
                got = Blocked(got.node, f"`{buffer.name}` as made, before the writes, is not "
                                        f"zero: {got.reason}")
            elif isinstance(got, Found) and isinstance(value, Node) and \
                    not view.is_data[value] and got.sites:
                got = Blocked(value, f"`{buffer.name}` is written with the parameter-only "
                                     f"value `{value.name}`")
            if isinstance(got, Found) and (not isinstance(best, Found) or got.depth < best.depth):
                best = got
            elif best is None:
                best = got
        if best is None or isinstance(best, Blocked):
            return best or Blocked(reader, f"`{buffer.name}` has nothing to zero")
        sites.extend(best.sites)
        chain.extend(best.chain)
    return Found(tuple(dict.fromkeys(sites)), 0, tuple(dict.fromkeys(chain)))


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
                                          **join_site(view, join)))
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
