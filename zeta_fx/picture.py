"""Pictures: a condensed, serialisable summary of the analysed graph, as Graphviz DOT.

A full FX graph of a ResNet-50 has ~170 nodes and a GPT block alone ~30; a picture of
every node is unreadable. The summary keeps what a reader checks - inputs and outputs,
the zeroed layers, every additive merge (residual join or not), the fork of each join,
the skip paths, the candidates left alone with their reasons - and collapses every other
run of operations inside one residual block (a module that holds a join) into one box.

The summary is built on first use from the graph view the pass already made, so the pass
itself pays nothing for it (:class:`PictureSource` only keeps a reference).

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

from __future__ import annotations

import html
import logging
import shutil
import subprocess
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from torch.fx import Node

from zeta_fx.errors import RenderError
from zeta_fx.ops import target_name
from zeta_fx.words import format_shape, plural

if TYPE_CHECKING:
    from zeta_fx.analysis import GraphView, Join
    from zeta_fx.plan import ZeroInitPlan
    from zeta_fx.rules import Skipped

__all__ = ["PictureNode", "PictureEdge", "GraphSummary", "PictureSource", "DrawResult",
           "summarize", "draw_dot"]

logger = logging.getLogger("zeta_fx")

# Node kinds and their Graphviz style, in the order the legend explains them.

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
_EDGE_STYLE = {
    "data": "",
    "skip": 'color="#1565c0", style=dashed, penwidth=2, arrowhead=normal',
    "note": 'color="#ef6c00", style=dotted, dir=none, weight=4',
}
_LEGEND = (
    ("zeroed", "#ffcdd2", "#c62828", "layer zeroed by the rule"),
    ("join", "#c8e6c9", "#2e7d32", "(+) residual join"),
    ("merge", "#eeeeee", "#757575", "(+) additive merge, not a residual join"),
    ("left_alone", "#fff3e0", "#ef6c00", "candidate left alone (orange; the note says why)"),
    ("skip_path", "#e3f2fd", "#1565c0", "projection on a skip path"),
    ("fork", "#ffffff", "#424242", "fork: where a skip path leaves"),
    ("ops", "#f5f5f5", "#9e9e9e", "operations collapsed into one box"),
)


@dataclass(frozen=True)
class PictureNode:
    """One box of the picture: one graph node, or a run of plain ones collapsed together.

    ``members`` are the FX node names it stands for; ``group`` is the residual block
    (module FQN) it is drawn in, ``""`` for none; ``lines`` is its label; ``detail`` is the
    full text shown as a tooltip (reason, position, every member).
    """

    id: str
    kind: str
    lines: tuple[str, ...]
    members: tuple[str, ...]
    group: str = ""
    module: str = ""
    detail: str = ""
    left_alone: bool = False


@dataclass(frozen=True)
class PictureEdge:
    """A value edge between two boxes; ``kind`` is ``data``, ``skip`` or ``note``."""

    src: str
    dst: str
    kind: str = "data"


@dataclass
class GraphSummary:
    """The condensed graph: boxes, edges, and the residual blocks (module FQN -> class).

    Plain data (``to_dict``/``from_dict`` round-trip through JSON); :meth:`to_dot` draws it.
    """

    title: str
    nodes: list[PictureNode] = field(default_factory=list)
    edges: list[PictureEdge] = field(default_factory=list)
    groups: dict[str, str] = field(default_factory=dict)

    def node_of(self, member: str) -> PictureNode | None:
        """The box that stands for the FX node named ``member``."""
        for node in self.nodes:
            if member in node.members:
                return node
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "groups": dict(self.groups),
                "nodes": [{"id": n.id, "kind": n.kind, "lines": list(n.lines),
                           "members": list(n.members), "group": n.group, "module": n.module,
                           "detail": n.detail, "left_alone": n.left_alone} for n in self.nodes],
                "edges": [{"src": e.src, "dst": e.dst, "kind": e.kind} for e in self.edges]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GraphSummary":
        nodes = [PictureNode(d["id"], d["kind"], tuple(d["lines"]), tuple(d["members"]),
                             d.get("group", ""), d.get("module", ""), d.get("detail", ""),
                             bool(d.get("left_alone", False))) for d in data["nodes"]]
        edges = [PictureEdge(d["src"], d["dst"], d.get("kind", "data")) for d in data["edges"]]
        return cls(str(data["title"]), nodes, edges, dict(data.get("groups", {})))

    def to_dot(self, *, focus: str | Sequence[str] | None = None, rankdir: str = "TB",
               legend: bool = True) -> str:
        """Graphviz DOT text of the summary.

        ``focus`` keeps only the boxes inside the given module FQN prefixes (``"layer1"``,
        ``["h.0", "h.1"]``) and their direct neighbours, drawn faded, for a small picture of
        a few blocks. ``rankdir`` is Graphviz's (``TB`` top to bottom, ``LR`` left to right).
        """
        return _to_dot(self, focus, rankdir, legend)


# -- building the summary ------------------------------------------------------------------
class PictureSource:
    """What a plan keeps so that a picture can be made later: a reference to the view.

    Nothing is computed at pass time. Copies share the (read-only) view; a pickled plan
    drops it, and its report then says that it has no picture.
    """

    def __init__(self, view: "GraphView") -> None:
        self.view: "GraphView | None" = view

    def summary(self, plan: "ZeroInitPlan", skipped: Iterable["Skipped"], *,
                applied: bool = True) -> GraphSummary:
        if self.view is None:
            raise RenderError("this plan was unpickled and no longer holds its graph; run "
                              "zero_init_pass(model, dry_run=True) again to draw it")
        return summarize(self.view, plan, skipped, applied=applied)

    def __deepcopy__(self, memo: dict[int, Any]) -> "PictureSource":
        return self

    def __getstate__(self) -> dict[str, Any]:
        return {"view": None}


def summarize(view: "GraphView", plan: "ZeroInitPlan", skipped: Iterable["Skipped"] = (), *,
              applied: bool = True) -> GraphSummary:
    """Condense ``view`` into a :class:`GraphSummary`, marking what ``plan`` zeroes and
    the candidates in ``skipped``; ``applied=False`` titles it as a dry run, as the
    report's table does."""
    return _Summarizer(view, plan, list(skipped), applied).run()


