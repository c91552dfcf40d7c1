"""Leave no trace: every public verb, on every path that does not write by design (dry runs,
capture, verification, gate planning, every error path), leaves the model, its example
inputs and torch's random state exactly as they were (``zeta_fx.snapshot.Snapshot``); a
call that writes changes the values of the parameters its plan names, and nothing else.

The property test walks every verb x capture mode x mode over models that assign buffers in
their forward, use dropout and BatchNorm in train mode, and write their input in place.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import pytest
import torch
from torch import fx, nn

from zeta_fx import ZeroInitPass, ZeroInitPlan, gate_residuals, init_pass, inits, zero_init_pass
from zeta_fx.capture import capture
from zeta_fx.errors import (CaptureError, GateError, ModuleStateWriteError, PlanError,
                            ZetaFxError)
from zeta_fx.plan import Action
from zeta_fx.snapshot import Snapshot
from zeta_fx.snapshot import leave_no_trace


class BatchNormDropout(nn.Module):
    """BatchNorm and dropout on the branch: a train-mode forward updates running statistics
    and draws from the global generator."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.bn = nn.Linear(4, 4), nn.BatchNorm1d(4)
        self.drop, self.fc2 = nn.Dropout(0.5), nn.Linear(4, 4)

    def forward(self, x):
        return x + self.fc2(self.drop(torch.relu(self.bn(self.fc1(x)))))


