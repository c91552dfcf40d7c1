"""The value-flow index of an FX graph: which values are data, who uses them, which nodes
consume parameters, and the model's modules, parameters and kinds.

Built once per pass in a single sweep over the nodes; every query after that touches only
the part of the graph it asks about. Only *value* edges count as data flow: shape and
metadata queries (``x.shape``, ``x.size()``, ``x.new_empty(...)``, ``torch._assert``),
parameters, buffers and anything computed from those alone are not data, and an operand an
op reads for its dtype, device or shape only (``h.type_as(x)``, ``h.to(x)``,
``h.expand_as(x)``: ``x``; the table is ``semantics.tables.METADATA_OPERANDS``) is no data
input of it, so ``x`` is no data user there and a parameter there is not consumed. In-place writes
and reads that see them are indexed by :mod:`zeta_fx.analysis.storage` (``storage``), and
each value's dtype by :mod:`zeta_fx.analysis.dtypes` (``dtypes``).

>>> import torch
>>> from torch import nn, fx
>>> class Block(nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.fc = nn.Linear(4, 4)
...     def forward(self, x):
...         return x + self.fc(x) * x.shape[-1]
>>> index = GraphIndex(fx.symbolic_trace(Block()))
>>> [n.name for n in index.nodes if index.is_data[n]]
['x', 'fc', 'mul', 'add']
>>> [n.name for n in index.data_users[index.by_name["x"]]], sorted(index.consumers)
(['fc', 'add'], ['fc.bias', 'fc.weight'])
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Iterable

import torch
from torch import fx, nn
from torch.fx import Node

from zeta_fx.analysis.buffers import written_inputs
from zeta_fx.analysis.dtypes import ValueDtypes
from zeta_fx.analysis.facts.graph import SweepGraph
from zeta_fx.analysis.storage import Storages
from zeta_fx.semantics.declarations import ZeroOps
from zeta_fx.semantics.keys import bind_as, op_key, target_name
from zeta_fx.semantics.modules import STRUCTURED_KINDS, hooked, known_module
from zeta_fx.semantics.subgraphs import item_operands
from zeta_fx.semantics.tables import (ADDITIVE, METADATA_OPERANDS, SHAPE_ATTRS,
                                      SHAPE_FUNCTIONS, SHAPE_METHODS, STRUCTURED)
from zeta_fx.tensors import byte_span, fetch_attr

__all__ = ["GraphIndex"]


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


def _value_inputs(node: Node, key: str) -> list[Node] | None:
    """The inputs ``node`` reads the values of, where its op reads some operand for its
    metadata only (``h.type_as(x)`` reads ``x``'s dtype: ``[h]``); ``None`` for other ops.
    A node that is also passed where its value is read (``x.type_as(x)``) stays."""
    spec = METADATA_OPERANDS.get(key)
    if spec is None:
        return None
    args, kwargs = list(node.args), dict(node.kwargs)
    for position, keyword in spec:
        if position < len(args):
            args[position] = None
        kwargs.pop(keyword, None)
    read: dict[Node, None] = {}
    fx.node.map_arg((tuple(args), kwargs), lambda n: read.setdefault(n))
    return [n for n in node.all_input_nodes if n in read]


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


class GraphIndex:
    """The value-flow index of ``gm``: one sweep over the nodes, then queries.

    ``root`` is the model the user passed (module types and parameters come from it); it
    defaults to ``gm``. ``ops`` carries what users declared with ``zero_preserving=`` and
    the composite leaves.

    What it holds, for every node: its position (``index``), whether it is data
    (``is_data``), its data inputs and users, the parameters a parameter-only value is
    computed from (``param_roots``), the layers' nodes and each parameter's consumers; for
    the model: its parameters, buffers, modules and their kinds; and the storages values
    live in (``storage``) and their dtypes (``dtypes``). The layers, the zero search, the
    joins and the facts are built over it (:class:`~zeta_fx.analysis.view.GraphView`).
    The class is long because the index is one sweep with many outputs; every query is
    a few lines and reads only what the sweep wrote.
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
        self._bound: dict[Node, dict[str, Any]] = {}
        self._class_kinds: dict[type, tuple[str | None, str]] = {}
        self._leaves: dict[str, tuple[nn.Module, str | None, str, bool]] = {}  # see ZeroFacts
        self._shape_functions: dict[Any, bool] = {}
        self._kinds: dict[str, tuple[str | None, str]] = {}
        self._getattrs: dict[str, list[Node]] = {}
        self._param_storages: dict[Any, list[str]] | None = None
        #: composite ops' decompositions, shared by the facts sweeps and searches of a pass
        self.decompositions: dict[Node, Any] = {}
        self.declared: dict[type, str] = {cls: "declared" for cls in self.ops.declared_modules}
        self.declared.update({cls: "composite" for cls in self.ops.composites})
        #: the dtype of every value (:mod:`zeta_fx.analysis.dtypes`; its sweep runs when
        #: first asked)
        self.dtypes = ValueDtypes(self.nodes, self.root, key=lambda n: self.op_key(n)[0],
                                  module_of=self.module)
        #: which values share storage, and which writes each read sees (before the sweep:
        #: a read of a buffer has the writes it sees as inputs, :mod:`~.buffers`)
        self.storage = Storages(self.nodes, self.root, gm=gm, bound=self.bound,
                                module_of=self.module, dtype_of=self.dtypes.__getitem__)
        #: learned tokens: parameter-only values that are the residual stream (see _build)
        self.tokens: frozenset[Node] = frozenset()
        self._build()
        tokens = self._learned_tokens()
        if tokens:
            self._rebuild(tokens)

    # -- construction: one sweep in topological order ---------------------------------
    def _index_modules(self) -> None:
        """named_parameters(remove_duplicate=False), a module index and each leaf's own
        parameter FQNs (see params_of_module), in one walk over the modules."""
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
        stale = self.storage.readers_of_stale
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
                if not shape:  # metadata operands (``h.type_as(x)``) carry no values
                    read = _value_inputs(node, keys[node][0])
                    if read is None and keys[node][0] == "getitem":
                        # a weight given back by a no_grad subgraph (RWKV's rescale):
                        # computed from the weights its output reads, not every operand
                        read = item_operands(node)
                        if read is not None and any(is_data[n] for n in read):
                            read = None
                    if read is not None:
                        all_inputs = read
            if node in stale:  # the data written into a buffer it reads (buffers.py)
                written = list(written_inputs(self.storage, node, is_data.__getitem__))
                all_inputs = list(all_inputs) + written
                input_nodes[node] = input_nodes[node] + written
            if op == "placeholder":
                data, inputs = True, ()
            elif node in self.tokens:  # data, and still a use of the parameters it reads
                data, inputs = True, ()
                if op == "get_attr":
                    getattrs.setdefault(node.target, []).append(node)
                token_roots = frozenset((node.target,)) if node.target in params else \
                    frozenset().union(empty, *(param_roots[n] for n in all_inputs))
                for fqn in token_roots:
                    consumers.setdefault(fqn, []).append(node)
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
                        owned = self.params_of_module(target)
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

    def _learned_tokens(self) -> frozenset[Node]:
        """Parameter-only values that enter a residual stream as the stream itself.

        A parameter-only value ``t`` (a class token, perceiver latents, register tokens,
        ``self.cls_token.expand(B, -1, -1)``) is a *learned token* when it is an operand of
        an additive merge whose other operand is data that ``t`` itself reaches through
        the graph: ``t + f(t, x)``. Every other parameter-only value stays a weight: a
        position embedding or a bias added beside a join (it reaches nothing before the
        merge), LayerScale's gamma (a factor, not an operand of the merge). A token is data
        with no data inputs, as a graph input is; whether its merge is a residual join is
        then decided as for any other fork.
        """
        is_data, param_roots, index = self.is_data, self.param_roots, self.index
        reach: dict[Node, set[Node]] = {}
        tokens: set[Node] = set()
        for merge in self.nodes:
            if merge.op not in ("call_function", "call_method") or not is_data[merge] or \
                    self.keys[merge][0] not in ADDITIVE:
                continue
            bound = self.bound(merge)
            operands = [bound.get("input"), bound.get("other")]
            if not all(isinstance(v, Node) for v in operands):
                continue
            for token, other in (operands, operands[::-1]):
                if is_data[token] or not param_roots[token] or not is_data[other] or \
                        token in tokens:
                    continue
                if token not in reach:
                    reach[token] = self._reached(token, index[merge])
                if other in reach[token]:
                    tokens.add(token)
        return frozenset(tokens)

    def _reached(self, start: Node, before: int) -> set[Node]:
        """The nodes before position ``before`` that ``start`` reaches through any edge."""
        index, seen, stack = self.index, set(), [start]
        while stack:
            for user in stack.pop().users:
                if user not in seen and index[user] < before:
                    seen.add(user)
                    stack.append(user)
        return seen

    def _rebuild(self, tokens: frozenset[Node]) -> None:
        """The sweep again, with ``tokens`` data (their weights' uses drop out)."""
        self.tokens = tokens
        for table in (self.index, self.is_data, self.data_inputs, self.data_users,
                      self.param_roots, self.consumers, self.input_nodes, self.keys,
                      self._getattrs):
            table.clear()
        self.layer_nodes.clear()
        self._build()

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

    def params_of_module(self, target: str) -> tuple[str, ...]:
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

    # -- values -------------------------------------------------------------------------
    @cached_property
    def sweep_graph(self) -> SweepGraph:
        """What every zero-facts sweep over this graph reads (one object per pass)."""
        return SweepGraph(self.gm, self.root, data=self.is_data, weights=self.param_roots,
                          declared=self.declared, preserving=self.ops.declared_keys,
                          index=self.index, module_of=self.module, inputs=self.input_nodes,
                          keys=self.keys, bound=self.bound, storage=self.storage,
                          dtypes=self.dtypes, decompositions=self.decompositions,
                          kinds=self._kinds, leaves=self._leaves)

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

    def nodes_in_order(self, nodes: Iterable[Node]) -> list[Node]:
        return sorted(nodes, key=self.index.__getitem__)

    # -- outputs ------------------------------------------------------------------------
    def outputs(self) -> list[Node]:
        """The data values the graph returns, in order."""
        out = [n for n in self.nodes if n.op == "output"]
        return [n for n in out[0].all_input_nodes if self.is_data[n]] if out else []


