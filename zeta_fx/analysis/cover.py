"""The zero search: the zeroable layers nearest a value whose zeroing makes it zero.

The search walks backwards from a value through what must be zero for each value to be
zero (:meth:`~zeta_fx.analysis.layers.Layers.groups`), stops at the first zeroable layer on
each path, and never leaves the part of the graph it is told to stay in (a residual
branch). Its answer is a proposal (:class:`Found`) or the first obstacle
(:class:`Blocked`); the zero facts decide.

>>> import torch
>>> from torch import nn, fx
>>> from zeta_fx.analysis.view import GraphView
>>> class Block(nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)
...     def forward(self, x):
...         return x + torch.relu(self.fc2(torch.relu(self.fc1(x))))
>>> view = GraphView(fx.symbolic_trace(Block()))
>>> found = zero_cover(view, view.layers, view.by_name["relu_1"], lambda n: n.name != "x")
>>> [n.name for n in found.layers], found.params
(['fc2'], ('fc2.weight', 'fc2.bias'))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch.fx import Node

from zeta_fx.analysis.facts import makes_zeros
from zeta_fx.analysis.index import GraphIndex
from zeta_fx.analysis.layers import Layers, ParamPath, is_zero_constant
from zeta_fx.semantics.tables import CONVS

__all__ = ["Found", "Blocked", "zero_cover"]


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


def zero_cover(graph: GraphIndex, layers: Layers, start: Any,
               inside: Callable[[Node], bool]) -> Found | Blocked:
    """The zeroable layers nearest ``start`` whose zeroing makes ``start`` zero.

    ``start`` is a data node, a parameter-only node or a constant. The search walks
    backwards through what must be zero for each value to be zero and never leaves the
    data nodes for which ``inside`` is true. Iterative: its depth is not bounded by
    Python's recursion limit. A :class:`Found` is a proposal; the zero facts prove it (:mod:`zeta_fx.analysis.proof`).
    """
    if not isinstance(start, Node):
        if start is None or is_zero_constant(start):
            return Found((), 0)
        return Blocked(graph.nodes[-1], f"adds the constant {start!r}, not zero")
    if not graph.is_data.get(start):
        if makes_zeros(start):
            return Found((), 0)  # a fresh tensor of zeros, as made
        got = layers.param_operand(start)
        if isinstance(got, str):
            return Blocked(start, got)
        return Found(((start, got.params),), 0, got.chain)
    # On demand, depth first without recursion: a node is worked out once the operands
    # its step reads are; a branch that ends in a layer stops there, without visiting
    # the rest of the branch.
    is_data = graph.is_data
    results: dict[Node, Found | Blocked] = {}
    stack = [start]
    while stack:
        node = stack[-1]
        if node in results:
            stack.pop()
            continue
        pending = [n for n in _cover_reads(graph, layers, node, inside) if n not in results
                   and is_data.get(n, False) and n.op != "placeholder" and inside(n)]
        if pending:
            stack.extend(pending)
            continue
        stack.pop()
        results[node] = _cover_step(graph, layers, node, inside, results)
    return results[start]

def _cover_reads(graph: GraphIndex, layers: Layers, node: Node,
                 inside: Callable[[Node], bool]) -> list[Node]:
    """The data operands whose search results :meth:`_cover_step` reads for ``node``."""
    if not inside(node) or node.op == "placeholder":
        return []
    if node.op == "call_module" and layers.layer(node) is not None:
        return []
    if _weight_not_zeroable(graph, layers, node):
        return []
    groups = layers.groups(node)
    if isinstance(groups, str):
        return []
    is_data = graph.is_data
    return [v for group in groups for v in group if isinstance(v, Node) and is_data.get(v)]

def _weight_not_zeroable(graph: GraphIndex, layers: Layers, node: Node) -> str:
    """Why the search stops at ``node``, a linear or convolution call whose weight is a
    parameter it cannot zero (read through a computation the analysis does not enter:
    RWKV's in-place rescaling of its output weights under ``torch.no_grad()`` in eval mode),
    or ``""``. Going past it would zero an earlier layer: not the branch's last, and
    (``value(relu(key(x)) ** 2)`` with ``key`` zero) a branch that never gets a gradient
    again. A module layer that cannot be zeroed stops the search the same way."""
    if node not in graph.layer_nodes or node.op == "call_module" or \
            graph.op_key(node)[0] not in CONVS:
        return ""
    layer = layers.layer(node)
    if layer is None or layer.zeroable:
        return ""
    weight = graph.bound(node).get("weight")
    if not isinstance(weight, Node) or graph.is_data.get(weight) or \
            not graph.param_roots.get(weight):
        return ""
    got = layers.param_operand(weight)
    why = got if isinstance(got, str) else layer.why_not
    return (f"`{node.name}` ({graph.op_key(node)[0]}) reads its weight `{weight.name}` from "
            f"parameters it cannot zero ({why}); zeroing a layer before it would not zero "
            "the branch's last layer")


def _cover_step(graph: GraphIndex, layers: Layers, node: Node, inside: Callable[[Node], bool],
                results: dict[Node, Found | Blocked]) -> Found | Blocked:
    if not inside(node) or node.op == "placeholder":
        return Blocked(node, f"the path reaches `{node.name}`, outside the branch, "
                             "without passing a layer that can be zeroed")
    layer = layers.layer(node)
    if layer is not None and node.op == "call_module":
        if layer.zeroable:
            return Found(((node, layer.params),), 0, layer.chain)
        return Blocked(node, f"`{node.name}`: {layer.why_not}")
    why = _weight_not_zeroable(graph, layers, node)
    if why:
        return Blocked(node, why)
    groups = layers.groups(node)
    if isinstance(groups, str):
        return Blocked(node, groups)
    sites: list[tuple[Node, tuple[str, ...]]] = []
    chain: list[Node] = []
    own: list[str] = []
    depth = 0
    for group in groups:
        best: Found | ParamPath | None = None
        blocked: Blocked | None = None
        for operand in group:
            gathered = layers.param_gather(operand)
            if gathered is not None:
                # experts' weights picked by the router: the parameter, zeroed at the
                # gather that reads it
                got_g = layers.param_operand(gathered)
                if isinstance(got_g, ParamPath):
                    site = Found(((operand, got_g.params),), 0, got_g.chain)
                    if best is None or isinstance(best, Found) and best.depth > 0:
                        best = site
                    continue
            if isinstance(operand, Node) and graph.is_data.get(operand):
                got = results.get(operand) or Blocked(
                    operand, f"the path reaches `{operand.name}`, outside the branch, "
                             "without passing a layer that can be zeroed")
                if isinstance(got, Found):
                    if best is None or (isinstance(best, Found) and got.depth < best.depth):
                        best = got
                elif blocked is None or (got.node in graph.layer_nodes
                                         and blocked.node not in graph.layer_nodes):
                    blocked = got  # a layer that stopped the search says the most
            elif isinstance(operand, Node) and makes_zeros(operand):
                best = ParamPath((), ())  # a fresh tensor of zeros (an accumulator)
                break
            elif isinstance(operand, Node):
                got_p = layers.param_operand(operand)
                if isinstance(got_p, ParamPath):
                    # the node itself is the layer: nearest possible; among parameter
                    # operands the one with the shortest chain (a gain, not the weight
                    # it scales)
                    if not isinstance(best, ParamPath) or len(got_p.chain) < len(best.chain):
                        best = got_p
                    continue
                if blocked is None:
                    blocked = Blocked(node, f"`{node.name}`: {got_p}")
            elif operand is None or is_zero_constant(operand) or \
                    (isinstance(operand, Node) and makes_zeros(operand)):
                best = ParamPath((), ())
                break
            elif blocked is None:
                blocked = Blocked(node, f"`{node.name}` adds the constant {operand!r}, "
                                        "not zero")
        if best is None:
            return blocked or Blocked(node, f"`{node.name}` has nothing to zero")
        if isinstance(best, ParamPath):
            own.extend(best.params)
            chain.extend(best.chain)
        else:
            sites.extend(best.sites)
            chain.extend(best.chain)
            depth = max(depth, best.depth + 1)
    if own:
        sites.append((node, tuple(dict.fromkeys(own))))
    return Found(tuple(dict.fromkeys(sites)), depth, tuple(dict.fromkeys(chain)))
