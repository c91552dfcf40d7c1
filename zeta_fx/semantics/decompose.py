"""Composite ops read through torch's own decompositions.

An op without a transfer function of its own (``addcmul``, ``lerp``, ``addcdiv``,
``xlogy``, ...) is traced once with fake tensors through ``torch._decomp``'s table
(``make_fx(..., decomposition_table=...)``, the op's own entry only): what comes out is a
small graph of aten ops
whose facts are known, so a new composite is understood without a new line in a table.
The call is rebuilt from the node's own arguments (its constants as they are, each tensor
as a fake tensor of its recorded shape and dtype, or of a small shape where the capture
recorded none); an op that does not trace so is left unknown.

>>> import torch
>>> from torch import fx
>>> gm = fx.symbolic_trace(lambda x, y, z: torch.addcmul(x, y, z, value=0.5))
>>> node = next(n for n in gm.graph.nodes if n.op == "call_function")
>>> sub, tensors = decompose(node, lambda n: torch.float32)
>>> [str(n.target) for n in sub.graph.nodes if n.op == "call_function"]
['aten.mul.Tensor', 'aten.mul.Tensor', 'aten.add.Tensor']
>>> [t.name for t in tensors]
['x', 'y', 'z']
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import fx
from torch._decomp import get_decompositions
from torch.fx import Node

__all__ = ["decompose"]

# Shapes tried for a tensor whose capture recorded none (matrices, then batches of them).
_SHAPES = ((2, 2), (2, 2, 2))


def _recorded(node: Node) -> torch.Tensor | None:
    val = node.meta.get("val")
    return val if isinstance(val, torch.Tensor) else None


def _own_decompositions(node: Node, key: str) -> dict[Any, Callable[..., Any]]:
    """The decompositions of the node's own op only: one level down, to aten ops whose
    facts are known (the full table would go on to ``prims``)."""
    target = node.target
    packet = target.overloadpacket if isinstance(target, torch._ops.OpOverload) else \
        getattr(torch.ops.aten, key, None)
    if not isinstance(packet, torch._ops.OpOverloadPacket):
        return {}
    return get_decompositions([packet])


def decompose(node: Node, dtype_of: Callable[[Node], torch.dtype | None], key: str = ""
              ) -> tuple[fx.GraphModule, list[Node]] | None:
    """``(graph, tensors)``: ``node``'s op as a graph of aten ops, whose placeholders stand
    for ``tensors`` (the node's tensor arguments, in order); ``None`` if it does not trace
    or does not decompose. ``key`` is the node's op key (its name, for a method)."""
    if node.op not in ("call_function", "call_method"):
        return None
    key = key or (node.target if node.op == "call_method" else
                  getattr(node.target, "__name__", ""))
    table = _own_decompositions(node, key)
    if not table:
        return None
    tensors = [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, Node)]
    if any(isinstance(a, (list, tuple, dict)) and any(isinstance(i, Node) for i in a)
           for a in (*node.args, *node.kwargs.values())):
        return None  # tensors inside containers: not rebuilt here
    from torch.fx.experimental.proxy_tensor import make_fx  # (heavy: only when asked)

    def call(*values: torch.Tensor) -> Any:
        swap = dict(zip(tensors, values))
        args = [swap.get(a, a) if isinstance(a, Node) else a for a in node.args]
        kwargs = {k: swap.get(v, v) if isinstance(v, Node) else v
                  for k, v in node.kwargs.items()}
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        return node.target(*args, **kwargs)

    for shape in _SHAPES:
        examples = []
        for t in tensors:
            recorded = _recorded(t)
            dtype = dtype_of(t) or torch.get_default_dtype()
            examples.append(torch.empty(recorded.shape, dtype=recorded.dtype)
                            if recorded is not None else torch.zeros(shape, dtype=dtype))
        try:
            gm = make_fx(call, decomposition_table=table, tracing_mode="fake")(*examples)
        except Exception:  # noqa: BLE001 - an op that does not trace so stays unknown
            continue
        return gm, tensors
    return None
