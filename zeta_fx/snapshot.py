"""What "unchanged" means — the state a call that does not write must leave as it found
it — and running a model so that it is left that way (:func:`leave_no_trace`), for capture
and verification alike.

Every public verb holds to this contract on every path that does not write by design: a
dry run, a capture, a verification, gate planning, and every error path. A call that writes
(``zero_init_pass`` without ``dry_run``, ``ZeroInitPlan.apply``) changes the values (and
version counters) of the parameters its plan names, and nothing else.

The contract, as :meth:`Snapshot.of` records it:

- the module tree: at every path the same module object, of the same class, with the same
  attributes (same objects: a forward that assigns ``self.ema = ...`` is a change; the
  items of dicts, lists and sets it holds, as objects), the same ``training`` flag and the
  same hooks (the module's own and the global ones);
- every parameter and buffer: the same tensor object at the same name, bit-identical values,
  the same ``_version`` (a write of the same value moves it, and breaks a pending
  ``loss.backward()``), ``requires_grad``, dtype, device, shape and ``.grad``;
- a ``GraphModule``'s graph (its nodes, targets and arguments);
- torch's global state: the CPU random generator (and CUDA's, where initialised), grad mode
  and the default dtype;
- the example inputs: the same tensors, bit-identical values, the same ``_version``.

>>> import torch
>>> from torch import nn
>>> model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
>>> x = torch.randn(4, 2)
>>> before = Snapshot.of(model, (x,))
>>> before.changes()
[]
>>> _ = model(x)  # a forward in train mode updates BatchNorm's running statistics
>>> "`1.running_mean`: values changed" in before.changes()
True
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import torch
from torch import fx, nn

from zeta_fx.errors import ModuleStateWriteError

__all__ = ["Snapshot", "leave_no_trace", "clone_inputs"]


_PLAIN = (bool, int, float, str, bytes, type(None))


@dataclass(frozen=True)
class _TensorState:
    tensor: torch.Tensor  # the object itself: identity is part of the contract
    values: torch.Tensor | None  # a clone; None for tensors that hold no values (meta)
    version: int
    requires_grad: bool
    dtype: torch.dtype
    device: torch.device
    shape: tuple[int, ...]
    grad: Any


@dataclass(frozen=True)
class Snapshot:
    """The state of a model, its example inputs and torch's global state at one moment;
    :meth:`changes` lists, in words, everything that differs now."""

    model: nn.Module
    inputs: Any
    modules: dict[str, tuple[nn.Module, type, dict[str, Any]]]
    tensors: dict[str, _TensorState]
    input_tensors: list[_TensorState]
    code: dict[str, str]
    torch_state: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, model: nn.Module, inputs: Any = None) -> "Snapshot":
        """Record ``model`` (an ``nn.Module``, wrappers included), ``inputs`` (any nesting of
        tuples, lists and dicts holding tensors) and torch's global state. Parameters,
        buffers and input tensors are cloned: this holds a copy of the model's state."""
        modules: dict[str, tuple[nn.Module, type, dict[str, Any]]] = {}
        tensors: dict[str, _TensorState] = {}
        code: dict[str, str] = {}
        for path, module in model.named_modules(remove_duplicate=False):
            modules[path] = (module, type(module), _attributes(module))
            if isinstance(module, fx.GraphModule):  # the graph itself, recompiled or not
                code[path] = str(module.graph)
            for name, t in (*module._parameters.items(), *module._buffers.items()):
                if isinstance(t, torch.Tensor):  # anything else shows in the owner's dict
                    tensors[f"{path}.{name}" if path else name] = _tensor_state(t)
        return cls(model, inputs, modules, tensors,
                   [_tensor_state(t) for t in _input_tensors(inputs)], code, _torch_state())

    def changes(self, allow: Iterable[str] = ()) -> list[str]:
        """What differs from the recorded state, one line per difference (empty: nothing).

        ``allow`` names parameters (FQNs) whose values and ``_version`` may differ: the ones
        a writing call was asked to write.
        """
        allowed = set(allow)
        now = Snapshot.of(self.model, self.inputs)
        out: list[str] = []
        for path in sorted(set(self.modules) | set(now.modules)):
            where = f"`{path or '(root)'}`"
            if path not in now.modules:
                out.append(f"{where}: module removed")
                continue
            if path not in self.modules:
                out.append(f"{where}: module added")
                continue
            (m0, t0, a0), (m1, t1, a1) = self.modules[path], now.modules[path]
            if m0 is not m1:
                out.append(f"{where}: another module object ({t0.__name__} -> {t1.__name__})")
                continue
            if t0 is not t1:
                out.append(f"{where}: class {t0.__name__} -> {t1.__name__}")
            out.extend(f"{where}.{line}" for line in _attribute_changes(a0, a1))
            if path in self.code and self.code[path] != now.code.get(path):
                out.append(f"{where}: its graph changed")
        for name in sorted(set(self.tensors) | set(now.tensors)):
            if name not in now.tensors or name not in self.tensors:
                continue  # said above, as a change of the owner's _parameters/_buffers
            if name in allowed:
                continue
            out.extend(f"`{name}`: {line}"
                       for line in _tensor_changes(self.tensors[name], now.tensors[name]))
        if len(self.input_tensors) != len(now.input_tensors):
            out.append("example inputs: a tensor was added or removed")
        for i, (a, b) in enumerate(zip(self.input_tensors, now.input_tensors)):
            out.extend(f"example input tensor {i}: {line}" for line in _tensor_changes(a, b))
        for key, value in self.torch_state.items():
            other = now.torch_state.get(key)
            same = _bits_equal(value, other) if isinstance(value, torch.Tensor) and \
                isinstance(other, torch.Tensor) else _same(value, other)
            if not same:
                out.append(f"torch: {key} changed")
        return out


