"""The lattice of zero facts: what is known of a value once chosen parameters are zero.

- ``ZERO``: exactly zero, every element, for every input;
- ``FINITE``: finite, and not forced to zero anywhere (the model's own value, or a constant
  such as ``sigmoid(0) = 0.5``);
- ``PARTLY_ZERO``: finite, but possibly forced to zero in places (``cat([zero, y])``);
- ``UNKNOWN``: possibly non-finite (``0 / 0``, ``rsqrt(0)``), or an op nobody knows applied
  to a changed value.

``ZERO`` and ``FINITE`` lie below ``PARTLY_ZERO``, which lies below ``UNKNOWN``; where two
values meet (``where``, ``cat``) their facts are joined.

>>> join(Fact.ZERO, Fact.FINITE).name, product(Fact.ZERO, Fact.FINITE).name
('PARTLY_ZERO', 'ZERO')
>>> constant_fact(1e-8, torch.float16).name, constant_fact(-1e9, torch.float16).name
('ZERO', 'UNKNOWN')
"""

from __future__ import annotations

import enum
import math
from typing import Any

import torch
from torch import nn

from zeta_fx.semantics.dtypes import in_dtype

__all__ = ["Fact", "Z", "F_", "P", "U", "join", "product", "total", "singular", "finite",
           "constant_fact", "normalised"]


class Fact(enum.IntEnum):
    """What is known of a value after the zeroing (see the module docstring)."""

    ZERO = 0
    FINITE = 1
    PARTLY_ZERO = 2
    UNKNOWN = 3

    def __bool__(self) -> bool:  # a fact is a fact: ``ZERO`` is not falsy
        return True


Z, F_, P, U = Fact.ZERO, Fact.FINITE, Fact.PARTLY_ZERO, Fact.UNKNOWN


def join(*facts: Fact) -> Fact:
    """The least fact above all of ``facts`` (``ZERO`` joined with ``FINITE`` is partly zero)."""
    out: Fact | None = None
    for f in facts:
        if out is None or out == f:
            out = f
        elif U in (out, f):
            out = U
        else:
            out = P
    return Z if out is None else out


def product(*facts: Fact) -> Fact:
    """The fact of a product (``mul``, ``matmul``, a conv with its weight) of ``facts``."""
    if U in facts:
        return U
    if Z in facts:
        return Z
    return P if P in facts else F_


def total(*facts: Fact) -> Fact:
    """The fact of a sum of ``facts``: zero terms drop out."""
    if U in facts:
        return U
    rest = [f for f in facts if f != Z]
    if not rest:
        return Z
    return P if all(f == P for f in rest) else F_


def singular(f: Fact) -> Fact:
    """``1 / f``, ``rsqrt(f)``, ``log(f)``: non-finite where ``f`` may be zero."""
    return F_ if f == F_ else U


def finite(f: Fact) -> Fact:
    """``exp``, ``sigmoid``, ``softmax``: finite and never forced to zero on finite input."""
    return U if f == U else F_


def constant_fact(value: Any, dtype: "torch.dtype | None" = None) -> Fact:
    """The fact of a constant; a Python float is taken in ``dtype`` (the dtype the op that
    reads it computes in), where it may round to zero or overflow."""
    if value is None:
        return F_
    if isinstance(value, bool):
        return F_ if value else Z
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return U
        if value == 0:
            return Z
        if dtype is not None and dtype.is_floating_point:
            held = in_dtype(float(value), dtype)
            if held == 0.0:
                return Z
            if math.isinf(held):
                return U
        return F_
    if isinstance(value, complex):
        return Z if value == 0 else (F_ if math.isfinite(abs(value)) else U)
    if isinstance(value, torch.Tensor):
        if isinstance(value, nn.parameter.UninitializedTensorMixin) or value.is_meta or \
                not (value.is_floating_point() or value.is_complex()):
            return F_
        if value.numel() and not bool(torch.isfinite(value).all()):
            return U
        return Z if not bool(value.any()) else F_
    return F_


def normalised(x: Fact, eps: Any, batch_stats: bool, changed: bool = False) -> Fact:
    """``(x - mean) / sqrt(var + eps)``: with batch statistics a zero input stays zero.

    With ``eps = 0`` the variance must not be zero: a zero input makes it zero, and so may
    an input the zeroing ``changed`` (a row that is now constant), however finite."""
    eps_zero = isinstance(eps, (int, float)) and eps == 0
    if x == U:
        return U
    if not batch_stats:
        return F_ if x in (Z, F_) else P  # (0 - running_mean) / std: finite, not zero
    if eps_zero and (x in (Z, P) or changed):
        return U  # 0 / sqrt(0 + 0)
    return x
