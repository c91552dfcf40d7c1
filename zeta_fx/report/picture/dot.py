"""Graphviz DOT text of a :class:`~zeta_fx.report.picture.GraphSummary`: styles, clusters, legend, focus.

Reads only the summary's plain data, so a summary loaded from JSON draws the same picture.
Each kind of box has one style; residual blocks are nested clusters; the legend explains the
marks that occur in the picture and no others.

>>> from zeta_fx.report.picture import GraphSummary, PictureEdge, PictureNode
>>> summary = GraphSummary("demo", [
...     PictureNode("n0", "input", ("x",), ("x",)),
...     PictureNode("n1", "zeroed", ("fc", "Linear", "zeroed: weight 4x4"), ("fc",),
...                 group="block", module="block.fc"),
...     PictureNode("n2", "output", ("output",), ("output",))],
...     [PictureEdge("n0", "n1"), PictureEdge("n1", "n2")], {"block": "Block"})
>>> dot = to_dot(summary)
>>> [line.strip() for line in dot.splitlines() if "->" in line]
['n0 -> n1;', 'n1 -> n2;']
>>> 'subgraph "cluster_block"' in dot, "layer zeroed by the rule" in dot
(True, True)
>>> print(to_dot(summary, focus="block", legend=False).splitlines()[1])  # doctest: +ELLIPSIS
  graph [rankdir=TB, ..., label="demo\\nshowing block (neighbours faded)"];
"""

from __future__ import annotations

import html
from typing import Protocol, Sequence

__all__ = ["to_dot", "longest_prefix", "Box", "Picture"]


class Box(Protocol):
    """What a box of the picture holds for drawing (:class:`~zeta_fx.report.picture.PictureNode`)."""

    id: str
    kind: str
    lines: tuple[str, ...]
    group: str
    module: str
    detail: str
    left_alone: bool


class Edge(Protocol):
    src: str
    dst: str
    kind: str


class Picture(Protocol):
    """What this module draws (:class:`~zeta_fx.report.picture.GraphSummary`, which calls
    :func:`to_dot`; so this module names only the shape it reads)."""

    title: str
    nodes: Sequence[Box]
    edges: Sequence[Edge]
    groups: dict[str, str]

# Node kinds and their Graphviz style.
_STYLE = {
    "input": 'shape=ellipse, style="filled", fillcolor="#e3f2fd", color="#1565c0"',
    "output": 'shape=ellipse, style="filled", fillcolor="#e3f2fd", color="#1565c0"',
    "ops": 'shape=box, style="rounded,filled", fillcolor="#f5f5f5", color="#9e9e9e"',
    "skip_path": ('shape=box, style="rounded,filled", fillcolor="#e3f2fd", color="#1565c0", '
                  'penwidth=1.5'),
    "fork": 'shape=box, style="rounded,filled,bold", fillcolor="#ffffff", color="#424242"',
    "zeroed": ('shape=box, style="rounded,filled,bold", fillcolor="#ffcdd2", color="#c62828", '
               'penwidth=2'),
    "join": ('shape=doublecircle, style="filled", fillcolor="#c8e6c9", color="#2e7d32", '
             'fixedsize=true, width=0.42, fontsize=16, label="+"'),
    "merge": ('shape=circle, style="filled,dashed", fillcolor="#eeeeee", color="#757575", '
              'fixedsize=true, width=0.42, fontsize=16, label="+"'),
    "skipped": ('shape=box, style="rounded,filled,dashed", fillcolor="#fff3e0", color="#ef6c00",'
                ' penwidth=2'),
    "note": ('shape=note, style="filled", fillcolor="#fff8e1", color="#ef6c00", fontsize=9, '
             'fontcolor="#5d4037"'),
}
_LEFT_ALONE = 'color="#ef6c00", penwidth=2.5'
_FADED = 'fillcolor="#fafafa", fontcolor="#9e9e9e", color="#e0e0e0"'
_EDGE_STYLE = {
    "data": "",
    "skip": 'color="#1565c0", style=dashed, penwidth=2, arrowhead=normal',
    "note": 'color="#ef6c00", style=dotted, dir=none, weight=4',
}
# The legend's rows, in the order it explains them: mark, fill, border, text.
_LEGEND = (
    ("zeroed", "#ffcdd2", "#c62828", "layer zeroed by the rule"),
    ("join", "#c8e6c9", "#2e7d32", "(+) residual join"),
    ("merge", "#eeeeee", "#757575", "(+) additive merge, not a residual join"),
    ("left_alone", "#fff3e0", "#ef6c00", "candidate left alone (orange; the note says why)"),
    ("skip_path", "#e3f2fd", "#1565c0", "projection on a skip path"),
    ("fork", "#ffffff", "#424242", "fork: where a skip path leaves"),
    ("ops", "#f5f5f5", "#9e9e9e", "operations collapsed into one box"),
)


def longest_prefix(path: str, names: dict[str, str]) -> str:
    """The longest dotted prefix of ``path`` (``path`` itself included) among ``names``.

    >>> longest_prefix("layer1.0.conv1", {"layer1": "", "layer1.0": ""})
    'layer1.0'
    >>> longest_prefix("fc", {"layer1": ""})
    ''
    """
    parts = path.split(".") if path else []
    for k in range(len(parts), 0, -1):
        prefix = ".".join(parts[:k])
        if prefix in names:
            return prefix
    return ""