class _Summarizer:
    def __init__(self, view: "GraphView", plan: "ZeroInitPlan", skipped: list["Skipped"],
                 applied: bool = True):
        self.view, self.plan, self.skipped, self.applied = view, plan, skipped, applied
        self.drawn = [n for n in view.nodes if view.is_data[n]]
        self.out_node = next((n for n in view.nodes if n.op == "output"), None)
        self.by_name = {n.name: n for n in view.nodes}

    def run(self) -> GraphSummary:
        view = self.view
        joins = view.joins()
        paths = self._module_paths()
        merge_of: dict[Node, "Join"] = {}
        for join in joins:
            for member in self._merge_members(join):
                merge_of[member] = join
        blocks = {paths[j.merge]: "" for j in joins if paths[j.merge]}
        for fqn in blocks:
            blocks[fqn] = view.module_type(fqn)
        group = {n: _longest_prefix(paths[n], blocks) for n in self.drawn}
        # A module holding several blocks (a ResNet stage) is drawn around them.
        parents: dict[str, int] = {}
        for fqn in blocks:
            if "." in fqn:
                parent = fqn.rsplit(".", 1)[0]
                parents[parent] = parents.get(parent, 0) + 1
        clusters = dict(blocks)
        for parent, count in parents.items():
            if count > 1 and parent not in clusters:
                clusters[parent] = view.module_type(parent)

        zeroed: dict[str, Any] = {}
        for entry in self.plan.entries:
            for name in entry.nodes:
                zeroed[name] = entry
        left_alone: dict[str, list[str]] = {}
        for s in self.skipped:
            left_alone.setdefault(s.node, []).append(s.reason)
        forks = {j.fork for j in joins if j.fork is not None}
        skip_nodes: set[Node] = set()
        skip_edges: set[tuple[Node, Node]] = set()
        for join in joins:
            if join.ok and join.skip is not None:
                side = join.sides.get(join.skip, frozenset())
                skip_nodes |= side
                members = {m for m, j in merge_of.items() if j is join}
                for v in side | members:
                    for u in view.data_inputs[v]:
                        if u in side or u is join.fork:
                            if v in members and u is not join.skip:
                                continue
                            skip_edges.add((u, v))

        # Which nodes stand alone, and the kind of each.
        kind: dict[Node, str] = {}
        for n in self.drawn:
            if n.name in zeroed:
                kind[n] = "zeroed"
            elif n in merge_of:
                kind[n] = "join" if merge_of[n].ok else "merge"
            elif n.name in left_alone:
                kind[n] = "skipped"
            elif n.op == "placeholder":
                kind[n] = "input"
            elif n in forks:
                kind[n] = "fork"
        # Collapse the rest: connected runs with the same block and role.
        plain = [n for n in self.drawn if n not in kind]
        key = {n: (group[n], n in skip_nodes) for n in plain}
        components = _components(plain, key, view)
        comp_of: dict[Node, int] = {}
        for i, comp in enumerate(components):
            for n in comp:
                comp_of[n] = i
        for i, comp in enumerate(components):
            if len(comp) > 1 and not _convex(comp, comp_of, i, view):
                self._split(components, comp_of, i)
        while True:
            cycle = _cycle(self.drawn, comp_of, view)
            if cycle is None:
                break
            self._split(components, comp_of, max(cycle, key=lambda c: len(components[c])))

        # Boxes, in graph order.
        summary = GraphSummary(self._title(), groups=dict(sorted(clusters.items())))
        box: dict[Node, str] = {}
        done: set[int] = set()
        for n in self.drawn:
            if n in box:
                continue
            ident = f"n{len(summary.nodes)}"
            g = group[n]
            if n in kind:
                k = kind[n]
                box[n] = ident
                members = (n,)
                if k in ("join", "merge"):
                    members = tuple(view.nodes_in_order(
                        m for m, j in merge_of.items() if j is merge_of[n]))
                    for m in members:
                        box[m] = ident
                summary.nodes.append(self._single(ident, k, members, g, paths, zeroed,
                                                  left_alone, merge_of))
                continue
            c = comp_of[n]
            if c in done:
                continue
            done.add(c)
            members = tuple(view.nodes_in_order(components[c]))
            for m in members:
                box[m] = ident
            k = "skip_path" if members[0] in skip_nodes else "ops"
            summary.nodes.append(self._collapsed(ident, k, members, g, paths))
        if self.out_node is not None:
            ident = f"n{len(summary.nodes)}"
            box[self.out_node] = ident
            summary.nodes.append(PictureNode(ident, "output", ("output",), ("output",)))

        # Edges between boxes; a skip edge wins over a plain one between the same boxes.
        edges: dict[tuple[str, str], str] = {}
        for v in self.drawn + ([self.out_node] if self.out_node is not None else []):
            inputs = view.outputs() if v is self.out_node else view.data_inputs[v]
            for u in inputs:
                a, b = box.get(u), box.get(v)
                if a is None or b is None or a == b:
                    continue
                k = "skip" if (u, v) in skip_edges else "data"
                if edges.get((a, b)) != "skip":
                    edges[(a, b)] = k
        summary.edges = [PictureEdge(a, b, k) for (a, b), k in edges.items()]
        for reasons_node, reasons in left_alone.items():
            target = self.by_name.get(reasons_node)
            for reason in reasons:
                ident = f"n{len(summary.nodes)}"
                summary.nodes.append(PictureNode(
                    ident, "note", _wrap(reason, 46, 5), (), group.get(target, "")
                    if target is not None else "", "", reason))
                if target is not None and target in box:
                    summary.edges.append(PictureEdge(box[target], ident, "note"))
        return summary

    # -- helpers ------------------------------------------------------------------------
    def _split(self, components: list[list[Node]], comp_of: dict[Node, int], i: int) -> None:
        members = components[i]
        components[i] = members[:1]
        for n in members[1:]:
            comp_of[n] = len(components)
            components.append([n])

    def _title(self) -> str:
        # The words of the report's summary line, so that picture and table agree.
        plan = self.plan
        n = sum(len(e.params) for e in plan.entries)
        verb = "zeroed" if self.applied else "would zero (dry run)"
        return (f"{plan.model}: rule {plan.rule} {verb} {plural(n, 'parameter')} in "
                f"{plural(len(plan.entries), 'module')}; "
                f"{plural(len(self.skipped), 'candidate')} left alone")

    def _module_paths(self) -> dict[Node, str]:
        view, paths = self.view, {}
        # Tracers that record the module stack leave it out for the root's own code.
        recorded = any("nn_module_stack" in n.meta for n in self.drawn)
        for n in self.drawn:
            path = None
            if n.op == "call_module":
                path = str(n.target)
            else:
                stack = n.meta.get("nn_module_stack")
                if stack:
                    last = list(stack.values())[-1]
                    path = str(last[0] if isinstance(last, tuple) else last)
                elif not recorded:
                    layer = view.layer(n)
                    if layer is not None:
                        path = layer.owner
                    elif view.data_inputs[n]:
                        path = paths.get(view.data_inputs[n][0], "")
            paths[n] = path or ""
        return paths

    def _merge_members(self, join: "Join") -> list[Node]:
        view, members, stack = self.view, [join.merge], [join.merge]
        while stack:
            node = stack.pop()
            for arg in node.args[:2]:
                if (isinstance(arg, Node) and arg not in join.terms and view.is_additive(arg)
                        and view.data_users[arg] == [node]):
                    members.append(arg)
                    stack.append(arg)
        return members

    def _short(self, node: Node, group: str, paths: dict[Node, str]) -> str:
        if node.op == "call_module":
            return _relative(str(node.target), group) or str(node.target).rsplit(".", 1)[-1]
        if node.op == "placeholder":
            return node.name
        name = target_name(node.target) if node.op == "call_function" else str(node.target)
        if "::" in name:  # an ATen overload from torch.export: aten::add.Tensor -> add
            return name.split("::", 1)[1].split(".", 1)[0]
        return name.rsplit(".", 1)[-1]

    def _single(self, ident: str, kind: str, members: tuple[Node, ...], group: str,
                paths: dict[Node, str], zeroed: dict[str, Any],
                left_alone: dict[str, list[str]], merge_of: dict[Node, "Join"]) -> PictureNode:
        node = members[-1] if kind in ("join", "merge") else members[0]
        names = tuple(m.name for m in members)
        reasons = left_alone.get(node.name, [])
        module = paths[node]
        if kind == "zeroed":
            entry = zeroed[node.name]
            module = entry.module
            short = _relative(entry.module, group) or entry.module or "(root)"
            params = ", ".join(f"{fqn.rsplit('.', 1)[-1]} {format_shape(s)}"
                               for fqn, s in entry.params.items())
            lines = (short, entry.module_type, f"zeroed: {params}")
            detail = (f"{entry.module or '(root)'} ({entry.module_type}) zeroed at node "
                      f"{node.name}: {', '.join(entry.params)}; "
                      f"{' | '.join(entry.positions)}")
        elif kind in ("join", "merge"):
            join = merge_of[node]
            lines = ("+",)
            if join.ok:
                skip = join.skip_kind
                detail = (f"residual join {node.name} (fork {join.fork.name}, skip: {skip}, "
                          f"branches: {', '.join(b.name for b in join.branches)})")
            else:
                detail = f"additive merge {node.name}: {join.reason}"
        else:
            short = self._short(node, group, paths)
            lines = (short,)
            if kind == "fork":
                detail = f"{node.name}: fork of a residual join"
            elif kind == "input":
                detail = f"input {node.name}"
            else:
                detail = node.name
            if kind == "skipped" and module:
                lines = (short, f"({_relative(module, group) or module})") \
                    if node.op != "call_module" else lines
        if reasons:
            detail += " | left alone: " + " | ".join(reasons)
        return PictureNode(ident, kind, lines, names, group, module, detail, bool(reasons))

    def _collapsed(self, ident: str, kind: str, members: tuple[Node, ...], group: str,
                   paths: dict[Node, str]) -> PictureNode:
        view = self.view
        chain = _is_chain(members, view)
        module = _common_prefix([paths[m] for m in members])
        shorts = [self._short(m, group, paths) for m in members]
        title: tuple[str, ...] = ()
        if len(" · ".join(shorts)) > 40 and module and module != group and len(members) > 1:
            # Long names under one submodule: name it once, its parts relative to it.
            title = (_relative(module, group) or module,)
            shorts = [self._short(m, module, paths) for m in members]
            # Positions in a Sequential ("0.1") say less than the layer's class.
            shorts = [view.module_type(str(m.target)) if m.op == "call_module"
                      and s.rsplit(".", 1)[-1].isdigit() else s
                      for m, s in zip(members, shorts)]
        shown = shorts if chain else list(dict.fromkeys(shorts))
        if len(shown) > 7:
            # Layers and compute ops tell a block apart; reshapes and indexing do not.
            telling = [s for m, s in zip(members, shorts)
                       if view.layer(m) is not None or m.op == "call_module"
                       or s not in _PLUMBING]
            telling = telling if chain else list(dict.fromkeys(telling))
            shown = telling if 0 < len(telling) <= 7 else shown[:3] + ["…"] + shown[-2:]
        lines = title + _wrap_tokens(shown, " → " if chain else " · ", 40, 4)
        if len(members) > len(shown):
            lines += (f"({len(members)} ops)",)
        detail = f"{module or '(root)'}: " + ", ".join(m.name for m in members)
        return PictureNode(ident, kind, lines, tuple(m.name for m in members), group, module,
                           detail)


