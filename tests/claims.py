"""An independent oracle for what ``zero_init_pass`` claims: it judges by running the model.

A report row of ``residual_branch_last`` is a claim: after the pass, the residual merge
equals its skip value exactly, for every input, with no NaN/Inf; nothing the report does not
list changed by a single bit; the skip is never zeroed. This module checks those claims
without asking the code under test how it reasoned: of zeta_fx it uses only the verb
(``zero_init_pass``) and the capture (the graph the pass saw), never the analysis, facts,
joins, proof or rules (``tests/test_layout.py`` checks its imports). It looks at tensors
before and after, at what the model computes on random inputs, and at the values of the
captured graph's nodes that each report row names in its ``site``.

- :func:`snapshot` / :func:`assert_only_zeroed` / :func:`assert_unchanged` /
  :func:`assert_state_matches_report`: every parameter and buffer not in ``report.params`` is
  bit-identical, every one in it is exactly zero; :func:`versions`: the in-place version
  counters, which move even when a write leaves the same bits.
- :func:`block_mismatches` / :func:`assert_blocks_equal_skip`: given ``(block, skip)``
  claims, run the model on random inputs (several seeds, eval and train mode) and compare
  each call of ``block`` with ``skip`` applied to the block's own inputs (cloned before the
  block runs, so an in-place op inside the block cannot hide a difference), with
  ``torch.equal``, and finite; the skip computed with the original weights must be the same
  (the skip was not zeroed).
- :func:`assert_each_zeroed_needed`: restoring any one zeroed module's original values makes
  some claimed block differ from its skip, in the model or run on its own on random inputs
  (no extra layer was zeroed; an inner block's own last layer is needed for the inner block
  even when zeroing the outer branch already starves it of input).
- :func:`graph_claim_mismatches` / :func:`assert_graph_claims`: for the report's own rows,
  run the captured graph and check each row's ``merge`` node equals its ``skip`` node, both
  values as they were when produced, finite, and that the row's zeroed node does not feed
  its skip.
- :func:`judge`: all of the above for one model and report.
- :func:`check_pass`: run the pass and check, in one call, the exact set it zeroed (by
  parameter or by module), the state, and (given example inputs) the graph claims.
- :func:`params_of` / :class:`OutputRecorder` / :func:`owning_blocks`: small helpers the
  family tests share (expected parameter FQNs, hooks that see a module output zero, the
  block that owns each zeroed parameter).

This is the one helper module of the tests: the oracle and the state checks live together
because the oracle is built on the state checks.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import fx, nn

from zeta_fx import zero_init_pass
from zeta_fx.capture import capture

Claim = tuple[nn.Module, Callable[..., Any]]
MakeInputs = Callable[[int], tuple]

SEEDS = (0, 1, 2)
MODES = ("eval", "train")


# -- state: what changed ---------------------------------------------------------------------

def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, by FQN (tied tensors under each name), cloned."""
    out = {n: t.detach().clone() for n, t in model.named_parameters(remove_duplicate=False)}
    out.update({n: t.detach().clone() for n, t in model.named_buffers(remove_duplicate=False)
                if t is not None})
    return out


def versions(model: nn.Module) -> dict[str, int]:
    """Every parameter's and buffer's in-place version counter, by FQN: a write of the same
    value still moves it."""
    out = {n: t._version for n, t in model.named_parameters(remove_duplicate=False)}
    out.update({n: t._version for n, t in model.named_buffers(remove_duplicate=False)})
    return out


def _live(model: nn.Module) -> dict[str, torch.Tensor]:
    out = dict(model.named_parameters(remove_duplicate=False))
    out.update({n: t for n, t in model.named_buffers(remove_duplicate=False) if t is not None})
    return out


