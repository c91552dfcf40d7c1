"""The user-facing verb, ``zero_init_pass``, and the same as an FX pass, ``ZeroInitPass``.

>>> import torch
>>> from torch import nn
>>> from zeta_fx import zero_init_pass
>>> class Block(nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
...         self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
...     def forward(self, x):
...         return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))
>>> block = Block()
>>> report = zero_init_pass(block, rule="residual_branch_last")
>>> report.modules
['bn2']
>>> x = torch.randn(2, 8, 4, 4)
>>> torch.equal(block.eval()(x), torch.relu(x))
True
"""

from __future__ import annotations

import dataclasses
import hashlib
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import fx, nn
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from zeta_fx.analysis import GraphView, Storages, settle
from zeta_fx.apply import apply_plan, graph_args, resolve
from zeta_fx.capture import LeafSpec, capture_model, writable
from zeta_fx.errors import ExampleInputsError, NotAModuleError, ZetaFxError
from zeta_fx.inits import Init, Zero, as_init
from zeta_fx.pause import gc_paused
from zeta_fx.plan import Plan, build_plan, check_seed
from zeta_fx.report import ZeroInitReport
from zeta_fx.rules import Rule, Selection, get_rule, rule_scopes
from zeta_fx.semantics.declarations import ZeroOps
from zeta_fx.semantics.dtypes import node_dtype
from zeta_fx.tensors import any_nonzero

__all__ = ["zero_init_pass", "init_pass", "ZeroInitPass", "ZeroInitPlan", "Traced",
           "trace_and_select"]


class ZeroInitPlan(Plan):
    """What would be written, by FQN (:class:`~zeta_fx.plan.Plan`, plain data that
    serialises to JSON), and the verb that writes it on any instance of the model.

    >>> from torch import nn
    >>> from zeta_fx import zero_init_pass
    >>> def make():
    ...     return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> plan = zero_init_pass(make(), rule="output_layer", dry_run=True).plan
    >>> again = ZeroInitPlan.from_json(plan.to_json())
    >>> again == plan
    True
    >>> other = make()
    >>> again.apply(other).params
    ['2.weight', '2.bias']
    >>> bool(other[2].weight.any())
    False
    """

    @classmethod
    def of(cls, plan: Plan) -> "ZeroInitPlan":
        """``plan``'s records under this class (what the planner made, with ``apply``)."""
        return plan if isinstance(plan, cls) else cls(**{f.name: getattr(plan, f.name)
                                                          for f in dataclasses.fields(plan)})

    def apply(self, model: nn.Module, *, allow_tied: bool = False,
              init: Callable[..., Any] | None = None) -> ZeroInitReport:
        """Write every planned parameter of ``model`` in place and return the report.

        All targets are resolved and validated first; if any is missing, has another shape,
        or cannot be written in place, an error lists every problem and nothing is written.
        ``init`` is the callable a plan made with ``init=callable`` names (a loaded plan
        does not hold the function itself). ``model`` may be wrapped (DDP, ``torch.compile``)
        or sharded with FSDP2.
        """
        if not isinstance(model, nn.Module):
            raise NotAModuleError(f"a plan applies to an nn.Module, got {type(model).__name__}")
        return ZeroInitReport(self, apply_plan(self, writable(model), allow_tied=allow_tied,
                                               init=init))


@dataclass(frozen=True)
class Traced:
    """The model (wrappers removed), its graph, the view over it, the rule, and the rule's
    settled selection: every claim in it proved with all its targets zero."""

    model: nn.Module
    gm: fx.GraphModule
    view: GraphView
    rule: Rule
    selection: Selection
    # the keyword arguments the model was captured with, and what the report says of them
    example_kwargs: dict[str, Any] | None = None
    notes: tuple[str, ...] = field(default=())


@gc_paused()
def trace_and_select(model: nn.Module, rule: Rule | str, *, verb: str = "zero_init_pass",
                     example_inputs: tuple[Any, ...] | None = None,
                     example_kwargs: dict[str, Any] | None = None,
                     leaf_modules: Iterable[LeafSpec] = (),
                     zero_preserving: Iterable[Any] = (),
                     capture: str = "auto", use_cache_off: bool = True,
                     runs: bool = False, compositional: bool = True) -> Traced:
    """Capture ``model`` (:func:`~zeta_fx.capture.capture_model`: every refusal of a bad
    input happens there, before tracing), analyse it, and return ``rule``'s settled
    selection. ``init_pass`` plans and applies what comes out; ``gate_residuals`` gates the
    same joins.

    >>> from torch import nn
    >>> traced = trace_and_select(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)), "output_layer")
    >>> [t.module for t in traced.selection.targets], traced.rule.name
    (['1'], 'output_layer')
    """
    rule_obj = get_rule(rule)
    captured = capture_model(model, verb=verb, example_inputs=example_inputs,
                             example_kwargs=example_kwargs, leaf_modules=leaf_modules,
                             within=[(f"within= of rule {name}", scope)
                                     for name, scope in rule_scopes(rule_obj)],
                             method=capture, use_cache_off=use_cache_off, runs=runs,
                             compositional=compositional)
    ops = ZeroOps.default().declare(zero_preserving) if zero_preserving else None
    view = GraphView(captured.gm, captured.model, ops)
    return Traced(captured.model, captured.gm, view, rule_obj,
                  settle(view, rule_obj.select(view)), captured.example_kwargs, captured.notes)