# Shape plumbing: left out of a collapsed box's label when the label would be long.
_PLUMBING = frozenset({
    "getitem", "view", "reshape", "transpose", "permute", "contiguous", "split", "chunk",
    "unbind", "flatten", "unflatten", "squeeze", "unsqueeze", "expand", "expand_as",
    "floordiv", "size", "type_as", "to", "float", "clone", "detach",
    "repeat", "movedim", "narrow", "select", "t",
})


def _wrap_tokens(tokens: list[str], sep: str, width: int, max_lines: int) -> tuple[str, ...]:
    lines: list[str] = []
    current = ""
    for i, token in enumerate(tokens):
        piece = token + (sep.rstrip() if i < len(tokens) - 1 else "")
        if current and len(current) + 1 + len(piece) > width:
            lines.append(current)
            current = piece
        else:
            current = f"{current} {piece}" if current else piece
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines - 1] + ["… " + lines[-1]]
    return tuple(lines) or ("",)


def _relative(path: str, group: str) -> str:
    if group and path.startswith(group + "."):
        return path[len(group) + 1:]
    return "" if path == group and group else path


def _longest_prefix(path: str, blocks: dict[str, str]) -> str:
    parts = path.split(".") if path else []
    for k in range(len(parts), 0, -1):
        prefix = ".".join(parts[:k])
        if prefix in blocks:
            return prefix
    return ""


