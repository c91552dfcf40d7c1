"""Zero facts: what zeroing a set of parameters does to every value of the graph.

A forward abstract interpretation over the value graph, one sweep in topological order, on
a small lattice of facts about a value *after* the zeroing:

- ``ZERO``: exactly zero, every element, for every input;
- ``FINITE``: finite, and not forced to zero anywhere (the model's own value, or a constant
  such as ``sigmoid(0) = 0.5``);
- ``PARTLY_ZERO``: finite, but possibly forced to zero in places (``cat([zero, y])``);
- ``UNKNOWN``: possibly non-finite (``0 / 0``, ``rsqrt(0)``), or an op the table does not know
  applied to a changed value.

``ZERO`` and ``FINITE`` lie below ``PARTLY_ZERO``, which lies below ``UNKNOWN``; where two
values meet (``where``, ``cat``) their facts are joined. Values the zeroing does not reach
are as they were, and are taken to be finite: the model as given computes finite values from finite parameters
(buffers and literal constants, such as a mask of ``-inf``, are looked at instead).

The rules of the table: ``0 * y`` is zero only where ``y`` is finite; division, ``rsqrt``,
reciprocal, ``log`` and negative powers of a value that may be zero are ``UNKNOWN``;
``where``, clamps, ``pad`` and ``masked_fill`` join their fills and bounds; norms divide by
``sqrt(var + eps)``, so with ``eps = 0`` a zero input is ``UNKNOWN``; a module counts as a
known layer only if its ``forward`` is the known class's own and no hook runs around it.
One table serves torch functions, tensor methods and aten ops; arguments are bound to
names once (``alpha``, keyword forms, aten's ``self``).

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

import enum
import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import fx, nn
from torch.fx import Node

from zeta_fx.semantics.dtypes import computation_dtype, in_dtype, overflows_easily
from zeta_fx.semantics.keys import bind, bind_as, op_key, signature
from zeta_fx.semantics.modules import (STEADY_KINDS, class_kind, eps_free, get_local, hooked,
                                       opaque_reason)
from zeta_fx.semantics.tables import (DOMAINS, EXPONENTIAL, FINITE_OPS, FRESH, FULL,
                                      NONNEG_OPS, OVERFLOWING, POSITIVE_OPS, PRESERVING,
                                      SIGN_CARRIERS, SIGN_REDUCTIONS, SINGULAR, ZEROS)

__all__ = ["Fact", "ZeroFacts", "makes_zeros", "positive", "nonnegative", "may_be_zero"]


class Fact(enum.IntEnum):
    """What is known of a value after the zeroing (see the module docstring)."""

    ZERO = 0
    FINITE = 1
    PARTLY_ZERO = 2
    UNKNOWN = 3

    def __bool__(self) -> bool:  # a fact is a fact: ``ZERO`` is not falsy
        return True


Z, F_, P, U = Fact.ZERO, Fact.FINITE, Fact.PARTLY_ZERO, Fact.UNKNOWN


def join(*facts: Fact) -> Fact:
    """The least fact above all of ``facts`` (``ZERO`` joined with ``FINITE`` is partly zero)."""
    out: Fact | None = None
    for f in facts:
        if out is None or out == f:
            out = f
        elif U in (out, f):
            out = U
        else:
            out = P
    return Z if out is None else out


def product(*facts: Fact) -> Fact:
    """The fact of a product (``mul``, ``matmul``, a conv with its weight) of ``facts``."""
    if U in facts:
        return U
    if Z in facts:
        return Z
    return P if P in facts else F_


def total(*facts: Fact) -> Fact:
    """The fact of a sum of ``facts``: zero terms drop out."""
    if U in facts:
        return U
    rest = [f for f in facts if f != Z]
    if not rest:
        return Z
    return P if all(f == P for f in rest) else F_


def singular(f: Fact) -> Fact:
    """``1 / f``, ``rsqrt(f)``, ``log(f)``: non-finite where ``f`` may be zero."""
    return F_ if f == F_ else U


def finite(f: Fact) -> Fact:
    """``exp``, ``sigmoid``, ``softmax``: finite and never forced to zero on finite input."""
    return U if f == U else F_


# -- the interpretation -------------------------------------------------------------------

class ZeroFacts:
    """The fact of every value of ``gm`` once the parameters ``zeroed`` (FQNs) are zero.

    ``root`` holds the real modules and tensors (the model the user passed). ``nodes``
    restricts the sweep to a part of the graph (a residual region); values it reads from
    outside that part count as they were. ``data`` (node -> bool) tells data values from
    parameters and shape queries, and ``weights`` (node -> parameter FQNs) the values
    computed from parameters alone, as the value-flow index does; nodes that are neither
    (shape queries, fresh tensors) carry no value of the zeroed parameters. By default
    every node is followed. ``declared`` maps extra module classes to
    a kind and ``preserving`` holds extra op keys that map zero to zero (``zero_preserving=``).

    ``facts[node]`` is a :class:`Fact`; ``why(node)`` explains one that is not ``ZERO``
    where its inputs were; ``changed(node)`` tells whether the zeroing reaches it at all.
    """

    def __init__(self, gm: fx.GraphModule, root: nn.Module | None = None, *,
                 zeroed: Iterable[str] = (), nodes: Iterable[Node] | None = None,
                 data: Mapping[Node, bool] | None = None,
                 weights: Mapping[Node, Any] | None = None,
                 declared: Mapping[type, str] | None = None,
                 preserving: Iterable[str] = (),
                 kinds: dict[str, tuple[str | None, str]] | None = None,
                 index: Mapping[Node, int] | None = None,
                 module_of: Callable[[str], nn.Module] | None = None,
                 inputs: Mapping[Node, Sequence[Node]] | None = None,
                 keys: Mapping[Node, tuple[str, bool]] | None = None,
                 bound: Callable[[Node], dict[str, Any]] | None = None,
                 leaves: dict[str, tuple[nn.Module, str | None, str, bool]] | None = None,
                 storage: Any = None, dtypes: Any = None) -> None:
        self.gm = gm
        self.root = root if root is not None else gm
        self.zeroed = frozenset(zeroed)
        self.declared = dict(declared or {})
        self.preserving = frozenset(preserving)
        self._data = data
        self._weights = weights
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
        self._module_of = module_of
        self._kinds = kinds if kinds is not None else {}
        # target -> (module, kind, why_not, passes a finite input on as finite): read-only
        # facts of the model, shareable by every sweep over one graph
        self._modules = leaves if leaves is not None else {}
        self._lazy: set[Node] = set()  # FINITE by the quick rule; reason worked out on demand
        self._classes: dict[type, tuple[str | None, str]] = {}
        self._inputs = inputs
        self._keys = keys
        self._bound = bound
        # which reads see writes (zeta_fx.storage.Storages) and each value's dtype
        # (zeta_fx.value_dtypes.ValueDtypes); without them, no write and float32
        self._storage = storage
        self._dtypes = dtypes
        self._reading: dict[Node, Fact] = {}  # what the node being stepped reads, if stale
        self._zeroed_roots = self._roots_of_zeroed() if storage is not None else frozenset()
        order = list(gm.graph.nodes) if nodes is None else \
            sorted(nodes, key=(index.__getitem__ if index is not None else _position(gm)))
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
        return _constant_fact(value)

    def fact_at(self, value: Any, reader: Node) -> Fact:
        """The fact of ``value`` as ``reader`` reads it: joined with what was written to its
        storage in between (``zeta_fx.storage``)."""
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
        return _constant_fact(value, self.dtype_of(node))

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
            return _constant_fact(value)
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
            elif op == "get_attr":
                if node.target in zeroed or (self._zeroed_roots and
                                             self._storage.roots[node] & self._zeroed_roots):
                    facts[node] = Z
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
                key = self._key(node)[0]
                args = node.args
                if op == "call_method" and key in _QUICK_METHODS:
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

    def _roots_of_zeroed(self) -> frozenset[Any]:
        """The storages of the zeroed tensors: an attribute that shares one is zeroed too."""
        roots = set()
        for fqn in self.zeroed:
            tensor = _fetch_or_none(self.root, fqn)
            if isinstance(tensor, torch.Tensor):
                root = self._storage.tensor_root(tensor)
                if root is not None:
                    roots.add(root)
        return frozenset(roots)

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

    def _key(self, node: Node) -> tuple[str, bool]:
        """``op_key(node)``, from the value-flow index's table when it has one."""
        got = self._keys.get(node) if self._keys is not None else None
        return got if got is not None else op_key(node)

    # -- modules -----------------------------------------------------------------------
    def _leaf(self, target: str) -> tuple[nn.Module, str | None, str, bool]:
        """``(module, kind, why_not, steady)`` of the leaf module at ``target``; ``steady``:
        unowned, it maps a FINITE input to FINITE (a kind in ``STEADY_KINDS`` whose tensors
        are absent or FINITE)."""
        if self._module_of is not None:
            module = self._module_of(target)
        else:
            try:
                module = self.root.get_submodule(target)
            except AttributeError:
                module = self.gm.get_submodule(target)
        cached = self._kinds.get(target)
        if cached is None:  # known_module, its class part asked once per class
            why = opaque_reason(module) if hooked(module) else ""
            if why:
                cached = (None, why)
            else:
                cached = self._classes.get(type(module))
                if cached is None:
                    cached = self._classes[type(module)] = class_kind(type(module),
                                                                        self.declared)
            self._kinds[target] = cached
        kind = cached[0]
        steady = kind in STEADY_KINDS and not (
            (kind == "batch_norm" or kind == "layer_norm") and eps_free(module, kind))
        if steady:
            params = module._parameters
            for local in STEADY_KINDS[kind]:
                obj = params.get(local, params)  # (params itself: not a parameter)
                if obj is None or type(obj) is nn.Parameter:
                    continue  # absent or FINITE, as _param says
                if self._param(module, local, ()) not in (None, F_):
                    steady = False
                    break
        got = self._modules[target] = (module, *cached, steady)
        return got

    def _param(self, module: nn.Module, local: str, owned: Sequence[str]) -> Fact | None:
        """The fact of ``module``'s own tensor ``local`` (``None`` if it has none)."""
        params = module._parameters
        obj = params[local] if local in params else get_local(module, local)
        if obj is None:
            return None
        if local in owned:
            return Z
        if type(obj) is nn.Parameter:
            return F_  # the model's own parameters are finite (as _tensor_fact says)
        return self._tensor_fact(obj)

    def _module(self, node: Node, owned: Sequence[str]) -> None:
        target = node.target
        module, kind, why_not, _ = self._modules.get(target) or self._leaf(target)
        if node.kwargs:
            data = [a for a in node.args if isinstance(a, Node)] + \
                [v for v in node.kwargs.values() if isinstance(v, Node)]
        else:
            data = [a for a in node.args if isinstance(a, Node)]
        x = self.fact(data[0]) if data else F_
        name = f"`{node.name}` ({type(module).__name__})"
        if kind in ("linear", "conv"):
            self._affine(node, product(x, self._param(module, "weight", owned)),
                         self._param(module, "bias", owned), name)
            return
        if kind == "batch_norm":
            # in eval mode a module with running statistics uses them: -mean/std for zero
            normed = _normalised(x, self.eps_in(module.eps, data[0] if data else None,
                                                "batch_norm"), module.running_mean is None,
                                 self.changed(node.args))
            w = self._param(module, "weight", owned)
            self._affine(node, product(normed, w)
                         if getattr(module, "affine", True) and w is not None else normed,
                         self._param(module, "bias", owned), name)
            return
        if kind == "preserving":
            self._set(node, x, f"{name} at `{node.name}`")
            return
        if kind is None:
            inputs = [self.fact(d) for d in data if d in self._facts]
            if not owned and all(f == F_ for f in inputs):
                self._set(node, F_)  # a changed but finite input: finite, as before
                return
            self._set(node, U, f"{name} is opaque: {why_not}; it is not known what it computes "
                               "from a value that may be zero")
            return

        def param(local: str) -> Fact | None:
            return self._param(module, local, owned)

        if kind == "declared":
            facts = [param(n) for n, _ in module.named_parameters(recurse=False)]
            if not facts:
                self._set(node, x, f"{name}")
                return
            if all(f == Z for f in facts if f is not None):
                self._set(node, Z if x != U else U)
            else:
                self._set(node, U if Z in (x,) + tuple(f for f in facts if f is not None)
                          else finite(x), f"{name}: declared zero-preserving, but not all of "
                                          "its parameters are zero")
            return
        if kind == "finite":
            self._set(node, finite(x), f"{name} maps zero to a non-zero value")
            return
        if kind == "hardtanh":
            self._set(node, *_clamp(x, module.min_val, module.max_val, name))
            return
        if kind == "threshold":
            self._set(node, *_threshold(x, module.threshold, module.value, name))
            return
        if kind == "constant_pad":
            fill = _constant_fact(module.value)
            self._set(node, join(x, fill) if x != U else U, f"{name} pads with {module.value!r}")
            return
        if kind == "prelu":
            self._set(node, x, name)
            return
        if kind == "local_response_norm":
            self._set(node, x if module.k > 0 else
                      (U if self.changed(node.args) else singular(x)),
                      f"{name} divides by k + ... with k = {module.k}")
            return
        if kind == "bilinear":
            x2 = self.fact(data[1]) if len(data) > 1 else F_
            self._affine(node, product(x, x2, param("weight")), param("bias"), name)
            return
        if kind == "embedding":
            self._set(node, param("weight") or F_, f"{name}: its weight is not zero")
            return
        if kind == "mha":
            inputs = [self.fact(d) for d in data]
            out = product(join(*inputs) if U in inputs else F_, param("out_proj.weight") or F_)
            out = total(out, param("out_proj.bias") or Z)
            self._set(node, out, f"{name}: out_proj is not zeroed")
            self._items[node] = {0: out, 1: finite(join(*inputs)) if inputs else F_}
            return
        if kind == "layer_norm":
            eps = getattr(module, "eps", 1e-5)
            eps = torch.finfo(torch.float32).eps if eps is None else eps
            normed = _normalised(x, self.eps_in(eps, data[0] if data else None, "layer_norm"),
                                 True,
                                 self.changed(node.args))
            w = param("weight")
            self._affine(node, product(normed, w) if w is not None else normed,
                         param("bias"), name)
            return
        if kind == "composite":
            # an opaque leaf whose hidden residual branches are known (zeta_fx.composite):
            # with them zeroed it computes its skip (its input, or norms of it)
            inputs = [self.fact(d) for d in data]
            worst = join(*inputs) if inputs else F_
            self._set(node, U if worst == U else (F_ if worst == F_ else P),
                      f"{name}: its input may be non-finite")
            return
        self._set(node, U, f"{name}: no rule for kind {kind}")

    def _affine(self, node: Node, scaled: Fact, bias: Fact | None, name: str) -> None:
        out = total(scaled, bias) if bias is not None else scaled
        why = ""
        if out != Z:
            if bias is not None and bias != Z and scaled == Z:
                why = f"{name} adds a bias that is not zeroed"
            elif scaled == U:
                why = f"{name}: its input may be non-finite, and 0 * inf is not zero"
            else:
                why = f"{name}: its weight is not zeroed"
        self._set(node, out, why)

    # -- functions and methods -------------------------------------------------------------
    def _function(self, node: Node) -> None:
        key, in_place = self._key(node)
        args = self._bound(node) if self._bound is not None else bind_as(node, key)
        x = self.fact(args.get("input"))
        what = f"`{node.name}` ({key})"
        if key == "getitem":
            source, index = node.args[0], node.args[1] if len(node.args) > 1 else None
            items = self._items.get(source) if isinstance(source, Node) else None
            if items is not None and isinstance(index, int):
                self._set(node, items.get(index, F_), f"{what}: item {index}")
            else:
                self._set(node, self.fact(source) if not isinstance(source, (list, tuple))
                          else self.fact(source[index] if isinstance(index, int) else source))
            return
        handler = _HANDLERS.get(key)
        if handler is not None:
            self._set(node, *handler(self, node, args, what))
            return
        if x == F_ and (key in DOMAINS or key in OVERFLOWING):
            source = args.get("input")
            why = self._out_of_range(node, key, source)
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
            if x == F_ and may_be_zero(self, source):
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
            fact = _normalised(x, self.eps_in(args.get("eps", 1e-5), args.get("input"), key),
                               True, self.changed(args.get("input")))
            fact = product(fact, self.fact(args["weight"])) if args.get("weight") is not None \
                else fact
            fact = total(fact, self.fact(args["bias"])) if args.get("bias") is not None else fact
            self._set(node, fact, f"{what}")
            self._items[node] = {0: fact}
            return
        if key.startswith(("_native_batch_norm_legit", "native_batch_norm")) or \
                key == "batch_norm" and isinstance(node.target, torch._ops.OpOverload):
            fact = self._batch_norm(args, key)
            self._set(node, fact, f"{what}")
            self._items[node] = {0: fact}
            return
        inputs = [self.fact(i) for i in node.all_input_nodes if self.changed(i)]
        if all(f == F_ for f in inputs):
            # an op the table does not know, on values changed but finite and not forced
            # to zero: finite, as the model's own values are
            self._set(node, F_)
            return
        self._set(node, U, f"{what} is not in the table of ops: it is not known what it "
                           "computes from a value that may be zero (declare it with "
                           "zero_preserving=[...] if it maps zero to zero)")

    def _out_of_range(self, node: Node, key: str, source: Any, domain: str | None = None
                      ) -> str:
        """Why ``key`` of ``source`` (finite, and changed by the zeroing) may not be finite:
        the value may now lie outside the op's domain (``sqrt`` of a negative, ``log1p`` of
        ``-1``), or overflow in half precision (``exp``); ``""`` if it is proven in range."""
        if not isinstance(source, Node) or not self.changed(source):
            return ""  # as it was: the model's own values stay in range
        name = f"`{node.name}` ({key}) of `{source.name}`, which the zeroing changed,"
        domain = domain or DOMAINS.get(key)
        if domain is not None:
            if domain == "x >= 0" and nonnegative(source, 0, self):
                return ""
            if domain == "x > -1" and nonnegative(source, 0, self):
                return ""
            return f"{name} may be outside its domain ({domain}) and not finite"
        dtype = self.dtype_of(node)
        if key in EXPONENTIAL or overflows_easily(dtype):
            where = f" in {str(dtype).replace('torch.', '')}" if dtype is not None else ""
            return f"{name} may overflow to inf{where}"
        return ""

    def _batch_norm(self, args: dict[str, Any], key: str) -> Fact:
        x = self.fact(args.get("input"))
        running = args.get("running_mean")
        # A graph traced in training mode says training=True, but the same module runs
        # with its running statistics in eval mode: only norms without them always
        # normalise a zero input to zero.
        batch_stats = running is None
        fact = _normalised(x, self.eps_in(args.get("eps", 1e-5), args.get("input"), key),
                           batch_stats,
                           self.changed(args.get("input")))
        if args.get("weight") is not None:
            fact = product(fact, self.fact(args["weight"]))
        if args.get("bias") is not None:
            fact = total(fact, self.fact(args["bias"]))
        return fact