def assert_only_zeroed(model: nn.Module, before: dict[str, torch.Tensor], params: Iterable[str]) -> None:
    """``params`` are exactly zero now; every other parameter and buffer is bit-identical.

    A tensor registered under two names (tied) counts as zeroed when either name is listed.
    """
    params = set(params)
    live = _live(model)
    assert set(live) == set(before), "parameters or buffers were added or removed"
    unknown = params - set(live)
    assert not unknown, f"the report lists parameters the model does not have: {sorted(unknown)}"
    zeroed_ids = {id(live[n]) for n in params}
    for name, value in live.items():
        if id(value) in zeroed_ids:
            assert not value.detach().any(), f"{name} is reported zeroed but is not zero"
            assert value.dtype == before[name].dtype, f"{name} changed dtype"
            assert value.shape == before[name].shape, f"{name} changed shape"
        else:
            assert torch.equal(value.detach(), before[name]), f"{name} changed but is not reported"


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    """Every parameter and buffer is bit-identical to ``before`` (a :func:`snapshot`)."""
    assert_only_zeroed(model, before, set())


def assert_state_matches_report(model: nn.Module, before: dict[str, torch.Tensor], report) -> None:
    """Exactly ``report.params`` became zero; ``report.modules`` hold them (a parametrized
    module may be named for its ``parametrizations.*`` originals), each holding some."""
    assert_only_zeroed(model, before, report.params)
    modules = set(report.modules)

    def holder(p: str) -> str | None:
        owner = _owner(p)
        while True:
            if owner in modules:
                return owner
            if not owner or ".parametrizations." not in owner + ".":
                return None
            owner = owner.rsplit(".parametrizations", 1)[0]

    unheld = [p for p in report.params if holder(p) is None]
    assert not unheld, f"report.params {unheld} are held by none of report.modules {sorted(modules)}"
    idle = modules - {holder(p) for p in report.params}
    assert not idle, f"report.modules {sorted(idle)} hold none of report.params"


def _owner(fqn: str) -> str:
    return fqn.rsplit(".", 1)[0] if "." in fqn else ""


@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    """Run something that may move buffers (train-mode BN) and put every tensor and mode back."""
    saved = snapshot(model)
    modes = {m: m.training for m in model.modules()}
    try:
        yield
    finally:
        live = _live(model)
        with torch.no_grad():
            for name, value in saved.items():
                live[name].copy_(value)
        for m, mode in modes.items():
            m.training = mode


@contextlib.contextmanager
def state_swapped(model: nn.Module, values: dict[str, torch.Tensor]) -> Iterator[None]:
    """Temporarily copy ``values`` (by FQN) into the model's tensors."""
    live = _live(model)
    saved = {n: live[n].detach().clone() for n in values}
    try:
        with torch.no_grad():
            for n, v in values.items():
                live[n].copy_(v)
        yield
    finally:
        with torch.no_grad():
            for n, v in saved.items():
                live[n].copy_(v)


# -- running blocks: does each claimed block equal its skip? ----------------------------------

def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(v) for v in value)
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    return value


def _finite(value: Any) -> bool:
    return all(torch.isfinite(t).all() for t in _tensors(value) if t.is_floating_point())


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def differ(a: Any, b: Any) -> str | None:
    """Why ``a`` is not exactly ``b`` (None when equal and finite)."""
    ta, tb = _tensors(a), _tensors(b)
    if len(ta) != len(tb) or not ta:
        return f"output structure differs ({len(ta)} vs {len(tb)} tensors)"
    for x, y in zip(ta, tb):
        if x.is_floating_point() and not torch.isfinite(x).all():
            return "output is not finite (NaN/Inf)"
        if y.is_floating_point() and not torch.isfinite(y).all():
            return "skip value is not finite (NaN/Inf)"
        if x.shape != y.shape:
            return f"shape {tuple(x.shape)} vs skip {tuple(y.shape)}"
        if not torch.equal(x, y):
            diff = (x.double() - y.double()).abs().max().item()
            return f"differs from the skip by up to {diff:.3g}"
    return None


