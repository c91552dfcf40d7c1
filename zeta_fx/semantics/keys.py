"""Op identity and argument binding: one key per op, its arguments by name.

``torch.relu``, ``F.relu``, ``x.relu()``, ``aten.relu.default`` and their in-place forms all
have the key ``relu``; ``operator.iadd`` is ``add``. Arguments are bound to the names torch
uses (aten's ``self`` is ``input``), once per node.

>>> from torch import fx
>>> gm = fx.symbolic_trace(lambda x, y: torch.add(x, other=y, alpha=2).relu_())
>>> [op_key(n) for n in gm.graph.nodes if n.op.startswith("call")]
[('add', False), ('relu', True)]
"""

from __future__ import annotations

from typing import Any

import torch
from torch.fx import Node

__all__ = ["op_key", "bind", "bind_as", "signature", "target_name"]


def target_name(target: Any) -> str:
    """A readable, stable name for a node target: ``torch.relu``, ``operator.add``, ``.view``."""
    if isinstance(target, str):
        return f".{target}"
    if isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return str(target)  # aten.relu.default (torch.export graphs)
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or repr(target)
    module = {"_operator": "operator", "torch._C._nn": "torch.nn.functional",
              "torch._C._VariableFunctions": "torch"}.get(module, module)
    if name.startswith("_VariableFunctionsClass."):
        module, name = "torch", name.split(".", 1)[1]
    return f"{module}.{name}" if module else name


def signature(key: str) -> tuple[str, ...] | None:
    """The positional argument names of the torch function or method ``key``, where known."""
    return _SIGNATURES.get(key)


_OPERATOR_KEYS = {
    "add": "add", "iadd": "add", "sub": "sub", "isub": "sub", "mul": "mul", "imul": "mul",
    "truediv": "div", "itruediv": "div", "floordiv": "floor_divide", "matmul": "matmul",
    "imatmul": "matmul", "neg": "neg", "pos": "pos", "getitem": "getitem", "pow": "pow",
    "ipow": "pow", "mod": "remainder", "abs": "abs",
}
_IN_PLACE_OPERATORS = frozenset({"iadd", "isub", "imul", "itruediv", "ifloordiv", "ipow",
                                 "imatmul", "imod"})


# per aten overload, worked out once: its (key, in place) and its arguments' names
_OVERLOAD_KEYS: dict[Any, tuple[str, bool]] = {}
_OVERLOAD_NAMES: dict[Any, tuple[str, ...]] = {}


def op_key(node: Node) -> tuple[str, bool]:
    """``(key, in_place)``: one key for ``torch.relu``, ``F.relu``, ``x.relu()``,
    ``aten.relu.default`` and their in-place forms; ``operator.iadd`` is ``add``.

    >>> from torch import fx
    >>> gm = fx.symbolic_trace(lambda x: (x + 1).relu_())
    >>> [op_key(n) for n in gm.graph.nodes if n.op.startswith("call")]
    [('add', False), ('relu', True)]
    """
    if node.op == "call_method":
        return _strip_in_place(node.target)
    if node.op != "call_function":
        return node.op, False
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        found = _OVERLOAD_KEYS.get(target)
        if found is None:
            key, in_place = _strip_in_place(target._schema.name.split("::")[-1])
            found = _OVERLOAD_KEYS[target] = (
                key, in_place or target._schema.is_mutable and key not in _FUNCTIONAL_MUTABLE)
        return found
    if isinstance(target, torch._ops.OpOverloadPacket):
        return _strip_in_place(str(target).split(".")[-1])
    name = getattr(target, "__name__", "") or ""
    module = getattr(target, "__module__", "") or ""
    if module in ("_operator", "operator"):
        return _OPERATOR_KEYS.get(name, name), name in _IN_PLACE_OPERATORS
    key, in_place = _strip_in_place(name)
    if key in ("relu", "elu", "leaky_relu", "hardtanh", "threshold", "rrelu", "celu",
               "selu", "dropout", "alpha_dropout", "feature_alpha_dropout",
               "dropout1d", "dropout2d", "dropout3d") and node.kwargs.get("inplace") is True:
        in_place = True
    return key, in_place


# aten ops that are mutable in schema but whose data output is a fresh value
_FUNCTIONAL_MUTABLE = frozenset({"_native_batch_norm_legit", "native_batch_norm",
                                 "_native_batch_norm_legit_functional", "batch_norm"})


def _strip_in_place(name: str) -> tuple[str, bool]:
    if name.endswith("_") and not name.endswith("__") and not name.startswith("_"):
        return name[:-1], True
    return name, False


