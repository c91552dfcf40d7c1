"""What every zero-facts sweep over one graph reads: one object, built once per pass.

The sweeps of a pass differ only in the parameters they zero and the part of the graph
they follow; everything else — which values are data, the module kinds, each node's op
key and bound arguments, the storages and dtypes, the decompositions worked out so far —
is the same, and comes from the value-flow index (:meth:`GraphIndex.sweep_graph
<zeta_fx.analysis.index.GraphIndex.sweep_graph>`). Without an index (a sweep over a bare
graph, or over a decomposition), :meth:`SweepGraph.bare` works each of them out as the
sweep goes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from torch import fx, nn
from torch.fx import Node

__all__ = ["SweepGraph"]


@dataclass
class SweepGraph:
    """The graph a sweep runs over and the read-only facts about it every sweep shares.

    ``data`` (node -> bool) tells data values from parameters and shape queries, and
    ``weights`` (node -> parameter FQNs) the values computed from parameters alone, as the
    value-flow index does; ``None``: every node is followed. ``declared`` maps extra module
    classes to a kind, ``preserving`` holds extra op keys that map zero to zero
    (``zero_preserving=``). ``kinds`` and ``leaves`` are caches the sweeps fill and share.
    ``storage`` (:class:`~zeta_fx.analysis.storage.Storages`) says which reads see writes
    and ``dtypes`` (:class:`~zeta_fx.analysis.dtypes.ValueDtypes`) each value's dtype;
    without them, no write and float32. ``decompositions``: those worked out so far
    (``None``: do not decompose, as inside a decomposition).
    """

    gm: fx.GraphModule
    root: nn.Module
    data: Mapping[Node, bool] | None = None
    weights: Mapping[Node, Any] | None = None
    declared: Mapping[type, str] = field(default_factory=dict)
    preserving: frozenset[str] = frozenset()
    index: Mapping[Node, int] | None = None
    module_of: Callable[[str], nn.Module] | None = None
    inputs: Mapping[Node, Sequence[Node]] | None = None
    keys: Mapping[Node, tuple[str, bool]] | None = None
    bound: Callable[[Node], dict[str, Any]] | None = None
    storage: Any = None
    dtypes: Any = None
    decompositions: dict[Node, Any] | None = field(default_factory=dict)
    # target -> (kind, why_not): the module kinds, shared with the index
    kinds: dict[str, tuple[str | None, str]] = field(default_factory=dict)
    # target -> (module, kind, why_not, passes a finite input on as finite)
    leaves: dict[str, tuple[nn.Module, str | None, str, bool]] = field(default_factory=dict)

    @classmethod
    def bare(cls, gm: fx.GraphModule, root: nn.Module | None = None, *,
             decompose: bool = True) -> "SweepGraph":
        """``gm`` alone: no index, storages or dtypes (float32); ``decompose=False`` inside
        a decomposition."""
        return cls(gm, root if root is not None else gm,
                   decompositions={} if decompose else None)