def _common_prefix(paths: list[str]) -> str:
    split = [p.split(".") for p in paths if p]
    if not split:
        return ""
    common = split[0]
    for parts in split[1:]:
        n = 0
        while n < min(len(common), len(parts)) and common[n] == parts[n]:
            n += 1
        common = common[:n]
    return ".".join(common)


def _wrap(text: str, width: int, max_lines: int) -> tuple[str, ...]:
    lines = textwrap.wrap(text, width, break_long_words=True, break_on_hyphens=False) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: width - 1] + "…"
    return tuple(lines)


def _is_chain(members: tuple[Node, ...], view: "GraphView") -> bool:
    inside = set(members)
    for a, b in zip(members, members[1:]):
        if [u for u in view.data_users[a] if u in inside] != [b]:
            return False
    return True


def _components(plain: list[Node], key: dict[Node, Any], view: "GraphView") -> list[list[Node]]:
    parent = {n: n for n in plain}

    def find(n: Node) -> Node:
        while parent[n] is not n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for n in plain:
        for u in view.data_inputs[n]:
            if u in parent and key[u] == key[n]:
                ra, rb = find(u), find(n)
                if ra is not rb:
                    parent[rb] = ra
    comps: dict[Node, list[Node]] = {}
    for n in plain:
        comps.setdefault(find(n), []).append(n)
    return list(comps.values())