@gc_paused()
def init_pass(model: nn.Module, rule: Rule | str = "residual_branch_last", *,
              init: "str | Init | Callable[..., Any]" = "zero",
              seed: int | None = None,
              dry_run: bool = False,
              example_inputs: tuple[Any, ...] | None = None,
              example_kwargs: dict[str, Any] | None = None,
              leaf_modules: Iterable[LeafSpec] = (),
              zero_preserving: Iterable[Any] = (),
              allow_tied: bool = False,
              verify: bool = False,
              capture: str = "auto",
              compositional: bool = True) -> ZeroInitReport:
    """Initialise the layers ``rule`` finds in ``model`` with ``init``, and report.

    ``init`` is ``"zero"`` (what :func:`zero_init_pass` does), an initialiser from
    :mod:`zeta_fx.inits` (``scaled_normal(std=0.02)``, ``fixup()``) or a callable
    ``fn(tensor, site)`` that writes ``tensor`` in place. ``seed`` (an integer in
    ``[0, 2**64)``) fixes the draws of a random initialiser; the plan records it. Without
    it, the seed is drawn from a fork of torch's global CPU generator
    (``torch.random.fork_rng``), so ``torch.manual_seed`` makes it reproducible, and a dry
    run (or a call that fails) leaves the global generator exactly as it was: the plan of
    ``dry_run=True`` is the one a writing call would make from the same state. A call that
    writes then advances the global generator by that one draw, as torch's own initialisers
    consume randomness, so two models initialised one after the other get different seeds.
    Every other option is :func:`zero_init_pass`'s.

    >>> import torch
    >>> from torch import nn
    >>> from zeta_fx import inits
    >>> model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    >>> report = init_pass(model, rule="output_layer", init=inits.scaled_normal(0.5), seed=0)
    >>> report.params, report.touched[0]["action"]
    (['1.weight'], 'N(0, 0.5)')
    """
    if verify and example_inputs is None and example_kwargs is None:
        raise ExampleInputsError(
            "verify=True runs a forward pass and needs example_inputs=(...) (and/or "
            "example_kwargs={...}) that the model's forward accepts; nothing was written")
    initialiser = as_init(init)
    check_seed(seed)
    seed = None if seed is None else int(seed)  # a NumPy integer too: the plan is JSON
    verb = "zero_init_pass" if isinstance(initialiser, Zero) else "init_pass"
    traced = trace_and_select(model, rule, verb=verb, example_inputs=example_inputs,
                              example_kwargs=example_kwargs, leaf_modules=leaf_modules,
                              zero_preserving=zero_preserving, capture=capture, runs=verify,
                              compositional=compositional)
    drawn = seed is None and not isinstance(initialiser, Zero)
    if drawn:
        with torch.random.fork_rng(devices=[]):
            seed = _draw_seed()
    plan = build_plan(traced.view, traced.selection, traced.rule.name, initialiser, seed)
    gm = traced.gm
    checking = (gm, graph_args(gm, example_inputs, traced.example_kwargs)) if verify else None
    outcome = apply_plan(plan, traced.model, write=not dry_run, allow_tied=allow_tied,
                         init=getattr(initialiser, "fn", None), named=traced.view.params,
                         buffers=traced.view.buffers, verify=checking)
    if drawn and outcome.applied:
        _draw_seed()  # the write consumed the draw: the next call gets another seed
    return ZeroInitReport(ZeroInitPlan.of(plan), outcome, view=traced.view, notes=traced.notes)


def _draw_seed() -> int:
    """A plan seed from torch's global CPU generator (an explicit device: the caller may be
    inside ``with torch.device("meta")``)."""
    return int(torch.randint(0, 2**62, (), device="cpu").item())


