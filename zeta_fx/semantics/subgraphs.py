"""Subgraphs that higher-order ops run: ``torch.no_grad()`` under ``torch.export`` is
``wrap_with_set_grad_enabled(False, body, *operands)``, whose outputs are ``body``'s
outputs computed on the operands (grad mode changes no value).

:func:`subgraph_of` finds the body and what its placeholders hold; :func:`inside` follows
an item of such a call to the body's node that computes it, and :func:`outside` a body's
placeholder back to the operand it holds, so that a rule reading the structure of a value
(a mask) reads it through the call.
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import fx
from torch.fx import Node

from zeta_fx.semantics.keys import op_key
from zeta_fx.semantics.tables import SUBGRAPH_CALLS

__all__ = ["subgraph_of", "inside", "outside", "item_operands"]


def subgraph_of(node: Node) -> tuple[fx.GraphModule, dict[Node, Any]] | None:
    """``(body, {placeholder: operand})`` of a call in ``SUBGRAPH_CALLS``, or ``None`` (not
    such a call, the body not found, or its placeholders not one per operand)."""
    if not isinstance(node, Node) or node.op != "call_function":
        return None
    where = SUBGRAPH_CALLS.get(op_key(node)[0])
    if where is None or node.kwargs:
        return None
    at, first = where
    if len(node.args) <= at:
        return None
    holder = node.args[at]
    owner = node.graph.owning_module
    if not isinstance(holder, Node) or holder.op != "get_attr" or owner is None:
        return None
    body: Any = owner
    try:
        for part in str(holder.target).split("."):
            body = getattr(body, part)
    except AttributeError:
        return None
    if not isinstance(body, fx.GraphModule):
        return None
    placeholders = [n for n in body.graph.nodes if n.op == "placeholder"]
    operands = list(node.args[first:])
    if len(placeholders) != len(operands):
        return None
    return body, dict(zip(placeholders, operands))


def inside(value: Any) -> tuple[Any, Mapping[Node, Any]]:
    """``(body node, placeholders -> operands)`` for item ``i`` of a subgraph call (the
    body's output ``i``); ``(value, {})`` for any other value."""
    if isinstance(value, Node) and value.op == "call_function" and \
            op_key(value)[0] == "getitem" and len(value.args) == 2 and \
            isinstance(value.args[1], int) and isinstance(value.args[0], Node):
        found = subgraph_of(value.args[0])
        if found is not None:
            body, env = found
            out = next(n for n in body.graph.nodes if n.op == "output").args[0]
            outs = out if isinstance(out, (list, tuple)) else (out,)
            if 0 <= value.args[1] < len(outs):
                return outs[value.args[1]], env
    return value, {}


def outside(value: Any, env: Mapping[Node, Any]) -> Any:
    """The operand a body's placeholder holds (``env`` from :func:`inside`); any other
    value as it is."""
    if isinstance(value, Node) and value.op == "placeholder" and value in env:
        return env[value]
    return value


def item_operands(value: Any) -> list[Node] | None:
    """The operands of a subgraph call whose values item ``value`` is computed from (the
    body's output traced back to its placeholders); ``None`` for any other value. A rescale
    of several weights under ``no_grad`` (RWKV's) gives each weight back from its own."""
    inner, env = inside(value)
    if not env:
        return None
    seen: set[Node] = set()
    stack = [inner] if isinstance(inner, Node) else []
    read: dict[Node, None] = {}
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.op == "placeholder":
            operand = env.get(node)
            if isinstance(operand, Node):
                read.setdefault(operand)
            elif operand is not None and not isinstance(operand, (int, float, bool, str)):
                return None  # (a list of tensors: not followed)
            continue
        stack.extend(node.all_input_nodes)
    return list(read)
