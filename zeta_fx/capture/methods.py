"""Capture: ``nn.Module`` -> ``torch.fx.GraphModule``.

``symbolic_trace`` with a tracer whose leaf policy users extend; a ``GraphModule`` from any
tracer is used as it is. When tracing fails, the error names the submodule whose
``forward`` failed and says what to do. Given example inputs, a model that symbolic tracing
cannot follow (data-dependent control flow, Hugging Face models) is captured with
``torch.export`` (non-strict) instead; its lifted parameters become ``get_attr`` nodes named
by the model's own FQNs, so the analysis and the report read it like any other graph.

>>> import torch
>>> from torch import nn
>>> gm = capture(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
>>> [n.op for n in gm.graph.nodes]
['placeholder', 'call_module', 'call_module', 'output']
"""

from __future__ import annotations

import contextlib
import gc
import logging
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import fx, nn
from torch.fx._lazy_graph_module import _LazyGraphModule

from zeta_fx.capture.blocks import NotComposable, composing, repeated_blocks
from zeta_fx.capture.concrete import concrete_capture
from zeta_fx.capture.hiding import hiding
from zeta_fx.capture.stitch import stitch
from zeta_fx.errors import CaptureError, ModuleStateWriteError
from zeta_fx.capture.tracer import LeafSpec, ZetaTracer, first_line, quiet_torch, tied_aliases
from zeta_fx.snapshot import clone_inputs, leave_no_trace

__all__ = ["ZetaTracer", "capture", "export_capture", "LeafSpec", "CAPTURE_METHODS",
           "quiet_torch"]

CAPTURE_METHODS = ("auto", "symbolic", "export", "concrete")

logger = logging.getLogger(__name__)

def capture(model: nn.Module, *, leaf_modules: Iterable[LeafSpec] = (),
            example_inputs: Any = None, example_kwargs: dict[str, Any] | None = None,
            method: str = "auto", compositional: bool = False) -> fx.GraphModule:
    """Trace ``model`` (a ``GraphModule`` is returned unchanged).

    ``method="auto"`` tries ``symbolic_trace``; if it fails and example inputs are given,
    ``torch.export``; if that fails too, a concrete capture that follows the forward's Python
    on the example inputs (``zeta_fx.capture.concrete``: the branch they take is the graph).
    ``"symbolic"``, ``"export"`` and ``"concrete"`` force one of them. The graph module
    shares the model's parameters: nothing is copied, so models on the meta device trace
    too (symbolically or with export).

    Capture leaves no trace (:func:`zeta_fx.snapshot.leave_no_trace`): the model's attributes,
    parameters, buffers (objects, values and version counters), hooks and modes, the example
    inputs and torch's global random state are as they were, whichever method ran and
    whether it succeeded or failed. A forward that assigns module state (``self.steps +=
    1``) cannot be traced symbolically: it is refused with
    :class:`~zeta_fx.errors.ModuleStateWriteError` (with example inputs, ``"auto"`` goes on
    to ``torch.export``, which captures the update).

    ``compositional=True``: an export captures each distinct repeated block once
    (:func:`export_capture`); the graph is the same.
    """
    if method not in CAPTURE_METHODS:
        raise ValueError(f"capture must be one of {', '.join(map(repr, CAPTURE_METHODS))}, "
                         f"got {method!r}")
    if isinstance(model, fx.GraphModule):
        return model
    has_examples = example_inputs is not None or bool(example_kwargs)
    if method in ("export", "concrete"):
        if not has_examples:
            raise CaptureError(
                f"capture={method!r} needs example inputs to run {type(model).__name__}.forward; "
                "pass example_inputs=(...) (and example_kwargs={...}) shaped like a real batch")
        if method == "export":
            return export_capture(model, example_inputs, example_kwargs,
                                      compositional=compositional)
        return _concrete(model, example_inputs, example_kwargs, leaf_modules)
    tracer = ZetaTracer(leaf_modules)
    try:
        with leave_no_trace(model):  # the tracer sets `_tensor_constant0`s on the root
            graph = tracer.trace(model)
            return fx.GraphModule(tracer.root, graph, type(model).__name__)
    except Exception as exc:
        state_write = exc if isinstance(exc, ModuleStateWriteError) else None
        where, cls = tracer.failed_in or ("", type(model))
        place = f"`{where}` ({cls.__name__})" if where else f"the model's own forward ({cls.__name__})"
        failure = f"symbolic tracing failed in {place}: {type(exc).__name__}: {first_line(exc)}"
        if method == "auto" and has_examples:
            try:
                return export_capture(model, example_inputs, example_kwargs,
                                      compositional=compositional)
            except CaptureError as export_exc:
                export_failure = getattr(export_exc, "failure", str(export_exc))
            try:
                return _concrete(model, example_inputs, example_kwargs, leaf_modules)
            except CaptureError as concrete_exc:
                raise CaptureError(
                    f"{failure}; then {export_failure}; then "
                    f"{getattr(concrete_exc, 'failure', concrete_exc)}. What to do: "
                    f"{getattr(concrete_exc, 'advice', 'trace the model yourself')}"
                ) from concrete_exc
        if state_write is not None:
            raise state_write from None
        # The model itself cannot be a leaf of its own trace: only offer that for submodules.
        leaf = (f"; or mark it as a leaf (leaf_modules=[{cls.__name__}] or [{where!r}]) if "
                "its parameters are not the ones to zero") if where else ""
        raise CaptureError(
            f"{failure}. What to do: pass example_inputs=(...) (and example_kwargs={{...}}) "
            f"so that the model is captured with torch.export, or by following its Python on "
            f"those inputs where its forward branches on tensor values{leaf}"
        ) from exc


