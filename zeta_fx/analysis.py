"""A read-only view of an FX graph: value flow, layers, residual joins, zero propagation.

Built once per pass in a single sweep over the nodes; every query after that touches only
the part of the graph it asks about. Only *value* edges count as data flow: shape and
metadata queries (``x.shape``, ``x.size()``, ``x.new_empty(...)``, ``torch._assert``),
parameters, buffers and anything computed from those alone are not data.

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

import heapq
import operator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Iterable

import torch
from torch import fx, nn
from torch.fx import Node

from zeta_fx.ops import ZeroOps, layer_inputs, nonzero_offset, spec_inputs, target_name

__all__ = ["GraphView", "Layer", "Join", "Found", "Blocked", "owner_of"]

# Metadata queries: their outputs carry no values of their inputs.
_SHAPE_METHODS = frozenset({
    "size", "dim", "ndimension", "numel", "nelement", "get_device", "element_size",
    "stride", "storage_offset", "is_contiguous", "is_floating_point", "is_complex",
    "new_empty", "new_zeros", "new_ones", "new_full", "new_empty_strided",
})
_SHAPE_ATTRS = frozenset({"shape", "ndim", "dtype", "device", "is_cuda", "layout",
                          "requires_grad", "is_sparse", "names"})
_SHAPE_FUNCTIONS = frozenset({
    "torch._assert", "torch._assert_async", "builtins.len", "torch.numel",
    "torch.zeros_like", "torch.ones_like", "torch.empty_like", "torch.rand_like",
    "torch.randn_like", "torch.randint_like", "torch.full_like", "torch._shape_as_tensor",
    "torch.fx._symbolic_trace._assert_is_none", "torch.is_floating_point", "torch.is_tensor",
    "torch.sym_int", "torch.sym_float", "torch.sym_max", "torch.sym_min", "torch.sym_not",
    # torch.export (aten) graphs
    "aten.sym_size.int", "aten.sym_size.default", "aten.sym_numel.default",
    "aten.sym_stride.int", "aten.sym_stride.default", "aten.sym_storage_offset.default",
    "aten._assert_tensor_metadata.default", "aten._assert_scalar.default",
    "aten.zeros_like.default", "aten.ones_like.default", "aten.empty_like.default",
    "aten.full_like.default", "aten.rand_like.default", "aten.randn_like.default",
    "aten.new_zeros.default", "aten.new_ones.default", "aten.new_empty.default",
    "aten.new_full.default", "aten.dim.default", "aten.numel.default",
})
_ADDITIVE_FUNCTIONS = frozenset({"operator.add", "operator.iadd", "torch.add",
                                 "aten.add.Tensor", "aten.add_.Tensor"})
_ADDITIVE_METHODS = frozenset({"add", "add_"})


def _unused_item(node: Node) -> bool:
    """An element of a tuple output that nothing uses (``x, _ = attn(x, x, x)``)."""
    return node.op == "call_function" and node.target is operator.getitem and not node.users


def _quoted(names: list[str]) -> str:
    return ", ".join(f"`{n}`" for n in names)


def owner_of(param_fqns: Iterable[str]) -> str:
    """The deepest module FQN that holds every parameter in ``param_fqns``."""
    parents = [fqn.rsplit(".", 1)[0] if "." in fqn else "" for fqn in param_fqns]
    if not parents:
        return ""
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
    ``zeroable`` is false, and then ``why_not`` says why).
    """

    node: Node
    owner: str
    params: tuple[str, ...]
    zeroable: bool
    why_not: str = ""


@dataclass(frozen=True)
class Found:
    """Zeroing ``layers`` provably makes the searched value zero."""

    layers: tuple[Node, ...]
    depth: int


@dataclass(frozen=True)
class Blocked:
    """No zeroable layer makes the searched value zero; ``node`` is where the search stopped."""

    node: Node
    reason: str


@dataclass
class Join:
    """An additive merge of paths from a common fork, classified into skip and branches."""

    merge: Node
    terms: tuple[Node, ...]
    fork: Node | None = None
    ok: bool = False
    reason: str = ""
    skip: Node | None = None
    skip_kind: str = ""
    skip_layers: tuple[Node, ...] = ()
    branches: tuple[Node, ...] = ()
    sides: dict[Node, frozenset[Node]] = field(default_factory=dict)
    region: frozenset[Node] = frozenset()