class BufferUpdates(nn.Module):
    """Assigns its buffers in forward: a step counter and an exponential moving average."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("ema", torch.zeros(4))

    def forward(self, x):
        self.steps += 1
        self.ema = self.ema * 0.9 + x.mean(0) * 0.1
        return x + self.fc2(torch.relu(self.fc1(x)))


class WritesInput(nn.Module):
    """Writes its input in place before the residual block."""

    def __init__(self) -> None:
        super().__init__()
        self.pre, self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        x.mul_(2.0)
        y = self.pre(x)
        return y + self.fc2(torch.relu(self.fc1(y)))


MODELS: dict[str, Callable[[], nn.Module]] = {
    "bn_dropout": BatchNormDropout, "buffer_updates": BufferUpdates, "writes_input": WritesInput}
CAPTURES = ("symbolic", "export", "concrete")
VERB_MODES = {
    "zero_init_pass": ("dry_train", "dry_eval", "verify", "write", "error"),
    "init_pass": ("dry_train", "dry_eval", "verify", "write", "error"),
    "gate_residuals": ("dry_train", "dry_eval", "per_channel", "error"),
    "plan_apply": ("write", "write_eval", "error"),
    "ZeroInitPass": ("dry_train", "dry_eval", "verify", "write", "error"),
}
CASES = [(verb, mode, cap, name) for verb, modes in VERB_MODES.items() for mode in modes
         for cap in CAPTURES for name in MODELS]


def _good() -> tuple[torch.Tensor]:
    return (torch.randn(3, 4),)


def _bad() -> tuple[torch.Tensor]:
    """Inputs the forwards reject part-way (after a buffer update or an in-place write)."""
    return (torch.randn(3, 5),)


def _tampered(plan: ZeroInitPlan) -> ZeroInitPlan:
    """The plan with a second entry after the valid first one whose action no writer could
    carry out (a negative standard deviation): validated whole, nothing may be written."""
    first = plan.entries[0]
    bad = dataclasses.replace(first, action=Action("normal", std=-1.0))
    return dataclasses.replace(plan, entries=(first, bad), seed=0)


def _run(verb: str, mode: str, cap: str, model: nn.Module, inputs: tuple) -> list[str]:
    """Run one case; returns the parameter FQNs it was asked to write."""
    kwargs: dict[str, Any] = {"capture": cap, "example_inputs": inputs}
    if verb in ("zero_init_pass", "init_pass"):
        if verb == "init_pass":
            kwargs["init"] = inits.scaled_normal(0.02)  # no seed=: one is drawn
        fn = zero_init_pass if verb == "zero_init_pass" else init_pass
        report = fn(model, dry_run=mode != "write", verify=mode in ("verify", "write", "error"),
                    **kwargs)
        assert report.params == ["fc2.weight", "fc2.bias"][:1 if verb == "init_pass" else 2]
        return report.params if report.applied else []
    if verb == "gate_residuals":
        init = 1e39 if mode == "error" else 0.0
        gate_residuals(model, init=init, per_channel=mode == "per_channel", **kwargs, graph=True)
        return []
    if verb == "plan_apply":
        plan = zero_init_pass(model, dry_run=True, **kwargs).plan
        plan = ZeroInitPlan.from_json(plan.to_json())
        if mode == "error":
            plan = _tampered(plan)
        return plan.apply(model).params
    gm = capture(model, method=cap, example_inputs=inputs)
    options: dict[str, Any] = {"dry_run": mode != "write"}
    if mode in ("verify", "write", "error"):
        options.update(verify=True, example_inputs=inputs)
    zero_init = ZeroInitPass(**options)
    result = zero_init(gm)
    assert result.modified == (mode == "write")
    return zero_init.last_report.params if result.modified else []


def _expected_error(verb: str, mode: str, cap: str, name: str) -> type[Exception] | None:
    if name == "buffer_updates" and cap == "symbolic":
        return ModuleStateWriteError  # refused before anything happens, in every mode
    if mode == "error":
        return {"gate_residuals": GateError, "plan_apply": PlanError}.get(verb, ZetaFxError)
    return None


@pytest.mark.parametrize("verb, mode, cap, name", CASES,
                         ids=[f"{v}-{m}-{c}-{n}" for v, m, c, n in CASES])
def test_every_verb_leaves_no_trace(one_thread, verb: str, mode: str, cap: str, name: str):
    torch.manual_seed(0)
    model = MODELS[name]()
    inputs = _bad() if mode == "error" and verb not in ("gate_residuals", "plan_apply") \
        else _good()
    model.train(mode not in ("dry_eval", "write_eval"))
    before = Snapshot.of(model, inputs)
    expected = _expected_error(verb, mode, cap, name)
    written: list[str] = []
    if expected is None:
        written = _run(verb, mode, cap, model, inputs)
    else:
        with pytest.raises(expected):
            _run(verb, mode, cap, model, inputs)
    # a writing init_pass without seed= consumes one draw of the global generator, by design
    consumed = ["torch: the CPU random generator's state changed"] \
        if (verb, mode) == ("init_pass", "write") and expected is None else []
    assert before.changes(allow=written) == consumed
    if mode.startswith("write") and expected is None:
        # the writes happened, and exactly the planned parameters hold the new values
        assert written and all(not model.get_parameter(p).detach().any() or verb == "init_pass"
                               for p in written)


# -- the snapshot itself: each part of the contract is seen when it changes ------------------

def _toggle_training(m: nn.Module, x: torch.Tensor) -> None:
    m.bn.training = not m.bn.training


SPOILERS: dict[str, Callable[[nn.Module, torch.Tensor], Any]] = {
    "a buffer's value": lambda m, x: m.bn.running_mean.add_(1.0),
    "a buffer's _version only (same value written)": lambda m, x: m.bn.running_mean.copy_(
        m.bn.running_mean.clone()),
    "a parameter replaced by an equal one": lambda m, x: setattr(
        m.fc1, "weight", nn.Parameter(m.fc1.weight.detach().clone())),
    "an attribute assigned": lambda m, x: setattr(m, "cache", 1),
    "a buffer reassigned": lambda m, x: setattr(m.bn, "running_var", m.bn.running_var * 1),
    "training flipped": _toggle_training,
    "an item appended to a list attribute": lambda m, x: m.history.append(1),
    "an entry put in a dict attribute": lambda m, x: m.cache.update(k=1),
    "a hook left behind": lambda m, x: m.fc2.register_forward_hook(lambda *a: None),
    "requires_grad switched off": lambda m, x: m.fc2.weight.requires_grad_(False),
    "the global generator advanced": lambda m, x: torch.rand(1),
    "the example input written": lambda m, x: x.mul_(1.0),
    "grad mode left off": lambda m, x: torch.set_grad_enabled(False),
    "a gradient attached": lambda m, x: setattr(m.fc1.weight, "grad",
                                                torch.zeros_like(m.fc1.weight)),
}


@pytest.mark.parametrize("spoil", list(SPOILERS), ids=list(SPOILERS))
def test_the_snapshot_sees_every_part_of_the_contract(spoil: str):
    model, x = BatchNormDropout(), torch.randn(3, 4)
    model.history, model.cache = [], {}
    before = Snapshot.of(model, (x,))
    assert before.changes() == []
    try:
        SPOILERS[spoil](model, x)
        assert before.changes() != []
    finally:
        torch.set_grad_enabled(True)


def test_the_snapshot_sees_a_rewritten_graph():
    gm = fx.symbolic_trace(BatchNormDropout())
    before = Snapshot.of(gm)
    node = next(n for n in gm.graph.nodes if n.op == "call_function")
    node.target = torch.sigmoid  # not even recompiled
    assert any("graph changed" in line for line in before.changes())


def test_allowed_parameters_may_change_and_nothing_else():
    model = BatchNormDropout()
    before = Snapshot.of(model)
    with torch.no_grad():
        model.fc2.weight.zero_()
    version = model.fc2.weight._version
    assert before.changes(allow=["fc2.weight"]) == []
    assert before.changes() == ["`fc2.weight`: values changed",
                                f"`fc2.weight`: _version {version - 1} -> {version}"]


# -- symbolic tracing of a forward that assigns module state --------------------------------

def test_symbolic_tracing_of_a_state_assignment_is_refused_and_the_model_still_runs():
    model = BufferUpdates()
    before = Snapshot.of(model)
    with pytest.raises(ModuleStateWriteError) as info:
        zero_init_pass(model, dry_run=True)
    message = str(info.value)
    assert "`steps`" in message and 'capture="export"' in message and "example_inputs" in message
    assert info.value.attribute == "steps" and info.value.module == ""
    assert isinstance(info.value, CaptureError)
    assert before.changes() == []
    assert type(model._buffers["steps"]) is torch.Tensor  # no Proxy left behind
    model(torch.randn(2, 4))  # and the model runs: the next forward is not broken
    assert int(model.steps) == 1


def test_a_state_assignment_in_a_submodule_names_it():
    model = nn.Sequential(nn.Linear(4, 4), BufferUpdates())
    with pytest.raises(ModuleStateWriteError) as info:
        zero_init_pass(model, dry_run=True, capture="symbolic")
    assert info.value.module == "1" and "`1.steps`" in str(info.value)


def test_auto_capture_with_example_inputs_goes_on_to_export():
    model, x = BufferUpdates(), torch.randn(3, 4)
    before = Snapshot.of(model, (x,))
    report = zero_init_pass(model, dry_run=True, example_inputs=(x,), verify=True)
    assert report.params == ["fc2.weight", "fc2.bias"]
    assert before.changes() == []


def test_symbolic_capture_takes_no_tensor_constant_off_the_model():
    class Const(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return x + self.fc(x) * torch.tensor([1.0, 2.0])

    model = Const()
    before = Snapshot.of(model)
    gm = capture(model)
    assert before.changes() == []  # the tracer's `_tensor_constant0` lives on gm only
    assert any(n.op == "get_attr" for n in gm.graph.nodes)
    torch.testing.assert_close(gm(torch.ones(1, 2)), model(torch.ones(1, 2)))


def test_leave_no_trace_puts_back_containers_a_forward_fills():
    class Caching(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.seen, self.cache = nn.Linear(4, 4), [], {}

        def forward(self, x):
            self.seen.append(x.shape)
            self.cache[x.shape] = x
            return x + self.fc(x)

    model, x = Caching(), torch.randn(3, 4)
    before = Snapshot.of(model, (x,))
    for cap in CAPTURES[1:]:
        zero_init_pass(model, dry_run=True, verify=True, example_inputs=(x,), capture=cap)
    assert before.changes() == [] and model.seen == [] and model.cache == {}


def test_leave_no_trace_restores_even_when_the_forward_raises():
    model = BufferUpdates()
    before = Snapshot.of(model)
    with pytest.raises(RuntimeError), leave_no_trace(model, clone_buffers=True):
        model(torch.randn(3, 5))  # steps += 1 ran on a clone, then the ema line fails
    assert before.changes() == []
    assert nn.Module.__setattr__ is torch.nn.modules.module.Module.__setattr__


class CountsCalls(nn.Module):
    """Counts its calls in a plain Python attribute; kept a leaf, so only a run sees it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls, self.fc = 0, nn.Linear(4, 4)

    def forward(self, x):
        self.calls += 1
        return self.fc(x)


