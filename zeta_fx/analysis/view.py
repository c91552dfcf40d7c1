"""The view of a captured graph the rules read: the index, its layers, the zero search,
the residual joins and the zero facts, over one graph, built once per pass.

:class:`GraphView` is the :class:`~zeta_fx.analysis.index.GraphIndex` (value flow, modules,
storages, dtypes) with the analyses over it, each in its own module:
:mod:`~zeta_fx.analysis.layers` (which nodes are layers and what zeroes them),
:mod:`~zeta_fx.analysis.cover` (the zero search: the layers nearest a value whose zeroing
should make it zero), :mod:`~zeta_fx.analysis.joins` (residual joins),
:mod:`~zeta_fx.analysis.conditioning` (side inputs) and :mod:`~zeta_fx.analysis.facts`
(what each value is once given parameters are zero: the facts decide what the search
proposes).

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

from functools import cached_property
from typing import Any, Callable, Iterable

from torch import fx, nn
from torch.fx import Node

from zeta_fx.analysis.conditioning import conditioning_only, side_input_reason
from zeta_fx.analysis.cover import Blocked, Found, zero_cover
from zeta_fx.analysis.facts import ZeroFacts
from zeta_fx.analysis.index import GraphIndex
from zeta_fx.analysis.joins import Join, additive_operands, find_joins
from zeta_fx.analysis.layers import Layer, Layers, owner_of
from zeta_fx.semantics.declarations import ZeroOps

__all__ = ["GraphView", "Layer", "Join", "Found", "Blocked", "owner_of"]


class GraphView(GraphIndex):
    """The index of ``gm`` with its layers, zero search, residual joins and zero facts.

    ``root`` is the model the user passed (module types and parameters come from it); it
    defaults to ``gm``. ``ops`` carries what users declared with ``zero_preserving=`` and
    the composite leaves. Every answer is worked out on demand and kept for the pass.
    """

    def __init__(self, gm: fx.GraphModule, root: nn.Module | None = None,
                 ops: ZeroOps | None = None) -> None:
        super().__init__(gm, root, ops)
        #: the layers of the graph (:class:`~zeta_fx.analysis.layers.Layers`)
        self.layers = Layers(self, self.facts)

    def facts(self, zeroed: Iterable[str], nodes: Iterable[Node] | None = None) -> ZeroFacts:
        """The :class:`~zeta_fx.analysis.facts.ZeroFacts` of this graph once ``zeroed`` are zero."""
        return ZeroFacts(self.sweep_graph, zeroed=zeroed, nodes=nodes)

    # -- layers and the zero search ------------------------------------------------------
    def layer(self, node: Node) -> Layer | None:
        """The layer at ``node`` (a data node consuming parameters), or ``None``."""
        return self.layers.layer(node)

    def param_gather(self, value: Any) -> Node | None:
        """:meth:`~zeta_fx.analysis.layers.Layers.param_gather`."""
        return self.layers.param_gather(value)

    def zero_cover(self, start: Any, inside: Callable[[Node], bool]) -> Found | Blocked:
        """The zeroable layers nearest ``start`` whose zeroing makes ``start`` zero
        (:func:`~zeta_fx.analysis.cover.zero_cover`), never leaving the data nodes for which
        ``inside`` is true."""
        return zero_cover(self, self.layers, start, inside)

    # -- residual joins --------------------------------------------------------------------
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

    def side_input_reason(self, join: Join) -> str | None:
        """Why a failed join is a side input (conditioning) entering a path, if it is one."""
        return side_input_reason(self, join.terms, self._describe_value)

    def conditioning_only(self, skip: Node, terms: tuple[Node, ...]) -> bool:
        """:func:`~zeta_fx.analysis.conditioning.conditioning_only`."""
        return conditioning_only(self, skip, terms)

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
