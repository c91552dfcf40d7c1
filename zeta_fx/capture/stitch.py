"""Stitching: the graph of a compositional export, with every opaque block call replaced by
a copy of its representative's nodes (see :mod:`zeta_fx.capture.blocks`).

The representative's nodes are those between its ``block_begin`` and ``block_leave``
markers (``block_begin`` takes the representative's inputs, as they are, and gives nothing
the block reads). A copy for the block at FQN ``layers.5`` maps the representative's inputs
to the opaque call's inputs, renames every ``get_attr`` under the representative's FQN
(``layers.0.mlp.up_proj.weight``) to the instance's (``layers.5.mlp.up_proj.weight``), and
rewrites ``nn_module_stack``. Nodes are created in the order a whole-model export creates
them, each named from its op as the export named it (``linear``, ``getitem``) and numbered
by the graph, so that names agree with a whole-model export too.
"""

from __future__ import annotations

import operator
import re
from typing import Any

from torch import fx, nn
from torch.fx._lazy_graph_module import _LazyGraphModule

from zeta_fx.capture.blocks import BEGIN, LEAVE, STUB, BlockRecorder, NotComposable

__all__ = ["stitch", "META_KEY"]

# ``gm.meta[META_KEY]``: the FQN of each block copy stitched in -> its representative's
META_KEY = "zeta_fx_copies"

_NUMBERED = re.compile(r"^(.*?)_(\d+)$")


