"""Module kinds: which torch.nn classes the analysis knows, and when a module is opaque.

A module is what its class computes only if its ``forward`` is that class's own (not
overridden, not replaced on the instance) and no hook runs around it.

>>> from torch import nn
>>> known_module(nn.Linear(2, 2))
('linear', '')
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
from torch import nn
from torch.nn.modules import module as _global_hooks

__all__ = ["LAYER_PARAMS", "STEADY_KINDS", "STRUCTURED_KINDS", "ZERO_KEEPING_KINDS", "known_module", "class_kind", "opaque_reason",
           "hooked", "eps_free", "get_local", "pruning_problem"]

# Kinds of known leaf modules that, unowned, map a FINITE input to FINITE when the tensors
# named (read by ZeroFacts._module) are absent or FINITE: product, total and finite of
# FINITE are FINITE, and so is _normalised of FINITE unless the norm is eps-free (eps_free).
STEADY_KINDS: dict[str, tuple[str, ...]] = {
    "linear": ("weight", "bias"), "conv": ("weight", "bias"),
    "batch_norm": ("weight", "bias"), "layer_norm": ("weight", "bias"),
    "preserving": (), "finite": (), "prelu": ()}


def eps_free(module: nn.Module, kind: str) -> bool:
    """A norm that divides a changed input by ``sqrt(var + 0)`` (see ``_normalised``): not
    steady, since an input the zeroing changed may now have zero variance. (Batch norms
    with running statistics divide by those; a layer norm's ``eps=None`` is float32's.)"""
    if kind == "batch_norm":
        eps = module.eps
        return isinstance(eps, (int, float)) and eps == 0 and module.running_mean is None
    if kind == "layer_norm":
        eps = getattr(module, "eps", 1e-5)
        return isinstance(eps, (int, float)) and eps == 0
    return False


# Known leaf modules: the class whose own ``forward`` a module must run, and how it acts.
_MODULE_KINDS: dict[type[nn.Module], str] = {}


def _register_modules(kind: str, names: Iterable[str]) -> None:
    for name in names:
        cls = getattr(nn, name, None)
        if cls is not None:
            _MODULE_KINDS[cls] = kind


_register_modules("preserving", """ReLU ReLU6 LeakyReLU RReLU GELU SiLU Mish Hardswish ELU
SELU CELU Tanh Softsign Tanhshrink Softshrink Hardshrink Dropout Dropout1d Dropout2d Dropout3d
AlphaDropout FeatureAlphaDropout Identity Flatten Unflatten MaxPool1d MaxPool2d MaxPool3d
AvgPool1d AvgPool2d AvgPool3d AdaptiveAvgPool1d AdaptiveAvgPool2d AdaptiveAvgPool3d
AdaptiveMaxPool1d AdaptiveMaxPool2d AdaptiveMaxPool3d Upsample UpsamplingNearest2d
UpsamplingBilinear2d PixelShuffle PixelUnshuffle ZeroPad1d ZeroPad2d ZeroPad3d ChannelShuffle
LPPool1d LPPool2d LPPool3d Fold Unfold ReflectionPad1d ReflectionPad2d ReflectionPad3d
ReplicationPad1d ReplicationPad2d ReplicationPad3d CircularPad1d CircularPad2d CircularPad3d
""".split())
_register_modules("finite", "Sigmoid Softmax LogSoftmax Softmax2d Hardsigmoid Softplus LogSigmoid"
                  .split())
_register_modules("hardtanh", ["Hardtanh"])
_register_modules("threshold", ["Threshold"])
_register_modules("constant_pad", ["ConstantPad1d", "ConstantPad2d", "ConstantPad3d"])
_register_modules("linear", ["Linear", "LazyLinear"])
_register_modules("conv", """Conv1d Conv2d Conv3d ConvTranspose1d ConvTranspose2d ConvTranspose3d
LazyConv1d LazyConv2d LazyConv3d LazyConvTranspose1d LazyConvTranspose2d LazyConvTranspose3d
""".split())
_register_modules("bilinear", ["Bilinear"])
_register_modules("batch_norm", """BatchNorm1d BatchNorm2d BatchNorm3d SyncBatchNorm LazyBatchNorm1d
LazyBatchNorm2d LazyBatchNorm3d InstanceNorm1d InstanceNorm2d InstanceNorm3d LazyInstanceNorm1d
LazyInstanceNorm2d LazyInstanceNorm3d""".split())
_register_modules("layer_norm", ["LayerNorm", "GroupNorm", "RMSNorm"])
_register_modules("local_response_norm", ["LocalResponseNorm", "CrossMapLRN2d"])
_register_modules("embedding", ["Embedding"])
_register_modules("prelu", ["PReLU"])
_register_modules("mha", ["MultiheadAttention"])

# (an embedding lookup is not one: `tok(ids) + pos(ids)` sums embeddings, not a block)
STRUCTURED_KINDS = frozenset({"linear", "conv", "bilinear", "batch_norm", "layer_norm",
                               "local_response_norm"})

#: Kinds of modules without parameters to zero whose output is zero where their input is
ZERO_KEEPING_KINDS = frozenset({"preserving", "hardtanh", "threshold", "constant_pad", "prelu",
                                "local_response_norm"})

#: Known layer kinds: the local names of the parameters whose zeroing zeroes the output.
LAYER_PARAMS = {"linear": ("weight", "bias"), "conv": ("weight", "bias"),
                "bilinear": ("weight", "bias"), "batch_norm": ("weight", "bias"),
                "layer_norm": ("weight", "bias"), "embedding": ("weight",),
                "mha": ("out_proj.weight", "out_proj.bias")}


def known_module(module: nn.Module, declared: Mapping[type, str] | None = None
                 ) -> tuple[str | None, str]:
    """``(kind, why_not)``: the kind of a known leaf module, or ``None`` and the reason.

    A module is what its class computes only if its ``forward`` is that class's own, and no
    hook runs around it.

    >>> class Lora(nn.Linear):
    ...     def forward(self, x):
    ...         return super().forward(x) + 1
    >>> known_module(nn.Linear(2, 2))[0], known_module(Lora(2, 2))
    ('linear', (None, '`Lora` overrides `Linear.forward`'))
    """
    why = opaque_reason(module)
    if why:
        return None, why
    return class_kind(type(module), declared)


def class_kind(cls: type, declared: Mapping[type, str] | None) -> tuple[str | None, str]:
    """:func:`known_module` of a module of class ``cls`` without hooks."""
    for base in cls.__mro__:
        kind = declared.get(base) if declared else None
        if kind is None:
            kind = _MODULE_KINDS.get(base)
        if kind is None:
            continue
        if cls.forward is not base.forward and not _parametrized_class(cls, base):
            return None, f"`{cls.__name__}` overrides `{base.__name__}.forward`"
        return kind, ""
    return None, f"`{cls.__name__}` is not a known layer"


def _parametrized_class(cls: type, base: type) -> bool:
    # torch.nn.utils.parametrize swaps in a subclass ``ParametrizedLinear`` that keeps forward
    return cls.__name__ == f"Parametrized{base.__name__}" and cls.forward is base.forward


def opaque_reason(module: nn.Module) -> str:
    """Why ``module`` cannot be read as its class computes it (hooks), or ``""``."""
    if not hooked(module):
        return ""  # the common case, without the checks below
    name = type(module).__name__
    if "forward" in module.__dict__:
        return (f"`{name}`'s forward is replaced on the instance (`module.forward = ...`): it "
                f"does not compute what `{name}.forward` does")
    if module._forward_hooks or getattr(module, "_forward_hooks_with_kwargs", None):
        return f"`{name}` has a forward hook ({_hook_names(module._forward_hooks)})"
    pre = [h for h in module._forward_pre_hooks.values() if not _weight_norm_hook(h)]
    if pre:
        kinds = _hook_names(dict(enumerate(pre)))
        if any(type(h).__module__.startswith("torch.nn.utils.prune") for h in pre):
            return (f"`{name}` is pruned (a {kinds} forward pre-hook computes its weight); "
                    "call torch.nn.utils.prune.remove(module, 'weight') first")
        hint = ("; remove it with torch.nn.utils.remove_spectral_norm(module) first"
                if "SpectralNorm" in kinds else "")
        return f"`{name}` has a forward pre-hook ({kinds}) that computes what it uses{hint}"
    if _global_hooks._global_forward_hooks or _global_hooks._global_forward_pre_hooks:
        return "a global module forward hook is registered (register_module_forward_hook)"
    if torch.nn.utils.parametrize.is_parametrized(module):
        for pname, chain in module.parametrizations.items():
            kinds = [type(p).__name__ for p in chain]
            if kinds != ["_WeightNorm"]:
                return (f"`{name}`.{pname} is computed by the parametrization "
                        f"{', '.join(k.lstrip('_') for k in kinds)}: no stored tensor can be "
                        "zeroed to make it an exact, finite zero; remove it with "
                        "torch.nn.utils.parametrize.remove_parametrizations(module, "
                        f"{pname!r}) to let the pass zero this layer")
    return ""


def hooked(module: nn.Module) -> bool:
    """Whether a hook or parametrization may change what ``module`` computes (if not, its
    class alone decides its kind)."""
    return bool(module._forward_hooks or module._forward_pre_hooks
                or "forward" in module.__dict__
                or _global_hooks._global_forward_hooks
                or _global_hooks._global_forward_pre_hooks
                or "parametrizations" in module._modules)


def _weight_norm_hook(hook: Any) -> bool:
    from torch.nn.utils.weight_norm import WeightNorm
    return isinstance(hook, WeightNorm)


def _hook_names(hooks: Mapping[Any, Any]) -> str:
    names = [getattr(h, "__qualname__", None) or type(h).__name__ for h in hooks.values()]
    return ", ".join(f"`{n}`" for n in names[:3])


def get_local(module: nn.Module, dotted: str) -> Any:
    """``module``'s tensor at ``dotted`` (a parametrized one: its stored original)."""
    obj: Any = module
    for part in dotted.split("."):
        if isinstance(obj, nn.Module) and part in obj._parameters:
            obj = obj._parameters[part]
            continue
        if isinstance(obj, nn.Module) and "parametrizations" in obj._modules and \
                part in obj.parametrizations._modules:
            return next(obj.parametrizations[part].parameters(), None)
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def pruning_problem(module: nn.Module, owner: str, name: str) -> str | None:
    """``torch.nn.utils.prune`` keeps ``{name}_orig`` and a ``{name}_mask`` buffer and
    recomputes ``name`` in a forward pre-hook, so no stored tensor is the weight: what to
    tell the user (how to make the pruning permanent), or ``None`` if ``name`` is not pruned."""
    from torch.nn.utils.prune import BasePruningMethod

    base = name.removesuffix("_orig")
    pruned = any(isinstance(h, BasePruningMethod) and getattr(h, "_tensor_name", None) == base
                 for h in module._forward_pre_hooks.values())
    if not pruned and not (f"{base}_mask" in module._buffers
                           and f"{base}_orig" in module._parameters):
        return None
    where = f"model.get_submodule({owner!r})" if owner else "model"
    return (
        f"`{owner + '.' if owner else ''}{base}` (module `{owner or '(root)'}`, "
        f"{type(module).__name__}) is pruned with torch.nn.utils.prune: its `{base}` is "
        f"recomputed as `{base}_orig * {base}_mask` by a forward pre-hook on every call, so "
        "no stored tensor is the weight the rule would zero. Make the pruning permanent "
        f"first: `torch.nn.utils.prune.remove({where}, {base!r})`, then run the pass; "
        "nothing was written")
