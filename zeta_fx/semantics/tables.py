"""Op categories: what each op does to the zero, finite and sign facts, by op key.

Each set holds op keys (:func:`zeta_fx.semantics.keys.op_key`); the analysis asks these and
never spells an op name of its own.

>>> "relu" in PRESERVING, "sigmoid" in FINITE_OPS, "rsqrt" in SINGULAR
(True, True, True)
"""

from __future__ import annotations

__all__ = ["PRESERVING", "FINITE_OPS", "SINGULAR", "DOMAINS", "OVERFLOWING", "EXPONENTIAL",
           "BOUNDED_BY_ONE", "AT_MOST_ONE_OPS", "FRESH", "ZEROS", "FULL", "WRITTEN_VALUE", "ALWAYS_PAIRS", "ACCUMULATING", "NONNEG_OPS", "POSITIVE_OPS", "SIGN_REDUCTIONS",
           "SIGN_CARRIERS", "SHAPE_METHODS", "SHAPE_ATTRS", "SHAPE_FUNCTIONS", "STRUCTURED",
           "PRODUCTS", "NORMS", "BATCH_NORMS", "CONVS", "GATHERS", "LAYOUT_OPS",
           "ADDITIVE", "PIECES", "SPLITS", "CARRIERS", "MULTIPLY", "PASS_THROUGH", "PLUMBING",
           "CHANNELS_FIRST", "SUBTRACTIVE", "ZERO_KEEPING", "BATCH_NORM_KERNELS", "LIBRARY_PURE", "DIVIDE",
           "METADATA_OPERANDS", "WEIGHT_NORMS", "SIGN_SELECTIONS", "INDEXED_PAIRS",
           "NEG_INF_KEEPING", "COPIES", "ROW_KEEPING", "SOFTMAXES", "MASK_CARRIERS",
           "SUBGRAPH_CALLS", "SCATTER_REDUCES", "ROW_MAXIMA"]

# f(0) = 0, and the output is zero where the input is (activations, views, pooling, ...)
PRESERVING = frozenset("""
relu relu6 leaky_relu rrelu gelu silu mish hardswish elu selu celu softsign tanhshrink
softshrink hardshrink tanh sin sinh asin asinh atan atanh tan neg negative pos abs sign sgn
square sqrt erf erfinv expm1 log1p sinc_ deg2rad rad2deg trunc fix round floor ceil frac
dropout dropout1d dropout2d dropout3d feature_dropout native_dropout alpha_dropout_
interpolate upsample upsample_nearest upsample_bilinear upsample_nearest1d upsample_nearest2d
upsample_nearest3d _upsample_nearest_exact1d _upsample_nearest_exact2d
_upsample_nearest_exact3d upsample_bilinear2d upsample_linear1d upsample_bicubic2d
upsample_trilinear3d avg_pool1d avg_pool2d avg_pool3d max_pool1d max_pool2d max_pool3d
max_pool2d_with_indices max_pool3d_with_indices adaptive_avg_pool1d adaptive_avg_pool2d
adaptive_avg_pool3d _adaptive_avg_pool2d _adaptive_avg_pool3d adaptive_max_pool1d
adaptive_max_pool2d adaptive_max_pool3d pixel_shuffle pixel_unshuffle channel_shuffle
native_channel_shuffle unfold fold im2col col2im lp_pool1d lp_pool2d
flatten unflatten reshape view view_as reshape_as _unsafe_view _reshape_alias permute
transpose swapaxes swapdims t numpy_T T mT mH adjoint squeeze unsqueeze expand expand_as
broadcast_to repeat repeat_interleave tile chunk split split_with_sizes tensor_split unbind
narrow select slice roll flip fliplr flipud rot90 movedim moveaxis contiguous clone detach
alias lift_fresh_copy to type type_as float half bfloat16 double _to_copy cpu cuda
pin_memory requires_grad_ real conj resolve_conj resolve_neg view_as_real view_as_complex
as_strided diagonal diag tril triu cumsum sum nansum mean nanmean trace amax amin max min
index_select gather take take_along_dim index masked_select
stochastic_depth diag_embed block_diag unsqueeze_copy squeeze_copy view_copy permute_copy
expand_copy clone_ nan_to_num_ std var norm linalg_vector_norm linalg_norm frobenius_norm
""".split())
# finite on finite input, and never forced to zero (f(0) != 0)
FINITE_OPS = frozenset("""
sigmoid exp exp2 cos cosh softmax log_softmax _softmax _log_softmax _safe_softmax
hardsigmoid softplus logsigmoid erfc silu_backward ones_like full_like rand_like randn_like
arccos acos
""".split())
# non-finite where the input is zero
SINGULAR = frozenset("reciprocal rsqrt log log2 log10 digamma lgamma acosh".split())
# Ops defined only on part of the line: of a value the zeroing changed (and that may now
# lie anywhere) they are finite only where the domain is proven (``sqrt`` of a norm).
DOMAINS = {"sqrt": "x >= 0", "log1p": "x > -1", "asin": "|x| <= 1", "arcsin": "|x| <= 1",
            "acos": "|x| <= 1", "arccos": "|x| <= 1", "atanh": "|x| < 1",
            "arctanh": "|x| < 1", "erfinv": "|x| < 1", "acosh": "x >= 1",
            "arccosh": "x >= 1"}
