"""Values have storages: which values share one, and which writes a read sees.

A graph's value edges say which node produced a value, not what a reader finds in its
storage: ``t = x.T; t.mul_(2); y = x + h`` reads ``x`` after ``mul_`` wrote it through the
view ``t``. This index gives every value the set of storages it may live in (its *roots*:
the placeholder, attribute or op that allocated them), from the op records of
:mod:`zeta_fx.semantics` (which inputs an op writes, which its output aliases), and lists
every *stale read*: an edge ``value -> reader`` such that some other node writes one of
``value``'s storages after ``value`` was made and before ``reader`` runs. A storage held by
the module (a parameter, buffer or tensor attribute: a ``get_attr``) outlives the call, so a
write to it anywhere is seen by every other read of it.

Attributes that share storage (``self.w_half = self.fc.weight.data[:, :4]``) have one root:
the storage itself, not the name.

>>> import torch
>>> from torch import fx
>>> def f(x):
...     t = x.T
...     t.mul_(2)
...     return x + 1
>>> gm = fx.symbolic_trace(f)
>>> storage = Storages(list(gm.graph.nodes), gm)
>>> [(v.name, r.name, [w.name for w in ws]) for r in gm.graph.nodes
...  for v, ws in storage.stale_reads(r)]
[('x', 'add', ['mul_'])]
>>> print(storage.describe_write(storage.stale_reads(storage.nodes[-2])[0]))
`x` is written in place by `mul_` through the view `getattr_1`
"""

from __future__ import annotations

import operator
from bisect import bisect_right
from typing import Any, Callable

import torch
from torch import fx, nn
from torch.fx import Node

from zeta_fx.semantics import Effects, module_effects, op_effects
from zeta_fx.semantics.keys import op_key
from zeta_fx.semantics.tables import ALWAYS_PAIRS, INDEXED_PAIRS
from zeta_fx.tensors import fetch_attr

__all__ = ["Storages"]


def _nodes_in(value: Any) -> list[Node]:
    if isinstance(value, Node):
        return [value]
    if isinstance(value, (list, tuple)):
        return [n for v in value for n in _nodes_in(v)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _nodes_in(v)]
    return []


def _item_roots(roots: frozenset[Any], item: Node) -> frozenset[Any]:
    """The roots of ``container[i]``: an op that returns several fresh tensors (``topk``'s
    values and indices) gives each its own storage; items of a view (``split``) share the
    input's."""
    container, index = item.args[0], item.args[1] if len(item.args) > 1 else None
    if container in roots and isinstance(index, int) and _several_tensors(container):
        return (roots - {container}) | {(container, index)}
    return roots


def _several_tensors(node: Any) -> bool:
    """Whether ``node`` is known to return a tuple of fresh tensors (``topk``'s values and
    indices; a tuple in the capture's metadata). Otherwise ``t[0]`` is taken to be a view of
    ``t``'s first row: ``h[0].fill_(1.0)`` writes ``h``."""
    if not isinstance(node, Node):
        return False
    val = node.meta.get("val")
    if val is not None:
        return isinstance(val, (tuple, list))
    if node.op not in ("call_function", "call_method") or op_key(node)[0] not in INDEXED_PAIRS:
        return False
    # ``max(x, dim)`` is a pair; ``max(x)`` and ``max(a, b)`` are one tensor
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    return op_key(node)[0] in ALWAYS_PAIRS or \
        (isinstance(dim, int) and not isinstance(dim, bool))