def zero_init_pass(model: nn.Module, rule: Rule | str = "residual_branch_last", *,
                   dry_run: bool = False,
                   example_inputs: tuple[Any, ...] | None = None,
                   example_kwargs: dict[str, Any] | None = None,
                   leaf_modules: Iterable[LeafSpec] = (),
                   zero_preserving: Iterable[Any] = (),
                   allow_tied: bool = False,
                   verify: bool = False,
                   capture: str = "auto",
                   compositional: bool = True) -> ZeroInitReport:
    """Zero the layers ``rule`` finds in ``model`` and report what was touched and skipped.

    ``model`` is an ``nn.Module`` (traced with ``torch.fx.symbolic_trace``) or a
    ``GraphModule`` from any tracer; the zeroed parameters are the caller's own, written in
    place. ``rule`` is a registered name (``zeta_fx.rules.list_rules()``) or a rule object.
    ``dry_run=True`` validates and reports without writing; its ``report.plan`` is the plan
    (plain data, JSON) to apply later, to this model or another instance of it.
    ``leaf_modules`` keeps modules opaque to tracing; ``zero_preserving`` declares more
    ops that map zero to zero; ``allow_tied`` lets a rule zero a parameter tied to one it
    did not select.

    ``verify=True`` (needs ``example_inputs``/``example_kwargs``) checks every claim on a
    forward pass before anything is written: with the planned parameters substituted by
    zeros, each claimed merge equals its skip exactly and each other claimed value is
    exactly zero; the report's rows say ``verified``. On failure nothing is written and
    ``VerificationError`` names the node.

    ``example_inputs``/``example_kwargs`` let a model that symbolic tracing cannot follow be
    captured with ``torch.export`` (non-strict) or concretely; ``capture="export"`` or
    ``"concrete"`` forces one. A model captured with ``torch.export`` is captured
    compositionally: each distinct repeated block (80 equal decoder layers are one) is
    exported once and its copies stitched in, renamed to their own FQNs, so the graph (and
    the report) is the one a whole-model export gives; ``compositional=False`` exports the
    whole model.

    ``model`` may be on the meta device (plan with ``dry_run=True``, apply the plan after
    materialising), or wrapped in DDP / ``torch.compile`` (FQNs are reported as the inner
    model names them). Sharded models (FSDP2) cannot be traced: apply a plan to them.
    This is :func:`init_pass` with ``init="zero"``.
    """
    return init_pass(model, rule, init="zero", dry_run=dry_run, example_inputs=example_inputs,
                     example_kwargs=example_kwargs, leaf_modules=leaf_modules,
                     zero_preserving=zero_preserving, allow_tied=allow_tied, verify=verify,
                     capture=capture, compositional=compositional)

class ZeroInitPass(PassBase):
    """``zero_init_pass`` as a ``torch.fx.passes.infra`` pass.

    ``modified`` is true exactly when a parameter value changed, decided exactly before the
    write (a weight of 1e-30, a subnormal or a NaN counts as non-zero). Inside a ``PassManager`` with
    ``steps > 1`` the pass does its work once: a later call on the same, unchanged graph
    module whose planned parameters are still zero returns ``modified=False`` without tracing
    or analysing again (``analyses`` counts the runs that did). "Unchanged" covers everything
    the analysis reads: the graph's nodes, their targets and constant arguments (a literal
    ``0.5`` rewritten to ``inf`` counts), the modules that ``call_module`` nodes call (the
    objects, their settings, hooks and buffers' values) and what ``get_attr`` nodes read
    (parameters by identity, buffers and constants by value). If another pass changed any of
    it, or the parameters were re-initialised, the pass runs again.

    ``report`` is the report of the last run that changed values (the one that did the
    work); runs that found nothing to change do not replace it (until one has changed
    values, it is the latest run's). ``last_report`` is the latest run's in every case.

    >>> import torch
    >>> from torch import fx, nn
    >>> gm = fx.symbolic_trace(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1)))
    >>> p = ZeroInitPass(rule="output_layer")
    >>> p(gm).modified, p(gm).modified, p.analyses, p.report.params
    (True, False, 1, ['1.weight', '1.bias'])
    """

    def __init__(self, rule: Rule | str = "residual_branch_last", **options: Any) -> None:
        super().__init__()
        self.rule = get_rule(rule)
        self.options = options
        self.report: ZeroInitReport | None = None
        self.last_report: ZeroInitReport | None = None
        self.analyses = 0
        # the graph module last analysed (weakly: an id can be reused) and, as it was after
        # that run, everything the analysis read
        self._seen: weakref.ref[fx.GraphModule] | None = None
        self._key: tuple[Any, ...] | None = None

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        seen = self._seen() if self._seen is not None else None
        if seen is graph_module and self.last_report is not None and \
                _analysis_key(graph_module) == self._key and self._still_zero(graph_module):
            return PassResult(graph_module, False)
        report = zero_init_pass(graph_module, self.rule, **self.options)
        self.analyses += 1
        self._seen = weakref.ref(graph_module)
        self._key = _analysis_key(graph_module)  # after the write: what the next call sees
        self.last_report = report
        modified = report.changed and report.applied
        if modified or self.report is None or not self.report.changed:
            self.report = report
        return PassResult(graph_module, modified)

    def _still_zero(self, graph_module: fx.GraphModule) -> bool:
        """Whether applying the last plan again would change nothing (or a dry run)."""
        if not self.last_report.applied:
            return True
        try:
            tensors = resolve(self.last_report.plan, graph_module)
        except ZetaFxError:
            return False
        return not any_nonzero(list(tensors.values()))


