"""Condensing the analysed graph into a :class:`GraphSummary`, plain data that draws itself.

Every data node is drawn once. The nodes a reader checks stand alone - inputs, the zeroed
layers, every additive merge (residual join or not), the fork of each join, the candidates
left alone (each with a note giving the reason) - and every other connected run of plain
operations with the same residual block (the module that holds a join) and the same role
(on a skip path or not) is one box. A run is split back into single nodes where collapsing
it would draw a cycle.

>>> from torch import fx, nn
>>> from zeta_fx import zero_init_pass
>>> from zeta_fx.analysis.view import GraphView
>>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
>>> plan = zero_init_pass(model, rule="output_layer", dry_run=True).plan
>>> summary = summarize(GraphView(fx.symbolic_trace(model), model), plan, applied=False)
>>> print(summary.title.replace("; ", "\\n"))
Sequential: rule output_layer would zero (dry run) 2 parameters in 1 module
0 candidates left alone
>>> [(n.kind, n.lines) for n in summary.nodes]  # doctest: +NORMALIZE_WHITESPACE
[('input', ('input_1',)), ('ops', ('0 → 1',)),
 ('zeroed', ('2', 'Linear', 'zeroed: weight 2x8, bias 2')), ('output', ('output',))]
>>> GraphSummary.from_dict(summary.to_dict()) == summary
True
"""

from __future__ import annotations

import graphlib
import textwrap
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Sequence

from torch.fx import Node

from zeta_fx.analysis.view import GraphView, Join
from zeta_fx.semantics.keys import target_name
from zeta_fx.semantics.tables import PLUMBING
from zeta_fx.report.picture.dot import longest_prefix, to_dot
from zeta_fx.words import format_shape, plural
from zeta_fx.plan.records import PlanEntry, Plan
from zeta_fx.rules.selection import Skipped


__all__ = ["PictureNode", "PictureEdge", "GraphSummary", "summarize"]


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
        return to_dot(self, focus=focus, rankdir=rankdir, legend=legend)


def summarize(view: GraphView, plan: "Plan", skipped: Iterable["Skipped"] = (), *,
              applied: bool = True) -> GraphSummary:
    """Condense ``view`` into a :class:`GraphSummary`, marking what ``plan`` zeroes and
    the candidates in ``skipped``; ``applied=False`` titles it as a dry run, as the
    report's table does."""
    return _Summarizer(view, plan, list(skipped), applied).run()


