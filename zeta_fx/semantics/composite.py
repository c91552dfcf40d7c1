"""Composite leaves: modules that symbolic tracing keeps opaque but that hide residual blocks.

``nn.TransformerEncoderLayer`` computes ``x + self_attn(x)`` and ``x + linear2(...)`` inside a
``forward`` that ``symbolic_trace`` cannot follow (it branches on the input to pick a fused
fast path), so the traced graph shows one ``call_module`` node. This table is the one
description of such leaves, shared by the rules and verification: per leaf type (looked
up along the class's MRO, so subclasses are covered), a :class:`Composite` says which of
its own layers end its hidden residual branches (what the rules zero) and what it computes
once they are zero (what verification checks its output against).

>>> from torch import nn
>>> layer = nn.TransformerEncoderLayer(8, 2, 16)
>>> [(b.module, b.params) for b in composite_branches(layer, default_composites())]
[('self_attn.out_proj', ('weight', 'bias')), ('linear2', ('weight', 'bias'))]
>>> import torch
>>> x = torch.randn(3, 1, 8)
>>> torch.equal(composite_skip(layer, (x,), {}), layer.norm2(layer.norm1(x)))  # post-norm
True
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

__all__ = ["Branch", "Composite", "CompositeFn", "default_composites", "composite_branches",
           "composite_skip"]


@dataclass(frozen=True)
class Branch:
    """A hidden residual branch of a composite leaf, ended by ``module``'s ``params``.

    ``module`` is relative to the composite leaf; ``what`` says which branch it is.
    """

    module: str
    params: tuple[str, ...]
    what: str


# (leaf, the table in use) -> its branches; the table lets a stack read its own layers
CompositeFn = Callable[[nn.Module, dict], list[Branch]]


def _present(module: nn.Module, local: str, names: tuple[str, ...]) -> tuple[str, ...]:
    try:
        sub = module.get_submodule(local)
    except AttributeError:
        return ()
    return tuple(n for n in names if isinstance(getattr(sub, n, None), torch.Tensor))


def _layer_branches(module: nn.Module, parts: tuple[tuple[str, str], ...]) -> list[Branch]:
    out = []
    for local, what in parts:
        params = _present(module, local, ("weight", "bias"))
        if params:
            out.append(Branch(local, params, what))
    return out


def _encoder_layer(layer: nn.Module, table: dict) -> list[Branch]:
    return _layer_branches(layer, (("self_attn.out_proj", "self-attention branch"),
                                   ("linear2", "feed-forward branch")))


def _decoder_layer(layer: nn.Module, table: dict) -> list[Branch]:
    return _layer_branches(layer, (("self_attn.out_proj", "self-attention branch"),
                                   ("multihead_attn.out_proj", "cross-attention branch"),
                                   ("linear2", "feed-forward branch")))


def _stack(stack: nn.Module, table: dict) -> list[Branch]:
    out = []
    for i, layer in enumerate(stack.layers):
        out.extend(Branch(f"layers.{i}.{b.module}", b.params, f"layer {i} {b.what}")
                   for b in composite_branches(layer, table) or ())
    return out


def _transformer(model: nn.Module, table: dict) -> list[Branch]:
    out = []
    for part in ("encoder", "decoder"):
        sub = getattr(model, part, None)
        branches = composite_branches(sub, table) if sub is not None else None
        out.extend(Branch(f"{part}.{b.module}", b.params, f"{part} {b.what}")
                   for b in branches or ())
    return out


# -- what each leaf computes once its hidden branches are zero ---------------------------------

def _encoder_layer_skip(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x if layer.norm_first else layer.norm2(layer.norm1(x))


def _decoder_layer_skip(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x if layer.norm_first else layer.norm3(layer.norm2(layer.norm1(x)))


def _layer_skip(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    skip = _skip_of(layer)
    if skip is None:
        raise TypeError(f"{type(layer).__name__} is not a torch transformer layer")
    return skip(layer, x)


def _stack_skip(stack: nn.Module, x: torch.Tensor) -> torch.Tensor:
    for layer in stack.layers:
        x = _layer_skip(layer, x)
    return stack.norm(x) if stack.norm is not None else x


def _bound_input(*names: str) -> Callable[[Callable[[nn.Module, torch.Tensor], torch.Tensor]],
                                            Callable[[nn.Module, dict[str, Any]], Any]]:
    """A skip function of the leaf's bound forward arguments, reading the first of
    ``names`` that is a tensor (``src`` for an encoder, ``tgt`` for a decoder)."""
    def wrap(fn):
        def skip(module: nn.Module, bound: dict[str, Any]) -> Any:
            x = next((bound[n] for n in names if isinstance(bound.get(n), torch.Tensor)), None)
            return None if x is None else fn(module, x)
        return skip
    return wrap


def _transformer_skip(model: nn.Module, bound: dict[str, Any]) -> Any:
    tgt = bound.get("tgt")
    return _stack_skip(model.decoder, tgt) if isinstance(tgt, torch.Tensor) else None


@dataclass(frozen=True)
class Composite:
    """A composite leaf type: its hidden residual branches, and what it computes once they
    are zero, from its forward's bound arguments (``None`` where unknown)."""

    branches: CompositeFn
    skip: Callable[[nn.Module, dict[str, Any]], Any]


def _skip_of(module: nn.Module) -> Callable[[nn.Module, torch.Tensor], torch.Tensor] | None:
    if isinstance(module, nn.TransformerDecoderLayer):
        return _decoder_layer_skip
    if isinstance(module, nn.TransformerEncoderLayer):
        return _encoder_layer_skip
    return None


_DEFAULTS: dict[type[nn.Module], Composite] = {
    nn.TransformerEncoderLayer: Composite(_encoder_layer, _bound_input("src")(_encoder_layer_skip)),
    nn.TransformerDecoderLayer: Composite(_decoder_layer, _bound_input("tgt")(_decoder_layer_skip)),
    nn.TransformerEncoder: Composite(_stack, _bound_input("src", "tgt")(_stack_skip)),
    nn.TransformerDecoder: Composite(_stack, _bound_input("src", "tgt")(_stack_skip)),
    nn.Transformer: Composite(_transformer, _transformer_skip),
}


def default_composites() -> dict[type[nn.Module], Composite]:
    """A fresh copy of the built-in table (torch's transformer layers and stacks)."""
    return dict(_DEFAULTS)


def _lookup(module: nn.Module, table: dict[type[nn.Module], Composite]) -> Composite | None:
    for cls in type(module).__mro__:
        found = table.get(cls)
        if found is not None:
            return found
    return None


def composite_branches(module: nn.Module, table: dict[type[nn.Module], Composite]
                       ) -> list[Branch] | None:
    """The hidden residual branches of ``module``, or ``None`` if it is not a composite leaf."""
    found = _lookup(module, table)
    return None if found is None else found.branches(module, table)


def composite_skip(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                   table: dict[type[nn.Module], Composite] | None = None) -> Any:
    """The value ``module`` computes once all its hidden residual branches are zero, from
    the inputs it was called with; ``None`` for a type whose skip is not known."""
    found = _lookup(module, _DEFAULTS if table is None else table)
    if found is None:
        return None
    try:
        bound = dict(inspect.signature(module.forward).bind(*args, **kwargs).arguments)
    except (TypeError, ValueError):
        return None
    return found.skip(module, bound)