def _attributes(module: nn.Module) -> dict[str, Any]:
    """A module's attributes: plain values as they are, containers (``_parameters``,
    ``_buffers``, hook dicts, lists, sets) as their items, anything else as the object
    itself (its own attributes are not looked into)."""
    out: dict[str, Any] = {}
    for name, value in vars(module).items():
        if isinstance(value, dict):
            out[name] = ("dict", tuple(value.items()))
        elif isinstance(value, list):
            out[name] = ("list", tuple(value))
        elif isinstance(value, (set, frozenset)):
            out[name] = ("set", frozenset(value))
        else:
            out[name] = value
    return out


def _attribute_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    out = []
    for name in sorted(set(before) | set(after), key=str):
        if name not in after:
            out.append(f"{name}: attribute deleted")
        elif name not in before:
            out.append(f"{name}: attribute added ({type(after[name]).__name__})")
        elif not _same(before[name], after[name]):
            out.append(f"{name}: {_describe(name, before[name], after[name])}")
    return out


def _describe(name: str, a: Any, b: Any) -> str:
    if isinstance(a, tuple) and len(a) == 2 and a[0] == "dict":
        ka, kb = dict(a[1]), dict(b[1]) if isinstance(b, tuple) else {}
        changed = sorted({k for k in ka.keys() | kb.keys()
                          if k not in ka or k not in kb or ka[k] is not kb[k]}, key=str)
        shown = ", ".join(str(k) for k in changed[:5])
        return f"entries {shown} replaced, added or removed"
    if isinstance(a, _PLAIN) and isinstance(b, _PLAIN):
        return f"{a!r} -> {b!r}"
    return f"another object ({type(a).__name__} -> {type(b).__name__})"


def _same(a: Any, b: Any) -> bool:
    """Identity for objects, equality for plain values (a float NaN equals itself)."""
    if a is b:
        return True
    if isinstance(a, _PLAIN) and isinstance(b, _PLAIN):
        return type(a) is type(b) and (a == b or (a != a and b != b))
    if isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b):
        return all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, frozenset) and isinstance(b, frozenset):
        return a == b
    return False


def _tensor_state(t: torch.Tensor) -> _TensorState:
    values = None
    if not t.is_meta and type(t) in (torch.Tensor, nn.Parameter):
        values = t.detach().clone()
    return _TensorState(t, values, t._version, t.requires_grad, t.dtype, t.device,
                        tuple(t.shape), t.grad if t.requires_grad and t.is_leaf else None)


