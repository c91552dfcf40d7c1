"""Conditioning: telling a side input (a timestep or class embedding) entering a path from
the data path itself.

By convention the first graph input is the data (``x``). A merge one of whose terms is
computed from other inputs only brings conditioning into the path: it is not a residual
join; nor is a "skip" computed without ``x`` beside a term computed from it.

>>> import torch
>>> from torch import nn, fx
>>> from zeta_fx.analysis.view import GraphView
>>> class Cond(nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.fc, self.emb = nn.Linear(4, 4), nn.Linear(4, 4)
...     def forward(self, x, t):
...         return self.fc(x) + self.emb(t)
>>> view = GraphView(fx.symbolic_trace(Cond()))
>>> print(side_input_reason(view, tuple(view.by_name["add"].args), lambda n: f"`{n.name}`"))
not a residual join: `emb` is computed from `t` only, not from `x`; adding it brings a side input (conditioning such as a timestep or class embedding) into the path
"""

from __future__ import annotations

from typing import Callable

from torch.fx import Node

from zeta_fx.analysis.index import GraphIndex

__all__ = ["side_input_reason", "conditioning_only"]


def _quoted(names: list[str]) -> str:
    return ", ".join(f"`{n}`" for n in names)


def side_input_reason(graph: GraphIndex, terms: tuple[Node, ...],
                      describe: Callable[[Node], str]) -> str | None:
    """Why a failed join of ``terms`` is a side input (conditioning) entering a path, if it
    is one. ``describe`` names a value in the reason (the view adds the layer it comes
    from)."""
    deps = graph.input_deps
    union = 0
    for term in terms:
        union |= deps.get(term, 0)
    first = union & -union  # the earliest graph input: by convention the data (``x``)
    for term in terms:
        missing = union & ~deps.get(term, 0)
        if missing and deps.get(term, 0) and not deps[term] & first:
            return (f"not a residual join: {describe(term)} is computed from "
                    f"{_quoted(graph.input_names(deps[term]))} only, not from "
                    f"{_quoted(graph.input_names(missing))}; adding it brings a side input "
                    "(conditioning such as a timestep or class embedding) into the path")
    return None


def conditioning_only(graph: GraphIndex, skip: Node, terms: tuple[Node, ...]) -> bool:
    """Whether the projection 'skip' is computed without the first graph input (by
    convention the data, ``x``) while another term is computed from it: in
    ``conv(x * scale(emb)) + proj(emb)`` both paths leave ``emb``, but ``proj(emb)`` is
    conditioning brought into the data path, not a shortcut. (An identity skip from a
    second input, as a decoder's ``tgt + cross_attn(tgt, memory)``, stays a join.)"""
    if len(graph.inputs) < 2:
        return False
    deps = graph.input_deps
    return not deps[skip] & 1 and any(deps[t] & 1 for t in terms)
