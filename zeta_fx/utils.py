"""The seed utilities: ``init_zero_`` and ``exists``.

>>> import torch
>>> from torch import nn
>>> from zeta_fx.utils import exists, init_zero_
>>> layer = nn.Linear(10, 5)
>>> init_zero_(layer)
>>> bool(layer.weight.any() or layer.bias.any())
False
>>> exists(None), exists(layer, "bias"), exists(nn.Linear(2, 2, bias=False), "bias")
(False, True, False)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from zeta_fx.errors import NoWeightError

__all__ = ["exists", "init_zero_", "zero_tensor_"]

_MISSING = object()


def exists(value: Any, name: str | None = None) -> bool:
    """``exists(x)`` is ``x is not None``; ``exists(obj, "attr")`` asks whether ``obj``
    has an attribute ``attr`` that is not ``None``.

    >>> exists(0), exists(None), exists(object(), "weight")
    (True, False, False)
    """
    if name is None:
        return value is not None
    return getattr(value, name, _MISSING) not in (_MISSING, None)


def zero_tensor_(tensor: torch.Tensor) -> None:
    """Zero ``tensor`` in place: same storage, dtype, device and ``requires_grad``.

    Works on parameters that require grad, on DTensor shards (each rank writes only its
    local shard, no communication), and on meta tensors (a no-op: they hold no values).
    """
    with torch.no_grad():
        tensor.zero_()


def init_zero_(layer: nn.Module) -> None:
    """Zero ``layer.weight`` and ``layer.bias`` in place; a missing or ``None`` bias is fine.

    Tensors are written in place (nothing reallocated), keeping dtype, device and
    ``requires_grad``; buffers such as BatchNorm running statistics are left alone.

    >>> bn = nn.BatchNorm2d(4)
    >>> init_zero_(bn)
    >>> bn.weight.abs().sum().item(), bn.running_var.sum().item()
    (0.0, 4.0)
    """
    if not isinstance(layer, nn.Module):
        raise NoWeightError(
            f"init_zero_ expects an nn.Module with a `weight`, got {type(layer).__name__}; "
            "to zero a bare tensor use `torch.nn.init.zeros_(tensor)`"
        )
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise NoWeightError(
            f"init_zero_: {type(layer).__module__}.{type(layer).__qualname__} has no `weight` "
            "tensor to zero; pass a layer that has one (nn.Linear, nn.Conv2d, nn.LayerNorm, ...) "
            "or check `exists(layer, 'weight')` first"
        )
    zero_tensor_(weight)
    bias = getattr(layer, "bias", None)
    if isinstance(bias, torch.Tensor):
        zero_tensor_(bias)