class AfterACountingLeaf(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pre, self.fc1, self.fc2 = CountsCalls(), nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        y = self.pre(x)
        return y + self.fc2(torch.relu(self.fc1(y)))


@pytest.mark.parametrize("cap", CAPTURES)
def test_verification_puts_back_what_a_leafs_forward_assigns(cap: str):
    model, x = AfterACountingLeaf(), torch.randn(3, 4)
    before = Snapshot.of(model, (x,))
    report = zero_init_pass(model, dry_run=True, verify=True, example_inputs=(x,), capture=cap,
                            leaf_modules=[CountsCalls])
    assert report.params == ["fc2.weight", "fc2.bias"]
    assert before.changes() == [] and model.pre.calls == 0


def test_pending_backward_survives_a_dry_run_with_example_inputs():
    """The user's symptom: BatchNorm's running statistics in a pending autograd graph."""
    model = BatchNormDropout().train()
    x = torch.randn(3, 4)
    loss = model(x).sum()
    for cap in CAPTURES:
        zero_init_pass(model, dry_run=True, verify=True, example_inputs=(x,), capture=cap)
    loss.backward()  # raises if a saved tensor's _version moved
    assert model.fc1.weight.grad is not None


# -- seeds -----------------------------------------------------------------------------------

MODEL = BatchNormDropout()


def _plan_seed(**kwargs: Any) -> int:
    report = init_pass(MODEL, init=inits.scaled_normal(0.02), **kwargs)
    return report.plan.seed


def test_a_dry_run_does_not_advance_the_global_generator_and_is_reproducible():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = _plan_seed(dry_run=True)
    assert torch.equal(torch.get_rng_state(), state)
    assert _plan_seed(dry_run=True) == first  # same state, same seed
    torch.manual_seed(123)
    assert _plan_seed(dry_run=True) == first
    torch.manual_seed(124)
    assert _plan_seed(dry_run=True) != first


def test_the_dry_run_plan_is_the_one_the_write_makes_and_writes_consume_the_draw():
    torch.manual_seed(5)
    dry = init_pass(MODEL, init=inits.scaled_normal(0.02), dry_run=True).plan
    report = init_pass(MODEL, init=inits.scaled_normal(0.02))  # the same state: same seed
    assert report.plan.seed == dry.seed
    drawn = MODEL.fc2.weight.detach().clone()
    assert _plan_seed() != report.plan.seed  # the write took its draw: the next one differs
    torch.manual_seed(5)
    assert _plan_seed() == report.plan.seed
    other = BatchNormDropout()
    dry.apply(other)  # the dry run's plan writes what the write wrote
    assert torch.equal(other.fc2.weight, drawn)


def test_a_failing_call_does_not_advance_the_global_generator():
    model = BatchNormDropout()
    model.fc2.weight = model.fc1.weight  # tied: the pass refuses before writing
    state = torch.get_rng_state()
    with pytest.raises(ZetaFxError):
        init_pass(model, init=inits.scaled_normal(0.02))
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, "0", True])
def test_a_bad_seed_is_refused_before_anything(seed: Any):
    with pytest.raises(PlanError, match="seed="):
        init_pass(BatchNormDropout(), init=inits.scaled_normal(0.02), seed=seed)


