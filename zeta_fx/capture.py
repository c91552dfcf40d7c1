"""Capture: ``nn.Module`` -> ``torch.fx.GraphModule``.

``symbolic_trace`` with a tracer whose leaf policy users extend; a ``GraphModule`` from any
tracer is used as it is. When tracing fails, the error names the submodule whose
``forward`` failed and says what to do.

>>> import torch
>>> from torch import nn
>>> gm = capture(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
>>> [n.op for n in gm.graph.nodes]
['placeholder', 'call_module', 'call_module', 'output']
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Union


from torch import fx, nn

from zeta_fx.errors import CaptureError

__all__ = ["ZetaTracer", "capture", "LeafSpec"]

# A leaf is given as a module class, an FQN (exact, or a prefix ending in ".*"), or a
# predicate ``(module, fqn) -> bool``.
LeafSpec = Union[type, str, Callable[[nn.Module, str], bool]]


class ZetaTracer(fx.Tracer):
    """``torch.fx.Tracer`` with extra leaf modules and errors that name the failing module."""

    def __init__(self, leaf_modules: Iterable[LeafSpec] = ()) -> None:
        super().__init__()
        # Buffers become get_attr nodes instead of concrete tensors, so that a forward which
        # updates a buffer (a step counter, an EMA) is recorded, not run, while tracing.
        self.proxy_buffer_attributes = True
        self.leaf_types = tuple(s for s in leaf_modules if isinstance(s, type))
        self.leaf_names = tuple(s for s in leaf_modules if isinstance(s, str))
        self.leaf_predicates = tuple(s for s in leaf_modules
                                     if callable(s) and not isinstance(s, type))
        self.failed_in: tuple[str, type] | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self.leaf_types and isinstance(m, self.leaf_types):
            return True
        for name in self.leaf_names:
            if module_qualified_name == name or (
                    name.endswith(".*") and module_qualified_name.startswith(name[:-1])):
                return True
        if any(pred(m, module_qualified_name) for pred in self.leaf_predicates):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:  # the innermost module is the first to see it
                self.failed_in = (self.path_of_module(m), type(m))
            raise


def capture(model: nn.Module, *, leaf_modules: Iterable[LeafSpec] = ()) -> fx.GraphModule:
    """Trace ``model`` (a ``GraphModule`` is returned unchanged).

    The graph module shares the model's parameters and submodules: nothing is copied or
    allocated, so models on the meta device trace too.
    """
    if isinstance(model, fx.GraphModule):
        return model
    tracer = ZetaTracer(leaf_modules)
    try:
        graph = tracer.trace(model)
    except Exception as exc:
        where, cls = tracer.failed_in or ("", type(model))
        place = f"`{where}` ({cls.__name__})" if where else f"the model's own forward ({cls.__name__})"
        raise CaptureError(
            f"symbolic tracing failed in {place}: {type(exc).__name__}: {_first_line(exc)}\n"
            f"What to do: mark it as a leaf (leaf_modules=[{cls.__name__}] or "
            f"[{where!r}]) if its parameters are not the ones to zero, or pass "
            "example_inputs=(...) so that the model is captured with torch.export instead"
        ) from exc
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"


