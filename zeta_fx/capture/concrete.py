"""Concrete capture: follow the forward's value-dependent Python on the example inputs.

Symbolic tracing cannot branch on a tensor's value (``if x.abs().mean() > eps:``, a loop
``range(int(n.sum().item()))``, a NaN check that raises) and neither can ``torch.export``,
whose fake tensors hold no values. Here the model is traced symbolically with every
submodule whose ``forward`` fails made a leaf; the model is run once on the example inputs
to record each such leaf's own inputs; and each leaf call is traced on those real tensors
with ``make_fx`` (pre-dispatch, so ops read like ``torch.export``'s), which runs the Python
and records the tensor ops of the branch the values take. The traced call is inlined in
place of the leaf, its parameters as ``get_attr`` nodes on the model's own FQNs. When the
model's own ``forward`` fails, the whole model is traced that way.

The graph is the branch the example inputs take: another input may take another branch.

>>> import torch
>>> from torch import nn
>>> class Gate(nn.Module):  # branches on a value: symbolic tracing and export both fail
...     def __init__(self):
...         super().__init__()
...         self.fc = nn.Linear(4, 4)
...     def forward(self, x):
...         return x + self.fc(x) if x.abs().mean() > 0 else x
>>> gm = concrete_capture(nn.Sequential(Gate()), (torch.ones(2, 4),))
>>> [str(n.target) for n in gm.graph.nodes if n.op != "output"]
['input', '0.fc.weight', '0.fc.bias', 'aten.linear.default', 'aten.add.Tensor']
"""

from __future__ import annotations

import inspect
import operator
from typing import Any, Iterator

import torch
from torch import fx, nn

from zeta_fx.capture.tracer import LeafSpec, ZetaTracer, first_line, quiet_torch, tied_aliases
from zeta_fx.snapshot import clone_inputs, leave_no_trace
from zeta_fx.errors import CaptureError

__all__ = ["concrete_capture"]


def concrete_capture(model: nn.Module, example_inputs: Any = None,
                     example_kwargs: dict[str, Any] | None = None, *,
                     leaf_modules: tuple[LeafSpec, ...] | list[LeafSpec] = ()) -> fx.GraphModule:
    """Capture ``model`` following its Python on ``example_inputs`` (see the module doc).

    The graph module shares the model's parameters and buffers. The model is run on clones
    of the example inputs, with clones of its buffers and the global random state forked
    (:func:`~zeta_fx.snapshot.leave_no_trace`): its buffers (BatchNorm running statistics:
    objects, values, version counters), attributes, the inputs and the random state are as
    they were before. Raises ``CaptureError`` (with ``.failure``,
    one line on what failed, and ``.advice``) when the forward cannot be run or traced.
    """
    args, kwargs = clone_inputs((_as_tuple(example_inputs), dict(example_kwargs or {})))
    on_meta = next((name for name, t in [*model.named_parameters(), *model.named_buffers()]
                    if t.is_meta), None)
    if on_meta is not None or any(t.is_meta for t in _tensors((args, kwargs))):
        where = f"`{on_meta}`" if on_meta else "an example input"
        raise _error(f"following the forward's Python needs real values, and {where} is on "
                     "the meta device", "plan on a materialised instance of the same "
                     "architecture (zero_init_pass(..., dry_run=True).plan) and apply the plan to this one "
                     "(plan.apply(model))")
    tracer = ZetaTracer(leaf_modules, split=True)
    # the graph module gets the model's own buffers, not the clones the run updates
    own = dict(model.named_buffers(remove_duplicate=False))
    with leave_no_trace(model, clone_buffers=True):
        try:
            graph: fx.Graph | None = tracer.trace(model)
        except Exception:  # the model's own forward: it is followed whole
            graph = None
        # the root's tensor constants (`_tensor_constant0`) live on the tracer's root until
        # leave_no_trace takes them off the model: fetch every attribute the graph reads now
        graph, inliner = _follow(model, graph, tracer, args, kwargs)
        attrs: dict[str, Any] = dict(inliner.constants)
        for node in graph.nodes:
            if node.op in ("get_attr", "call_module") and node.target not in attrs:
                attrs[node.target] = own[node.target] if node.target in own else \
                    _fetch(model, node.target)
    graph.lint()
    return fx.GraphModule(attrs, graph, type(model).__name__)