# -- values checked in the dtype they are stored in --------------------------------------------

@pytest.mark.parametrize("dtype, init, fits", [
    (torch.float32, 1e39, False), (torch.float32, 1e5, True), (torch.float32, 1e-30, True),
    (torch.float16, 1e5, False), (torch.float16, 6e4, True), (torch.float16, 1e-30, False),
    (torch.bfloat16, 1e39, False), (torch.bfloat16, 1e5, True), (torch.bfloat16, 1e-30, True),
])
def test_gate_init_is_checked_in_the_gates_dtype(dtype: torch.dtype, init: float, fits: bool):
    model = BatchNormDropout().to(dtype)
    before = Snapshot.of(model)
    if fits:
        gated = gate_residuals(model, init=init, graph=True)
        gate = gated.get_parameter("gate_fc2")
        assert gate.dtype == dtype and bool(torch.isfinite(gate).all()) and bool(gate.ne(0).all())
    else:
        with pytest.raises(GateError) as info:
            gate_residuals(model, init=init, graph=True)
        message = str(info.value)
        assert f"init={init!r}" in message and str(dtype).removeprefix("torch.") in message
        assert "`fc2`" in message and "`add`" in message
    assert before.changes() == []


@pytest.mark.parametrize("dtype, std, fits", [
    (torch.float32, 1e38, False), (torch.float32, 1.0, True),
    (torch.float16, 1e5, False), (torch.float16, 1e-12, False), (torch.float16, 0.02, True),
    (torch.bfloat16, 1e5, True), (torch.bfloat16, 1e38, False),
])
def test_init_std_is_checked_in_the_parameters_dtype(dtype: torch.dtype, std: float, fits: bool):
    model = BatchNormDropout().to(dtype)
    before = Snapshot.of(model)
    run = lambda: init_pass(model, init=inits.scaled_normal(std), seed=0)  # noqa: E731
    if fits:
        report = run()
        weight = model.fc2.weight
        assert report.params == ["fc2.weight"] and bool(torch.isfinite(weight).all())
        assert bool(weight.ne(0).any())
    else:
        with pytest.raises(PlanError) as info:
            run()
        message = str(info.value)
        assert "`fc2.weight`" in message and "module `fc2`" in message and str(dtype) in message
        assert f"{std:g}" in message and "nothing was written" in message
        assert before.changes() == []


