"""Capture that follows value-dependent Python on the example inputs (issue 10).

Each model branches on a tensor's value, which neither symbolic tracing nor torch.export
can follow. The checks run the model after the pass: a forward hook on each residual block
must see it return exactly its input on the example input.
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from claims import assert_blocks_equal_skip, assert_unchanged, check_pass, params_of, snapshot
from zeta_fx import CaptureError, zero_init_pass
from zeta_fx.capture import capture
from zeta_fx.capture_concrete import concrete_capture


class EpsBlock(nn.Module):
    """Runs its branch only where the input is large enough: ``if x.abs().mean() > eps``."""

    def __init__(self, eps: float = 1e-3) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.abs().mean() > self.eps:
            return x + self.fc2(torch.relu(self.fc1(x)))
        return x


class LoopBlock(nn.Module):
    """The number of residual steps is read off the input: ``range(int(t.sum().item()))``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(int((x > 0).sum().item()) % 3 + 1):
            x = x + self.fc2(torch.tanh(self.fc1(x)))
        return x


class CheckedBlock(nn.Module):
    """A NaN check that raises, after a BatchNorm with running statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.bn = nn.BatchNorm1d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.isnan(x).any():
            raise ValueError("NaN in the input")
        out = x + self.bn(self.fc(x))
        if not torch.isfinite(out).all():
            raise ValueError("non-finite output")
        return out


class Net(nn.Module):
    def __init__(self, *blocks: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 8)
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


class RootBranches(Net):
    """Value-dependent Python in the model's own forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if x.amax() > 0:  # taken on the examples below
            x = x * 2
        return self.head(self.blocks(x))