def _follow(model: nn.Module, graph: fx.Graph | None, tracer: ZetaTracer, args: tuple[Any, ...],
            kwargs: dict[str, Any]) -> tuple[fx.Graph, "_Inliner"]:
    """Replace each split leaf of ``graph`` (or, for ``None``, the whole model) by the ops its
    Python runs on the example inputs."""
    if graph is None:
        graph = fx.Graph()
        inputs = _signature_placeholders(graph, model, args, kwargs)
        inliner = _Inliner(graph, model)
        graph.output(inliner.inline(model, "", inputs, args, kwargs))
    else:
        calls = _record_calls(model, list(tracer.split_paths), args, kwargs)
        inliner = _Inliner(graph, model)
        for node in list(graph.nodes):
            if node.op != "call_module" or node.target not in tracer.split_paths:
                continue
            if not calls[node.target]:
                raise _error(f"`{node.target}` is called more often in the traced graph "
                             "than when the model ran", "trace the model yourself and "
                             "pass the GraphModule")
            call_args, call_kwargs = calls[node.target].pop(0)
            with graph.inserting_before(node):
                out = inliner.inline(model.get_submodule(node.target), node.target,
                                     (node.args, node.kwargs), call_args, call_kwargs)
            _replace_uses(node, out)
            graph.erase_node(node)
    return graph, inliner


