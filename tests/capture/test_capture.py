"""Capture (``zeta_fx.capture``, ``zeta_fx.capture.concrete``): the module becomes a graph.

Symbolic tracing with its leaf policy; given example inputs, ``torch.export`` (non-strict)
mapped back to the model's FQNs, or a capture that follows value-dependent Python on the
example inputs (issue 10), which neither symbolic tracing nor torch.export can follow; when
all fail, one paragraph naming the submodule, the cause and what to do. The checks run the
model after the pass: each zeroed block must return exactly its input on the example input.
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch import fx, nn

from claims import (OutputRecorder, assert_blocks_equal_skip, assert_only_zeroed,
                    assert_unchanged, check_pass, params_of, snapshot)
from zeta_fx import CaptureError, TiedParameterError, zero_init_pass
from zeta_fx.capture import capture, export_capture
from zeta_fx.capture.concrete import concrete_capture
from zeta_fx.models import GPT, DiT, SEResNet, UNet


# -- symbolic tracing: leaves, GraphModules, failures --------------------------------------

class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(4, 4), Gate())

    def forward(self, x):
        return x + self.inner(x)


class Gate(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow
            return x
        return -x


def test_leaf_modules_make_untraceable_submodules_opaque():
    model = Untraceable()
    report = zero_init_pass(model, leaf_modules=[Gate])
    # the Gate leaf is not known to preserve zero: the branch is left alone, and says why
    assert report.modules == []
    assert ("`Gate` (inner.1) at `inner_1` is opaque: `Gate` is not a known layer"
            in report.skipped[0].reason)
    assert zero_init_pass(Untraceable(), leaf_modules=["inner.1"]).skipped


class CountsCalls(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        self.calls.add_(1)
        return x + self.fc(x)


def test_tracing_does_not_run_buffer_updates():
    model = CountsCalls()
    before = snapshot(model)
    report = zero_init_pass(model, dry_run=True)
    assert report.modules == ["fc"]
    assert_only_zeroed(model, before, set())  # the step counter did not move
    zero_init_pass(model)
    assert model.calls.item() == 0
    model(torch.randn(2, 4))
    assert model.calls.item() == 1


def test_graph_module_from_another_tracer_is_used_as_is(small_resnet):
    class Tracer(fx.Tracer):
        def is_leaf_module(self, m, name):  # everything is a leaf except containers
            return not isinstance(m, (nn.Sequential,)) and type(m).__name__ != "SEResNet" \
                and super().is_leaf_module(m, name)

    model = small_resnet()
    gm = fx.GraphModule(model, Tracer().trace(model))
    report = zero_init_pass(gm)
    assert report.modules == ["blocks.0.bn3", "blocks.1.bn3"]


# -- torch.export --------------------------------------------------------------------------

class Routed(nn.Module):
    """Data-dependent control flow: symbolic tracing fails inside ``block``."""

    def __init__(self) -> None:
        super().__init__()
        self.block = RoutedBlock()
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(x))


class RoutedBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(8)
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)
        self.bn = nn.BatchNorm1d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 1:  # a Python branch on the input
            x = self.bn(x)
        return x + self.fc2(torch.relu(self.fc1(self.norm(x))))


def test_export_fallback_with_example_inputs_maps_to_model_fqns():
    torch.manual_seed(0)
    model = Routed()
    report = check_pass(model, params=params_of("block.fc2"),
                        example_inputs=(torch.randn(4, 8),))
    assert report.touched[0]["type"] == "Linear"
    # BatchNorm running statistics are buffers: export must not have touched them
    assert model.block.bn.num_batches_tracked.item() == 0
    rec = OutputRecorder(model, ["block.fc2"])
    model(torch.randn(4, 8))
    rec.assert_all_zero()


def test_export_with_kwargs_and_output_layer():
    model = Routed()
    check_pass(model, "output_layer", params=params_of("head"),
               example_kwargs={"x": torch.randn(2, 8)})


def test_capture_export_requested_needs_examples():
    with pytest.raises(CaptureError, match="capture='export' needs example inputs"):
        zero_init_pass(GPT(n_layer=1), capture="export")
    with pytest.raises(ValueError, match="capture must be one of"):
        capture(GPT(n_layer=1), method="fx")


def test_export_graph_uses_get_attr_on_model_fqns():
    gm = export_capture(GPT(n_layer=1), (torch.randint(0, 64, (1, 8)),))
    targets = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    assert "h.0.attn.c_proj.weight" in targets and "lm_head.weight" in targets
    assert not any(n.op == "placeholder" and n.name.startswith("p_") for n in gm.graph.nodes)


def test_exported_graph_module_with_dynamic_length_zeroes_the_models_parameters():
    torch.manual_seed(0)
    model = GPT(n_layer=2)
    length = torch.export.Dim("length", min=2, max=32)
    gm = export_capture(model, (torch.randint(0, 64, (2, 8)),), dynamic_shapes=({1: length},))
    assert any(str(n.target) == "aten.sym_size.int" for n in gm.graph.nodes)
    expected = params_of("h.0.attn.c_proj", "h.0.mlp.c_proj", "h.1.attn.c_proj", "h.1.mlp.c_proj")
    before = snapshot(model)
    report = zero_init_pass(gm, rule="residual_branch_last")
    assert set(report.params) == expected and report.skipped == []
    for name, value in snapshot(model).items():  # the graph shares the model's tensors
        assert (not value.any()) if name in expected else torch.equal(value, before[name])


@pytest.mark.parametrize("make, inputs", [
    (lambda: GPT(n_layer=2), lambda: (torch.randint(0, 64, (2, 8)),)),
    (lambda: SEResNet(depth=1), lambda: (torch.randn(2, 3, 32, 32),)),
    (UNet, lambda: (torch.randn(2, 3, 16, 16), torch.rand(2) * 1000)),
    (DiT, lambda: (torch.randn(2, 4, 8, 8), torch.rand(2) * 1000, torch.tensor([1, 3]))),
])
@pytest.mark.parametrize("rule", ["residual_branch_last", "adaln_zero"])
def test_export_and_symbolic_capture_agree(make, inputs, rule):
    symbolic = zero_init_pass(make(), rule=rule, dry_run=True)
    exported = zero_init_pass(make(), rule=rule, dry_run=True, capture="export",
                              example_inputs=inputs())
    assert exported.params == symbolic.params
    assert exported.modules == symbolic.modules


def test_export_tied_head_is_named_by_the_head():
    model = GPT(n_layer=1, tie_weights=True)
    before = snapshot(model)
    with pytest.raises(TiedParameterError) as info:
        zero_init_pass(model, rule="output_layer", capture="export",
                       example_inputs=(torch.randint(0, 64, (1, 8)),))
    assert "`lm_head.weight`" in str(info.value) and "`wte.weight`" in str(info.value)
    assert_unchanged(model, before)


class Repeated(nn.Module):
    """One block registered under three names (``nn.ModuleList([block] * 3)``), called three
    times: one module, one set of parameters."""

    def __init__(self) -> None:
        super().__init__()
        block = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
        self.blocks = nn.ModuleList([block] * 3)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


@pytest.mark.parametrize("how", [dict(), dict(capture="export"), dict(capture="concrete"),
                                 dict(capture="export", compositional=False)])
def test_a_module_registered_under_several_names_is_named_by_its_first(how):
    # export names each call by the path it went through and lifts the parameter once per
    # path: the plan listed six parameters in three modules, 408 of 395 elements
    torch.manual_seed(0)
    model, x = Repeated(), torch.randn(3, 4)
    total = sum(p.numel() for p in model.parameters())
    report = zero_init_pass(model, dry_run=True, example_inputs=(x,), **how)
    assert report.plan.params == ["blocks.0.2.weight", "blocks.0.2.bias"]
    assert report.modules == ["blocks.0.2"]
    assert len(report.touched) == 3  # three merges, one shared module
    assert {r["module"] for r in report.touched} == {"blocks.0.2"}
    assert f"36 of {total} elements" in str(report)
    check_pass(model, params=params_of("blocks.0.2"), example_inputs=(x,), **how)
    assert torch.equal(model(x), model.head(x))  # every block is the identity


def test_transformer_encoder_layer_traced_through_by_export():
    torch.manual_seed(0)
    model = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, norm_first=True)
    with pytest.raises(CaptureError):  # its forward branches on the input
        zero_init_pass(model)
    x = torch.randn(2, 5, 16)
    check_pass(model, params=params_of("self_attn.out_proj", "linear2"), example_inputs=(x,))
    assert torch.equal(model.eval()(x), x)


class Branchy(nn.Module):
    """``torch.cond`` and a ``no_grad`` region: higher-order ops with subgraphs in export."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.probe = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            scale = self.probe(x).abs().mean()
        h = torch.cond(scale > 0, lambda v: self.fc1(v), lambda v: self.fc1(v) * 2, (x,))
        return x + self.fc2(h)


