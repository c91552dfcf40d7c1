"""Zero facts: what zeroing a set of parameters does to every value of the graph.

A forward abstract interpretation over the value graph, one sweep in topological order, on
the lattice of :mod:`zeta_fx.semantics.lattice` (zero / finite / partly zero / unknown),
with the transfer functions of :mod:`zeta_fx.semantics.transfer`. Values the zeroing does
not reach are as they were, and are taken to be finite: the model as given computes finite
values from finite parameters (buffers and literal constants, such as a mask of ``-inf``,
are looked at instead). A read sees what was written to its storage since the value was
made (:mod:`zeta_fx.analysis.storage`); constants are taken in the dtype the op computes in
(:mod:`zeta_fx.analysis.dtypes`). A module counts as a known layer only if its ``forward`` is
the known class's own and no hook runs around it.

>>> import torch
>>> from torch import fx, nn
>>> class Block(nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.fc = nn.Linear(4, 4)
...     def forward(self, x):
...         h = self.fc(x)
...         return x + h, h / h.norm(), torch.sigmoid(h)
>>> gm = fx.symbolic_trace(Block())
>>> facts = ZeroFacts(gm, gm, zeroed={"fc.weight", "fc.bias"})
>>> [facts[n].name for n in gm.graph.nodes if n.op == "call_function"][:1]
['FINITE']
>>> {n.name: facts[n].name for n in gm.graph.nodes if n.op in ("call_module", "call_method")}
{'fc': 'ZERO', 'norm': 'ZERO'}
>>> facts.fact_of("truediv").name, facts.fact_of("sigmoid").name
('UNKNOWN', 'FINITE')
>>> print(facts.why("truediv"))
`truediv` divides by `norm`, which may be zero
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import fx, nn
from torch.fx import Node

from zeta_fx.analysis.facts.graph import SweepGraph
from zeta_fx.analysis.facts.modules import ModuleSteps
from zeta_fx.semantics.decompose import decompose
from zeta_fx.semantics.dtypes import (computation_dtype, holds_exactly_enough, in_dtype,
                                      overflows_easily)
from zeta_fx.semantics.keys import bind_as, op_key
from zeta_fx.semantics.lattice import (F_, U, Z, Fact, constant_fact, finite, join,
                                       normalised, product, singular, total)
from zeta_fx.semantics.signs import nonnegative, nonpositive
from zeta_fx.semantics.tables import (SUBGRAPH_CALLS, BATCH_NORM_KERNELS, BOUNDED_BY_ONE, DOMAINS, EXPONENTIAL, FINITE_OPS, FRESH, OVERFLOWING,
                                      PRESERVING, SINGULAR)
from zeta_fx.semantics.transfer import (HANDLERS, QUICK_METHODS, index_item, makes_zeros,
                                       may_be_zero, neg_inf_masked)

__all__ = ["Fact", "ZeroFacts", "makes_zeros", "join", "product", "total", "zero_inputs_needed"]


# -- the interpretation -------------------------------------------------------------------

class ZeroFacts(ModuleSteps):
    """The fact of every value of a graph once the parameters ``zeroed`` (FQNs) are zero.

    ``graph`` is the :class:`~zeta_fx.analysis.facts.graph.SweepGraph` every sweep of a
    pass shares (from the value-flow index), or a bare ``GraphModule`` with ``root``, the
    model holding the real modules and tensors. ``nodes`` restricts the sweep to a part of
    the graph (a residual region); values it reads from outside that part count as they
    were. Nodes that are neither data nor weights (shape queries, fresh tensors) carry no
    value of the zeroed parameters. ``seeds`` gives placeholders' facts (a decomposition
    read with its operands' facts).

    ``facts[node]`` is a :class:`Fact`; ``why(node)`` explains one that is not ``ZERO``
    where its inputs were; ``changed(node)`` tells whether the zeroing reaches it at all.

    The class is long because it is the driver of an abstract interpretation: the queries
    the transfer functions ask (``operand``, ``fact_at``, ``eps_in``, ...), the sweep, and
    the step for functions and methods (the module step is
    :class:`~zeta_fx.analysis.facts.modules.ModuleSteps`; the per-op transfer functions
    are :mod:`zeta_fx.semantics.transfer`). All its state is the facts of one sweep.
    """

    def __init__(self, graph: SweepGraph | fx.GraphModule, root: nn.Module | None = None, *,
                 zeroed: Iterable[str] = (), nodes: Iterable[Node] | None = None,
                 seeds: Mapping[Node, Fact] | None = None) -> None:
        if isinstance(graph, fx.GraphModule):
            graph = SweepGraph.bare(graph, root, decompose=not seeds)
        self.graph = graph
        self.gm, self.root = graph.gm, graph.root
        self.zeroed = frozenset(zeroed)
        self.declared = graph.declared
        self.preserving = graph.preserving
        self._data = graph.data
        self._weights = graph.weights
        self._facts: dict[Node, Fact] = {}
        self._items: dict[Node, dict[int, Fact]] = {}
        self._why: dict[Node, str] = {}
        self._by_name: dict[str, Node] | None = None
        self._literal_cache: dict[int, Fact] = {}
        self._owned: dict[str, list[str]] = {}
        for fqn in self.zeroed:  # every module prefix -> the zeroed names under it
            parts = fqn.split(".")
            for cut in range(len(parts)):
                self._owned.setdefault(".".join(parts[:cut]), []).append(".".join(parts[cut:]))
        self._module_of = graph.module_of
        self._kinds = graph.kinds
        self._modules = graph.leaves
        self._lazy: set[Node] = set()  # FINITE by the quick rule; reason worked out on demand
        self._classes: dict[type, tuple[str | None, str]] = {}
        self._inputs = graph.inputs
        self._keys = graph.keys
        self._bound = graph.bound
        self._storage = graph.storage
        self._dtypes = graph.dtypes
        self._reading: dict[Node, Fact] = {}  # what the node being stepped reads, if stale
        self.sign_cache: dict[tuple[str, Node, Node | None], bool] = {}  # signs' answers
        # placeholders' facts where this sweep reads a decomposed op (others: as they were)
        self._seeds = seeds or {}
        self._decompositions = graph.decompositions
        index = graph.index
        order = list(self.gm.graph.nodes) if nodes is None else \
            sorted(nodes, key=(index.__getitem__ if index is not None else _position(self.gm)))
        self._order = order
        self._sweep(order)

    # -- queries ---------------------------------------------------------------------
    def __getitem__(self, node: Node) -> Fact:
        return self.fact(node)

    def fact(self, value: Any) -> Fact:
        """The fact of a node, constant or (nested) list of them."""
        if isinstance(value, Node):
            if self._reading:
                got = self._reading.get(value)
                if got is not None:
                    return got
            got = self._facts.get(value)
            if got is None:  # outside the swept part: as it was
                return self._unchanged_fact(value)
            return got
        if isinstance(value, (list, tuple)):
            return join(*(self.fact(v) for v in value)) if value else Z
        return constant_fact(value)

    def fact_at(self, value: Any, reader: Node) -> Fact:
        """The fact of ``value`` as ``reader`` reads it: joined with what was written to its
        storage in between (``zeta_fx.analysis.storage``)."""
        if isinstance(value, Node) and self._storage is not None:
            for read, writers in self._storage.stale_reads(reader):
                if read is value:
                    return self._read_fact(value, writers, reader)
        return self.fact(value)

    def why_at(self, value: Node, reader: Node) -> str:
        """:meth:`why` for ``value`` as ``reader`` reads it: a write in between comes first."""
        if self._storage is not None:
            for read, writers in self._storage.stale_reads(reader):
                if read is value and self.fact_at(value, reader) != self.fact(value):
                    return (f"{self._storage.describe_write((value, writers))} before "
                            f"`{reader.name}` reads it")
        return self.why(value)

    def read_is_stale(self, value: Any, reader: Node) -> bool:
        """Whether a write reaches ``value``'s storage between its making and ``reader``."""
        if not isinstance(value, Node) or self._storage is None:
            return False
        return any(read is value for read, _ in self._storage.stale_reads(reader))

    def written_after(self, value: Any) -> bool:
        """Whether a write reaches ``value``'s storage after it is made: its sign and range
        are then not what its op says."""
        return isinstance(value, Node) and self._storage is not None and \
            self._storage.written_after(value)

    def dtype_of(self, value: Any) -> "torch.dtype | None":
        """The floating dtype of ``value`` (a node), if known."""
        if self._dtypes is None or not isinstance(value, Node):
            return value.dtype if isinstance(value, torch.Tensor) else None
        return self._dtypes[value]

    def eps_in(self, eps: Any, value: Any, key: str) -> Any:
        """``eps`` as op ``key`` adds it to ``value``: in the dtype it computes in, where it
        may be zero (``F.normalize``'s ``1e-12`` in float16)."""
        if holds_exactly_enough(eps):
            return eps  # nonzero and finite in every floating dtype: no dtype to look up
        dtype = self.dtype_of(value)
        if dtype is None or isinstance(eps, bool) or not isinstance(eps, (int, float)):
            return eps
        return in_dtype(float(eps), computation_dtype(key, dtype))

    def operand(self, value: Any, node: Node) -> Fact:
        """The fact of an operand of ``node``: a value's, or a constant's in ``node``'s
        dtype."""
        if isinstance(value, (Node, list, tuple)):
            return self.fact(value)
        return self.constant(value, node)

    def constant(self, value: Any, node: Node) -> Fact:
        """The fact of a Python number as ``node`` combines it: in ``node``'s dtype, where
        ``1e-8`` is zero in float16 and ``-1e9`` is ``-inf``."""
        if holds_exactly_enough(value):
            return constant_fact(value)
        return constant_fact(value, self.dtype_of(node))

    def fact_of(self, name: str) -> Fact:
        return self.fact(self._named(name))

    def _named(self, name: str) -> Node:
        if self._by_name is None:
            self._by_name = {node.name: node for node in self._order}
        return self._by_name[name]

    def changed(self, value: Any) -> bool:
        """Whether the zeroing reaches ``value`` (a node, or a list holding nodes)."""
        if isinstance(value, Node):
            return value in self._facts  # a fact is recorded exactly for the values reached
        if isinstance(value, (list, tuple)):
            return any(self.changed(v) for v in value)
        if isinstance(value, dict):
            return any(self.changed(v) for v in value.values())
        return False

    def why(self, value: Node | str) -> str:
        """Why ``value`` is not ``ZERO``: the first node on its way that lost zero."""
        node = self._named(value) if isinstance(value, str) else value
        seen: set[Node] = set()
        while node not in seen:
            seen.add(node)
            if node in self._lazy:  # the full step, for its reason (the fact is the same)
                self._lazy.discard(node)
                if node.op == "call_module":
                    self._module(node, ())
                else:
                    self._function(node)
            reason = self._why.get(node)
            if reason:
                return reason
            worse = [i for i in node.all_input_nodes if self.changed(i) and self.fact(i) != Z]
            if not worse:
                break
            node = worse[0]
        return f"`{node.name}` is {self.fact(node).name.lower().replace('_', ' ')}"

    # -- the sweep ---------------------------------------------------------------------
    def _unchanged_fact(self, node: Node) -> Fact:
        if node.op == "get_attr":
            return self._literal(node)
        return Z if makes_zeros(node) else F_

    def _literal(self, node: Node) -> Fact:
        try:
            value = _fetch(self.root, node.target)
        except AttributeError:
            try:
                value = _fetch(self.gm, node.target)
            except AttributeError:
                return F_
        return self._tensor_fact(value)

    def _tensor_fact(self, value: Any) -> Fact:
        if not isinstance(value, torch.Tensor):
            return constant_fact(value)
        if isinstance(value, nn.Parameter):
            return F_  # the model's own parameters are finite; reading them all costs time
        cached = self._literal_cache.get(id(value))
        if cached is None:
            if isinstance(value, nn.parameter.UninitializedTensorMixin) or value.is_meta or \
                    not (value.is_floating_point() or value.is_complex()):
                cached = F_
            elif value.numel() and not bool(torch.isfinite(value.detach()).all()):
                cached = U
            elif value.numel() == 0 or not bool(value.detach().any()):
                cached = Z
            else:
                cached = F_
            self._literal_cache[id(value)] = cached
        return cached

    def _set(self, node: Node, fact: Fact, why: str = "") -> None:
        self._facts[node] = fact
        if why and fact != Z:
            self._why[node] = why

    def _sweep(self, order: list[Node]) -> None:
        """Visit ``order`` (topological); a node the zeroing does not reach keeps its value."""
        facts, inputs, owned_by = self._facts, self._inputs, self._owned
        zeroed, data, weights = self.zeroed, self._data, self._weights
        leaves, lazy = self._modules, self._lazy
        stale = self._storage.readers_of_stale if self._storage is not None else ()
        for node in order:
            op = node.op
            if stale and node in stale and op not in ("output", "get_attr") and \
                    self._stale_step(node):
                continue
            if op == "call_module":
                target = node.target
                owned = owned_by.get(target)
                if owned is None:
                    for i in (inputs[node] if inputs is not None else node.all_input_nodes):
                        if i in facts:
                            break
                    else:
                        continue  # the zeroing does not reach it: as it was
                    if (leaves.get(target) or self._leaf(target))[3]:
                        # a layer, norm or activation with its own tensors finite maps a
                        # FINITE input to FINITE (see _module): skip the full step unless
                        # its reason is asked for
                        args = node.args  # the first data argument, as _module reads it
                        first = args[0] if args and isinstance(args[0], Node) else next(
                            (a for a in (*args, *node.kwargs.values()) if isinstance(a, Node)),
                            None)
                        if first is not None and facts.get(first) is F_:
                            facts[node] = F_
                            lazy.add(node)
                            continue
                    owned = ()
                self._module(node, owned)
            elif op == "placeholder":
                if node in self._seeds:
                    facts[node] = self._seeds[node]
            elif op == "get_attr":
                if node.target in zeroed or (weights is not None and
                                             not zeroed.isdisjoint(weights.get(node, ()))):
                    facts[node] = Z  # (an attribute that shares a zeroed parameter's storage)
            elif op != "placeholder" and op != "output":
                for i in (inputs[node] if inputs is not None else node.all_input_nodes):
                    if i in facts:
                        break
                else:
                    continue  # the zeroing does not reach it: as it was
                if data is not None and not data.get(node) and \
                        not (weights is not None and weights.get(node)):
                    continue  # a shape or metadata query: no values flow through it
                # quick rules, each what _function computes for these arguments; a reason
                # is worked out on demand
                key = self.key(node)[0]
                args = node.args
                if op == "call_method" and key in QUICK_METHODS:
                    # the value of args[0] passed on (bound as "input")
                    kwargs = node.kwargs
                    if args and facts.get(args[0]) is F_ and "input" not in kwargs and \
                            "self" not in kwargs:
                        facts[node] = F_
                        lazy.add(node)
                        continue
                elif key == "getitem" and op == "call_function" and len(args) == 2:
                    source = args[0]  # an item of a value without items: its fact
                    if facts.get(source) is F_ and source not in self._items:
                        facts[node] = F_
                        continue
                elif key == "add" and len(args) == 2 and not node.kwargs and \
                        not isinstance(node.target, torch._ops.OpOverload):
                    x, y = facts.get(args[0]), facts.get(args[1])  # input + other, alpha 1
                    if x is not None and y is not None:
                        facts[node] = total(x, y)
                        lazy.add(node)
                        continue
                self._function(node)

    def _read_fact(self, value: Node, writers: Sequence[Node], reader: Node) -> Fact:
        """What ``reader`` finds in ``value``'s storage after ``writers`` wrote it: the value
        joined with what each wrote (an opaque call the zeroing reaches: anything; a write
        the zeroing does not reach: the model's own finite values; a write later in the
        call, to a storage the module holds, is not known yet: anything)."""
        facts, storage = self._facts, self._storage
        written = []
        for w in writers:
            if w in facts:
                written.append(U if storage.effects[w].opaque else facts[w])
            else:
                later = storage.index[w] > storage.index[reader]
                written.append(U if later and value in facts else F_)
        return join(self.fact(value), *written)

    def _stale_step(self, node: Node) -> bool:
        """Step ``node``, which reads values that writes reached since they were made;
        ``False`` (nothing done) if the zeroing reaches neither those values nor the
        writes: the ordinary step decides then."""
        facts = self._facts
        reading: dict[Node, Fact] = {}
        changed_by: tuple[Node, tuple[Node, ...]] | None = None
        for value, writers in self._storage.stale_reads(node):
            if value in facts or any(w in facts for w in writers):
                reading[value] = self._read_fact(value, writers, node)
                if changed_by is None and reading[value] != self.fact(value):
                    changed_by = (value, writers)
        if not reading:
            return False
        self._reading = reading
        try:
            if node.op == "call_module":
                self._module(node, self._owned.get(node.target, ()))
            else:
                self._function(node)
        finally:
            self._reading = {}
        if changed_by is not None and facts[node] != Z:
            self._why[node] = (f"{self._storage.describe_write(changed_by)} before "
                               f"`{node.name}` reads it")
        return True

    def key(self, node: Node) -> tuple[str, bool]:
        """``op_key(node)``, from the value-flow index's table when it has one."""
        got = self._keys.get(node) if self._keys is not None else None
        return got if got is not None else op_key(node)

    # -- functions and methods -------------------------------------------------------------
    def _function(self, node: Node) -> None:
        key, in_place = self.key(node)
        args = self._bound(node) if self._bound is not None else bind_as(node, key)
        x = self.fact(args.get("input"))
        what = f"`{node.name}` ({key})"
        if key == "getitem":
            source, index = node.args[0], node.args[1] if len(node.args) > 1 else None
            items = self._items.get(source) if isinstance(source, Node) else None
            if items is None and isinstance(source, Node) and self.key(source)[0] in SUBGRAPH_CALLS:
                items = self._items.get(source) if self._through_subgraph(source, what) else None
            positions = index_item(self, source, index)
            if positions is not None:
                self._set(node, positions)
            elif items is not None and isinstance(index, int):
                self._set(node, items.get(index, F_), f"{what}: item {index}")
            else:
                self._set(node, self.fact(source) if not isinstance(source, (list, tuple))
                          else self.fact(source[index] if isinstance(index, int) else source))
            return
        handler = HANDLERS.get(key)
        if handler is not None:
            self._set(node, *handler(self, node, args, what))
            return
        through = self._through_subgraph(node, what) if key in SUBGRAPH_CALLS else None
        if through is not None:
            self._set(node, *through)
            return
        if x == U and key in FINITE_OPS:
            masked = neg_inf_masked(self, node, key, args.get("input"))
            if masked is not None:
                self._set(node, *masked)
                return
        if x == F_ and (key in DOMAINS or key in OVERFLOWING):
            source = args.get("input")
            why = self.out_of_range(node, key, source)
            if why:
                self._set(node, U, why)
                return
        if key in PRESERVING or key in self.preserving:
            if key == "nan_to_num":
                self._set(node, F_ if x == U else x)
                return
            self._set(node, x, f"{what}")
            return
        if key in FINITE_OPS:
            self._set(node, finite(x), f"{what} maps zero to a non-zero value")
            return
        if key in SINGULAR:
            source = args.get("input")
            if x == F_ and may_be_zero(self, source, node):
                self._set(node, U, f"{what} of `{getattr(source, 'name', source)}`, which the "
                                   "zeroing changed and which may now be zero, may not be "
                                   "finite")
                return
            self._set(node, singular(x), f"{what} of a value that may be zero is not finite")
            return
        if key in FRESH:
            self._set(node, Z if makes_zeros(node) else F_)
            return
        if key == "native_layer_norm" or key == "native_group_norm":
            fact = normalised(x, self.eps_in(args.get("eps", 1e-5), args.get("input"), key),
                               True, self.changed(args.get("input")))
            fact = product(fact, self.fact(args["weight"])) if args.get("weight") is not None \
                else fact
            fact = total(fact, self.fact(args["bias"])) if args.get("bias") is not None else fact
            self._set(node, fact, f"{what}")
            self._items[node] = {0: fact}
            return
        if key in BATCH_NORM_KERNELS or \
                key == "batch_norm" and isinstance(node.target, torch._ops.OpOverload):
            fact = self.batch_norm_fact(args, key)
            self._set(node, fact, f"{what}")
            self._items[node] = {0: fact}
            return
        inputs = [self.fact(i) for i in node.all_input_nodes if self.changed(i)]
        if all(f == F_ for f in inputs):
            # an op the table does not know, on values changed but finite and not forced
            # to zero: finite, as the model's own values are
            self._set(node, F_)
            return
        through = self._through_decomposition(node, what)
        if through is not None:
            self._set(node, *through)
            return
        self._set(node, U, f"{what} is not in the table of ops: it is not known what it "
                           "computes from a value that may be zero (declare it with "
                           "zero_preserving=[...] if it maps zero to zero)")

    def out_of_range(self, node: Node, key: str, source: Any, domain: str | None = None
                      ) -> str:
        """Why ``key`` of ``source`` (finite, and changed by the zeroing) may not be finite:
        the value may now lie outside the op's domain (``sqrt`` of a negative, ``log1p`` of
        ``-1``), or overflow in half precision (``exp``); ``""`` if it is proven in range."""
        if not isinstance(source, Node) or not self.changed(source):
            return ""  # as it was: the model's own values stay in range
        name = f"`{node.name}` ({key}) of `{source.name}`, which the zeroing changed,"
        domain = domain or DOMAINS.get(key)
        if domain is not None:
            if domain in ("x >= 0", "x > -1") and nonnegative(source, 0, self, node):
                return ""
            return f"{name} may be outside its domain ({domain}) and not finite"
        dtype = self.dtype_of(node)
        if key in BOUNDED_BY_ONE and nonpositive(source, 0, self, node):
            return ""  # exp of a value <= 0 is at most 1
        if key in EXPONENTIAL or overflows_easily(dtype):
            where = f" in {str(dtype).replace('torch.', '')}" if dtype is not None else ""
            return f"{name} may overflow to inf{where}"
        return ""

    def _through_decomposition(self, node: Node, what: str) -> tuple[Fact, str] | None:
        """The fact of an op without a transfer function, read through torch's
        decomposition of it (:mod:`zeta_fx.semantics.decompose`), or ``None``."""
        if self._decompositions is None:
            return None
        if node not in self._decompositions:
            self._decompositions[node] = decompose(node, self.dtype_of, self.key(node)[0])
        got = self._decompositions[node]
        if got is None:
            return None
        sub, tensors = got
        placeholders = [n for n in sub.graph.nodes if n.op == "placeholder"]
        seeds = {p: self.fact(t) for p, t in zip(placeholders, tensors) if self.changed(t)}
        facts = ZeroFacts(SweepGraph.bare(sub, decompose=False), seeds=seeds)
        out = next(n for n in sub.graph.nodes if n.op == "output").args[0]
        fact = facts.fact(out)
        why = ""
        if fact != Z:
            culprit = out if isinstance(out, Node) else None
            why = f"{what}, read as torch decomposes it: " + (
                facts.why(culprit) if culprit is not None and facts.changed(culprit) else
                f"its output is {fact.name.lower().replace('_', ' ')}")
        return fact, why

    def batch_norm_fact(self, args: dict[str, Any], key: str) -> Fact:
        x = self.fact(args.get("input"))
        running = args.get("running_mean")
        # A graph traced in training mode says training=True, but the same module runs
        # with its running statistics in eval mode: only norms without them always
        # normalise a zero input to zero.
        batch_stats = running is None
        fact = normalised(x, self.eps_in(args.get("eps", 1e-5), args.get("input"), key),
                           batch_stats,
                           self.changed(args.get("input")))
        if args.get("weight") is not None:
            fact = product(fact, self.fact(args["weight"]))
        if args.get("bias") is not None:
            fact = total(fact, self.fact(args["bias"]))
        return fact


