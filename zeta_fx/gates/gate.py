"""Gating residual branches (ReZero, SkipInit): rewrite each join ``s + f`` into ``s + α·f``.

``gate_residuals`` traces a model, lets a rule find its residual joins (the same capture,
analysis, rules and proof as ``zero_init_pass``) and makes every join the rule accepted
compute ``skip + α·(everything else the merge adds)``, with ``α`` a new ``nn.Parameter``
initialised to ``init``. By default the gates go into the user's own model (a parameter on
the module that holds the merge, a forward hook on the branch's last layer, wherever scaling
that layer's output is exactly scaling the branch; see :func:`gate_residuals`) and a
:class:`GatesReport` is returned. ``graph=True`` returns instead a new
``torch.fx.GraphModule`` with the gates at the merges; the rest of this docstring describes
that rewrite. With ``init=0.0`` every
gated block starts as the identity while its layers keep their own initialisation and
gradients (ReZero, Bachlechner et al. 2020; SkipInit, De & Smith 2020).

>>> import torch
>>> from torch import nn
>>> from zeta_fx import gate_residuals
>>> class PreNormMLP(nn.Module):
...     def __init__(self, width=8):
...         super().__init__()
...         self.norm = nn.LayerNorm(width)
...         self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(),
...                                  nn.Linear(4 * width, width))
...     def forward(self, x):
...         return x + self.mlp(self.norm(x))
>>> block = PreNormMLP()
>>> gated = gate_residuals(block, init=0.0, graph=True)
>>> [(g.name, g.merge, g.skip, g.layers) for g in gated.meta["zeta_fx_gates"].gates]
[('gate_mlp', 'add', 'x', ('mlp.2',))]
>>> x = torch.randn(2, 8)
>>> torch.equal(gated(x), x)  # alpha = 0: the block is the identity
True
>>> torch.equal(gate_residuals(block, init=1.0, graph=True)(x), block(x))  # alpha = 1: exact
True

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

The report
----------
``gated.meta["zeta_fx_gates"]`` (also :meth:`GatesReport.of`) is a frozen
:class:`GatesReport`: one :class:`Gate` per inserted parameter (its FQN, the merge and skip
nodes, the operands it multiplies, the branch's last layers, the rule's position, shape,
dim and init) and the candidates left alone with the rule's reasons; ``str(report)`` is a
table. ``GraphModule.meta`` is the graph module's own metadata dict: the report is data
next to the graph, not an attribute of a module, and it follows ``copy.deepcopy``.
"""

from __future__ import annotations

import json
import math
import numbers
import operator
from dataclasses import asdict, dataclass
from typing import Any, Iterable

import torch
from tabulate import tabulate
from torch import fx, nn
from torch.fx import Node

from zeta_fx.analysis.view import GraphView
from zeta_fx.capture.methods import LeafSpec
from zeta_fx.errors import ExampleInputsError, GateError
from zeta_fx.semantics.keys import bind, op_key
from zeta_fx.semantics.tables import (CHANNELS_FIRST, DIVIDE, LAYOUT_OPS, MULTIPLY,
                                      PASS_THROUGH)
from zeta_fx.analysis.joins import Join
from zeta_fx.rules.base import Rule
from zeta_fx.api import trace_and_select
from zeta_fx.rules.selection import Selection, Skipped, Target
from zeta_fx.capture.tracer import first_line
from zeta_fx.apply.verify import graph_args
from zeta_fx.words import format_shape, plural

__all__ = ["gate_residuals", "Gate", "GatesReport", "GateHook", "META_KEY"]

META_KEY = "zeta_fx_gates"  # the key of the report in the returned GraphModule's ``meta``

_CHANNELS_FIRST_MODULES = (nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase,
                           nn.GroupNorm)


@dataclass(frozen=True)
class Gate:
    """One inserted gate: ``merge`` now computes ``skip + name·(operands)``.

    ``name`` is the parameter's FQN in the returned module; ``merge``, ``skip`` and
    ``operands`` (the summands it multiplies) are node names of its graph; ``layers`` are
    the module FQNs of the branch's last layers, as the rule found them, and ``position``
    the rule's words for where they sit. ``dim`` is the channel dimension of a per-channel
    gate (``None`` for a scalar one).
    """

    name: str
    merge: str
    skip: str
    operands: tuple[str, ...]
    layers: tuple[str, ...]
    position: str
    shape: tuple[int, ...]
    dim: int | None
    init: float


