"""Residual joins: additive merges of paths that leave a common fork, with skip and branches.

A merge is any additive op (``+``, ``+=``, ``-``, ``torch.add`` with ``alpha``, ``.add_``,
``torch.stack([...]).sum(0)``) whose operands include two or more data values. A flattened
sum keeps every operand, data or not: a parameter, buffer or constant added beside the
join (``fc2(h) + self.b + x``) is part of the branch, and must be zero too.

A skip carries only the fork's own value to the merge: every value on it has exactly one
data input, its own predecessor (or the fork), nothing on it is written in place, and its
layers are structured ones (a projection: conv, linear, norm, pooling). It enters the merge
with coefficient +1. A path that another data value enters (``q @ kᵀ``, an SSM scan), or
that scales by a parameter of its own (``D * x``), is not a skip. The branch is every other
operand.

>>> import torch
>>> from torch import fx, nn
>>> from zeta_fx.analysis.view import GraphView
>>> class Block(nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.fc = nn.Linear(4, 4)
...         self.b = nn.Parameter(torch.zeros(4))
...     def forward(self, x):
...         return self.fc(x) + self.b + x
>>> [(j.merge.name, j.skip.name, [getattr(v, "name", v) for v in j.branch_operands])
...  for j in GraphView(fx.symbolic_trace(Block())).joins() if j.ok]
[('add_1', 'x', ['fc', 'b'])]
"""

from __future__ import annotations

import heapq
import operator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from torch.fx import Node

from zeta_fx.analysis.conditioning import conditioning_only
from zeta_fx.analysis.index import GraphIndex
from zeta_fx.semantics.tables import ADDITIVE, MULTIPLY, PIECES, SUBTRACTIVE


__all__ = ["Join", "find_joins", "additive_operands"]


@dataclass
class Join:
    """An additive merge of paths from a common fork, classified into skip and branches.

    ``operands`` are every operand of the flattened sum with its coefficient (``x - f`` has
    ``(f, -1)``); ``terms`` the data ones. ``branch_operands`` are the operands that must be
    zero for the merge to equal its skip (data values, parameters, constants).
    """

    merge: Node
    terms: tuple[Node, ...]
    operands: tuple[tuple[Any, float], ...] = ()
    inner: tuple[Node, ...] = ()
    fork: Node | None = None
    ok: bool = False
    reason: str = ""
    skip: Node | None = None
    skip_kind: str = ""
    skip_layers: tuple[Node, ...] = ()
    branches: tuple[Node, ...] = ()
    branch_operands: tuple[Any, ...] = ()
    sides: dict[Node, frozenset[Node]] = field(default_factory=dict)
    region: frozenset[Node] = frozenset()
    #: data term -> the operand it stands for: a buffer the sum reads after writes filled
    #: it (``out = zeros_like(x); out[:, i] = f(h); x + out``) is followed into the graph
    #: through its last write, while the operand (what the proof checks) is the buffer
    written: dict[Node, Node] = field(default_factory=dict)

    @cached_property
    def sum_nodes(self) -> frozenset[Node]:
        """The merge and the inner adds of its sum: the nodes that read the operands."""
        return frozenset((self.merge, *self.inner))


_BINARY = {operator.add: 1.0, operator.iadd: 1.0, operator.sub: -1.0, operator.isub: -1.0}
_BUILTIN = type(operator.add)


def additive_operands(view: GraphIndex, node: Node) -> list[tuple[Any, float]] | None:
    """``[(operand, coefficient)]`` of an additive data node, or ``None`` for other nodes.

    ``torch.stack([a, b]).sum(0)`` counts as ``a + b``.
    """
    if not view.is_data.get(node) or node.op not in ("call_function", "call_method"):
        return None
    if type(node.target) is _BUILTIN and node.target in _BINARY and len(node.args) == 2 \
            and not node.kwargs:
        # `a + b`, `a - b` (what bind gives them: input, other, alpha 1)
        return [(node.args[0], 1.0), (node.args[1], _BINARY[node.target])]
    key, _ = view.op_key(node)
    if key in ADDITIVE:
        args = view.bound(node)
        if "input" not in args or "other" not in args:
            return None
        alpha = args.get("alpha", 1)
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
            return None  # a tensor alpha: not a plain sum
        if key == "rsub":
            return [(args["other"], 1.0), (args["input"], -float(alpha))]
        sign = -1.0 if key in SUBTRACTIVE else 1.0
        return [(args["input"], 1.0), (args["other"], sign * float(alpha))]
    if key == "sum":
        return _stack_sum(view, node)
    return None


