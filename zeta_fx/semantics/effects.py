"""Which inputs an op writes, and which inputs its output may share storage with.

Derived from torch wherever torch knows: an aten overload's schema says it
(``Tensor(a!) self`` is written, ``-> Tensor(a)`` is a view of the argument annotated
``(a)``); a torch function or Tensor method is read through the aten overload packet of the
same name (``x.mul_(2)`` is ``aten.mul_``, ``x.view(...)`` is ``aten.view``), with the
union over its overloads. Two argument forms write whatever the op: ``out=`` (the output
*is* ``out``) and ``inplace=True`` (``F.relu(x, inplace=True)`` is ``relu_``), bound with
the function's own signature. ``operator`` forms map to their aten ops (``+=`` is
``add_``, ``x[i] = v`` writes ``x``), and the attributes ``.data``, ``.T``, ``.mT``,
``.H``, ``.mH``, ``.real`` and ``.imag`` are views.

Written by hand, only where torch's schemas say nothing or say less than the kernels do:
``dropout`` and its kin return their input *itself* in eval mode or with ``p = 0``, and
``type_as`` returns ``self`` when the dtype already matches, though their schemas promise a
fresh tensor (``tests/semantics`` runs each one to check); the dtype-cast methods
(``float``, ``half``, ...) are ``aten.to``.

An op that is not torch's (a user's function wrapped with ``torch.fx.wrap``) is
*opaque*: it may write, and its output may alias, every tensor it receives.

>>> import torch
>>> from torch import fx
>>> import torch.nn.functional as F
>>> def f(x, y):
...     t = x.T
...     t.mul_(2)
...     z = torch.add(x, y, out=y)
...     return F.silu(z, inplace=True), x.float(), F.dropout(x, 0.1, training=False)
>>> gm = fx.symbolic_trace(f)
>>> for n in gm.graph.nodes:
...     if n.op in ("call_function", "call_method"):
...         e = op_effects(n)
...         print(n.name, sorted(e.writes), sorted(e.aliases), e.opaque)
getattr_1 [] ['input'] False
mul_ ['input'] ['input'] False
add ['out'] ['out'] False
silu ['input'] ['input'] False
float_1 [] ['input'] False
dropout [] ['input'] False
"""

from __future__ import annotations

import builtins
import inspect
import operator
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import torch
from torch.fx import Node

from zeta_fx.semantics.modules import hooked
from zeta_fx.semantics.tables import LIBRARY_PURE

__all__ = ["Effects", "op_effects", "module_effects", "schema_effects", "PURE", "OPAQUE",
           "VIEW_ATTRS"]


@dataclass(frozen=True)
class Effects:
    """What one call does to storage: ``writes`` and ``aliases`` are the names of the
    bound arguments (``input`` for ``self``, ``out``, ...) it writes in place and that its
    output may share storage with; ``opaque``: unknown, so it may write and alias every
    tensor it receives."""

    writes: frozenset[str] = frozenset()
    aliases: frozenset[str] = frozenset()
    opaque: bool = False
    #: a cast (``to``, ``half``, ``type_as``): it returns its input itself only when the
    #: dtype does not change, and a copy otherwise
    cast: bool = False

    def __or__(self, other: "Effects") -> "Effects":
        return Effects(self.writes | other.writes, self.aliases | other.aliases,
                       self.opaque or other.opaque, self.cast and other.cast)


PURE = Effects()
OPAQUE = Effects(opaque=True)
_IN_PLACE = Effects(frozenset({"input"}), frozenset({"input"}))
_VIEW = Effects(aliases=frozenset({"input"}))
_OUT = Effects(frozenset({"out"}), frozenset({"out"}))

_CAST = Effects(aliases=frozenset({"input"}), cast=True)
_CASTS = frozenset({"to", "type", "type_as", "float", "half", "double", "bfloat16"})

_METADATA_ATTRS = frozenset({"shape", "ndim", "dtype", "device", "is_cuda", "layout",
                             "requires_grad", "is_sparse", "names", "grad_fn", "is_leaf"})

#: Tensor attributes that are views of the tensor (``x.T.mul_(2)`` writes ``x``).
VIEW_ATTRS = frozenset({"data", "T", "mT", "H", "mH", "real", "imag"})

# Torch's kernels return the input itself here, though the schema promises a fresh tensor.
_RETURNS_INPUT = frozenset({"dropout", "feature_dropout", "alpha_dropout",
                            "feature_alpha_dropout", "dropout1d", "dropout2d", "dropout3d"})
