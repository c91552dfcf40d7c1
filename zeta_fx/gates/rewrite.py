"""The graph rewrite (``gate_residuals(..., graph=True)``): a new ``GraphModule`` in which
each merge the rule accepts computes ``skip + α·(everything else the merge adds)``.

The construction, and why it is bit-exact
-----------------------------------------
A merge is a sum tree of additive nodes (``+``, ``+=``, ``-``, ``torch.add(..., alpha=)``,
``.add_``, ``torch.stack([...]).sum(0)``) whose leaves are the skip and the branch
operands. The path from the skip up to the merge is kept as it is; every other operand that
enters a node on that path is replaced by ``operand * α`` — a whole sub-sum when a sub-sum
holds branch operands only (``x + (f + b)`` becomes ``x + (f + b)·α``), each operand where
the branch operands enter the sum separately (``f + b + x`` becomes ``f·α + b·α + x``); a
constant summand is left as it is (the rule's proof admits one only when it is zero). The
additions run in the same order on the same values: ``v * 1.0`` is ``v`` exactly in IEEE
arithmetic (``-0.0``, infinities and subnormals included), so with ``α = 1`` every output is
the original's bit for bit. Computing ``merge - skip`` and adding it back is not: float
addition does not round-trip. With ``α = 0`` every gated operand is ``0·v``, a zero for
every finite ``v``, and the merge equals its skip exactly (a branch that produces an
infinity or a NaN still poisons it: ``0·inf`` is NaN).

Where α lives, and its name
---------------------------
The gate is registered under the module whose ``forward`` holds the merge (the innermost
module in the merge node's ``nn_module_stack``; the root for a merge in the model's own
forward) and named after the branch: ``gate_<child>``, ``<child>`` the submodule of that
module that holds the branch's last layer (``h.0.gate_attn``, ``h.0.gate_mlp``,
``layer1.0.gate_bn2``), or ``residual_gate`` where the branch's last layers sit in several
children or in the module itself. A name already taken gets a suffix (``gate_attn_1``),
so no original name is ever shadowed.

α is a 1-element tensor of shape ``(1,)`` (read as a 0-d scalar in the graph, so it never
promotes the branch's dtype or changes its shape): FSDP2's ``fully_shard`` refuses 0-d
parameters ("fully_shard doesn't support scalar parameters"). ``per_channel=True`` gives
one gate per channel of the merge, shape ``(C,)``, broadcast over the channel dimension:
dimension 1 when the branch's last layer is a convolution or a BatchNorm, GroupNorm or
InstanceNorm and the merge has three dimensions or more, the last dimension otherwise;
``per_channel=<int>`` names the dimension. The channel count comes from the shapes the
capture recorded (``torch.export``) or from running the graph on fake copies of
``example_inputs`` (``ShapeProp`` in a ``FakeTensorMode``: nothing is computed or
written). α takes the dtype and device of the branch's last layer parameters.

What the returned module shares
-------------------------------
Like ``torch.fx.symbolic_trace``, the returned ``GraphModule`` holds the original's own
parameter and buffer tensors (and its leaf modules): nothing is copied, the model may be
on the meta device, and training the gated module trains those tensors. The caller's model
itself is never modified: the gates live on the returned module's own containers, no
attribute is added to any of the model's modules, and its ``forward`` and ``state_dict``
stay what they were (``copy.deepcopy(model)`` first to keep its values apart). Every
parameter and buffer keeps its FQN, so ``gated.state_dict()`` holds every key of
``model.state_dict()``, with the same tensors, and the gates' keys besides: checkpoints
load with ``strict=False`` (only the gates are missing) and optimizer groups by name still
match. On the meta device the gates are meta tensors too: after ``to_empty()`` set them
again (``torch.nn.init.constant_(gated.get_parameter(name), init)`` for each ``name`` in
``report.names``).

Under FSDP2, shard the returned module whole, or the leaf modules its graph calls
(``call_module`` targets) and then the root, which holds the gates: the containers of a
traced module (``gated.h[0]``) are not called by the flattened graph, so a ``fully_shard``
on one of them would never gather its parameters.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx, nn
from torch.fx import Node

from zeta_fx.analysis.view import GraphView
from zeta_fx.analysis.joins import Join
from zeta_fx.errors import ExampleInputsError, GateError
from zeta_fx.semantics.keys import bind, op_key
from zeta_fx.semantics.tables import CHANNELS_FIRST
from zeta_fx.rules.selection import Skipped, Target
from zeta_fx.capture.tracer import first_line
from zeta_fx.apply.verify import graph_args
from zeta_fx.gates.placement import (CHANNELS_FIRST_MODULES, free_name, gate_name,
                                     innermost_module, layer_tensor)
from zeta_fx.gates.report import META_KEY, Gate, GatesReport

__all__ = ["gate_graph"]


def gate_graph(model: nn.Module, gm: fx.GraphModule, view: GraphView, joins: dict[str, Join],
               targets: dict[str, list[Target]], skipped: list[Skipped], init: float,
               channel_dim: bool | int, rule: str, example_inputs: Any,
               example_kwargs: dict[str, Any] | None) -> fx.GraphModule:
    """The graph rewrite (``gate_residuals(..., graph=True)``): a new ``GraphModule`` over
    ``gm``'s tensors with a gate at each merge of ``targets``, and its :class:`GatesReport`
    in ``meta[META_KEY]``."""
    result = _graph_module_over(gm, model)
    nodes = {n.name: n for n in result.graph.nodes}
    shapes = {}
    if channel_dim is not False and targets:
        shapes = _merge_shapes(result, list(targets), example_inputs, example_kwargs)
    shared = {id(m) for m in model.modules()}  # modules the gates must never be added to
    gates = []
    for merge in sorted(targets, key=lambda name: view.index[joins[name].merge]):
        shape = shapes.get(merge)
        dim = None if channel_dim is False else _channel_dim(
            channel_dim, shape, targets[merge], nodes, result, merge)
        gates.append(_insert_gate(result, nodes, joins[merge], targets[merge], view,
                                  shared, init, dim, shape))
    result.graph.lint()
    result.recompile()
    result.meta[META_KEY] = GatesReport(type(model).__name__, rule, tuple(gates),
                                        tuple(skipped))
    return result


# -- the returned module ----------------------------------------------------------------------

def _graph_module_over(gm: fx.GraphModule, model: nn.Module) -> fx.GraphModule:
    """A new ``GraphModule`` with a copy of ``gm``'s graph over the same tensors, every FQN of
    ``model`` present, and no module of ``model`` among the containers it may add to."""
    graph = fx.Graph()
    graph.output(graph.graph_copy(gm.graph, {}))
    result = fx.GraphModule(gm, graph, type(model).__name__)
    persistent = set(model.state_dict().keys())
    shared = {id(m) for m in model.modules()}
    # what the forward does not use, GraphModule does not copy: the unused modules as they
    # are, then the unused tensors of the modules the trace went through
    for fqn, module in model.named_modules(remove_duplicate=False):
        parent_path, _, name = fqn.rpartition(".")
        parent = _container(result, parent_path, shared) if fqn else None
        if parent is not None and name not in parent._modules:
            parent.add_module(name, module)
    tensors = list(model.named_parameters(remove_duplicate=False)) + \
        list(model.named_buffers(remove_duplicate=False))
    for fqn, tensor in tensors:
        if _lookup(result, fqn) is not None:
            continue
        owner_path, _, name = fqn.rpartition(".")
        owner = _container(result, owner_path, shared)
        if owner is None:
            continue  # under one of the model's own modules, which hold it already
        if isinstance(tensor, nn.Parameter):
            owner.register_parameter(name, tensor)
        else:
            owner.register_buffer(name, tensor, persistent=fqn in persistent)
    # GraphModule registers a buffer read by get_attr as persistent: keep the model's word
    for fqn, _ in result.named_buffers(remove_duplicate=False):
        owner_path, _, name = fqn.rpartition(".")
        owner = result.get_submodule(owner_path)
        if fqn not in persistent and id(owner) not in shared:
            owner._non_persistent_buffers_set.add(name)
    return result


def _lookup(root: nn.Module, fqn: str) -> Any:
    *path, name = fqn.split(".")
    module = root
    for part in path:
        module = module._modules.get(part)
        if module is None:
            return None
    return module._parameters.get(name, module._buffers.get(name))


def _container(root: nn.Module, path: str, shared: set[int]) -> nn.Module | None:
    """The module at ``path`` under ``root``, made (as a plain ``nn.Module``) where missing;
    ``None`` where it would be one of the model's own modules."""
    module = root
    for part in path.split(".") if path else ():
        child = module._modules.get(part)
        if child is None:
            if id(module) in shared:
                return None
            child = nn.Module()
            module.add_module(part, child)
        module = child
    return None if id(module) in shared else module


