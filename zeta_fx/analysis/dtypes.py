"""The dtype of every value of a graph: from capture metadata, else propagated.

``torch.export`` records each node's dtype (``meta["val"]``); a symbolic trace records none,
so dtypes are propagated in one sweep: attributes have their tensors' dtypes, a module
with floating parameters computes in their dtype, casts say theirs
(:func:`zeta_fx.semantics.dtypes.output_dtype`), and inputs are taken to be in the model's
own floating dtype (the one most of its parameters have; torch's default without any).
Built on the first question, once per graph.

>>> import torch
>>> from torch import fx, nn
>>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU()).half()
>>> gm = fx.symbolic_trace(model)
>>> dtypes = ValueDtypes(list(gm.graph.nodes), model)
>>> [str(dtypes[n]) for n in gm.graph.nodes][:3]
['torch.float16', 'torch.float16', 'torch.float16']
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

import torch
from torch import nn
from torch.fx import Node

from zeta_fx.semantics.dtypes import node_dtype, output_dtype
from zeta_fx.tensors import fetch_attr

__all__ = ["ValueDtypes", "model_dtype"]


def model_dtype(root: nn.Module) -> torch.dtype:
    """The floating dtype most of ``root``'s parameters have (torch's default without)."""
    counts = Counter(p.dtype for p in root.parameters() if p.is_floating_point())
    return counts.most_common(1)[0][0] if counts else torch.get_default_dtype()


class ValueDtypes:
    """``dtypes[node]``: the floating dtype of ``node``'s value, or ``None``."""

    def __init__(self, nodes: list[Node], root: nn.Module, *,
                 key: Callable[[Node], str] | None = None,
                 module_of: Callable[[str], nn.Module] | None = None) -> None:
        self._nodes, self._root = nodes, root
        self._key = key or (lambda n: n.target if isinstance(n.target, str)
                            else getattr(n.target, "__name__", ""))
        self._module_of = module_of or root.get_submodule
        self._dtypes: dict[Node, torch.dtype | None] | None = None

    def __getitem__(self, node: Any) -> torch.dtype | None:
        if not isinstance(node, Node):
            return node.dtype if isinstance(node, torch.Tensor) else None
        if self._dtypes is None:
            self._dtypes = self._sweep()
        return self._dtypes.get(node)

    def _sweep(self) -> dict[Node, torch.dtype | None]:
        out: dict[Node, torch.dtype | None] = {}
        default = model_dtype(self._root)
        lookup = out.get
        for node in self._nodes:
            dtype = node_dtype(node)
            if dtype is None:
                op = node.op
                if op == "placeholder":
                    dtype = default
                elif op == "get_attr":
                    dtype = self._attr_dtype(node)
                elif op == "call_module":
                    dtype = self._module_dtype(node, out)
                elif op in ("call_function", "call_method"):
                    dtype = output_dtype(node, self._key(node), lookup)
            out[node] = dtype
        return out

    def _attr_dtype(self, node: Node) -> torch.dtype | None:
        obj = fetch_attr(self._root, node.target)
        return obj.dtype if isinstance(obj, torch.Tensor) and obj.is_floating_point() else None

    def _module_dtype(self, node: Node, out: dict[Node, torch.dtype | None]
                      ) -> torch.dtype | None:
        try:
            module = self._module_of(node.target)
        except AttributeError:
            module = None
        if module is not None:
            for p in module._parameters.values():  # its own: the common case
                if p is not None and p.is_floating_point():
                    return p.dtype
            if module._modules:  # a composite leaf (MultiheadAttention)
                for p in module.parameters():
                    if p.is_floating_point():
                        return p.dtype
        first = next((a for a in node.args if isinstance(a, Node)), None)
        return out.get(first) if first is not None else None
