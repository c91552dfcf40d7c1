"""Signs: which values are provably ``>= 0`` or ``> 0`` wherever they are finite.

A division, ``rsqrt`` or ``log`` of a value the zeroing changed is finite only if its divisor
is provably positive: ``v + eps`` with ``v >= 0`` and ``eps`` nonzero in the add's dtype,
``clamp(min=eps)``, ``exp``, ``sigmoid``, ``softmax``, their sums, means and top-k values,
views and casts. ``ctx`` (the zero facts) says which values a write reaches after they are
made (their op no longer says what they hold) and each value's dtype.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from torch.fx import Node

from zeta_fx.semantics.dtypes import in_dtype
from zeta_fx.semantics.keys import bind, op_key
from zeta_fx.semantics.lattice import U, Z
from zeta_fx.semantics.rowmax import keeps_row_maximum
from zeta_fx.semantics.tables import (ALWAYS_PAIRS, AT_MOST_ONE_OPS, BOUNDED_BY_ONE, COPIES,
                                      FRESH, INDEXED_PAIRS, MASK_CARRIERS, MULTIPLY, NEG_INF_KEEPING,
                                      NONNEG_OPS, POSITIVE_OPS, ROW_KEEPING, SIGN_CARRIERS,
                                      SIGN_REDUCTIONS, SIGN_SELECTIONS)
from zeta_fx.tensors import fetch_attr

__all__ = ["nonnegative", "nonpositive", "positive", "at_most_one", "node_arg", "finite_or_neg_inf",
           "zero_added", "keeps_first_column"]


_SIGN_DEPTH = 24  # a state-space model's segment sums are ~15 ops from their A * dt
_NEGATIONS = frozenset({"neg", "negative"})
# <= 0 wherever finite: log of a probability
_NONPOSITIVE_OPS = frozenset({"logsigmoid", "log_softmax", "_log_softmax"})
# ``(variance or deviation, mean)``: item 1 is a mean
_MEAN_PAIRS = frozenset({"var_mean", "std_mean"})


def _memo(sign: Callable[..., bool]) -> Callable[..., bool]:
    """Keep ``sign``'s answers for the sweep ``ctx`` (its ``sign_cache``), by value and
    reader: a proof that branches at every product must not be worked out again. (An
    answer cut short by the depth bound is ``False``: kept, it proves less, never more.)"""
    @functools.wraps(sign)
    def kept(value: Any, depth: int = 0, ctx: Any = None, reader: Node | None = None) -> bool:
        cache = getattr(ctx, "sign_cache", None)
        if cache is None or not isinstance(value, Node):
            return sign(value, depth, ctx, reader)
        key = (sign.__name__, value, reader)
        got = cache.get(key)
        if got is None:
            got = cache[key] = sign(value, depth, ctx, reader)
        return got
    return kept


@_memo
def nonnegative(value: Any, depth: int = 0, ctx: Any = None, reader: Node | None = None
                ) -> bool:
    """Whether ``value`` is provably ``>= 0`` wherever it is finite (``x * x``, ``x ** 2``,
    ``abs``, norms, variances, ``exp``, their means and sums, views and casts of them), as
    ``reader`` reads it (a write in between: not provable)."""
    if isinstance(value, bool):
        return True
    if isinstance(value, (int, float)):
        return value >= 0
    if not _readable(value, depth, ctx, reader):
        return False
    key, _ = op_key(value)
    if key in NONNEG_OPS or key in POSITIVE_OPS:
        return True
    args = bind(value)
    deeper = depth + 1
    item = _pair_item(value, key, args)
    if item is not None:  # the integer positions of topk, sort...; a mean
        return item[0] == "positions" or \
            (item[0] == "mean" and nonnegative(item[1], deeper, ctx, value))
    first = args.get("input", node_arg(value, 0))
    kept = zero_added(value, key, args, ctx)
    if kept is not None:
        return nonnegative(kept, deeper, ctx, value)
    other = _second_tensor(args)
    if key in ("min", "amin", "minimum") and other is not None:
        return nonnegative(first, deeper, ctx, value) and \
            nonnegative(other, deeper, ctx, value)
    if key in ("masked_fill", "where"):
        return all(nonnegative(v, deeper, ctx, value) for v in _filled(key, args))
    if key == "slice":
        last = _last_rows(value, args)
        if last is not None and _rows_nonnegative(first, *last, deeper, ctx, value):
            return True
    if key in SIGN_CARRIERS or key in SIGN_REDUCTIONS or key in SIGN_SELECTIONS or \
            key == "sqrt":
        return nonnegative(first, deeper, ctx, value)
    if key in _NEGATIONS:
        return nonpositive(first, deeper, ctx, value)
    if key == "pow":
        exponent = args.get("exponent")
        if isinstance(exponent, (int, float)) and not isinstance(exponent, bool) and \
                float(exponent).is_integer() and int(exponent) % 2 == 0:
            return True
        return nonnegative(args.get("input"), deeper, ctx, value)
    if key in MULTIPLY:
        a, b = args.get("input"), args.get("other")
        return a is b or (nonnegative(a, deeper, ctx, value) and
                          nonnegative(b, deeper, ctx, value)) or \
            (nonpositive(a, deeper, ctx, value) and nonpositive(b, deeper, ctx, value))
    if key in ("clamp", "clip", "clamp_min"):
        low = _held(args.get("min", node_arg(value, 1)), value, ctx)
        if isinstance(low, (int, float)) and not isinstance(low, bool) and low >= 0 and \
                _max_at_least(value, key, args, 0):
            return True
    if key in ("pad", "constant_pad_nd"):
        return _pads_with(args, lambda v: v >= 0) and nonnegative(first, deeper, ctx, value)
    if key in ("rsub", "sub") and args.get("alpha", 1) == 1:
        # ``1 - a`` with ``a <= 1``: RecurrentGemma's ``sqrt(1 - exp(2 * log_a))``
        minuend, subtrahend = (args.get("other"), first) if key == "rsub" else \
            (first, args.get("other"))
        minuend = _held(minuend, value, ctx)
        if isinstance(minuend, (int, float)) and not isinstance(minuend, bool) and \
                minuend >= 1 and at_most_one(subtrahend, deeper, ctx, value):
            return True
    if key in ("add", "clamp", "clip", "clamp_min", "maximum"):
        return positive(value, depth, ctx, reader)
    return False


def _causal_decay(value: Node, args: dict[str, Any], depth: int, ctx: Any) -> bool:
    """``masked_fill(c.unsqueeze(-1) - c.unsqueeze(-2), ones(n, n).triu(d), v)`` with
    ``d <= 1``, ``v <= 0`` and ``c`` a cumulative sum of values ``<= 0`` along its last
    dimension: the entries kept (``j <= i``) are ``c_i - c_j``, a sum of values ``<= 0``
    (the gated delta rule's pairwise decays, Qwen3-Next's ``exp(cum_i - cum_j)``)."""
    fill = args.get("value")
    if not isinstance(fill, (int, float)) or isinstance(fill, bool) or not fill <= 0 or \
            not _keeps_lower(args.get("mask"), depth, ctx, value):
        return False
    diff = args.get("input")
    if not _readable(diff, depth, ctx, value) or op_key(diff)[0] != "sub":
        return False
    dargs = bind(diff)
    if dargs.get("alpha", 1) != 1:
        return False
    rows = _unsqueezed(dargs.get("input"), 0, depth, ctx, diff)
    columns = _unsqueezed(dargs.get("other"), 1, depth, ctx, diff)
    if rows is None or rows is not columns or op_key(rows)[0] != "cumsum" or \
            not _readable(rows, depth, ctx, diff):
        return False
    cargs = bind(rows)
    rank, dim = _rank(rows), cargs.get("dim", node_arg(rows, 1))
    if not isinstance(dim, int) or isinstance(dim, bool) or cargs.get("dtype") is not None \
            or not (dim == -1 or (rank is not None and dim == rank - 1)):
        return False
    return nonpositive(cargs.get("input"), depth + 1, ctx, rows)


def _unsqueezed(value: Any, back: int, depth: int, ctx: Any, reader: Node) -> Node | None:
    """``c`` where ``value`` is ``c.unsqueeze(d)`` that puts ``c``'s last dimension second
    to last (``back`` 0: the rows) or last (``back`` 1: the columns)."""
    if not _readable(value, depth, ctx, reader) or op_key(value)[0] != "unsqueeze":
        return None
    uargs = bind(value)
    source, dim = uargs.get("input", node_arg(value, 0)), uargs.get("dim", node_arg(value, 1))
    if not isinstance(source, Node) or not isinstance(dim, int) or isinstance(dim, bool):
        return None
    # the new axis last keeps c's last dimension second to last (rows), and vice versa
    if dim < 0:
        return source if dim == -1 - back else None
    rank = _rank(source)
    return source if rank is not None and dim == rank - back else None


def _keeps_lower(mask: Any, depth: int, ctx: Any, reader: Node) -> bool:
    """Whether ``mask`` is ``ones(n, n, dtype=bool).triu(d)`` with ``d <= 1``: it masks at
    least every entry above the diagonal of the last two dimensions it is applied to."""
    if isinstance(mask, Node) and mask.op == "get_attr":  # folded into a constant by tracing
        if ctx is not None and ctx.read_is_stale(mask, reader):
            return False
        tensor = fetch_attr(mask.graph.owning_module, str(mask.target))
        if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.bool or \
                tensor.dim() != 2 or tensor.shape[0] != tensor.shape[1] or \
                tensor.shape[0] < 2 or tensor.is_meta:
            return False
        above = torch.ones(tensor.shape, dtype=torch.bool, device=tensor.device).triu(1)
        return bool(tensor[above].all())
    if not _readable(mask, depth, ctx, reader) or op_key(mask)[0] != "triu":
        return False
    margs = bind(mask)
    diagonal = margs.get("diagonal", node_arg(mask, 1) if len(mask.args) > 1 else 0)
    ones = margs.get("input", node_arg(mask, 0))
    if not isinstance(diagonal, int) or isinstance(diagonal, bool) or diagonal > 1 or \
            not _readable(ones, depth, ctx, mask) or op_key(ones)[0] != "ones":
        return False
    val = ones.meta.get("val")
    if hasattr(val, "shape"):
        shape = tuple(val.shape)
    else:  # a symbolic trace: the sizes it was called with
        shape = tuple(ones.args[0]) if len(ones.args) == 1 and \
            isinstance(ones.args[0], (list, tuple)) else tuple(ones.args)
    # (a 1 x 1 mask masks nothing above the diagonal it is broadcast to; an n x n one with
    # n >= 2 broadcasts only to n x n, or over differences of one step, all 0)
    return len(shape) == 2 and all(isinstance(n, int) for n in shape) and \
        shape[0] == shape[1] >= 2


def _max_at_least(value: Node, key: str, args: dict[str, Any], low: float) -> bool:
    """Whether a clamp's upper bound (none, or a number) is at least ``low``: with
    ``max < min`` every element becomes ``max``."""
    high = None if key == "clamp_min" else args.get("max", node_arg(value, 2))
    return high is None or (isinstance(high, (int, float)) and not isinstance(high, bool)
                            and high >= low)


def _rank(value: Any) -> int | None:
    val = value.meta.get("val") if isinstance(value, Node) else None
    return val.dim() if hasattr(val, "dim") else None


def _last_rows(value: Node, args: dict[str, Any]) -> tuple[int, int] | None:
    """``(dim, k)`` where ``value`` slices the last ``k`` entries of dimension ``dim``
    (counted from the end, ``-1`` the last) of its input, step 1; ``None`` otherwise."""
    source, dim = args.get("input"), args.get("dim", 0)
    start, end, step = args.get("start"), args.get("end"), args.get("step", 1)
    rank = _rank(source)
    if not isinstance(dim, int) or step not in (1, None) or not isinstance(start, int):
        return None
    if dim >= 0:
        if rank is None:
            return None
        dim -= rank
    if start < 0 and (end is None or (isinstance(end, int) and end >= 2 ** 62)):
        return dim, -start
    val = source.meta.get("val") if isinstance(source, Node) else None
    size = val.shape[dim] if hasattr(val, "shape") else None
    if isinstance(size, int) and start >= 0 and (end is None or end >= size) and start < size:
        return dim, size - start
    return None


def _rows_nonnegative(x: Any, dim: int, k: int, depth: int, ctx: Any, reader: Node) -> bool:
    """Whether the last ``k`` entries of ``x`` along ``dim`` (from the end) are ``>= 0``: a
    matmul's rows come from its left factor's rows (``pad(v, value=1) @ relu(k)``: the padded
    row of ones times values ``>= 0``, Sana's linear attention's normaliser)."""
    if not _readable(x, depth, ctx, reader):
        return nonnegative(x, depth, ctx, reader)
    key, _ = op_key(x)
    args = bind(x)
    first = args.get("input", node_arg(x, 0))
    if key == "matmul" and dim == -2 and _rank(first) not in (None, 1) and \
            _rank(args.get("other")) not in (None, 1):
        return _rows_nonnegative(first, -2, k, depth + 1, ctx, x) and \
            nonnegative(args.get("other"), depth + 1, ctx, x)
    if key in ("pad", "constant_pad_nd"):
        pad = args.get("pad", node_arg(x, 1))
        j = -dim - 1  # pairs in `pad` run from the last dimension
        if isinstance(pad, (list, tuple)) and len(pad) > 2 * j + 1 and \
                isinstance(pad[2 * j + 1], int) and pad[2 * j + 1] >= k and \
                args.get("mode", "constant") in ("constant", None):
            fill = args.get("value", 0)
            return isinstance(fill, (int, float)) and (fill or 0) >= 0
    if key in COPIES:
        return _rows_nonnegative(first, dim, k, depth + 1, ctx, x)
    return nonnegative(x, depth, ctx, reader)


def _pads_with(args: dict[str, Any], holds: Any) -> bool:
    """Whether a ``pad`` pads with a constant for which ``holds`` (other modes copy the
    input's own values)."""
    if args.get("mode", "constant") not in ("constant", None):
        return True
    fill = args.get("value", args.get("fill_value", 0))
    fill = 0 if fill is None else fill
    return isinstance(fill, (int, float)) and holds(fill)


@_memo
def nonpositive(value: Any, depth: int = 0, ctx: Any = None, reader: Node | None = None
                ) -> bool:
    """Whether ``value`` is provably ``<= 0`` wherever it is finite: ``-exp(a)``, a
    negated norm, ``log_softmax``, and products of such with values ``>= 0`` (a state-space
    model's ``A * dt``, whose ``exp`` is then at most 1)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value <= 0
    if not _readable(value, depth, ctx, reader):
        return False
    key, _ = op_key(value)
    if key in _NONPOSITIVE_OPS:
        return True
    args = bind(value)
    deeper = depth + 1
    item = _pair_item(value, key, args)
    if item is not None:  # positions 0, 1, 2...: not the values' sign; a mean
        return item[0] == "mean" and nonpositive(item[1], deeper, ctx, value)
    first = args.get("input", node_arg(value, 0))
    kept = zero_added(value, key, args, ctx)
    if kept is not None:
        return nonpositive(kept, deeper, ctx, value)
    other = _second_tensor(args)
    if key in ("max", "amax", "maximum", "fmax") and other is not None:
        # max(a, b) <= 0 needs both; max(a, dim) is a reduction of a
        return nonpositive(first, deeper, ctx, value) and \
            nonpositive(other, deeper, ctx, value)
    if key in _NEGATIONS:
        return nonnegative(first, deeper, ctx, value)
    if key in ("masked_fill", "where"):
        return all(nonpositive(v, deeper, ctx, value) for v in _filled(key, args)) or \
            (key == "masked_fill" and _causal_decay(value, args, deeper, ctx))
    if key in ("pad", "constant_pad_nd"):
        return _pads_with(args, lambda v: v <= 0) and nonpositive(first, deeper, ctx, value)
    if key in SIGN_CARRIERS or key in SIGN_SELECTIONS or \
            key in ("sum", "mean", "amax", "amin", "max", "min", "cumsum"):
        return nonpositive(first, deeper, ctx, value)
    if key in MULTIPLY:
        a, b = args.get("input"), args.get("other")
        return (nonpositive(a, deeper, ctx, value) and nonnegative(b, deeper, ctx, value)) or \
            (nonnegative(a, deeper, ctx, value) and nonpositive(b, deeper, ctx, value))
    return False


@_memo
def at_most_one(value: Any, depth: int = 0, ctx: Any = None, reader: Node | None = None
                ) -> bool:
    """Whether ``value`` is provably ``<= 1`` wherever it is finite: a gate or probability
    (``sigmoid``, ``softmax``), ``exp`` of a value ``<= 0``, and views and casts of such."""
    if isinstance(value, bool):
        return True
    if isinstance(value, (int, float)):
        return value <= 1
    if not _readable(value, depth, ctx, reader):
        return False
    key, _ = op_key(value)
    if key in AT_MOST_ONE_OPS:
        return True
    args = bind(value)
    item = _pair_item(value, key, args)
    if item is not None:
        return item[0] == "mean" and at_most_one(item[1], depth + 1, ctx, value)
    first = args.get("input", node_arg(value, 0))
    if key in BOUNDED_BY_ONE:
        return nonpositive(first, depth + 1, ctx, value)
    if key in SIGN_CARRIERS:
        return at_most_one(first, depth + 1, ctx, value)
    return False


@_memo
def positive(value: Any, depth: int = 0, ctx: Any = None, reader: Node | None = None) -> bool:
    """Whether ``value`` is provably ``> 0`` wherever it is finite, so that dividing by it
    (``rsqrt``, ``log``, ``1 / x``) stays finite: a positive constant, ``v + eps`` with
    ``v >= 0`` (``eps`` nonzero in the add's dtype), ``clamp(v, min=eps)``, ``exp``,
    ``sigmoid``, ``softmax``, the sum, mean or top-k values of such (a router's
    ``p / p.sum()``), ``sqrt``/``rsqrt`` of such, and views and casts.

    >>> import torch
    >>> from torch import fx
    >>> gm = fx.symbolic_trace(lambda x: (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True)
    ...                                    + 1e-6), x / x.norm()))
    >>> divisors = [n.args[1] for n in gm.graph.nodes if n.op == "call_function"
    ...             and n.target.__name__ == "truediv"]
    >>> [positive(d) for d in divisors]
    [True, False]
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value > 0
    if not _readable(value, depth, ctx, reader):
        return False
    key, _ = op_key(value)
    if key in POSITIVE_OPS:
        return True
    args = bind(value)
    deeper = depth + 1
    item = _pair_item(value, key, args)
    if item is not None:  # position 0 is a position too
        return item[0] == "mean" and positive(item[1], deeper, ctx, value)
    kept = zero_added(value, key, args, ctx)
    if kept is not None:
        return positive(kept, deeper, ctx, value)
    other = _second_tensor(args)
    if key in ("min", "amin", "minimum") and other is not None:
        return positive(args.get("input"), deeper, ctx, value) and \
            positive(other, deeper, ctx, value)
    if key in SIGN_CARRIERS or key in SIGN_REDUCTIONS or key in SIGN_SELECTIONS or \
            key in ("sqrt", "rsqrt"):
        return positive(args.get("input", node_arg(value, 0)), deeper, ctx, value)
    if key == "add":
        a, b = (_held(v, value, ctx) for v in (args.get("input"), args.get("other")))
        alpha = args.get("alpha", 1)
        if not isinstance(alpha, (int, float)) or alpha <= 0:
            return False
        return (positive(a, deeper, ctx, value) and nonnegative(b, deeper, ctx, value)) or \
            (nonnegative(a, deeper, ctx, value) and positive(b, deeper, ctx, value))
    if key in ("clamp", "clip", "clamp_min"):
        low = _held(args.get("min", node_arg(value, 1)), value, ctx)
        return isinstance(low, (int, float)) and not isinstance(low, bool) and low > 0 and \
            _max_at_least(value, key, args, low)
    if key == "maximum":
        return positive(args.get("other"), deeper, ctx, value) or \
            positive(args.get("input"), deeper, ctx, value)
    return False


def zero_added(value: Node, key: str, args: dict[str, Any], ctx: Any) -> Any:
    """The operand ``a`` of ``a + b`` (or ``a - b``) where ``b`` is exactly zero in this
    sweep, as ``value`` reads it: the sum *is* ``a``, and everything proven of ``a`` holds
    of it (a residual merge proven equal to its skip). ``None`` otherwise, and always
    without the zero facts (``ctx``): a sweep with fewer parameters zero proves less."""
    if ctx is None or key not in ("add", "sub", "subtract"):
        return None
    a, b = args.get("input"), args.get("other")
    if isinstance(b, Node) and ctx.fact_at(b, value) == Z:
        return _held(a, value, ctx)  # a constant as the sum holds it (1e-50 is 0 in float32)
    if key == "add" and isinstance(a, Node) and ctx.fact_at(a, value) == Z and \
            args.get("alpha", 1) == 1:
        return _held(b, value, ctx)
    return None


def _filled(key: str, args: dict[str, Any]) -> tuple[Any, Any]:
    """The two sources of ``masked_fill(x, m, v)`` (``x``, ``v``) or ``where(c, x, y)``."""
    if key == "where":
        return args.get("input"), args.get("other")
    return args.get("input"), args.get("value")


def finite_or_neg_inf(value: Any, ctx: Any, depth: int = 0, reader: Node | None = None
                      ) -> bool:
    """Whether ``value`` is finite or ``-inf`` everywhere (never NaN nor ``+inf``), under the
    zero facts ``ctx``: a value whose fact is not unknown, or scores masked with ``-inf``
    (``masked_fill``, ``where``, ``scatter``) of such, their views, casts, sums and
    cumulative sums (``-inf + finite`` is ``-inf``; no ``+inf`` to meet it). ``exp`` of it
    is finite, and ``0`` where it is ``-inf``.

    >>> import torch
    >>> from torch import fx
    >>> from zeta_fx.semantics.lattice import U, F_
    >>> class Facts:  # the inputs finite; nothing known of what is computed from them
    ...     def fact(self, v): return F_ if v.op == "placeholder" else U
    ...     def fact_at(self, v, r): return self.fact(v)
    ...     def read_is_stale(self, v, r): return False
    ...     def written_after(self, v): return False
    >>> gm = fx.symbolic_trace(lambda x, m: (x.masked_fill(m, float("-inf")).cumsum(-1),
    ...                                      x.masked_fill(m, float("-inf")) - x))
    >>> out = [n for n in gm.graph.nodes if n.op == "output"][0].args[0]
    >>> [finite_or_neg_inf(v, Facts()) for v in out]  # -inf - (-inf) would be NaN
    [True, False]
    """
    if isinstance(value, bool):
        return True
    if isinstance(value, (int, float)):
        return value == value and value != float("inf")
    if not isinstance(value, Node) or depth > _SIGN_DEPTH:
        return False
    if (ctx.fact(value) if reader is None else ctx.fact_at(value, reader)) != U:
        return True
    if value.op not in ("call_function", "call_method") or \
            (reader is not None and ctx.read_is_stale(value, reader)) or \
            (reader is None and ctx.written_after(value)):
        return False
    key, _ = op_key(value)
    args = bind(value)
    deeper = depth + 1
    if key in ("masked_fill", "where"):
        return all(finite_or_neg_inf(v, ctx, deeper, value) for v in _filled(key, args))
    if key == "scatter" and not isinstance(args.get("src", args.get("value")), Node):
        return finite_or_neg_inf(args.get("input"), ctx, deeper, value) and \
            finite_or_neg_inf(args.get("value", args.get("src")), ctx, deeper, value)
    if key in ("add", "sum", "cumsum") or key in NEG_INF_KEEPING:
        operands = (args.get("input"), args.get("other")) if key == "add" else \
            (args.get("input", node_arg(value, 0)),)
        if key == "add" and args.get("alpha", 1) != 1:
            return False
        return all(v is None or finite_or_neg_inf(v, ctx, deeper, value) for v in operands)
    return False


def keeps_first_column(value: Any, dim: Any, ctx: Any, reader: Node | None = None) -> bool:
    """Whether every row of ``value`` along ``dim`` (the last) keeps a finite entry: finite
    scores with a causal mask filled by ``-inf`` (``triu(m, diagonal >= 1)``, or
    ``~tril(ones, diagonal >= 0)``), which never masks the first column. A mask read from
    the inputs (padding) may blank a whole row: ``False``."""
    if not isinstance(value, Node) or value.op not in ("call_function", "call_method") or \
            (reader is not None and ctx.read_is_stale(value, reader)):
        return False
    rank = _rank(value)
    if not isinstance(dim, int) or (dim != -1 and (rank is None or dim != rank - 1)):
        return False
    key, _ = op_key(value)
    args = bind(value)
    if key in ROW_KEEPING:
        return keeps_first_column(args.get("input", node_arg(value, 0)), -1, ctx, value)
    if key != "masked_fill" or not finite_or_neg_inf(args.get("value"), ctx):
        return False
    if keeps_row_maximum(value, ctx):  # a router's margin below the row's best
        return True
    return ctx.fact(args.get("input")) != U and _causal(args.get("mask"), 0)


def _causal(mask: Any, depth: int) -> bool:
    """``mask`` is ``True`` only above the diagonal of its last two dimensions."""
    if not isinstance(mask, Node) or depth > _SIGN_DEPTH or \
            mask.op not in ("call_function", "call_method"):
        return False
    key, _ = op_key(mask)
    args = bind(mask)
    first = args.get("input", node_arg(mask, 0))
    if key in MASK_CARRIERS:
        return _causal(first, depth + 1)
    if key == "triu":
        diagonal = args.get("diagonal", node_arg(mask, 1) or 0)
        return isinstance(diagonal, int) and diagonal >= 1
    if key in ("logical_not", "bitwise_not") and isinstance(first, Node) and \
            first.op in ("call_function", "call_method") and op_key(first)[0] == "tril":
        inner = bind(first)
        diagonal = inner.get("diagonal", node_arg(first, 1) or 0)
        ones = inner.get("input", node_arg(first, 0))
        return isinstance(diagonal, int) and diagonal >= 0 and isinstance(ones, Node) and \
            ones.op in ("call_function", "call_method") and op_key(ones)[0] in FRESH and \
            op_key(ones)[0] in ("ones", "ones_like")
    return False


def _readable(value: Any, depth: int, ctx: Any, reader: Node | None) -> bool:
    """Whether ``value``'s op says what ``reader`` finds: an op node, not too deep, and no
    write to its storage in between (``ctx.read_is_stale``; without a reader, any write
    after it is made)."""
    if not isinstance(value, Node) or depth > _SIGN_DEPTH or \
            value.op not in ("call_function", "call_method"):
        return False
    if ctx is None:
        return True
    if reader is None:
        return not ctx.written_after(value)
    return not ctx.read_is_stale(value, reader)


def _held(constant: Any, node: Node, ctx: Any) -> Any:
    """A Python float as ``node`` holds it, in its dtype (``1e-8`` is ``0.0`` in float16)."""
    if ctx is None or isinstance(constant, bool) or not isinstance(constant, float):
        return constant
    dtype = ctx.dtype_of(node)
    return in_dtype(constant, dtype) if dtype is not None else constant


def _second_tensor(args: dict[str, Any]) -> Any:
    """The second tensor operand of ``max(a, b)`` / ``min(a, b)``: ``other`` as torch's
    schema binds it, or the second positional argument where a symbolic trace could not
    pick the overload (``torch.min(a, b)`` binds as ``arg1``); ``None`` for a reduction
    (``max(a, dim)``, ``max(a)``)."""
    other = args.get("other")
    if other is None and isinstance(args.get("arg1"), Node):
        other = args["arg1"]
    return other


def _pair_item(value: Node, key: str, args: dict[str, Any]) -> tuple[str, Any] | None:
    """What ``value`` holds where it is an item of a tuple whose items differ in sign:
    ``("positions", None)`` for item 1 of a ``(values, indices)`` pair (``topk``, ``sort``,
    ``max(x, dim)``...: integer positions ``>= 0``, whatever the sign of the values);
    ``("mean", x)`` for item 1 of ``var_mean(x)`` / ``std_mean(x)`` (the mean has ``x``'s
    sign, not the variance's); ``("mixed", None)`` for a slice of such a pair (``[1:]``,
    ``[:]``: both items, no sign). ``None`` otherwise: a ``getitem`` carries its source's
    sign."""
    if key != "getitem":
        return None
    index = args.get("arg1", node_arg(value, 1))
    whole = isinstance(index, int) and not isinstance(index, bool)
    if whole and index not in (1, -1):
        return None  # (a pair's item -1 is item 1)
    source = args.get("input", node_arg(value, 0))
    if not isinstance(source, Node) or source.op not in ("call_function", "call_method"):
        return None
    skey = op_key(source)[0]
    if not whole and (skey in _MEAN_PAIRS or skey in INDEXED_PAIRS):
        return "mixed", None  # a slice of a pair holds both items: no sign of either
    if skey in _MEAN_PAIRS:
        return "mean", bind(source).get("input", node_arg(source, 0))
    if skey not in INDEXED_PAIRS:
        return None
    if skey in ALWAYS_PAIRS or isinstance(source.meta.get("val"), (tuple, list)):
        return "positions", None
    sargs = bind(source)
    dim = sargs.get("dim", sargs.get("arg1"))
    return ("positions", None) if isinstance(dim, int) and not isinstance(dim, bool) else None


def node_arg(node: Node, i: int) -> Any:
    return node.args[i] if len(node.args) > i else None