class GatedAct(nn.Module):
    """A nested submodule that branches on a value, inside a residual branch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.abs().max() > 1e4:
            return torch.clamp(x, -1e4, 1e4)
        return torch.relu(x)


class PlainBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(8, 8), GatedAct(), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(x)))


def _identity_on(model: nn.Module, blocks: list[str], *inputs: torch.Tensor) -> None:
    """Each named block returns exactly its input when the model runs on ``inputs`` (these
    inputs, not random ones: they decide which way the blocks' Python goes)."""
    claims = [(model.get_submodule(name), lambda x: x) for name in blocks]
    assert_blocks_equal_skip(model, claims, lambda seed: inputs, seeds=(0,), modes=("eval",))


def test_branch_on_mean_follows_the_branch_the_input_takes():
    torch.manual_seed(0)
    model = Net(EpsBlock(), EpsBlock(), EpsBlock(eps=1e9)).eval()
    x = torch.randn(4, 8)
    with pytest.raises(CaptureError):  # symbolic tracing alone cannot follow it
        zero_init_pass(model, dry_run=True)
    # blocks.2 takes its identity path on x: there is no branch to zero there
    check_pass(model, params=params_of("blocks.0.fc2", "blocks.1.fc2"),
                  example_inputs=(x,))
    _identity_on(model, ["blocks.0", "blocks.1", "blocks.2"], x)


def test_loop_count_read_from_the_input():
    torch.manual_seed(0)
    model = Net(LoopBlock(), LoopBlock())
    x = torch.randn(2, 8)
    report = check_pass(model, params=params_of("blocks.0.fc2", "blocks.1.fc2"), example_inputs=(x,))
    assert report.skipped == []
    _identity_on(model, ["blocks.0", "blocks.1"], x)


def test_nan_check_that_raises_and_batchnorm_statistics_kept():
    torch.manual_seed(0)
    model = Net(CheckedBlock(), CheckedBlock())  # train mode: BatchNorm updates statistics
    x = torch.randn(4, 8)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    check_pass(model, params=params_of("blocks.0.bn", "blocks.1.bn"),
                  example_inputs=(x,))
    for name, value in model.named_buffers():  # capture ran the forward on copies
        assert torch.equal(value, buffers[name]), name
    _identity_on(model.eval(), ["blocks.0", "blocks.1"], x)


def test_nan_in_the_example_input_is_reported_as_the_inputs_fault(capfd):
    model = Net(CheckedBlock())
    before = snapshot(model)
    x = torch.randn(4, 8)
    x[0, 0] = float("nan")
    with pytest.raises(CaptureError) as info:
        zero_init_pass(model, example_inputs=(x,))
    message = str(info.value)
    assert "`blocks.0` (CheckedBlock)" in message
    assert "running the model on the example inputs raised ValueError: NaN in the input" in message
    assert "What to do: check that example_inputs" in message
    assert "\n" not in message  # one paragraph
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # no graph dump, no torch warnings
    assert_unchanged(model, before)


def test_root_forward_branches_on_a_value():
    torch.manual_seed(0)
    model = RootBranches(EpsBlock(), LoopBlock())
    x = torch.randn(3, 8)
    report = check_pass(model, params=params_of("blocks.0.fc2", "blocks.1.fc2"), example_inputs=(x,),
                           verify=True)  # the captured graph runs, and its claims hold
    assert all(row["verified"] for row in report.touched)
    _identity_on(model, ["blocks.0", "blocks.1"], x)


def test_nested_submodule_branches_inside_a_traceable_block():
    torch.manual_seed(0)
    model = Net(PlainBlock(), PlainBlock())
    x = torch.randn(2, 8)
    gm = capture(model, example_inputs=(x,))
    # only the gates were followed concretely: the blocks' own layers stay call_module nodes
    assert {n.target for n in gm.graph.nodes if n.op == "call_module"} == {
        "stem", "head", "blocks.0.fc1", "blocks.0.fc2", "blocks.1.fc1", "blocks.1.fc2"}
    check_pass(model, params=params_of("blocks.0.fc2", "blocks.1.fc2"),
                  example_inputs=(x,))
    _identity_on(model, ["blocks.0", "blocks.1"], x)


def test_graph_shares_parameters_names_fqns_and_keeps_placeholders():
    torch.manual_seed(0)
    model = RootBranches(EpsBlock(), CheckedBlock()).eval()
    x = torch.randn(4, 8)
    gm = concrete_capture(model, (x,))
    assert [n.target for n in gm.graph.nodes if n.op == "placeholder"] == ["x"]
    targets = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    assert {"stem.weight", "blocks.0.fc2.weight", "blocks.1.bn.running_mean"} <= targets
    for target in targets:
        assert _get(gm, target) is _get(model, target), target  # the model's own tensors
    # the values that steered the Python are not left as dead uses of the branch
    assert not any("item" in str(n.target) or "local_scalar" in str(n.target)
                   for n in gm.graph.nodes)
    with torch.no_grad():
        assert torch.equal(gm(x), model(x))


def test_capture_concrete_requested_and_its_need_for_examples():
    model = Net(PlainBlock())
    with pytest.raises(CaptureError, match="capture='concrete' needs example inputs"):
        zero_init_pass(model, capture="concrete")
    check_pass(model, params=params_of("blocks.0.fc2"), capture="concrete",
                  example_inputs=(torch.randn(2, 8),))


def test_failures_print_nothing_even_with_torch_logs_on(capfd):
    torch._logging.set_logs(export=logging.DEBUG, dynamic=logging.INFO)
    try:
        model = Net(EpsBlock())
        with pytest.raises(CaptureError) as info:
            zero_init_pass(model, example_inputs=(torch.randn(4, 5),))  # wrong width
    finally:
        torch._logging.set_logs()
    message = str(info.value)
    assert "symbolic tracing failed in `blocks.0` (EpsBlock)" in message
    assert "torch.export (non-strict) failed" in message
    assert "running the model on the example inputs raised RuntimeError" in message
    assert "\n" not in message
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_error_without_examples_says_what_to_do():
    with pytest.raises(CaptureError) as info:
        zero_init_pass(Net(EpsBlock()))
    message = str(info.value)
    assert "`blocks.0` (EpsBlock)" in message and "What to do: pass example_inputs" in message
    assert "\n" not in message


def _get(root, dotted):
    for part in dotted.split("."):
        root = getattr(root, part)
    return root


def test_meta_model_is_told_to_plan_on_a_materialised_instance():
    with torch.device("meta"):
        model = Net(EpsBlock())
    with pytest.raises(CaptureError) as info:
        zero_init_pass(model, dry_run=True, example_inputs=(torch.randn(2, 8, device="meta"),))
    message = str(info.value)
    assert "`stem.weight` is on the meta device" in message
    assert "apply the plan" in message and "\n" not in message
