"""What two calls of one block structure must share (see :mod:`zeta_fx.capture.blocks`).

A copy stands in for its representative only when everything its forward can read is the
same: the arguments (:func:`describe`, :func:`same_descriptions`), the attributes the
representative's forward read of its own modules (:func:`spying` records them,
:func:`reads_agree` compares a copy's), and what it may read beyond them
(:func:`outside_agrees`): the model's other modules, the plain objects its modules hold,
its classes' attributes (:func:`class_state`). Values are equal by :func:`same`: type
included, real tensors by bits, objects by identity or as the same class with equal
attributes. :func:`same_settings` is the cheaper question :mod:`zeta_fx.capture.hiding`
asks before any forward runs.
"""

from __future__ import annotations

import contextlib
import functools
import math
import types
from typing import Any, Iterator

import torch
from torch import nn

__all__ = ["PLAIN", "HOOKS", "MISSING", "describe", "plain", "same", "same_descriptions",
           "same_settings", "reads_agree", "outside_agrees", "class_state", "spying"]

# the types of plain values (compared by value); a module's hook tables
PLAIN = (type(None), bool, int, float, str, bytes, torch.dtype, torch.device, torch.layout,
         torch.memory_format)
HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
         "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called", "_backward_hooks",
         "_backward_pre_hooks")

# the value of an attribute a module does not hold
MISSING = object()


def describe(leaves: list[Any]) -> list[Any] | None:
    """Per argument leaf: a tensor's metadata, or a plain value; None if a leaf is neither.

    Read with torch functions off: under an export every metadata read of a fake tensor
    otherwise goes through its torch-function modes (a third of what a copy cost), and
    reading metadata records nothing."""
    with torch._C.DisableTorchFunction():
        return _describe_leaves(leaves)


def _describe_leaves(leaves: list[Any]) -> list[Any] | None:
    out: list[Any] = []
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            sizes = (*leaf.shape, *leaf.stride())
            if not all(type(d) is int for d in sizes):
                return None  # a symbolic (data-dependent) size: comparing it would guard
            out.append(("tensor", type(leaf).__name__, tuple(leaf.shape), tuple(leaf.stride()),
                        leaf.dtype, leaf.device, leaf.requires_grad, leaf.storage_offset()))
        elif plain(leaf):
            out.append(("value", leaf))
        else:
            return None
    return out


def plain(value: Any) -> bool:
    if isinstance(value, (tuple, list, frozenset)):
        return all(plain(v) for v in value)
    return type(value) in PLAIN or isinstance(value, torch.Size)