# -- shapes and channels ----------------------------------------------------------------------

def _value_meta(node: Node) -> tuple[tuple[int, ...], torch.dtype] | None:
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        return tuple(val.shape), val.dtype
    meta = node.meta.get("tensor_meta")
    if meta is not None and hasattr(meta, "shape"):
        return tuple(meta.shape), meta.dtype
    return None


def _merge_shapes(result: fx.GraphModule, merges: list[str], example_inputs: Any,
                  example_kwargs: dict[str, Any] | None) -> dict[str, tuple[int, ...]]:
    """The shape of each merge value: recorded by the capture, or propagated on fake copies
    of the example inputs (nothing runs, no buffer of the model is written)."""
    nodes = {n.name: n for n in result.graph.nodes}
    if any(_value_meta(nodes[m]) is None for m in merges):
        if example_inputs is None and not example_kwargs:
            raise ExampleInputsError(
                f"per_channel gates need the shape of each merge, and the captured graph "
                f"does not record `{merges[0]}`'s; pass example_inputs=(...) (and/or "
                "example_kwargs={...}) shaped like a real batch")
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.fx.passes.shape_prop import ShapeProp

        args = graph_args(result, example_inputs, example_kwargs)
        try:
            ShapeProp(result, fake_mode=FakeTensorMode(allow_non_fake_inputs=True)).propagate(*args)
        except Exception as exc:
            raise ExampleInputsError(
                f"per_channel gates need the shape of each merge, and running the graph on "
                f"fake copies of example_inputs failed: {type(exc).__name__}: "
                f"{first_line(exc)}; pass inputs that the model's forward accepts, on the "
                "model's device") from exc
    shapes = {}
    for m in merges:
        meta = _value_meta(nodes[m])
        if meta is None:
            raise ExampleInputsError(f"the shape of merge `{m}` is unknown after running the "
                                     "graph on the example inputs (it is not a tensor)")
        shapes[m] = meta[0]
    return shapes