# Ops that overflow on moderate inputs in half precision (exp(12) > float16's max)
OVERFLOWING = frozenset({"exp", "exp2", "expm1", "cosh", "sinh", "square"})
# ... of which these are at most 1 on inputs <= 0
BOUNDED_BY_ONE = frozenset({"exp", "exp2"})
# Ops whose output is at most 1 on any finite input (a gate, a probability)
AT_MOST_ONE_OPS = frozenset({"sigmoid", "hardsigmoid", "softmax", "_softmax"})
# ... and these overflow on moderate inputs in any dtype (exp(89) is inf in float32); powers
# overflow only where the changed value is huge, which half precision reaches soonest
EXPONENTIAL = frozenset({"exp", "exp2", "expm1", "cosh", "sinh"})
# ops that read only shapes or metadata of their data input, or make fresh values
FRESH = frozenset("""
zeros_like empty_like new_zeros new_empty new_ones new_full arange full zeros ones empty
rand randn randint scalar_tensor tensor
""".split())


# Ops that make a fresh tensor of zeros, or of a fill value.
ZEROS = frozenset({"zeros_like", "new_zeros", "zeros", "zero"})
FULL = frozenset({"full_like", "new_full", "full", "fill"})

# In-place writes -> where the value they write into (part of) their target is: the bound
# argument names to look for, then its position. ``()`` writes zeros (``zero_``). A write
# not listed here writes something the graph does not say: the target's value is unknown.
WRITTEN_VALUE: dict[str, tuple[tuple[str, ...], int | None]] = {
    "copy": (("src",), 1), "fill": (("value",), 1), "setitem": ((), 2),
    "index_put": (("values",), 2), "index_add": (("source",), 3),
    "index_copy": (("source",), 3), "scatter": (("src", "value"), 3),
    "scatter_add": (("src",), 3), "masked_scatter": (("source",), 2), "zero": ((), None),
}
# ... of which these add what they write to the target's values (zero where both are)
ACCUMULATING = frozenset({"index_add", "scatter_add"})

# Ops whose output is >= 0 wherever it is finite (``sqrt`` and powers: of a value >= 0).
NONNEG_OPS = frozenset({"abs", "relu", "relu6", "square", "norm", "frobenius_norm",
                         "linalg_vector_norm", "var", "std", "var_mean", "hardsigmoid"})
# Ops whose output is > 0 on finite input. (Taken so: in float32 ``exp`` underflows to 0
# below about -103, ``sigmoid`` likewise; the README's limitations say so.)
POSITIVE_OPS = frozenset({"exp", "exp2", "sigmoid", "softmax", "_softmax", "softplus",
                           "cosh"})
# Reductions and selections that keep the sign of what they read (all >= 0 gives >= 0, all
# > 0 gives > 0): a mean, a sum, a maximum, the top-k values.
SIGN_REDUCTIONS = frozenset({"mean", "sum", "amax", "amin", "max", "min", "cumsum", "topk",
                              "sort", "kthvalue"})