class GraphView:
    """Value flow, layers and residual joins of ``gm``; ``root`` holds the real modules.

    ``root`` is the model the user passed (module types and parameters come from it);
    it defaults to ``gm``. ``ops`` is the zero-propagation table.
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
        self.params: dict[str, torch.Tensor] = {}
        self._modules: dict[str, nn.Module] = {}
        for prefix, module in self.root.named_modules(remove_duplicate=False):
            # named_parameters(remove_duplicate=False) and a module index in one sweep
            self._modules[prefix] = module
            for name, param in module._parameters.items():
                if param is not None:
                    self.params[f"{prefix}.{name}" if prefix else name] = param
        self._module_params: dict[str, tuple[str, ...]] = {}
        self._layers: dict[Node, Layer | None] = {}
        self._shape_functions: dict[Any, bool] = {}
        self._build()

    # -- construction: one sweep in topological order ---------------------------------
    def _build(self) -> None:
        empty: frozenset[str] = frozenset()
        is_data, param_roots, data_users = self.is_data, self.param_roots, self.data_users
        consumers = self.consumers
        for i, node in enumerate(self.nodes):
            self.index[node] = i
            data_users[node] = []
            roots = empty
            op = node.op
            if op == "placeholder":
                data, inputs = True, ()
            elif op == "get_attr":
                data, inputs = False, ()
                if node.target in self.params:
                    roots = frozenset((node.target,))
            elif self._is_shape_query(node):
                data, inputs = False, ()
            else:
                all_inputs = node.all_input_nodes
                inputs = tuple(n for n in all_inputs if is_data[n])
                data = bool(inputs) and op != "output"
                if op == "call_module":
                    owned = self._params_of_module(node.target)
                    for fqn in owned:
                        consumers.setdefault(fqn, []).append(node)
                    if owned and data:
                        self.layer_nodes.add(node)
                if len(inputs) < len(all_inputs):
                    side_roots = [param_roots[n] for n in all_inputs
                                  if not is_data[n] and param_roots[n]]
                    if side_roots:
                        roots = frozenset().union(*side_roots)
                        if data:
                            self.layer_nodes.add(node)
                            for fqn in roots:
                                consumers.setdefault(fqn, []).append(node)
                if data:
                    roots = empty  # a data node's value is not a parameter
            is_data[node] = data
            self.data_inputs[node] = inputs
            param_roots[node] = roots
            for inp in inputs:
                data_users[inp].append(node)

    def _is_shape_query(self, node: Node) -> bool:
        if node.op == "call_method":
            return node.target in _SHAPE_METHODS
        if node.op == "call_function":
            if node.target is getattr:
                return len(node.args) > 1 and node.args[1] in _SHAPE_ATTRS
            try:
                known = self._shape_functions.get(node.target)
            except TypeError:  # an unhashable callable
                return target_name(node.target) in _SHAPE_FUNCTIONS
            if known is None:
                known = self._shape_functions[node.target] = (
                    target_name(node.target) in _SHAPE_FUNCTIONS)
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

    # -- layers -------------------------------------------------------------------------
    def layer(self, node: Node) -> Layer | None:
        """The layer at ``node`` (a data node consuming parameters), or ``None``."""
        if node in self._layers:
            return self._layers[node]
        layer = self._classify_layer(node) if self.is_data.get(node) else None
        self._layers[node] = layer
        return layer

    def _classify_layer(self, node: Node) -> Layer | None:
        if node.op == "call_module":
            owned = self._params_of_module(node.target)
            if not owned:
                return None
            module = self.module(node.target)
            names = self.ops.layer_params_of_module(module)
            if not names:
                return Layer(node, node.target, (), False,
                             f"`{type(module).__name__}` is not known to output zero when its "
                             "parameters are zero; declare it with zero_preserving=[...] if it does")
            prefix = f"{node.target}." if node.target else ""
            params = tuple(prefix + n for n in names)
            return Layer(node, owner_of(params), params, True)
        side = [n for n in node.all_input_nodes if not self.is_data[n] and self.param_roots[n]]
        if not side:
            return None
        all_roots = frozenset().union(*(self.param_roots[n] for n in side))
        owner = owner_of(sorted(all_roots))
        spec = self.ops.layer_spec(node)
        what = f"`{target_name(node.target)}`"
        if spec is None:
            return Layer(node, owner, (), False,
                         f"{what} uses parameters {sorted(all_roots)} but is not known to output "
                         "zero when they are zero")
        if spec.mode == "any":
            for inp in side:
                if self._param_chain_zero(inp):
                    params = tuple(sorted(self.param_roots[inp]))
                    return Layer(node, owner_of(params), params, True)
            return Layer(node, owner, (), False,
                         f"{what}: no parameter operand stays zero through the ops applied to it")
        params: dict[str, None] = {}  # in argument order: weight, then bias
        for value in layer_inputs(node, spec):
            if value is None or (isinstance(value, (int, float)) and value == 0):
                continue
            if not isinstance(value, Node) or self.is_data[value]:
                return Layer(node, owner, (), False,
                             f"{what} takes a weight or bias that is not a parameter ({value!r})")
            if not self.param_roots[value]:
                return Layer(node, owner, (), False,
                             f"{what} takes `{value.name}`, a buffer or constant, as weight or bias")
            if not self._param_chain_zero(value):
                return Layer(node, owner, (), False,
                             f"{what}: its weight passes through ops that do not keep zero")
            params.update(dict.fromkeys(sorted(self.param_roots[value])))
        if not params:
            return None
        ordered = tuple(params)
        return Layer(node, owner_of(ordered), ordered, True)

    def _param_chain_zero(self, node: Node) -> bool:
        """Whether ``node`` (computed from parameters only) is zero once its roots are."""
        if node.op == "get_attr":
            return bool(self.param_roots[node])
        spec = self._zero_spec(node)
        if spec is None or (spec.check is not None and spec.check(node) is not None):
            return False
        if nonzero_offset(node, lambda n: bool(self.param_roots.get(n))):
            return False  # `1 + gamma` is not zero when gamma is
        rooted = [n for n in spec_inputs(node, spec, lambda n: True) if self.param_roots.get(n)]
        if not rooted:
            return False
        results = [self._param_chain_zero(n) for n in rooted]
        return all(results) if spec.mode == "all" else any(results)

    def _zero_spec(self, node: Node):
        if node.op == "call_function":
            return self.ops.spec_for_function(node.target)
        if node.op == "call_method":
            return self.ops.spec_for_method(node.target)
        return None

    # -- zero propagation ---------------------------------------------------------------
    def zero_cover(self, start: Node, inside: Callable[[Node], bool]) -> Found | Blocked:
        """The zeroable layers nearest ``start`` whose zeroing makes ``start`` zero.

        The search walks backwards through ops that map zero to zero and never leaves the
        nodes for which ``inside`` is true (a residual branch, say).
        """
        memo: dict[Node, Found | Blocked] = {}

        def visit(node: Node, depth: int) -> Found | Blocked:
            if node in memo:
                return memo[node]
            memo[node] = result = self._cover_step(node, inside, visit, depth)
            return result

        return visit(start, 0)

    def _cover_step(self, node: Node, inside: Callable[[Node], bool],
                    visit: Callable[[Node, int], Found | Blocked], depth: int) -> Found | Blocked:
        if not inside(node):
            return Blocked(node, f"the path reaches `{node.name}`, outside the branch, "
                                 "without passing a layer that can be zeroed")
        layer = self.layer(node)
        if layer is not None:
            if layer.zeroable:
                return Found((node,), 0)
            return Blocked(node, f"`{node.name}`: {layer.why_not}")
        if depth > 2000:
            return Blocked(node, "the branch is too deep to search")
        what = self._describe_op(node)
        if node.op == "call_module":
            if self.ops.module_preserves_zero(self.module(node.target)):
                inputs = list(self.data_inputs[node])
                mode = "all"
            else:
                return Blocked(node, f"{what} at `{node.name}` is not known to map zero to zero")
        else:
            spec = self._zero_spec(node)
            if spec is None:
                return Blocked(node, f"{what} at `{node.name}` is not known to map zero to zero")
            if spec.check is not None:
                refusal = spec.check(node)
                if refusal:
                    return Blocked(node, f"{what} at `{node.name}` {refusal}")
            offset = nonzero_offset(node, self.is_data.__getitem__)
            if offset:
                return Blocked(node, f"{what} at `{node.name}` {offset}")
            inputs = spec_inputs(node, spec, self.is_data.__getitem__)
            mode = spec.mode
        if not inputs:
            return Blocked(node, f"{what} at `{node.name}` has no data input to zero")
        results = [visit(inp, depth + 1) for inp in inputs]
        if mode == "all":
            for result in results:
                if isinstance(result, Blocked):
                    return result
            layers = tuple(dict.fromkeys(n for r in results for n in r.layers))
            return Found(layers, 1 + max(r.depth for r in results))
        found = [r for r in results if isinstance(r, Found)]
        if not found:
            return results[0]
        best = min(found, key=lambda r: r.depth)
        return Found(best.layers, best.depth + 1)

    def _describe_op(self, node: Node) -> str:
        if node.op == "call_module":
            return f"`{type(self.module(node.target)).__name__}` ({node.target})"
        return f"`{target_name(node.target)}`"

    # -- residual joins -----------------------------------------------------------------
    def is_additive(self, node: Node) -> bool:
        if not self.is_data.get(node):
            return False
        if node.op == "call_function":
            return self.ops.name_of(node.target) in _ADDITIVE_FUNCTIONS
        if node.op == "call_method":
            return node.target in _ADDITIVE_METHODS
        return False

    def _terms(self, merge: Node, inner: list[Node]) -> list[Node]:
        terms: list[Node] = []
        for inp in merge.args[:2]:
            if not isinstance(inp, Node) or not self.is_data[inp]:
                continue
            if self.is_additive(inp) and self.data_users[inp] == [merge]:
                inner.append(inp)
                terms.extend(self._terms(inp, inner))
            else:
                terms.append(inp)
        return terms

    @cached_property
    def _joins(self) -> list[Join]:
        joins = []
        separate: set[Node] = set()  # adds examined on their own, not as part of a longer sum
        for node in reversed(self.nodes):  # outermost add of a longer sum first
            if not self.is_additive(node):
                continue
            users = self.data_users[node]
            if len(users) == 1 and self.is_additive(users[0]) and users[0] not in separate:
                continue  # part of a longer sum; examined with its outermost add
            inner: list[Node] = []
            terms = self._terms(node, inner)
            flat = None
            if inner and len(set(terms)) == len(terms):
                flat = self._classify_join(node, tuple(terms), inner)
            if inner and (flat is None or not flat.ok):
                # The flat sum is no join: x + (x + f(x)) adds x twice; (x + f(x)) + emb
                # brings in a side input. Examine each add as a join of its own, so that an
                # inner residual block is still found.
                separate.add(node)
                inner = []
                terms = [a for a in node.args[:2] if isinstance(a, Node) and self.is_data[a]]
            elif flat is not None:
                joins.append(flat)
                continue
            if len(terms) < 2:
                continue  # adds a constant, a parameter or a shape-derived value
            joins.append(self._classify_join(node, tuple(terms), inner))
        joins.reverse()
        return joins

    def joins(self) -> list[Join]:
        """Every additive merge of two or more data paths, valid residual joins or not."""
        return self._joins

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

    def _classify_join(self, merge: Node, terms: tuple[Node, ...], inner: list[Node]) -> Join:
        join = Join(merge, terms)
        if len(set(terms)) < len(terms):
            join.reason = "adds a value to itself"
            return join
        fork, region, mask, why = self._find_fork(merge, terms, set(inner))
        if fork is None:
            join.reason = why
            return join
        join.fork, join.region = fork, region
        # A node reached from one term only belongs to that term's path; nodes shared by
        # several terms (a norm feeding parallel attention and MLP) belong to none.
        sides = {t: frozenset(n for n in region if mask[n] == 1 << i)
                 for i, t in enumerate(terms)}
        join.sides = sides
        layer_nodes = self.layer_nodes
        layer_counts = {t: len(sides[t] & layer_nodes) for t in terms}
        identity = [t for t in terms if layer_counts[t] == 0]
        if len(identity) == len(terms):
            join.reason = (f"no path between fork `{fork.name}` and the merge has a "
                           "parameterised layer: a parameter-free computation (a polynomial, a "
                           "rotary embedding, ...), not a residual block")
            return join
        if identity:
            join.skip, join.skip_kind = identity[0], "identity"
        elif len(terms) == 2 and layer_counts[terms[0]] != layer_counts[terms[1]]:
            join.skip = min(terms, key=lambda t: layer_counts[t])
            join.skip_kind = "projection"
            join.skip_layers = tuple(self.nodes_in_order(sides[join.skip] & layer_nodes))
        else:
            counts = ", ".join(f"`{t.name}` ({layer_counts[t]} layers)" for t in terms)
            join.reason = (f"no path is clearly the skip: parallel paths {counts} from fork "
                           f"`{fork.name}` (RepVGG-style); left alone")
            return join
        if join.skip_kind == "projection" and self._conditioning_only(join.skip, terms):
            join.reason = (f"not a residual join: `{join.skip.name}` is computed from "
                           f"conditioning inputs only, not from the data input "
                           f"`{self.inputs[0].name}`; "
                           "adding it brings a side input (timestep, class embedding) into "
                           "the path")
            return join
        join.branches = tuple(t for t in terms if t is not join.skip)
        join.ok = True
        return join

    def _conditioning_only(self, skip: Node, terms: tuple[Node, ...]) -> bool:
        """Whether the projection 'skip' is computed without the first graph input (by
        convention the data, ``x``) while another term is computed from it: in
        ``conv(x * scale(emb)) + proj(emb)`` both paths leave ``emb``, but ``proj(emb)`` is
        conditioning brought into the data path, not a shortcut. (An identity skip from a
        second input, as a decoder's ``tgt + cross_attn(tgt, memory)``, stays a join.)"""
        if len(self.inputs) < 2:
            return False
        deps = self.input_deps
        return not deps[skip] & 1 and any(deps[t] & 1 for t in terms)

    def _find_fork(self, merge: Node, terms: tuple[Node, ...], merge_set: set[Node]
                   ) -> tuple[Node | None, frozenset[Node], dict[Node, int], str]:
        """Walk back from ``merge`` in reverse topological order until all paths meet.

        A node is expanded only when every one of its users is already known to lead to
        the merge; so the walk stays inside the region and costs what the region costs.
        The first node reached from every term is the fork.
        """
        full = (1 << len(terms)) - 1
        mask: dict[Node, int] = {}
        heap: list[tuple[int, Node]] = []
        for i, term in enumerate(terms):
            if term not in mask:
                mask[term] = 0
                heapq.heappush(heap, (-self.index[term], term))
            mask[term] |= 1 << i
        merge_set = merge_set | {merge}
        # Nodes known to lead only to the merge: expanded ones, the merge itself, and unused
        # tuple items (``x, _ = attn(x, x, x)``), which lead nowhere.
        inside = merge_set | self._unused_items
        expanded: set[Node] = set()
        boundary: list[Node] = []
        fork = None
        data_users, data_inputs, index = self.data_users, self.data_inputs, self.index
        while heap:
            _, node = heapq.heappop(heap)
            node_mask = mask[node]
            if node_mask == full:
                fork = node
                break
            if inside.issuperset(data_users[node]):
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
                b = max(boundary, key=self.index.__getitem__)
                outside = [u.name for u in self.data_users[b]
                           if u not in expanded and u not in merge_set]
                return None, frozenset(), mask, (
                    f"not a residual join: the paths into `{merge.name}` do not meet at a fork "
                    f"whose intermediate values feed only this merge (`{b.name}` is also used "
                    f"by {', '.join(f'`{n}`' for n in outside[:3])})")
            return None, frozenset(), mask, (f"not a residual join: the paths into `{merge.name}` "
                                       "share no common input")
        boundary_set = set(boundary)
        leaking = [u for u in self.data_users[fork] if u in boundary_set]
        if leaking:
            u = leaking[0]
            outside = [w.name for w in self.data_users[u] if w not in expanded and w not in merge_set]
            return None, frozenset(), mask, (
                f"not a residual join: `{u.name}`, between fork `{fork.name}` and merge "
                f"`{merge.name}`, is also used by {', '.join(f'`{n}`' for n in outside[:3])}")
        region = self._descendants_within(fork, expanded)
        return fork, region, mask, ""

    @cached_property
    def _unused_items(self) -> frozenset[Node]:
        return frozenset(n for n in self.nodes if self.is_data[n] and _unused_item(n))

    def _descendants_within(self, fork: Node, allowed: set[Node]) -> frozenset[Node]:
        seen: set[Node] = set()
        stack = [u for u in self.data_users[fork] if u in allowed]
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            stack.extend(u for u in self.data_users[node] if u in allowed and u not in seen)
        return frozenset(seen)

    def nodes_in_order(self, nodes: Iterable[Node]) -> list[Node]:
        return sorted(nodes, key=self.index.__getitem__)

    # -- outputs ------------------------------------------------------------------------
    def outputs(self) -> list[Node]:
        """The data values the graph returns, in order."""
        out = [n for n in self.nodes if n.op == "output"]
        return [n for n in out[0].all_input_nodes if self.is_data[n]] if out else []
