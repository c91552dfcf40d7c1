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

__all__ = ["Storages"]


def _nodes_in(value: Any) -> list[Node]:
    if isinstance(value, Node):
        return [value]
    if isinstance(value, (list, tuple)):
        return [n for v in value for n in _nodes_in(v)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _nodes_in(v)]
    return []


def _fetch(root: nn.Module, dotted: str) -> Any:
    obj: Any = root
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _item_roots(roots: frozenset[Any], item: Node) -> frozenset[Any]:
    """The roots of ``container[i]``: an op that returns several fresh tensors (``topk``'s
    values and indices) gives each its own storage; items of a view (``split``) share the
    input's."""
    container, index = item.args[0], item.args[1] if len(item.args) > 1 else None
    if container in roots and isinstance(index, int):
        return (roots - {container}) | {(container, index)}
    return roots


class Storages:
    """The storage roots of every value of a graph, its writers and its stale reads.

    ``nodes`` are the graph's nodes in order; ``root`` holds the real tensors (``get_attr``
    targets are looked up there first, then in ``gm``). ``bound(node)`` names a call's
    arguments (:func:`zeta_fx.semantics.keys.bind`); ``known_module(target)`` tells whether a module
    computes what its torch.nn class does (an opaque one may write what it receives).
    """

    def __init__(self, nodes: list[Node], root: nn.Module, *,
                 gm: fx.GraphModule | None = None,
                 bound: Callable[[Node], dict[str, Any]] | None = None,
                 module_of: Callable[[str], nn.Module] | None = None,
                 known_module: Callable[[str], bool] | None = None,
                 dtype_of: Callable[[Node], Any] | None = None) -> None:
        self.nodes = nodes
        self._root, self._gm = root, gm
        self._bound = bound
        self._module_of = module_of or (lambda fqn: root.get_submodule(fqn))
        self._known = known_module or (lambda fqn: False)
        self._dtype_of = dtype_of
        self.index = {n: i for i, n in enumerate(nodes)}
        self.roots: dict[Node, frozenset[Any]] = {}
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
    def readers_of_stale(self) -> frozenset[Node]:
        """Every node with a stale read."""
        return frozenset(self._stale)

    def written_after(self, value: Node) -> bool:
        """Whether some node writes a storage of ``value`` after ``value`` is made (any
        write at all, for a storage the module holds)."""
        here = self.index.get(value, -1)
        for root in self.roots.get(value, ()):
            positions = self._by_root.get(root)
            if positions and (root in self._persistent or positions[-1] > here):
                return True
        return False

    def writers_after(self, value: Node) -> list[Node]:
        """The nodes that write a storage of ``value`` after it is made."""
        here = self.index.get(value, -1)
        found = sorted({p for root in self.roots.get(value, ()) for p in
                        self._by_root.get(root, ()) if p > here or root in self._persistent})
        return [self.nodes[p] for p in found]

    def writes(self, node: Node) -> bool:
        return node in self.written_roots

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
            target = node.target
            return module_effects(self._module_of(target), self._known(target))
        return op_effects(node)

    def _changes_dtype(self, cast: Node, sources: list[Node]) -> bool:
        if self._dtype_of is None or len(sources) != 1:
            return False
        before, after = self._dtype_of(sources[0]), self._dtype_of(cast)
        return before is not None and after is not None and before != after

    def _argument(self, node: Node, name: str) -> Any:
        if name == "out":
            return node.kwargs.get("out")
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
        value = _fetch(self._root, node.target)
        if value is None and self._gm is not None:
            value = _fetch(self._gm, node.target)
        return self.tensor_root(value) if isinstance(value, torch.Tensor) else None

    def _build(self) -> None:
        roots, index = self.roots, self.index
        empty: frozenset[Any] = frozenset()
        for node in self.nodes:
            op = node.op
            if op == "placeholder":
                roots[node] = frozenset((node,))
                continue
            if op == "get_attr":
                root = self._attr_root(node)
                roots[node] = frozenset((root,)) if root is not None else empty
                if root is not None:
                    self._persistent.add(root)
                continue
            if op == "output":
                roots[node] = empty
                continue
            effects = self._effects_of(node)
            self.effects[node] = effects
            inputs = node.all_input_nodes
            if effects.opaque:
                shared = frozenset().union(*(roots[i] for i in inputs)) if inputs else empty
                roots[node] = shared | {node}
                written = [i for i in inputs if roots[i]]
            else:
                aliased = [n for name in effects.aliases
                           for n in _nodes_in(self._argument(node, name))]
                if effects.cast and self._changes_dtype(node, aliased):
                    aliased = []  # a cast to another dtype copies
                roots[node] = frozenset().union(*(roots[a] for a in aliased)) if aliased \
                    else frozenset((node,))
                if node.target is operator.getitem and aliased:
                    roots[node] = _item_roots(roots[node], node)
                written = [n for name in effects.writes
                           for n in _nodes_in(self._argument(node, name))]
            if written:
                hit = frozenset().union(*(roots[w] for w in written))
                if hit:
                    self.written_args[node] = tuple(written)
                    self.written_roots[node] = hit
                    for root in hit:
                        self._by_root.setdefault(root, []).append(index[node])
        if self._by_root:
            self._find_stale()

    def _find_stale(self) -> None:
        index, by_root, persistent, nodes = self.index, self._by_root, self._persistent, \
            self.nodes
        for value, value_roots in self.roots.items():
            hit = [r for r in value_roots if r in by_root]
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