class _Summarizer:
    """One summary: what each node is, which plain runs collapse, then boxes and edges.

    Long because a picture has many small decisions (labels, clusters, collapsing runs
    without making a cycle); it lives for one call of :func:`summarize`, and every method
    is one of those decisions."""

    def __init__(self, view: GraphView, plan: "Plan", skipped: list["Skipped"],
                 applied: bool) -> None:
        self.view, self.plan, self.skipped, self.applied = view, plan, skipped, applied
        self.drawn = [n for n in view.nodes if view.is_data[n]]
        self.out_node = next((n for n in view.nodes if n.op == "output"), None)
        self.joins = view.joins()
        self.paths = self._module_paths()
        # Each join is drawn as one "+" for its merge and the adds folded into it.
        self.merge_of: dict[Node, Join] = {}
        for join in self.joins:
            for member in self._merge_members(join):
                self.merge_of[member] = join
        self.merged: dict[Node, list[Node]] = {}  # a join's merge -> the nodes of its "+"
        for member, join in self.merge_of.items():
            self.merged.setdefault(join.merge, []).append(member)
        self.zeroed: dict[str, "PlanEntry"] = {
            name: entry for entry in plan.entries for name in entry.nodes}
        self.left_alone: dict[str, list[str]] = {}
        for s in skipped:
            self.left_alone.setdefault(s.node, []).append(s.reason)

    def run(self) -> GraphSummary:
        view, drawn, merge_of = self.view, self.drawn, self.merge_of
        blocks = {self.paths[j.merge]: view.module_type(self.paths[j.merge])
                  for j in self.joins if self.paths[j.merge]}
        group = {n: longest_prefix(self.paths[n], blocks) for n in drawn}
        skip_nodes, skip_edges = self._skip_paths()
        kind = self._standalone_kinds()
        plain = [n for n in drawn if n not in kind]
        runs, run_of = _collapse(plain, {n: (group[n], n in skip_nodes) for n in plain},
                                 drawn, view)

        # Boxes, in graph order.
        summary = GraphSummary(self._title(), groups=self._clusters(blocks))
        box: dict[Node, str] = {}
        for n in drawn:
            if n in box:
                continue
            ident = f"n{len(summary.nodes)}"
            if n in kind:
                members: tuple[Node, ...] = (n,)
                if kind[n] in ("join", "merge"):
                    members = tuple(view.nodes_in_order(self.merged[merge_of[n].merge]))
                box.update(dict.fromkeys(members, ident))
                summary.nodes.append(self._single(ident, kind[n], members, group[n]))
                continue
            members = tuple(runs[run_of[n]])
            box.update(dict.fromkeys(members, ident))
            k = "skip_path" if members[0] in skip_nodes else "ops"
            summary.nodes.append(self._collapsed(ident, k, members, group[n]))
        if self.out_node is not None:
            ident = f"n{len(summary.nodes)}"
            box[self.out_node] = ident
            summary.nodes.append(PictureNode(ident, "output", ("output",), ("output",)))

        # Edges between boxes; a skip edge wins over a plain one between the same boxes.
        edges: dict[tuple[str, str], str] = {}
        for v in drawn + ([self.out_node] if self.out_node is not None else []):
            inputs = view.outputs() if v is self.out_node else view.data_inputs[v]
            for u in inputs:
                a, b = box.get(u), box.get(v)
                if a is None or b is None or a == b:
                    continue
                k = "skip" if (u, v) in skip_edges else "data"
                if edges.get((a, b)) != "skip":
                    edges[(a, b)] = k
        summary.edges = [PictureEdge(a, b, k) for (a, b), k in edges.items()]

        # A note per reason, tied to the box it explains.
        for name, reasons in self.left_alone.items():
            target = view.by_name.get(name)
            for reason in reasons:
                ident = f"n{len(summary.nodes)}"
                summary.nodes.append(PictureNode(
                    ident, "note", _wrap(reason, 46, 5), (),
                    group.get(target, "") if target is not None else "", "", reason))
                if target is not None and target in box:
                    summary.edges.append(PictureEdge(box[target], ident, "note"))
        return summary

    # -- what each node is ---------------------------------------------------------------
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

    def _merge_members(self, join: Join) -> list[Node]:
        """The merge node and the adds of the same sum folded into it (``a + b + c``)."""
        view, members, stack = self.view, [join.merge], [join.merge]
        while stack:
            node = stack.pop()
            for arg in node.args[:2]:
                if (isinstance(arg, Node) and arg not in join.terms and view.is_additive(arg)
                        and view.data_users[arg] == [node]):
                    members.append(arg)
                    stack.append(arg)
        return members

    def _skip_paths(self) -> tuple[set[Node], set[tuple[Node, Node]]]:
        """The nodes on the skip path of each residual join, and the edges drawn as skips:
        from the fork or a projection to the next, and into the merge from the skip."""
        view = self.view
        skip_nodes: set[Node] = set()
        skip_edges: set[tuple[Node, Node]] = set()
        for join in self.joins:
            if join.ok and join.skip is not None:
                side = join.sides.get(join.skip, frozenset())
                skip_nodes |= side
                members = set(self.merged.get(join.merge, ()))
                for v in side | members:
                    for u in view.data_inputs[v]:
                        if u in side or u is join.fork:
                            if v in members and u is not join.skip:
                                continue
                            skip_edges.add((u, v))
        return skip_nodes, skip_edges

    def _standalone_kinds(self) -> dict[Node, str]:
        """The kind of each node drawn on its own; the rest are plain and may collapse."""
        forks = {j.fork for j in self.joins if j.fork is not None}
        kind: dict[Node, str] = {}
        for n in self.drawn:
            if n.name in self.zeroed:
                kind[n] = "zeroed"
            elif n in self.merge_of:
                kind[n] = "join" if self.merge_of[n].ok else "merge"
            elif n.name in self.left_alone:
                kind[n] = "skipped"
            elif n.op == "placeholder":
                kind[n] = "input"
            elif n in forks:
                kind[n] = "fork"
        return kind

    def _clusters(self, blocks: dict[str, str]) -> dict[str, str]:
        """The residual blocks, and a module holding several of them (a ResNet stage),
        which is drawn around them."""
        parents: dict[str, int] = {}
        for fqn in blocks:
            if "." in fqn:
                parent = fqn.rsplit(".", 1)[0]
                parents[parent] = parents.get(parent, 0) + 1
        clusters = dict(blocks)
        for parent, count in parents.items():
            if count > 1 and parent not in clusters:
                clusters[parent] = self.view.module_type(parent)
        return dict(sorted(clusters.items()))

    # -- labels ----------------------------------------------------------------------------
    def _title(self) -> str:
        # The words of the report's summary line, so that picture and table agree.
        plan = self.plan
        n = sum(len(e.params) for e in plan.entries)
        verb = "zeroed" if self.applied else "would zero (dry run)"
        return (f"{plan.model}: rule {plan.rule} {verb} {plural(n, 'parameter')} in "
                f"{plural(len(plan.entries), 'module')}; "
                f"{plural(len(self.skipped), 'candidate')} left alone")

    def _short(self, node: Node, group: str) -> str:
        if node.op == "call_module":
            return _relative(str(node.target), group) or str(node.target).rsplit(".", 1)[-1]
        if node.op == "placeholder":
            return node.name
        packet = getattr(node.target, "overloadpacket", None)
        if packet is not None:  # an ATen overload from torch.export: aten.add.Tensor -> add
            return getattr(packet, "__name__", str(packet)).rsplit(".", 1)[-1]
        name = target_name(node.target) if node.op == "call_function" else str(node.target)
        if "::" in name:
            return name.split("::", 1)[1].split(".", 1)[0]
        return name.rsplit(".", 1)[-1]

    def _single(self, ident: str, kind: str, members: tuple[Node, ...],
                group: str) -> PictureNode:
        node = members[-1] if kind in ("join", "merge") else members[0]
        names = tuple(m.name for m in members)
        reasons = self.left_alone.get(node.name, [])
        module = self.paths[node]
        if kind == "zeroed":
            entry = self.zeroed[node.name]
            module = entry.module
            short = _relative(entry.module, group) or entry.module or "(root)"
            params = ", ".join(f"{fqn.rsplit('.', 1)[-1]} {format_shape(s)}"
                               for fqn, s in entry.params.items())
            lines = (short, entry.module_type, f"zeroed: {params}")
            detail = (f"{entry.module or '(root)'} ({entry.module_type}) zeroed at node "
                      f"{node.name}: {', '.join(entry.params)}; "
                      f"{' | '.join(entry.positions)}")
        elif kind in ("join", "merge"):
            join = self.merge_of[node]
            lines = ("+",)
            if join.ok:
                detail = (f"residual join {node.name} (fork {join.fork.name}, skip: "
                          f"{join.skip_kind}, branches: "
                          f"{', '.join(b.name for b in join.branches)})")
            else:
                detail = f"additive merge {node.name}: {join.reason}"
        else:
            short = self._short(node, group)
            lines = (short,)
            if kind == "fork":
                detail = f"{node.name}: fork of a residual join"
            elif kind == "input":
                detail = f"input {node.name}"
            else:
                detail = node.name
            if kind == "skipped" and module and node.op != "call_module":
                lines = (short, f"({_relative(module, group) or module})")
        if reasons:
            detail += " | left alone: " + " | ".join(reasons)
        return PictureNode(ident, kind, lines, names, group, module, detail, bool(reasons))

    def _collapsed(self, ident: str, kind: str, members: tuple[Node, ...],
                   group: str) -> PictureNode:
        view = self.view
        chain = _is_chain(members, view)
        module = _common_prefix([self.paths[m] for m in members])
        shorts = [self._short(m, group) for m in members]
        title: tuple[str, ...] = ()
        if len(" · ".join(shorts)) > 40 and module and module != group and len(members) > 1:
            # Long names under one submodule: name it once, its parts relative to it.
            title = (_relative(module, group) or module,)
            shorts = [self._short(m, module) for m in members]
            # Positions in a Sequential ("0.1") say less than the layer's class.
            shorts = [view.module_type(str(m.target)) if m.op == "call_module"
                      and s.rsplit(".", 1)[-1].isdigit() else s
                      for m, s in zip(members, shorts)]
        shown = shorts if chain else list(dict.fromkeys(shorts))
        if len(shown) > 7:
            # Layers and compute ops tell a block apart; reshapes and indexing do not.
            telling = [s for m, s in zip(members, shorts)
                       if view.layer(m) is not None or m.op == "call_module"
                       or s not in PLUMBING]
            telling = telling if chain else list(dict.fromkeys(telling))
            shown = telling if 0 < len(telling) <= 7 else shown[:3] + ["…"] + shown[-2:]
        lines = title + _wrap_tokens(shown, " → " if chain else " · ", 40, 4)
        if len(members) > len(shown):
            lines += (f"({len(members)} ops)",)
        detail = f"{module or '(root)'}: " + ", ".join(m.name for m in members)
        return PictureNode(ident, kind, lines, tuple(m.name for m in members), group, module,
                           detail)