@dataclass(frozen=True)
class GatesReport:
    """What ``gate_residuals`` inserted, and what the rule left alone (with its reasons).

    >>> from torch import nn
    >>> from zeta_fx import gate_residuals
    >>> report = gate_residuals(nn.Sequential(nn.Linear(2, 2)))
    >>> report.names, report.summary()
    ([], 'Sequential: rule residual_branch_last found nothing to gate (0 candidates left alone)')
    """

    model: str
    rule: str
    gates: tuple[Gate, ...] = ()
    skipped: tuple[Skipped, ...] = ()

    @staticmethod
    def of(gm: fx.GraphModule) -> "GatesReport":
        """The report ``gate_residuals`` stored in ``gm.meta``."""
        report = getattr(gm, "meta", {}).get(META_KEY)
        if not isinstance(report, GatesReport):
            raise GateError(f"{type(gm).__name__} holds no gates report (gm.meta[{META_KEY!r}]); "
                            "it is set on the GraphModule that gate_residuals returns")
        return report

    @property
    def names(self) -> list[str]:
        """FQNs of the inserted parameters (an optimizer group of their own, say)."""
        return [g.name for g in self.gates]

    @property
    def elements(self) -> int:
        return sum(math.prod(g.shape) for g in self.gates)

    def summary(self) -> str:
        left_alone = f"{plural(len(self.skipped), 'candidate')} left alone"
        if not self.gates:
            return f"{self.model}: rule {self.rule} found nothing to gate ({left_alone})"
        return (f"{self.model}: rule {self.rule} gated {plural(len(self.gates), 'residual join')} "
                f"with {plural(self.elements, 'new parameter element')}; {left_alone}")

    def table(self, tablefmt: str = "simple") -> str:
        parts = []
        if self.gates:
            rows = [[g.name, format_shape(g.shape) + ("" if g.dim is None else f" (dim {g.dim})"),
                     f"{g.init:g}", g.merge, g.skip, ", ".join(g.layers) or "-", g.position]
                    for g in self.gates]
            parts.append(tabulate(rows, headers=["gate", "shape", "init", "merge", "skip",
                                                 "branch last layers", "position"],
                                  tablefmt=tablefmt, disable_numparse=True))
        parts.append(self.summary())
        if self.skipped:
            parts.append("left alone:")
            parts.append(tabulate([[s.node, s.module or "-", s.reason] for s in self.skipped],
                                  headers=["node", "module", "reason"], tablefmt=tablefmt,
                                  disable_numparse=True))
        return "\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (lists, strings and numbers)."""
        return {"model": self.model, "rule": self.rule,
                "gates": [{k: list(v) if isinstance(v, tuple) else v
                           for k, v in asdict(g).items()} for g in self.gates],
                "skipped": [asdict(s) for s in self.skipped]}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def __str__(self) -> str:
        return self.table()

    def __format__(self, spec: str) -> str:
        return self.table(spec or "simple")


def gate_residuals(model: nn.Module, rule: Rule | str = "residual_branch_last",
                   init: float = 0.0, *, per_channel: bool | int = False,
                   example_inputs: tuple[Any, ...] | None = None,
                   example_kwargs: dict[str, Any] | None = None,
                   leaf_modules: Iterable[LeafSpec] = (),
                   capture: str = "auto",
                   graph: bool = False) -> "GatesReport | fx.GraphModule":
    """Gate each residual join ``s + f`` the rule accepts: ``s + α·f``, ``α`` a new
    parameter set to ``init``.

    By default the gates go into the user's own module tree and a :class:`GatesReport` is
    returned: where the branch's last layer is one module whose output reaches the merge
    unchanged (or through dropout / identity modules, which scaling passes through), scaling
    that output is exactly scaling the branch, so ``α`` is registered on the module whose
    forward holds the merge (``h.0.gate_attn``) and a forward hook on the last layer
    multiplies its output by it. The model keeps its class, its methods (``generate``), its
    attributes (``config``), its keyword arguments and dynamic shapes; its ``state_dict``
    gains the gates' keys only; ``α = 1`` is bit-exact (``v * 1.0`` is ``v``); and
    ``torch.compile`` and ``copy.deepcopy`` carry the gates. A join where the gate must sit
    at the merge itself (the branch ends in several layers, a summand besides the layer, an
    op between the layer and the merge) is left alone and the report says so.

    ``graph=True`` is the opt-in graph rewrite: the model is left as it is, and a new
    ``GraphModule`` is returned in which every join the rule accepts is gated at the merge
    (``gm.meta["zeta_fx_gates"]`` holds the report):

    ``model`` is an ``nn.Module`` (traced with ``symbolic_trace``, or with ``torch.export``
    / a concrete capture on ``example_inputs`` when symbolic tracing fails; ``capture``
    forces one) or a ``GraphModule``; DDP and ``torch.compile`` wrappers are seen through.
    A join is gated exactly when the rule's proof keeps a claim on it (the rule's settled
    targets name it as their merge); every other candidate is listed in the report with the
    rule's reason. ``per_channel=True`` gives one gate per channel (``per_channel=<int>``:
    along that dimension) and needs the merges' shapes: from the capture, or from
    ``example_inputs``. See the module docstring for the construction, the names, and the
    report in ``gm.meta["zeta_fx_gates"]``.

    The caller's model is not modified; the returned module shares its parameter tensors.
    It is called like the captured graph: with the forward's arguments, returning what the
    graph returns (for a ``torch.export`` capture, the flat outputs: a Hugging Face model's
    logits come first in a tuple, not in a ``ModelOutput``).
    """
    init = _check_init(init)
    channel_dim = _check_per_channel(per_channel)
    traced = trace_and_select(model, rule, verb="gate_residuals",
                              example_inputs=example_inputs, example_kwargs=example_kwargs,
                              leaf_modules=leaf_modules, capture=capture,
                              use_cache_off=False)
    model, gm, view, rule_obj, selection = (traced.model, traced.gm, traced.view, traced.rule,
                                            traced.selection)
    joins = view.residual_joins
    targets, skipped = _gated_targets(selection, joins)

    for merge in targets:  # every gate's value, in the dtype it is stored in, before any
        like = _layer_tensor(view, targets[merge])
        _check_init_fits(init, like.dtype if like is not None else torch.get_default_dtype(),
                         merge, targets[merge])
    if not graph:
        return _gate_in_place(model, view, joins, targets, skipped, init, channel_dim,
                              rule_obj.name)
    result = _graph_module_over(gm, model)
    nodes = {n.name: n for n in result.graph.nodes}
    shapes = {}
    if channel_dim is not False and targets:
        shapes = _merge_shapes(result, list(targets), example_inputs, traced.example_kwargs)
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
    result.meta[META_KEY] = GatesReport(type(model).__name__, rule_obj.name, tuple(gates),
                                        tuple(skipped))
    return result