def _not_composable(exc: BaseException | None) -> NotComposable | None:
    """The :class:`NotComposable` an export failure was caused by, if any."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, NotComposable):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def _concrete(model: nn.Module, example_inputs: Any, example_kwargs: dict[str, Any] | None,
              leaf_modules: Iterable[LeafSpec]) -> fx.GraphModule:
    return concrete_capture(model, example_inputs, example_kwargs,
                            leaf_modules=tuple(leaf_modules))


def export_capture(model: nn.Module, example_inputs: Any = None,
                   example_kwargs: dict[str, Any] | None = None, *,
                   dynamic_shapes: Any = None, compositional: bool = False) -> fx.GraphModule:
    """Capture ``model`` with non-strict ``torch.export`` as a graph over the model's FQNs.

    Lifted parameters, buffers and constants become ``get_attr`` nodes named by the
    model's own FQNs (a tied parameter by the alias that belongs to the module using it);
    only the user-visible outputs are kept. The model's tensors are not copied or changed.
    ``dynamic_shapes`` is passed to ``torch.export.export``; symbolic sizes (``sym_size``)
    are shape queries to the analysis, not data.

    >>> import torch
    >>> from torch import nn
    >>> class Gate(nn.Module):  # data-dependent control flow: symbolic tracing fails
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc = nn.Linear(4, 4)
    ...     def forward(self, x):
    ...         return self.fc(x) if x.shape[0] > 1 else x
    >>> gm = export_capture(Gate(), (torch.randn(2, 4),))
    >>> [n.target for n in gm.graph.nodes if n.op == "get_attr"]
    ['fc.weight', 'fc.bias']

    ``compositional=True`` exports each distinct repeated block once
    (:mod:`zeta_fx.capture.blocks`) and stitches the copies in
    (:mod:`zeta_fx.capture.stitch`): the same graph, node for node, in a fraction of the
    time for a model of many equal layers. Where a block cannot be summarised soundly, or
    anything in that attempt fails, the whole model is exported as without it.
    """
    if compositional and dynamic_shapes is None:
        with _older_objects_frozen():
            return _compositional(model, example_inputs, example_kwargs)
    with leave_no_trace(model):
        return _export_capture(model, example_inputs, example_kwargs, dynamic_shapes)


@contextlib.contextmanager
def _older_objects_frozen() -> Iterator[None]:
    """While it lasts, the garbage collector leaves the objects alive before it alone
    (``gc.freeze``): with torch and a model loaded those are half a million, and each full
    collection during a capture walked them all, more often the more layers (64-layer
    Llama: 40% of the pass). Objects made meanwhile are collected as usual. Nothing is
    frozen where the program froze objects itself."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _compositional(model: nn.Module, example_inputs: Any,
                   example_kwargs: dict[str, Any] | None) -> fx.GraphModule:
    excluded: frozenset[Any] = frozenset()
    hide, tries = True, 3  # copies' parameters hidden from the export (`hiding`)
    while tries > 0:
        blocks = repeated_blocks(model, excluded)
        if not blocks:
            break
        try:
            with leave_no_trace(model), composing(blocks, model) as recorder:
                with hiding(recorder, model, hide):
                    gm = _export_capture(model, example_inputs, example_kwargs, None,
                                         lazy=True)
                if not recorder.segments:
                    return fx.GraphModule(gm, gm.graph, type(model).__name__)
                return stitch(gm, recorder, model)
        except Exception as exc:  # noqa: BLE001 - the whole-model export decides
            cause = _not_composable(exc)
            logger.info("compositional export of %s: %s", type(model).__name__, cause or exc)
            if cause is not None and cause.hidden and hide:
                hide = False  # a block whose parameters were hidden must be traced
                continue
            if cause is None or cause.structure is None:
                break
            tries -= 1
            excluded |= {cause.structure}  # again, with that block inline
    with leave_no_trace(model):
        return _export_capture(model, example_inputs, example_kwargs, None)