def _position(gm: fx.GraphModule) -> Callable[[Node], int]:
    index = {n: i for i, n in enumerate(gm.graph.nodes)}
    return index.__getitem__


def _fetch(root: nn.Module, dotted: str) -> Any:
    obj: Any = root
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj




def zero_inputs_needed(decomposed: tuple[fx.GraphModule, list[Node]]) -> list[Node] | None:
    """The fewest tensor inputs of a decomposed op (:func:`zeta_fx.semantics.decompose.
    decompose`) whose zeroing makes its output zero (``addcmul(h, h, g)`` needs ``h``, not
    ``g``; ``addcdiv(h, h, d)`` must not zero its divisor ``d``); ``None`` if none do."""
    sub, tensors = decomposed
    placeholders = [n for n in sub.graph.nodes if n.op == "placeholder"]
    out = next(n for n in sub.graph.nodes if n.op == "output").args[0]

    def zero_with(zeroed: list[Node]) -> bool:
        seeds = {p: Z for p, t in zip(placeholders, tensors) if t in zeroed}
        return ZeroFacts(SweepGraph.bare(sub, decompose=False), seeds=seeds).fact(out) == Z

    inputs = list(dict.fromkeys(tensors))
    for size in range(1, len(inputs) + 1):  # the fewest inputs that do it (a few at most)
        for chosen in itertools.combinations(inputs, size):
            if zero_with(list(chosen)):
                return list(chosen)
    return None