# -- arguments ------------------------------------------------------------------------------

def _check_init(init: Any) -> float:
    if isinstance(init, bool) or not isinstance(init, numbers.Real) or \
            not math.isfinite(float(init)):
        raise GateError(f"init must be a finite number, the starting value of every gate "
                        f"(0.0 for ReZero/SkipInit, 1.0 to keep the model's output), got "
                        f"{init!r}")
    return float(init)


def _check_init_fits(init: float, dtype: torch.dtype, merge: str, targets: list[Target]) -> None:
    """Refuse an ``init`` that the gate's dtype (its branch's last layer's) cannot hold: beyond
    its largest finite value (the gate would be ``inf``), or non-zero but rounding to zero."""
    if not dtype.is_floating_point:
        return
    info = torch.finfo(dtype)
    layers = ", ".join(f"`{m}`" for m in dict.fromkeys(t.module for t in targets)) or "-"
    name = str(dtype).removeprefix("torch.")
    where = (f"the gate of merge `{merge}` is {name}, the dtype of its branch's last layer "
             f"({layers})")
    stored = float(torch.tensor(init, dtype=torch.float64, device="cpu").to(dtype))
    if not math.isfinite(stored):
        raise GateError(f"init={init!r} does not fit: {where}, whose largest finite value is "
                        f"{info.max:g}, so the gate would be inf. Pass an init within "
                        f"±{info.max:g} (0.0 for ReZero/SkipInit, 1.0 to keep the output); "
                        "nothing was changed")
    if init != 0 and stored == 0:
        raise GateError(f"init={init!r} does not fit: {where}, in which it rounds to 0 (the "
                        f"smallest positive {name} is {info.smallest_normal:g} normal), so the "
                        "gate would start closed. Pass init=0.0 for a closed gate, or a larger "
                        "value; nothing was changed")


def _check_per_channel(per_channel: Any) -> bool | int:
    """``False`` (scalar gates), ``True`` (channel dim inferred) or a dim."""
    if isinstance(per_channel, bool):
        return per_channel
    if isinstance(per_channel, int):
        return per_channel
    raise GateError(f"per_channel must be True, False or a dimension (an int), got "
                    f"{per_channel!r}")


# -- which joins ------------------------------------------------------------------------------

def _gated_targets(selection: Selection, joins: dict[str, Join]
                   ) -> tuple[dict[str, list[Target]], list[Skipped]]:
    """The settled targets grouped by the residual join they claim; the others left alone."""
    targets: dict[str, list[Target]] = {}
    skipped = list(selection.skipped)
    for t in selection.targets:
        if t.merge in joins:
            targets.setdefault(t.merge, []).append(t)
            continue
        why = ("its residual branches are hidden inside an opaque leaf: no merge in the "
               "graph to gate" if t.cover.startswith("composite:") else
               "not a residual branch: the rule claims a zero value here, not a merge")
        skipped.append(Skipped(t.nodes[0] if t.nodes else "", t.module,
                               f"{t.position}: {why}", t.rule))
    return targets, skipped


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
        return isinstance(result.get_submodule(node.target), _CHANNELS_FIRST_MODULES)
    return op_key(node)[0] in CHANNELS_FIRST