def _channel_dim(requested: bool | int, shape: tuple[int, ...] | None, targets: list[Target],
                 nodes: dict[str, Node], result: fx.GraphModule, merge: str) -> int:
    """The dimension a per-channel gate runs along (non-negative)."""
    ndim = len(shape or ())
    if ndim == 0:
        raise GateError(f"merge `{merge}` is a scalar: it has no channels for a per-channel "
                        "gate; use per_channel=False")
    if requested is True:
        first = ndim >= 3 and any(_channels_first(nodes.get(name), result)
                                  for t in targets for name in t.nodes)
        return 1 if first else ndim - 1
    if not -ndim <= requested < ndim:
        raise GateError(f"per_channel={requested} is not a dimension of merge `{merge}` "
                        f"(shape {tuple(shape)}); pass a dim in [{-ndim}, {ndim - 1}]")
    return requested % ndim


def _channels_first(node: Node | None, result: fx.GraphModule) -> bool:
    """Whether the layer at ``node`` puts channels at dim 1 (conv, BatchNorm, GroupNorm)."""
    if node is None:
        return False
    if node.op == "call_module":
        return isinstance(result.get_submodule(node.target), CHANNELS_FIRST_MODULES)
    return op_key(node)[0] in CHANNELS_FIRST


# -- the rewrite ------------------------------------------------------------------------------