# Tensor methods that are another aten op under a different name.
_METHOD_OPS = {"float": "to", "half": "to", "double": "to", "bfloat16": "to", "int": "to",
               "long": "to", "short": "to", "bool": "to", "byte": "to", "char": "to",
               "cpu": "to", "cuda": "to", "type": "to", "reshape_as": "reshape",
               "view_as": "view", "expand_as": "expand", "contiguous": "contiguous"}
_OPERATOR_OPS = {"iadd": "add_", "isub": "sub_", "imul": "mul_", "itruediv": "div_",
                 "ifloordiv": "floor_divide_", "ipow": "pow_", "imod": "remainder_",
                 "iand": "bitwise_and_", "ior": "bitwise_or_", "ixor": "bitwise_xor_",
                 "ilshift": "__ilshift__", "irshift": "__irshift__", "imatmul": "matmul"}
_RETURN_ALIAS = re.compile(r"Tensor\((\w+)!?\)")


def _bound_name(name: str) -> str:
    return "input" if name == "self" else name


def schema_effects(schema: torch.FunctionSchema) -> Effects:
    """The :class:`Effects` an aten schema annotates: ``Tensor(a!)`` arguments are
    written; an argument whose alias set a return names is aliased by the output.

    >>> e = schema_effects(torch.ops.aten.add_.Tensor._schema)
    >>> sorted(e.writes), sorted(e.aliases)
    (['input'], ['input'])
    >>> schema_effects(torch.ops.aten.split.Tensor._schema).aliases
    frozenset({'input'})
    """
    return _schema_effects(str(schema))


@lru_cache(maxsize=None)
def _schema_effects(text: str) -> Effects:
    # keyed by the schema's text (a FunctionSchema with list defaults is not hashable)
    schema = torch._C.parse_schema(text)
    returns = text.rpartition("->")[2]
    returned = set(_RETURN_ALIAS.findall(returns))
    writes, aliases = set(), set()
    for arg in schema.arguments:
        info = arg.alias_info
        if info is None or "Tensor" not in str(arg.type):
            continue  # (the list overloads of Python's operators: ``mul_.t``)
        if info.is_write:
            writes.add(_bound_name(arg.name))
        if set(info.before_set) & returned:
            aliases.add(_bound_name(arg.name))
    return Effects(frozenset(writes), frozenset(aliases))


@lru_cache(maxsize=None)
def _packet_effects(name: str) -> Effects | None:
    """The union of the :class:`Effects` of ``aten.<name>``'s overloads, ``out=`` forms
    left out (an ``out=`` argument is bound by :func:`op_effects`); ``None`` if aten has no
    op of that name."""
    packet = getattr(torch.ops.aten, name, None)
    if not isinstance(packet, torch._ops.OpOverloadPacket):
        return None
    out = PURE
    for overload in packet.overloads():
        schema = getattr(packet, overload)._schema
        if any(a.name == "out" for a in schema.arguments) or overload.endswith("out"):
            continue
        out = out | schema_effects(schema)
    return out


def _in_place_name(name: str) -> bool:
    return name.endswith("_") and not name.endswith("__") and not name.startswith("_")


@lru_cache(maxsize=None)
def _named_effects(name: str) -> Effects:
    """A torch function's or Tensor method's effects by its name."""
    if name in _CASTS:
        return _CAST
    if name in _RETURNS_INPUT:
        return _VIEW
    name = _METHOD_OPS.get(name, name)
    got = _packet_effects(name)
    if got is not None:
        return got
    if _in_place_name(name):  # no aten op of that name, but torch's naming says it
        return _IN_PLACE
    return PURE


@lru_cache(maxsize=None)
def _inplace_position(fn: Callable[..., Any]) -> int | None:
    """The position of ``fn``'s ``inplace`` parameter, if it has one."""
    try:
        names = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return None
    return names.index("inplace") if "inplace" in names else None


def _torch_callable(target: Any) -> bool:
    if getattr(target, "__objclass__", None) in (torch._C.TensorBase, torch.Tensor):
        return True  # torch.Tensor.add_ called as a function
    module = getattr(target, "__module__", None) or ""
    if module == "torch" or module.startswith(("torch.", "torch._C")):
        return True
    # builtins of torch._C (torch.relu, torch.add) report no module; their self is torch
    owner = getattr(target, "__self__", None)
    return getattr(owner, "__name__", "") in ("torch._C._VariableFunctions", "torch._C._nn",
                                              "torch._C._linalg", "torch._C._special",
                                              "torch._C._fft")


def _advanced_index(index: Any) -> bool:
    if isinstance(index, list):
        return True
    return isinstance(index, tuple) and any(isinstance(i, list) for i in index)


def _flag(node: Node, position: int | None, name: str) -> bool:
    if name in node.kwargs:
        return node.kwargs[name] is True
    return position is not None and len(node.args) > position and node.args[position] is True