def same(a: Any, b: Any, depth: int = 0) -> bool:
    """Equal values, type included: ``-0.0`` is not ``0.0``, a NaN equals a NaN, ``1`` is
    not ``True``; real tensors by metadata and bits; functions, methods and classes by
    identity; other objects by identity, or as the same class with equal attributes (each
    attention module of diffusers holds its own, stateless, processor object; transformers
    keeps kernel functions as parameterless modules, one per attention module), three
    levels deep at most."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return math.copysign(1.0, a) == math.copysign(1.0, b) and (
            a == b or (math.isnan(a) and math.isnan(b)))
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(same(x, y, depth) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], depth) for k in a)
    if isinstance(a, torch.Tensor):
        if (a.shape, a.dtype, a.device) != (b.shape, b.dtype, b.device):
            return False
        if a.is_meta or type(a) is not torch.Tensor or type(b) is not torch.Tensor:
            return False
        flat_a, flat_b = a.detach().reshape(-1), b.detach().reshape(-1)
        return bool(torch.equal(flat_a.view(torch.uint8), flat_b.view(torch.uint8))) \
            if flat_a.is_contiguous() and flat_b.is_contiguous() else False
    if plain(a):
        return a == b
    if depth >= 3 or isinstance(a, (type, types.FunctionType, types.MethodType,
                                    types.BuiltinFunctionType, functools.partial)):
        return False
    if isinstance(a, nn.Module):
        # held in a plain attribute: equal when both hold no parameters, buffers,
        # submodules or hooks, and equal settings (nn.Module's bookkeeping aside)
        return _stateless(a) and _stateless(b) and _same_attributes(a, b, _INTERNAL, depth)
    if hasattr(type(a), "__slots__") or not isinstance(getattr(a, "__dict__", None), dict):
        return False
    return _same_attributes(a, b, frozenset(), depth)


def _same_attributes(a: Any, b: Any, skip: frozenset[str] | set[str], depth: int) -> bool:
    state_a = {k: v for k, v in vars(a).items() if k not in skip}
    state_b = {k: v for k, v in vars(b).items() if k not in skip}
    return state_a.keys() == state_b.keys() and \
        all(same(state_a[k], state_b[k], depth + 1) for k in state_a)


def _stateless(m: nn.Module) -> bool:
    state = vars(m)
    return not (m._parameters or m._buffers or m._modules or "forward" in state or
                any(state.get(name) for name in HOOKS))


def same_descriptions(a: list[Any], b: list[Any]) -> bool:
    """Whether two :func:`_describe` lists are the same, leaf by leaf: a tensor's
    description holds ints, a bool, strings, a dtype and a device, where ``==`` is
    :func:`same`; a plain value is compared by :func:`same`."""
    return len(a) == len(b) and all(
        x == y if x[0] == "tensor" == y[0] else same(x, y) for x, y in zip(a, b))


def same_settings(a: nn.Module, b: nn.Module) -> bool:
    """Whether every module inside ``a`` and ``b`` (two blocks of one static structure)
    holds the same attributes, as :func:`reads_agree` compares them, integers aside (a
    ``layer_idx`` the forward does not read, most often). When True, a forward that reads
    no integer reads the same in both."""
    for (_, x), (_, y) in zip(a.named_modules(), b.named_modules()):
        state_x, state_y = vars(x), vars(y)
        names = (state_x.keys() | state_y.keys()) - _INTERNAL
        if any(not same(state_x.get(k, MISSING), state_y.get(k, MISSING)) and not
               (type(state_x.get(k)) is int and type(state_y.get(k)) is int) for k in names):
            return False
    return True


def reads_agree(reads: dict[tuple[str, str], Any], module: nn.Module) -> bool:
    owners: dict[str, nn.Module | None] = {"": module}
    for (where, name), value in reads.items():
        owner = owners.get(where, MISSING)
        if owner is MISSING:
            owner = owners[where] = _registered(module, where)
        if owner is None or not same(vars(owner).get(name, MISSING), value):
            return False
    return True


def _registered(module: nn.Module, where: str) -> nn.Module | None:
    """The module registered at the dotted path ``where`` inside ``module`` (its
    ``_modules``), or None. Not ``get_submodule``: under an export every lookup that reaches
    ``nn.Module.__getattr__`` goes through the tracer's wrapper, and that made comparing a
    Llama layer's 87 reads cost 2 ms a copy, two thirds of the opaque call."""
    found: nn.Module | None = module
    for part in where.split("."):
        found = vars(found)["_modules"].get(part)
        if not isinstance(found, nn.Module):
            return None
    return found


def outside_agrees(outside: list[tuple[Any, str, Any]]) -> bool:
    """Whether what the representative read outside its own modules holds now: the model's
    code sets ``self.current_layer = i`` or a global flag before each call, a forward
    counts its calls in a class attribute, a global or a config object the blocks
    share."""
    return all(same(space.get(name, MISSING), value) for space, name, value in outside)


def class_state(block: nn.Module) -> list[tuple[Any, str, Any]]:
    """The plain values in the namespaces of the classes of ``block``'s modules, up their
    MROs, and the plain globals their functions read (and the functions those call by a
    global name, two levels down): a forward that counts its calls in ``type(self).calls``
    or in a global, or model code that sets a class attribute or a global flag before each
    call, changes one (neither passes a module's ``__getattribute__``)."""
    out: list[tuple[Any, str, Any]] = []
    seen: set[type] = set()
    codes: set[int] = set()
    for m in block.modules():
        for klass in type(m).__mro__:
            if klass in seen or klass is object:
                continue
            seen.add(klass)
            space = vars(klass)
            for name, value in space.items():
                if plain(value) and not (name.startswith("__") and name.endswith("__")):
                    out.append((space, name, value))
                else:
                    out.extend(_global_reads(_unwrapped(value), codes, 2))
    return out


def _unwrapped(value: Any) -> Any:
    """The function under a staticmethod or classmethod and under ``functools.wraps``
    wrappers (the forward :func:`~zeta_fx.capture.blocks.composing` patches in)."""
    value = getattr(value, "__func__", value)
    for _ in range(8):
        inner = getattr(value, "__wrapped__", None) if isinstance(value, types.FunctionType) \
            else None
        if inner is None:
            break
        value = inner
    return value


def _global_reads(function: Any, codes: set[int], depth: int) -> list[tuple[Any, str, Any]]:
    """The plain globals ``function`` (a Python function) names, and those of the Python
    functions it names as globals, ``depth`` levels down; each code object once."""
    code = getattr(function, "__code__", None)
    space = getattr(function, "__globals__", None)
    if not isinstance(code, types.CodeType) or not isinstance(space, dict) or \
            id(code) in codes:
        return []
    codes.add(id(code))
    out: list[tuple[Any, str, Any]] = []
    for name in _names(code):
        if name not in space:
            continue
        value = space[name]
        if plain(value):
            out.append((space, name, value))
        elif depth > 1 and isinstance(value, types.FunctionType):
            out.extend(_global_reads(value, codes, depth - 1))
    return out