def _convex(comp: list[Node], comp_of: dict[Node, int], i: int, view: "GraphView") -> bool:
    """No path leaves ``comp`` and comes back (collapsing it would draw a cycle)."""
    last = max(view.index[n] for n in comp)
    stack = [u for n in comp for u in view.data_users[n]
             if comp_of.get(u) != i and view.index[u] < last]
    seen: set[Node] = set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for u in view.data_users[node]:
            if comp_of.get(u) == i:
                return False
            if view.index[u] < last and u not in seen:
                stack.append(u)
    return True


def _cycle(drawn: list[Node], comp_of: dict[Node, int], view: "GraphView") -> list[int] | None:
    """Components on a cycle of the collapsed graph, or None (two convex components can
    still reach each other both ways)."""
    succ: dict[Any, set[Any]] = {}
    for n in drawn:
        a = ("c", comp_of[n]) if n in comp_of else ("n", n)
        for u in view.data_users[n]:
            b = ("c", comp_of[u]) if u in comp_of else ("n", u)
            if a != b:
                succ.setdefault(a, set()).add(b)
    state: dict[Any, int] = {}
    for start in list(succ):
        if start in state:
            continue
        stack = [(start, iter(succ.get(start, ())))]
        path = [start]
        state[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
                path.pop()
                continue
            if state.get(nxt) == 1:
                loop = path[path.index(nxt):]
                return [c for kind, c in loop if kind == "c"]
            if nxt not in state:
                state[nxt] = 1
                stack.append((nxt, iter(succ.get(nxt, ()))))
                path.append(nxt)
    return None


# -- DOT --------------------------------------------------------------------------------
def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _in_focus(node: PictureNode, prefixes: tuple[str, ...]) -> bool:
    paths = [node.group, node.module]
    return any(p == f or p.startswith(f + ".") for p in paths if p for f in prefixes)


def _to_dot(summary: GraphSummary, focus: str | Sequence[str] | None, rankdir: str,
            legend: bool) -> str:
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
    # Residual blocks as nested clusters.
    children: dict[str, list[str]] = {}
    used = {n.group for n in nodes.values()}
    groups = [g for g in summary.groups
              if any(u == g or u.startswith(g + ".") for u in used)]
    for g in groups:
        parent = _longest_prefix(g.rsplit(".", 1)[0] if "." in g else "",
                                 dict.fromkeys(groups))
        children.setdefault(parent, []).append(g)
    members: dict[str, list[PictureNode]] = {}
    for n in nodes.values():
        members.setdefault(n.group if n.group in summary.groups else "", []).append(n)

    def emit_node(n: PictureNode, indent: str) -> None:
        style = _STYLE[n.kind]
        attrs = [style, f"id={_q(n.id)}", f"class={_q(n.kind)}", f"tooltip={_q(n.detail)}"]
        if "label=" not in style:
            attrs.append(f"label={_q(chr(10).join(n.lines))}")
        if n.left_alone and n.kind != "note":
            attrs.append(_LEFT_ALONE)
        if n.id in faded:
            attrs.append('fillcolor="#fafafa", fontcolor="#9e9e9e", color="#e0e0e0"')
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
        kinds = {n.kind for n in nodes.values()}
        kinds |= {"left_alone"} if any(n.left_alone for n in nodes.values()) else set()
        kinds |= {e.kind for e in summary.edges if e.src in nodes and e.dst in nodes}
        out.append(_legend(kinds))
    out.append("}")
    return "\n".join(out) + "\n"


def _legend(kinds: set[str]) -> str:
    """A table explaining the marks that occur in the picture (and only those)."""
    rows = ['<TR><TD COLSPAN="2"><B>legend</B></TD></TR>']
    for kind, fill, color, text in _LEGEND:
        if kind in kinds:
            rows.append(f'<TR><TD BGCOLOR="{fill}" COLOR="{color}" WIDTH="24"> </TD>'
                        f'<TD ALIGN="LEFT" BORDER="0">{html.escape(text)}</TD></TR>')
    if "skip" in kinds:
        rows.append('<TR><TD BORDER="0"><FONT COLOR="#1565c0"><B>- - &gt;</B></FONT></TD>'
                    '<TD ALIGN="LEFT" BORDER="0">skip path (identity or projection)</TD></TR>')
    table = ('<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="3" CELLPADDING="2">'
             + "".join(rows) + "</TABLE>")
    return f'  legend [shape=plaintext, id="legend", fontsize=9, label=<{table}>];'


# -- rendering --------------------------------------------------------------------------
@dataclass(frozen=True)
class DrawResult:
    """What :func:`draw_dot` wrote: ``path``; ``rendered`` is false when only the DOT text
    was written (Graphviz missing), and ``command`` then renders it."""

    path: Path
    format: str
    rendered: bool
    command: str = ""

    def __str__(self) -> str:
        if self.rendered:
            return f"wrote {self.path} ({self.format}, rendered with Graphviz dot)"
        if self.command:
            return (f"wrote {self.path} (Graphviz `dot` is not installed; render it with: "
                    f"{self.command})")
        return f"wrote {self.path} (DOT text)"


def draw_dot(dot: str, path: str | Path, *, format: str | None = None,
             dot_program: str = "dot") -> DrawResult:
    """Render DOT text to ``path`` with Graphviz; the format comes from the suffix.

    ``.dot``/``.gv`` writes the text itself. When the ``dot`` program is not installed,
    the text goes to ``path`` with a ``.dot`` suffix and the result says how to render it.

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "g.dot"
    >>> draw_dot("digraph { a -> b }", target).rendered
    False
    """
    path = Path(path)
    fmt = (format or path.suffix.lstrip(".")).lower()
    if not fmt:
        raise ValueError(f"cannot tell the picture format of {str(path)!r}: give it a suffix "
                         "(.svg, .png, .pdf, .dot) or pass format=...")
    if fmt in ("dot", "gv"):
        path.write_text(dot)
        return DrawResult(path, "dot", False)
    program = shutil.which(dot_program)
    if program is None:
        dot_path = path.with_suffix(".dot")
        dot_path.write_text(dot)
        command = f"dot -T{fmt} {dot_path} -o {path}"
        logger.warning("zeta_fx: Graphviz `dot` is not installed; wrote %s; render it with: %s "
                       "(install Graphviz: apt-get install graphviz, brew install graphviz)",
                       dot_path, command)
        return DrawResult(dot_path, "dot", False, command)
    proc = subprocess.run([program, f"-T{fmt}", "-o", str(path)], input=dot.encode(),
                          capture_output=True, check=False)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RenderError(f"Graphviz dot could not render {str(path)!r} as {fmt!r}: "
                          f"{err[0] if err else 'exit code ' + str(proc.returncode)}; use a "
                          "format dot knows (svg, png, pdf) or a .dot suffix")
    logger.info("zeta_fx: drew %s", path)
    return DrawResult(path, fmt, True)