def op_effects(node: Node) -> Effects:
    """The :class:`Effects` of a ``call_function`` or ``call_method`` node (modules are
    :func:`module_effects`); other nodes have none."""
    op, target = node.op, node.target
    if op == "call_method":
        effects, position = _named_effects(target), None
    elif op != "call_function":
        return PURE
    elif target is getattr:
        # a view (``.T``, ``.data``), a field of a returned tuple (``.values``): the value
        # itself; metadata (``.shape``, ``.dtype``) holds none
        return PURE if len(node.args) > 1 and node.args[1] in _METADATA_ATTRS else _VIEW
    elif target is operator.getitem:
        # an item of a container, or basic indexing of a tensor (a view); indexing with a
        # list is advanced indexing, which copies
        return PURE if _advanced_index(node.args[1] if len(node.args) > 1 else None) \
            else _VIEW
    else:
        try:
            effects, position = _function_effects(target)
        except TypeError:  # an unhashable callable
            effects, position = _function_effects.__wrapped__(target)
        if effects.opaque or isinstance(target, torch._ops.OpOverload):
            return effects  # (an aten overload's out= is part of its schema)
    if position is not None and _flag(node, position, "inplace"):
        effects = effects | _IN_PLACE
    if node.kwargs.get("out") is not None:
        effects = Effects(effects.writes | _OUT.writes, effects.aliases | _OUT.aliases,
                          effects.opaque)
    return effects


@lru_cache(maxsize=None)
def _function_effects(target: Any) -> tuple[Effects, int | None]:
    """A ``call_function`` target's effects before its arguments are looked at, and the
    position of its ``inplace`` parameter (if it has one)."""
    if isinstance(target, torch._ops.OpOverload):
        return schema_effects(target._schema), None
    if isinstance(target, torch._ops.OpOverloadPacket):
        return _named_effects(target._qualified_op_name.split("::")[-1]), None
    if getattr(target, "__module__", None) in ("_operator", "operator"):
        name = target.__name__
        if name == "setitem":
            return Effects(frozenset({"input"})), None
        in_place = _OPERATOR_OPS.get(name)
        return (_named_effects(in_place) if in_place else PURE), None
    if target in _BUILTIN_PURE:
        return PURE, None
    if _torch_callable(target):
        return _named_effects(getattr(target, "__name__", "") or ""), _inplace_position(target)
    if getattr(target, "__name__", None) in LIBRARY_PURE:
        return PURE, None
    return OPAQUE, None


_BUILTIN_PURE = frozenset({builtins.len, builtins.getattr, builtins.isinstance, builtins.int,
                           builtins.float, builtins.bool, builtins.tuple, builtins.list,
                           builtins.max, builtins.min, builtins.abs, operator.getitem})


# torch.nn modules whose forward may return its input itself (Dropout in eval mode)
_MODULES_RETURNING_INPUT = ("Identity", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d",
                            "AlphaDropout", "FeatureAlphaDropout", "Flatten", "Unflatten")


def module_effects(module: torch.nn.Module, known: bool | None = None) -> Effects:
    """The :class:`Effects` of calling ``module`` on its inputs. ``known``: the module
    computes what its torch.nn class computes; by default, decided here: its class's
    ``forward`` is torch's own, not replaced on the instance, and no hook runs around it.
    Any other module is opaque and may write what it receives.

    >>> from torch import nn
    >>> module_effects(nn.ReLU(inplace=True)).writes
    frozenset({'input'})
    >>> module_effects(nn.Linear(2, 2)) == PURE, module_effects(nn.Linear(2, 2), False).opaque
    (True, True)
    """
    if known is None:
        known = "forward" not in module.__dict__ and not hooked(module)
    if not known:
        return OPAQUE
    effects, has_inplace = _class_effects(type(module))
    if has_inplace and getattr(module, "inplace", False) is True or \
            module.__dict__.get("inplace") is True:
        return _IN_PLACE
    return effects


@lru_cache(maxsize=None)
def _class_effects(cls: type) -> tuple[Effects, bool]:
    """A module class's effects (opaque unless its ``forward`` is torch's), and whether it
    has an ``inplace`` setting."""
    owner = getattr(cls.forward, "__module__", "") or ""
    if not owner.startswith("torch."):
        return OPAQUE, False
    return (_VIEW if _returns_input(cls) else PURE), hasattr(cls, "inplace")


@lru_cache(maxsize=None)
def _returns_input(cls: type) -> bool:
    return any(base.__module__.startswith("torch.nn.") and
               base.__name__ in _MODULES_RETURNING_INPUT for base in cls.__mro__)