def _analysis_key(gm: fx.GraphModule) -> tuple[Any, ...]:
    """Everything the analysis of ``gm`` reads, as a value that compares equal only when all
    of it is the same: per node its op, target and arguments (nodes by name, constants by
    value), the module a ``call_module`` calls and the value a ``get_attr`` reads."""
    key: list[Any] = []
    modules: dict[int, Any] = {}
    for node in gm.graph.nodes:
        # (the dtype a capture recorded: constants are combined in it)
        key.append((node.op, _target_key(node.target), _arg_key(node.args),
                    _arg_key(node.kwargs), str(node_dtype(node))))
        if node.op == "call_module":
            module = gm.get_submodule(node.target)
            if id(module) not in modules:
                modules[id(module)] = _module_key(module)
            key.append(modules[id(module)])
        elif node.op == "get_attr":
            try:
                key.append(_value_key(_fetch(gm, node.target)))
            except AttributeError:
                key.append(("missing", node.target))
    # plain tensor attributes: one that shares a parameter's storage keeps it from zeroing
    key.extend((path, name, Storages.tensor_root(value))
               for path, module in gm.named_modules() for name, value in vars(module).items()
               if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter))
    return tuple(key)


def _fetch(root: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        root = getattr(root, part)
    return root


def _target_key(target: Any) -> Any:
    if isinstance(target, str):
        return target
    return (getattr(target, "__module__", None), getattr(target, "__qualname__", str(target)),
            id(target))


def _arg_key(value: Any) -> Any:
    """Arguments as comparable values: ``-0.0`` and ``0.0`` differ, a NaN equals a NaN."""
    if isinstance(value, fx.Node):
        return ("node", value.name)
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(_arg_key(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((str(k), _arg_key(v)) for k, v in value.items()))
    if isinstance(value, slice):
        return ("slice", _arg_key(value.start), _arg_key(value.stop), _arg_key(value.step))
    if isinstance(value, torch.Tensor):
        return _value_key(value)
    if isinstance(value, float):
        return ("float", repr(value))
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return (type(value).__qualname__, repr(value))


def _value_key(value: Any) -> Any:
    """A parameter by identity (the analysis takes parameters as finite, never reads them);
    any other tensor by its bytes; anything else as an argument."""
    if not isinstance(value, torch.Tensor):
        return _arg_key(value)
    head = (id(value) if isinstance(value, nn.Parameter) else None, str(value.dtype),
            tuple(value.shape))
    if isinstance(value, nn.Parameter) or value.is_meta or \
            type(value) not in (torch.Tensor, nn.Parameter):
        return head + (value._version if not isinstance(value, nn.Parameter) else None,)
    data = value.detach().reshape(-1).contiguous().cpu()
    return head + (hashlib.blake2b(data.view(torch.uint8).numpy().tobytes(),
                                   digest_size=16).digest(),)


def _module_key(module: nn.Module) -> Any:
    """A called module: the object, its class, its plain settings (``eps``, ``p``,
    ``training``), its hooks, and what its tensors hold (buffers by value)."""
    settings = tuple(sorted((name, _arg_key(v)) for name, v in vars(module).items()
                            if v is None or isinstance(v, (bool, int, float, str, tuple))))
    hooks = tuple((name, tuple((k, id(h)) for k, h in value.items()))
                  for name, value in vars(module).items()
                  if name.endswith("hooks") and isinstance(value, dict))
    tensors = tuple((name, _value_key(t)) for name, t in
                    [*module.named_parameters(), *module.named_buffers()])
    forward = id(vars(module).get("forward"))  # a forward replaced on the instance
    return ("module", id(module), type(module).__qualname__, settings, hooks, tensors, forward)