def _export_capture(model: nn.Module, example_inputs: Any, example_kwargs: dict[str, Any] | None,
                    dynamic_shapes: Any, lazy: bool = False) -> fx.GraphModule:
    from torch.export.graph_signature import InputKind, OutputKind

    if example_inputs is None:
        args: tuple[Any, ...] = ()
    elif isinstance(example_inputs, tuple):
        args = example_inputs
    elif isinstance(example_inputs, list):
        args = tuple(example_inputs)
    else:
        args = (example_inputs,)
    tensors = _model_tensors(model)  # the model's own, before export runs anything
    # export runs the forward on fake copies; cloned inputs keep even that off the caller's
    args, kwargs = clone_inputs((args, dict(example_kwargs or {})))
    try:
        with quiet_torch():
            program = torch.export.export(model, args, kwargs,
                                          strict=False, dynamic_shapes=dynamic_shapes)
    except Exception as exc:
        failure = (f"torch.export (non-strict) failed on {type(model).__name__}: "
                   f"{type(exc).__name__}: {first_line(exc)}")
        advice = ("check that example_inputs/example_kwargs run the model's forward as they "
                  "are, or trace the model yourself and pass the GraphModule")
        error = CaptureError(f"{failure}. What to do: {advice}")
        error.failure, error.advice = failure, advice  # type: ignore[attr-defined]
        raise error from exc
    lifted = {}
    for spec in program.graph_signature.input_specs:
        if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            lifted[spec.arg.name] = spec.target
    aliases = tied_aliases(model)
    canonical = _module_aliases(model)
    if canonical:  # a module registered under several names is named by its first
        lifted = {name: _canonical_fqn(target, canonical) for name, target in lifted.items()}
        aliases = {_canonical_fqn(name, canonical): [_canonical_fqn(a, canonical) for a in names]
                   for name, names in aliases.items()}
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    attrs: dict[str, Any] = {}
    getattrs: dict[str, fx.Node] = {}

    def attr_node(target: str) -> fx.Node:
        if target not in getattrs:  # created at first use, after the placeholders
            getattrs[target] = graph.get_attr(target)
            if target not in attrs:
                attrs[target] = tensors.get(target, program.constants.get(target))
        return getattrs[target]

    for node in program.graph_module.graph.nodes:
        if node.op == "placeholder" and node.name in lifted:
            continue
        if node.op == "output":
            user = [i for i, spec in enumerate(program.graph_signature.output_specs)
                    if spec.kind == OutputKind.USER_OUTPUT]
            outs = node.args[0]
            graph.output(tuple(_use(outs[i], env, lifted, None, aliases, attr_node)
                               if isinstance(outs[i], fx.Node) else outs[i] for i in user))
            continue
        if node.op == "get_attr":  # a subgraph of a higher-order op (cond, set_grad_enabled)
            attrs[node.target] = _fetch(program.graph_module, node.target)
        owner = _innermost_module(node)
        if canonical and owner is not None:
            owner = canonical.get(owner, owner)
        env[node] = graph.node_copy(node, lambda n: _use(n, env, lifted, owner, aliases,
                                                         attr_node))
        stack = env[node].meta.get("nn_module_stack")
        if canonical and stack:
            env[node].meta["nn_module_stack"] = {
                key: (canonical.get(path, path), kind) if isinstance(path, str) else (path, kind)
                for key, (path, kind) in stack.items()}
    # a graph only stitched from (`lazy`) never needs its code: it is generated if it is
    return (_LazyGraphModule if lazy else fx.GraphModule)(attrs, graph, type(model).__name__)


def _module_aliases(model: nn.Module) -> dict[str, str]:
    """Each later name of a module registered under several names (``nn.ModuleList([block]
    * 3)``) -> its first name, the one ``named_modules()`` and symbolic capture use: export
    names each call by the path it went through, and lifts the one parameter once per
    path."""
    first: dict[int, str] = {}
    out: dict[str, str] = {}
    for path, m in model.named_modules(remove_duplicate=False):
        seen = first.setdefault(id(m), path)
        if seen != path:
            out[path] = seen
    return out


def _canonical_fqn(fqn: str, canonical: dict[str, str]) -> str:
    owner, dot, attr = fqn.rpartition(".")
    return f"{canonical[owner]}{dot}{attr}" if owner in canonical else fqn


def _use(node: fx.Node, env: dict[fx.Node, fx.Node], lifted: dict[str, str], owner: str | None,
         aliases: dict[str, list[str]], attr_node: Callable[[str], fx.Node]) -> fx.Node:
    """The copy of ``node`` as an argument of a node run inside module ``owner``.

    A tied parameter is named by the alias that the using module holds, so that the report
    and the tie check see ``lm_head.weight`` where the head uses it.
    """
    target = lifted.get(node.name) if node.op == "placeholder" else None
    if target is None:
        return env[node]
    for alias in aliases.get(target, ()):
        if owner is not None and alias.rsplit(".", 1)[0] == owner:
            return attr_node(alias)
    return attr_node(target)


def _fetch(root: nn.Module, dotted: str) -> Any:
    obj: Any = root
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _innermost_module(node: fx.Node) -> str | None:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    return path if isinstance(path, str) else None


def _model_tensors(model: nn.Module) -> dict[str, Any]:
    tensors: dict[str, Any] = dict(model.named_buffers(remove_duplicate=False))
    tensors.update(model.named_parameters(remove_duplicate=False))
    return tensors