class _Inliner:
    """Traces one module call on real tensors and copies its ops into ``graph``."""

    def __init__(self, graph: fx.Graph, model: nn.Module) -> None:
        self.graph = graph
        self.aliases = tied_aliases(model)
        self.getattrs: dict[str, fx.Node] = {}
        self.constants: dict[str, Any] = {}

    def inline(self, module: nn.Module, prefix: str, values: Any, args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> Any:
        sub, names = _trace_call(module, prefix, args, kwargs)
        tensors = _graph_values(values, (args, kwargs), self.graph)
        env: dict[fx.Node, Any] = {}
        placeholders = [n for n in sub.graph.nodes if n.op == "placeholder"]
        for i, ph in enumerate(placeholders):
            env[ph] = names[i] if i < len(names) else tensors[i - len(names)]
        for node in sub.graph.nodes:
            if node.op == "placeholder":
                continue
            if node.op == "output":
                return fx.node.map_arg(node.args[0], lambda n: self._value(env[n], None))
            if node.op == "get_attr":  # a tensor made inside the forward
                name = f"_concrete_constant{len(self.constants)}"
                self.constants[name] = _fetch(sub, node.target)
                env[node] = self.graph.get_attr(name)
                continue
            owner = _owner(node, prefix)
            env[node] = self.graph.node_copy(node, lambda n: self._value(env[n], owner))
            stack = node.meta.get("nn_module_stack")
            if stack:
                env[node].meta["nn_module_stack"] = {
                    key: (_join(prefix, path), cls) for key, (path, cls) in stack.items()}
        raise AssertionError("a traced graph always has an output")

    def _value(self, value: Any, owner: str | None) -> Any:
        if not isinstance(value, str):
            return value
        target = value  # a parameter or buffer FQN: tied ones named by the using module
        for alias in self.aliases.get(value, ()):
            if owner is not None and alias.rsplit(".", 1)[0] == owner:
                target = alias
        if target not in self.getattrs:
            self.getattrs[target] = self.graph.get_attr(target)
        return self.getattrs[target]


def _trace_call(module: nn.Module, prefix: str, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> tuple[fx.GraphModule, list[str]]:
    """``make_fx`` of one call of ``module`` on real tensors; its parameters, then buffers,
    then the tensors of ``(args, kwargs)`` are the placeholders; names are model FQNs."""
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.func import functional_call

    params = dict(module.named_parameters())  # tied aliases follow (functional_call ties)
    # the trace runs the forward: BatchNorm statistics are updated on copies, not the model's
    buffers = {name: b.clone() for name, b in module.named_buffers()}
    real = list(_tensors((args, kwargs)))
    n_state = len(params) + len(buffers)
    state_names = list(params) + list(buffers)

    def run(*flat: torch.Tensor) -> Any:
        state = dict(zip(state_names, flat[:n_state]))
        call_args, call_kwargs = _with_tensors((args, kwargs), iter(flat[n_state:]))
        return functional_call(module, state, call_args, call_kwargs)

    run._orig_mod = module  # type: ignore[attr-defined]  # make_fx records module paths
    where = f"`{prefix}` ({type(module).__name__})" if prefix else \
        f"the model's own forward ({type(module).__name__})"
    try:
        with quiet_torch():
            sub = make_fx(run, tracing_mode="real", pre_dispatch=True, record_module_stack=True,
                          _error_on_data_dependent_ops=False)(
                *params.values(), *buffers.values(), *real)
    except Exception as exc:
        raise _error(f"following the Python of {where} on the example inputs failed: "
                     f"{type(exc).__name__}: {first_line(exc)}",
                     _leaf_advice(module, prefix)) from exc
    # the values that steered the Python (`.item()`, `bool(t)`) are dead in the graph; left
    # in, they would count as extra uses of a branch's values
    sub.graph.eliminate_dead_code()
    return sub, [_join(prefix, name) for name in state_names]


def _record_calls(model: nn.Module, paths: list[str], args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> dict[str, list[tuple[Any, Any]]]:
    """Run the model once and keep the inputs of each outermost call of each path."""
    calls: dict[str, list[tuple[Any, Any]]] = {p: [] for p in paths}
    depth = [0]
    handles = []

    def hooks(path: str):
        def pre(module: nn.Module, a: tuple[Any, ...], k: dict[str, Any]) -> None:
            if depth[0] == 0:
                calls[path].append(_with_tensors((a, k), (t.detach().clone()
                                                           for t in _tensors((a, k)))))
            depth[0] += 1

        def post(module: nn.Module, a: Any, k: Any, out: Any) -> None:
            depth[0] -= 1
        return pre, post

    try:
        for path in paths:
            pre, post = hooks(path)
            module = model.get_submodule(path)
            handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(module.register_forward_hook(post, with_kwargs=True,
                                                        always_call=True))
        with torch.no_grad():
            model(*args, **kwargs)
    except Exception as exc:
        raise _error(f"running the model on the example inputs raised {type(exc).__name__}: "
                     f"{first_line(exc)}", "check that example_inputs/example_kwargs are what "
                     "the forward takes (run model(*example_inputs, **example_kwargs) once)"
                     ) from exc
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _signature_placeholders(graph: fx.Graph, model: nn.Module, args: tuple[Any, ...],
                            kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """Placeholders named by the forward's parameters, for the values given."""
    try:
        bound = inspect.signature(model.forward).bind(*args, **kwargs)
    except TypeError as exc:
        raise _error(f"example inputs do not fit {type(model).__name__}.forward: {exc}",
                     "pass exactly the forward's arguments") from exc
    values: list[Any] = []
    named: dict[str, Any] = {}
    params = inspect.signature(model.forward).parameters
    for name, value in bound.arguments.items():
        kind = params[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            values += [graph.placeholder(f"{name}_{i}") for i in range(len(value))]
        elif kind is inspect.Parameter.VAR_KEYWORD:
            named.update({k: graph.placeholder(k) for k in value})
        elif name in kwargs:
            named[name] = graph.placeholder(name)
        else:
            values.append(graph.placeholder(name))
    return tuple(values), named


def _graph_values(values: Any, real: Any, graph: fx.Graph) -> list[Any]:
    """The graph value of each tensor of ``real``, in ``_tensors`` order; ``values`` is the
    same structure with graph nodes where ``real`` has tensors (a node may stand for a
    whole tuple: its items are taken with ``getitem``)."""
    out: list[Any] = []

    def walk(value: Any, item: Any) -> None:
        if isinstance(item, torch.Tensor):
            out.append(value)
        elif isinstance(item, (tuple, list, dict)):
            keys = list(item.keys()) if isinstance(item, dict) else range(len(item))
            for key in keys:
                if isinstance(value, fx.Node):
                    walk(graph.call_function(operator.getitem, (value, key)), item[key])
                else:
                    walk(value[key], item[key])
    walk(values, real)
    return out


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _with_tensors(value: Any, tensors: Iterator[Any]) -> Any:
    """``value`` with its tensors (in ``_tensors`` order) replaced by ``tensors``."""
    if isinstance(value, torch.Tensor):
        return next(tensors)
    if isinstance(value, (tuple, list)):
        items = [_with_tensors(item, tensors) for item in value]
        if hasattr(value, "_fields"):  # a namedtuple
            return type(value)(*items)
        return type(value)(items)
    if isinstance(value, dict):
        new = dict(value) if type(value) is dict else value.copy()
        for key in value:
            new[key] = _with_tensors(value[key], tensors)
        return new
    return value


def _replace_uses(node: fx.Node, out: Any) -> None:
    """Give ``node``'s users ``out`` (a node or a structure of them) instead of ``node``."""
    for user in list(node.users):
        if (user.op == "call_function" and user.target is operator.getitem
                and user.args[0] is node and not isinstance(out, fx.Node)):
            _replace_uses(user, out[user.args[1]])
            user.graph.erase_node(user)
        elif isinstance(out, fx.Node):
            user.replace_input_with(node, out)
        else:
            user.args = fx.node.map_arg(user.args, lambda n: out if n is node else n)
            user.kwargs = fx.node.map_arg(user.kwargs, lambda n: out if n is node else n)


def _owner(node: fx.Node, prefix: str) -> str | None:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return prefix or None
    path = list(stack.values())[-1][0]
    return _join(prefix, path) if isinstance(path, str) else None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _fetch(root: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        root = getattr(root, part)
    return root


def _as_tuple(example_inputs: Any) -> tuple[Any, ...]:
    if example_inputs is None:
        return ()
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    return (example_inputs,)


def _leaf_advice(module: nn.Module, prefix: str) -> str:
    if not prefix:
        return "trace the model yourself and pass the GraphModule"
    return (f"mark it as a leaf (leaf_modules=[{type(module).__name__}] or [{prefix!r}]) if its "
            "parameters are not the ones to zero, or trace the model yourself and pass the "
            "GraphModule")


def _error(failure: str, advice: str) -> CaptureError:
    error = CaptureError(f"{failure}. What to do: {advice}")
    error.failure, error.advice = failure, advice  # type: ignore[attr-defined]
    return error
