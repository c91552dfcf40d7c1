"""The tracer every capture builds on, and what captures share.

``ZetaTracer`` is ``torch.fx.Tracer`` with a leaf policy users extend (classes, FQNs, FQN
prefixes, predicates) and errors that name the module whose ``forward`` failed; modules with
hooks are leaves, so their hooks are not silently dropped.

>>> from torch import fx, nn
>>> model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
>>> graph = ZetaTracer(leaf_modules=["0"]).trace(model)
>>> [n.op for n in graph.nodes]
['placeholder', 'call_module', 'call_module', 'output']
"""

from __future__ import annotations

import contextlib
import io
import logging
import operator
import warnings
from typing import Any, Callable, Iterable, Iterator, Union

from torch import fx, nn


__all__ = ["ZetaTracer", "WritingProxy", "LeafSpec", "quiet_torch", "tied_aliases",
           "first_line"]

logger = logging.getLogger("zeta_fx.capture")

# A leaf is given as a module class, an FQN (exact, or a prefix ending in ".*"), or a
# predicate ``(module, fqn) -> bool``.
LeafSpec = Union[type, str, Callable[[nn.Module, str], bool]]


class WritingProxy(fx.Proxy):
    """A ``torch.fx.Proxy`` that records Python's in-place statements as what they are.

    fx's own Proxy has no in-place operators, so ``v *= 2`` falls back to ``v = v * 2``: the
    graph shows a fresh product while eager Python writes ``v`` (and every tensor it is a
    view of) in place; and ``x[i] = v`` does not trace at all. Here ``*=``, ``+=``, ...
    record ``operator.imul``, ``operator.iadd``, ... and ``x[i] = v`` records
    ``operator.setitem``, which fx's code generator prints back as the same statements.

    >>> def f(x):
    ...     v = x.view(-1)
    ...     v *= 2
    ...     x[0] = 1.0
    ...     return x
    >>> graph = ZetaTracer().trace(f)
    >>> [n.target for n in graph.nodes if n.op == "call_function"]
    [<built-in function imul>, <built-in function setitem>]
    """

    def __setitem__(self, key: Any, value: Any) -> None:
        self.tracer.create_proxy("call_function", operator.setitem, (self, key, value), {})


def _in_place(op: Callable[[Any, Any], Any]) -> Callable[[WritingProxy, Any], Any]:
    def method(self: WritingProxy, other: Any) -> Any:
        return self.tracer.create_proxy("call_function", op, (self, other), {})
    method.__name__ = f"__{op.__name__}__"
    return method


for _op in (operator.iadd, operator.isub, operator.imul, operator.itruediv,
            operator.ifloordiv, operator.imod, operator.ipow, operator.imatmul,
            operator.iand, operator.ior, operator.ixor, operator.ilshift, operator.irshift):
    setattr(WritingProxy, f"__{_op.__name__}__", _in_place(_op))


class ZetaTracer(fx.Tracer):
    """``torch.fx.Tracer`` with extra leaf modules and errors that name the failing module."""

    def __init__(self, leaf_modules: Iterable[LeafSpec] = (), *, split: bool = False) -> None:
        super().__init__()
        # split=True: a submodule whose forward fails is made a leaf (and the trace goes on)
        self.split = split
        self.split_paths: dict[str, type] = {}
        self._param_cache: dict[str, Any] | None = None
        # Buffers become get_attr nodes instead of concrete tensors, so that a forward which
        # updates a buffer (a step counter, an EMA) is recorded, not run, while tracing.
        self.proxy_buffer_attributes = True
        self.leaf_types = tuple(s for s in leaf_modules if isinstance(s, type))
        self.leaf_names = tuple(s for s in leaf_modules if isinstance(s, str))
        self.leaf_predicates = tuple(s for s in leaf_modules
                                     if callable(s) and not isinstance(s, type))
        self.failed_in: tuple[str, type] | None = None

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return WritingProxy(node, self)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.split_paths:
            return True
        if self.leaf_types and isinstance(m, self.leaf_types):
            return True
        for name in self.leaf_names:
            if module_qualified_name == name or (
                    name.endswith(".*") and module_qualified_name.startswith(name[:-1])):
                return True
        if any(pred(m, module_qualified_name) for pred in self.leaf_predicates):
            return True
        if _has_hooks(m):
            # symbolic tracing runs forward, not __call__: a hook would be silently lost.
            # As a leaf, the module is called whole (hooks included) and seen as opaque.
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        self._param_cache = parameter_proxy_cache  # to forget proxies of undone nodes
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        last, depth = self.graph._root.prev, len(self.module_stack)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            path = self.path_of_module(m)
            if not self.split or not path:
                if self.failed_in is None:  # the innermost module is the first to see it
                    self.failed_in = (path, type(m))
                raise
        self._undo(last, depth)
        self.split_paths[path] = type(m)
        return super().call_module(m, forward, args, kwargs)

    def _undo(self, last: fx.Node, depth: int) -> None:
        """Erase what a failed module call added to the graph and the tracer's stacks."""
        erased = set()
        while self.graph._root.prev is not last:
            node = self.graph._root.prev
            erased.add(node)
            self.graph.erase_node(node)
        while len(self.module_stack) > depth:
            self.module_stack.popitem()
        if self._param_cache:
            for name in [n for n, p in self._param_cache.items() if p.node in erased]:
                del self._param_cache[name]


def _has_hooks(module: nn.Module) -> bool:
    from torch.nn.utils.weight_norm import WeightNorm

    return bool(module._forward_hooks) or any(
        not isinstance(h, WeightNorm) for h in module._forward_pre_hooks.values())


@contextlib.contextmanager
def quiet_torch() -> Iterator[None]:
    """Keep what torch prints and logs while a capture is attempted off the user's terminal.

    A failed ``torch.export`` prints the partial graph to stderr and logs warnings; those
    go to this module's logger at DEBUG instead, so a failure reads as one ``CaptureError``.
    """
    records: list[logging.LogRecord] = []

    class _FromTorch(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if record.name == "torch" or record.name.startswith("torch."):
                records.append(record)
                return False
            return True

    swallow = _FromTorch()
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    handlers = {h for lg in loggers for h in lg.handlers}
    for handler in handlers:
        handler.addFilter(swallow)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        for handler in handlers:
            handler.removeFilter(swallow)
        said = [r.getMessage() for r in records] + [str(w.message) for w in caught]
        if printed.getvalue().strip() or said:
            logger.debug("torch said while capturing:\n%s",
                         "\n".join(said + [printed.getvalue()]).strip())


def tied_aliases(model: nn.Module) -> dict[str, list[str]]:
    """Every name of each parameter registered under several names (tied), by each name.

    >>> model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    >>> model[1].weight = model[0].weight
    >>> tied_aliases(model)["1.weight"]
    ['0.weight', '1.weight']
    """
    by_id: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(param), []).append(name)
    return {name: names for names in by_id.values() if len(names) > 1 for name in names}


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (for one-line errors).

    >>> first_line(ValueError(" bad value ")), first_line(ValueError())
    ('bad value', '(no message)')
    """
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"




# -- leaving no trace: what every capture runs under ----------------------------------------
