"""What must be zero for an item of a subgraph call (``torch.no_grad()`` under export) to
be zero: the fewest operands whose zeroing makes that output of the subgraph zero, read
off a sweep of the subgraph (:mod:`zeta_fx.semantics.subgraphs`)."""

from __future__ import annotations

import itertools

from torch.fx import Node

from zeta_fx.analysis.facts.graph import SweepGraph
from zeta_fx.analysis.facts.sweep import ZeroFacts
from zeta_fx.semantics.lattice import Z
from zeta_fx.semantics.subgraphs import inside

__all__ = ["item_inputs_needed"]


def item_inputs_needed(item: Node) -> list[Node] | str | None:
    """The fewest operands of the subgraph call that ``item`` takes an output of, whose
    zeroing makes that output zero; a reason where none do; ``None`` where ``item`` is not
    an item of a subgraph call."""
    inner, env = inside(item)
    if not env:
        return None
    body = next(iter(env)).graph.owning_module
    if body is None or any(n.op not in ("placeholder", "call_function", "output")
                           for n in body.graph.nodes):
        return f"`{item.name}` is computed by a subgraph that reads more than its operands"
    operands = list(dict.fromkeys(v for v in env.values() if isinstance(v, Node)))
    for size in range(1, min(len(operands), 4) + 1):
        for chosen in itertools.combinations(operands, size):
            seeds = {p: Z for p, v in env.items() if v in chosen}
            if ZeroFacts(SweepGraph.bare(body), seeds=seeds).fact(inner) == Z:
                return list(chosen)
    return f"`{item.name}` is not zero whichever operands of its subgraph are zero"
