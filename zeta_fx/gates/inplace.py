"""Gates in the user's own modules: a parameter on the module that holds the merge, and a
forward hook on the branch's last layer that multiplies its output by it, wherever scaling
that output is exactly scaling the branch (the default of ``gate_residuals``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.fx import Node

from zeta_fx.analysis.view import GraphView
from zeta_fx.analysis.joins import Join
from zeta_fx.semantics.keys import op_key
from zeta_fx.semantics.tables import DIVIDE, LAYOUT_OPS, MULTIPLY, PASS_THROUGH
from zeta_fx.rules.selection import Skipped, Target
from zeta_fx.gates.placement import (CHANNELS_FIRST_MODULES, free_name, gate_name,
                                     innermost_module, layer_tensor)
from zeta_fx.gates.report import Gate, GatesReport

__all__ = ["GateHook", "gate_in_place"]


class GateHook:
    """The forward hook of an in-place gate: multiplies the module's output by the gate
    parameter ``name`` of ``home`` (the module whose forward holds the merge). A plain
    object, so that ``copy.deepcopy`` and pickling carry it with the model; ``dim`` is the
    channel dimension of a per-channel gate (``None``: a scalar gate, read as 0-d so it
    never promotes the output's dtype)."""

    def __init__(self, home: nn.Module, name: str, dim: int | None) -> None:
        self.home, self.name, self.dim = home, name, dim

    def __call__(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        gate = getattr(self.home, self.name)
        if self.dim is None:
            return output * gate.view(())
        dim = self.dim % output.dim()
        return output * gate.view((gate.shape[0],) + (1,) * (output.dim() - 1 - dim))


def _node_module(node: Node) -> str:
    """The FQN of the module a node computes in: a ``call_module``'s own, else the innermost
    of its recorded ``nn_module_stack``."""
    return str(node.target) if node.op == "call_module" else innermost_module(node)


def _passes_scaling(model: nn.Module, path: str) -> bool:
    """Whether a node computed inside the module at ``path`` maps ``α·v`` to ``α·(its
    value)``: dropout (a per-element mask and rescale) and identity modules."""
    try:
        module = model.get_submodule(path) if path else model
    except AttributeError:
        return False
    return isinstance(module, (nn.modules.dropout._DropoutNd, nn.Identity))


def _scales_through(node: Node, value: Node) -> bool:
    """Whether ``node`` maps ``α·value`` to ``α·node``: a layout op or cast of ``value``
    alone, or a product of ``value`` with (a quotient of it by) a factor that does not
    depend on it (a DiT block's ``gate * attn(x)``, ``h / rescale_output_factor``)."""
    if node.op not in ("call_function", "call_method"):
        return False
    key = op_key(node)[0]
    others = [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, Node)]
    if key in LAYOUT_OPS or key in PASS_THROUGH:
        return others == [value]
    if key in MULTIPLY:
        return others.count(value) == 1 and len(others) <= 2
    if key in DIVIDE:  # value / c: a diffusers attention's rescale_output_factor
        return bool(node.args) and node.args[0] is value and others.count(value) == 1
    return False


def _branch_end_module(model: nn.Module, view: GraphView, join: Join,
                       targets: list[Target]) -> tuple[str, str]:
    """The module whose output is the whole branch of ``join`` (``(fqn, "")``), or
    ``("", reason)`` saying why the gate must sit at the merge instead."""
    layers = list(dict.fromkeys(t.module for t in targets))
    if len(layers) != 1 or not layers[0]:
        return "", (f"the branch ends in {len(layers)} layers ({', '.join(layers) or 'the root'}"
                    "): no one module's output is the whole branch")
    layer = layers[0]
    nodes = {n for t in targets for n in t.nodes}
    uses = {c.name for t in targets for p in t.params for c in view.consumers.get(p, ())}
    if len(nodes) != 1 or uses - nodes:
        return "", f"`{layer}` is used at several nodes: a gate on its output would scale all"
    operands = [o for o in join.branch_operands]
    if len(operands) != 1 or not isinstance(operands[0], Node):
        return "", (f"the merge `{join.merge.name}` adds {len(operands)} branch summands: "
                    f"scaling `{layer}` alone would not scale them all")
    node = view.by_name[next(iter(nodes))]
    home = _node_module(node)
    if home != layer and not home.startswith(layer + "."):
        return "", (f"`{layer}`'s parameters are used by `{home or 'the root'}` without "
                    f"calling `{layer}`: a hook on its output would never run")
    operand = operands[0]
    while node is not operand:
        users = view.data_users.get(node, [])
        if len(users) != 1:
            return "", (f"the output of `{layer}` has {len(users)} uses on the way to the "
                        f"merge `{join.merge.name}`")
        previous, node = node, users[0]
        path = _node_module(node)
        inside = path == layer or path.startswith(layer + ".")
        if node is not join.merge and not inside and not _passes_scaling(model, path) \
                and not _scales_through(node, previous):
            return "", (f"between `{layer}` and the merge `{join.merge.name}` the branch "
                        f"passes `{node.name}`" + (f" (in `{path}`)" if path else "")
                        + ", which scaling the layer's output is not proven to pass")
        if node is join.merge:
            return "", f"the output of `{layer}` does not reach `{join.merge.name}` alone"
    return layer, ""


def gate_in_place(model: nn.Module, view: GraphView, joins: dict[str, Join],
                   targets: dict[str, list[Target]], skipped: list[Skipped], init: float,
                   channel_dim: bool | int, rule: str) -> GatesReport:
    """Register each gate on the module that holds its merge and hook the branch's last
    module; every join where that is not exactly scaling the branch is left alone."""
    plans = []
    for merge in sorted(targets, key=lambda name: view.index[joins[name].merge]):
        join = joins[merge]
        layer, why = _branch_end_module(model, view, join, targets[merge])
        if not layer:
            skipped.append(Skipped(merge, innermost_module(join.merge), f"{why}; a gate "
                                   "must sit at the merge itself: pass graph=True for a graph "
                                   "rewrite that gates it there", rule))
            continue
        module = model.get_submodule(layer)
        like = layer_tensor(view, targets[merge])
        dim: int | None = None
        shape: tuple[int, ...] = (1,)
        if channel_dim is not False:
            if like is None or like.dim() == 0:
                skipped.append(Skipped(merge, layer, f"`{layer}` has no parameter with a "
                                       "channel count for a per-channel gate", rule))
                continue
            dim = (1 if isinstance(module, CHANNELS_FIRST_MODULES) else -1) \
                if channel_dim is True else channel_dim
            shape = (like.shape[0],)
        plans.append((join, layer, module, like, dim, shape))
    gates = []
    for join, layer, module, like, dim, shape in plans:  # all decided: now write
        owner_path = innermost_module(join.merge)
        try:
            home = model.get_submodule(owner_path) if owner_path else model
        except AttributeError:
            owner_path, home = "", model
        name = free_name(home, gate_name(owner_path, (layer,)))
        home.register_parameter(name, nn.Parameter(torch.full(
            shape, init, dtype=like.dtype if like is not None else torch.get_default_dtype(),
            device=like.device if like is not None else None)))
        module.register_forward_hook(GateHook(home, name, dim))
        fqn = f"{owner_path}.{name}" if owner_path else name
        position = "; ".join(dict.fromkeys(t.position for t in targets[join.merge.name]))
        operands = tuple(o.name for o in join.branch_operands if isinstance(o, Node))
        gates.append(Gate(fqn, join.merge.name, join.skip.name if join.skip is not None
                          else "", operands, (layer,), position, shape, dim, init))
    return GatesReport(type(model).__name__, rule, tuple(gates), tuple(skipped))
