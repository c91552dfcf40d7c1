"""Gating residual branches (ReZero, SkipInit): rewrite each join ``s + f`` into ``s + α·f``.

``gate_residuals`` traces a model, lets a rule find its residual joins (the same capture,
analysis, rules and proof as ``zero_init_pass``) and makes every join the rule accepted
compute ``skip + α·(everything else the merge adds)``, with ``α`` a new ``nn.Parameter``
initialised to ``init``. By default the gates go into the user's own model (a parameter on
the module that holds the merge, a forward hook on the branch's last layer, wherever scaling
that layer's output is exactly scaling the branch; see :func:`gate_residuals`) and a
:class:`GatesReport` is returned. ``graph=True`` returns instead a new
``torch.fx.GraphModule`` with the gates at the merges (:mod:`zeta_fx.gates.rewrite`
describes that rewrite). With ``init=0.0`` every
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
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable

import torch
from torch import fx, nn

from zeta_fx.capture.methods import LeafSpec
from zeta_fx.pause import gc_paused
from zeta_fx.errors import GateError
from zeta_fx.analysis.joins import Join
from zeta_fx.rules.base import Rule
from zeta_fx.api import trace_and_select
from zeta_fx.rules.selection import Selection, Skipped, Target
from zeta_fx.gates.placement import layer_tensor
from zeta_fx.gates.inplace import gate_in_place
from zeta_fx.gates.rewrite import gate_graph
from zeta_fx.gates.report import GatesReport

__all__ = ["gate_residuals"]


@gc_paused()
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
    ``example_inputs``. See :mod:`zeta_fx.gates.rewrite` for the construction and the names,
    and :mod:`zeta_fx.gates.report` for the report in ``gm.meta["zeta_fx_gates"]``.

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
        like = layer_tensor(view, targets[merge])
        _check_init_fits(init, like.dtype if like is not None else torch.get_default_dtype(),
                         merge, targets[merge])
    if not graph:
        return gate_in_place(model, view, joins, targets, skipped, init, channel_dim,
                             rule_obj.name)
    return gate_graph(model, gm, view, joins, targets, skipped, init, channel_dim, rule_obj.name,
                      example_inputs, traced.example_kwargs)


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
