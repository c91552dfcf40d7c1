"""A read-only view of an FX graph: the value-flow index, layers and the zero search.

Built once per pass in a single sweep over the nodes; every query after that touches only
the part of the graph it asks about. Only *value* edges count as data flow: shape and
metadata queries (``x.shape``, ``x.size()``, ``x.new_empty(...)``, ``torch._assert``),
parameters, buffers and anything computed from those alone are not data. In-place writes
and reads that see them are indexed by :mod:`zeta_fx.analysis.storage` (``storage``).

The other analyses read this view: residual joins (:mod:`zeta_fx.analysis.joins`), the zero facts
(:mod:`zeta_fx.analysis.facts.sweep`, through :meth:`GraphView.facts`) and the proof
(:mod:`zeta_fx.analysis.proof`). :meth:`GraphView.zero_cover` proposes the layers whose zeroing
should make a value zero; the facts decide.

>>> import torch
>>> from torch import nn, fx
>>> class Block(nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)
...     def forward(self, x):
...         return x + self.fc2(torch.relu(self.fc1(x)))
>>> view = GraphView(fx.symbolic_trace(Block()))
>>> [(j.merge.name, j.fork.name, j.skip_kind) for j in view.joins() if j.ok]
[('add', 'x', 'identity')]
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Iterable

import torch
from torch import fx, nn
from torch.fx import Node

from zeta_fx.analysis.facts.sweep import Fact, ZeroFacts, makes_zeros, zero_inputs_needed
from zeta_fx.analysis.joins import Join, additive_operands, find_joins
from zeta_fx.semantics.declarations import ZeroOps
from zeta_fx.semantics.decompose import decompose
from zeta_fx.semantics.keys import bind_as, op_key, target_name
from zeta_fx.semantics.modules import (LAYER_PARAMS, STRUCTURED_KINDS, ZERO_KEEPING_KINDS, get_local, hooked,
                                       known_module)
from zeta_fx.semantics.tables import (ADDITIVE, DIVIDE, ZERO_KEEPING, BATCH_NORMS, CONVS, FINITE_OPS, GATHERS, LAYOUT_OPS,
                                      NORMS, PRESERVING, PRODUCTS, SHAPE_ATTRS, SHAPE_FUNCTIONS,
                                      SHAPE_METHODS, SINGULAR, STRUCTURED)
from zeta_fx.analysis.storage import Storages
from zeta_fx.tensors import byte_span, fetch_attr
from zeta_fx.analysis.dtypes import ValueDtypes

__all__ = ["GraphView", "Layer", "Join", "Found", "Blocked", "owner_of"]



def _quoted(names: list[str]) -> str:
    return ", ".join(f"`{n}`" for n in names)


def _named_modules(root: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """``root.named_modules(remove_duplicate=False)``, in its order, walked with a stack
    instead of nested generators (a generator frame per module and level otherwise);
    ``None`` where torch's own walk must decide: a class with its own ``named_modules``, or
    a nesting so deep it may be a cycle (on which torch's walk fails, as it always did)."""
    walk = nn.Module.named_modules
    out: list[tuple[str, nn.Module]] = []
    stack: list[tuple[str, nn.Module, int]] = [("", root, 0)]
    while stack:
        prefix, module, depth = stack.pop()
        if type(module).named_modules is not walk or depth > 64:
            return None
        out.append((prefix, module))
        children = module._modules
        if children:
            dot, depth = f"{prefix}." if prefix else "", depth + 1
            stack.extend(reversed([(dot + name, child, depth)
                                   for name, child in children.items() if child is not None]))
    return out


def _storage_shared(tensor: torch.Tensor) -> bool:
    """Whether something besides ``tensor`` may hold its storage: torch's count of the
    storage's users (the tensor itself and the storage object asked for it make 2), read
    with a private call; any doubt (no such call, a tensor subclass) says yes."""
    try:
        return torch._C._storage_Use_Count(tensor.untyped_storage()._cdata) > 2
    except (AttributeError, RuntimeError, NotImplementedError, TypeError):
        return True


def _overlap(a: Any, b: Any) -> bool:
    """Whether two :func:`~zeta_fx.tensors.byte_span` s overlap (unknown spans: taken to)."""
    if a is None or b is None:
        return True
    return a[1] < b[2] and b[1] < a[2]


def owner_of(param_fqns: Iterable[str]) -> str:
    """The deepest module FQN that holds every parameter in ``param_fqns``."""
    parents = [fqn.rpartition(".")[0] for fqn in param_fqns]
    if not parents:
        return ""
    if parents.count(parents[0]) == len(parents):  # one module's own (the common case)
        return parents[0]
    common = parents[0].split(".") if parents[0] else []
    for parent in parents[1:]:
        parts = parent.split(".") if parent else []
        n = 0
        while n < min(len(common), len(parts)) and common[n] == parts[n]:
            n += 1
        common = common[:n]
    return ".".join(common)


@dataclass(frozen=True)
class Layer:
    """A graph node that consumes parameters.

    ``params`` are the FQNs whose zeroing makes the node output zero (empty when
    ``zeroable`` is false, and then ``why_not`` says why); ``chain`` the parameter-only
    nodes between those parameters and the node (a computed weight).
    """

    node: Node
    owner: str
    params: tuple[str, ...]
    zeroable: bool
    why_not: str = ""
    chain: tuple[Node, ...] = ()


@dataclass(frozen=True)
class Found:
    """Zeroing the parameters of ``sites`` (node, parameter FQNs) makes the searched value zero.

    ``chain`` holds the parameter-only nodes the search went through (computed weights).
    """

    sites: tuple[tuple[Node, tuple[str, ...]], ...]
    depth: int
    chain: tuple[Node, ...] = ()

    @property
    def layers(self) -> tuple[Node, ...]:
        return tuple(node for node, _ in self.sites)

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p for _, ps in self.sites for p in ps))