# -- collapsing plain runs -----------------------------------------------------------------
# torch.fx.passes has partitioners, but none fits a read-only picture over value edges:
# - fuser_utils.fuse_by_partitions (and fuse_as_graphmodule, insert_subgm) rewrites the
#   GraphModule into submodules; the picture must not change the graph it draws.
# - fuser_utils.validate_partition is the convexity check, but over node.users, every edge:
#   the shape queries that the value-flow index leaves out (x.size() feeding view) make it
#   reject GPT's attention run, ViT's class-token run and DiT's unpatchify run, which draw
#   no cycle. It also walks everything downstream of a run, not just up to the run's end.
# - infra.partitioner.CapabilityBasedPartitioner groups one yes/no "supported" class, not
#   one partition per (block, role); it fuses unconnected partitions horizontally, drops
#   single-node ones, and its _DependencyViewer stores every node's downstream set
#   (quadratic: 1.2M entries, 57 ms for GPT-48, three times this whole summary).
# - split_utils.split_by_tags builds a new GraphModule per tag, as fuse_by_partitions does.
# - fuser_utils.topo_sort: view.index is already a topological order.
# So runs are found by a flood fill over value edges, checked by a bounded search, and the
# collapsed graph's cycles are found by the standard library's graphlib.
def _collapse(plain: list[Node], key: dict[Node, Hashable], drawn: list[Node],
              view: GraphView) -> tuple[list[list[Node]], dict[Node, int]]:
    """Runs of ``plain`` nodes to draw as one box each, and each node's run.

    A run is a connected set of nodes with the same ``key``. A run that a path leaves and
    re-enters is split into single nodes (as one box it would point to itself); so is the
    largest run on any cycle left between runs, until there is none.
    """
    runs, run_of = _connected_runs(plain, key, view)
    for i in range(len(runs)):
        if len(runs[i]) > 1 and not _convex(runs[i], run_of, i, view):
            _split(runs, run_of, i)
    while (cycle := _cycle(drawn, run_of, view)) is not None:
        _split(runs, run_of, max(cycle, key=lambda i: (len(runs[i]), -i)))
    return runs, run_of