def _stack_sum(view: GraphIndex, node: Node) -> list[tuple[Any, float]] | None:
    args = view.bound(node)
    source = args.get("input")
    dim = args.get("dim", node.args[1] if len(node.args) > 1 else None)
    if isinstance(dim, (list, tuple)) and len(dim) == 1:
        dim = dim[0]
    if not isinstance(source, Node) or args.get("keepdim") or args.get("dtype") is not None \
            or view.data_users.get(source) != [node]:
        return None
    skey, _ = view.op_key(source)
    if skey != "stack" or not view.is_data.get(source):
        return None
    sargs = view.bound(source)
    sdim = sargs.get("dim", 0)
    tensors = sargs.get("tensors")
    if not isinstance(dim, int) or sdim != dim or not isinstance(tensors, (list, tuple)):
        return None
    return [(t, 1.0) for t in tensors]


def _shared_stack_sum(view: GraphIndex, node: Node) -> Join | None:
    """``s = stack([a, b]); s.sum(0)`` where ``s`` is read elsewhere too (SK attention's
    ``paths * attn``): a sum of paths, but zeroing a branch would change those other reads
    as well, so it is no residual join. Named, so that the report is not silent on it."""
    args = view.bound(node)
    source = args.get("input")
    if not isinstance(source, Node) or view.keys.get(source, ("",))[0] != "stack" \
            or not view.is_data.get(source) or view.data_users.get(source) == [node]:
        return None
    sargs = view.bound(source)
    tensors = sargs.get("tensors")
    dim = args.get("dim", node.args[1] if len(node.args) > 1 else None)
    if isinstance(dim, (list, tuple)) and len(dim) == 1:
        dim = dim[0]
    if not isinstance(tensors, (list, tuple)) or dim != sargs.get("dim", 0):
        return None
    terms = tuple(t for t in tensors if isinstance(t, Node) and view.is_data.get(t))
    if len(terms) < 2:
        return None
    others = [u.name for u in view.data_users[source] if u is not node]
    return Join(node, terms, tuple((t, 1.0) for t in tensors), reason=(
        f"not a residual join: `{node.name}` sums the stacked paths `{source.name}`, which "
        f"{'is' if len(others) == 1 else 'are'} also read by "
        f"{', '.join(f'`{o}`' for o in others[:2])}: zeroing a path would change those "
        "reads too"))


def find_joins(view: GraphIndex) -> list[Join]:
    """Every additive merge of two or more data paths, valid residual joins or not."""
    joins: list[Join] = []
    separate: set[Node] = set()
    operands_of: dict[Node, list[tuple[Any, float]] | None] = {}

    def operands(node: Node) -> list[tuple[Any, float]] | None:
        if node not in operands_of:
            operands_of[node] = additive_operands(view, node)
        return operands_of[node]

    keys = view.keys
    for node in reversed(view.nodes):  # outermost add of a longer sum first
        key = keys.get(node)  # (only calls are additive: a quick look first)
        if key is None or (key[0] not in ADDITIVE and key[0] != "sum"):
            continue
        ops = operands(node)
        if ops is None:
            shared = _shared_stack_sum(view, node)
            if shared is not None:
                joins.append(shared)
            continue
        users = view.data_users[node]
        if len(users) == 1 and operands(users[0]) is not None and users[0] not in separate \
                and not view.storage.written_after(node) and _same_scope(node, users[0]):
            continue  # part of a longer sum; examined with its outermost add
        flat, inner = _flatten(view, node, operands)
        data_terms = _data_terms(view, flat, (node, *inner))
        join = None
        if inner and len(set(data_terms)) == len(data_terms) and len(data_terms) >= 2:
            join = _classify(view, node, flat, inner)
        if inner and (join is None or not join.ok):
            # The flat sum is no join: x + (x + f(x)) adds x twice; (x + f(x)) + emb
            # brings in a side input. Examine each add as a join of its own, so that an
            # inner residual block is still found.
            separate.add(node)
            flat, inner = list(ops), []
            data_terms = _data_terms(view, flat, (node,))
            join = None
        elif join is not None:
            joins.append(join)
            continue
        if len(data_terms) < 2:
            continue  # adds a constant, a parameter or a shape-derived value
        joins.append(_classify(view, node, flat, inner))
    joins.reverse()
    return joins