@dataclass(frozen=True)
class Blocked:
    """No zeroable layer makes the searched value zero; ``node`` is where the search stopped."""

    node: Node
    reason: str


@dataclass(frozen=True)
class _Params:
    """A parameter-only operand that becomes zero once ``params`` are (through ``chain``)."""

    params: tuple[str, ...]
    chain: tuple[Node, ...]



class GraphView:
    """The value-flow index of ``gm``, its layers, zero search and residual joins.

    ``root`` is the model the user passed (module types and parameters come from it); it
    defaults to ``gm``. ``ops`` carries what users declared with ``zero_preserving=`` and
    the composite leaves.
    """

    def __init__(self, gm: fx.GraphModule, root: nn.Module | None = None,
                 ops: ZeroOps | None = None) -> None:
        self.gm = gm
        self.root = root if root is not None else gm
        self.ops = ops or ZeroOps.default()
        self.nodes: list[Node] = list(gm.graph.nodes)
        self.index: dict[Node, int] = {}
        self.is_data: dict[Node, bool] = {}
        self.data_inputs: dict[Node, tuple[Node, ...]] = {}
        self.data_users: dict[Node, list[Node]] = {}
        self.param_roots: dict[Node, frozenset[str]] = {}
        self.consumers: dict[str, list[Node]] = {}
        self.layer_nodes: set[Node] = set()  # data nodes that consume parameters
        self.input_nodes: dict[Node, list[Node]] = {}  # every input, values or not
        self.keys: dict[Node, tuple[str, bool]] = {}  # op_key of each call_function/method
        self.params: dict[str, torch.Tensor] = {}
        self._modules: dict[str, nn.Module] = {}
        self._module_params: dict[str, tuple[str, ...]] = {}
        self._index_modules()
        self._layers: dict[Node, Layer | None] = {}
        self._param_results: dict[Node, _Params | str] = {}
        self._group_cache: dict[Node, list[list[Any]] | str] = {}
        self._bound: dict[Node, dict[str, Any]] = {}
        self._class_kinds: dict[type, tuple[str | None, str]] = {}
        self._leaves: dict[str, tuple[nn.Module, str | None, str, bool]] = {}  # see ZeroFacts
        self._shape_functions: dict[Any, bool] = {}
        self._kinds: dict[str, tuple[str | None, str]] = {}
        self._getattrs: dict[str, list[Node]] = {}
        self._param_storages: dict[Any, list[str]] | None = None
        self._decompositions: dict[Node, Any] = {}  # shared by the facts sweeps of a pass
        self.declared: dict[type, str] = {cls: "declared" for cls in self.ops.declared_modules}
        self.declared.update({cls: "composite" for cls in self.ops.composites})
        self._build()
        #: which values share storage, and which writes each read sees
        self.storage = Storages(self.nodes, self.root, gm=gm, bound=self.bound,
                                module_of=self.module,
                                dtype_of=lambda node: self.dtypes[node])

    # -- construction: one sweep in topological order ---------------------------------
    def _index_modules(self) -> None:
        """named_parameters(remove_duplicate=False), a module index and each leaf's own
        parameter FQNs (see _params_of_module), in one walk over the modules."""
        walked = _named_modules(self.root)
        if walked is None:
            walked = list(self.root.named_modules(remove_duplicate=False))
        self._walked = walked
        modules, params, leaf_params = self._modules, self.params, self._module_params
        for prefix, module in walked:
            modules[prefix] = module
            own = module._parameters
            if own:
                dot = f"{prefix}." if prefix else ""
                names = []
                for name, param in own.items():
                    if param is not None:
                        params[dot + name] = param
                        names.append(dot + name)
                if not module._modules:
                    leaf_params[prefix] = tuple(names)
            elif not module._modules:
                leaf_params[prefix] = ()

    def _build(self) -> None:
        empty: frozenset[str] = frozenset()
        is_data, param_roots, data_users = self.is_data, self.param_roots, self.data_users
        consumers, index, data_inputs = self.consumers, self.index, self.data_inputs
        input_nodes, keys, layer_nodes = self.input_nodes, self.keys, self.layer_nodes
        params, getattrs = self.params, self._getattrs
        shape_query, module_params = self._is_shape_query, self._module_params
        for i, node in enumerate(self.nodes):
            index[node] = i
            data_users[node] = []
            roots = empty
            op = node.op
            all_inputs = input_nodes[node] = node.all_input_nodes
            shape = False
            if op == "call_function" or op == "call_method":
                keys[node] = op_key(node)
                shape = shape_query(node)
            if op == "placeholder":
                data, inputs = True, ()
            elif op == "get_attr":
                data, inputs = False, ()
                getattrs.setdefault(node.target, []).append(node)
                if node.target in params:
                    roots = frozenset((node.target,))
                else:  # a plain tensor attribute that shares a parameter's storage is it
                    shared = self._parameter_sharing(node.target)
                    if shared:
                        roots = frozenset(shared)
                        for fqn in shared:
                            getattrs.setdefault(fqn, []).append(node)
            elif shape:
                data, inputs = False, ()
            else:
                if len(all_inputs) == 1:
                    inputs = (all_inputs[0],) if is_data[all_inputs[0]] else ()
                else:
                    inputs = tuple([n for n in all_inputs if is_data[n]])
                data = bool(inputs) and op != "output"
                if op == "call_module":
                    target = node.target
                    owned = module_params.get(target)
                    if owned is None:
                        owned = self._params_of_module(target)
                    for fqn in owned:
                        consumers.setdefault(fqn, []).append(node)
                    if owned and data:
                        layer_nodes.add(node)
                if len(inputs) < len(all_inputs):
                    side_roots = [param_roots[n] for n in all_inputs
                                  if not is_data[n] and param_roots[n]]
                    if side_roots:
                        roots = frozenset().union(*side_roots)
                        if data:
                            layer_nodes.add(node)
                            for fqn in roots:
                                consumers.setdefault(fqn, []).append(node)
                if data:
                    roots = empty  # a data node's value is not a parameter
                for inp in inputs:  # the output node too
                    data_users[inp].append(node)
            is_data[node] = data
            data_inputs[node] = inputs
            param_roots[node] = roots

    def _parameter_sharing(self, target: str) -> tuple[str, ...]:
        """The parameters whose storage the tensor attribute ``target`` shares (overlapping
        bytes): zeroing them writes it too."""
        value = fetch_attr(self.root, target)
        if not isinstance(value, torch.Tensor) or isinstance(value, nn.Parameter):
            return ()
        return self._parameter_sharing_tensor(value)

    def _parameter_sharing_tensor(self, value: torch.Tensor) -> tuple[str, ...]:
        if self._param_storages is None:
            table: dict[Any, list[str]] = {}
            for fqn, param in self.params.items():
                table.setdefault(Storages.tensor_root(param), []).append(fqn)
            self._param_storages = table
        candidates = self._param_storages.get(Storages.tensor_root(value), ())
        span = byte_span(value)
        return tuple(fqn for fqn in candidates if _overlap(span, byte_span(self.params[fqn])))

    def op_key(self, node: Node) -> tuple[str, bool]:
        """:func:`zeta_fx.semantics.keys.op_key` of ``node``, worked out once in the index sweep."""
        got = self.keys.get(node)
        return got if got is not None else op_key(node)

    def bound(self, node: Node) -> dict[str, Any]:
        """:func:`zeta_fx.semantics.keys.bind` of ``node``, worked out once per pass (read-only)."""
        got = self._bound.get(node)
        if got is None:
            got = self._bound[node] = bind_as(node, self.op_key(node)[0])
        return got

    def _is_shape_query(self, node: Node) -> bool:
        if node.op == "call_method":
            return node.target in SHAPE_METHODS
        if node.op == "call_function":
            if node.target is getattr:
                return len(node.args) > 1 and node.args[1] in SHAPE_ATTRS
            try:
                known = self._shape_functions.get(node.target)
            except TypeError:  # an unhashable callable
                return target_name(node.target) in SHAPE_FUNCTIONS
            if known is None:
                known = self._shape_functions[node.target] = (
                    target_name(node.target) in SHAPE_FUNCTIONS)
            return known
        return False

    def _params_of_module(self, target: str) -> tuple[str, ...]:
        """FQNs of every parameter under the module ``target`` (its children's too)."""
        cached = self._module_params.get(target)
        if cached is None:
            module = self.module(target)
            prefix = f"{target}." if target else ""
            if module._modules:  # a composite leaf (MultiheadAttention)
                cached = tuple(prefix + n for n, _ in module.named_parameters(remove_duplicate=False))
            else:  # a leaf (most call_module targets): its own parameters, without recursion
                cached = tuple(prefix + n for n, p in module._parameters.items() if p is not None)
            self._module_params[target] = cached
        return cached

    # -- modules ------------------------------------------------------------------------
    def module(self, fqn: str) -> nn.Module:
        """The user's module at ``fqn`` (falls back to the graph module's copy)."""
        cached = self._modules.get(fqn)
        if cached is None:
            try:
                cached = self.root.get_submodule(fqn)
            except AttributeError:
                cached = self.gm.get_submodule(fqn)
            self._modules[fqn] = cached  # looked up per node and per query otherwise
        return cached

    def module_type(self, fqn: str) -> str:
        try:
            return type(self.module(fqn)).__name__
        except AttributeError:
            return "?"

    def module_kind(self, fqn: str) -> tuple[str | None, str]:
        """``(kind, why_not)`` of the leaf module at ``fqn`` (see ``zeta_fx.analysis.facts.sweep``)."""
        cached = self._kinds.get(fqn)
        if cached is None:
            module = self.module(fqn)
            if hooked(module):
                cached = known_module(module, self.declared)
            else:  # no hook: known_module's answer is its class's
                cached = self._class_kinds.get(type(module))
                if cached is None:
                    cached = self._class_kinds[type(module)] = known_module(module,
                                                                             self.declared)
            self._kinds[fqn] = cached
        return cached

    def structured_layer(self, node: Node) -> bool:
        """A conv, linear, norm or embedding: a layer a projection shortcut is made of."""
        if node.op == "call_module":
            return self.module_kind(node.target)[0] in STRUCTURED_KINDS
        return self.op_key(node)[0] in STRUCTURED

    # -- zero facts -----------------------------------------------------------------------
    def facts(self, zeroed: Iterable[str], nodes: Iterable[Node] | None = None) -> ZeroFacts:
        """The :class:`~zeta_fx.analysis.facts.ZeroFacts` of this graph once ``zeroed`` are zero."""
        return ZeroFacts(self.gm, self.root, zeroed=zeroed, nodes=nodes, data=self.is_data,
                         weights=self.param_roots, declared=self.declared,
                         preserving=self.ops.declared_keys, kinds=self._kinds,
                         index=self.index, module_of=self.module, inputs=self.input_nodes,
                         keys=self.keys, bound=self.bound, leaves=self._leaves,
                         storage=self.storage, dtypes=self.dtypes,
                         decompositions=self._decompositions)

    @cached_property
    def dtypes(self) -> ValueDtypes:
        """The dtype of every value (:mod:`zeta_fx.analysis.dtypes`), worked out when asked."""
        return ValueDtypes(self.nodes, self.root, key=lambda n: self.op_key(n)[0],
                           module_of=self.module)

    def weight_closure(self, params: Iterable[str]) -> set[Node]:
        """The parameter-only nodes that zeroing ``params`` reaches: their ``get_attr``
        nodes and every weight computed from them (``w / w.norm()``: the norm too)."""
        start = [n for p in params for n in self._getattrs.get(p, ())]
        seen = set(start)
        stack = list(start)
        while stack:
            node = stack.pop()
            for user in node.users:
                if user not in seen and not self.is_data.get(user) and self.param_roots.get(user):
                    seen.add(user)
                    stack.append(user)
        return seen

    # -- layers -------------------------------------------------------------------------
    def layer(self, node: Node) -> Layer | None:
        """The layer at ``node`` (a data node consuming parameters), or ``None``."""
        if node in self._layers:
            return self._layers[node]
        layer = self._classify_layer(node) if node in self.layer_nodes else None
        if layer is not None and layer.zeroable:
            aliased = [(p, self.attribute_aliases[p]) for p in layer.params
                       if p in self.attribute_aliases]
            if aliased:
                param, attr = aliased[0]
                layer = Layer(node, layer.owner, (), False,
                              f"`{param}` shares its storage with the plain tensor attribute "
                              f"`{attr}`: zeroing it would change `{attr}` too, which the "
                              "graph does not follow (tracing may fold it into a constant); "
                              "make it a view computed in forward, or a buffer")
        self._layers[node] = layer
        return layer

    @cached_property
    def attribute_aliases(self) -> dict[str, str]:
        """``{parameter FQN: attribute FQN}`` for the parameters whose storage a plain
        tensor attribute (neither parameter nor buffer) shares, such as
        ``self.w_half = self.fc.weight.data[:, :4]``."""
        if not any(map(_storage_shared, self.params.values())):
            return {}  # no parameter's storage is held by anything else (the common case)
        tensor = torch._C.TensorBase  # (a C type check: most attributes are not tensors)
        plain = [(f"{prefix}.{name}" if prefix else name, value)
                 for prefix, module in self._walked
                 for name, value in module.__dict__.items()
                 if isinstance(value, tensor) and not isinstance(value, nn.Parameter)]
        if not plain:
            return {}
        out: dict[str, str] = {}
        for attr, value in plain:
            for fqn in self._parameter_sharing_tensor(value):
                out.setdefault(fqn, attr)
        return out

    def _classify_layer(self, node: Node) -> Layer | None:
        if node.op == "call_module":
            owned = self._params_of_module(node.target)
            if not owned:
                return None
            module = self.module(node.target)
            kind, why_not = self.module_kind(node.target)
            prefix = f"{node.target}." if node.target else ""
            if kind in LAYER_PARAMS:
                names = tuple(n for n in LAYER_PARAMS[kind] if _has_tensor(module, n))
            elif kind == "declared":
                names = tuple(n for n, _ in module.named_parameters(recurse=False))
            else:
                names = ()
            if not names:
                why = why_not or (f"`{type(module).__name__}` ({node.target}) does not output "
                                  "zero when its parameters are zero")
                return Layer(node, node.target, (), False, why)
            params = tuple(prefix + n for n in names)
            if kind == "declared":  # a user's word; the facts hold it to it
                facts = self.facts(params, [node])
                if facts[node] != Fact.ZERO:
                    return Layer(node, owner_of(params), (), False, facts.why(node))
            # a known layer with its weight and bias zero outputs zero by its class's forward
            return Layer(node, owner_of(params), params, True)
        side = [n for n in node.all_input_nodes if not self.is_data[n] and self.param_roots[n]]
        if not side:
            return None
        all_roots = sorted(frozenset().union(*(self.param_roots[n] for n in side)))
        owner = owner_of(all_roots)
        groups = self._groups(node)
        if isinstance(groups, str):
            return Layer(node, owner, (), False, groups)
        chosen: list[_Params] = []
        for group in groups:
            picked = None
            for operand in group:
                if isinstance(operand, Node) and not self.is_data[operand]:
                    result = self._param_operand(operand)
                    if isinstance(result, _Params) and (
                            picked is None or len(result.chain) < len(picked.chain)):
                        picked = result
                elif operand is None or _is_zero_constant(operand):
                    picked = _Params((), ())
                    break
            if picked is None:
                return Layer(node, owner, (), False,
                             f"`{node.name}` ({self.op_key(node)[0]}) uses parameters "
                             f"{all_roots} but zeroing them does not make it zero")
            chosen.append(picked)
        params = tuple(dict.fromkeys(p for c in chosen for p in c.params))
        chain = tuple(dict.fromkeys(n for c in chosen for n in c.chain))
        if not params:
            return None
        facts = self.facts(params, self.weight_closure(params) | {node})
        if facts[node] != Fact.ZERO:
            return Layer(node, owner_of(params), (), False, facts.why(node))
        return Layer(node, owner_of(params), params, True, chain=chain)

    def _groups(self, node: Node) -> list[list[Any]] | str:
        """What must be zero for ``node`` to be zero: every group, one operand of each.

        A string says why no choice of operands can make it zero. Read-only: the answer is
        kept per node for the pass.
        """
        got = self._group_cache.get(node)
        if got is None:
            got = self._group_cache[node] = self._node_groups(node)
        return got

    def _node_groups(self, node: Node) -> list[list[Any]] | str:
        what = self._describe_op(node)
        if node.op == "call_module":
            kind, why_not = self.module_kind(node.target)
            data = [a for a in node.args if isinstance(a, Node)]
            if kind is None:
                return f"{what} at `{node.name}` is opaque: {why_not}"
            if kind in ZERO_KEEPING_KINDS or (
                    kind == "declared" and not self._params_of_module(node.target)):
                return [data[:1]]
            if kind == "layer_norm" or (kind == "batch_norm" and getattr(
                    self.module(node.target), "running_mean", None) is None):
                return [data[:1]]  # no affine: normalises a zero input to zero (eps > 0)
            if kind == "finite":
                return f"{what} at `{node.name}` maps zero to a non-zero value"
            return f"{what} at `{node.name}` is not known to output zero"
        if node.op not in ("call_function", "call_method"):
            return f"`{node.name}` is not an op"
        key, _ = self.op_key(node)
        a = self.bound(node)
        if key in ADDITIVE:
            return [[a.get("input")], [a.get("other")]]
        if key == "sum" and additive_operands(self, node) is not None:
            return [[v] for v, _ in additive_operands(self, node)]
        if key in PRODUCTS:
            operands = list(a["operands"]) if "operands" in a else \
                [v for k, v in a.items() if k in ("input", "other", "mat2", "vec2")]
            return [operands]
        if key in DIVIDE or key == "floor_divide":
            return [[a.get("input")]]
        if key in CONVS:
            groups = [[a.get("input"), a.get("weight")]]
            if key == "bilinear":
                groups = [[a.get("input1"), a.get("input2"), a.get("weight")]]
            if a.get("bias") is not None:
                groups.append([a.get("bias")])
            return groups
        if key in NORMS or key in BATCH_NORMS:
            batch = key in NORMS
            if key in BATCH_NORMS:
                batch = a.get("running_mean") is None  # eval mode uses running statistics
            # the norm's own weight (a gain) first: a zeroed input normalises to zero too,
            # but then neither factor gets a gradient and the layer never leaves zero
            if a.get("weight") is not None:
                groups = [[a.get("weight")]]
            elif batch:
                groups = [[a.get("input")]]
            else:
                return f"{what} at `{node.name}` normalises with running statistics and has no weight"
            if a.get("bias") is not None:
                groups.append([a.get("bias")])
            return groups
        if key in ("addmm", "baddbmm"):
            return [[a.get("mat1", a.get("batch1")), a.get("mat2", a.get("batch2"))],
                    [a.get("input")]]
        if key in ("index_add", "scatter_add"):
            return [[a.get("input")], [a.get("source", a.get("src"))]]
        if key in ("grouped_mm_fallback", "_grouped_mm", "grouped_mm"):
            args = node.args + (None,) * 4
            bias = args[3] if isinstance(args[3], Node) else node.kwargs.get("bias")
            return [[args[0], args[1]]] + ([[bias]] if isinstance(bias, Node) else [])
        if key == "embedding":
            return [[a.get("weight")]]
        if key == "shifted_window_attention":
            return [[a.get("proj_weight")]] + ([[a["proj_bias"]]] if a.get("proj_bias") is not None else [])
        if key.startswith("_scaled_dot_product") or key == "scaled_dot_product_attention":
            return [[a.get("value")]]
        if key in ("where",):
            return [[a.get("input")], [a.get("other")]]
        if key in ("cat", "concat", "concatenate", "stack", "hstack", "vstack", "dstack"):
            tensors = a.get("tensors", a.get("input"))
            return [[t] for t in (tensors if isinstance(tensors, (list, tuple)) else [tensors])]
        if key == "getitem":
            return [[node.args[0]]]
        if key == "pow":
            exponent = a.get("exponent")
            if isinstance(exponent, (int, float)) and exponent > 0:
                return [[a.get("input")]]
            return f"{what} at `{node.name}` is a power that does not keep zero"
        if key in ZERO_KEEPING or key in PRESERVING or key in self.ops.declared_keys:
            first = a.get("input", node.args[0] if node.args else None)
            return [[first]]
        if key in FINITE_OPS:
            return f"{what} at `{node.name}` maps zero to a non-zero value"
        if key in SINGULAR:
            return f"{what} at `{node.name}` is not finite at zero"
        decomposed = self._decompositions.get(node)
        if node not in self._decompositions:
            decomposed = self._decompositions[node] = decompose(node, self.dtypes.__getitem__, self.op_key(node)[0])
        if decomposed is not None:
            # torch decomposes it into ops whose facts are known: the inputs that must be
            # zero are read off the decomposition
            needed = zero_inputs_needed(decomposed)
            if needed is None:
                return f"{what} at `{node.name}` does not map zero to zero (as torch decomposes it)"
            return [[t] for t in needed]
        return (f"{what} at `{node.name}` is not known to map zero to zero; declare it with "
                "zero_preserving=[...] if it does")

    def param_gather(self, value: Any) -> Node | None:
        """The parameter-only value that data ``value`` selects rows of (``w[expert_ids]``,
        ``index_select(w, 0, idx)``), through reshapes and transposes: zeroing the parameter
        zeroes what is selected. ``None`` for other values."""
        node = value
        for _ in range(8):
            if not isinstance(node, Node) or not self.is_data.get(node) or \
                    node.op not in ("call_function", "call_method"):
                return None
            key, _ = self.op_key(node)
            source = node.args[0] if node.args else None
            if key in GATHERS or key in LAYOUT_OPS:
                if isinstance(source, Node) and not self.is_data[source] and \
                        self.param_roots.get(source):
                    return source if key in GATHERS else None
                node = source
                continue
            return None
        return None

    def _param_operand(self, value: Node) -> _Params | str:
        """The parameters whose zeroing makes the parameter-only ``value`` zero, or why not."""
        # Each answer depends only on the node's own inputs, so one memo serves every query
        # of the pass (a weight read by many layers is worked out once).
        results = self._param_results
        got = results.get(value)
        if got is not None:
            return got
        is_data = self.is_data
        order = self._backward_closure(
            value, lambda n: n not in results and not is_data[n] and n.op != "placeholder")
        for node in order:
            if node not in results:
                results[node] = self._param_step(node, results)
        return results[value]

    def _param_step(self, node: Node, results: dict[Node, Any]) -> _Params | str:
        if node.op == "get_attr":
            if node.target in self.params:
                return _Params((node.target,), (node,))
            return f"`{node.name}` is a buffer or constant, not a parameter"
        if not self.param_roots.get(node):
            return f"`{node.name}` is computed from no parameter"
        groups = self._groups(node)
        if isinstance(groups, str):
            return groups
        params: dict[str, None] = {}
        chain: dict[Node, None] = {node: None}
        for group in groups:
            picked: _Params | str | None = None
            for operand in group:
                if isinstance(operand, Node):
                    got = results.get(operand, f"`{operand.name}` is outside the weight")
                elif operand is None or _is_zero_constant(operand):
                    got = _Params((), ())
                else:
                    got = f"`{node.name}` adds the constant {operand!r}, not zero"
                if isinstance(got, _Params):
                    if not isinstance(picked, _Params) or len(got.chain) < len(picked.chain):
                        picked = got
                    continue
                picked = picked or got
            if not isinstance(picked, _Params):
                return picked or f"`{node.name}` has nothing to zero"
            params.update(dict.fromkeys(picked.params))
            chain.update(dict.fromkeys(picked.chain))
        return _Params(tuple(params), tuple(chain))

    def _backward_closure(self, start: Node, follow: Callable[[Node], bool]) -> list[Node]:
        """``start`` and the inputs it reaches through nodes ``follow`` admits, in
        topological order (iteratively)."""
        seen = {start}
        stack = [start]
        while stack:
            node = stack.pop()
            for inp in node.all_input_nodes:
                if inp not in seen and follow(inp):
                    seen.add(inp)
                    stack.append(inp)
        return sorted(seen, key=self.index.__getitem__)

    # -- zero search ---------------------------------------------------------------------
    def zero_cover(self, start: Any, inside: Callable[[Node], bool]) -> Found | Blocked:
        """The zeroable layers nearest ``start`` whose zeroing makes ``start`` zero.

        ``start`` is a data node, a parameter-only node or a constant. The search walks
        backwards through what must be zero for each value to be zero and never leaves the
        data nodes for which ``inside`` is true. Iterative: its depth is not bounded by
        Python's recursion limit. A :class:`Found` is a proposal; the zero facts prove it.
        """
        if not isinstance(start, Node):
            if start is None or _is_zero_constant(start):
                return Found((), 0)
            return Blocked(self.nodes[-1], f"adds the constant {start!r}, not zero")
        if not self.is_data.get(start):
            got = self._param_operand(start)
            if isinstance(got, str):
                return Blocked(start, got)
            return Found(((start, got.params),), 0, got.chain)
        # On demand, depth first without recursion: a node is worked out once the operands
        # its step reads are; a branch that ends in a layer stops there, without visiting
        # the rest of the branch.
        is_data = self.is_data
        results: dict[Node, Found | Blocked] = {}
        stack = [start]
        while stack:
            node = stack[-1]
            if node in results:
                stack.pop()
                continue
            pending = [n for n in self._cover_reads(node, inside) if n not in results
                       and is_data.get(n, False) and n.op != "placeholder" and inside(n)]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            results[node] = self._cover_step(node, inside, results)
        return results[start]

    def _cover_reads(self, node: Node, inside: Callable[[Node], bool]) -> list[Node]:
        """The data operands whose search results :meth:`_cover_step` reads for ``node``."""
        if not inside(node) or node.op == "placeholder":
            return []
        if node.op == "call_module" and self.layer(node) is not None:
            return []
        groups = self._groups(node)
        if isinstance(groups, str):
            return []
        is_data = self.is_data
        return [v for group in groups for v in group if isinstance(v, Node) and is_data.get(v)]

    def _cover_step(self, node: Node, inside: Callable[[Node], bool],
                    results: dict[Node, Found | Blocked]) -> Found | Blocked:
        if not inside(node) or node.op == "placeholder":
            return Blocked(node, f"the path reaches `{node.name}`, outside the branch, "
                                 "without passing a layer that can be zeroed")
        layer = self.layer(node)
        if layer is not None and node.op == "call_module":
            if layer.zeroable:
                return Found(((node, layer.params),), 0, layer.chain)
            return Blocked(node, f"`{node.name}`: {layer.why_not}")
        groups = self._groups(node)
        if isinstance(groups, str):
            return Blocked(node, groups)
        sites: list[tuple[Node, tuple[str, ...]]] = []
        chain: list[Node] = []
        own: list[str] = []
        depth = 0
        for group in groups:
            best: Found | _Params | None = None
            blocked: Blocked | None = None
            for operand in group:
                gathered = self.param_gather(operand)
                if gathered is not None:
                    # experts' weights picked by the router: the parameter, zeroed at the
                    # gather that reads it
                    got_g = self._param_operand(gathered)
                    if isinstance(got_g, _Params):
                        site = Found(((operand, got_g.params),), 0, got_g.chain)
                        if best is None or isinstance(best, Found) and best.depth > 0:
                            best = site
                        continue
                if isinstance(operand, Node) and self.is_data.get(operand):
                    got = results.get(operand) or Blocked(
                        operand, f"the path reaches `{operand.name}`, outside the branch, "
                                 "without passing a layer that can be zeroed")
                    if isinstance(got, Found):
                        if best is None or (isinstance(best, Found) and got.depth < best.depth):
                            best = got
                    elif blocked is None:
                        blocked = got
                elif isinstance(operand, Node) and makes_zeros(operand):
                    best = _Params((), ())  # a fresh tensor of zeros (an accumulator)
                    break
                elif isinstance(operand, Node):
                    got_p = self._param_operand(operand)
                    if isinstance(got_p, _Params):
                        # the node itself is the layer: nearest possible; among parameter
                        # operands the one with the shortest chain (a gain, not the weight
                        # it scales)
                        if not isinstance(best, _Params) or len(got_p.chain) < len(best.chain):
                            best = got_p
                        continue
                    if blocked is None:
                        blocked = Blocked(node, f"`{node.name}`: {got_p}")
                elif operand is None or _is_zero_constant(operand) or \
                        (isinstance(operand, Node) and makes_zeros(operand)):
                    best = _Params((), ())
                    break
                elif blocked is None:
                    blocked = Blocked(node, f"`{node.name}` adds the constant {operand!r}, "
                                            "not zero")
            if best is None:
                return blocked or Blocked(node, f"`{node.name}` has nothing to zero")
            if isinstance(best, _Params):
                own.extend(best.params)
                chain.extend(best.chain)
            else:
                sites.extend(best.sites)
                chain.extend(best.chain)
                depth = max(depth, best.depth + 1)
        if own:
            sites.append((node, tuple(dict.fromkeys(own))))
        return Found(tuple(dict.fromkeys(sites)), depth, tuple(dict.fromkeys(chain)))

    def _describe_op(self, node: Node) -> str:
        if node.op == "call_module":
            return f"`{type(self.module(node.target)).__name__}` ({node.target})"
        return f"`{target_name(node.target)}`"

    # -- residual joins -----------------------------------------------------------------
    def is_additive(self, node: Node) -> bool:
        return additive_operands(self, node) is not None

    @cached_property
    def _joins(self) -> list[Join]:
        return find_joins(self)

    def joins(self) -> list[Join]:
        """Every additive merge of two or more data paths, valid residual joins or not."""
        return self._joins

    @cached_property
    def residual_joins(self) -> dict[str, Join]:
        """The valid residual joins, by the name of their merge node."""
        return {j.merge.name: j for j in self._joins if j.ok}

    @cached_property
    def by_name(self) -> dict[str, Node]:
        """Every node of the graph by its name (built when first asked)."""
        return {n.name: n for n in self.nodes}

    @cached_property
    def unused_items(self) -> frozenset[Node]:
        """Values that lead nowhere: nothing uses them (``x, _ = attn(x, x, x)``, a dead
        slice, an in-place statement ``h.mul_(2)``), or only such values do (the view in
        ``h.view(-1).mul_(3)``). What their writes do to the values they alias is
        :mod:`zeta_fx.analysis.storage`'s to follow."""
        # (an unused getitem is one more data value without users; the output node is no
        # data value)
        is_data = self.is_data
        dead: set[Node] = set()
        for n in reversed(self.nodes):
            if is_data[n] and all(u in dead for u in n.users):
                dead.add(n)
        return frozenset(dead)

    @cached_property
    def buffers(self) -> dict[str, torch.Tensor]:
        """``dict(root.named_buffers(remove_duplicate=False))``, from the module walk the
        view already made (for apply's shared-storage check)."""
        out: dict[str, torch.Tensor] = {}
        for prefix, module in self._walked:
            if module._buffers:
                dot = f"{prefix}." if prefix else ""
                for name, buffer in module._buffers.items():
                    if buffer is not None:
                        out[dot + name] = buffer
        return out

    # -- graph inputs -------------------------------------------------------------------
    @cached_property
    def input_deps(self) -> dict[Node, int]:
        """For each data node, a bit mask of the graph inputs (placeholders) it depends on.

        Bit ``i`` stands for ``self.inputs[i]``. One sweep; used to tell a conditioning
        signal (timestep, class label) from the data path it modulates.
        """
        deps: dict[Node, int] = {}
        bit = {n: 1 << i for i, n in enumerate(self.inputs)}
        for node in self.nodes:
            if not self.is_data[node]:
                continue
            mask = bit.get(node, 0)
            for inp in self.data_inputs[node]:
                mask |= deps[inp]
            deps[node] = mask
        return deps

    @cached_property
    def inputs(self) -> list[Node]:
        """The graph's data inputs (placeholders), in order."""
        return [n for n in self.nodes if n.op == "placeholder" and self.is_data[n]]

    def input_names(self, mask: int) -> list[str]:
        """The names of the graph inputs in bit mask ``mask``."""
        return [n.name for i, n in enumerate(self.inputs) if mask >> i & 1]

    def _describe_value(self, node: Node) -> str:
        """``node`` by name, with the module whose output it reshapes or selects from."""
        current = node
        for _ in range(8):
            layer = self.layer(current)
            if layer is not None:
                return f"`{node.name}`" + (f" (from `{layer.owner}`)" if layer.owner else "")
            inputs = self.data_inputs.get(current, ())
            if len(inputs) != 1:
                break
            current = inputs[0]
        return f"`{node.name}`"

    def side_input_reason(self, join: Join) -> str | None:
        """Why a failed join is a side input (conditioning) entering a path, if it is one."""
        deps = self.input_deps
        union = 0
        for term in join.terms:
            union |= deps.get(term, 0)
        first = union & -union  # the earliest graph input: by convention the data (``x``)
        for term in join.terms:
            missing = union & ~deps.get(term, 0)
            if missing and deps.get(term, 0) and not deps[term] & first:
                return (f"not a residual join: {self._describe_value(term)} is computed from "
                        f"{_quoted(self.input_names(deps[term]))} only, not from "
                        f"{_quoted(self.input_names(missing))}; adding it brings a side input "
                        "(conditioning such as a timestep or class embedding) into the path")
        return None

    def conditioning_only(self, skip: Node, terms: tuple[Node, ...]) -> bool:
        """Whether the projection 'skip' is computed without the first graph input (by
        convention the data, ``x``) while another term is computed from it: in
        ``conv(x * scale(emb)) + proj(emb)`` both paths leave ``emb``, but ``proj(emb)`` is
        conditioning brought into the data path, not a shortcut. (An identity skip from a
        second input, as a decoder's ``tgt + cross_attn(tgt, memory)``, stays a join.)"""
        if len(self.inputs) < 2:
            return False
        deps = self.input_deps
        return not deps[skip] & 1 and any(deps[t] & 1 for t in terms)

    def nodes_in_order(self, nodes: Iterable[Node]) -> list[Node]:
        return sorted(nodes, key=self.index.__getitem__)

    # -- outputs ------------------------------------------------------------------------
    def outputs(self) -> list[Node]:
        """The data values the graph returns, in order."""
        out = [n for n in self.nodes if n.op == "output"]
        return [n for n in out[0].all_input_nodes if self.is_data[n]] if out else []


def _has_tensor(module: nn.Module, dotted: str) -> bool:
    params = module._parameters
    if dotted in params:  # (get_local's own first step)
        return isinstance(params[dotted], torch.Tensor)
    return isinstance(get_local(module, dotted), torch.Tensor)



def _is_zero_constant(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0