def _insert_gate(result: fx.GraphModule, nodes: dict[str, Node], join: Join,
                 targets: list[Target], view: GraphView, shared: set[int], init: float,
                 dim: int | None, shape: tuple[int, ...] | None) -> Gate:
    graph = result.graph
    merge, skip = nodes[join.merge.name], nodes[join.skip.name]
    inner = {nodes[n.name] for n in join.inner}
    owner_path = innermost_module(merge)
    home_path, home = _home(result, owner_path, shared)
    layers = tuple(dict.fromkeys(t.module for t in targets))
    prefix = owner_path.replace(".", "_") + "_" if home_path != owner_path else ""
    name = free_name(home, prefix + gate_name(owner_path, layers))
    fqn = f"{home_path}.{name}" if home_path else name

    like = layer_tensor(view, targets)
    gate_shape = (1,) if dim is None else (shape[dim],)
    home.register_parameter(name, nn.Parameter(torch.full(
        gate_shape, init, dtype=like.dtype if like is not None else torch.get_default_dtype(),
        device=like.device if like is not None else None)))

    path = _sum_path(merge, skip, inner)
    holders = [holder for _, holder in path]
    kept = {skip, *(node for node, _ in path)}  # the skip and the sums that hold it
    with graph.inserting_before(min(holders, key=_position(graph))):
        alpha = graph.get_attr(fqn)
        if dim is None:
            alpha = graph.call_function(torch.Tensor.view, (alpha, ()))
        elif dim != len(shape) - 1:  # (C, 1, ..., 1): aligned with dim from the right
            trailing = (1,) * (len(shape) - 1 - dim)
            alpha = graph.call_function(torch.Tensor.view, (alpha, (shape[dim], *trailing)))
    gated: list[str] = []

    def gate(value: Any, holder: Node) -> Any:
        if not isinstance(value, Node) or value in kept:
            return value  # a constant summand: the proof admits one only as a zero
        with graph.inserting_before(holder):
            out = graph.call_function(operator.mul, (value, alpha))
        gated.append(value.name)
        return out

    for holder in holders:
        _map_summands(holder, lambda v, h=holder: gate(v, h))
    position = "; ".join(dict.fromkeys(t.position for t in targets))
    return Gate(fqn, merge.name, skip.name, tuple(gated), layers, position, gate_shape,
                dim, init)


def _sum_path(merge: Node, skip: Node, inner: set[Node]) -> list[tuple[Node, Node]]:
    """The additive nodes from the one that adds the skip up to the merge, each with the
    node whose arguments are its summands (for ``torch.stack([...]).sum(0)``, the stack):
    their other summands get the gate."""
    parent: dict[Node, Node] = {}
    holder_of_skip = None
    for node in (merge, *inner):
        holder = _summands_holder(node)
        for value in _summands(holder):
            if value is skip:
                holder_of_skip = node
            elif isinstance(value, Node) and value in inner:
                parent[value] = node
    path = []
    node = holder_of_skip
    while node is not None:
        path.append((node, _summands_holder(node)))
        node = parent.get(node)
    return path


def _summands_holder(node: Node) -> Node:
    """The node whose arguments are the summands: the stack of a stack-sum, else ``node``."""
    if op_key(node)[0] == "sum":
        source = bind(node).get("input")
        if isinstance(source, Node):
            return source
    return node


def _summands(holder: Node) -> list[Any]:
    out: list[Any] = []
    _map_summands(holder, lambda v: out.append(v) or v, write=False)
    return out


def _map_summands(holder: Node, fn, *, write: bool = True) -> None:
    """Apply ``fn`` to each summand argument of ``holder`` (not ``alpha``, not a stack's dim)."""
    if op_key(holder)[0] == "stack":
        tensors = holder.args[0] if holder.args else holder.kwargs["tensors"]
        mapped = [fn(v) for v in tensors]
        if write:
            if holder.args:
                holder.args = (mapped, *holder.args[1:])
            else:
                holder.kwargs = {**holder.kwargs, "tensors": mapped}
        return
    args = tuple(fn(v) for v in holder.args)
    kwargs = {k: v if k in ("alpha", "out") else fn(v) for k, v in holder.kwargs.items()}
    if write:
        holder.args, holder.kwargs = args, kwargs


def _position(graph: fx.Graph):
    index = {n: i for i, n in enumerate(graph.nodes)}
    return index.__getitem__


def _home(result: fx.GraphModule, owner_path: str, shared: set[int]) -> tuple[str, nn.Module]:
    """The module of ``result`` that gets the gate: the one at ``owner_path``, or, where that
    is one of the model's own modules (a leaf), the root."""
    home = _container(result, owner_path, shared)
    return (owner_path, home) if home is not None else ("", result)