# -- the plan validated whole before the first write -------------------------------------------

def _plan_dict() -> dict[str, Any]:
    torch.manual_seed(0)
    model = nn.Sequential(BatchNormDropout(), BatchNormDropout())
    plan = init_pass(model, init=inits.scaled_normal(0.02), dry_run=True, seed=3).plan
    return plan.to_dict()


def _set(path: tuple, value: Any) -> Callable[[dict], None]:
    def edit(data: dict) -> None:
        target = data
        for key in path[:-1]:
            target = target[key]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return edit


_DELETE = object()
E = ("entries", 1)  # the second entry: the first would be written first, if anything were
TAMPERED = {
    "negative std": (_set(E + ("action", "std"), -0.5), "plan entry 1", "action.std"),
    "non-finite std": (_set(E + ("action", "std"), 1e999), "not valid JSON", None),
    "std a string": (_set(E + ("action", "std"), "0.1"), "plan entry 1", "action.std"),
    "non-finite mean": (_set(E + ("action", "mean"), float("nan")), "not valid JSON", None),
    "bad kind": (_set(E + ("action", "kind"), "uniform"), "plan entry 1", "action.kind"),
    "kind missing": (_set(E + ("action", "kind"), _DELETE), "plan entry 1", "action.kind"),
    "callable without a name": (lambda d: (_set(E + ("action", "kind"), "callable")(d),
                                           _set(E + ("action", "name"), "")(d)),
                                "plan entry 1", "action.name"),
    "bad figure": (_set(E + ("action", "figures"), [["L", [1]]]), "plan entry 1",
                   "action.figures"),
    "negative seed": (_set(("seed",), -3), "plan", "seed"),
    "seed a float": (_set(("seed",), 1.5), "plan", "seed"),
    "seed a bool": (_set(("seed",), True), "plan", "seed"),
    "seed missing for a draw": (_set(("seed",), None), "plan entry 0", "action.kind"),
    "FQN under another module": (_set(E + ("params",), {"0.fc2.weight": [4, 4]}),
                                 "plan entry 1", "params"),
    "FQN with an empty name": (_set(E + ("params",), {"1..fc2.weight": [4, 4]}),
                               "plan entry 1", "params"),
    "parameter named twice": (lambda d: d["entries"][1].update(
        module=d["entries"][0]["module"], params=d["entries"][0]["params"]),
        "plan entry 1", "params"),
    "negative dim": (_set(E + ("params",), {"1.fc2.weight": [4, -4]}), "plan entry 1", "params"),
    "module not a string": (_set(E + ("module",), 7), "plan entry 1", "module"),
    "module an empty name": (_set(E + ("module",), "1..fc2"), "plan entry 1", "module"),
    "sites not a list": (_set(E + ("sites",), [{"kind": 1}]), "plan entry 1", "sites"),
    "rule missing": (_set(E + ("rule",), _DELETE), "plan entry 1", "rule"),
    "module_type not a string": (_set(E + ("module_type",), ["Linear"]), "plan entry 1",
                                 "module_type"),
    "label not a string": (_set(E + ("action", "label"), 3), "plan entry 1", "action.label"),
    "plan rule not a string": (_set(("rule",), None), "plan", "rule"),
    "model missing": (_set(("model",), _DELETE), "plan", "model"),
    "init a number": (_set(("init",), 0.02), "plan", "init"),
    "skipped malformed": (_set(("skipped",), [{"node": "x"}]), "plan", "skipped"),
    "entries not a list": (_set(("entries",), {}), "entries", None),
}


