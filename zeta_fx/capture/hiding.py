"""Hiding the parameters of block copies from an export (see :mod:`zeta_fx.capture.blocks`).

``torch.export`` fakes every parameter and buffer of the model and lifts each to an input of
its graph, whether the forward uses it or not: for a copy that is an opaque call that is
most of what it costs the export (a 32-layer Llama: 9 parameters a layer). While
:func:`hiding` lasts, the copies' parameters and buffers are out of their modules'
``_parameters`` and ``_buffers`` whenever the model's forward is not running (the export
enumerates them before it calls the forward, and after), and a :class:`_Hidden` stands
in their place while it runs: the export neither fakes nor lifts them, and the model's
code sees as many parameters as it has. The copies' submodules are out of their
``_modules`` outside the forward too (the export walks every module before and after it
runs, about 0.6 ms a copy of a Llama layer) and back, as they are, while it runs: the
block's attributes must be there for :func:`~zeta_fx.capture.blocks.BlockRecorder.call`
to compare, and a stand-in module would stop every copy. Model code that calls a hidden
block's submodule uses its hidden weight, and stops the export like any other use.

Which blocks are hidden is a bet: in a structure of at least :data:`_AT_LEAST` blocks (a
lost bet costs about one export, a won one a few milliseconds a block), every block but
the first two (a first block often takes the model's raw input, without grad, and the
second another call) and those whose attributes differ from each shown block's (a
per-layer flag: another representative; integers aside, see
:func:`~zeta_fx.capture.blocks.same_settings`). Where a hidden block must be traced after
all (another representative, a call that runs inline),
:meth:`~zeta_fx.capture.blocks.BlockRecorder.call` stops the export with
:class:`~zeta_fx.capture.blocks.NotComposable` (``hidden``), and anything else that uses a
hidden tensor (model code reading another block's weight, or the size of a parameter it
enumerates) stops it too: the caller exports again with none hidden. A lost bet costs one
export stopped early, never another graph. The graph stitched from the export does not
depend on what was hidden: the copies' ``get_attr`` nodes are made by stitching, from the
model as it is afterwards.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Any, Iterator

from torch import nn
from torch.nn.modules import module as module_globals

from zeta_fx.capture.blocks import BlockRecorder, NotComposable
from zeta_fx.capture.settings import same_settings

__all__ = ["hiding"]

# the fewest blocks of one structure for any of them to be hidden
_AT_LEAST = 8


class _Hidden:
    """Stands for a hidden parameter or buffer: any use of it (an attribute, an op, its
    truth value, arithmetic, ``isinstance``) raises :class:`NotComposable` (``hidden``).
    ``is None`` and ``hasattr`` answer as for the tensor itself."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "name", name)

    def _used(self, *_: Any, **__: Any) -> Any:
        raise NotComposable(f"`{object.__getattribute__(self, 'name')}` was used while "
                            "hidden from the export", hidden=True)

    __getattr__ = __setattr__ = __bool__ = __len__ = __iter__ = __index__ = _used
    # ``isinstance(p, torch.Tensor)`` looks ``__class__`` up once the type check fails:
    # asking what a hidden parameter is stops the export too
    __class__ = property(_used)  # type: ignore[assignment]
    __float__ = __int__ = __getitem__ = __call__ = __neg__ = __pow__ = __matmul__ = _used
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = _used

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        raise NotComposable(f"a hidden parameter was passed to {func}", hidden=True)


@contextlib.contextmanager
def hiding(recorder: BlockRecorder, model: nn.Module, hide: bool = True) -> Iterator[None]:
    """While it lasts, the parameters and buffers of the blocks of ``recorder`` that the
    bet (module docstring) expects to be opaque calls are hidden (none unless ``hide``);
    ``recorder.hidden`` names those blocks. Outside ``model``'s forward they are out of
    their modules' tables (the export enumerates the tables before and after it); during
    it a :class:`_Hidden` stands in each table for each, so that the model's code that
    enumerates parameters finds as many, and stops the export if it uses one. Each
    table is put back as it was, in its order."""
    # a global module hook runs before the model's first pre-hook: nothing is hidden
    hide = hide and not (module_globals._global_forward_pre_hooks or
                         module_globals._global_forward_hooks)
    tables: list[tuple[dict[str, Any], list[tuple[str, Any]], list[tuple[str, Any]],
                       list[tuple[str, Any]]]] = []
    shown: dict[Any, list[nn.Module]] = {}
    count = Counter(key for key, _ in recorder.blocks.values())
    hidden = set()
    for path, (key, module) in recorder.blocks.items():
        kept = shown.setdefault(key, [])
        if not hide or count[key] < _AT_LEAST or len(kept) < 2 or \
                not any(same_settings(k, module) for k in kept):
            kept.append(module)
            continue
        hidden.add(path)
        if module._modules:  # out when the forward is not running, as they are in it
            items = list(module._modules.items())
            tables.append((module._modules, items, [], items))
        for where, sub in module.named_modules(prefix=path):
            for table in (sub._parameters, sub._buffers):
                if any(v is not None for v in table.values()):
                    items = list(table.items())
                    tables.append((table, items, [(k, v) for k, v in items if v is None],
                                   [(k, v if v is None else _Hidden(f"{where}.{k}"))
                                    for k, v in items]))
    if not tables:
        yield
        return

    def put(which: int) -> None:  # 1: as they were; 2: out; 3: stand-ins
        for entry in tables:
            entry[0].clear()
            entry[0].update(entry[which])

    # the stand-ins are in place before any of the model's own pre-hooks runs (a hook that
    # reads the parameters must see them all) and out after its forward hooks
    handles = [model.register_forward_pre_hook(lambda *_: put(3), prepend=True),
               model.register_forward_hook(lambda *_: put(2), always_call=True)]
    try:
        put(2)
        recorder.hidden = frozenset(hidden)
        yield
    finally:
        recorder.hidden = frozenset()
        put(1)
        for handle in handles:
            handle.remove()