def stitch(gm: fx.GraphModule, recorder: BlockRecorder, model: nn.Module) -> fx.GraphModule:
    """``gm`` (a compositional export of ``model``) with every block call made explicit;
    ``meta[META_KEY]`` says which copy stands for which representative.

    Raises :class:`~zeta_fx.capture.blocks.NotComposable` where a copy could differ from
    what a whole-model export records (a representative that holds a subgraph or a constant
    made inside it, or whose markers did not survive the export)."""
    nodes = list(gm.graph.nodes)
    marks = {(n.target, n.args[-1]): n for n in nodes
             if n.op == "call_function" and n.target in (BEGIN, LEAVE)}
    where = {n: i for i, n in enumerate(nodes)}
    segments: dict[int, tuple[fx.Node, list[fx.Node], fx.Node]] = {}
    for key in recorder.segments:
        begin, leave = marks.get((BEGIN, key)), marks.get((LEAVE, key))
        if begin is None or leave is None:
            continue
        segments[key] = (begin, nodes[where[begin] + 1:where[leave]], leave)
    if any(n.op == "get_attr" and isinstance(_fetch(gm, n.target), fx.GraphModule)
           for n in nodes):
        # a higher-order op (`torch.no_grad()` under export: wrap_with_set_grad_enabled):
        # the export names the nodes around its subgraph anew, not in the order stitching
        # creates them; the whole model is exported instead
        raise NotComposable("the graph holds a higher-order op's subgraph")
    rebound: dict[int, list[tuple[int, fx.Node]]] = {}  # marker key -> (input, its node)
    for rep in {id(rep): rep for rep, _ in recorder.stubs.values()}.values():
        if rep.key not in segments:
            raise NotComposable(f"the capture of `{rep.path}` lost its markers",
                                rep.structure)
        for n in segments[rep.key][1]:
            stack = n.meta.get("nn_module_stack")
            if isinstance(stack, dict) and stack and not any(
                    isinstance(v, tuple) and v[0] == rep.path for v in stack.values()):
                # the tracer did not see the representative under its own name (a forward
                # patched on an instance around it): its copies could not be named right
                raise NotComposable(f"`{rep.path}` was not traced under its own name",
                                    rep.structure)
            if n.op == "get_attr" and (not n.target.startswith(rep.path + ".") or
                                       not _has(model, n.target)):
                raise NotComposable(f"`{rep.path}` reads `{n.target}`, made inside it",
                                    rep.structure)
        named = {n.name: n for n in segments[rep.key][1]}
        if any(name not in named for _, name in rep.rebound):
            raise NotComposable(f"`{rep.path}` rebinds an input outside itself", rep.structure)
        rebound[rep.key] = [(i, named[name]) for i, name in rep.rebound]

    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    getattrs: dict[str, fx.Node] = {}
    attrs: dict[str, Any] = {}
    outputs: dict[fx.Node, list[Any]] = {}

    def attribute(node: fx.Node, rename: tuple[str, str] | None, stack: Any = None) -> fx.Node:
        target = node.target
        if rename is not None and target.startswith(rename[0] + "."):
            target = rename[1] + target[len(rename[0]):]
        if target not in getattrs:
            # an attribute the whole-model export names as it is (a subgraph of a
            # higher-order op: `submod_3`) keeps its name; a renamed one is named anew
            getattrs[target] = graph.create_node(
                "get_attr", target, name=node.name if target == node.target else None)
            attrs[target] = _fetch(gm, node.target) if target == node.target else \
                _fetch(model, target)
            _set_meta(getattrs[target], node.meta, stack)
        return getattrs[target]

    def copy(node: fx.Node) -> fx.Node:
        if node.op == "get_attr":
            return attribute(node, None)
        name = node.name if node.op in ("placeholder", "output") else _base(node.name)
        new = _node(graph, node, fx.map_arg(node.args, env.__getitem__),
                    fx.map_arg(node.kwargs, env.__getitem__), name)
        _set_meta(new, node.meta)
        return new

    plans: dict[int, _Segment] = {}
    for node in nodes:
        source = _item_of(node)
        if node.op == "call_function" and node.target in (BEGIN, LEAVE):
            continue
        if source is not None and source.target is LEAVE:
            env[node] = env[source.args[0][node.args[1]]]
            continue
        if source is not None and source.target is STUB:
            env[node] = outputs[source][node.args[1]]
            continue
        if node.op == "call_function" and node.target is STUB:
            rep, path = recorder.stubs[node.args[1]]
            begin, inner, leave = segments[rep.key]
            if rep.key not in plans:
                plans[rep.key] = _Segment(inner, rep.path)
            plan, rename = plans[rep.key], (rep.path, path)
            stacks = plan.stacks(path, node.meta.get("nn_module_stack"))
            local: dict[fx.Node, Any] = {n: env[s] for n, s in zip(begin.args[0], node.args[0])}

            def look(n: fx.Node, local: dict[fx.Node, Any] = local,
                     rename: tuple[str, str] = rename) -> Any:
                if n in local:
                    return local[n]
                if n.op == "get_attr" and isinstance(n.target, str) and \
                        n.target.startswith(rename[0] + "."):
                    # the representative's own tensor, first read before it ran (by a
                    # hook, by the model's code): the copy reads its own
                    local[n] = attribute(n, rename)
                    return local[n]
                return env[n]
            for n, base, group in plan.nodes:
                stack = None if group is None else stacks[group]
                if n.op == "get_attr":
                    local[n] = attribute(n, rename, stack)
                    continue
                new = _node(graph, n, fx.map_arg(n.args, look), fx.map_arg(n.kwargs, look),
                            base)
                _set_meta(new, n.meta, stack)
                local[n] = new
            outputs[node] = [look(n) for n in leave.args[0]]
            for i, bound in rebound[rep.key]:  # later uses of that input read the copy's
                env[node.args[0][i]] = local[bound]
            continue
        env[node] = copy(node)
    # its Python code is generated when first read or run (the pass does neither)
    stitched = _LazyGraphModule(attrs, graph, gm.__class__.__name__)
    stitched.meta.update(gm.meta)
    stitched.meta[META_KEY] = {path: rep.path for rep, path in recorder.stubs.values()}
    return stitched


# ``Node._update_args_kwargs`` (torch's own accounting of inputs and users), where this
# torch has it under that name
_SET_ARGS = getattr(fx.Node, "_update_args_kwargs", None)