# Positional argument names for torch functions and methods whose arguments beyond the
# first matter. aten ops are bound from their schemas (``self`` is called ``input``).
_SIGNATURES: dict[str, tuple[str, ...]] = {
    "add": ("input", "other", "alpha"), "sub": ("input", "other", "alpha"),
    "subtract": ("input", "other", "alpha"), "rsub": ("input", "other", "alpha"),
    "mul": ("input", "other"), "multiply": ("input", "other"), "div": ("input", "other"),
    "divide": ("input", "other"), "true_divide": ("input", "other"),
    "floor_divide": ("input", "other"), "remainder": ("input", "other"),
    "fmod": ("input", "other"), "matmul": ("input", "other"), "mm": ("input", "mat2"),
    "bmm": ("input", "mat2"), "outer": ("input", "vec2"), "kron": ("input", "other"),
    "pow": ("input", "exponent"), "float_power": ("input", "exponent"),
    "where": ("condition", "input", "other"), "masked_fill": ("input", "mask", "value"),
    "clamp": ("input", "min", "max"), "clip": ("input", "min", "max"),
    "clamp_min": ("input", "min"), "clamp_max": ("input", "max"),
    "hardtanh": ("input", "min_val", "max_val"), "threshold": ("input", "threshold", "value"),
    "pad": ("input", "pad", "mode", "value"), "maximum": ("input", "other"),
    "minimum": ("input", "other"), "fmax": ("input", "other"), "fmin": ("input", "other"),
    "linear": ("input", "weight", "bias"), "bilinear": ("input1", "input2", "weight", "bias"),
    **{c: ("input", "weight", "bias") for c in (
        "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
        "conv_transpose3d")},
    "layer_norm": ("input", "normalized_shape", "weight", "bias", "eps"),
    "group_norm": ("input", "num_groups", "weight", "bias", "eps"),
    "rms_norm": ("input", "normalized_shape", "weight", "eps"),
    "batch_norm": ("input", "running_mean", "running_var", "weight", "bias", "training",
                   "momentum", "eps"),
    "instance_norm": ("input", "running_mean", "running_var", "weight", "bias",
                      "use_input_stats", "momentum", "eps"),
    "normalize": ("input", "p", "dim", "eps"),
    "local_response_norm": ("input", "size", "alpha", "beta", "k"),
    "embedding": ("input", "weight"),
    "addmm": ("input", "mat1", "mat2"), "baddbmm": ("input", "batch1", "batch2"),
    "scaled_dot_product_attention": ("query", "key", "value", "attn_mask", "dropout_p",
                                     "is_causal", "scale"),
    "cat": ("tensors", "dim"), "concat": ("tensors", "dim"), "concatenate": ("tensors", "dim"),
    "stack": ("tensors", "dim"), "hstack": ("tensors",), "vstack": ("tensors",),
    "dstack": ("tensors",), "sum": ("input", "dim", "keepdim"),
    "einsum": ("equation", "operands"),
    "prelu": ("input", "weight"), "nan_to_num": ("input", "nan", "posinf", "neginf"),
    "index_add": ("input", "dim", "index", "source", "alpha"),
    "scatter_add": ("input", "dim", "index", "src"),
    "scatter_reduce": ("input", "dim", "index", "src", "reduce", "include_self"),
    # torchvision's Swin attention, an fx-wrapped (opaque) function whose output is
    # ``dropout(linear(..., proj_weight, proj_bias))`` with the windows put back in place
    "shifted_window_attention": ("input", "qkv_weight", "proj_weight",
                                 "relative_position_bias", "window_size", "num_heads",
                                 "shift_size", "attention_dropout", "dropout", "qkv_bias",
                                 "proj_bias", "logit_scale", "training"),
}
# torch.batch_norm / torch.instance_norm / torch.layer_norm follow the aten order
_TORCH_ATEN_ORDER = frozenset({"batch_norm", "instance_norm", "embedding"})


def bind(node: Node) -> dict[str, Any]:
    """``node``'s arguments by name (``input``, ``other``, ``weight``, ...).

    >>> from torch import fx
    >>> gm = fx.symbolic_trace(lambda x, y: torch.add(x, other=y, alpha=2))
    >>> add = next(n for n in gm.graph.nodes if n.op == "call_function")
    >>> {k: getattr(v, "name", v) for k, v in bind(add).items()}
    {'input': 'x', 'other': 'y', 'alpha': 2}
    """
    return bind_as(node, op_key(node)[0])


def bind_as(node: Node, key: str) -> dict[str, Any]:
    """:func:`bind` of ``node``, whose op key (:func:`op_key`) is ``key``."""
    target = node.target
    names: tuple[str, ...] | None = None
    if node.op == "call_function" and isinstance(target, torch._ops.OpOverload):
        names = _OVERLOAD_NAMES.get(target)
        if names is None:
            names = _OVERLOAD_NAMES[target] = tuple("input" if a.name == "self" else a.name
                                                    for a in target._schema.arguments)
    elif node.op == "call_function" and key in _TORCH_ATEN_ORDER and \
            getattr(target, "__module__", "") in ("torch", "torch._C._VariableFunctions", None) \
            and not _is_functional(target):
        overload = getattr(torch.ops.aten, key).default
        names = tuple("input" if a.name == "self" else a.name
                      for a in overload._schema.arguments)
    else:
        names = _SIGNATURES.get(key)
    out: dict[str, Any] = {}
    args = node.args
    if node.op == "call_function" and key == "einsum" and args and isinstance(args[0], str):
        out["equation"] = args[0]
        rest = args[1:]
        out["operands"] = list(rest[0]) if len(rest) == 1 and isinstance(rest[0], (list, tuple)) \
            else list(rest)
        return out
    if key in ("cat", "concat", "concatenate", "stack", "hstack", "vstack", "dstack") \
            and node.op == "call_method":
        names = None
    for i, value in enumerate(args):
        name = names[i] if names is not None and i < len(names) else f"arg{i}"
        if i == 0 and name == "arg0":
            name = "input"
        out[name] = value
    for k, v in node.kwargs.items():
        out["input" if k == "self" else k] = v
    return out


def _is_functional(target: Any) -> bool:
    return (getattr(target, "__module__", "") or "").startswith("torch.nn.functional")