def to_dot(summary: Picture, *, focus: str | Sequence[str] | None = None,
           rankdir: str = "TB", legend: bool = True) -> str:
    """DOT text of ``summary``; see :meth:`GraphSummary.to_dot` for the options."""
    nodes = {n.id: n for n in summary.nodes}
    faded: set[str] = set()
    title = summary.title
    if focus:
        prefixes = (focus,) if isinstance(focus, str) else tuple(focus)
        keep = {n.id for n in summary.nodes if n.kind != "note" and _in_focus(n, prefixes)}
        if not keep:
            raise ValueError(f"focus {list(prefixes)} matches no module of the picture; "
                             f"blocks are: {', '.join(list(summary.groups)[:8])}")
        context = {e.src for e in summary.edges if e.dst in keep and e.kind != "note"}
        context |= {e.dst for e in summary.edges if e.src in keep and e.kind != "note"}
        faded = context - keep
        keep |= {e.dst for e in summary.edges if e.kind == "note" and e.src in keep}
        keep |= faded
        nodes = {k: v for k, v in nodes.items() if k in keep}
        title += f"\nshowing {', '.join(prefixes)} (neighbours faded)"
    out = ["digraph zeta_fx {",
           f"  graph [rankdir={rankdir}, fontname=\"Helvetica\", fontsize=13, labelloc=t, "
           f"nodesep=0.25, ranksep=0.28, newrank=true, label={_q(title)}];",
           '  node [fontname="Helvetica", fontsize=10, margin="0.10,0.04", height=0.3];',
           '  edge [color="#616161", arrowsize=0.6];']
    # Residual blocks as nested clusters; only those with a box shown, or around one.
    used = {n.group for n in nodes.values()}
    groups = [g for g in summary.groups
              if any(u == g or u.startswith(g + ".") for u in used)]
    children: dict[str, list[str]] = {}
    for g in groups:
        parent = longest_prefix(g.rsplit(".", 1)[0] if "." in g else "", dict.fromkeys(groups))
        children.setdefault(parent, []).append(g)
    members: dict[str, list[Box]] = {}
    for n in nodes.values():
        members.setdefault(n.group if n.group in summary.groups else "", []).append(n)

    def emit_node(n: Box, indent: str) -> None:
        style = _STYLE[n.kind]
        attrs = [style, f"id={_q(n.id)}", f"class={_q(n.kind)}", f"tooltip={_q(n.detail)}"]
        if "label=" not in style:
            attrs.append(f"label={_q(chr(10).join(n.lines))}")
        if n.left_alone and n.kind != "note":
            attrs.append(_LEFT_ALONE)
        if n.id in faded:
            attrs.append(_FADED)
        out.append(f"{indent}{n.id} [{', '.join(attrs)}];")

    def emit_group(g: str, indent: str) -> None:
        out.append(f"{indent}subgraph {_q('cluster_' + g)} {{")
        if children.get(g) and not members.get(g):  # a stage around its blocks
            look = 'fontsize=11; fontcolor="#424242"; style="rounded"; color="#9e9e9e";'
        else:
            look = 'fontsize=10; fontcolor="#616161"; style="rounded,dashed"; color="#bdbdbd";'
        out.append(f"{indent}  label={_q(f'{g} · {summary.groups[g]}')}; labeljust=l; {look}")
        for n in members.get(g, []):
            emit_node(n, indent + "  ")
        for child in children.get(g, []):
            emit_group(child, indent + "  ")
        out.append(f"{indent}}}")

    for n in members.get("", []):
        emit_node(n, "  ")
    for g in children.get("", []):
        emit_group(g, "  ")
    for e in summary.edges:
        if e.src in nodes and e.dst in nodes:
            style = _EDGE_STYLE[e.kind]
            out.append(f"  {e.src} -> {e.dst}" + (f" [{style}];" if style else ";"))
    if legend:
        marks = {n.kind for n in nodes.values()}
        marks |= {"left_alone"} if any(n.left_alone for n in nodes.values()) else set()
        marks |= {e.kind for e in summary.edges if e.src in nodes and e.dst in nodes}
        out.append(_legend(marks))
    out.append("}")
    return "\n".join(out) + "\n"


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _in_focus(node: Box, prefixes: tuple[str, ...]) -> bool:
    paths = [node.group, node.module]
    return any(p == f or p.startswith(f + ".") for p in paths if p for f in prefixes)


def _legend(marks: set[str]) -> str:
    """A table explaining the marks that occur in the picture (and only those)."""
    rows = ['<TR><TD COLSPAN="2"><B>legend</B></TD></TR>']
    for mark, fill, color, text in _LEGEND:
        if mark in marks:
            rows.append(f'<TR><TD BGCOLOR="{fill}" COLOR="{color}" WIDTH="24"> </TD>'
                        f'<TD ALIGN="LEFT" BORDER="0">{html.escape(text)}</TD></TR>')
    if "skip" in marks:
        rows.append('<TR><TD BORDER="0"><FONT COLOR="#1565c0"><B>- - &gt;</B></FONT></TD>'
                    '<TD ALIGN="LEFT" BORDER="0">skip path (identity or projection)</TD></TR>')
    table = ('<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="3" CELLPADDING="2">'
             + "".join(rows) + "</TABLE>")
    return f'  legend [shape=plaintext, id="legend", fontsize=9, label=<{table}>];'
