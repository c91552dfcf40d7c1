"""What users declare about ops and modules for one pass, and readable names for targets.

The zero semantics of ops and layers live in :mod:`zeta_fx.semantics` (one home for torch,
method and aten graphs). This module holds what a pass adds to it: the ops and modules a
user declares with ``zero_preserving=[...]``, and the composite leaves whose hidden
residual branches are known (:mod:`zeta_fx.semantics.composite`).

>>> import torch
>>> def my_act(x):  # an opaque function wrapped with torch.fx.wrap
...     return x.clamp(min=0)
>>> ops = ZeroOps.default().declare([my_act, "my_method"])
>>> sorted(ops.declared_keys)
['my_act', 'my_method']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

from zeta_fx.semantics.composite import Composite, default_composites
from zeta_fx.semantics.keys import target_name
from zeta_fx.semantics.modules import LAYER_PARAMS, get_local, known_module

__all__ = ["ZeroOps"]


@dataclass(frozen=True)
class ZeroOps:
    """What one pass knows beyond the built-in zero facts; extend it with :meth:`declare`.

    ``declared_keys`` are op keys (``zeta_fx.semantics.keys.op_key``: a function's or method's
    name) that map zero to zero; ``declared_modules`` are module classes that output zero
    once all their own parameters are zero (or, without parameters, map zero to zero);
    ``composites`` maps opaque leaf types to their hidden residual branches.
    """

    composites: dict[type[nn.Module], Composite] = field(default_factory=dict)
    declared_keys: frozenset[str] = frozenset()
    declared_modules: tuple[type[nn.Module], ...] = ()

    @classmethod
    def default(cls) -> "ZeroOps":
        return cls(default_composites())

    def declare(self, entries: Iterable[Any]) -> "ZeroOps":
        """Return a copy that also treats ``entries`` as zero-preserving.

        Each entry is a function (output zero when all its tensor inputs are zero), a
        method name such as ``"my_method"``, or an ``nn.Module`` subclass: without
        parameters, it maps zero to zero; with parameters, it outputs zero once all of its
        own parameters are zero.
        """
        keys = set(self.declared_keys)
        modules: list[type[nn.Module]] = []
        for entry in entries:
            if isinstance(entry, str):
                keys.add(entry[:-1] if entry.endswith("_") and not entry.endswith("__")
                         else entry)
            elif isinstance(entry, type) and issubclass(entry, nn.Module):
                modules.append(entry)
            elif callable(entry):
                keys.add(getattr(entry, "__name__", "") or target_name(entry))
            else:
                raise TypeError(
                    f"zero_preserving entries must be functions, method names or nn.Module "
                    f"subclasses; got {entry!r}"
                )
        return ZeroOps(dict(self.composites), frozenset(keys),
                       self.declared_modules + tuple(modules))

    def layer_params_of_module(self, module: nn.Module) -> tuple[str, ...] | None:
        """Local names of the parameters whose zeroing zeroes ``module``'s output, or
        ``None`` for a module that is not a known (or declared) layer."""
        kind, _ = known_module(module, {cls: "declared" for cls in self.declared_modules})
        if kind in LAYER_PARAMS:
            return tuple(n for n in LAYER_PARAMS[kind]
                         if isinstance(get_local(module, n), torch.Tensor))
        if kind == "declared":
            return tuple(n for n, _ in module.named_parameters(recurse=False))
        return None