def _term(view: GraphIndex, value: Any, readers: tuple[Node, ...]) -> Node | None:
    """The data node that stands for ``value`` in a sum read by ``readers``: the last data
    write the reading node sees in ``value``'s storage (a buffer filled by writes, whether
    made by ``zeros_like`` or ``clone``), else ``value`` itself if it is data, else ``None``."""
    if not isinstance(value, Node):
        return None
    for reader in readers:
        for read, writers in view.storage.stale_reads(reader):
            if read is value:
                seen = [w for w in writers if view.index[w] < view.index[reader]
                        and view.is_data.get(w)]
                if seen:
                    return seen[-1]
    return value if view.is_data.get(value) else None


def _data_terms(view: GraphIndex, flat: list[tuple[Any, float]],
                readers: tuple[Node, ...]) -> list[Node]:
    terms = [_term(view, v, readers) for v, _ in flat]
    return [t for t in terms if t is not None]


def _flatten(view: GraphIndex, merge: Node, operands) -> tuple[list[tuple[Any, float]], list[Node]]:
    """The operands of the longest sum ending at ``merge`` (iteratively: no recursion)."""
    flat: list[tuple[Any, float]] = []
    inner: list[Node] = []
    # ``torch.stack([a, b]).sum(0)``: the stack is part of the merge (its operands' one use)
    inner += _stacked(view, merge)
    stack: list[tuple[Any, float, Node]] = [(v, c, merge) for v, c in reversed(operands(merge))]
    while stack:
        value, coeff, parent = stack.pop()
        if isinstance(value, Node) and view.is_data.get(value) and \
                view.data_users[value] == [parent] and \
                not view.storage.written_after(value):
            sub = operands(value)
            if sub is not None and _same_scope(value, parent):
                inner.append(value)
                inner += _stacked(view, value)
                stack.extend((v, c * coeff, value) for v, c in reversed(sub))
                continue
        flat.append((value, coeff))
    return flat, inner


def _stacked(view: GraphIndex, node: Node) -> list[Node]:
    """The ``stack`` node a ``stack(...).sum(dim)`` sums, as a list (empty for other adds)."""
    source = view.bound(node).get("input") if view.keys.get(node, ("",))[0] == "sum" else None
    return [source] if isinstance(source, Node) and view.keys.get(source, ("",))[0] == "stack" \
        else []


def _scope(node: Node) -> str | None:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    values = stack.values()
    last = next(reversed(values)) if isinstance(stack, dict) else list(values)[-1]
    return str(last[0] if isinstance(last, tuple) else last)


def _same_scope(inner: Node, outer: Node) -> bool:
    """Whether two adds were written in the same module's forward. A sum a submodule
    returns (a global-context gate's ``x + t(x)``) is that module's own residual, not terms
    of its caller's sum: ``proj(x) + gate(x)`` must not make ``proj`` a branch."""
    return (_scope(inner) or "") == (_scope(outer) or "")  # no stack: the root's forward