def _tensor_changes(a: _TensorState, b: _TensorState) -> list[str]:
    if a.tensor is not b.tensor:
        return ["another tensor object"]
    out = []
    if (a.dtype, a.device, a.shape) != (b.dtype, b.device, b.shape):
        out.append(f"{a.dtype} {a.device} {a.shape} -> {b.dtype} {b.device} {b.shape}")
    elif a.values is not None and b.values is not None and not _bits_equal(a.values, b.values):
        out.append("values changed")
    if a.version != b.version:
        out.append(f"_version {a.version} -> {b.version}")
    if a.requires_grad != b.requires_grad:
        out.append(f"requires_grad {a.requires_grad} -> {b.requires_grad}")
    if a.grad is not b.grad:
        out.append("another .grad")
    return out


_INTS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit (``-0.0`` differs from ``0.0``; a NaN equals the same NaN)."""
    if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
        return False
    if a.is_meta or b.is_meta:
        return a.is_meta and b.is_meta
    a, b = a.detach(), b.detach()
    if a.is_complex():
        a, b = torch.view_as_real(a), torch.view_as_real(b)
    if (a.is_floating_point() and a.element_size() in _INTS) and a.dim() > 0:
        ints = _INTS[a.element_size()]
        return torch.equal(a.contiguous().view(ints), b.contiguous().view(ints))
    if a.is_floating_point():
        a, b = a.reshape(1), b.reshape(1)
        return torch.equal(a.view(_INTS[a.element_size()]), b.view(_INTS[b.element_size()]))
    return torch.equal(a, b)


def _input_tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _input_tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _input_tensors(item)]
    return []


def _torch_state() -> dict[str, Any]:
    from torch.nn.modules import module as module_globals

    state: dict[str, Any] = {
        "the CPU random generator's state": torch.get_rng_state(),
        "grad mode": torch.is_grad_enabled(),
        "the default dtype": str(torch.get_default_dtype()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"the random generator's state of cuda:{i}"] = s
    for name in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks", "_global_buffer_registration_hooks",
                 "_global_module_registration_hooks", "_global_parameter_registration_hooks"):
        hooks = getattr(module_globals, name, None)
        if hooks is not None:
            state[f"global module hooks ({name})"] = tuple(hooks.items())
    return state


@contextlib.contextmanager
def leave_no_trace(model: nn.Module, *, clone_buffers: bool = False) -> Iterator[None]:
    """Run a capture of ``model`` so that the model and torch's random state are as they were
    afterwards (the contract of :class:`zeta_fx.snapshot.Snapshot`).

    - The global random generators are forked (``torch.random.fork_rng``: the CPU one and
      every initialised CUDA device): dropout in a train-mode forward draws from a copy.
    - Every module's attributes, and the contents of its dicts, lists and sets (parameters,
      buffers, submodules, hooks, caches), are put back afterwards as objects: a forward that
      assigns ``self.ema = ...``, a tracer that sets ``_tensor_constant0`` on the root, a
      hook left registered, are undone without writing a tensor (no ``_version`` moves).
    - ``clone_buffers=True`` puts a clone in place of every buffer while it runs (the
      ``torch.func.functional_call`` idea), so that a forward run on real values updates
      BatchNorm's running statistics in the clones. Writing and restoring would move the
      buffers' version counters and break a pending ``loss.backward()``. Parameters are
      not cloned (a forward does not write its parameters).
    - While it runs, assigning a ``torch.fx.Proxy`` to an attribute of one of the model's
      modules (symbolic tracing of ``self.steps += 1``) raises
      :class:`~zeta_fx.errors.ModuleStateWriteError` before the assignment happens. Like
      ``torch.fx``'s own tracer (which patches ``nn.Module.__call__`` and ``__getattr__``
      while it traces), this patches ``nn.Module.__setattr__`` for the duration, checking
      only the model's own modules: do not capture from two threads at once.

    >>> import torch
    >>> from torch import nn
    >>> bn = nn.BatchNorm1d(2)
    >>> version = bn.running_mean._version
    >>> with leave_no_trace(bn, clone_buffers=True):
    ...     _ = bn(torch.randn(4, 2))  # train mode: updates the running statistics
    >>> bn.running_mean.tolist(), bn.running_mean._version == version, int(bn.num_batches_tracked)
    ([0.0, 0.0], True, 0)
    """
    modules = list({id(m): m for m in model.modules()}.values())
    paths = {}
    for path, m in model.named_modules(remove_duplicate=False):
        paths.setdefault(id(m), path)
    saved = [(m, dict(vars(m)), {name: _contents(value) for name, value in vars(m).items()
                                 if isinstance(value, (dict, list, set))}) for m in modules]
    if clone_buffers:
        with torch.no_grad():
            for m in modules:
                for name, b in m._buffers.items():
                    if isinstance(b, torch.Tensor):
                        m._buffers[name] = b.detach().clone()
    original = nn.Module.__setattr__

    def guarded(module: nn.Module, name: str, value: Any) -> None:
        if id(module) in paths and _holds_proxy(value):
            raise _state_write(paths[id(module)], name, module)
        original(module, name, value)

    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    devices = list(range(torch.cuda.device_count())) if cuda else []
    nn.Module.__setattr__ = guarded  # type: ignore[method-assign]
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        nn.Module.__setattr__ = original  # type: ignore[method-assign]
        for m, attributes, contents in saved:
            _put_back(m, attributes, contents)


def _contents(value: dict | list | set) -> Any:
    return dict(value) if isinstance(value, dict) else list(value) if isinstance(
        value, list) else set(value)


def _put_back(module: nn.Module, attributes: dict[str, Any], contents: dict[str, Any]) -> None:
    """Restore ``module``'s attributes and its containers' items, only where they differ."""
    now = vars(module)
    if now.keys() != attributes.keys() or any(now[k] is not v for k, v in attributes.items()):
        now.clear()
        now.update(attributes)
    for name, items in contents.items():
        container = attributes[name]
        if isinstance(container, dict):
            if container.keys() != items.keys() or any(container[k] is not v
                                                       for k, v in items.items()):
                container.clear()
                container.update(items)
        elif isinstance(container, list):
            if len(container) != len(items) or any(a is not b for a, b in zip(container, items)):
                container[:] = items
        elif container != items:
            container.clear()
            container.update(items)


def _holds_proxy(value: Any) -> bool:
    if isinstance(value, fx.Proxy):
        return True
    if isinstance(value, (tuple, list)):
        return any(_holds_proxy(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_proxy(v) for v in value.values())
    return False


def _state_write(path: str, name: str, module: nn.Module) -> ModuleStateWriteError:
    fqn = f"{path}.{name}" if path else name
    where = f"`{path}` ({type(module).__name__})" if path else \
        f"the model itself ({type(module).__name__})"
    return ModuleStateWriteError(
        f"the forward of {where} assigns module state (`self.{name} = ...`, attribute "
        f"`{fqn}`): symbolic tracing would store a torch.fx Proxy in the module, so the "
        "assignment was refused and the model is as it was. What to do: pass "
        "example_inputs=(...) with capture=\"export\" (torch.export records the update as a "
        "buffer mutation without touching the module), or mark the module a leaf "
        f"(leaf_modules=[{path!r}]) if its parameters are not the ones to initialise"
        if path else
        f"the forward of {where} assigns module state (`self.{name} = ...`, attribute "
        f"`{fqn}`): symbolic tracing would store a torch.fx Proxy in the module, so the "
        "assignment was refused and the model is as it was. What to do: pass "
        "example_inputs=(...) with capture=\"export\" (torch.export records the update as a "
        "buffer mutation without touching the module)", path, name)


def clone_inputs(value: Any) -> Any:
    """``value`` (tensors nested in tuples, lists and dicts) with every tensor cloned, so
    that a forward which writes its input in place (``x.mul_(2)``, ``x += f(x)``) writes a
    copy. ``requires_grad`` is kept; other objects are returned as they are.

    >>> import torch
    >>> x = torch.ones(2)
    >>> y, = clone_inputs((x,))
    >>> _ = y.mul_(2)
    >>> x.tolist(), x._version
    ([1.0, 1.0], 0)
    """
    if isinstance(value, torch.Tensor):
        copy = value.detach().clone()
        if value.requires_grad and (copy.is_floating_point() or copy.is_complex()):
            copy.requires_grad_(True)
        return copy
    if isinstance(value, (tuple, list)) and type(value) in (tuple, list):
        return type(value)(clone_inputs(v) for v in value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
        return type(value)(*(clone_inputs(v) for v in value))
    if isinstance(value, dict) and type(value) is dict:
        return {k: clone_inputs(v) for k, v in value.items()}
    return value