def test_export_graph_with_higher_order_op_subgraphs():
    torch.manual_seed(0)
    model = Branchy()
    check_pass(model, params=params_of("fc2"), capture="export",
               example_inputs=(torch.randn(2, 4),))
    x = torch.randn(3, 4)
    assert torch.equal(model(x), x)


# -- following value-dependent Python on the example inputs (issue 10) ---------------------

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
    check_pass(model, params=params_of("blocks.0.fc2", "blocks.1.fc2"), example_inputs=(x,))
    _identity_on(model, ["blocks.0", "blocks.1", "blocks.2"], x)


def test_loop_count_read_from_the_input():
    torch.manual_seed(0)
    model = Net(LoopBlock(), LoopBlock())
    x = torch.randn(2, 8)
    report = check_pass(model, params=params_of("blocks.0.fc2", "blocks.1.fc2"),
                        example_inputs=(x,))
    assert report.skipped == []
    _identity_on(model, ["blocks.0", "blocks.1"], x)


def test_nan_check_that_raises_and_batchnorm_statistics_kept():
    torch.manual_seed(0)
    model = Net(CheckedBlock(), CheckedBlock())  # train mode: BatchNorm updates statistics
    x = torch.randn(4, 8)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    check_pass(model, params=params_of("blocks.0.bn", "blocks.1.bn"), example_inputs=(x,))
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
    # verify=True: the captured graph runs, and its claims hold
    report = check_pass(model, params=params_of("blocks.0.fc2", "blocks.1.fc2"),
                        example_inputs=(x,), verify=True)
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
    check_pass(model, params=params_of("blocks.0.fc2", "blocks.1.fc2"), example_inputs=(x,))
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
    model = Net(EpsBlock())
    before = snapshot(model)
    with pytest.raises(CaptureError) as info:
        zero_init_pass(model)
    message = str(info.value)
    assert "`blocks.0` (EpsBlock)" in message and "What to do: pass example_inputs" in message
    assert "captured with torch.export" in message
    assert "\n" not in message
    assert_unchanged(model, before)


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

