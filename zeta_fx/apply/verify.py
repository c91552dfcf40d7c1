"""Verification: check every claim of a plan by substitution, before anything is written.

Each report row is a claim. A residual row claims that, once its layer is zeroed, the graph
value of its merge node equals the value of its skip operand exactly (no NaN/Inf the skip
does not have); an output or adaLN row claims its ``zero_at`` value is exactly zero; a row
inside an opaque ``nn.TransformerEncoderLayer``/``DecoderLayer`` (or a stack of them)
claims the layer now computes its skip (its input for ``norm_first=True``, the input through
its norms for post-LN).

:func:`check_claims` runs the captured graph with a ``torch.fx.Interpreter`` while the
planned parameters are swapped for zeros and every buffer for a clone (the
``torch.func.functional_call`` idea, applied to every module object the graph reaches):
eval mode, no grad, the global RNG state forked, and the attributes a leaf's forward
assigns (``self.calls += 1``) put back (:func:`zeta_fx.snapshot.leave_no_trace`). The
caller's tensors are never written,
so their values and ``._version`` counters are unchanged and autograd graphs built before
stay valid. :func:`zeta_fx.apply.apply_plan` writes only if every claim held.

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

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch
from torch import fx, nn

from zeta_fx.semantics.composite import composite_branches, composite_skip, default_composites
from zeta_fx.errors import ExampleInputsError, VerificationError
from zeta_fx.tensors import byte_span, nonzero_flag
from zeta_fx.snapshot import clone_inputs, leave_no_trace
from zeta_fx.plan.records import Plan


__all__ = ["SiteCheck", "check_claims", "graph_args", "failure_message"]


@dataclass(frozen=True)
class SiteCheck:
    """The outcome of one row's claim: at ``node``, graph value ``value`` equals ``skip``
    (residual and composite rows) or is exactly zero (``skip == ""``).

    ``max_abs`` is the largest difference from the expected value (for a zero claim: the
    largest magnitude); NaN when a NaN/Inf appeared where none was expected; None when the
    value was not a tensor. ``kind`` is ``"residual"``, ``"zero"`` or ``"composite"``.
    """

    node: str
    value: str
    max_abs: float | None
    ok: bool
    skip: str = ""
    kind: str = "zero"

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "value": self.value, "skip": self.skip, "kind": self.kind,
                "max_abs": self.max_abs, "ok": self.ok}


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
    nested = _flat_names(kwargs)  # torch.export names `d={"k": v}` as placeholder `d_k`
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
        elif name in nested:
            top, value = nested[name]
            args.append(value)
            kwargs.pop(top, None)
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


def _flat_names(kwargs: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """``{"d_k": ("d", v)}`` for every leaf of nested dicts, lists and tuples in ``kwargs``."""
    out: dict[str, tuple[str, Any]] = {}
    stack = [(name, name, value) for name, value in kwargs.items()]
    while stack:
        top, path, value = stack.pop()
        if isinstance(value, dict):
            stack.extend((top, f"{path}_{k}", v) for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            stack.extend((top, f"{path}_{i}", v) for i, v in enumerate(value))
        elif path != top:
            out[path] = (top, value)
    return out


# -- substitution: the planned values without writing the caller's tensors ----------------

class _Substitution:
    """Swaps, inside every module of ``modules``, each planned tensor for a zeroed copy and
    every buffer for a clone, and puts the caller's own tensors back on exit.

    A target that shares memory with other parameters or buffers (``allow_tied=True``) is
    copied together with them: the whole storage is cloned once and every tensor that uses
    it becomes a view of the clone, so the substituted model sees what the write would give.
    Plain tensor attributes (what legacy reparametrisation hooks set) are put back too.
    """

    def __init__(self, modules: Iterable[nn.Module], zeros: Iterable[torch.Tensor]) -> None:
        self.modules = list({id(m): m for m in modules}.values())
        self.swap: dict[int, torch.Tensor] = {}
        clones: dict[Any, Any] = {}
        zeros = list(zeros)
        for t in zeros:
            span = byte_span(t)
            if span is None or type(t) not in (torch.Tensor, nn.Parameter):
                self.swap[id(t)] = torch.zeros_like(t.detach())
                continue
            if span[0] not in clones:
                clones[span[0]] = t.untyped_storage().clone()
            view = self._view(t, clones[span[0]])
            view.zero_()
            self.swap[id(t)] = view
        for m in self.modules:  # everything else sharing a cloned storage follows the clone
            for t in (*m._parameters.values(), *m._buffers.values()):
                if t is None or id(t) in self.swap:
                    continue
                span = byte_span(t) if type(t) in (torch.Tensor, nn.Parameter) else None
                if span is not None and span[0] in clones:
                    self.swap[id(t)] = self._view(t, clones[span[0]])
        self.zeroed = {id(self.swap[id(t)]) for t in zeros} | {id(t) for t in zeros}
        self.saved: list[tuple[dict[str, Any], str, Any]] = []

    @staticmethod
    def _view(t: torch.Tensor, storage: Any) -> torch.Tensor:
        return torch.empty(0, dtype=t.dtype, device=t.device).set_(
            storage, t.storage_offset(), t.shape, t.stride())

    def __enter__(self) -> "_Substitution":
        for m in self.modules:
            for name, t in list(m._parameters.items()):
                if t is not None and id(t) in self.swap:
                    self._set(m._parameters, name, self.swap[id(t)])
            for name, b in list(m._buffers.items()):
                if b is not None:  # a forward that updates a buffer updates a clone
                    self._set(m._buffers, name, self.swap.get(id(b), b.detach().clone()))
            for name, value in list(vars(m).items()):
                if isinstance(value, torch.Tensor):
                    self.saved.append((vars(m), name, value))
        return self

    def _set(self, table: dict[str, Any], name: str, value: torch.Tensor) -> None:
        self.saved.append((table, name, table[name]))
        table[name] = value

    def __exit__(self, *exc: Any) -> None:
        for table, name, value in reversed(self.saved):
            table[name] = value
        self.saved.clear()


@contextmanager
def _quiet_forward(modules: list[nn.Module]) -> Iterator[None]:
    """Eval mode (running stats used, dropout off), no grad, and the global RNG state
    (CPU and initialised CUDA devices) as it was; ``training`` flags restored after."""
    modes = [(m, m.training) for m in modules]
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    devices = list(range(torch.cuda.device_count())) if cuda else []
    try:
        for m, _ in modes:
            m.training = False
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            yield
    finally:
        for m, training in modes:
            m.training = training


# -- comparisons ----------------------------------------------------------------------------

def _difference(actual: Any, expected: torch.Tensor) -> tuple[bool, float | None]:
    """Whether ``actual`` equals ``expected`` broadcast to its shape (NaN where and only
    where the expected value has NaN), and the largest absolute difference."""
    if not isinstance(actual, torch.Tensor) or actual.is_nested:
        return False, None
    try:
        expected = expected.detach().to(actual.dtype).broadcast_to(actual.shape)
    except RuntimeError:
        return False, None
    actual = actual.detach()
    same = actual.eq(expected)
    if actual.is_floating_point() or actual.is_complex():
        same |= actual.isnan() & expected.isnan()
    if actual.numel() == 0 or bool(same.all()):
        return True, 0.0
    wide = torch.complex128 if actual.is_complex() else torch.float64
    gap = (actual.to(wide) - expected.to(wide)).abs().masked_fill(same, 0)
    return False, float(gap.max())  # NaN/Inf stay: a non-finite value where none belongs


def _zero_check(value: Any) -> tuple[bool, float | None]:
    if not isinstance(value, torch.Tensor) or value.is_nested:
        return False, None
    if value.numel() == 0:
        return True, 0.0
    if not bool(nonzero_flag(value.detach())):
        return True, 0.0
    wide = torch.complex128 if value.is_complex() else torch.float64
    return False, float(value.detach().to(wide).abs().max())


def _composite_tensors(module: nn.Module) -> list[torch.Tensor]:
    """The tensors that end the hidden residual branches of ``module``."""
    out = []
    for branch in composite_branches(module, default_composites()) or ():
        sub = module.get_submodule(branch.module)
        out.extend(getattr(sub, p) for p in branch.params)
    return out


# -- the claims -----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Claim:
    row: str      # the row's node (the layer node, or the composite call)
    module: str   # the module whose parameters the row zeroes
    value: str    # the node whose value is checked
    skip: str     # the node it must equal; "" for a zero claim
    kind: str


def _claims(plan: "Plan", gm: fx.GraphModule) -> list[_Claim]:
    """The claim of every site of every zeroed entry (other actions claim nothing)."""
    nodes = {n.name: n for n in gm.graph.nodes}
    claims = []
    for entry in plan.entries:
        if entry.action.kind != "zero":
            continue
        for site in entry.sites:
            if site.merge:
                claims.append(_Claim(site.node, entry.module, site.merge, site.skip,
                                     "residual"))
                continue
            n = nodes.get(site.node)
            if site.kind == "composite" and n is not None and n.op == "call_module":
                first = n.args[0] if n.args else next(iter(n.kwargs.values()), None)
                source = first.name if isinstance(first, fx.Node) else ""
                claims.append(_Claim(site.node, entry.module, site.node, source, "composite"))
                continue
            claims.append(_Claim(site.node, entry.module, site.zero_at or site.node, "",
                                 "zero"))
    return claims


class _ClaimChecker(fx.Interpreter):
    """Runs the graph once and checks each claim as soon as its values exist."""

    def __init__(self, gm: fx.GraphModule, claims: list[_Claim], zeros: set[int]) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.by_value: dict[str, list[_Claim]] = {}
        for c in claims:
            self.by_value.setdefault(c.value, []).append(c)
        self.pending: dict[str, int] = {}  # skip -> merges still to check against it
        for c in claims:
            if c.kind == "residual":
                self.pending[c.skip] = self.pending.get(c.skip, 0) + 1
        self.kept: dict[str, Any] = {}  # skip values, held until their merges have run
        self.zeros = zeros
        self.results: dict[_Claim, tuple[bool, float | None]] = {}
        self.current: fx.Node | None = None

    def run_node(self, n: fx.Node) -> Any:
        self.current = n
        claims = self.by_value.get(n.name, ())
        # Skips are kept as copies made when they were produced: a write through any alias
        # between the skip and its merge (``x.T.mul_(2)``, ``x += f(x)``) cannot hide.
        before = {c.skip: self.kept.get(c.skip) for c in claims if c.kind == "residual"}
        if any(c.kind == "composite" for c in claims):
            args, kwargs = self.fetch_args_kwargs_from_env(n)
        out = super().run_node(n)
        if n.name in self.pending:
            self.kept[n.name] = _copy(out)
        for c in claims:
            if c.kind == "residual":
                skip = before.get(c.skip)
                self.results[c] = (_difference(out, skip) if isinstance(skip, torch.Tensor)
                                   else (False, None))
                self.pending[c.skip] -= 1
                if not self.pending[c.skip]:
                    self.kept.pop(c.skip, None)
            elif c.kind == "zero":
                self.results[c] = _zero_check(out)
            else:
                self.results[c] = self._composite(n, out, args, kwargs)
        return out

    def _composite(self, n: fx.Node, out: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
                   ) -> tuple[bool, float | None]:
        module = self.fetch_attr(n.target)
        expected = composite_skip(module, args, kwargs)
        if expected is None:
            return False, None
        rest = [t for t in _composite_tensors(module) if id(t) not in self.zeros]
        if rest:  # only some branches are planned: check each with all of them zeroed
            with _Substitution(module.modules(), rest):
                out = module(*args, **kwargs)
        return _difference(out, expected)


def _copy(value: Any) -> Any:
    return value.clone() if isinstance(value, torch.Tensor) else value


def check_claims(plan: "Plan", model: nn.Module, gm: fx.GraphModule, args: list[Any],
                 targets: dict[str, torch.Tensor]) -> dict[str, SiteCheck]:
    """Check every row's claim on ``args`` with ``targets`` substituted by zeros; write
    nothing. Returns a :class:`SiteCheck` per row node (a node with several claims: the
    first that failed, else the first).

    ``gm`` is the graph the plan was made from (it shares ``model``'s modules and tensors);
    ``targets`` are the model's own tensors that the plan zeroes (resolved by
    :func:`~zeta_fx.apply.resolve`).
    Raises :class:`VerificationError` if the forward pass itself fails.
    """
    claims = _claims(plan, gm)
    modules = [*model.modules(), *gm.modules()]
    substitution = _Substitution(modules, targets.values())
    checker = _ClaimChecker(gm, claims, substitution.zeroed)
    try:
        # a leaf's forward runs for real here: whatever Python state it assigns
        # (`self.calls += 1`) is put back with the modules' attributes
        with leave_no_trace(model), leave_no_trace(gm), _quiet_forward(modules), substitution:
            checker.run(*clone_inputs(list(args)))
    except Exception as exc:
        where = checker.current.name if checker.current is not None else "?"
        raise VerificationError(
            f"the verification forward pass failed at node `{where}`: {type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}\nCheck that "
            "example_inputs fit the model's forward; nothing was written, the model is as it "
            "was") from exc
    checks: dict[str, SiteCheck] = {}
    for c in claims:
        ok, gap = checker.results.get(c, (False, None))
        check = SiteCheck(c.row, c.value, gap, ok, c.skip, c.kind)
        if c.row not in checks or (checks[c.row].ok and not ok):
            checks[c.row] = check
    return checks


def failure_message(failed: list[SiteCheck], plan: "Plan") -> str:
    """The :class:`~zeta_fx.errors.VerificationError` message for the claims that failed."""
    modules: dict[str, list[str]] = {}
    for entry in plan.entries:
        for node in entry.nodes:
            modules.setdefault(node, []).append(entry.module)
    lines = []
    for check in failed[:5]:
        module = "`, `".join(modules.get(check.node, ["?"]))
        gap = ("was not computed as a tensor of a fitting shape" if check.max_abs is None
               else f"largest difference {check.max_abs:g}")
        if check.kind == "residual":
            lines.append(f"  zeroing `{module}` (node `{check.node}`) should make merge "
                         f"`{check.value}` equal its skip `{check.skip}` exactly, but it does "
                         f"not: {gap}")
        elif check.kind == "composite":
            lines.append(f"  zeroing `{module}` should make the opaque layer `{check.node}` "
                         f"compute its skip (its input, through its norms if post-LN), but it "
                         f"does not: {gap}")
        else:
            lines.append(f"  zeroing `{module}` (node `{check.node}`) should make "
                         f"`{check.value}` exactly zero, but it is not: {gap}")
    if len(failed) > 5:
        lines.append(f"  ... and {len(failed) - 5} more")
    return ("verification failed on the example inputs:\n" + "\n".join(lines) + "\nAn op "
            "between the zeroed layer and the merge does not map zero to zero for these inputs "
            "(or a NaN/Inf reached the branch): if you declared one with zero_preserving=[...], "
            "remove it; otherwise mark the block a leaf (leaf_modules=[...]) or report it. "
            "Nothing was written; the model is as it was")