def _connected_runs(plain: list[Node], key: dict[Node, Hashable],
                    view: GraphView) -> tuple[list[list[Node]], dict[Node, int]]:
    """Connected components of ``plain`` over value edges between nodes of the same key,
    each in graph order, ordered by their first node."""
    runs: list[list[Node]] = []
    run_of: dict[Node, int] = {}
    for start in plain:
        if start in run_of:
            continue
        i = len(runs)
        run_of[start] = i
        members, stack = [start], [start]
        while stack:
            n = stack.pop()
            for m in (*view.data_inputs[n], *view.data_users[n]):
                if m in key and m not in run_of and key[m] == key[n]:
                    run_of[m] = i
                    members.append(m)
                    stack.append(m)
        runs.append(view.nodes_in_order(members))
    return runs, run_of


def _convex(run: list[Node], run_of: dict[Node, int], i: int, view: GraphView) -> bool:
    """No path leaves ``run`` and comes back (collapsing it would draw a cycle)."""
    last = max(view.index[n] for n in run)
    stack = [u for n in run for u in view.data_users[n]
             if run_of.get(u) != i and view.index[u] < last]
    seen: set[Node] = set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for u in view.data_users[node]:
            if run_of.get(u) == i:
                return False
            if view.index[u] < last and u not in seen:
                stack.append(u)
    return True


def _cycle(drawn: list[Node], run_of: dict[Node, int], view: GraphView) -> list[int] | None:
    """The runs on one cycle of the collapsed graph, or None. Two convex runs can still
    reach each other both ways (a value of one block feeds another's, and back)."""
    def box(n: Node) -> tuple[str, int]:
        return ("run", run_of[n]) if n in run_of else ("node", view.index[n])

    # Predecessors as dicts, not sets: the cycle found does not depend on hashing.
    preds: dict[tuple[str, int], dict[tuple[str, int], None]] = {}
    for n in drawn:
        b = box(n)
        into = preds.setdefault(b, {})
        for u in view.data_inputs[n]:
            if box(u) != b:
                into[box(u)] = None
    try:
        graphlib.TopologicalSorter(preds).prepare()
    except graphlib.CycleError as err:
        return [i for kind, i in err.args[1][1:] if kind == "run"]  # first == last
    return None


def _split(runs: list[list[Node]], run_of: dict[Node, int], i: int) -> None:
    """Run ``i`` becomes its first node; every other node becomes a run of its own."""
    members = runs[i]
    runs[i] = members[:1]
    for n in members[1:]:
        run_of[n] = len(runs)
        runs.append([n])


def _is_chain(members: tuple[Node, ...], view: GraphView) -> bool:
    inside = set(members)
    for a, b in zip(members, members[1:]):
        if [u for u in view.data_users[a] if u in inside] != [b]:
            return False
    return True


# -- label text ------------------------------------------------------------------------------
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


def _wrap(text: str, width: int, max_lines: int) -> tuple[str, ...]:
    lines = textwrap.wrap(text, width, break_long_words=True, break_on_hyphens=False) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: width - 1] + "…"
    return tuple(lines)


def _relative(path: str, group: str) -> str:
    if group and path.startswith(group + "."):
        return path[len(group) + 1:]
    return "" if path == group and group else path


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