def _name_of(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name or "(root)"
    return type(module).__name__


def _run_recording(model: nn.Module, claims: Sequence[Claim], args: tuple, seed: int
                   ) -> list[tuple[int, tuple, dict, Any, Any]]:
    """Run ``model(*args)``; per call of a claimed block: (claim index, its inputs as they
    were before it ran, kwargs, its output, the skip of those inputs)."""
    calls: list[tuple[int, tuple, dict, Any, Any]] = []
    pending: dict[int, list[tuple[tuple, dict]]] = {}
    handles = []
    for i, (block, skip) in enumerate(claims):
        def pre(mod, a, kw, i=i):
            pending.setdefault(i, []).append((_clone(a), _clone(kw)))

        def post(mod, a, kw, out, i=i, skip=skip):
            a0, kw0 = pending[i].pop()
            with torch.no_grad():
                ref = skip(*_clone(a0), **_clone(kw0))
            calls.append((i, a0, kw0, _clone(out), _clone(ref)))

        handles.append(block.register_forward_pre_hook(pre, with_kwargs=True, prepend=True))
        handles.append(block.register_forward_hook(post, with_kwargs=True))
    try:
        torch.manual_seed(seed)
        with torch.no_grad():
            model(*args)
    finally:
        for h in handles:
            h.remove()
    return calls


def _randomised(value: Any, gen: torch.Generator) -> Any:
    """``value`` with every floating tensor replaced by a random one of the same shape."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point():
            return torch.randn(value.shape, generator=gen, dtype=value.dtype)
        return value.clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_randomised(v, gen) for v in value)
    if isinstance(value, dict):
        return {k: _randomised(v, gen) for k, v in value.items()}
    return value


def _claim_problems(model: nn.Module, claims: Sequence[Claim], make_inputs: MakeInputs, *,
                    seeds: Iterable[int] = SEEDS, modes: Iterable[str] = MODES,
                    before: dict[str, torch.Tensor] | None = None,
                    standalone: bool = False) -> dict[int, list[str]]:
    """Claim index -> what is wrong with ``block(inputs) == skip(inputs)`` (absent when it holds).

    With ``standalone``, each claimed block is also run on its own, on random inputs shaped
    like the ones it gets in the model (a claim is about every input of the block, not only
    those the rest of the model happens to feed it)."""
    problems: dict[int, list[str]] = {}
    called = set()

    def bad(i: int, why: str) -> None:
        problems.setdefault(i, []).append(f"{_name_of(model, claims[i][0])} {why}")

    with preserved(model):
        for mode in modes:
            model.train(mode == "train")
            for seed in seeds:
                args = make_inputs(seed)
                calls = _run_recording(model, claims, args, seed)
                for i, a, kw, out, ref in calls:
                    called.add(i)
                    # a block input that is not finite is the model's own value (an earlier,
                    # unclaimed `x / |x|` of a zero row): outside every claim there (a
                    # claimed earlier block that caused it fails its own check); the block
                    # is still judged on its own, on random finite inputs of that shape
                    why = differ(out, ref) if _finite((a, kw)) else None
                    if why:
                        bad(i, f"({mode}, seed {seed}): {why}")
                    if standalone and not why:
                        gen = torch.Generator().manual_seed(1000 + seed)
                        a1, kw1 = _randomised(a, gen), _randomised(kw, gen)
                        with torch.no_grad():
                            torch.manual_seed(seed)
                            out1 = claims[i][0](*_clone(a1), **_clone(kw1))
                            torch.manual_seed(seed)
                            ref1 = claims[i][1](*_clone(a1), **_clone(kw1))
                        why = differ(out1, ref1)
                        if why:
                            bad(i, f"on its own ({mode}, seed {seed}): {why}")
                if before is not None and mode == "eval":
                    with state_swapped(model, before), torch.no_grad():
                        for i, a, kw, out, ref in calls:
                            if not _finite((a, kw)):
                                continue  # (outside every claim, as above)
                            orig = claims[i][1](*_clone(a), **_clone(kw))
                            if differ(ref, orig):
                                bad(i, "- the skip value changed with the pass (the skip was zeroed)")
    for i in range(len(claims)):
        if i not in called:
            bad(i, "was never called")
    return problems


def block_mismatches(model: nn.Module, claims: Sequence[Claim], make_inputs: MakeInputs, *,
                     seeds: Iterable[int] = SEEDS, modes: Iterable[str] = MODES,
                     before: dict[str, torch.Tensor] | None = None) -> list[str]:
    """What is wrong with the claims ``block(inputs) == skip(inputs)``; empty when they hold.

    Every claimed block must be called at least once. With ``before`` (a snapshot taken
    before the pass), the skip evaluated with the original tensors must give the same value
    as now: the pass did not zero (or change) the skip.
    """
    problems = _claim_problems(model, claims, make_inputs, seeds=seeds, modes=modes, before=before)
    return [p for i in sorted(problems) for p in problems[i]]


def holding_claims(model: nn.Module, claims: Sequence[Claim], make_inputs: MakeInputs,
                   **options: Any) -> list[Claim]:
    """The claims that hold now (each block equals its skip on every input tried)."""
    problems = _claim_problems(model, claims, make_inputs, **options)
    return [c for i, c in enumerate(claims) if i not in problems]


def assert_blocks_equal_skip(model: nn.Module, claims: Sequence[Claim], make_inputs: MakeInputs,
                             **options: Any) -> None:
    problems = block_mismatches(model, claims, make_inputs, **options)
    assert not problems, "claimed blocks are not their skip:\n  " + "\n  ".join(problems[:20])


def assert_each_zeroed_needed(model: nn.Module, before: dict[str, torch.Tensor], report,
                              claims: Sequence[Claim], make_inputs: MakeInputs, *,
                              seeds: Iterable[int] = SEEDS[:2], limit: int | None = None) -> None:
    """Restoring the original values of any one zeroed module (its reported parameters)
    makes some claimed block differ from its skip (the first ``limit`` modules only, for
    very large models)."""
    groups: dict[str, list[str]] = {}
    for p in report.params:
        groups.setdefault(_owner(p), []).append(p)
    for owner, params in list(groups.items())[:limit]:
        if all(not before[p].any() for p in params):
            continue  # was zero already: restoring it cannot show anything
        with state_swapped(model, {p: before[p] for p in params}):
            problems = _claim_problems(model, claims, make_inputs, seeds=seeds, modes=("eval",),
                                       standalone=True)
        if not problems:
            # The original values can be masked on these inputs (a relu after a norm whose
            # outputs all happen to be negative): try values of another sign and scale too.
            gen = torch.Generator().manual_seed(1)
            other = {p: (torch.randn(before[p].shape, generator=gen) * 3 + 1).to(before[p].dtype)
                     for p in params}
            with state_swapped(model, other):
                problems = _claim_problems(model, claims, make_inputs, seeds=seeds,
                                           modes=("eval",), standalone=True)
        assert problems, (f"`{owner or '(root)'}` was zeroed but is not needed: with its "
                          f"original values (or random ones) every claimed block still equals "
                          f"its skip, in the model and on its own")


# -- running the captured graph: does each row's merge equal its skip? ------------------------

class Recorder(fx.Interpreter):
    """Records the values of ``wanted`` nodes (every node's, by default) as produced, cloned
    before any in-place op; with ``perturb``, adds 1 to that node's (floating) output
    first."""

    def __init__(self, gm: fx.GraphModule, wanted: set[str] | None = None,
                 perturb: str | None = None) -> None:
        super().__init__(gm)
        self.wanted = wanted
        self.perturb = perturb
        self.values: dict[str, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n.name == self.perturb and isinstance(out, torch.Tensor) and out.is_floating_point():
            out = out + 1
        if self.wanted is None or n.name in self.wanted:
            self.values[n.name] = _clone(out)
        return out


def _graph_values(gm: fx.GraphModule, args: tuple, wanted: set[str], seed: int,
                  perturb: str | None = None) -> dict[str, Any]:
    rec = Recorder(gm, wanted, perturb)
    # a forward may update state even in eval mode (QAT observers): each run starts from
    # the same buffers, so two runs differ only by the perturbation
    saved = [(b, b.detach().clone()) for b in gm.buffers()]
    torch.manual_seed(seed)
    try:
        with torch.no_grad():
            rec.run(*args)
    finally:
        with torch.no_grad():
            for b, copy in saved:
                b.copy_(copy)
    return rec.values


def residual_rows(report) -> list[dict]:
    """The report's rows that claim a residual merge now equals its skip (by the row's
    structured ``site``, never by its prose)."""
    return [r for r in report.touched if r["site"]["kind"] == "residual"]


def _merge_and_skip(row: dict) -> tuple[str, str]:
    return row["site"]["merge"], row["site"]["skip"]


def graph_claim_mismatches(model: nn.Module, gm: fx.GraphModule, report, make_inputs: MakeInputs,
                           *, before: dict[str, torch.Tensor] | None = None,
                           seeds: Sequence[int] = SEEDS, modes: Iterable[str] = MODES,
                           perturb_rows: int | None = None) -> list[str]:
    """For each residual row: its ``merge`` node equals its ``skip`` node (values as produced),
    finite; and the zeroed site does not feed the skip: adding 1 to the row's own node leaves
    the skip value bit-identical. (``before`` is accepted for symmetry and unused: a skip
    may rightly change with the pass, when an earlier block feeds it.)"""
    rows = residual_rows(report)
    problems = [f"row `{r['node']}` names no merge/skip" for r in rows
                if not all(_merge_and_skip(r))]
    rows = [r for r in rows if all(_merge_and_skip(r))]
    if not rows:
        return problems
    names = {n.name for n in gm.graph.nodes}
    for r in rows:
        for key, node in zip(("merge", "skip"), _merge_and_skip(r)):
            if node not in names:
                problems.append(f"row `{r['node']}`: {key} `{node}` is not a node of the graph")
    rows = [r for r in rows if set(_merge_and_skip(r)) <= names]
    wanted = {node for r in rows for node in _merge_and_skip(r)}
    with preserved(model):
        for mode in modes:
            gm.train(mode == "train")
            model.train(mode == "train")
            for seed in seeds:
                args = make_inputs(seed)
                values = _graph_values(gm, args, wanted, seed)
                # a skip that is not finite is the model's own value (an unclaimed `x / |x|`
                # of a zero row before it): outside every claim, as in _claim_problems
                judged = [r for r in rows if _finite(values[_merge_and_skip(r)[1]])]
                for r in judged:
                    merge, skip = _merge_and_skip(r)
                    why = differ(values[merge], values[skip])
                    if why:
                        problems.append(f"merge `{merge}` vs skip `{skip}` "
                                        f"({mode}, seed {seed}): {why}")
                if mode == "eval" and seed == seeds[0]:
                    for r in judged[:perturb_rows]:
                        merge, skip = _merge_and_skip(r)
                        if r["node"] not in names:
                            problems.append(f"row node `{r['node']}` is not a node of the graph")
                            continue
                        # fresh inputs: a graph that writes its input must not see the
                        # first run's write
                        moved = _graph_values(gm, make_inputs(seed), {skip}, seed,
                                              perturb=r["node"])
                        if differ(values[skip], moved[skip]):
                            problems.append(f"zeroed node `{r['node']}` feeds the skip "
                                            f"`{skip}` of `{merge}` (the skip was zeroed)")
    return sorted(set(problems))


def assert_graph_claims(model: nn.Module, report, make_inputs: MakeInputs, *,
                        gm: fx.GraphModule | None = None,
                        before: dict[str, torch.Tensor] | None = None,
                        capture_options: dict[str, Any] | None = None, **options: Any) -> None:
    """:func:`graph_claim_mismatches` on the graph the pass saw (captured again with the same
    options when ``gm`` is not given; capture is not the analysis under test)."""
    if not residual_rows(report):
        return
    if gm is None:
        gm = capture(model, **(capture_options or {}))
    problems = graph_claim_mismatches(model, gm, report, make_inputs, before=before, **options)
    assert not problems, "report rows whose merge is not their skip:\n  " + "\n  ".join(problems[:20])


# -- everything at once ------------------------------------------------------------------------

def judge(model: nn.Module, before: dict[str, torch.Tensor], report, claims: Sequence[Claim],
          make_inputs: MakeInputs, *, modes: Iterable[str] = MODES, seeds: Sequence[int] = SEEDS,
          needed: bool | int = True, graph: bool = True, perturb_rows: int | None = None,
          capture_options: dict[str, Any] | None = None) -> None:
    """The report is honest about ``model``: state matches it, every claimed block equals its
    skip (which was not zeroed), each zeroed module is needed, each row's merge is its skip.

    ``needed``/``perturb_rows`` as numbers check only that many modules/rows (huge models)."""
    assert_state_matches_report(model, before, report)
    assert_blocks_equal_skip(model, claims, make_inputs, modes=modes, seeds=seeds, before=before)
    if needed:
        limit = None if needed is True else int(needed)
        assert_each_zeroed_needed(model, before, report, claims, make_inputs, limit=limit,
                                  seeds=seeds[:2])
    if graph:
        assert_graph_claims(model, report, make_inputs, before=before, seeds=seeds,
                            capture_options=capture_options, modes=modes,
                            perturb_rows=perturb_rows)


def fixed_inputs(inputs: tuple) -> MakeInputs:
    """Random inputs shaped like ``inputs`` (float tensors redrawn per seed, others kept)."""
    def make(seed: int) -> tuple:
        gen = torch.Generator().manual_seed(seed)
        out = []
        for t in inputs:
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                out.append(torch.randn(t.shape, generator=gen, dtype=t.dtype))
            else:
                out.append(t)
        return tuple(out)
    return make


def params_of(*modules: str, names: Iterable[str] = ("weight", "bias")) -> set[str]:
    """The parameter FQNs ``module.name`` for each module and name."""
    return {f"{m}.{n}" for m in modules for n in names}


def check_pass(model: nn.Module, rule: Any = "residual_branch_last", *,
               params: set[str] | None = None, modules: set[str] | None = None,
               inputs: tuple | None = None, **options: Any):
    """Run the pass (``options`` go to ``zero_init_pass``) and check what it did.

    - exactly ``params`` (parameter FQNs, each listed once) and/or ``modules`` were zeroed;
    - those are exactly zero now, every other parameter and buffer kept its bits;
    - with ``inputs`` (example tensors): the model is put in eval mode before the pass, every
      residual row's merge equals its skip on the captured graph (random inputs shaped like
      ``inputs``, eval and train mode), and the model still runs on ``inputs``.
    """
    if inputs is not None:
        model.eval()
    before = snapshot(model)
    report = zero_init_pass(model, rule=rule, **options)
    if params is not None:
        assert set(report.params) == params, sorted(set(report.params) ^ params)
        assert len(report.params) == len(params), report.params
    if modules is not None:
        assert set(report.modules) == modules, report.table()
    assert_only_zeroed(model, before, set(report.params))
    if inputs is not None:
        capture_options = {k: options[k] for k in ("leaf_modules", "example_inputs",
                                                   "example_kwargs") if k in options}
        if "capture" in options:
            capture_options["method"] = options["capture"]
        assert_graph_claims(model, report, fixed_inputs(inputs), before=before,
                            capture_options=capture_options)
        with torch.no_grad():
            model(*inputs)
    return report


class OutputRecorder:
    """Forward hooks that keep each named module's (first) output, to see it is zero."""

    def __init__(self, model: nn.Module, names: Iterable[str]) -> None:
        self.outputs: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        self.handles = [model.get_submodule(n).register_forward_hook(self._hook(n))
                        for n in self.outputs]

    def _hook(self, name: str):
        def hook(module, args, output):
            value = output[0] if isinstance(output, tuple) else output
            self.outputs[name].append(value.detach().clone())
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()

    def assert_all_zero(self) -> None:
        for name, values in self.outputs.items():
            assert values, f"{name} did not run"
            for value in values:
                assert value.abs().max().item() == 0.0, f"{name} output is not zero"


def owning_blocks(model: nn.Module, params: Iterable[str],
                  is_block: Callable[[nn.Module], bool]) -> dict[str, nn.Module]:
    """The deepest module for which ``is_block`` is true that holds each parameter."""
    modules = dict(model.named_modules())
    owners: dict[str, nn.Module] = {}
    for fqn in params:
        parts = fqn.split(".")[:-1]
        for i in range(len(parts), -1, -1):
            name = ".".join(parts[:i])
            if is_block(modules[name]):
                owners[name] = modules[name]
                break
        else:
            raise AssertionError(f"{fqn}: no residual block holds it")
    return owners
