"""Dtypes: in which dtype an op computes, and what its constants become there.

A constant is combined in the dtype the op computes in: ``h / (h.norm() + 1e-8)`` in
float16 adds ``1e-8``, which float16 rounds to zero, so the divisor may be zero. Torch's
fused norm kernels (``layer_norm``, ``group_norm``, ``rms_norm``) compute in the
computation dtype of their input (float32 for float16 and bfloat16:
``torch._prims_common.get_computation_dtype``); every other op computes in its output's
dtype.

:func:`output_dtype` is the dtype of a node's output where the graph carries no metadata:
explicit casts (``.to(dtype)``, ``.half()``, ``type_as``, ``dtype=``), else the promotion
of its floating tensor inputs (Python numbers do not promote a float tensor).

>>> rounds_to_zero(1e-8, torch.float16), rounds_to_zero(1e-8, torch.bfloat16)
(True, False)
>>> computation_dtype("layer_norm", torch.float16), computation_dtype("add", torch.float16)
(torch.float32, torch.float16)
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable

import torch
from torch._prims_common import get_computation_dtype
from torch.fx import Node

__all__ = ["in_dtype", "holds_exactly_enough", "rounds_to_zero", "computation_dtype", "overflows_easily", "output_dtype",
           "node_dtype"]

# Fused kernels that accumulate (and add their eps) in the computation dtype.
_OPMATH_KEYS = frozenset({"layer_norm", "native_layer_norm", "group_norm", "native_group_norm",
                          "rms_norm", "_fused_rms_norm"})
_CAST_METHODS = {"float": torch.float32, "half": torch.float16, "double": torch.float64,
                 "bfloat16": torch.bfloat16}


@lru_cache(maxsize=None)
def in_dtype(value: float, dtype: torch.dtype) -> float:
    """``value`` as ``dtype`` holds it (``1e-8`` is ``0.0`` in float16, ``1e9`` is ``inf``)."""
    if not dtype.is_floating_point:
        return value
    return float(torch.tensor(value, dtype=dtype))


# Every floating dtype torch computes in (float16, bfloat16, float32, float64) holds each
# number of this magnitude as a nonzero, finite value: float16's smallest subnormal and
# largest finite value bound it.
_SAFE_MAGNITUDE = (2.0 ** -24, 65504.0)


def holds_exactly_enough(value: Any) -> bool:
    """Whether the Python number ``value`` is zero, or nonzero and finite in every floating
    dtype (so that no dtype needs to be looked up for it)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    magnitude = abs(value)
    return magnitude == 0 or _SAFE_MAGNITUDE[0] <= magnitude <= _SAFE_MAGNITUDE[1]


def rounds_to_zero(value: float, dtype: torch.dtype) -> bool:
    """Whether the nonzero number ``value`` becomes ``0`` in ``dtype``."""
    return value != 0 and in_dtype(value, dtype) == 0.0


def computation_dtype(key: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype op ``key`` computes in on an input of ``dtype``."""
    if key in _OPMATH_KEYS and dtype.is_floating_point:
        return get_computation_dtype(dtype)
    return dtype


def overflows_easily(dtype: torch.dtype | None) -> bool:
    """A narrow range (float16's largest value is 65504): a power of a value the zeroing
    changed may overflow, and is not taken to stay finite. (bfloat16 has float32's range.)"""
    return dtype is not None and dtype.is_floating_point and torch.finfo(dtype).max < 1e6


def node_dtype(node: Node) -> torch.dtype | None:
    """The dtype capture metadata records for ``node`` (``torch.export``'s ``val``, shape
    propagation's ``tensor_meta``), if any."""
    meta = node.meta
    val = meta.get("val", meta.get("example_value"))
    if isinstance(val, torch.Tensor):
        return val.dtype
    tm = meta.get("tensor_meta")
    dtype = getattr(tm, "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else None


def _cast_target(value: Any, dtype_of: Callable[[Any], torch.dtype | None]) -> torch.dtype | None:
    if isinstance(value, torch.dtype):
        return value
    if isinstance(value, Node):
        return dtype_of(value)
    if isinstance(value, torch.Tensor):
        return value.dtype
    return None


def output_dtype(node: Node, key: str, dtype_of: Callable[[Any], torch.dtype | None]
                 ) -> torch.dtype | None:
    """The floating dtype of ``node``'s output, from its op ``key`` and the dtypes of its
    inputs (``dtype_of``). ``None``: not a floating value, or not known."""
    if "dtype" in node.kwargs and isinstance(node.kwargs["dtype"], torch.dtype):
        return node.kwargs["dtype"]
    if node.op == "call_method" and key in _CAST_METHODS:
        return _CAST_METHODS[key]
    if key in ("to", "type", "_to_copy"):
        for value in (*node.args[1:], node.kwargs.get("dtype"), node.kwargs.get("other")):
            got = _cast_target(value, dtype_of)
            if got is not None:
                return got
        return dtype_of(node.args[0]) if node.args else None
    if key == "type_as" and len(node.args) > 1:
        return _cast_target(node.args[1], dtype_of)
    out: torch.dtype | None = None
    for item in node.all_input_nodes:
        dtype = dtype_of(item)
        if dtype is not None and dtype.is_floating_point and dtype is not out:
            out = dtype if out is None else torch.promote_types(out, dtype)
    return out