# -- the rewrite ------------------------------------------------------------------------------

def _insert_gate(result: fx.GraphModule, nodes: dict[str, Node], join: Join,
                 targets: list[Target], view: GraphView, shared: set[int], init: float,
                 dim: int | None, shape: tuple[int, ...] | None) -> Gate:
    graph = result.graph
    merge, skip = nodes[join.merge.name], nodes[join.skip.name]
    inner = {nodes[n.name] for n in join.inner}
    owner_path = _innermost_module(merge)
    home_path, home = _home(result, owner_path, shared)
    layers = tuple(dict.fromkeys(t.module for t in targets))
    prefix = owner_path.replace(".", "_") + "_" if home_path != owner_path else ""
    name = _free_name(home, prefix + _gate_name(owner_path, layers))
    fqn = f"{home_path}.{name}" if home_path else name

    like = _layer_tensor(view, targets)
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


def _innermost_module(node: Node) -> str:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    path = list(stack.values())[-1]
    path = path[0] if isinstance(path, tuple) else path
    return path if isinstance(path, str) else ""


def _home(result: fx.GraphModule, owner_path: str, shared: set[int]) -> tuple[str, nn.Module]:
    """The module of ``result`` that gets the gate: the one at ``owner_path``, or, where that
    is one of the model's own modules (a leaf), the root."""
    home = _container(result, owner_path, shared)
    return (owner_path, home) if home is not None else ("", result)


def _gate_name(owner_path: str, layers: tuple[str, ...]) -> str:
    """``gate_<child>``: the child of the owner that holds the branch's last layers."""
    prefix = f"{owner_path}." if owner_path else ""
    children = {layer[len(prefix):].split(".")[0] for layer in layers
                if layer.startswith(prefix) and len(layer) > len(prefix)}
    if len(children) == 1:
        (child,) = children
        if child.isidentifier() or child.isdigit():
            return f"gate_{child}"
    return "residual_gate"


def _free_name(module: nn.Module, name: str) -> str:
    taken = lambda n: hasattr(module, n) or n in module._modules or \
        n in module._parameters or n in module._buffers  # noqa: E731
    if not taken(name):
        return name
    i = 1
    while taken(f"{name}_{i}"):
        i += 1
    return f"{name}_{i}"


def _layer_tensor(view: GraphView, targets: list[Target]) -> torch.Tensor | None:
    """A floating parameter of the branch's last layers: the gate's dtype and device."""
    for t in targets:
        for p in t.params:
            tensor = view.params.get(p)
            if tensor is not None and tensor.is_floating_point():
                return tensor
    return None



# -- gates in the user's own modules -------------------------------------------------------

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
    return str(node.target) if node.op == "call_module" else _innermost_module(node)


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


def _gate_in_place(model: nn.Module, view: GraphView, joins: dict[str, Join],
                   targets: dict[str, list[Target]], skipped: list[Skipped], init: float,
                   channel_dim: bool | int, rule: str) -> GatesReport:
    """Register each gate on the module that holds its merge and hook the branch's last
    module; every join where that is not exactly scaling the branch is left alone."""
    plans = []
    for merge in sorted(targets, key=lambda name: view.index[joins[name].merge]):
        join = joins[merge]
        layer, why = _branch_end_module(model, view, join, targets[merge])
        if not layer:
            skipped.append(Skipped(merge, _innermost_module(join.merge), f"{why}; a gate "
                                   "must sit at the merge itself: pass graph=True for a graph "
                                   "rewrite that gates it there", rule))
            continue
        module = model.get_submodule(layer)
        like = _layer_tensor(view, targets[merge])
        dim: int | None = None
        shape: tuple[int, ...] = (1,)
        if channel_dim is not False:
            if like is None or like.dim() == 0:
                skipped.append(Skipped(merge, layer, f"`{layer}` has no parameter with a "
                                       "channel count for a per-channel gate", rule))
                continue
            dim = (1 if isinstance(module, _CHANNELS_FIRST_MODULES) else -1) \
                if channel_dim is True else channel_dim
            shape = (like.shape[0],)
        plans.append((join, layer, module, like, dim, shape))
    gates = []
    for join, layer, module, like, dim, shape in plans:  # all decided: now write
        owner_path = _innermost_module(join.merge)
        try:
            home = model.get_submodule(owner_path) if owner_path else model
        except AttributeError:
            owner_path, home = "", model
        name = _free_name(home, _gate_name(owner_path, (layer,)))
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