def _classify(view: GraphIndex, merge: Node, flat: list[tuple[Any, float]],
              inner: list[Node]) -> Join:
    readers = (merge, *inner)
    term_of = {v: t for v, _ in flat if isinstance(v, Node)
               for t in (_term(view, v, readers),) if t is not None}
    terms = tuple([term_of[v] for v, _ in flat if isinstance(v, Node) and v in term_of])
    join = Join(merge, terms, tuple(flat), tuple(inner))
    join.written = {t: v for v, t in term_of.items() if t is not v}
    if len(set(terms)) < len(terms):
        join.reason = "adds a value to itself"
        return join
    fork, region, mask, why = _find_fork(view, merge, terms, set(inner))
    if fork is None:
        join.reason = why
        return join
    join.fork, join.region = fork, region
    # A node reached from one term only belongs to that term's path; nodes shared by
    # several terms (a norm feeding parallel attention and MLP) belong to none.
    by_mask: dict[int, list[Node]] = {}  # one pass over the region, its order kept
    for n in region:
        m = mask[n]
        if m in by_mask:
            by_mask[m].append(n)
        else:
            by_mask[m] = [n]
    sides = {t: frozenset(by_mask.get(1 << i, ())) for i, t in enumerate(terms)}
    join.sides = sides
    coeff = {term_of.get(v, v): c for v, c in flat if isinstance(v, Node)}
    layer_nodes = view.layer_nodes
    counts = {t: len(sides[t] & layer_nodes) for t in terms}
    verdicts: dict[Node, str | None] = {}

    def verdict(t: Node) -> str | None:
        if t in join.written:
            verdicts[t] = (f"it is `{join.written[t].name}`, a buffer filled by writes "
                           f"(the last `{t.name}`), not the fork's value")
        if t not in verdicts:
            verdicts[t] = _skip_verdict(view, fork, t, sides[t], coeff[t], merge, set(inner)) \
                or (_own_piece(view, fork, t, sides) if counts[t] else None)
        return verdicts[t]

    # the skip is the cheapest path that carries only the fork's value: look at the
    # cheapest first, and at the others only when it is not one
    by_count = sorted(terms, key=counts.__getitem__)
    identity = [t for t in by_count if counts[t] == 0 and verdict(t) is None][:1]
    candidates = identity or [t for t in by_count[:1] if verdict(t) is None]
    if not candidates:
        for t in terms:
            verdict(t)
        candidates = [t for t in terms if verdicts[t] is None]
    else:
        candidates += [t for t in by_count[1:] if counts[t] == counts[candidates[0]]
                       and verdict(t) is None]
    if all(counts[t] == 0 for t in terms) and not any(
            isinstance(v, Node) and not view.is_data[v] for v, _ in flat):
        join.reason = (f"no path between fork `{fork.name}` and the merge has a "
                       "parameterised layer: a parameter-free computation (a polynomial, a "
                       "rotary embedding, ...), not a residual block")
        return join
    if identity:
        join.skip, join.skip_kind = identity[0], "identity"
    elif _unique_cheapest(candidates, terms, counts):
        # fewer layers than every other path that could be a skip (a path that cannot,
        # such as `D * x` beside a projection, is a branch whatever it costs)
        join.skip, join.skip_kind = min(candidates, key=counts.__getitem__), "projection"
        join.skip_layers = tuple(view.nodes_in_order(sides[join.skip] & layer_nodes))
    else:
        if not candidates:
            why = "; ".join(f"`{t.name}`: {verdicts[t]}" for t in terms[:3])
            join.reason = (f"not a residual join: no operand of `{merge.name}` is a skip that "
                           f"carries only the value of fork `{fork.name}` ({why})")
        else:
            counts_text = ", ".join(f"`{t.name}` ({counts[t]} layers)" for t in terms)
            join.reason = (f"no path is clearly the skip: parallel paths {counts_text} from "
                           f"fork `{fork.name}` (RepVGG-style); left alone")
        return join
    if join.skip_kind == "projection" and conditioning_only(view, join.skip, terms):
        join.reason = (f"not a residual join: `{join.skip.name}` is computed from "
                       f"conditioning inputs only, not from the data input "
                       f"`{view.inputs[0].name}`; adding it brings a side input (timestep, "
                       "class embedding) into the path")
        return join
    join.branches = tuple(t for t in terms if t is not join.skip)
    join.branch_operands = tuple(v for v, _ in flat
                                 if not (isinstance(v, Node) and term_of.get(v) is join.skip))
    for term, buffer in join.written.items():
        join.sides[buffer] = sides[term]
    join.ok = True
    return join


