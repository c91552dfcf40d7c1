"""Composite leaves: modules that symbolic tracing keeps opaque but that hide residual blocks.

``nn.TransformerEncoderLayer`` computes ``x + self_attn(x)`` and ``x + linear2(...)`` inside a
``forward`` that ``symbolic_trace`` cannot follow (it branches on the input to pick a fused
fast path), so the traced graph shows one ``call_module`` node. This table says, per leaf
type, which of its own layers end its hidden residual branches. Each entry maps a module
class to a function ``module -> [Branch]``; it is looked up along the class's MRO, so
subclasses are covered.

>>> from torch import nn
>>> layer = nn.TransformerEncoderLayer(8, 2, 16)
>>> [(b.module, b.params) for b in composite_branches(layer, default_composites())]
[('self_attn.out_proj', ('weight', 'bias')), ('linear2', ('weight', 'bias'))]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

__all__ = ["Branch", "CompositeFn", "default_composites", "composite_branches"]


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


_DEFAULTS: dict[type[nn.Module], CompositeFn] = {
    nn.TransformerEncoderLayer: _encoder_layer,
    nn.TransformerDecoderLayer: _decoder_layer,
    nn.TransformerEncoder: _stack,
    nn.TransformerDecoder: _stack,
    nn.Transformer: _transformer,
}


def default_composites() -> dict[type[nn.Module], CompositeFn]:
    """A fresh copy of the built-in table (torch's transformer layers and stacks)."""
    return dict(_DEFAULTS)


def composite_branches(module: nn.Module, table: dict[type[nn.Module], CompositeFn]
                       ) -> list[Branch] | None:
    """The hidden residual branches of ``module``, or ``None`` if it is not a composite leaf."""
    for cls in type(module).__mro__:
        fn = table.get(cls)
        if fn is not None:
            return fn(module, table)
    return None