def _node(graph: fx.Graph, like: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any],
          name: str) -> fx.Node:
    """A node of ``graph`` as ``like``, on ``args`` and ``kwargs``, named from ``name``.

    Made without arguments, then given them: ``Graph.create_node`` walks the arguments of
    every call with ``torch.utils._pytree`` to warn of raw symbolic sizes (the copied
    nodes come from an export that made them with none), 40% of what stitching a copy
    cost."""
    if _SET_ARGS is None or like.op not in ("call_function", "call_method", "call_module"):
        return graph.create_node(like.op, like.target, args, kwargs, name=name,
                                 type_expr=like.type)
    new = graph.create_node(like.op, like.target, name=name, type_expr=like.type)
    _SET_ARGS(new, args, kwargs)
    return new


def _set_meta(node: fx.Node, meta: dict[str, Any], stack: Any = None) -> None:
    """``node`` (just made) gets a shallow copy of ``meta``, with ``stack`` (copied) as its
    ``nn_module_stack`` when given. Filled in place: assigning ``node.meta`` goes through
    ``Node.__setattr__``, which takes the node out of the graph's lookup table and puts it
    back (a tenth of what stitching a copy cost)."""
    node.meta.update(meta)
    if stack is not None:
        node.meta["nn_module_stack"] = dict(stack)


def _item_of(node: fx.Node) -> fx.Node | None:
    """The multi-output node ``node`` takes an item of (``getitem(n, i)``), or None."""
    if node.op == "call_function" and node.target is operator.getitem and \
            isinstance(node.args[0], fx.Node) and node.args[0].op == "call_function" and \
            node.args[0].target in (LEAVE, STUB):
        return node.args[0]
    return None


def _base(name: str) -> str:
    """The name the graph numbers: ``linear_7`` -> ``linear``."""
    match = _NUMBERED.match(name)
    return match.group(1) if match else name


class _Segment:
    """What copying one representative's nodes needs, worked out once: each node, the name
    the graph numbers (``linear_7`` -> ``linear``), and its ``nn_module_stack`` entries
    inside the representative, grouped (nodes of one submodule share a group)."""

    def __init__(self, inner: list[fx.Node], path: str) -> None:
        self.path = path
        groups: dict[tuple[Any, ...], int] = {}
        self.nodes: list[tuple[fx.Node, str, int | None]] = []
        for n in inner:
            stack = n.meta.get("nn_module_stack")
            group = None
            if isinstance(stack, dict):
                entries = []
                for key, value in stack.items():
                    where = value[0] if isinstance(value, tuple) else None
                    if isinstance(where, str) and where.startswith(path + "."):
                        entries.append((key, where, tuple(value[1:])))
                group = groups.setdefault(tuple(entries), len(groups))
            base = n.name if n.op in ("placeholder", "output") else _base(n.name)
            self.nodes.append((n, base, group))
        self.groups = list(groups)

    def stacks(self, new: str, outer: Any) -> list[dict[str, Any]]:
        """Per group, a copy's ``nn_module_stack`` for the instance at ``new``: the opaque
        call's (``outer``: where the instance was called, down to the instance), then the
        representative's entries inside the representative, renamed to the instance."""
        out = []
        cut = len(self.path)
        for entries in self.groups:
            renamed = dict(outer) if isinstance(outer, dict) else {}
            for key, where, tail in entries:
                moved = new + where[cut:]
                if isinstance(key, str) and key.endswith(where):
                    key = key[:-len(where)] + moved
                renamed[key] = (moved, *tail)
            out.append(renamed)
        return out


def _has(root: Any, dotted: str) -> bool:
    """Whether ``dotted`` names an attribute of the model (a lifted constant made inside
    the forward is not one: a whole-model export names each instance's own)."""
    try:
        _fetch(root, dotted)
    except AttributeError:
        return False
    return True


def _fetch(root: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        root = getattr(root, part)
    return root