# Ops that carry a value unchanged in sign (views, casts, copies, selections). The pieces
# of a split (``tensor_split``, ``split``, ``chunk``, ``unbind``, ``narrow``) hold only
# elements of the tensor they cut, so each piece (and the list of them, item by item, read
# through ``getitem``) has every sign that tensor has: Qwen3-Next (transformers 5.25) cuts
# its decay ``g <= 0`` with ``tensor_split`` before the gated delta rule.
SIGN_CARRIERS = frozenset({"view", "_unsafe_view", "reshape", "expand", "expand_as", "to",
                            "_to_copy", "float", "half", "bfloat16", "double", "type_as",
                            "contiguous", "clone", "detach", "alias", "unsqueeze", "squeeze",
                            "flatten", "unflatten", "transpose", "permute", "t", "getitem",
                            "select", "slice", "repeat", "repeat_interleave", "movedim",
                            "narrow", "split", "split_with_sizes", "chunk", "tensor_split",
                            "unbind"})


# Metadata queries: their outputs carry no values of their inputs.
SHAPE_METHODS = frozenset({
    "size", "dim", "ndimension", "numel", "nelement", "get_device", "element_size",
    "stride", "storage_offset", "is_contiguous", "is_floating_point", "is_complex",
    "new_empty", "new_zeros", "new_ones", "new_full", "new_empty_strided",
})
SHAPE_ATTRS = frozenset({"shape", "ndim", "dtype", "device", "is_cuda", "layout",
                          "requires_grad", "is_sparse", "names"})
SHAPE_FUNCTIONS = frozenset({
    "torch._assert", "torch._assert_async", "builtins.len", "torch.numel",
    "torch.zeros_like", "torch.ones_like", "torch.empty_like", "torch.rand_like",
    "torch.randn_like", "torch.randint_like", "torch.full_like", "torch._shape_as_tensor",
    "torch.fx._symbolic_trace._assert_is_none", "torch.is_floating_point", "torch.is_tensor",
    "torch.sym_int", "torch.sym_float", "torch.sym_max", "torch.sym_min", "torch.sym_not",
    # torch.export (aten) graphs
    "aten.sym_size.int", "aten.sym_size.default", "aten.sym_numel.default",
    "aten.sym_stride.int", "aten.sym_stride.default", "aten.sym_storage_offset.default",
    "aten._assert_tensor_metadata.default", "aten._assert_scalar.default",
    "aten.zeros_like.default", "aten.ones_like.default", "aten.empty_like.default",
    "aten.full_like.default", "aten.rand_like.default", "aten.randn_like.default",
    "aten.new_zeros.default", "aten.new_ones.default", "aten.new_empty.default",
    "aten.new_full.default", "aten.dim.default", "aten.numel.default",
})

# op keys whose parameter operands are weights/biases of a structured layer (a projection)
STRUCTURED = frozenset({
    "linear", "bilinear", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
    "conv_transpose2d", "conv_transpose3d", "convolution", "_convolution", "batch_norm",
    "instance_norm", "layer_norm", "group_norm", "rms_norm", "native_layer_norm",
    "native_group_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_no_training",
    "_native_batch_norm_legit_functional", "native_batch_norm", "addmm",
    "shifted_window_attention",
})
PRODUCTS = frozenset({"mul", "multiply", "matmul", "mm", "bmm", "outer", "kron", "einsum",
                       "dot", "vdot"})
NORMS = frozenset({"layer_norm", "group_norm", "rms_norm", "native_layer_norm",
                    "native_group_norm"})
BATCH_NORMS = frozenset({"batch_norm", "instance_norm", "_native_batch_norm_legit",
                          "_native_batch_norm_legit_no_training", "native_batch_norm",
                          "_native_batch_norm_legit_functional"})
CONVS = frozenset({"linear", "bilinear", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
                    "conv_transpose2d", "conv_transpose3d", "convolution", "_convolution"})
# Selections of rows: ``w[expert_ids]``, ``index_select(w, 0, idx)``
GATHERS = frozenset({"index", "index_select", "gather", "take", "take_along_dim",
                      "getitem", "select", "narrow", "slice"})