def _pieces(view: GraphIndex, fork: Node, side: frozenset[Node]) -> set[Any] | None:
    """The items of ``fork`` (a ``split``'s tuple) that ``side`` reads, or ``None`` when it
    reads the fork whole."""
    items: set[Any] = set()
    for node in side:
        if fork not in view.data_inputs[node]:
            continue
        if node.target is not operator.getitem or node.args[0] is not fork \
                or not isinstance(node.args[1], int):
            return None
        items.add(node.args[1])
    return items


def _own_piece(view: GraphIndex, fork: Node, term: Node,
               sides: dict[Node, frozenset[Node]]) -> str | None:
    """Why a projection path that reads only items of a split fork that no other path reads
    is no skip: ``attn_out(a) + mlp_out(m)`` with ``a, m = split(in_proj(x))`` are parallel
    branches of one fused projection; neither carries the fork's value to the merge."""
    own = _pieces(view, fork, sides[term] | {term})
    if not own:
        return None
    for other, side in sides.items():
        if other is term:
            continue
        theirs = _pieces(view, fork, side | {other})
        if theirs is None or theirs & own:
            return None
    items = ", ".join(str(i) for i in sorted(own))
    return (f"it reads only item {items} of `{fork.name}`, which the other paths do not "
            "read: parallel branches of one fused projection, not a skip")


def _unique_cheapest(candidates: list[Node], terms: tuple[Node, ...],
                     counts: dict[Node, int]) -> bool:
    if not candidates:
        return False
    best = min(candidates, key=counts.__getitem__)
    return all(counts[best] < counts[t] for t in candidates if t is not best)


def _scale_module(view: GraphIndex, node: Node) -> bool:
    """Whether ``node`` scales (or shifts) its one data input elementwise by a parameter of
    a leaf module of its own, in that module's forward: timm's ``res_scale`` (a ``Scale``),
    MobileBERT's ``NoNorm`` (``x * w + b``). The skip's own parameters, like a projection
    shortcut's layers. A parameter of a larger module used inline (an SSM's ``D * x``
    beside its scan) is not one, nor is a scale that reads other data."""
    key = view.op_key(node)[0]
    if key not in MULTIPLY and key not in ADDITIVE:
        return False
    weights = [a for a in (*node.args, *node.kwargs.values())
               if isinstance(a, Node) and not view.is_data.get(a)]
    if len(weights) != 1 or len(view.data_inputs[node]) != 1:
        return False
    roots = view.param_roots.get(weights[0], frozenset())
    if len(roots) != 1:
        return False
    (param,) = roots
    owner = param.rsplit(".", 1)[0] if "." in param else ""
    try:
        module = view.module(owner)
    except (AttributeError, KeyError):
        return False
    if module._modules or param not in view.params_of_module(owner):
        return False
    # the op was written in that module's forward (not its parent's)
    return _scope(node) == owner


def _skip_verdict(view: GraphIndex, fork: Node, term: Node, side: frozenset[Node],
                  coeff: float, merge: Node, inner: set[Node]) -> str | None:
    """Why ``term`` cannot be the skip, or ``None`` if it carries only the fork's value."""
    if coeff != 1.0:
        return f"it enters the merge scaled by {coeff:g}"
    for node in view.nodes_in_order(side | {term} if term is not fork else side):
        inputs = view.data_inputs[node]
        if len(inputs) != 1 or (inputs[0] not in side and inputs[0] is not fork):
            others = [i.name for i in inputs if i not in side and i is not fork]
            return (f"`{node.name}` combines it with another data value "
                    f"({', '.join(f'`{o}`' for o in others[:2]) or 'several inputs'})")
        if node in view.layer_nodes and not view.structured_layer(node) \
                and not _scale_module(view, node):
            return f"`{node.name}` scales it by a parameter of its own, not a projection layer"
    # the skip's values as the merge reads them: no write reaches them on the way
    watched = set(side) | {fork}
    storage = view.storage
    for reader in view.nodes_in_order(side | {merge} | inner):
        for value, writers in storage.stale_reads(reader):
            if value in watched and any(w is not merge for w in writers):
                return (f"{storage.describe_write((value, writers))} before "
                        f"`{reader.name}` reads it, so the merge does not see the fork's "
                        "value")
    return None


