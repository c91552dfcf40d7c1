"""Pictures: a condensed, serialisable summary of the analysed graph, as Graphviz DOT.

A full FX graph of a ResNet-50 has ~170 nodes and a GPT block alone ~30; a picture of
every node is unreadable. The summary keeps what a reader checks - inputs and outputs,
the zeroed layers, every additive merge (residual join or not), the fork of each join,
the skip paths, the candidates left alone with their reasons - and collapses every other
run of operations inside one residual block (a module that holds a join) into one box.

Three parts, each reading only what the one before returns:
:mod:`~zeta_fx.picture.summary` condenses the graph view into :class:`GraphSummary`, plain
data; :mod:`~zeta_fx.picture.dot` turns that into DOT text (styles, legend, focus);
:mod:`~zeta_fx.picture.render` runs Graphviz's ``dot`` on it (:func:`draw_dot`).

The summary is built on first use from the graph view the pass already made, so the pass
itself pays nothing for it.

>>> import torch
>>> from torch import nn
>>> from zeta_fx import zero_init_pass
>>> class Block(nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)
...     def forward(self, x):
...         return x + self.fc2(torch.relu(self.fc1(x)))
>>> summary = zero_init_pass(Block(), dry_run=True).picture()
>>> [(n.kind, n.members) for n in summary.nodes]  # doctest: +NORMALIZE_WHITESPACE
[('input', ('x',)), ('ops', ('fc1', 'relu')), ('zeroed', ('fc2',)), ('join', ('add',)),
 ('output', ('output',))]
>>> [(e.src, e.dst, e.kind) for e in summary.edges if e.kind == "skip"]
[('n0', 'n3', 'skip')]
>>> summary.to_dot().startswith("digraph")
True
"""

from zeta_fx.picture.render import DrawResult, draw_dot
from zeta_fx.picture.summary import (GraphSummary, PictureEdge, PictureNode, PictureSource,
                                     summarize)

__all__ = ["GraphSummary", "PictureNode", "PictureEdge", "DrawResult", "summarize", "draw_dot",
           "PictureSource"]
