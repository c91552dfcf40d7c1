"""Masks that never drop a row's maximum: a router's threshold ``(max - x) / d > c``.

Phi-MoE's sparsemixer keeps the experts whose score lies within a margin of the row's best:
``mask = (amax(s, -1, keepdim) - s) / d > c`` with ``c >= 0``, then
``s.masked_fill(mask, -inf)``. Where ``s`` holds its finite maximum, ``max - s`` is exactly
``0``, and ``0 / d`` is ``0`` or NaN whatever ``d`` is: never ``> c``. So every row keeps its
maximum, and a softmax over it is finite. Its second round masks ``scatter(s, -1, i, -inf)``
(the best expert taken out) with a margin measured on ``s``: the new maximum sits where
nothing was scattered, where the two agree, and is finite while fewer entries are scattered
than a row holds. The mask is often computed under ``torch.no_grad()``, a subgraph under
export (:mod:`zeta_fx.semantics.subgraphs`): it is read through it.
"""

from __future__ import annotations

from typing import Any, Mapping

from torch.fx import Node

from zeta_fx.semantics.dtypes import holds_exactly_enough
from zeta_fx.semantics.keys import bind, op_key
from zeta_fx.semantics.lattice import U
from zeta_fx.semantics.subgraphs import inside, outside
from zeta_fx.semantics.tables import MASK_CARRIERS, ROW_MAXIMA

__all__ = ["keeps_row_maximum"]

_NEG_INF = float("-inf")


def keeps_row_maximum(value: Node, ctx: Any) -> bool:
    """Whether ``value`` = ``masked_fill(t, mask, v)`` keeps, in every row along the last
    dimension, an entry of ``t`` that is finite: each row of ``t`` has a finite maximum and
    ``mask`` is false wherever ``t`` holds it (see the module docstring)."""
    key, in_place = op_key(value)
    if key != "masked_fill" or in_place:
        return False
    args = bind(value)
    t = args.get("input")
    if not isinstance(t, Node) or ctx.written_after(t) or ctx.read_is_stale(t, value):
        return False
    agreeing = _finite_rows(t, ctx)
    return agreeing is not None and _spares_maximum(args.get("mask"), t, agreeing)


def _last(dim: Any, value: Any) -> bool:
    """``dim`` (an int or a one-element list) is the last dimension of ``value``."""
    if isinstance(dim, (list, tuple)) and len(dim) == 1:
        dim = dim[0]
    if not isinstance(dim, int) or isinstance(dim, bool):
        return False
    if dim == -1:
        return True
    val = value.meta.get("val") if isinstance(value, Node) else None
    return hasattr(val, "dim") and dim == val.dim() - 1


def _finite_rows(t: Node, ctx: Any) -> tuple[Node, ...] | None:
    """The values that equal ``t`` wherever ``t`` holds its row's maximum, if every row of
    ``t`` has a finite maximum: ``t`` itself when it is finite; ``t`` and ``s`` for
    ``t = scatter(s, -1, i, -inf)`` with ``s`` finite and fewer entries of ``i`` than a row
    holds. ``None`` otherwise."""
    if t.op != "call_function" or op_key(t) != ("scatter", False):
        return (t,) if ctx.fact(t) != U else None
    args = bind(t)
    s, index, filler = args.get("input"), args.get("index"), args.get("value")
    if not isinstance(s, Node) or not isinstance(index, Node) or filler != _NEG_INF or \
            ctx.fact(s) == U or ctx.written_after(s) or not _last(args.get("dim"), t):
        return None
    shape_t = getattr(t.meta.get("val"), "shape", None)
    shape_i = getattr(index.meta.get("val"), "shape", None)
    if not shape_t or not shape_i or not isinstance(shape_t[-1], int) or \
            not isinstance(shape_i[-1], int) or not shape_i[-1] < shape_t[-1]:
        return None  # (symbolic or unknown sizes: not proven)
    return (t, s)


def _spares_maximum(mask: Any, t: Node, agreeing: tuple[Node, ...]) -> bool:
    """``mask`` is ``(max(t, -1, keepdim) - s) / d > c`` (or ``>= c``, ``c > 0``), ``c >= 0``,
    with ``s`` one of ``agreeing``: false where ``t`` holds its maximum."""
    node, env = inside(mask)
    for _ in range(8):  # casts and broadcasts carry the mask as it is
        if not _op(node) or op_key(node)[0] not in MASK_CARRIERS:
            break
        node = bind(node).get("input")
    if not _op(node):
        return False
    key, _ = op_key(node)
    args = bind(node)
    margin = args.get("other")
    if not isinstance(margin, (int, float)) or isinstance(margin, bool) or margin != margin:
        return False
    # (a positive margin may round to 0 in half precision: ``0 >= 0`` would mask the best)
    if not ((key in ("gt", "greater") and margin >= 0) or
            (key in ("ge", "greater_equal") and margin > 0 and holds_exactly_enough(margin))):
        return False
    gap = args.get("input")
    if _op(gap) and op_key(gap)[0] in ("div", "true_divide", "divide") and \
            bind(gap).get("rounding_mode") is None:
        gap = bind(gap).get("input")  # 0 / d is 0 or NaN: never above the margin
    if not _op(gap) or op_key(gap)[0] not in ("sub", "subtract"):
        return False
    gap_args = bind(gap)
    if gap_args.get("alpha", 1) != 1:
        return False
    top, s = gap_args.get("input"), gap_args.get("other")
    return outside(s, env) in agreeing and _row_max_of(top, env) is t


def _op(value: Any) -> bool:
    return isinstance(value, Node) and value.op in ("call_function", "call_method") and \
        not op_key(value)[1]


def _row_max_of(top: Any, env: Mapping[Node, Any]) -> Any:
    """``x`` where ``top`` is ``amax(x, -1, keepdim=True)`` or item 0 of ``max(x, -1,
    keepdim=True)`` (``x`` read back out of a subgraph); ``None`` otherwise."""
    if _op(top) and op_key(top)[0] == "getitem" and len(top.args) == 2 and top.args[1] == 0:
        top = top.args[0]
    if not _op(top) or op_key(top)[0] not in ROW_MAXIMA:
        return None
    args = bind(top)
    x = args.get("input")
    if args.get("keepdim") is not True or not _last(args.get("dim"), x):
        return None
    if op_key(top)[0] == "max" and not isinstance(args.get("dim"), int):
        return None  # max(x) of the whole tensor, or max(x, other)
    return outside(x, env)