class Storages:
    """The storage roots of every value of a graph, its writers and its stale reads.

    ``nodes`` are the graph's nodes in order; ``root`` holds the real tensors (``get_attr``
    targets are looked up there first, then in ``gm``). ``bound(node)`` names a call's
    arguments (:func:`zeta_fx.semantics.keys.bind`); ``module_of(target)`` finds a called
    module (one whose forward is not torch's own may write what it receives).
    """

    def __init__(self, nodes: list[Node], root: nn.Module, *,
                 gm: fx.GraphModule | None = None,
                 bound: Callable[[Node], dict[str, Any]] | None = None,
                 module_of: Callable[[str], nn.Module] | None = None,
                 dtype_of: Callable[[Node], Any] | None = None) -> None:
        self.nodes = nodes
        self._root, self._gm = root, gm
        self._bound = bound
        self._module_of = module_of or (lambda fqn: root.get_submodule(fqn))
        self._dtype_of = dtype_of
        self.index = {n: i for i, n in enumerate(nodes)}
        # the storages of every value that shares one (an alias, an attribute, an item);
        # any other value lives in its own
        self._shared: dict[Node, frozenset[Any]] = {}
        self.effects: dict[Node, Effects] = {}
        #: writer -> the nodes (arguments) it writes, and the roots it writes
        self.written_args: dict[Node, tuple[Node, ...]] = {}
        self.written_roots: dict[Node, frozenset[Any]] = {}
        self._persistent: set[Any] = set()
        self._by_root: dict[Any, list[int]] = {}
        self._stale: dict[Node, list[tuple[Node, tuple[Node, ...]]]] = {}
        self._build()

    # -- queries -------------------------------------------------------------------------
    def stale_reads(self, reader: Node) -> list[tuple[Node, tuple[Node, ...]]]:
        """``[(value, writers)]``: the inputs ``reader`` reads after other nodes wrote their
        storage since they were made (``writers``, in graph order)."""
        return self._stale.get(reader, [])

    @property
    def readers_of_stale(self) -> dict[Node, Any]:
        """Every node with a stale read (a mapping, for membership)."""
        return self._stale

    def written_after(self, value: Node) -> bool:
        """Whether some node writes a storage of ``value`` after ``value`` is made (any
        write at all, for a storage the module holds)."""
        here = self.index.get(value, -1)
        for root in self.roots_of(value):
            positions = self._by_root.get(root)
            if positions and (root in self._persistent or positions[-1] > here):
                return True
        return False

    def writers_after(self, value: Node) -> list[Node]:
        """The nodes that write a storage of ``value`` after it is made."""
        here = self.index.get(value, -1)
        found = sorted({p for root in self.roots_of(value) for p in
                        self._by_root.get(root, ()) if p > here or root in self._persistent})
        return [self.nodes[p] for p in found]

    def describe_write(self, stale: tuple[Node, tuple[Node, ...]]) -> str:
        """``"`x` is written in place by `mul_` through the view `t`"`` for a stale read."""
        value, writers = stale
        writer = writers[0]
        how = "may be written by the opaque call" if self.effects[writer].opaque else \
            "is written in place by"
        through = [a for a in self.written_args.get(writer, ()) if a is not value]
        via = f" through the view `{through[0].name}`" if through else ""
        return f"`{value.name}` {how} `{writer.name}`{via}"

    # -- construction --------------------------------------------------------------------
    def _effects_of(self, node: Node) -> Effects:
        if node.op == "call_module":
            return module_effects(self._module_of(node.target))
        return op_effects(node)

    def _changes_dtype(self, cast: Node, sources: list[Node]) -> bool:
        if self._dtype_of is None or len(sources) != 1:
            return False
        before, after = self._dtype_of(sources[0]), self._dtype_of(cast)
        return before is not None and after is not None and before != after

    def _argument(self, node: Node, name: str) -> Any:
        if name == "out":
            return node.kwargs.get("out")
        if name == "input" and node.args and node.op != "call_function":
            return node.args[0]  # a method's self, a module's first input
        bound = self._bound(node) if self._bound is not None else {}
        if name in bound:
            return bound[name]
        if name == "input":
            return node.args[0] if node.args else node.kwargs.get("input",
                                                                  node.kwargs.get("self"))
        return node.kwargs.get(name)

    @staticmethod
    def tensor_root(tensor: torch.Tensor) -> Any:
        """The root of a tensor the module holds: its storage (shared by every view)."""
        try:
            return ("storage", tensor.untyped_storage()._cdata)
        except (RuntimeError, NotImplementedError, TypeError):  # a subclass without one
            return ("tensor", id(tensor))

    def _attr_root(self, node: Node) -> Any:
        value = fetch_attr(self._root, node.target)
        if value is None and self._gm is not None:
            value = fetch_attr(self._gm, node.target)
        return self.tensor_root(value) if isinstance(value, torch.Tensor) else None

    def roots_of(self, value: Node) -> frozenset[Any] | tuple[Node]:
        """The storages ``value`` may live in (a value that aliases nothing: its own)."""
        return self._shared.get(value) or (value,)

    def _build(self) -> None:
        effects_of, all_effects = self._effects_of, self.effects
        writes = False
        for node in self.nodes:
            if node.op in ("call_function", "call_method", "call_module"):
                effects = all_effects[node] = effects_of(node)
                writes = writes or bool(effects.writes) or effects.opaque
        if writes:  # (a graph nothing writes has no stale read: every value as it was made)
            self._trace_storages()

    def _trace_storages(self) -> None:
        shared, index, roots_of = self._shared, self.index, self.roots_of
        for node in self.nodes:
            op = node.op
            if op == "placeholder" or op == "output":
                continue  # its own storage; an output holds none of its own
            if op == "get_attr":
                root = self._attr_root(node)
                shared[node] = frozenset((root,)) if root is not None else frozenset()
                if root is not None:
                    self._persistent.add(root)
                continue
            effects = self.effects[node]
            if effects.opaque:
                inputs = node.all_input_nodes
                shared[node] = frozenset().union(*(roots_of(i) for i in inputs)) | {node}
                written = [i for i in inputs if roots_of(i)]
            else:
                if effects.aliases:
                    aliased = [n for name in effects.aliases
                               for n in _nodes_in(self._argument(node, name))]
                    if effects.cast and self._changes_dtype(node, aliased):
                        aliased = []  # a cast to another dtype copies
                    if aliased:
                        got = frozenset().union(*(roots_of(a) for a in aliased))
                        if node.target is operator.getitem:
                            got = _item_roots(got, node)
                        shared[node] = got
                if not effects.writes:
                    continue
                written = [n for name in effects.writes
                           for n in _nodes_in(self._argument(node, name))]
            if written:
                hit = frozenset().union(*(roots_of(w) for w in written))
                if hit:
                    self.written_args[node] = tuple(written)
                    self.written_roots[node] = hit
                    if all(len(w.users) == 1 and w not in shared for w in written):
                        # a fresh value whose only reader is this write (``relu_`` right
                        # after a norm): no read can see it stale; only the writer's own
                        # output lives on in that storage, and later writes say so
                        continue
                    for root in hit:
                        self._by_root.setdefault(root, []).append(index[node])
        if self._by_root:
            self._find_stale()

    def _find_stale(self) -> None:
        index, by_root, persistent, nodes = self.index, self._by_root, self._persistent, \
            self.nodes
        # the values that live in a written storage: the written roots that are values
        # themselves, and the values that alias one
        candidates = [r for r in by_root if isinstance(r, Node)]
        candidates += [v for v, rs in self._shared.items() if not rs.isdisjoint(by_root)]
        for value in dict.fromkeys(candidates):
            hit = [r for r in self.roots_of(value) if r in by_root]
            if not hit:
                continue
            made = index[value]
            for reader in value.users:
                at = index[reader]
                writers: set[int] = set()
                for root in hit:
                    positions = by_root[root]
                    if root in persistent:
                        writers.update(p for p in positions if p != at)
                    else:  # writes after the value was made and before the read
                        lo = bisect_right(positions, made)
                        writers.update(p for p in positions[lo:] if p < at)
                if writers:
                    self._stale.setdefault(reader, []).append(
                        (value, tuple(nodes[p] for p in sorted(writers))))
