"""Pictures: a condensed, serialisable summary of the analysed graph, as Graphviz DOT.

A full FX graph of a ResNet-50 has ~170 nodes and a GPT block alone ~30; a picture of
every node is unreadable. The summary keeps what a reader checks - inputs and outputs,
the zeroed layers, every additive merge (residual join or not), the fork of each join,
the skip paths, the candidates left alone with their reasons - and collapses every other
run of operations inside one residual block (a module that holds a join) into one box.

Three parts, each reading only what the one before returns:
:mod:`~zeta_fx.report.picture.model` condenses the graph view into :class:`GraphSummary`, plain
data; :mod:`~zeta_fx.report.picture.dot` turns that into DOT text (styles, legend, focus);
:mod:`~zeta_fx.report.picture.render` runs Graphviz's ``dot`` on it (:func:`draw_dot`).

The summary is built on first use from the graph view the pass already made, so the pass
itself pays nothing for it.

>>> from zeta_fx import zero_init_pass
>>> from zeta_fx.models import GPTBlock
>>> summary = zero_init_pass(GPTBlock(dim=8, n_head=2), dry_run=True).picture()
>>> [(n.kind, n.lines[0]) for n in summary.nodes]  # doctest: +NORMALIZE_WHITESPACE
[('input', 'x'), ('ops', 'ln_1 · attn.c_attn ·'), ('zeroed', 'attn.c_proj'),
 ('ops', 'attn.resid_dropout'), ('join', '+'), ('ops', 'ln_2 → mlp.c_fc → mlp.gelu'),
 ('zeroed', 'mlp.c_proj'), ('ops', 'mlp.dropout'), ('join', '+'), ('output', 'output')]
>>> len(summary.nodes[1].members)  # the attention's split, views and SDPA: one box
16
>>> [(e.src, e.dst) for e in summary.edges if e.kind == "skip"]
[('n0', 'n4'), ('n4', 'n8')]
>>> summary.to_dot().startswith("digraph")
True
"""

from zeta_fx.report.picture.render import DrawResult, draw_dot
from zeta_fx.report.picture.model import GraphSummary, PictureEdge, PictureNode, summarize

__all__ = ["GraphSummary", "PictureNode", "PictureEdge", "DrawResult", "summarize", "draw_dot"]