# Ops that move or re-type a value without combining it: a parameter read through them is
# the same parameter (``w.t()``, ``w.to(x.dtype)``)
LAYOUT_OPS = frozenset({"transpose", "permute", "t", "view", "reshape", "contiguous", "to",
                        "_to_copy", "unsqueeze", "squeeze", "expand", "clone", "numpy_T"})

# Additive merges (``x - f`` is ``x + (-1) * f``)
ADDITIVE = frozenset({"add", "sub", "subtract", "rsub"})
MULTIPLY = frozenset({"mul", "multiply"})
# Ops that cut a value into pieces (a joint attention's output split into two streams)
PIECES = frozenset({"slice", "narrow", "select", "getitem", "split", "split_with_sizes",
                    "chunk", "tensor_split", "unbind"})
SPLITS = frozenset({"chunk", "split", "unbind", "tensor_split", "split_with_sizes"})
# Ops that carry a modulation vector to where it is applied without mixing it with anything:
# chunk/split into shift, scale and gate, unsqueeze to broadcast, dtype casts.
CARRIERS = SPLITS | frozenset({
    "getitem", "unsqueeze", "view", "_unsafe_view", "reshape", "expand", "expand_as", "to",
    "_to_copy", "float", "half", "bfloat16", "type_as", "contiguous", "squeeze", "flatten",
    "unflatten", "slice", "select", "clone", "alias",
})
# Ops a conditioning gate passes through on its way to where it multiplies
PASS_THROUGH = frozenset({"to", "_to_copy", "contiguous", "view", "reshape", "clone",
                          "type_as", "dropout"})
# Shape plumbing: left out of a collapsed box's label when the label would be long.
PLUMBING = frozenset({
    "getitem", "view", "reshape", "transpose", "permute", "contiguous", "split", "chunk",
    "unbind", "flatten", "unflatten", "squeeze", "unsqueeze", "expand", "expand_as",
    "floordiv", "size", "type_as", "to", "float", "clone", "detach",
    "repeat", "movedim", "narrow", "select", "t",
})
# Ops whose channels are on dimension 1 (a per-channel gate broadcasts as (C, 1, ...))
CHANNELS_FIRST = frozenset({
    "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "convolution", "_convolution", "batch_norm", "instance_norm", "group_norm",
    "native_group_norm", "native_batch_norm", "_native_batch_norm_legit",
    "_native_batch_norm_legit_no_training", "_native_batch_norm_legit_functional",
})
# The additive merges whose second operand enters with a minus sign
SUBTRACTIVE = frozenset({"sub", "subtract"})
# Ops whose output is zero where their first input is, with their fills and bounds zero
# (the zero search follows them back to the input it must make zero)
ZERO_KEEPING = frozenset({"masked_fill", "clamp", "clip", "clamp_min", "clamp_max",
                          "hardtanh", "threshold", "pad", "constant_pad_nd", "nan_to_num",
                          "relu6", "maximum", "minimum", "max", "min", "prelu",
                          "_prelu_kernel", "normalize", "getattr"})
# aten's batch-norm kernels (mutable in schema: they update the running statistics)
BATCH_NORM_KERNELS = frozenset({"_native_batch_norm_legit", "_native_batch_norm_legit_functional",
                                "_native_batch_norm_legit_no_training", "native_batch_norm"})
# Functions of other libraries, wrapped with torch.fx.wrap (opaque to tracing), known to
# write none of their inputs: torchvision's Swin attention. (Any other wrapped function may
# write what it receives: torch has nothing to say about them.)
LIBRARY_PURE = frozenset({"shifted_window_attention"})
# Divisions (``a / c`` is linear in ``a`` where ``c`` does not depend on it)
DIVIDE = frozenset({"div", "divide", "true_divide"})