@pytest.mark.parametrize("case", list(TAMPERED), ids=list(TAMPERED))
def test_a_tampered_plan_is_refused_naming_entry_and_field(case: str, tmp_path):
    import json

    from zeta_fx.errors import PlanFormatError

    edit, where, field = TAMPERED[case]
    data = _plan_dict()
    edit(data)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    torch.manual_seed(1)
    model = nn.Sequential(BatchNormDropout(), BatchNormDropout())
    before = Snapshot.of(model)
    with pytest.raises(PlanFormatError) as info:
        ZeroInitPlan.from_json(path.read_text()).apply(model)
    message = str(info.value)
    assert where in message
    if field is not None:
        assert f"`{field}" in message
    assert before.changes() == []


def test_a_plan_built_in_code_is_validated_before_the_first_write():
    """Before: entry 0 was zeroed, then entry 1's draw failed (PartialWriteError)."""
    from zeta_fx.errors import PlanFormatError

    model = nn.Sequential(BatchNormDropout(), BatchNormDropout())
    plan = zero_init_pass(model, dry_run=True).plan
    second = dataclasses.replace(plan.entries[1], action=Action("normal", std=-1.0))
    tampered = dataclasses.replace(plan, entries=(plan.entries[0], second), seed=0)
    before = Snapshot.of(model)
    with pytest.raises(PlanFormatError, match=r"plan entry 1 \(module `1.fc2`\), field `action.std`"):
        tampered.apply(model)
    assert before.changes() == []


# -- the pass's cache cannot be stale -----------------------------------------------------------

class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)
        self.register_buffer("scale", torch.tensor(0.5))

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x))) * 0.5 * self.scale


def _rewrite_literal(gm: fx.GraphModule, old: float, new: float) -> None:
    for node in gm.graph.nodes:
        if node.op == "call_function" and old in node.args:
            node.args = tuple(new if a == old else a for a in node.args)
    gm.recompile()


@pytest.mark.parametrize("rewrite", ["literal", "buffer value", "module swapped"])
def test_a_constant_rewritten_by_another_pass_is_analysed_again(rewrite: str):
    gm = fx.symbolic_trace(Scaled())
    p = ZeroInitPass()
    assert p(gm).modified and p.last_report.params == ["fc2.weight", "fc2.bias"]
    assert not p(gm).modified and p.analyses == 1  # unchanged: the cache holds
    if rewrite == "literal":
        _rewrite_literal(gm, 0.5, float("inf"))
    elif rewrite == "buffer value":
        gm.scale.fill_(float("inf"))
    else:
        gm.fc1 = nn.Sequential(nn.Linear(4, 4), nn.ReLU())  # same target, another module
    result = p(gm)
    assert p.analyses == 2
    if rewrite == "module swapped":
        assert not result.modified  # fc2 is still zero: no value changed
        return
    # 0 * inf is NaN: zeroing fc2 no longer makes the block the identity, and the report says so
    assert not result.modified and p.last_report.params == [] and p.last_report.touched == []
    assert [s.module for s in p.last_report.skipped] == ["fc2"]


def test_modified_is_true_exactly_when_a_value_changed():
    gm = fx.symbolic_trace(Scaled())
    with torch.no_grad():
        gm.fc2.weight.zero_()
        gm.fc2.bias.zero_()
    p = ZeroInitPass()
    assert not p(gm).modified  # already zero: the analysis ran, nothing changed
    with torch.no_grad():
        gm.fc2.bias[0] = 1e-30
    assert p(gm).modified  # a subnormal-sized value counts
