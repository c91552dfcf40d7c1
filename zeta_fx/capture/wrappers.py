"""Wrappers around the user's model: which ones the pass sees through, and which it refuses.

``DistributedDataParallel`` / ``DataParallel`` (prefix ``module.``) and ``torch.compile``'s
``OptimizedModule`` (prefix ``_orig_mod.``) hold the user's model unchanged: the pass traces
the inner model and reports FQNs as the user's model names them (no prefix); plans apply to
the wrapped and the unwrapped model alike. FSDP1 (``FullyShardedDataParallel``) flattens
parameters into ``FlatParameter`` shards that no plan can address: it is refused with a
clear error. FSDP2 (``fully_shard``) keeps FQNs and holds ``DTensor`` parameters: plans apply
to it in place, but it cannot be traced, so planning is done on the meta device.

>>> import torch
>>> from torch import nn
>>> inner = nn.Linear(2, 2)
>>> unwrap(torch.compile(inner)) == (inner, "_orig_mod.")
True
>>> unwrap(inner) == (inner, "")
True
"""

from __future__ import annotations

import sys

import torch
from torch import fx, nn

from zeta_fx.errors import UnsupportedWrapperError

__all__ = ["see_through", "writable", "unwrap", "check_traceable", "check_not_sharded", "check_writable"]


def _is_compiled(module: nn.Module) -> bool:
    return type(module).__name__ == "OptimizedModule" and isinstance(
        getattr(module, "_orig_mod", None), nn.Module)


def _is_data_parallel(module: nn.Module) -> bool:
    return isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel))


def unwrap(model: nn.Module) -> tuple[nn.Module, str]:
    """The user's model inside DDP / DataParallel / ``torch.compile`` wrappers, and the FQN
    prefix the wrappers add (``"module."``, ``"_orig_mod."``, or both nested).

    >>> inner = nn.Linear(2, 2)
    >>> unwrap(nn.DataParallel(inner)) == (inner, "module.")
    True
    """
    prefix = ""
    while True:
        if _is_data_parallel(model):
            model, prefix = model.module, prefix + "module."
        elif _is_compiled(model):
            model, prefix = model._orig_mod, prefix + "_orig_mod."
        else:
            return model, prefix


def _fsdp1_modules(model: nn.Module) -> list[str]:
    if "torch.distributed.fsdp" not in sys.modules:  # nothing can be FSDP-wrapped yet
        return []
    from torch.distributed.fsdp import FullyShardedDataParallel
    return [name or "(root)" for name, m in model.named_modules()
            if isinstance(m, FullyShardedDataParallel)]


def see_through(model: nn.Module) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The model to trace inside any DDP / ``torch.compile`` wrappers, and its parameters;
    refuses what cannot be traced as it is (FSDP1, FSDP2, DTensor parameters).

    >>> inner, params = see_through(nn.DataParallel(nn.Linear(2, 2)))
    >>> type(inner).__name__, sorted(params)
    ('Linear', ['bias', 'weight'])
    """
    model = unwrap(model)[0]
    if not isinstance(model, fx.GraphModule):  # already traced: its parameters are checked
        check_traceable(model)
    params = dict(model.named_parameters())
    check_not_sharded(model, params)
    return model, params


def writable(model: nn.Module) -> nn.Module:
    """The model a plan writes: inside any DDP / ``torch.compile`` wrappers (FQNs are the
    inner model's own); refuses FSDP1, whose flat parameters no FQN addresses. FSDP2 and
    DTensor parameters are written shard by shard.

    >>> inner = nn.Linear(2, 2)
    >>> writable(nn.DataParallel(inner)) is inner
    True
    """
    inner = unwrap(model)[0]
    check_writable(inner)
    return inner


def check_writable(model: nn.Module) -> None:
    """Refuse wrappers whose parameters a plan cannot address (FSDP1's flat parameters).

    >>> check_writable(nn.Linear(2, 2))  # plain modules, DDP and FSDP2 pass
    """
    fsdp1 = _fsdp1_modules(model)
    if fsdp1:
        raise UnsupportedWrapperError(
            f"`{fsdp1[0]}` is wrapped in FSDP1 (FullyShardedDataParallel), whose flat, "
            "sharded parameters no plan can address by FQN. Apply the plan before wrapping "
            "(it is atomic and writes in place), or shard with FSDP2 "
            "(torch.distributed.fsdp.fully_shard), to which plans apply directly; nothing "
            "was written")


def check_traceable(model: nn.Module) -> None:
    """Refuse models that cannot be traced as they are: FSDP1 and sharded (FSDP2/DTensor).

    One walk over the modules; DTensor parameters without an FSDP2 module (tensor
    parallelism) are caught by :func:`check_not_sharded` once the parameters are listed.

    >>> check_traceable(nn.Linear(2, 2))  # raises UnsupportedWrapperError on sharded models
    """
    if "torch.distributed.fsdp" not in sys.modules:  # nothing can be FSDP-wrapped yet
        return
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
    for name, m in model.named_modules():
        if isinstance(m, FullyShardedDataParallel):
            check_writable(model)
        if isinstance(m, FSDPModule):
            _refuse_sharded(model)


def check_not_sharded(model: nn.Module, params: dict[str, torch.Tensor]) -> None:
    """Refuse a model whose listed parameters include DTensors (see :func:`check_traceable`).

    >>> check_not_sharded(nn.Linear(2, 2), dict(nn.Linear(2, 2).named_parameters()))
    """
    if "torch.distributed.tensor" not in sys.modules:
        return
    from torch.distributed.tensor import DTensor
    if any(isinstance(p, DTensor) for p in params.values()):
        _refuse_sharded(model)


def _refuse_sharded(model: nn.Module) -> None:
    raise UnsupportedWrapperError(
        f"`{type(model).__name__}` is sharded (FSDP2 fully_shard or DTensor parameters) "
        "and cannot be traced: its forward gathers parameters across ranks. Make the plan "
        "on an unsharded instance, ideally on the meta device: "
        "`plan = zero_init_pass(meta_model, rule, dry_run=True).plan`, then "
        "`plan.apply(sharded_model)` on every rank (in place, no gathering); nothing was "
        "written")
