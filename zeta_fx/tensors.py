"""Small exact questions about tensors, shared by apply and verification.

>>> import torch
>>> any_nonzero([torch.zeros(3), torch.tensor([0.0, -0.0])])
False
>>> any_nonzero([torch.zeros(3), torch.tensor([1e-30])])
True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
# the lazy mixin: Parameter's metaclass makes isinstance(p, UninitializedParameter) slow
from torch.nn.parameter import UninitializedTensorMixin

from zeta_fx.errors import UnsupportedParameterError

__all__ = ["any_nonzero", "nonzero_flag", "byte_span", "count_params", "is_plain", "lazy_error",
           "fetch_attr"]


def lazy_error(named: dict[str, Any], then: str) -> UnsupportedParameterError | None:
    """The refusal of the first uninitialised lazy parameter in ``named`` (no values yet:
    one forward pass materialises it), or ``None``; ``then`` says what to run after
    materialising. Capture refuses them before tracing, apply before writing a plan."""
    lazy = next((name for name, t in named.items()
                 if isinstance(t, UninitializedTensorMixin)), None)
    if lazy is None:
        return None
    return UnsupportedParameterError(
        f"`{lazy}` is an uninitialised lazy parameter; run one forward pass to materialise "
        f"the lazy modules, then {then}; nothing was written")


def is_plain(tensors: list[torch.Tensor]) -> bool:
    """Plain dense tensors on one device, fit for the fused ``torch._foreach_*`` kernels."""
    return bool(tensors) and all(type(t) in (torch.Tensor, nn.Parameter) and not t.is_meta
                                 for t in tensors) and len({t.device for t in tensors}) == 1


def any_nonzero(tensors: list[torch.Tensor]) -> bool:
    """Whether zeroing would change any value, decided exactly: any element whose bits are
    not a (signed) zero counts, however small (1e-30, subnormals) and NaN too. Meta tensors
    hold no values: writing them counts as a change."""
    flags: dict[torch.device, list[torch.Tensor]] = {}
    with torch.no_grad():
        locals_ = []
        for tensor in tensors:
            if tensor.is_meta:
                return True
            local = tensor.to_local() if hasattr(tensor, "to_local") else tensor  # own shard
            if local.numel():
                locals_.append(local.detach())
        # A trained or freshly initialised tensor's first element is rarely zero: read the
        # first element of the first few CPU tensors as a Python number (exact: -0.0 == 0,
        # NaN and subnormals != 0), which needs no kernel and no thread pool.
        for local in locals_[:8]:
            if local.device.type == "cpu" and local.is_floating_point() and \
                    type(local) in (torch.Tensor, nn.Parameter) and \
                    local.reshape(-1)[0].item() != 0:
                return True
        # Otherwise the first values of large tensors, then everything, in few kernels.
        for local in locals_:
            if local.is_contiguous() and local.numel() > 4096 and \
                    bool(nonzero_flag(local.view(-1)[:4096])):
                return True
        # small tensors of one dtype and device (norm weights and biases): one check for all
        small: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
        for local in locals_:
            if local.numel() <= 4096 and type(local) in (torch.Tensor, nn.Parameter):
                small.setdefault((local.device, local.dtype), []).append(local.reshape(-1))
            else:
                flags.setdefault(local.device, []).append(nonzero_flag(local))
        for (device, _), group in small.items():
            flags.setdefault(device, []).append(nonzero_flag(torch.cat(group)))
        return any(bool(torch.stack(group).any()) for group in flags.values())


_SIGNLESS = {1: (torch.uint8, 0x7F), 2: (torch.int16, 0x7FFF), 4: (torch.int32, 0x7FFFFFFF),
             8: (torch.int64, 0x7FFFFFFFFFFFFFFF)}


def nonzero_flag(tensor: torch.Tensor) -> torch.Tensor:
    """A 0-d bool tensor: whether ``tensor`` holds a value other than +0 or -0.

    Floats are read as bit patterns, so a flush-denormals setting cannot hide a subnormal.
    """
    if tensor.is_complex():
        tensor = torch.view_as_real(tensor)
    if tensor.is_floating_point() and tensor.element_size() in _SIGNLESS:
        ints, mask = _SIGNLESS[tensor.element_size()]
        return tensor.view(ints).bitwise_and(mask).ne(0).any()
    return tensor.ne(0).any()


def byte_span(tensor: torch.Tensor) -> tuple[tuple[Any, int], int, int] | None:
    """(storage key, first byte, end byte) of the memory ``tensor`` can address, or None
    for tensors with no storage of their own to share (meta, empty, wrapper subclasses)."""
    try:
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        if local.is_meta or local.numel() == 0:
            return None
        storage = local.untyped_storage()
        size = local.element_size()
        start = local.storage_offset() * size
        extent = sum((n - 1) * abs(st) for n, st in zip(local.shape, local.stride())) + 1
        key = (local.device, storage.data_ptr())
    except (RuntimeError, NotImplementedError, TypeError):
        return None
    return key, start, start + extent * size


def count_params(named: dict[str, torch.Tensor]) -> int:
    """Parameter elements, each tied tensor counted once."""
    return sum(p.numel() for p in {id(p): p for p in named.values()}.values())


def fetch_attr(root: Any, dotted: str) -> Any:
    """``root``'s attribute at the dotted path ``dotted`` (a ``get_attr`` target), or
    ``None`` where some part is missing.

    >>> fetch_attr(nn.Linear(2, 3), "weight").shape, fetch_attr(nn.Linear(2, 3), "w.x")
    (torch.Size([3, 2]), None)
    """
    obj: Any = root
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj
