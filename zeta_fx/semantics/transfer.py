"""Transfer functions: what each op does to the zero facts of its inputs.

One function per op (``HANDLERS``, by op key), each ``(facts, node, bound arguments, text) ->
(fact, why)``: ``facts`` is the sweep that calls it (:class:`zeta_fx.analysis.facts.ZeroFacts`),
through the small interface :class:`Facts`. Ops without a function of their own are read by
category (:mod:`zeta_fx.semantics.tables`) in the sweep.

The rules: ``0 * y`` is zero only where ``y`` is finite; division, ``rsqrt``, reciprocal,
``log`` and negative powers of a value that may be zero are ``UNKNOWN``; ``where``, clamps,
``pad`` and ``masked_fill`` join their fills and bounds; norms divide by
``sqrt(var + eps)``, with ``eps`` taken in the dtype the norm computes in.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import torch
from torch.fx import Node

from zeta_fx.semantics.keys import op_key, signature
from zeta_fx.semantics.lattice import (F_, P, U, Z, Fact, constant_fact, finite, join,
                                       normalised, product, singular, total)
from zeta_fx.semantics.signs import (finite_or_neg_inf, keeps_first_column, node_arg,
                                     nonpositive, positive)
from zeta_fx.semantics.tables import (BOUNDED_BY_ONE, COPIES, FULL, INDEXED_PAIRS, PRESERVING, SCATTER_REDUCES,
                                      SOFTMAXES, WEIGHT_NORMS, ZEROS)

__all__ = ["HANDLERS", "QUICK_METHODS", "Facts", "makes_zeros", "may_be_zero", "clamp_fact",
           "threshold_fact", "neg_inf_masked", "index_item"]


class Facts(Protocol):
    """What a transfer function asks of the sweep that calls it."""

    def fact(self, value: Any) -> Fact: ...
    def fact_at(self, value: Any, reader: Node) -> Fact: ...
    def operand(self, value: Any, node: Node) -> Fact: ...
    def changed(self, value: Any) -> bool: ...
    def why(self, value: Any) -> str: ...
    def key(self, node: Node) -> tuple[str, bool]: ...
    def eps_in(self, eps: Any, value: Any, key: str) -> Any: ...
    def out_of_range(self, node: Node, key: str, source: Any, domain: str | None = None
                     ) -> str: ...
    def batch_norm_fact(self, args: dict[str, Any], key: str) -> Fact: ...
    def written_after(self, value: Any) -> bool: ...
    def read_is_stale(self, value: Any, reader: Node) -> bool: ...
    def dtype_of(self, value: Any) -> Any: ...


def makes_zeros(node: Node) -> bool:
    """Whether ``node`` makes a fresh tensor of zeros (``torch.zeros_like(x)``,
    ``x.new_zeros(...)``, ``torch.full(..., 0.0)``): the start of an accumulation."""
    if node.op not in ("call_function", "call_method"):
        return False
    key, in_place = op_key(node)
    if key in ZEROS:
        return True
    if key in COPIES and not in_place and node.args:
        # a cast or copy of fresh zeros that nothing else reads (so nothing wrote into
        # them first): HiDream's ``zeros_like(x).to(dtype)`` accumulator
        source = node.args[0]
        return isinstance(source, Node) and len(source.users) == 1 and makes_zeros(source)
    if key in FULL:
        value = node.kwargs.get("fill_value", node.kwargs.get("value"))
        if value is None and len(node.args) > 1:
            value = node.args[-1] if key != "fill" else node.args[1]
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0
    return False


def _h_index_add(f: Facts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    """``self.index_add(dim, index, source, alpha)``: ``self`` plus ``alpha * source`` at the
    indexed rows (an eager MoE's accumulation of its experts' outputs)."""
    source = a.get("source", node.args[3] if len(node.args) > 3 else None)
    alpha = a.get("alpha", 1)
    added = product(f.fact(source), constant_fact(alpha)) if alpha != 1 else f.fact(source)
    out = total(f.fact(a.get("input")), added)
    return (P if out == F_ and Z in (f.fact(a.get("input")), added) else out), \
        f"{what} adds values that are not zero"


def _h_scatter_reduce(f: Facts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    """``self.scatter_reduce(dim, index, src, reduce, include_self=True)``: ``self`` where
    nothing is scattered; elsewhere the reduction of what is scattered there (with ``self``'s
    entry where ``include_self``). Every reduction of zeros is zero (a ``mean`` divides by a
    count of at least one), so the output is zero exactly when ``self`` and ``src`` are;
    ``sum`` and ``mean`` add finite values as ``add`` does, ``amax``/``amin`` pick one of
    them, and a ``prod`` of finite values may overflow."""
    x, src = f.fact(a.get("input")), f.fact(a.get("src"))
    reduce = a.get("reduce")
    if x == Z and src == Z:
        return Z, ""
    if reduce in ("sum", "mean"):
        out = total(x, src)
    elif reduce in ("amax", "amin"):
        out = join(x, src)
    elif reduce == "prod":
        return U, f"{what}: a product of values the zeroing changed may overflow"
    else:
        return U, f"{what} reduces by {reduce!r}"
    return (P if out == F_ and Z in (x, src) else out), \
        f"{what} reduces values that are not all zero"


def may_be_zero(f: Facts, value: Any, reader: Node | None = None) -> bool:
    """Whether a divisor may be zero after the zeroing: its fact says so (zero, partly
    zero, unknown), or the zeroing changed it and it is not provably positive. (A value the
    zeroing does not reach is as it was: the model's own divisions are taken to be finite;
    a changed one may now be zero where it was not, a row made constant, a ReLU now off.)"""
    fact = f.fact(value)
    if fact == U:
        return True
    if positive(value, 0, f, reader):
        return False
    if fact in (Z, P):
        return True
    return isinstance(value, Node) and f.changed(value)


def neg_inf_masked(f: Facts, node: Node, key: str, source: Any) -> tuple[Fact, str] | None:
    """``exp`` of scores masked with ``-inf`` (a state-space model's segment sums
    ``exp(segsum(A * dt))``): the input's fact is ``UNKNOWN`` only for its ``-inf`` fills,
    and ``exp`` of a value ``<= 0`` or ``-inf`` lies in [0, 1] (``PARTLY_ZERO``: zero where
    masked). A softmax over such scores is finite where each row keeps a finite entry (a
    causal mask keeps the first column; ``_safe_softmax`` gives 0 on a blank row); a padding
    mask may blank a whole row, and is said so. ``None`` where nothing is proven."""
    name = f"`{node.name}` ({key})"
    if key in SOFTMAXES and finite_or_neg_inf(source, f, 0, node):
        dim = node.kwargs.get("dim", node_arg(node, 1))
        if key == "_safe_softmax" or keeps_first_column(source, dim, f, node):
            return P, f"{name}: every row keeps a finite score, so it lies in [0, 1]"
        return U, (f"{name} of scores masked with -inf: a row may be all -inf (a padding "
                   "mask can blank a whole row), and then it is NaN")
    if key not in BOUNDED_BY_ONE or not finite_or_neg_inf(source, f, 0, node) or \
            not nonpositive(source, 0, f, node):
        return None
    return P, (f"`{node.name}` ({key}) of `{getattr(source, 'name', source)}` (<= 0 or -inf)"
               " lies in [0, 1], zero where masked")


def index_item(f: Facts, source: Any, index: Any) -> Fact | None:
    """The fact of item ``index`` of ``source`` where it is the integer positions of
    ``topk``, ``sort``, ``max(x, dim)``...: finite whatever the values were (``F_``)."""
    if index != 1 or not isinstance(source, Node) or \
            source.op not in ("call_function", "call_method"):
        return None
    key = f.key(source)[0]
    if key not in INDEXED_PAIRS:
        return None
    if key in ("max", "min", "median", "nanmedian"):  # only the forms with a dim are pairs
        dim = source.kwargs.get("dim", node_arg(source, 1))
        if not isinstance(dim, int) or isinstance(dim, bool):
            return None
    return F_


def clamp_fact(x: Fact, low: Any, high: Any, what: str) -> tuple[Fact, str]:
    if x == U:
        return U, f"{what}: input may be non-finite"
    numeric = all(b is None or isinstance(b, (int, float)) for b in (low, high))
    if numeric:
        if (low is None or low <= 0) and (high is None or high >= 0):
            return x, ""
        bound = low if low is not None and low > 0 else high
        return (F_ if x == Z else P), f"{what} clamps to [{low}, {high}], so zero becomes {bound}"
    return (P if x != U else U), f"{what} clamps to a tensor bound: zero does not stay zero"


def threshold_fact(x: Fact, threshold: Any, value: Any, what: str) -> tuple[Fact, str]:
    if x == U:
        return U, ""
    if isinstance(threshold, (int, float)) and isinstance(value, (int, float)):
        if threshold < 0 or value == 0:
            return x, ""
        return (F_ if x == Z else P), f"{what} replaces values <= {threshold} by {value}"
    return P, f"{what} has a tensor threshold"


# -- handlers: (facts, node, bound args, description) -> (fact, why) -----------------------

def _h_add(f: Facts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    key = f.key(node)[0]
    x, other = f.operand(a.get("input"), node), f.operand(a.get("other"), node)
    alpha = a.get("alpha", 1)
    scaled = other
    if isinstance(alpha, Node):
        scaled = product(other, f.fact(alpha))
    elif alpha is not None and alpha != 1:
        scaled = product(other, constant_fact(alpha))
    if key == "rsub":  # other - alpha * input
        x, scaled = other, product(x, constant_fact(alpha)) if alpha != 1 else x
    out = total(x, scaled)
    why = ""
    if out != Z:
        nonzero = [n for n in (a.get("input"), a.get("other")) if f.fact(n) != Z]
        names = ", ".join(f"`{n.name}`" if isinstance(n, Node) else repr(n) for n in nonzero)
        why = f"{what} adds {names}, which is not zero"
    return out, why


def _h_mul(f: Facts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    operands = [v for k, v in a.items() if k in ("input", "other", "mat2", "vec2", "mat1")]
    if "operands" in a:
        operands = list(a["operands"])
    facts = [f.fact(v) for v in operands]
    out = product(*facts)
    why = ""
    if out == U and Z in facts:
        bad = next((v for v, fact in zip(operands, facts) if fact == U), None)
        cause = f" (`{bad.name}`: {f.why(bad)})" if isinstance(bad, Node) else ""
        why = (f"{what} multiplies a zero by a value that may be non-finite (0 * inf is "
               f"NaN){cause}")
    elif out != Z:
        why = f"{what}: no factor is zero"
    return out, why


def _h_div(f: Facts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    num = f.fact(a.get("input"))
    d = a.get("other")
    if may_be_zero(f, d, node):
        name = f"`{d.name}`" if isinstance(d, Node) else repr(d)
        return U, f"`{node.name}` divides by {name}, which may be zero"
    return num, f"{what}: its numerator is not zero"


def _h_pow(f: Facts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    base, exponent = a.get("input"), a.get("exponent")
    if isinstance(exponent, (int, float)):
        x = f.fact(base)
        if exponent > 0:
            if x == F_ and not float(exponent).is_integer():
                why = f.out_of_range(node, f"** {exponent:g}", base, "x >= 0")
                if why:
                    return U, why
            if x == F_ and exponent > 1:
                why = f.out_of_range(node, f"** {exponent:g}", base)
                if why:
                    return U, why
            return x, what
        if exponent == 0:
            return finite(x), f"{what}: x ** 0 is 1"
        if x == F_ and may_be_zero(f, base, node):
            return U, f"{what}: a negative power of `{getattr(base, 'name', base)}`, which the zeroing changed and which may now be zero"
        return singular(x), f"{what}: a negative power of a value that may be zero"
    if isinstance(base, (int, float)):  # 2 ** x
        return finite(f.fact(exponent)), f"{what}: c ** x is not zero"
    x, e = f.fact(base), f.fact(exponent)
    if x == F_ and e != U:
        return F_, what
    return U, f"{what}: a tensor power of a value that may be zero"


def _h_where(f: Facts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    x, y = a.get("input"), a.get("other")
    out = join(f.fact(x), f.fact(y))
    return out, f"{what} selects between `{getattr(x, 'name', x)}` and `{getattr(y, 'name', y)}`, " \
                "not both zero"


def _h_masked_fill(f: Facts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    value = a.get("value")
    out = join(f.fact(a.get("input")), f.operand(value, node))
    return out, f"{what} fills with {getattr(value, 'name', value)!r}, not zero"


def _h_clamp(f: Facts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    key = f.key(node)[0]
    x = f.fact(a.get("input"))
    if key == "hardtanh":
        return clamp_fact(x, a.get("min_val", -1.0), a.get("max_val", 1.0), what)
    if key == "relu6":
        return x, ""
    low, high = a.get("min"), a.get("max")
    if key == "clamp_min":
        high = None
    if key == "clamp_max":
        low = None
    if isinstance(low, Node) or isinstance(high, Node):
        return join(x, f.fact(low) if isinstance(low, Node) else x,
                    f.fact(high) if isinstance(high, Node) else x, P), \
            f"{what} clamps to a tensor bound"
    return clamp_fact(x, low, high, what)


def _h_threshold(f: Facts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    return threshold_fact(f.fact(a.get("input")), a.get("threshold"), a.get("value"), what)


def _h_pad(f: Facts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    key = f.key(node)[0]
    x = f.fact(a.get("input"))
    mode = a.get("mode", "constant")
    value = a.get("value", 0)
    if key == "constant_pad_nd" or mode == "constant":
        value = 0 if value is None else value
        return join(x, constant_fact(value)) if x != U else U, \
            f"{what} pads with {value!r}, not zeros"
    return x, what


def _h_cat(f: Facts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    tensors = a.get("tensors", a.get("input"))
    return f.fact(tensors), f"{what} joins pieces that are not all zero"


def _h_linear(f: Facts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    key = f.key(node)[0]
    weight = a.get("weight")
    scaled = product(f.fact(a.get("input")), f.fact(weight))
    if key == "bilinear":
        scaled = product(scaled, f.fact(a.get("input2")))
    bias = a.get("bias")
    out = total(scaled, f.fact(bias)) if bias is not None else scaled
    why = f"{what} adds a bias that is not zeroed" if scaled == Z and out != Z else \
        f"{what}: its weight is not zero" if out != Z else ""
    if scaled == U:
        why = f"{what}: its input may be non-finite"
    return out, why


def _h_addmm(f: Facts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    m1 = a.get("mat1", a.get("batch1"))
    m2 = a.get("mat2", a.get("batch2"))
    prod = product(f.fact(m1), f.fact(m2))
    beta = a.get("beta", 1)
    bias = f.fact(a.get("input")) if beta != 0 else Z
    return total(prod, bias), f"{what} adds `{getattr(a.get('input'), 'name', '')}`"


def _h_embedding(f: Facts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    return f.fact(a.get("weight")), f"{what}: its weight is not zero"


def _h_getattr(f: Facts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    attr = node.args[1] if len(node.args) > 1 else None
    if attr in ("T", "mT", "H", "mH", "real", "data"):
        return f.fact(node.args[0]), what
    return U, f"{what}: attribute {attr!r} of a changed value"


def _h_extremum(f: Facts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    other = node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
    if isinstance(other, Node) and getattr(other, "op", "") != "":
        return join(f.fact(a.get("input")), f.fact(other)), what
    return f.fact(a.get("input")), what


def _h_layer_norm(f: Facts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    key = f.key(node)[0]
    eps = a.get("eps", 1e-5)
    if key == "rms_norm" and eps is None:
        eps = torch.finfo(torch.float32).eps
    fact = normalised(f.fact(a.get("input")), f.eps_in(eps, a.get("input"), key), True,
                       f.changed(a.get("input")))
    if a.get("weight") is not None:
        fact = product(fact, f.fact(a["weight"]))
    if a.get("bias") is not None:
        fact = total(fact, f.fact(a["bias"]))
    return fact, f"{what}: eps = {eps!r}" if fact == U else f"{what}"


def _h_batch_norm(f: Facts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    key = f.key(node)[0]
    fact = f.batch_norm_fact(a, key)
    return fact, f"{what} normalises with running statistics: zero becomes -mean/std" \
        if fact not in (Z, U) else f"{what}"


def _h_normalize(f: Facts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    eps = a.get("eps", 1e-12)
    x = f.fact(a.get("input"))
    return (normalised(x, f.eps_in(eps, a.get("input"), "normalize"), True,
                        f.changed(a.get("input"))),
            f"{what} with eps = {eps!r} divides zero by zero")


def _h_sdpa(f: Facts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    q, k, v = (f.fact(a.get(n)) for n in ("query", "key", "value"))
    mask = f.fact(a.get("attn_mask")) if a.get("attn_mask") is not None else F_
    weights = U if U in (q, k, mask) else F_
    return product(weights, v), f"{what}: its value input is not zero"


def _h_window_attention(f: Facts, node: Node, a: dict[str, Any], what: str
                        ) -> tuple[Fact, str]:
    inputs = [f.fact(a.get(k)) for k in ("input", "qkv_weight", "relative_position_bias",
                                          "qkv_bias", "logit_scale") if a.get(k) is not None]
    attended = U if U in inputs else F_
    out = product(attended, f.fact(a.get("proj_weight")))
    if a.get("proj_bias") is not None:
        out = total(out, f.fact(a.get("proj_bias")))
    return out, f"{what}: its output projection is not zero"


def _h_grouped_mm(f: Facts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    """A grouped matmul (MoE experts: ``aten._grouped_mm``, transformers' fallback): each
    group's rows times that group's weight, plus an optional bias."""
    x, w = (node.args + (None, None))[:2]
    out = product(f.fact(x), f.fact(w))
    bias = node.args[3] if len(node.args) > 3 else node.kwargs.get("bias")
    if isinstance(bias, Node):
        out = total(out, f.fact(bias))
    return out, f"{what}: its weight is not zero"


def _h_binary_max(f: Facts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    return join(f.fact(a.get("input")), f.fact(a.get("other"))), what


def _h_prelu(f: Facts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    return f.fact(a.get("input")), what


def _h_remainder(f: Facts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    den = f.fact(a.get("other"))
    if den != F_:
        return U, f"{what} by a value that may be zero"
    return f.fact(a.get("input")), what


def _h_copy(f: Facts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    """``x.copy_(src)``: ``x`` now holds ``src``."""
    src = a.get("src", node_arg(node, 1))
    return f.operand(src, node), f"{what} copies a value that is not zero"


def _h_zero(f: Facts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    return Z, ""


def _h_fill(f: Facts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    value = a.get("value", node_arg(node, 1))
    return f.operand(value, node), f"{what} fills with {getattr(value, 'name', value)!r}"


def _h_setitem(f: Facts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    """``x[i] = v`` (and ``x.index_put_(i, v)``): ``x`` holds its own values and ``v``'s
    (added to them, with ``accumulate=True``)."""
    if f.key(node)[0] == "setitem":
        value = node_arg(node, 2)
    else:
        value = a.get("values", node_arg(node, 2))
    old, new = f.fact(node_arg(node, 0)), f.operand(value, node)
    out = total(old, new) if a.get("accumulate") is True else join(old, new)
    return out, f"{what} writes {getattr(value, 'name', value)!r} into `{node_arg(node, 0)}`"


def _h_weight_norm(f: Facts, node: Node, a: dict[str, Any], what: str) -> tuple[Fact, str]:
    """``g * v / ||v||``: the magnitude's fact, while the direction ``v`` is the model's own
    (finite, as every parameter is taken to be); a changed ``v`` may divide 0 by 0."""
    magnitude, direction = (a.get(name) for name in WEIGHT_NORMS[f.key(node)[0]])
    if f.changed(direction):
        return U, f"{what} divides by the norm of `{getattr(direction, 'name', direction)}`, " \
                  "which the zeroing changed and which may now be zero"
    return product(f.fact(magnitude), F_), f"{what}: its magnitude is not zero"


HANDLERS: dict[str, Callable[..., tuple[Fact, str]]] = {
    "copy": _h_copy, "zero": _h_zero, "fill": _h_fill, "setitem": _h_setitem,
    "index_put": _h_setitem,
    "add": _h_add, "sub": _h_add, "subtract": _h_add, "rsub": _h_add,
    "mul": _h_mul, "multiply": _h_mul, "matmul": _h_mul, "mm": _h_mul, "bmm": _h_mul,
    "outer": _h_mul, "kron": _h_mul, "einsum": _h_mul, "dot": _h_mul, "vdot": _h_mul,
    "div": _h_div, "divide": _h_div, "true_divide": _h_div, "floor_divide": _h_div,
    "remainder": _h_remainder, "fmod": _h_remainder,
    "pow": _h_pow, "float_power": _h_pow,
    "where": _h_where, "masked_fill": _h_masked_fill,
    "clamp": _h_clamp, "clip": _h_clamp, "clamp_min": _h_clamp, "clamp_max": _h_clamp,
    "hardtanh": _h_clamp, "threshold": _h_threshold,
    "pad": _h_pad, "constant_pad_nd": _h_pad,
    "cat": _h_cat, "concat": _h_cat, "concatenate": _h_cat, "stack": _h_cat, "hstack": _h_cat,
    "vstack": _h_cat, "dstack": _h_cat,
    "linear": _h_linear, "bilinear": _h_linear, "conv1d": _h_linear, "conv2d": _h_linear,
    "conv3d": _h_linear, "conv_transpose1d": _h_linear, "conv_transpose2d": _h_linear,
    "conv_transpose3d": _h_linear, "convolution": _h_linear, "_convolution": _h_linear,
    "addmm": _h_addmm, "baddbmm": _h_addmm, "embedding": _h_embedding,
    **{key: _h_weight_norm for key in WEIGHT_NORMS},
    "layer_norm": _h_layer_norm, "group_norm": _h_layer_norm, "rms_norm": _h_layer_norm,
    "batch_norm": _h_batch_norm, "instance_norm": _h_batch_norm,
    "normalize": _h_normalize,
    "scaled_dot_product_attention": _h_sdpa, "_scaled_dot_product_flash_attention": _h_sdpa,
    "_scaled_dot_product_flash_attention_for_cpu": _h_sdpa,
    "_scaled_dot_product_efficient_attention": _h_sdpa,
    "_scaled_dot_product_cudnn_attention": _h_sdpa,
    "maximum": _h_binary_max, "minimum": _h_binary_max, "fmax": _h_binary_max,
    "fmin": _h_binary_max, "prelu": _h_prelu, "_prelu_kernel": _h_prelu,
    "getattr": _h_getattr, "shifted_window_attention": _h_window_attention,
    "grouped_mm_fallback": _h_grouped_mm, "_grouped_mm": _h_grouped_mm,
    "index_add": _h_index_add, "scatter_add": _h_index_add,
    **{key: _h_scatter_reduce for key in SCATTER_REDUCES},
    "grouped_mm": _h_grouped_mm, "max": _h_extremum, "min": _h_extremum,
}

# Methods whose fact is their first argument's (``PRESERVING``, no handler of their own,
# that argument bound as ``input``): views, reshapes, casts, activations.
QUICK_METHODS = frozenset(
    k for k in PRESERVING if k not in HANDLERS and k not in ("getitem", "nan_to_num")
    and (signature(k) or ("input",))[0] == "input")
