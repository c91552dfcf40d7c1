"""Verification: zero, run the captured graph once, and check what the rule promised.

The rule promises, per touched site, that one graph value (the branch term entering a
residual join, the model output) is now exactly zero, and the pass promises that nothing
else in the model changed. :func:`verified_apply` checks both on example inputs with a
``torch.fx.Interpreter`` over the captured graph (eval mode, no grad, values freed as soon
as they are dead); state the forward itself changes (counters, caches) is put back after
it. If any check fails, every tensor is put back bit-exactly and
:class:`~zeta_fx.errors.VerificationError` names the node.

>>> import torch
>>> from torch import nn
>>> from zeta_fx import zero_init_pass
>>> class Block(nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)
...     def forward(self, x):
...         return x + self.fc2(torch.relu(self.fc1(x)))
>>> report = zero_init_pass(Block(), verify=True, example_inputs=(torch.randn(2, 4),))
>>> [(row["node"], row["zero_at"], row["verified"]) for row in report.touched]
[('fc2', 'fc2', True)]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

import torch
from torch import fx, nn

from zeta_fx.errors import ExampleInputsError, VerificationError
from zeta_fx.plan import ZeroInitPlan, resolve
from zeta_fx.wrappers import is_sharded

if TYPE_CHECKING:
    from zeta_fx.report import ZeroInitReport

__all__ = ["SiteCheck", "verified_apply", "graph_args", "check_runnable"]

logger = logging.getLogger("zeta_fx")


@dataclass(frozen=True)
class SiteCheck:
    """Whether the value ``value`` that zeroing at ``node`` promised to zero came out zero."""

    node: str
    value: str
    max_abs: float | None  # largest magnitude seen; None when the value was not a tensor
    ok: bool

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "value": self.value, "max_abs": self.max_abs, "ok": self.ok}


def check_runnable(model: nn.Module) -> None:
    """Refuse, before anything is written, models whose forward cannot run here.

    >>> with torch.device("meta"):
    ...     check_runnable(nn.Linear(2, 2))
    Traceback (most recent call last):
    ...
    zeta_fx.errors.ExampleInputsError: verify=True runs a forward pass, but `weight` is on the meta device ...
    """
    meta = next((n for n, p in model.named_parameters() if p.is_meta), None)
    if meta is not None:
        raise ExampleInputsError(
            f"verify=True runs a forward pass, but `{meta}` is on the meta device and holds no "
            "values. Plan on the meta device with dry_run=True and verify after "
            "materialising: `zero_init_pass(model, rule, verify=True, example_inputs=...)` on "
            "the real model; nothing was written")
    if is_sharded(model):
        raise ExampleInputsError(
            "verify=True runs the captured graph in one process, but this model's parameters "
            "are sharded DTensors. Verify on an unsharded instance (same seed) and apply the "
            "plan to the sharded model; nothing was written")


def graph_args(gm: fx.GraphModule, example_inputs: Any, example_kwargs: dict[str, Any] | None
               ) -> list[Any]:
    """Positional values for the graph's placeholders: ``example_inputs`` in order, then
    ``example_kwargs`` by name, then the forward's defaults.

    >>> class Net(nn.Module):
    ...     def forward(self, x, scale=2.0, shift=0.0):
    ...         return x * scale + shift
    >>> graph_args(fx.symbolic_trace(Net()), (1.0,), {"shift": 3.0})
    [1.0, 2.0, 3.0]
    """
    if example_inputs is None:
        inputs: list[Any] = []
    elif isinstance(example_inputs, (tuple, list)):
        inputs = list(example_inputs)
    else:
        inputs = [example_inputs]  # a single tensor
    kwargs = dict(example_kwargs or {})
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(inputs) > len(placeholders):
        raise ExampleInputsError(
            f"example_inputs has {len(inputs)} values but the captured forward takes "
            f"{len(placeholders)} ({', '.join(str(p.target) for p in placeholders)}); pass "
            "exactly the forward's arguments")
    args = list(inputs)
    for ph in placeholders[len(inputs):]:
        name = str(ph.target).lstrip("*")
        if name in kwargs:
            args.append(kwargs.pop(name))
        elif ph.args:
            args.append(ph.args[0])  # the forward's default value
        else:
            raise ExampleInputsError(
                f"no example value for the forward's argument `{name}`: pass it in "
                "example_inputs=(...) or example_kwargs={...}")
    if kwargs:
        raise ExampleInputsError(
            f"example_kwargs names {sorted(kwargs)}, which the captured forward does not take "
            f"(it takes {', '.join(str(p.target) for p in placeholders)})")
    return args


class _ZeroWatcher(fx.Interpreter):
    """Runs the graph and keeps only the largest magnitude of each watched value."""

    def __init__(self, gm: fx.GraphModule, watch: set[str]) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.watch = watch
        self.max_abs: dict[str, float | None] = {}
        self.current: fx.Node | None = None

    def run_node(self, n: fx.Node) -> Any:
        self.current = n
        out = super().run_node(n)
        if n.name in self.watch:
            self.max_abs[n.name] = _max_abs(out)
        return out


def _max_abs(value: Any) -> float | None:
    if not isinstance(value, torch.Tensor):
        return None
    if value.numel() == 0:
        return 0.0
    return float(value.detach().abs().max())  # NaN stays NaN: not zero


def _bits(t: torch.Tensor) -> torch.Tensor:
    """A view that compares bit patterns (so NaN == NaN and -0.0 != 0.0)."""
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    if t.dtype.is_floating_point and t.element_size() in ints:
        return t.detach().view(ints[t.element_size()])
    return t.detach()


class _Snapshot:
    """Copies of every parameter and buffer of ``model`` except ``skip`` (by identity)."""

    def __init__(self, model: nn.Module, skip: set[int]) -> None:
        self.saved: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name, t in _state(model):
            if id(t) not in skip and name not in self.saved:
                self.saved[name] = (t, t.detach().clone())

    def changed(self) -> list[str]:
        return [name for name, (t, copy) in self.saved.items()
                if t.shape != copy.shape or not torch.equal(_bits(t), _bits(copy))]

    def restore(self) -> None:
        with torch.no_grad():
            for t, copy in self.saved.values():
                if t.shape == copy.shape:
                    t.copy_(copy)


def _state(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from model.named_parameters(remove_duplicate=False)
    yield from ((n, b) for n, b in model.named_buffers(remove_duplicate=False) if b is not None)


def _sites(plan: ZeroInitPlan) -> list[tuple[str, str, str]]:
    """(layer node, value that must be zero, module) per touched row of the report."""
    sites = []
    for entry in plan.entries:
        for i, node in enumerate(entry.nodes):
            value = entry.zero_at[i] if i < len(entry.zero_at) and entry.zero_at[i] else node
            sites.append((node, value, entry.module))
    return sites


def verified_apply(plan: ZeroInitPlan, model: nn.Module, gm: fx.GraphModule, args: list[Any], *,
                   allow_tied: bool = False, keep: bool = True) -> "ZeroInitReport":
    """Apply ``plan`` to ``model``, run ``gm`` on ``args`` and check every touched site.

    ``gm`` is the graph the plan was made from; it shares ``model``'s parameters. With
    ``keep=False`` (a dry run) the zeroing is undone after a successful check too. On failure
    everything is restored bit-exactly and :class:`VerificationError` is raised.
    """
    check_runnable(model)
    targets = resolve(plan, model, allow_tied=allow_tied)
    saved = {name: t.detach().clone() for name, t in targets.items()}
    rest = _Snapshot(model, {id(t) for t in targets.values()})

    def undo() -> None:
        with torch.no_grad():
            for name, t in targets.items():
                t.copy_(saved[name])
        rest.restore()

    report = plan.apply(model, allow_tied=allow_tied)
    aliased = rest.changed()
    if aliased:
        undo()
        raise VerificationError(
            f"zeroing the plan also changed {', '.join(f'`{n}`' for n in aliased[:5])}, "
            "which the plan does not name: it shares storage with a zeroed parameter. Give it "
            "its own storage (`.clone()`), or leave the shared layer out; every tensor was "
            "restored bit-exactly, the model is as it was")
    sites = _sites(plan)
    watcher = _ZeroWatcher(gm, {value for _, value, _ in sites})
    modes = [(m, m.training) for m in (*model.modules(), *gm.modules())]
    try:
        for m, _ in modes:
            m.training = False  # running stats are used, not updated; dropout is off
        with torch.no_grad():
            watcher.run(*args)
    except Exception as exc:
        undo()
        where = watcher.current.name if watcher.current is not None else "?"
        raise VerificationError(
            f"the verification forward pass failed at node `{where}`: {type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}\nCheck that "
            "example_inputs fit the model's forward; the parameters were restored, nothing "
            "changed") from exc
    finally:
        for m, training in modes:
            m.training = training
    side_effects = rest.changed()
    if side_effects:  # the forward's own doing (counters, caches): leave no trace of the check
        rest.restore()
        logger.info("zeta_fx: the verification forward changed %s; restored",
                    ", ".join(side_effects[:5]))
    checks: dict[str, SiteCheck] = {}
    failed: list[tuple[SiteCheck, str]] = []
    for node, value, module in sites:
        max_abs = watcher.max_abs.get(value)
        checks[node] = check = SiteCheck(node, value, max_abs, max_abs == 0.0)
        if not check.ok:
            failed.append((check, module))
    if failed:
        undo()
        raise VerificationError(_failure_message(failed, len(targets)))
    if not keep:
        undo()
        report.applied = False
    report.verification = checks
    logger.info("zeta_fx: verified %d zeroed sites on example inputs", len(checks))
    return report


def _failure_message(failed: list[tuple[SiteCheck, str]], n: int) -> str:
    lines = []
    for check, module in failed[:5]:
        seen = ("was not computed as a tensor" if check.max_abs is None
                else f"has largest magnitude {check.max_abs:g}")
        lines.append(f"  zeroing `{module}` at node `{check.node}` should make `{check.value}` "
                     f"exactly zero, but it {seen} on the example inputs")
    if len(failed) > 5:
        lines.append(f"  ... and {len(failed) - 5} more sites")
    return ("verification failed:\n" + "\n".join(lines) + "\nAn op between the zeroed layer "
            "and that value does not map zero to zero for these inputs: if you declared one "
            "with zero_preserving=[...], remove it; otherwise mark the block a leaf "
            f"(leaf_modules=[...]) or report it. The {n} touched parameters were restored "
            "bit-exactly; the model is as it was")