def makes_zeros(node: Node) -> bool:
    """Whether ``node`` makes a fresh tensor of zeros (``torch.zeros_like(x)``,
    ``x.new_zeros(...)``, ``torch.full(..., 0.0)``): the start of an accumulation."""
    if node.op not in ("call_function", "call_method"):
        return False
    key, _ = op_key(node)
    if key in ZEROS:
        return True
    if key in FULL:
        value = node.kwargs.get("fill_value", node.kwargs.get("value"))
        if value is None and len(node.args) > 1:
            value = node.args[-1] if key != "fill" else node.args[1]
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0
    return False


def _h_index_add(f: ZeroFacts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    """``self.index_add(dim, index, source, alpha)``: ``self`` plus ``alpha * source`` at the
    indexed rows (an eager MoE's accumulation of its experts' outputs)."""
    source = a.get("source", node.args[3] if len(node.args) > 3 else None)
    alpha = a.get("alpha", 1)
    added = product(f.fact(source), _constant_fact(alpha)) if alpha != 1 else f.fact(source)
    out = total(f.fact(a.get("input")), added)
    return (P if out == F_ and Z in (f.fact(a.get("input")), added) else out), \
        f"{what} adds values that are not zero"


def _position(gm: fx.GraphModule) -> Callable[[Node], int]:
    index = {n: i for i, n in enumerate(gm.graph.nodes)}
    return index.__getitem__


def _fetch(root: nn.Module, dotted: str) -> Any:
    obj: Any = root
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _fetch_or_none(root: nn.Module, dotted: str) -> Any:
    try:
        return _fetch(root, dotted)
    except AttributeError:
        return None


def _constant_fact(value: Any, dtype: "torch.dtype | None" = None) -> Fact:
    """The fact of a constant; a Python float is taken in ``dtype`` (the dtype the op that
    reads it computes in), where it may round to zero or overflow."""
    if value is None:
        return F_
    if isinstance(value, bool):
        return F_ if value else Z
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return U
        if value == 0:
            return Z
        if dtype is not None and dtype.is_floating_point:
            held = in_dtype(float(value), dtype)
            if held == 0.0:
                return Z
            if math.isinf(held):
                return U
        return F_
    if isinstance(value, complex):
        return Z if value == 0 else (F_ if math.isfinite(abs(value)) else U)
    if isinstance(value, torch.Tensor):
        if isinstance(value, nn.parameter.UninitializedTensorMixin) or value.is_meta or \
                not (value.is_floating_point() or value.is_complex()):
            return F_
        if value.numel() and not bool(torch.isfinite(value).all()):
            return U
        return Z if not bool(value.any()) else F_
    return F_


def _normalised(x: Fact, eps: Any, batch_stats: bool, changed: bool = False) -> Fact:
    """``(x - mean) / sqrt(var + eps)``: with batch statistics a zero input stays zero.

    With ``eps = 0`` the variance must not be zero: a zero input makes it zero, and so may
    an input the zeroing ``changed`` (a row that is now constant), however finite."""
    eps_zero = isinstance(eps, (int, float)) and eps == 0
    if x == U:
        return U
    if not batch_stats:
        return F_ if x in (Z, F_) else P  # (0 - running_mean) / std: finite, not zero
    if eps_zero and (x in (Z, P) or changed):
        return U  # 0 / sqrt(0 + 0)
    return x


_SIGN_DEPTH = 12


def nonnegative(value: Any, depth: int = 0, ctx: Any = None) -> bool:
    """Whether ``value`` is provably ``>= 0`` wherever it is finite (``x * x``, ``x ** 2``,
    ``abs``, norms, variances, ``exp``, their means and sums, views and casts of them)."""
    if isinstance(value, bool):
        return True
    if isinstance(value, (int, float)):
        return value >= 0
    if not isinstance(value, Node) or depth > _SIGN_DEPTH or \
            value.op not in ("call_function", "call_method") or _rewritten(value, ctx):
        return False
    key, _ = op_key(value)
    if key in NONNEG_OPS or key in POSITIVE_OPS:
        return True
    args = bind(value)
    first = args.get("input", value.args[0] if value.args else None)
    if key in ("min", "amin", "minimum") and args.get("other") is not None:
        return nonnegative(first, depth + 1, ctx) and nonnegative(args["other"], depth + 1, ctx)
    if key in SIGN_CARRIERS or key in SIGN_REDUCTIONS or key == "sqrt":
        return nonnegative(first, depth + 1, ctx)
    if key == "pow":
        exponent = args.get("exponent")
        if isinstance(exponent, (int, float)) and not isinstance(exponent, bool) and \
                float(exponent).is_integer() and int(exponent) % 2 == 0:
            return True
        return nonnegative(args.get("input"), depth + 1, ctx)
    if key in ("mul", "multiply"):
        a, b = args.get("input"), args.get("other")
        return a is b or (nonnegative(a, depth + 1, ctx) and nonnegative(b, depth + 1, ctx))
    if key in ("add", "clamp", "clip", "clamp_min", "maximum"):
        return positive(value, depth, ctx)
    return False


def positive(value: Any, depth: int = 0, ctx: Any = None) -> bool:
    """Whether ``value`` is provably ``> 0`` wherever it is finite, so that dividing by it
    (``rsqrt``, ``log``, ``1 / x``) stays finite: a positive constant, ``v + eps`` with
    ``v >= 0``, ``clamp(v, min=eps)``, ``exp``, ``sigmoid``, ``softmax``, the sum, mean or
    top-k values of such (a router's ``p / p.sum()``), ``sqrt``/``rsqrt`` of such, and views
    and casts.

    >>> import torch
    >>> from torch import fx
    >>> gm = fx.symbolic_trace(lambda x: (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True)
    ...                                    + 1e-6), x / x.norm()))
    >>> divisors = [n.args[1] for n in gm.graph.nodes if n.op == "call_function"
    ...             and n.target.__name__ == "truediv"]
    >>> [positive(d) for d in divisors]
    [True, False]
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value > 0
    if not isinstance(value, Node) or depth > _SIGN_DEPTH or \
            value.op not in ("call_function", "call_method") or _rewritten(value, ctx):
        return False
    key, _ = op_key(value)
    if key in POSITIVE_OPS:
        return True
    args = bind(value)
    if key in ("min", "amin", "minimum") and args.get("other") is not None:
        return positive(args.get("input"), depth + 1, ctx) and positive(args["other"], depth + 1, ctx)
    if key in SIGN_CARRIERS or key in SIGN_REDUCTIONS or key in ("sqrt", "rsqrt"):
        return positive(args.get("input", value.args[0] if value.args else None), depth + 1, ctx)
    if key == "add":
        a, b = (_held(v, value, ctx) for v in (args.get("input"), args.get("other")))
        alpha = args.get("alpha", 1)
        if not isinstance(alpha, (int, float)) or alpha <= 0:
            return False
        return (positive(a, depth + 1, ctx) and nonnegative(b, depth + 1, ctx)) or \
            (nonnegative(a, depth + 1, ctx) and positive(b, depth + 1, ctx))
    if key in ("clamp", "clip", "clamp_min"):
        low = _held(args.get("min", node_arg(value, 1)), value, ctx)
        return isinstance(low, (int, float)) and not isinstance(low, bool) and low > 0
    if key == "maximum":
        return positive(args.get("other"), depth + 1, ctx) or positive(args.get("input"), depth + 1, ctx)
    return False


def _rewritten(value: Node, ctx: Any) -> bool:
    """Whether a write reaches ``value``'s storage after it is made (its op no longer says
    what it holds)."""
    return ctx is not None and ctx.written_after(value)


def _held(constant: Any, node: Node, ctx: Any) -> Any:
    """A Python float as ``node`` holds it, in its dtype (``1e-8`` is ``0.0`` in float16)."""
    if ctx is None or isinstance(constant, bool) or not isinstance(constant, float):
        return constant
    dtype = ctx.dtype_of(node)
    return in_dtype(constant, dtype) if dtype is not None else constant


def node_arg(node: Node, i: int) -> Any:
    return node.args[i] if len(node.args) > i else None


def may_be_zero(f: "ZeroFacts", value: Any) -> bool:
    """Whether a divisor may be zero after the zeroing: its fact says so (zero, partly
    zero, unknown), or the zeroing changed it and it is not provably positive. (A value the
    zeroing does not reach is as it was: the model's own divisions are taken to be finite;
    a changed one may now be zero where it was not, a row made constant, a ReLU now off.)"""
    fact = f.fact(value)
    if fact == U:
        return True
    if positive(value, 0, f):
        return False
    if fact in (Z, P):
        return True
    return isinstance(value, Node) and f.changed(value)


def _clamp(x: Fact, low: Any, high: Any, what: str) -> tuple[Fact, str]:
    if x == U:
        return U, f"{what}: input may be non-finite"
    numeric = all(b is None or isinstance(b, (int, float)) for b in (low, high))
    if numeric:
        if (low is None or low <= 0) and (high is None or high >= 0):
            return x, ""
        bound = low if low is not None and low > 0 else high
        return (F_ if x == Z else P), f"{what} clamps to [{low}, {high}], so zero becomes {bound}"
    return (P if x != U else U), f"{what} clamps to a tensor bound: zero does not stay zero"


def _threshold(x: Fact, threshold: Any, value: Any, what: str) -> tuple[Fact, str]:
    if x == U:
        return U, ""
    if isinstance(threshold, (int, float)) and isinstance(value, (int, float)):
        if threshold < 0 or value == 0:
            return x, ""
        return (F_ if x == Z else P), f"{what} replaces values <= {threshold} by {value}"
    return P, f"{what} has a tensor threshold"


# -- handlers: (facts, node, bound args, description) -> (fact, why) -----------------------

def _h_add(f: ZeroFacts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    key = f._key(node)[0]
    x, other = f.operand(a.get("input"), node), f.operand(a.get("other"), node)
    alpha = a.get("alpha", 1)
    scaled = other
    if isinstance(alpha, Node):
        scaled = product(other, f.fact(alpha))
    elif alpha is not None and alpha != 1:
        scaled = product(other, _constant_fact(alpha))
    if key == "rsub":  # other - alpha * input
        x, scaled = other, product(x, _constant_fact(alpha)) if alpha != 1 else x
    out = total(x, scaled)
    why = ""
    if out != Z:
        nonzero = [n for n in (a.get("input"), a.get("other")) if f.fact(n) != Z]
        names = ", ".join(f"`{n.name}`" if isinstance(n, Node) else repr(n) for n in nonzero)
        why = f"{what} adds {names}, which is not zero"
    return out, why


def _h_mul(f: ZeroFacts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    operands = [v for k, v in a.items() if k in ("input", "other", "mat2", "vec2", "mat1")]
    if "operands" in a:
        operands = list(a["operands"])
    facts = [f.fact(v) for v in operands]
    out = product(*facts)
    why = ""
    if out == U and Z in facts:
        bad = next((v for v, fact in zip(operands, facts) if fact == U), None)
        cause = f" (`{bad.name}`: {f.why(bad)})" if isinstance(bad, Node) else ""
        why = (f"{what} multiplies a zero by a value that may be non-finite (0 * inf is "
               f"NaN){cause}")
    elif out != Z:
        why = f"{what}: no factor is zero"
    return out, why


def _h_div(f: ZeroFacts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    num = f.fact(a.get("input"))
    d = a.get("other")
    if may_be_zero(f, d):
        name = f"`{d.name}`" if isinstance(d, Node) else repr(d)
        return U, f"`{node.name}` divides by {name}, which may be zero"
    return num, f"{what}: its numerator is not zero"


def _h_pow(f: ZeroFacts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    base, exponent = a.get("input"), a.get("exponent")
    if isinstance(exponent, (int, float)):
        x = f.fact(base)
        if exponent > 0:
            if x == F_ and not float(exponent).is_integer():
                why = f._out_of_range(node, f"** {exponent:g}", base, "x >= 0")
                if why:
                    return U, why
            if x == F_ and exponent > 1:
                why = f._out_of_range(node, f"** {exponent:g}", base)
                if why:
                    return U, why
            return x, what
        if exponent == 0:
            return finite(x), f"{what}: x ** 0 is 1"
        if x == F_ and may_be_zero(f, base):
            return U, f"{what}: a negative power of `{getattr(base, 'name', base)}`, which the zeroing changed and which may now be zero"
        return singular(x), f"{what}: a negative power of a value that may be zero"
    if isinstance(base, (int, float)):  # 2 ** x
        return finite(f.fact(exponent)), f"{what}: c ** x is not zero"
    x, e = f.fact(base), f.fact(exponent)
    if x == F_ and e != U:
        return F_, what
    return U, f"{what}: a tensor power of a value that may be zero"


def _h_where(f: ZeroFacts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    x, y = a.get("input"), a.get("other")
    out = join(f.fact(x), f.fact(y))
    return out, f"{what} selects between `{getattr(x, 'name', x)}` and `{getattr(y, 'name', y)}`, " \
                "not both zero"


def _h_masked_fill(f: ZeroFacts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    value = a.get("value")
    out = join(f.fact(a.get("input")), f.operand(value, node))
    return out, f"{what} fills with {getattr(value, 'name', value)!r}, not zero"


def _h_clamp(f: ZeroFacts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    key = f._key(node)[0]
    x = f.fact(a.get("input"))
    if key == "hardtanh":
        return _clamp(x, a.get("min_val", -1.0), a.get("max_val", 1.0), what)
    if key == "relu6":
        return x, ""
    low, high = a.get("min"), a.get("max")
    if key == "clamp_min":
        high = None
    if key == "clamp_max":
        low = None
    if isinstance(low, Node) or isinstance(high, Node):
        return join(x, f.fact(low) if isinstance(low, Node) else x,
                    f.fact(high) if isinstance(high, Node) else x, P), \
            f"{what} clamps to a tensor bound"
    return _clamp(x, low, high, what)


def _h_threshold(f: ZeroFacts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    return _threshold(f.fact(a.get("input")), a.get("threshold"), a.get("value"), what)


def _h_pad(f: ZeroFacts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    key = f._key(node)[0]
    x = f.fact(a.get("input"))
    mode = a.get("mode", "constant")
    value = a.get("value", 0)
    if key == "constant_pad_nd" or mode == "constant":
        value = 0 if value is None else value
        return join(x, _constant_fact(value)) if x != U else U, \
            f"{what} pads with {value!r}, not zeros"
    return x, what


def _h_cat(f: ZeroFacts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    tensors = a.get("tensors", a.get("input"))
    return f.fact(tensors), f"{what} joins pieces that are not all zero"


def _h_linear(f: ZeroFacts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    key = f._key(node)[0]
    weight = a.get("weight")
    scaled = product(f.fact(a.get("input")), f.fact(weight))
    if key == "bilinear":
        scaled = product(scaled, f.fact(a.get("input2")))
    bias = a.get("bias")
    out = total(scaled, f.fact(bias)) if bias is not None else scaled
    why = f"{what} adds a bias that is not zeroed" if scaled == Z and out != Z else \
        f"{what}: its weight is not zero" if out != Z else ""
    if scaled == U:
        why = f"{what}: its input may be non-finite"
    return out, why


def _h_addmm(f: ZeroFacts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    m1 = a.get("mat1", a.get("batch1"))
    m2 = a.get("mat2", a.get("batch2"))
    prod = product(f.fact(m1), f.fact(m2))
    beta = a.get("beta", 1)
    bias = f.fact(a.get("input")) if beta != 0 else Z
    return total(prod, bias), f"{what} adds `{getattr(a.get('input'), 'name', '')}`"


def _h_embedding(f: ZeroFacts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    return f.fact(a.get("weight")), f"{what}: its weight is not zero"


def _h_getattr(f: ZeroFacts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    attr = node.args[1] if len(node.args) > 1 else None
    if attr in ("T", "mT", "H", "mH", "real", "data"):
        return f.fact(node.args[0]), what
    return U, f"{what}: attribute {attr!r} of a changed value"


def _h_extremum(f: ZeroFacts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    other = node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
    if isinstance(other, Node) and getattr(other, "op", "") != "":
        return join(f.fact(a.get("input")), f.fact(other)), what
    return f.fact(a.get("input")), what


def _h_layer_norm(f: ZeroFacts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    key = f._key(node)[0]
    eps = a.get("eps", 1e-5)
    if key == "rms_norm" and eps is None:
        eps = torch.finfo(torch.float32).eps
    fact = _normalised(f.fact(a.get("input")), f.eps_in(eps, a.get("input"), key), True,
                       f.changed(a.get("input")))
    if a.get("weight") is not None:
        fact = product(fact, f.fact(a["weight"]))
    if a.get("bias") is not None:
        fact = total(fact, f.fact(a["bias"]))
    return fact, f"{what}: eps = {eps!r}" if fact == U else f"{what}"


def _h_batch_norm(f: ZeroFacts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    key = f._key(node)[0]
    fact = f._batch_norm(a, key)
    return fact, f"{what} normalises with running statistics: zero becomes -mean/std" \
        if fact not in (Z, U) else f"{what}"


def _h_normalize(f: ZeroFacts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    eps = a.get("eps", 1e-12)
    x = f.fact(a.get("input"))
    return (_normalised(x, f.eps_in(eps, a.get("input"), "normalize"), True,
                        f.changed(a.get("input"))),
            f"{what} with eps = {eps!r} divides zero by zero")


def _h_sdpa(f: ZeroFacts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    q, k, v = (f.fact(a.get(n)) for n in ("query", "key", "value"))
    mask = f.fact(a.get("attn_mask")) if a.get("attn_mask") is not None else F_
    weights = U if U in (q, k, mask) else F_
    return product(weights, v), f"{what}: its value input is not zero"


def _h_window_attention(f: ZeroFacts, node: Node, a: dict[str, Any], what: str
                        ) -> tuple[Fact, str]:
    inputs = [f.fact(a.get(k)) for k in ("input", "qkv_weight", "relative_position_bias",
                                          "qkv_bias", "logit_scale") if a.get(k) is not None]
    attended = U if U in inputs else F_
    out = product(attended, f.fact(a.get("proj_weight")))
    if a.get("proj_bias") is not None:
        out = total(out, f.fact(a.get("proj_bias")))
    return out, f"{what}: its output projection is not zero"


def _h_grouped_mm(f: ZeroFacts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    """A grouped matmul (MoE experts: ``aten._grouped_mm``, transformers' fallback): each
    group's rows times that group's weight, plus an optional bias."""
    x, w = (node.args + (None, None))[:2]
    out = product(f.fact(x), f.fact(w))
    bias = node.args[3] if len(node.args) > 3 else node.kwargs.get("bias")
    if isinstance(bias, Node):
        out = total(out, f.fact(bias))
    return out, f"{what}: its weight is not zero"


def _h_binary_max(f: ZeroFacts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    return join(f.fact(a.get("input")), f.fact(a.get("other"))), what


def _h_prelu(f: ZeroFacts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    return f.fact(a.get("input")), what


def _h_remainder(f: ZeroFacts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    den = f.fact(a.get("other"))
    if den != F_:
        return U, f"{what} by a value that may be zero"
    return f.fact(a.get("input")), what


def _h_copy(f: ZeroFacts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    """``x.copy_(src)``: ``x`` now holds ``src``."""
    src = a.get("src", node_arg(node, 1))
    return f.operand(src, node), f"{what} copies a value that is not zero"


def _h_zero(f: ZeroFacts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    return Z, ""


def _h_fill(f: ZeroFacts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    value = a.get("value", node_arg(node, 1))
    return f.operand(value, node), f"{what} fills with {getattr(value, 'name', value)!r}"


def _h_setitem(f: ZeroFacts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    """``x[i] = v`` (and ``x.index_put_(i, v)``): ``x`` holds its own values and ``v``'s
    (added to them, with ``accumulate=True``)."""
    if f._key(node)[0] == "setitem":
        value = node_arg(node, 2)
    else:
        value = a.get("values", node_arg(node, 2))
    old, new = f.fact(node_arg(node, 0)), f.operand(value, node)
    out = total(old, new) if a.get("accumulate") is True else join(old, new)
    return out, f"{what} writes {getattr(value, 'name', value)!r} into `{node_arg(node, 0)}`"


_HANDLERS: dict[str, Callable[..., tuple[Fact, str]]] = {
    "copy": _h_copy, "zero": _h_zero, "fill": _h_fill, "setitem": _h_setitem,
    "index_put": _h_setitem,
    "add": _h_add, "sub": _h_add, "subtract": _h_add, "rsub": _h_add,
    "mul": _h_mul, "multiply": _h_mul, "matmul": _h_mul, "mm": _h_mul, "bmm": _h_mul,
    "outer": _h_mul, "kron": _h_mul, "einsum": _h_mul, "dot": _h_mul, "vdot": _h_mul,
    "div": _h_div, "divide": _h_div, "true_divide": _h_div, "floor_divide": _h_div,
    "remainder": _h_remainder, "fmod": _h_remainder,
    "pow": _h_pow, "float_power": _h_pow,
    "where": _h_where, "masked_fill": _h_masked_fill,
    "clamp": _h_clamp, "clip": _h_clamp, "clamp_min": _h_clamp, "clamp_max": _h_clamp,
    "hardtanh": _h_clamp, "threshold": _h_threshold,
    "pad": _h_pad, "constant_pad_nd": _h_pad,
    "cat": _h_cat, "concat": _h_cat, "concatenate": _h_cat, "stack": _h_cat, "hstack": _h_cat,
    "vstack": _h_cat, "dstack": _h_cat,
    "linear": _h_linear, "bilinear": _h_linear, "conv1d": _h_linear, "conv2d": _h_linear,
    "conv3d": _h_linear, "conv_transpose1d": _h_linear, "conv_transpose2d": _h_linear,
    "conv_transpose3d": _h_linear, "convolution": _h_linear, "_convolution": _h_linear,
    "addmm": _h_addmm, "baddbmm": _h_addmm, "embedding": _h_embedding,
    "layer_norm": _h_layer_norm, "group_norm": _h_layer_norm, "rms_norm": _h_layer_norm,
    "batch_norm": _h_batch_norm, "instance_norm": _h_batch_norm,
    "normalize": _h_normalize,
    "scaled_dot_product_attention": _h_sdpa, "_scaled_dot_product_flash_attention": _h_sdpa,
    "_scaled_dot_product_flash_attention_for_cpu": _h_sdpa,
    "_scaled_dot_product_efficient_attention": _h_sdpa,
    "_scaled_dot_product_cudnn_attention": _h_sdpa,
    "maximum": _h_binary_max, "minimum": _h_binary_max, "fmax": _h_binary_max,
    "fmin": _h_binary_max, "prelu": _h_prelu, "_prelu_kernel": _h_prelu,
    "getattr": _h_getattr, "shifted_window_attention": _h_window_attention,
    "grouped_mm_fallback": _h_grouped_mm, "_grouped_mm": _h_grouped_mm,
    "index_add": _h_index_add, "scatter_add": _h_index_add,
    "grouped_mm": _h_grouped_mm, "max": _h_extremum, "min": _h_extremum,
}

# Methods whose fact is their first argument's (``PRESERVING``, no handler of their own,
# that argument bound as ``input``): views, reshapes, casts, activations.
_QUICK_METHODS = frozenset(
    k for k in PRESERVING if k not in _HANDLERS and k not in ("getitem", "nan_to_num")
    and (signature(k) or ("input",))[0] == "input")
