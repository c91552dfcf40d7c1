"""Where a gate lives, its name, and its dtype: shared by the gates in the user's modules
(:mod:`zeta_fx.gates.inplace`) and the graph rewrite (:mod:`zeta_fx.gates.rewrite`).

A gate is registered under the module whose ``forward`` holds the merge and named after the
child of that module that holds the branch's last layer (``gate_<child>``); see
:mod:`zeta_fx.gates.rewrite` for the whole story.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.fx import Node

from zeta_fx.analysis.view import GraphView
from zeta_fx.rules.selection import Target

__all__ = ["CHANNELS_FIRST_MODULES", "innermost_module", "gate_name", "free_name",
           "layer_tensor"]

CHANNELS_FIRST_MODULES = (nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase,
                           nn.GroupNorm)


def innermost_module(node: Node) -> str:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    path = list(stack.values())[-1]
    path = path[0] if isinstance(path, tuple) else path
    return path if isinstance(path, str) else ""


def gate_name(owner_path: str, layers: tuple[str, ...]) -> str:
    """``gate_<child>``: the child of the owner that holds the branch's last layers."""
    prefix = f"{owner_path}." if owner_path else ""
    children = {layer[len(prefix):].split(".")[0] for layer in layers
                if layer.startswith(prefix) and len(layer) > len(prefix)}
    if len(children) == 1:
        (child,) = children
        if child.isidentifier() or child.isdigit():
            return f"gate_{child}"
    return "residual_gate"


def free_name(module: nn.Module, name: str) -> str:
    taken = lambda n: hasattr(module, n) or n in module._modules or \
        n in module._parameters or n in module._buffers  # noqa: E731
    if not taken(name):
        return name
    i = 1
    while taken(f"{name}_{i}"):
        i += 1
    return f"{name}_{i}"


def layer_tensor(view: GraphView, targets: list[Target]) -> torch.Tensor | None:
    """A floating parameter of the branch's last layers: the gate's dtype and device."""
    for t in targets:
        for p in t.params:
            tensor = view.params.get(p)
            if tensor is not None and tensor.is_floating_point():
                return tensor
    return None