# Operands an op reads for their metadata only (dtype, device, shape), never their values:
# ``h.type_as(x)``, ``h.to(x)`` / ``h.to(other=x)``, ``x.new_zeros(...)``,
# ``x.new_tensor(data)``, ``h.expand_as(x)``. By op key: ``(position, keyword)`` of each such
# operand, positions counted with ``self`` first (a method's receiver, aten's ``self``).
# The value-flow index leaves them out of the op's data inputs.
METADATA_OPERANDS: dict[str, tuple[tuple[int, str], ...]] = {
    "type_as": ((1, "other"),),
    "to": ((1, "other"),),
    "expand_as": ((1, "other"),),
    "view_as": ((1, "other"),),
    "reshape_as": ((1, "other"),),
    **{key: ((0, "self"),) for key in ("new_zeros", "new_ones", "new_empty", "new_full",
                                       "new_tensor", "new_empty_strided")},
}

# Weight normalisation as aten captures it (``torch.export``, concrete capture):
# ``_weight_norm(v, g, dim)`` is ``g * v / ||v||``, a weight that is zero exactly where its
# magnitude ``g`` is (a slice of ``v`` that is all zero is NaN whatever ``g`` is: the model's
# own weight is not finite then): the op key, the magnitude's and the direction's names. (``_weight_norm_interface`` returns
# the norms beside it; a tuple the facts do not split, so it is not listed.)
WEIGHT_NORMS: dict[str, tuple[str, str]] = {"_weight_norm": ("g", "v")}
# Selections by index that keep the sign of the tensor they read from (its first input):
# a router's ``scores.gather(1, topk_indices)``, ``x[idx]``
SIGN_SELECTIONS = frozenset({"gather", "index", "index_select", "take_along_dim", "take"})
# Ops returning ``(values, indices)``: item 1 holds integer positions, always finite
INDEXED_PAIRS = frozenset({"topk", "sort", "kthvalue", "mode", "max", "min", "cummax",
                           "cummin", "median", "nanmedian"})
# ... of which these return a pair whatever their arguments (``max`` only with a ``dim``)
ALWAYS_PAIRS = frozenset({"topk", "sort", "kthvalue", "mode", "cummax", "cummin"})
# Casts and copies: the same values (in another dtype, memory or tensor object)
COPIES = frozenset({"to", "_to_copy", "float", "half", "bfloat16", "double", "contiguous",
                    "clone", "detach", "alias"})
# Ops that keep every row of a tensor along its last dimension as it was: copies, casts
# to another tensor's dtype, broadcasts
ROW_KEEPING = COPIES | frozenset({"type_as", "expand", "expand_as"})
# Ops that keep a value "finite or -inf" (no NaN, no +inf) when their other inputs are
# finite: the row-keeping ops, views and selections (and the adds and fills the signs read
# apart)
NEG_INF_KEEPING = ROW_KEEPING | frozenset({
    "view", "_unsafe_view", "reshape", "unsqueeze", "squeeze", "flatten", "unflatten",
    "transpose", "permute", "t", "select", "slice", "repeat", "movedim", "getitem"})
# Softmaxes: ``_safe_softmax`` gives 0 on a row that is all ``-inf``; the others NaN
SOFTMAXES = frozenset({"softmax", "_softmax", "_safe_softmax"})
# Ops that carry a boolean mask to the scores it masks without moving its last two
# dimensions (casts, broadcasts)
MASK_CARRIERS = frozenset({"to", "_to_copy", "bool", "expand", "expand_as", "contiguous",
                           "clone", "detach", "alias"})
# Higher-order ops that run a subgraph (a ``GraphModule`` attribute) on their operands and
# return its outputs unchanged: op key -> (position of the subgraph, of its first operand).
# ``wrap_with_set_grad_enabled`` (``torch.no_grad()`` under export) changes only autograd,
# never a value; autocast bodies (other dtypes) are not listed.
SUBGRAPH_CALLS: dict[str, tuple[int, int]] = {"wrap_with_set_grad_enabled": (1, 2)}
# ``scatter_reduce(input, dim, index, src, reduce)``: every reduction of zeros is zero
# (a mean divides by a count >= 1); a product of finite values may overflow
SCATTER_REDUCES = frozenset({"scatter_reduce"})
# Largest entry along a dimension: ``amax(x, dim)``, item 0 of ``max(x, dim)``
ROW_MAXIMA = frozenset({"amax", "max"})
