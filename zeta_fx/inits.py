"""Initialisers for the positions the rules find: zero, scaled normal, Fixup, or your own.

:func:`zeta_fx.init_pass` takes one as ``init=``. Each turns the planner's entries (a
module's parameters at its sites) into actions, plain data the plan records: the figures
used (``L``, ``m``, the standard deviation) are in the plan and the report, and every draw
is reproducible from the plan's seed, on one process or on FSDP2 shards.

- ``"zero"`` (:class:`Zero`): what :func:`~zeta_fx.zero_init_pass` does.
- :func:`scaled_normal` ``(std=0.02)``: GPT-2 / nanoGPT / Megatron's init of the last layer
  of each residual branch, ``N(0, std / sqrt(L))`` with ``L`` the number of residual
  branches found (``2 * n_layer`` in a GPT); only weight layers' weights are drawn: biases
  and norm gains are kept, and the report says so.
- :func:`fixup` ``()``: Fixup (Zhang et al. 2019): the last layer of each branch zeroed, the
  branch's other weight layers drawn He-normal (fan-out, as the reference code) and scaled
  by ``L ** (-1 / (2m - 2))``, ``m`` the branch's weight layers (convs and linears, not
  norms: 2 in a ResNet BasicBlock, 3 in a Bottleneck).
- a callable ``fn(tensor, site)``: writes ``tensor`` in place; ``site`` is a
  :class:`~zeta_fx.apply.InitSite` (depth, number of branches, the branch's layers).

>>> import math, torch
>>> from zeta_fx import init_pass
>>> from zeta_fx.models import GPT
>>> model = GPT(n_layer=2)
>>> report = init_pass(model, rule="residual_branch_last", init=scaled_normal(std=0.02), seed=0)
>>> report.params
['h.0.attn.c_proj.weight', 'h.0.mlp.c_proj.weight', 'h.1.attn.c_proj.weight', 'h.1.mlp.c_proj.weight']
>>> report.plan.entries[0].action.label, dict(report.plan.entries[0].action.figures)["L"]
('N(0, 0.01)', 4)
>>> abs(model.h[0].attn.c_proj.weight.std().item() - 0.02 / math.sqrt(4)) < 1e-3
True
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch

from zeta_fx.plan.planner import Branches, Init
from zeta_fx.plan.records import Action, PlanEntry
from zeta_fx.rules.selection import Site, Skipped


__all__ = ["Init", "Zero", "ScaledNormal", "Fixup", "Custom", "scaled_normal", "fixup",
           "as_init"]


class Zero(Init):
    """Zero every planned parameter (``init="zero"``, :func:`~zeta_fx.zero_init_pass`)."""

    name = "zero"

    def actions(self, entries: list[PlanEntry], branches: "Branches",
                params: dict[str, torch.Tensor]) -> Iterable[PlanEntry]:
        return entries


def _fmt(x: float) -> str:
    return f"{x:.2g}" if x < 1e-3 else f"{x:.4g}"


def _weight_layer_weights(entry: PlanEntry) -> dict[str, tuple[int, ...]]:
    """The entry's weight-layer weights: a conv's or a linear's matrix (two or more
    dimensions). A norm's gain, a layer scale and a bias are one-dimensional: a random init
    for projection weights is not theirs to draw."""
    return {fqn: shape for fqn, shape in entry.params.items() if len(shape) >= 2}


def _kept_reason(init: str, fqns: list[str]) -> str:
    kinds = ["bias" if fqn.rsplit(".", 1)[-1].startswith("bias") else "gain"
             for fqn in fqns]
    what = " and ".join(dict.fromkeys("a bias" if k == "bias" else "a norm's gain (1-D)"
                                      for k in kinds))
    names = ", ".join(f"`{f}`" for f in fqns)
    return (f"{names}: {what}, not a weight layer's weight; {init} draws weight layers' "
            "weights only, so it is left as it is")


class ScaledNormal(Init):
    """GPT-2 / nanoGPT / Megatron's scaled init of the last layer of each residual branch.

    GPT-2 (Radford et al. 2019, section 2.3): "we scale the weights of residual layers at
    initialization by a factor of 1/sqrt(N) where N is the number of residual layers";
    nanoGPT and Megatron draw those weights from

        W ~ N(0, (std / sqrt(L))^2),   L = the number of residual branches (2 * n_layer)

    ``L`` is the number of residual branches found (1 where none was, as with
    ``rule="output_layer"``). Only weight layers' weights (a conv's or a linear's, two or
    more dimensions) are drawn: a bias at the site is kept, and a site whose parameters are
    a norm's gain (a torchvision ResNet's ``bn3``) is left as it is; the report's row says
    which.
    """

    def __init__(self, std: float = 0.02) -> None:
        if not isinstance(std, (int, float)) or isinstance(std, bool) or not math.isfinite(std) \
                or std <= 0:
            raise ValueError(f"scaled_normal needs a finite std > 0, got {std!r}")
        self.std = float(std)
        self.name = f"scaled_normal(std={self.std:g})"

    def actions(self, entries: list[PlanEntry], branches: "Branches",
                params: dict[str, torch.Tensor]) -> Iterable[PlanEntry]:
        count = max(branches.count, 1)
        std = self.std / math.sqrt(count)
        for entry in entries:
            weights = _weight_layer_weights(entry)
            if not weights:
                continue  # left_alone says why
            kept = [fqn for fqn in entry.params if fqn not in weights]
            figures = (("sigma", self.std), ("L", count))
            label = f"N(0, {_fmt(std)})"
            if kept:
                figures += (("kept", ",".join(kept)),)
            yield PlanEntry(entry.module, entry.module_type, weights, entry.sites,
                            entry.rule, Action("normal", std=std, label=label,
                                               figures=figures))

    def left_alone(self, entries: list[PlanEntry]) -> list[Skipped]:
        return [Skipped(entry.sites[0].node if entry.sites else "", entry.module,
                        _kept_reason(self.name, list(entry.params)), entry.rule)
                for entry in entries if not _weight_layer_weights(entry)]


class Fixup(Init):
    """Fixup (Zhang, Dauphin and Ma 2019, "Fixup Initialization", section 3): in a network
    of ``L`` residual branches, each with ``m`` weight layers,

        1. initialise the classification layer and the last layer of each residual branch
           to 0;
        2. initialise every other layer with a standard method (He et al. 2015) and scale
           the weight layers inside residual branches by ``L ** (-1 / (2m - 2))``.

    ``m`` counts the branch's weight layers (convs, linears: weights of two or more
    dimensions), not its norms: a torchvision ``BasicBlock`` has m = 2 (scale
    ``L ** (-1/2)``), a ``Bottleneck`` m = 3 (``L ** (-1/4)``). The He-normal draw is
    ``N(0, 2 / fan_out)`` (fan-out, as the reference implementation). A branch whose last
    layer the rule finds is a norm (a ResNet's ``bn2``) has that norm zeroed and its convs
    all drawn and scaled. Other targets (an output layer) are zeroed, as Fixup zeroes the
    classifier. Only weight layers' weights are drawn; biases and norm gains inside the
    branch are left as they are.
    """

    name = "fixup()"

    def actions(self, entries: list[PlanEntry], branches: "Branches",
                params: dict[str, torch.Tensor]) -> Iterable[PlanEntry]:
        planned = {e.module for e in entries}
        extra: dict[str, PlanEntry] = {}
        for entry in entries:
            for site in entry.sites:
                if site.kind != "residual":
                    continue
                layers = branches.layers(site)
                m = len({owner for owner, *_ in layers})
                if m < 2:
                    continue
                scale = branches.count ** (-1.0 / (2 * m - 2))
                for owner, fqn, shape, node in layers:
                    if owner in planned or owner in extra:
                        continue
                    fan_out = shape[0] * math.prod(shape[2:])
                    std = math.sqrt(2.0 / fan_out) * scale
                    action = Action("normal", std=std, label=f"N(0, {_fmt(std)})",
                                    figures=(("L", branches.count), ("m", m),
                                             ("scale", scale)))
                    extra[owner] = PlanEntry(
                        owner, branches.module_type(owner), {fqn: shape},
                        (Site("fixup", node, site.merge, site.skip, site.fork,
                                    site.skip_kind, site.skip_modules, "",
                                    f"inside the branch into `{site.merge}`: Fixup scale "
                                    f"L^(-1/(2m-2)) = {scale:.4g} (L = {branches.count}, "
                                    f"m = {m})"),),
                        entry.rule, action)
        zero = Action("zero", label="zero", figures=(("L", branches.count),))
        for entry in entries:
            yield PlanEntry(entry.module, entry.module_type, entry.params, entry.sites,
                            entry.rule, zero)
        yield from extra.values()


class Custom(Init):
    """A user function ``fn(tensor, site)`` that writes ``tensor`` in place; ``site`` is a
    :class:`~zeta_fx.apply.InitSite`. A loaded plan names the function; pass it again to
    ``plan.apply(model, init=fn)``."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        if not callable(fn):
            raise TypeError(f"init must be 'zero', a zeta_fx.inits initialiser or a callable "
                            f"fn(tensor, site), got {type(fn).__name__}")
        self.fn = fn
        self.label = getattr(fn, "__qualname__", None) or type(fn).__name__
        self.name = f"callable {self.label}"

    def actions(self, entries: list[PlanEntry], branches: "Branches",
                params: dict[str, torch.Tensor]) -> Iterable[PlanEntry]:
        for entry in entries:
            depth = max((branches.depth(s) for s in entry.sites), default=-1)
            residual = next((s for s in entry.sites if s.kind == "residual"), None)
            layers = ",".join(dict.fromkeys(o for o, *_ in branches.layers(residual))) \
                if residual is not None else ""
            action = Action("callable", name=self.label, label=f"{self.label}(...)",
                            figures=(("depth", depth), ("L", branches.count),
                                     ("branch_layers", layers)))
            yield PlanEntry(entry.module, entry.module_type, entry.params, entry.sites,
                            entry.rule, action)


def scaled_normal(std: float = 0.02) -> ScaledNormal:
    """``N(0, std / sqrt(L))`` at each site: GPT-2 / nanoGPT's scaled init of ``c_proj``."""
    return ScaledNormal(std)


def fixup() -> Fixup:
    """Fixup's init: zero each branch's last layer, scale the branch's other layers."""
    return Fixup()


_FACTORIES = (scaled_normal, fixup)


def as_init(init: "str | Init | Callable[..., Any]") -> Init:
    """An :class:`Init` from ``"zero"``, an initialiser or a callable.

    >>> as_init("zero").name, as_init(scaled_normal(0.02)).name
    ('zero', 'scaled_normal(std=0.02)')

    An initialiser factory passed uncalled is called with its defaults (the report names
    the call):

    >>> as_init(scaled_normal).name, as_init(fixup).name
    ('scaled_normal(std=0.02)', 'fixup()')
    >>> as_init("normal")
    Traceback (most recent call last):
    ...
    ValueError: init='normal' is not known: pass "zero", zeta_fx.inits.scaled_normal(std=...), zeta_fx.inits.fixup() or a callable fn(tensor, site)
    """
    if isinstance(init, Init):
        return init
    if init in _FACTORIES or (isinstance(init, type) and issubclass(init, Init)):
        try:
            return init()
        except TypeError as exc:
            raise TypeError(f"init={getattr(init, '__name__', init)} is an initialiser "
                            f"factory, not an initialiser, and cannot be called without "
                            f"arguments ({exc}); pass init={getattr(init, '__name__', init)}"
                            "(...) with its arguments; nothing was written") from None
    if isinstance(init, str):
        if init == "zero":
            return Zero()
        raise ValueError(f"init={init!r} is not known: pass \"zero\", zeta_fx.inits."
                         "scaled_normal(std=...), zeta_fx.inits.fixup() or a callable "
                         "fn(tensor, site)")
    return Custom(init)
