"""Which ops map zero to zero, and which layers output zero once their parameters are zero.

The table is what makes a zeroed branch *provably* zero. Each data-path op gets a
``ZeroSpec``: the output is zero when ``ALL`` of the named inputs are zero (``relu``, ``view``,
``add``, ``cat``), or when ``ANY`` of them is (``mul``, ``matmul``, SDPA's ``value``).
Unknown ops are assumed *not* to preserve zero; the report names the op that stopped a
candidate, and users declare more with ``zero_preserving=``.

>>> import torch
>>> ops = ZeroOps.default()
>>> ops.spec_for_function(torch.relu).mode, ops.spec_for_method("mul").mode
('all', 'any')
>>> ops.spec_for_function(torch.sigmoid) is None
True
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx import Node

from zeta_fx.composite import CompositeFn, default_composites

__all__ = ["ZeroSpec", "ZeroOps", "LayerSpec", "target_name", "nonzero_offset"]


@dataclass(frozen=True)
class ZeroSpec:
    """``mode`` is ``"all"`` or ``"any"``; ``args`` picks the inputs that matter.

    ``args`` holds positional indices or keyword names; empty means every data input.
    ``check`` may refuse a particular call (``F.pad`` with a non-zero fill value).
    """

    mode: str = "all"
    args: tuple[int | str, ...] = ()
    check: Callable[[Node], str | None] | None = None


@dataclass(frozen=True)
class LayerSpec:
    """A layer whose output is zero once the tensors at ``args`` are zero.

    For functional layers ``args`` are positions/keywords of the call (``F.linear``: weight
    and bias); ``mode="any"`` means zeroing any one parameter operand suffices (``x * gamma``).
    """

    args: tuple[int | str, ...] = ()
    mode: str = "all"


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


_OFFSET_OPS = frozenset({"operator.add", "operator.iadd", "operator.sub", "operator.isub",
                         "torch.add", "torch.sub", "torch.subtract",
                         ".add", ".add_", ".sub", ".sub_"})


def nonzero_offset(node: Node, becomes_zero: Callable[[Node], bool]) -> str | None:
    """For an add or sub, say which operand stays non-zero when the others are zeroed.

    ``x + 3`` (a hard sigmoid's ``relu6(x + 3) / 6``), ``1 + scale`` or ``x + buffer`` do not
    map zero to zero; ``becomes_zero`` tells whether a node operand is one the search can
    make zero (a data value, or a parameter for weight chains). ``None`` when every
    operand can be zero, or when ``node`` is not an add or sub.
    """
    if node.op not in ("call_function", "call_method") or target_name(node.target) not in _OFFSET_OPS:
        return None
    operands = list(node.args[:2]) + [node.kwargs[k] for k in ("input", "other") if k in node.kwargs]
    for value in operands:
        if isinstance(value, Node):
            if not becomes_zero(value):
                return f"adds `{value.name}`, a value that does not become zero"
        elif isinstance(value, torch.Tensor) or (isinstance(value, (int, float, complex))
                                                 and value != 0):
            return f"adds the constant {value!r}, not zero"
    return None


def _arg(node: Node, key: int | str, default: Any = None) -> Any:
    if isinstance(key, int):
        return node.args[key] if key < len(node.args) else default
    return node.kwargs.get(key, default)


def _pad_value_is_zero(node: Node) -> str | None:
    value = _arg(node, 3, None) if len(node.args) > 3 else node.kwargs.get("value", None)
    mode = _arg(node, 2, "constant") if len(node.args) > 2 else node.kwargs.get("mode", "constant")
    if mode == "constant" and value in (None, 0, 0.0):
        return None
    return f"pads with mode={mode!r}, value={value!r}, not zeros"


def _fill_value_is_zero(node: Node) -> str | None:
    value = _arg(node, 2, None) if len(node.args) > 2 else node.kwargs.get("value", None)
    return None if value in (0, 0.0) else f"fills with {value!r}, not zero"


def _norm_without_affine(weight_pos: int, bias_pos: int | None) -> Callable[[Node], str | None]:
    def check(node: Node) -> str | None:
        weight = _arg(node, weight_pos) if len(node.args) > weight_pos else node.kwargs.get("weight")
        bias = None
        if bias_pos is not None:
            bias = _arg(node, bias_pos) if len(node.args) > bias_pos else node.kwargs.get("bias")
        if bias is not None:
            return "adds a bias that is not zeroed"
        return None  # with no bias, norm(0) * weight == 0
    return check


def _batch_norm_check(node: Node) -> str | None:
    # In eval mode batch_norm(0) = -mean/std: zero only when normalising by batch statistics.
    running_mean = _arg(node, 1) if len(node.args) > 1 else node.kwargs.get("running_mean")
    bias = _arg(node, 4) if len(node.args) > 4 else node.kwargs.get("bias")
    if bias is not None:
        return "adds a bias that is not zeroed"
    if running_mean is not None:
        # ``training`` is the trace-time constant; in eval the running statistics are used.
        return "normalises with running statistics in eval mode, so batch_norm(0) = -mean/std"
    return None


_ALL = ZeroSpec("all")
_ANY = ZeroSpec("any")
_FIRST = ZeroSpec("all", (0,))

# Functions that map zero to zero, by dotted name (names missing from an older torch are
# simply not registered).
_FUNCTIONS: dict[str, ZeroSpec] = {
    **{f"torch.nn.functional.{n}": _FIRST for n in (
        "relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "gelu", "silu", "mish",
        "hardswish", "elu", "elu_", "selu", "celu", "hardtanh", "hardtanh_", "softsign",
        "tanhshrink", "softshrink", "hardshrink", "rrelu", "dropout", "dropout1d",
        "dropout2d", "dropout3d", "interpolate", "upsample", "upsample_nearest",
        "upsample_bilinear", "avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d",
        "max_pool2d", "max_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
        "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
        "adaptive_max_pool3d", "pixel_shuffle", "pixel_unshuffle", "normalize",
        "channel_shuffle", "unfold", "fold")},
    "torch.nn.functional.pad": ZeroSpec("all", (0,), _pad_value_is_zero),
    "torch.nn.functional.layer_norm": ZeroSpec("all", (0,), _norm_without_affine(2, 3)),
    "torch.nn.functional.group_norm": ZeroSpec("all", (0,), _norm_without_affine(2, 3)),
    "torch.nn.functional.rms_norm": ZeroSpec("all", (0,), _norm_without_affine(2, None)),
    "torch.nn.functional.instance_norm": ZeroSpec("all", (0,), _batch_norm_check),
    "torch.nn.functional.batch_norm": ZeroSpec("all", (0,), _batch_norm_check),
    "torch.nn.functional.scaled_dot_product_attention": ZeroSpec("all", (2, "value")),
    **{f"torch.{n}": _FIRST for n in (
        "relu", "relu_", "tanh", "sin", "sinh", "asin", "asinh", "atan", "atanh", "tan",
        "neg", "negative", "abs", "sign", "square", "sqrt", "erf", "expm1", "log1p",
        "flatten", "unflatten", "reshape", "permute", "transpose", "swapaxes", "swapdims",
        "squeeze", "unsqueeze", "chunk", "split", "tensor_split", "unbind", "narrow",
        "select", "roll", "flip", "fliplr", "flipud", "rot90", "movedim", "moveaxis", "t",
        "clone", "detach", "sum", "mean", "nansum", "cumsum", "real", "trace", "diagonal",
        "tril", "triu", "repeat_interleave", "tile", "index_select", "gather", "take",
        "take_along_dim", "nan_to_num", "contiguous", "dropout", "feature_dropout",
        "max_pool2d", "avg_pool1d", "adaptive_avg_pool1d", "channel_shuffle",
        "pixel_shuffle", "pixel_unshuffle", "conj", "view_as_real", "view_as_complex")},
    "torch.cat": _ALL, "torch.concat": _ALL, "torch.concatenate": _ALL, "torch.stack": _ALL,
    "torch.hstack": _ALL, "torch.vstack": _ALL, "torch.dstack": _ALL,
    "torch.add": _ALL, "torch.sub": _ALL, "torch.subtract": _ALL,
    "torch.where": ZeroSpec("all", (1, 2, "input", "other")),
    "torch.masked_fill": ZeroSpec("all", (0,), _fill_value_is_zero),
    "torch.mul": _ANY, "torch.multiply": _ANY, "torch.matmul": _ANY, "torch.mm": _ANY,
    "torch.bmm": _ANY, "torch.einsum": _ANY, "torch.functional.einsum": _ANY, "torch.outer": _ANY, "torch.kron": _ANY,
    "torch.div": ZeroSpec("all", (0,)), "torch.true_divide": ZeroSpec("all", (0,)),
    "torch.divide": ZeroSpec("all", (0,)),
    "operator.add": _ALL, "operator.iadd": _ALL, "operator.sub": _ALL, "operator.isub": _ALL,
    "operator.mul": _ANY, "operator.imul": _ANY, "operator.matmul": _ANY,
    "operator.truediv": ZeroSpec("all", (0,)), "operator.itruediv": ZeroSpec("all", (0,)),
    "operator.neg": _FIRST, "operator.getitem": _FIRST, "operator.pos": _FIRST,
    # torchvision wraps these with torch.fx.wrap; named so torchvision need not be imported.
    "torchvision.ops.stochastic_depth.stochastic_depth": _FIRST,
}

_METHODS: dict[str, ZeroSpec] = {
    **{n: _FIRST for n in (
        "relu", "relu_", "tanh", "tanh_", "neg", "abs", "sign", "sqrt", "square", "view",
        "view_as", "reshape", "reshape_as", "flatten", "unflatten", "permute", "transpose",
        "transpose_", "t", "contiguous", "squeeze", "squeeze_", "unsqueeze", "unsqueeze_",
        "expand", "expand_as", "repeat", "repeat_interleave", "tile", "chunk", "split",
        "tensor_split", "unbind", "narrow", "select", "roll", "flip", "movedim", "clone",
        "detach", "to", "type", "type_as", "float", "half", "bfloat16", "double", "sum",
        "mean", "nansum", "cumsum", "index_select", "gather", "diagonal", "tril", "triu",
        "unfold", "as_strided", "swapaxes", "swapdims", "nan_to_num", "requires_grad_",
        "cuda", "cpu", "pin_memory")},
    "add": _ALL, "add_": _ALL, "sub": _ALL, "sub_": _ALL,
    "mul": _ANY, "mul_": _ANY, "matmul": _ANY, "mm": _ANY, "bmm": _ANY, "outer": _ANY,
    "div": ZeroSpec("all", (0,)), "div_": ZeroSpec("all", (0,)),
    "true_divide": ZeroSpec("all", (0,)),
    "masked_fill": ZeroSpec("all", (0,), _fill_value_is_zero),
    "masked_fill_": ZeroSpec("all", (0,), _fill_value_is_zero),
}

# Parameter-free leaf modules that map zero to zero.
_MODULES: tuple[type[nn.Module], ...] = tuple(
    getattr(nn, n) for n in (
        "ReLU", "ReLU6", "LeakyReLU", "RReLU", "GELU", "SiLU", "Mish", "Hardswish", "ELU",
        "SELU", "CELU", "Tanh", "Hardtanh", "Softsign", "Tanhshrink", "Softshrink",
        "Hardshrink", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "Identity", "Flatten",
        "Unflatten", "MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d",
        "AvgPool3d", "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d",
        "AdaptiveMaxPool1d", "AdaptiveMaxPool2d", "AdaptiveMaxPool3d", "Upsample",
        "UpsamplingNearest2d", "UpsamplingBilinear2d", "PixelShuffle", "PixelUnshuffle",
        "ZeroPad1d", "ZeroPad2d", "ZeroPad3d", "ChannelShuffle", "LPPool1d", "LPPool2d",
        "Fold", "Unfold", "LayerNorm", "GroupNorm", "RMSNorm", "InstanceNorm1d",
        "InstanceNorm2d", "InstanceNorm3d", "LocalResponseNorm")
    if hasattr(nn, n)
)

# Leaf modules with parameters: which parameters to zero so that the output is zero.
_LAYER_MODULES: dict[type[nn.Module], tuple[str, ...]] = {
    **{getattr(nn, n): ("weight", "bias") for n in (
        "Linear", "Bilinear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d",
        "ConvTranspose2d", "ConvTranspose3d", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
        "SyncBatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm1d", "InstanceNorm2d",
        "InstanceNorm3d", "RMSNorm", "Embedding", "EmbeddingBag", "LazyLinear",
        "LazyConv1d", "LazyConv2d", "LazyConv3d", "LazyConvTranspose1d",
        "LazyConvTranspose2d", "LazyConvTranspose3d", "LazyBatchNorm1d", "LazyBatchNorm2d",
        "LazyBatchNorm3d") if hasattr(nn, n)},
    nn.MultiheadAttention: ("out_proj.weight", "out_proj.bias"),
}

_LAYER_FUNCTIONS: dict[str, LayerSpec] = {
    "torch.nn.functional.linear": LayerSpec((1, "weight", 2, "bias")),
    "torch.nn.functional.bilinear": LayerSpec((2, "weight", 3, "bias")),
    **{f"torch.nn.functional.{n}": LayerSpec((1, "weight", 2, "bias")) for n in (
        "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
        "conv_transpose3d")},
    **{f"torch.{n}": LayerSpec((1, "weight", 2, "bias")) for n in (
        "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
        "conv_transpose3d")},
    "torch.nn.functional.batch_norm": LayerSpec((3, "weight", 4, "bias")),
    "torch.nn.functional.instance_norm": LayerSpec((3, "weight", 4, "bias")),
    "torch.nn.functional.layer_norm": LayerSpec((2, "weight", 3, "bias")),
    "torch.nn.functional.group_norm": LayerSpec((2, "weight", 3, "bias")),
    "torch.nn.functional.rms_norm": LayerSpec((2, "weight")),
    "torch.nn.functional.embedding": LayerSpec((1, "weight")),
    "torch.layer_norm": LayerSpec((2, "weight", 3, "bias")),
    "torch.group_norm": LayerSpec((2, "weight", 3, "bias")),
    "torch.batch_norm": LayerSpec((1, "weight", 2, "bias")),
    "torch.addmm": LayerSpec((0, "input", 2, "mat2")),
    **{name: LayerSpec(mode="any") for name in (
        "operator.mul", "operator.imul", "torch.mul", "torch.multiply", "operator.matmul",
        "torch.matmul", "torch.mm", "torch.bmm", "torch.einsum", "torch.functional.einsum")},
}

_LAYER_METHODS: dict[str, LayerSpec] = {
    name: LayerSpec(mode="any") for name in ("mul", "mul_", "matmul", "mm", "bmm")
}


# -- aten ops, as they appear in torch.export graphs ----------------------------------------
# Keyed by overload packet (``aten.relu``); an exact overload (``aten.mul.Scalar``) may
# override. Positions follow the aten schemas, which differ from torch.nn.functional's.

def _aten_bn_check(bias_pos: int, mean_pos: int | None, training_pos: int | None
                   ) -> Callable[[Node], str | None]:
    def check(node: Node) -> str | None:
        if _arg(node, bias_pos) is not None:
            return "adds a bias that is not zeroed"
        mean = _arg(node, mean_pos) if mean_pos is not None else None
        training = _arg(node, training_pos, False) if training_pos is not None else False
        if mean is not None and training is not True:
            return "normalises with running statistics, so batch_norm(0) = -mean/std"
        return None
    return check


def _aten_pad_check(node: Node) -> str | None:
    value = _arg(node, 2, node.kwargs.get("value", 0))
    return None if value in (0, 0.0) else f"pads with {value!r}, not zeros"


def _aten_no_training_check(node: Node) -> str | None:
    return "normalises with running statistics, so batch_norm(0) = -mean/std"


_ATEN_FUNCTIONS: dict[str, ZeroSpec] = {
    **{f"aten.{n}": _FIRST for n in (
        "relu", "relu_", "relu6", "gelu", "gelu_", "silu", "silu_", "mish", "mish_",
        "hardswish", "hardswish_", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_",
        "elu", "elu_", "selu", "celu", "tanh", "tanh_", "neg", "abs", "sign", "sqrt", "erf",
        "square", "view", "_unsafe_view", "reshape", "permute", "transpose", "t", "expand",
        "expand_as", "view_as", "clone", "contiguous", "alias", "detach", "unsqueeze",
        "unsqueeze_", "squeeze", "squeeze_", "split", "split_with_sizes", "chunk", "unbind",
        "tensor_split", "slice", "select", "narrow", "flatten", "unflatten", "repeat",
        "repeat_interleave", "roll", "flip", "movedim", "as_strided", "_to_copy", "to",
        "type_as", "_reshape_alias", "sum", "mean", "dropout", "native_dropout",
        "feature_dropout", "alpha_dropout", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
        "adaptive_avg_pool3d", "_adaptive_avg_pool2d", "_adaptive_avg_pool3d",
        "adaptive_max_pool2d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d",
        "max_pool2d", "max_pool3d", "max_pool2d_with_indices", "max_pool3d_with_indices",
        "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d",
        "_upsample_nearest_exact1d", "_upsample_nearest_exact2d", "_upsample_nearest_exact3d",
        "upsample_bilinear2d", "upsample_linear1d", "upsample_bicubic2d", "pixel_shuffle",
        "pixel_unshuffle", "channel_shuffle", "index_select", "gather", "diagonal", "tril",
        "triu", "cumsum", "nan_to_num", "im2col", "col2im", "stochastic_depth",
        "lift_fresh_copy", "dropout_", "real")},
    "aten.constant_pad_nd": ZeroSpec("all", (0,), _aten_pad_check),
    "aten.add": _ALL, "aten.add_": _ALL, "aten.sub": _ALL, "aten.sub_": _ALL,
    "aten.cat": _ALL, "aten.concat": _ALL, "aten.stack": _ALL,
    "aten.mul": _ANY, "aten.mul_": _ANY, "aten.matmul": _ANY, "aten.mm": _ANY,
    "aten.bmm": _ANY, "aten.einsum": _ANY, "aten.outer": _ANY,
    "aten.div": _FIRST, "aten.div_": _FIRST,
    "aten.where": ZeroSpec("all", (1, 2)),
    "aten.masked_fill": ZeroSpec("all", (0,), _fill_value_is_zero),
    "aten.scaled_dot_product_attention": ZeroSpec("all", (2,)),
    "aten._scaled_dot_product_flash_attention": ZeroSpec("all", (2,)),
    "aten._scaled_dot_product_flash_attention_for_cpu": ZeroSpec("all", (2,)),
    "aten._scaled_dot_product_efficient_attention": ZeroSpec("all", (2,)),
    "aten._scaled_dot_product_cudnn_attention": ZeroSpec("all", (2,)),
    "aten.layer_norm": ZeroSpec("all", (0,), _norm_without_affine(2, 3)),
    "aten.native_layer_norm": ZeroSpec("all", (0,), _norm_without_affine(2, 3)),
    "aten.group_norm": ZeroSpec("all", (0,), _norm_without_affine(2, 3)),
    "aten.native_group_norm": ZeroSpec("all", (0,), _norm_without_affine(1, 2)),
    "aten.rms_norm": ZeroSpec("all", (0,), _norm_without_affine(2, None)),
    "aten.batch_norm": ZeroSpec("all", (0,), _aten_bn_check(2, 3, 5)),
    "aten.instance_norm": ZeroSpec("all", (0,), _aten_bn_check(2, 3, 5)),
    "aten._native_batch_norm_legit_functional": ZeroSpec("all", (0,), _aten_bn_check(2, 3, 5)),
    "aten._native_batch_norm_legit": ZeroSpec("all", (0,), _aten_bn_check(2, None, None)),
    "aten._native_batch_norm_legit.no_stats": ZeroSpec("all", (0,), _aten_bn_check(2, None, 3)),
    "aten._native_batch_norm_legit_no_training": ZeroSpec("all", (0,), _aten_no_training_check),
    "aten.native_batch_norm": ZeroSpec("all", (0,), _aten_bn_check(2, 3, 5)),
}

_ATEN_LAYER_FUNCTIONS: dict[str, LayerSpec] = {
    **{f"aten.{n}": LayerSpec((1, 2)) for n in (
        "linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
        "conv_transpose3d", "convolution", "_convolution", "batch_norm", "instance_norm",
        "_native_batch_norm_legit_functional", "_native_batch_norm_legit",
        "_native_batch_norm_legit_no_training", "native_batch_norm", "native_group_norm")},
    "aten.layer_norm": LayerSpec((2, 3)), "aten.native_layer_norm": LayerSpec((2, 3)),
    "aten.group_norm": LayerSpec((2, 3)), "aten.rms_norm": LayerSpec((2,)),
    "aten.embedding": LayerSpec((0,)), "aten.addmm": LayerSpec((2, 0)),
    "aten.bilinear": LayerSpec((2, 3)),
    **{f"aten.{n}": LayerSpec(mode="any") for n in (
        "mul", "mul_", "matmul", "mm", "bmm", "einsum")},
}

# torchvision's Swin attention is an fx-wrapped (opaque) function; its output is
# ``dropout(linear(..., proj_weight, proj_bias))`` windows put back in place.
_LAYER_FUNCTIONS.update({
    f"torchvision.models.swin_transformer.{n}": LayerSpec((2, "proj_weight", "proj_bias"))
    for n in ("shifted_window_attention", "shifted_window_attention_3d")})

_FUNCTIONS.update(_ATEN_FUNCTIONS)
_LAYER_FUNCTIONS.update(_ATEN_LAYER_FUNCTIONS)


def _packet(name: str) -> str | None:
    """``aten.mul.Tensor`` -> ``aten.mul``; ``None`` for names of other kinds."""
    if name.startswith("aten.") and name.count(".") == 2:
        return name.rsplit(".", 1)[0]
    return None


@dataclass
class ZeroOps:
    """The zero-propagation table used by one pass; extend it with :meth:`declare`.

    >>> def my_act(x):  # an opaque function wrapped with torch.fx.wrap
    ...     return x.clamp(min=0)
    >>> ops = ZeroOps.default().declare([my_act])
    >>> ops.spec_for_function(my_act).mode
    'all'
    """

    functions: dict[str, ZeroSpec] = field(default_factory=dict)
    methods: dict[str, ZeroSpec] = field(default_factory=dict)
    modules: tuple[type[nn.Module], ...] = ()
    layer_modules: dict[type[nn.Module], tuple[str, ...]] = field(default_factory=dict)
    layer_functions: dict[str, LayerSpec] = field(default_factory=dict)
    layer_methods: dict[str, LayerSpec] = field(default_factory=dict)
    # opaque leaf type -> its hidden residual branches (zeta_fx.composite)
    composites: dict[type[nn.Module], CompositeFn] = field(default_factory=dict)
    _names: dict[Any, str] = field(default_factory=dict, repr=False, compare=False)
    # what users declared with ``zero_preserving=``: op keys (zeta_fx.facts.op_key) and
    # module classes, read by the zero facts
    declared_keys: frozenset[str] = frozenset()
    declared_modules: tuple[type[nn.Module], ...] = ()

    @classmethod
    def default(cls) -> "ZeroOps":
        return cls(dict(_FUNCTIONS), dict(_METHODS), _MODULES, dict(_LAYER_MODULES),
                   dict(_LAYER_FUNCTIONS), dict(_LAYER_METHODS), default_composites())

    def declare(self, entries: Iterable[Any]) -> "ZeroOps":
        """Return a copy that also treats ``entries`` as zero-preserving.

        Each entry is a function (output zero when all its tensor inputs are zero), a
        method name such as ``"my_method"``, or an ``nn.Module`` subclass: without
        parameters, it maps zero to zero; with parameters, it outputs zero once all of its
        own ``weight``/``bias`` are zero.
        """
        entries = list(entries)
        ops = ZeroOps(dict(self.functions), dict(self.methods), self.modules,
                      dict(self.layer_modules), dict(self.layer_functions),
                      dict(self.layer_methods), dict(self.composites))
        extra_modules: list[type[nn.Module]] = []
        for entry in entries:
            if isinstance(entry, str):
                ops.methods[entry] = _ALL
            elif isinstance(entry, type) and issubclass(entry, nn.Module):
                extra_modules.append(entry)
            elif callable(entry):
                ops.functions[target_name(entry)] = _ALL
            else:
                raise TypeError(
                    f"zero_preserving entries must be functions, method names or nn.Module "
                    f"subclasses; got {entry!r}"
                )
        ops.modules = ops.modules + tuple(extra_modules)
        ops.declared_modules = self.declared_modules + tuple(extra_modules)
        keys = set(self.declared_keys)
        for entry in entries:
            if isinstance(entry, str):
                keys.add(entry.rstrip("_") if not entry.endswith("__") else entry)
            elif callable(entry) and not isinstance(entry, type):
                keys.add(getattr(entry, "__name__", ""))
        ops.declared_keys = frozenset(keys)
        return ops

    def name_of(self, target: Any) -> str:
        """``target_name(target)``, remembered for this table's lifetime."""
        try:
            return self._names[target]
        except KeyError:
            name = self._names[target] = target_name(target)
            return name
        except TypeError:  # unhashable target
            return target_name(target)

    def spec_for_function(self, target: Callable[..., Any]) -> ZeroSpec | None:
        name = self.name_of(target)
        spec = self.functions.get(name)
        if spec is None and (packet := _packet(name)) is not None:
            spec = self.functions.get(packet)
        return spec

    def spec_for_method(self, name: str) -> ZeroSpec | None:
        return self.methods.get(name)

    def module_preserves_zero(self, module: nn.Module) -> bool:
        if vars(module).get("track_running_stats") is True:
            return False  # an InstanceNorm with running stats: in eval norm(0) = -mean/std
        if isinstance(module, nn.Module) and type(module) in self.modules:
            return True
        return isinstance(module, self.modules) and not any(True for _ in module.parameters())

    def layer_params_of_module(self, module: nn.Module) -> tuple[str, ...] | None:
        """Local names of the parameters whose zeroing zeroes ``module``'s output."""
        if type(module) in self.layer_modules:  # the common case, without the MRO walk
            names = self.layer_modules[type(module)]
            return tuple(n for n in names if isinstance(_get_param(module, n), torch.Tensor))
        for cls in type(module).__mro__:
            if cls in self.layer_modules:
                names = self.layer_modules[cls]
                return tuple(n for n in names if isinstance(_get_param(module, n), torch.Tensor))
            if cls in self.modules:
                # declared by the user: every parameter it has directly
                return tuple(n for n, _ in module.named_parameters(recurse=False))
        return None

    def layer_spec(self, node: Node) -> LayerSpec | None:
        if node.op == "call_function":
            name = self.name_of(node.target)
            spec = self.layer_functions.get(name)
            if spec is None and (packet := _packet(name)) is not None:
                spec = self.layer_functions.get(packet)
            return spec
        if node.op == "call_method":
            return self.layer_methods.get(node.target)
        return None


def _get_param(module: nn.Module, dotted: str) -> Any:
    obj: Any = module
    for part in dotted.split("."):
        if isinstance(obj, nn.Module) and part in obj._parameters:
            obj = obj._parameters[part]  # the common case, without nn.Module.__getattr__
            continue
        if isinstance(obj, nn.Module) and part in getattr(
                obj._modules.get("parametrizations"), "_modules", ()):
            # Reading the attribute would run the parametrization (spectral_norm's power
            # iteration updates its buffers): report the stored original instead.
            return next(obj.parametrizations[part].parameters(), None)
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def spec_inputs(node: Node, spec: ZeroSpec, data: Callable[[Any], bool]) -> list[Node]:
    """The data inputs of ``node`` that ``spec`` says matter, in argument order."""
    if not spec.args:
        return [n for n in node.all_input_nodes if data(n)]
    picked: list[Node] = []
    for key in spec.args:
        value = _arg(node, key)
        for leaf in _flatten_nodes(value):
            if data(leaf) and leaf not in picked:
                picked.append(leaf)
    return picked


def layer_inputs(node: Node, spec: LayerSpec) -> list[Any]:
    """The arguments a functional layer needs zeroed (nodes, ``None`` or constants)."""
    if not spec.args:
        return list(node.args) + list(node.kwargs.values())
    return [_arg(node, key) for key in spec.args]


def _flatten_nodes(value: Any) -> Sequence[Node]:
    if isinstance(value, Node):
        return [value]
    if isinstance(value, (list, tuple)):
        return [n for v in value for n in _flatten_nodes(v)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _flatten_nodes(v)]
    return []