def _names(code: types.CodeType) -> set[str]:
    """The global (and attribute) names ``code`` and the code nested in it use."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


def _tables(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The submodule, parameter and buffer tables of the module whose ``__dict__`` is
    ``state``."""
    return [table for table in (state.get("_modules"), state.get("_parameters"),
                                state.get("_buffers")) if isinstance(table, dict)]


def _object_reads(value: Any) -> list[tuple[Any, str, Any]]:
    """Every attribute of a plain object a module holds (a config, a helper): a forward
    that reads it may branch on any of them. Modules, tensors, plain values, functions
    and classes hold no such state here."""
    if isinstance(value, (nn.Module, torch.Tensor, type, types.FunctionType,
                          types.MethodType, types.BuiltinFunctionType, functools.partial)) \
            or plain(value) or not isinstance(getattr(value, "__dict__", None), dict):
        return []
    space = vars(value)
    return [(space, name, held) for name, held in space.items()]


# nn.Module's own bookkeeping (compared through the static key), the forward this module
# patches in; ``training`` is a setting the forward may read
_INTERNAL = (set(vars(nn.Module())) - {"training"}) | {"forward"}


@contextlib.contextmanager
def spying(block: nn.Module, reads: dict[tuple[str, str], Any], model: nn.Module | None = None,
            outside: list[tuple[Any, str, Any]] | None = None) -> Iterator[list[str]]:
    """Record the attributes every module inside ``block`` reads from its own ``__dict__``
    while the block runs (first value seen); yields the list of attributes written, on
    the block's modules or the model's. ``outside`` gets what the reads depend on beyond
    the block's own ``__dict__``: the attributes it reads of any other module (``model``'s:
    a back-reference to the model, a sibling; or a module held in a plain attribute
    outside the model) and of the plain objects its modules hold (a config). Only writes
    to the block's or ``model``'s modules count (a module made during the forward sets up
    its own state).

    Like ``torch.fx``'s tracer, this patches ``nn.Module`` for the duration (here
    ``__getattribute__`` and ``__setattr__``), and looks modules up by their ``__dict__``:
    a tracer's proxy of a module shares it."""
    wrote: list[str] = []
    watched: dict[int, tuple[str | None, dict[str, Any], dict[str, Any]]] = {
        id(vars(m)): (where, {}, vars(m)) for where, m in block.named_modules()}
    if model is not None:
        for m in model.modules():
            watched.setdefault(id(vars(m)), (None, {}, vars(m)))
    others: dict[int, tuple[str | None, dict[str, Any], dict[str, Any]]] = {}  # outside it
    held: list[tuple[Any, str, Any]] = []
    objects: set[int] = set()  # plain objects whose attributes are in ``held``
    setattr_before = nn.Module.__setattr__

    def getattribute(self: nn.Module, name: str) -> Any:
        state = object.__getattribute__(self, "__dict__")
        entry = watched.get(id(state))
        if entry is None:
            entry = others.setdefault(id(state), (None, {}, state))
        if name not in entry[1] and name not in _INTERNAL:
            # a name the instance does not hold is read from the class, or found missing
            # (``getattr(self, "flag", False)``): a copy that holds it reads another value
            value = entry[1][name] = state.get(name, MISSING)
            if value is not MISSING and id(value) not in objects:
                objects.add(id(value))
                held.extend(_object_reads(value))
        return object.__getattribute__(self, name)

    def setattr_(self: nn.Module, name: str, value: Any) -> None:
        if id(object.__getattribute__(self, "__dict__")) in watched:
            wrote.append(name)
        setattr_before(self, name, value)

    nn.Module.__getattribute__ = getattribute  # type: ignore[method-assign]
    nn.Module.__setattr__ = setattr_  # type: ignore[method-assign]
    try:
        yield wrote
    finally:
        del nn.Module.__getattribute__
        nn.Module.__setattr__ = setattr_before  # type: ignore[method-assign]
        for where, seen, state in [*watched.values(), *others.values()]:
            for name, value in seen.items():
                if where is not None:
                    reads[(where, name)] = value
                elif outside is not None:
                    outside.append((state, name, value))
                    if value is MISSING:  # a submodule, parameter or buffer, by identity
                        outside.extend((table, name, table[name]) for table in
                                       _tables(state) if name in table)
        if outside is not None:
            outside.extend(held)
