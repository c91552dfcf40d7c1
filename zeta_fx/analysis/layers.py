"""Layers: the graph nodes that consume parameters, who owns them, and which of their
parameters make them zero.

A layer is a ``call_module`` whose module has parameters, or a function or method fed by
parameters, possibly through ops on the parameters alone (timm's StdConv, LayerScale's
gamma, ``F.linear``, an MoE's ``w[expert_ids]``). :class:`Layers` answers, per node, what
must be zero for it to be zero (:meth:`Layers.groups`), which parameters zero a
parameter-only value (:meth:`Layers.param_operand`), and whether a layer is zeroable (a
known layer by its class; anything else only when the zero facts prove it).

>>> import torch
>>> from torch import nn, fx
>>> from zeta_fx.analysis.view import GraphView
>>> class Scaled(nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.fc, self.gamma = nn.Linear(4, 4), nn.Parameter(torch.ones(4))
...     def forward(self, x):
...         return x + self.gamma * self.fc(x)
>>> view = GraphView(fx.symbolic_trace(Scaled()))
>>> [(n.name, view.layer(n).params) for n in view.nodes if view.layer(n)]
[('fc', ('fc.weight', 'fc.bias')), ('mul', ('gamma',))]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.fx import Node

from zeta_fx.analysis.facts import Fact, ZeroFacts, zero_inputs_needed
from zeta_fx.analysis.facts.bodies import item_inputs_needed
from zeta_fx.analysis.index import GraphIndex
from zeta_fx.analysis.joins import additive_operands
from zeta_fx.semantics.decompose import decompose
from zeta_fx.semantics.keys import target_name
from zeta_fx.semantics.modules import LAYER_PARAMS, ZERO_KEEPING_KINDS, get_local
from zeta_fx.semantics.tables import (ACCUMULATING, ADDITIVE, BATCH_NORMS, CONVS, DIVIDE,
                                      FINITE_OPS, GATHERS, LAYOUT_OPS, NORMS, PRESERVING,
                                      PRODUCTS, SCATTER_REDUCES, SINGULAR, WEIGHT_NORMS,
                                      WRITTEN_VALUE, ZERO_KEEPING)

__all__ = ["Layer", "Layers", "ParamPath", "owner_of", "is_zero_constant"]


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
class ParamPath:
    """A parameter-only operand that becomes zero once ``params`` are (through ``chain``)."""

    params: tuple[str, ...]
    chain: tuple[Node, ...]



class Layers:
    """The layers of one graph, worked out on demand and kept for the pass (read-only).

    ``graph`` is the index; ``facts(zeroed, nodes)`` runs the zero facts (a declared
    module, or a layer made of ops on parameters, is zeroable only if they prove it).

    Long because "what must be zero for this node to be zero" (:meth:`groups`) is asked of
    every op kind a layer can be made of; the rest are memoised walks over parameters.
    """

    def __init__(self, graph: GraphIndex,
                 facts: Callable[[Iterable[str], Iterable[Node] | None], ZeroFacts]) -> None:
        self.graph = graph
        self.facts = facts
        self._layers: dict[Node, Layer | None] = {}
        self._param_results: dict[Node, ParamPath | str] = {}
        self._group_cache: dict[Node, list[list[Any]] | str] = {}

    def layer(self, node: Node) -> Layer | None:
        """The layer at ``node`` (a data node consuming parameters), or ``None``."""
        if node in self._layers:
            return self._layers[node]
        layer = self._classify_layer(node) if node in self.graph.layer_nodes else None
        if layer is not None and layer.zeroable:
            aliased = [(p, self.graph.attribute_aliases[p]) for p in layer.params
                       if p in self.graph.attribute_aliases]
            if aliased:
                param, attr = aliased[0]
                layer = Layer(node, layer.owner, (), False,
                              f"`{param}` shares its storage with the plain tensor attribute "
                              f"`{attr}`: zeroing it would change `{attr}` too, which the "
                              "graph does not follow (tracing may fold it into a constant); "
                              "make it a view computed in forward, or a buffer")
        self._layers[node] = layer
        return layer

    def _classify_layer(self, node: Node) -> Layer | None:
        if node.op == "call_module":
            owned = self.graph.params_of_module(node.target)
            if not owned:
                return None
            module = self.graph.module(node.target)
            kind, why_not = self.graph.module_kind(node.target)
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
        side = [n for n in node.all_input_nodes if not self.graph.is_data[n] and self.graph.param_roots[n]]
        if not side:
            return None
        all_roots = sorted(frozenset().union(*(self.graph.param_roots[n] for n in side)))
        owner = owner_of(all_roots)
        groups = self.groups(node)
        if isinstance(groups, str):
            return Layer(node, owner, (), False, groups)
        chosen: list[ParamPath] = []
        for group in groups:
            picked = None
            for operand in group:
                if isinstance(operand, Node) and not self.graph.is_data[operand]:
                    result = self.param_operand(operand)
                    if isinstance(result, ParamPath) and (
                            picked is None or len(result.chain) < len(picked.chain)):
                        picked = result
                elif operand is None or is_zero_constant(operand):
                    picked = ParamPath((), ())
                    break
            if picked is None:
                return Layer(node, owner, (), False,
                             f"`{node.name}` ({self.graph.op_key(node)[0]}) uses parameters "
                             f"{all_roots} but zeroing them does not make it zero")
            chosen.append(picked)
        params = tuple(dict.fromkeys(p for c in chosen for p in c.params))
        chain = tuple(dict.fromkeys(n for c in chosen for n in c.chain))
        if not params:
            return None
        facts = self.facts(params, self.graph.weight_closure(params) | {node})
        if facts[node] != Fact.ZERO:
            return Layer(node, owner_of(params), (), False, facts.why(node))
        return Layer(node, owner_of(params), params, True, chain=chain)

    def groups(self, node: Node) -> list[list[Any]] | str:
        """What must be zero for ``node`` to be zero: every group, one operand of each.

        A string says why no choice of operands can make it zero. Read-only: the answer is
        kept per node for the pass.
        """
        got = self._group_cache.get(node)
        if got is None:
            got = self._node_groups(node)
            if not isinstance(got, str) and node in self.graph.storage.readers_of_stale:
                got = self._as_read(node, got)
            self._group_cache[node] = got
        return got

    def read_groups(self, value: Any, reader: Node) -> list[list[Any]] | str:
        """What must be zero for ``value`` to be zero as ``reader`` finds it in its storage:
        ``[[value]]`` (the value as made) when no write reached it since, and otherwise that
        and what each write ``reader`` sees wrote into it (a fresh ``zeros_like`` filled by
        ``out[:, i] = f(h)`` is zero only where ``f(h)`` is). A string says why no choice
        makes it zero: a write whose value the graph does not name, or one made after
        ``reader`` (a cache: the read finds the previous call's value). Group ``i`` (from
        1) is what the ``i``-th write wrote."""
        if not isinstance(value, Node):
            return [[value]]
        storage = self.graph.storage
        writers = next((ws for v, ws in storage.stale_reads(reader) if v is value), ())
        groups: list[list[Any]] = [[value]]
        for writer in writers:
            if storage.index[writer] > storage.index[reader]:
                return (f"`{writer.name}` writes `{value.name}` in place after "
                        f"`{reader.name}` reads it: the read finds what the previous call "
                        "left there")
            key = self.graph.op_key(writer)[0] if writer.op != "call_module" else ""
            spec = WRITTEN_VALUE.get(key)
            if spec is None:
                effects = storage.effects.get(writer)
                if writer.op == "call_module" or effects is None or effects.opaque:
                    return (f"`{writer.name}` writes into `{value.name}` in place before "
                            f"`{reader.name}` reads it, and what it writes is not known")
                # an op that writes its result in place (``f.mul_(2)``, ``out=``): what
                # it wrote is its own value
                groups.append([writer])
                continue
            names, position = spec
            if position is None:
                groups.append([0])  # writes zeros
                continue
            bound = self.graph.bound(writer)
            written = next((bound[n] for n in names if n in bound),
                           writer.args[position] if len(writer.args) > position else None)
            groups.append([written])
        return groups

    def _as_read(self, node: Node, groups: list[list[Any]]) -> list[list[Any]] | str:
        """``groups`` with each operand whose storage writes reached replaced by what
        :meth:`read_groups` says it holds (a group ``[a, b]`` with ``b`` filled by writes
        ``w``: ``[a, b as made]`` and ``[a, what w wrote]``, for every ``w``)."""
        out: list[list[Any]] = []
        for group in groups:
            expanded = [group]
            for operand in dict.fromkeys(o for o in group if isinstance(o, Node)):
                read = self.read_groups(operand, node)
                if not isinstance(read, str) and len(read) == 1:
                    continue
                if isinstance(read, str):  # that operand cannot be the zero one
                    expanded = [[o for o in g if o is not operand] for g in expanded]
                    if any(not g for g in expanded):
                        return f"`{node.name}` reads `{operand.name}`: {read}"
                    continue
                expanded = [list(r) + [o for o in g if o is not operand] if operand in g else g
                            for g in expanded for r in (read if operand in g else [()])]
                if len(expanded) > 64:
                    return (f"`{node.name}` reads values filled by too many writes to "
                            "follow")
            out.extend(expanded)
        return out

    def _node_groups(self, node: Node) -> list[list[Any]] | str:
        what = self._describe_op(node)
        if node.op == "call_module":
            kind, why_not = self.graph.module_kind(node.target)
            data = [a for a in node.args if isinstance(a, Node)]
            if kind is None:
                return f"{what} at `{node.name}` is opaque: {why_not}"
            if kind in ZERO_KEEPING_KINDS or (
                    kind == "declared" and not self.graph.params_of_module(node.target)):
                return [data[:1]]
            if kind == "layer_norm" or (kind == "batch_norm" and getattr(
                    self.graph.module(node.target), "running_mean", None) is None):
                return [data[:1]]  # no affine: normalises a zero input to zero (eps > 0)
            if kind == "finite":
                return f"{what} at `{node.name}` maps zero to a non-zero value"
            return f"{what} at `{node.name}` is not known to output zero"
        if node.op not in ("call_function", "call_method"):
            return f"`{node.name}` is not an op"
        key, _ = self.graph.op_key(node)
        a = self.graph.bound(node)
        if key in ADDITIVE:
            return [[a.get("input")], [a.get("other")]]
        if key == "sum" and additive_operands(self.graph, node) is not None:
            return [[v] for v, _ in additive_operands(self.graph, node)]
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
        if key in ACCUMULATING or key in SCATTER_REDUCES:
            # (every reduction of zeros is zero: the facts check what else it needs)
            return [[a.get("input")], [a.get("source", a.get("src"))]]
        if key in ("grouped_mm_fallback", "_grouped_mm", "grouped_mm"):
            args = node.args + (None,) * 4
            bias = args[3] if isinstance(args[3], Node) else node.kwargs.get("bias")
            return [[args[0], args[1]]] + ([[bias]] if isinstance(bias, Node) else [])
        if key == "embedding":
            return [[a.get("weight")]]
        if key in WEIGHT_NORMS:  # g * v / ||v||: zero with its magnitude
            return [[a.get(WEIGHT_NORMS[key][0])]]
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
            needed = item_inputs_needed(node)  # an output of a no_grad subgraph
            if isinstance(needed, str):
                return f"{what} at `{node.name}`: {needed}"
            return [[node.args[0]]] if needed is None else [[v] for v in needed]
        if key == "pow":
            exponent = a.get("exponent")
            if isinstance(exponent, (int, float)) and exponent > 0:
                return [[a.get("input")]]
            return f"{what} at `{node.name}` is a power that does not keep zero"
        if key in ZERO_KEEPING or key in PRESERVING or key in self.graph.ops.declared_keys:
            first = a.get("input", node.args[0] if node.args else None)
            return [[first]]
        if key in FINITE_OPS:
            return f"{what} at `{node.name}` maps zero to a non-zero value"
        if key in SINGULAR:
            return f"{what} at `{node.name}` is not finite at zero"
        decomposed = self.graph.decompositions.get(node)
        if node not in self.graph.decompositions:
            decomposed = self.graph.decompositions[node] = decompose(
                node, self.graph.dtypes.__getitem__, self.graph.op_key(node)[0])
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
            if not isinstance(node, Node) or not self.graph.is_data.get(node) or \
                    node.op not in ("call_function", "call_method"):
                return None
            key, _ = self.graph.op_key(node)
            source = node.args[0] if node.args else None
            if key in GATHERS or key in LAYOUT_OPS:
                if isinstance(source, Node) and not self.graph.is_data[source] and \
                        self.graph.param_roots.get(source):
                    return source if key in GATHERS else None
                node = source
                continue
            return None
        return None

    def param_operand(self, value: Node) -> ParamPath | str:
        """The parameters whose zeroing makes the parameter-only ``value`` zero, or why not."""
        # Each answer depends only on the node's own inputs, so one memo serves every query
        # of the pass (a weight read by many layers is worked out once).
        results = self._param_results
        got = results.get(value)
        if got is not None:
            return got
        is_data = self.graph.is_data
        order = self._backward_closure(
            value, lambda n: n not in results and not is_data[n] and n.op != "placeholder")
        for node in order:
            if node not in results:
                results[node] = self._param_step(node, results)
        return results[value]

    def _param_step(self, node: Node, results: dict[Node, Any]) -> ParamPath | str:
        if node.op == "get_attr":
            if node.target in self.graph.params:
                return ParamPath((node.target,), (node,))
            return f"`{node.name}` is a buffer or constant, not a parameter"
        if not self.graph.param_roots.get(node):
            return f"`{node.name}` is computed from no parameter"
        groups = self.groups(node)
        if isinstance(groups, str):
            return groups
        params: dict[str, None] = {}
        chain: dict[Node, None] = {node: None}
        for group in groups:
            picked: ParamPath | str | None = None
            for operand in group:
                if isinstance(operand, Node):
                    got = results.get(operand, f"`{operand.name}` is outside the weight")
                elif operand is None or is_zero_constant(operand):
                    got = ParamPath((), ())
                else:
                    got = f"`{node.name}` adds the constant {operand!r}, not zero"
                if isinstance(got, ParamPath):
                    if not isinstance(picked, ParamPath) or len(got.chain) < len(picked.chain):
                        picked = got
                    continue
                picked = picked or got
            if not isinstance(picked, ParamPath):
                return picked or f"`{node.name}` has nothing to zero"
            params.update(dict.fromkeys(picked.params))
            chain.update(dict.fromkeys(picked.chain))
        return ParamPath(tuple(params), tuple(chain))

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
        return sorted(seen, key=self.graph.index.__getitem__)

    def _describe_op(self, node: Node) -> str:
        if node.op == "call_module":
            return f"`{type(self.graph.module(node.target)).__name__}` ({node.target})"
        return f"`{target_name(node.target)}`"


def _has_tensor(module: nn.Module, dotted: str) -> bool:
    params = module._parameters
    if dotted in params:  # (get_local's own first step)
        return isinstance(params[dotted], torch.Tensor)
    return isinstance(get_local(module, dotted), torch.Tensor)



def is_zero_constant(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0
