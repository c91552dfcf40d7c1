"""Data written into a buffer reaches the reads that see it: the value edges of writes.

A fresh buffer (``torch.zeros_like(x)``, ``x.new_zeros(...)``, ``torch.empty(...)``) reads
only ``x``'s shape, so the value-flow index does not count it as data. Filled by writes
(``out[:, i] = f(h)``, ``out.index_add_(0, idx, expert(h))``, ``out.copy_(h)``,
``out.scatter_(...)``, ``out.index_put_(...)``), it holds the values written into it: a
later read of ``out`` depends on every write it sees. :func:`written_inputs` names those
writes (from :class:`~zeta_fx.analysis.storage.Storages`' stale reads) so that the index
adds them to the reader's inputs; the zero facts of what the read finds are the storage's
(``join`` of the buffer as made and of each write, in
:mod:`zeta_fx.analysis.facts.sweep`).

Only writes made before the read, in this call, are edges: a write later in the graph to a
storage the module holds (a cache) reaches the next call, not this read.

>>> import torch
>>> from torch import fx
>>> def f(x, h):
...     out = torch.zeros_like(x)
...     out.copy_(h)
...     return x + out
>>> gm = fx.symbolic_trace(f)
>>> from zeta_fx.analysis.storage import Storages
>>> storage = Storages(list(gm.graph.nodes), gm)
>>> add = [n for n in gm.graph.nodes if n.name == "add"][0]
>>> [w.name for w in written_inputs(storage, add)]
['copy_']
"""

from __future__ import annotations

from typing import Callable

from torch.fx import Node

from zeta_fx.analysis.storage import Storages

__all__ = ["written_inputs"]


def written_inputs(storage: Storages, reader: Node,
                   is_data: Callable[[Node], bool] | None = None) -> tuple[Node, ...]:
    """The writes ``reader`` sees in the storage of a value it reads (made since that value
    was, and before ``reader``), that are not already among its inputs; with ``is_data``,
    only those that carry data."""
    stale = storage.stale_reads(reader)
    if not stale:
        return ()
    here = storage.index[reader]
    seen = set(reader.all_input_nodes)
    out: list[Node] = []
    for _value, writers in stale:
        for writer in writers:
            if writer in seen or storage.index[writer] > here:
                continue
            if is_data is not None and not is_data(writer):
                continue
            seen.add(writer)
            out.append(writer)
    return tuple(out)