def _find_fork(view: GraphIndex, merge: Node, terms: tuple[Node, ...], merge_set: set[Node]
               ) -> tuple[Node | None, frozenset[Node], dict[Node, int], str]:
    """Walk back from ``merge`` in reverse topological order until all paths meet.

    A node is expanded only when every one of its users is already known to lead to the
    merge; so the walk stays inside the region and costs what the region costs. The first
    node reached from every term is the fork.
    """
    full = (1 << len(terms)) - 1
    mask: dict[Node, int] = {}
    heap: list[tuple[int, Node]] = []
    for i, term in enumerate(terms):
        if term not in mask:
            mask[term] = 0
            heapq.heappush(heap, (-view.index[term], term))
        mask[term] |= 1 << i
    merge_set = merge_set | {merge}
    inside = merge_set | view.unused_items
    expanded: set[Node] = set()
    boundary: list[Node] = []
    fork = None
    data_users, data_inputs, index = view.data_users, view.data_inputs, view.index
    while heap:
        _, node = heapq.heappop(heap)
        node_mask = mask[node]
        if node_mask == full:
            fork = node
            break
        if inside.issuperset(data_users[node]) or _split_for_streams(view, node, inside):
            expanded.add(node)
            inside.add(node)
            for inp in data_inputs[node]:
                if inp not in mask:
                    mask[inp] = node_mask
                    heapq.heappush(heap, (-index[inp], inp))
                else:
                    mask[inp] |= node_mask
        else:
            boundary.append(node)
    if fork is None:
        if boundary:
            b = max(boundary, key=view.index.__getitem__)
            outside = [u for u in view.data_users[b] if u not in expanded and u not in merge_set]
            return None, frozenset(), mask, (
                f"not a residual join: the paths into `{merge.name}` do not meet at a fork "
                f"whose intermediate values feed only this merge (`{b.name}` is also used "
                f"by {_uses(view, outside)})")
        return None, frozenset(), mask, (f"not a residual join: the paths into `{merge.name}` "
                                         "share no common input")
    boundary_set = set(boundary)
    leaking = [u for u in view.data_users[fork] if u in boundary_set]
    if leaking:
        u = leaking[0]
        outside = [w for w in view.data_users[u] if w not in expanded and w not in merge_set]
        return None, frozenset(), mask, (
            f"not a residual join: `{u.name}`, between fork `{fork.name}` and merge "
            f"`{merge.name}`, is also used by {_uses(view, outside)}")
    region = _descendants_within(view, fork, expanded)
    return fork, region, mask, ""


def _uses(view: GraphIndex, users: list[Node]) -> str:
    """``users`` named for a reason: a view that is written in place says by what."""
    parts = []
    for user in users[:3]:
        writers = view.storage.writers_after(user)
        written = f" (written in place by `{writers[0].name}`)" if writers else ""
        parts.append(f"`{user.name}`{written}")
    return ", ".join(parts)


def _split_for_streams(view: GraphIndex, node: Node, inside: set[Node]) -> bool:
    """Whether ``node``'s value is cut into pieces, one of which leads to this merge: a
    joint attention whose output is split into an image and a text stream (SD3, Flux), each
    added to its own residual. The other pieces are other streams, not other uses."""
    users = view.data_users[node]
    if len(users) < 2 or not any(u in inside for u in users):
        return False
    for user in users:
        if user in inside:
            continue
        if user.op not in ("call_function", "call_method") or view.op_key(user)[0] not in PIECES:
            return False
    pieces = [u for u in users if u in inside]
    return all(p.op in ("call_function", "call_method") and view.op_key(p)[0] in PIECES
               for p in pieces)


def _descendants_within(view: GraphIndex, fork: Node, allowed: set[Node]) -> frozenset[Node]:
    data_users = view.data_users
    seen: set[Node] = set()
    stack = [u for u in data_users[fork] if u in allowed]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for u in data_users[node]:
            if u in allowed and u not in seen:
                stack.append(u)
    return frozenset(seen)
