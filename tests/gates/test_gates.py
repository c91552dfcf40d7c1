"""``gate_residuals``: the ReZero/SkipInit rewrite, judged by running the models.

With ``init=1.0`` the gated module's output is the original's bit for bit; with
``init=0.0`` an ``fx.Interpreter`` run shows every gated merge equal to its skip value, read
by the node names the report gives (nothing else of the analysis is trusted). Every original
FQN survives, the caller's model is never changed, and the result compiles without graph
breaks and trains under FSDP2 on two gloo ranks.
"""

from __future__ import annotations

import copy
import math
import os
import sys
from datetime import timedelta

import pytest
import torch
from torch import fx, nn

from claims import Recorder
from gloo_ranks import free_port, leave, rendezvous, run_ranks

from zeta_fx import GateError, gate_residuals
from zeta_fx.errors import ExampleInputsError, NotAModuleError
from zeta_fx.gates import META_KEY, GatesReport
from zeta_fx.models import DiT, GPT, SEResNet, UNet

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only contend


def _ids(b: int = 2, n: int = 8, vocab: int = 64) -> torch.Tensor:
    return torch.randint(0, vocab, (b, n), generator=torch.Generator().manual_seed(0))


def _images(b: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(0))


def _resnet18() -> nn.Module:
    torchvision = pytest.importorskip("torchvision")
    return torchvision.models.resnet18(num_classes=10)


def _vit() -> nn.Module:
    timm = pytest.importorskip("timm")
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32,
                             patch_size=8, depth=2, num_classes=10)


def _llama() -> nn.Module:
    T = pytest.importorskip("transformers")
    return T.LlamaForCausalLM(T.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        use_cache=False, pad_token_id=0, bos_token_id=1, eos_token_id=2))


def _blocks(prefix: str, n: int, names: tuple[str, ...]) -> list[str]:
    return [f"{prefix}.{i}.{name}" for i in range(n) for name in names]


# name -> (build, inputs, example inputs needed to capture, expected gate names)
MODELS = {
    "gpt": (lambda: GPT(n_layer=2), lambda: (_ids(),), False,
            _blocks("h", 2, ("gate_attn", "gate_mlp"))),
    "se_resnet": (SEResNet, lambda: (_images(),), False,
                  _blocks("blocks", 6, ("gate_bn3",))),
    "unet": (UNet, lambda: (_images(size=16), torch.tensor([10.0, 500.0])), False,
             ["down.0.gate_out_layers", "down.1.gate_out_layers", "mid_res1.gate_out_layers",
              "mid_attn.gate_proj_out", "mid_res2.gate_out_layers", "up.0.gate_out_layers",
              "up.1.gate_out_layers"]),
    "dit": (DiT, lambda: (torch.randn(2, 4, 8, 8), torch.tensor([10.0, 500.0]),
                          torch.tensor([1, 3])), False,
            _blocks("blocks", 2, ("gate_proj", "gate_mlp"))),
    "torchvision_resnet18": (_resnet18, lambda: (_images(1),), False,
                             [f"layer{s}.{i}.gate_bn2" for s in range(1, 5) for i in range(2)]),
    "timm_vit": (_vit, lambda: (_images(1),), False,
                 _blocks("blocks", 2, ("gate_attn", "gate_mlp"))),
    "hf_llama": (_llama, lambda: (_ids(1),), True,
                 _blocks("model.layers", 2, ("gate_self_attn", "gate_mlp"))),
}


def _output(value):
    """The first tensor of a model's output (a Hugging Face ModelOutput, a tuple, a tensor)."""
    if hasattr(value, "logits"):
        return value.logits
    if hasattr(value, "sample"):  # a diffusers output
        return value.sample
    if isinstance(value, (tuple, list)):
        return value[0]
    return value


def _build(name: str) -> tuple[nn.Module, tuple]:
    make, inputs, _, _ = MODELS[name]
    torch.manual_seed(0)
    return make().eval(), inputs()


def _gate(name: str, model: nn.Module, x: tuple, **kw) -> fx.GraphModule:
    needs_examples = MODELS[name][2]
    return gate_residuals(model, example_inputs=x if needs_examples else None, **kw, graph=True)


def _values(gm: fx.GraphModule, x: tuple) -> dict[str, object]:
    recorder = Recorder(gm)
    with torch.no_grad():
        recorder.run(*x)
    return recorder.values


def _snapshot(model: nn.Module) -> dict[str, object]:
    """Everything about the model a gate could change: tensors, names, objects, attributes."""
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "params": [(n, id(p)) for n, p in model.named_parameters(remove_duplicate=False)],
        "buffers": [(n, id(b)) for n, b in model.named_buffers(remove_duplicate=False)],
        "modules": [(n, id(m), sorted(vars(m))) for n, m in model.named_modules()],
        "persistent": sorted(model.state_dict().keys()),
    }


def _assert_unchanged(model: nn.Module, before: dict[str, object]) -> None:
    after = _snapshot(model)
    for key in ("params", "buffers", "modules", "persistent"):
        assert after[key] == before[key], key
    assert all(torch.equal(before["state"][k], v) for k, v in after["state"].items())


# -- alpha = 1: bit for bit; alpha = 0: every gated merge is its skip ---------------------

@pytest.mark.parametrize("name", MODELS)
def test_alpha_one_is_bit_exact_and_alpha_zero_makes_each_gated_block_the_identity(name):
    model, x = _build(name)
    before = _snapshot(model)
    with torch.no_grad():
        reference = _output(model(*x))

    one = _gate(name, model, x, init=1.0)
    zero = _gate(name, model, x, init=0.0)
    report = GatesReport.of(zero)
    assert report.names == MODELS[name][3]
    with torch.no_grad():
        assert torch.equal(_output(one(*x)), reference)
        assert not torch.equal(_output(zero(*x)), reference)  # the gates do something

    values = _values(zero, x)
    for gate in report.gates:
        assert gate.operands, gate
        merge, skip = values[gate.merge], values[gate.skip]
        assert torch.equal(merge, skip), f"{name}: `{gate.merge}` != skip `{gate.skip}`"
    # the same merges with alpha = 1 do add their branches
    values_one = _values(one, x)
    assert any(not torch.equal(values_one[g.merge], values_one[g.skip]) for g in report.gates)

    _assert_unchanged(model, before)
    with torch.no_grad():
        assert torch.equal(_output(model(*x)), reference)


@pytest.mark.parametrize("name", ["gpt", "torchvision_resnet18", "hf_llama"])
def test_fqns_kept_state_dict_round_trip_and_tensors_shared(name):
    model, x = _build(name)
    gated = _gate(name, model, x, init=0.0)
    report = GatesReport.of(gated)
    original, result = model.state_dict(), gated.state_dict()
    assert set(original) <= set(result)
    assert set(result) - set(original) == set(report.names)
    for key, value in original.items():  # the same tensors, not copies
        assert result[key].data_ptr() == value.data_ptr() and torch.equal(result[key], value)
    named = dict(gated.named_parameters())
    for gate in report.gates:
        assert isinstance(named[gate.name], nn.Parameter) and named[gate.name].requires_grad

    # a checkpoint of the original loads into the gated model: only the gates are missing
    checkpoint = copy.deepcopy(original)
    fresh = _gate(name, _build(name)[0], x, init=0.0)
    with torch.no_grad():  # other values than the checkpoint's, except the gates
        for key, tensor in fresh.named_parameters():
            if key not in report.names:
                tensor.add_(1.0)
    missing, unexpected = fresh.load_state_dict(checkpoint, strict=False)
    assert sorted(missing) == sorted(report.names) and unexpected == []
    with torch.no_grad():
        assert torch.equal(_output(fresh(*x)), _output(gated(*x)))


def test_unused_parameters_and_non_persistent_buffers_keep_their_fqns_and_kind():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)
            self.unused = nn.Linear(4, 4)
            self.register_buffer("scale", torch.full((4,), 2.0), persistent=False)
            self.register_buffer("offset", torch.zeros(4))
            self.register_buffer("spare", torch.ones(2), persistent=False)  # unused

        def forward(self, x):
            x = x * self.scale + self.offset
            return x + self.fc2(torch.relu(self.fc1(x)))

    model = Net()
    gated = gate_residuals(model, init=1.0, graph=True)
    assert set(gated.state_dict()) == set(model.state_dict()) | {"gate_fc2"}
    assert {n for n, _ in gated.named_buffers()} == {"scale", "offset", "spare"}
    assert gated.get_parameter("unused.weight") is model.unused.weight
    x = torch.randn(3, 4)
    assert torch.equal(gated(x), model(x))


# -- what is gated, and how -----------------------------------------------------------------

class _Sum(nn.Module):
    """One residual block whose merge is written in one of the additive forms."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.form = form
        self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 8)
        self.b = nn.Parameter(torch.randn(8))

    def forward(self, x):
        f = self.fc2(torch.relu(self.fc1(x)))
        if self.form == "flat":  # the branch operands enter the sum on either side of x
            return f + x + self.b
        if self.form == "sub_sum":  # the branch operands form a sum of their own
            return x + (f + self.b)
        if self.form == "branch_first":  # (f + b) + x: the same sub-sum, written flat
            return f + self.b + x
        if self.form == "alpha":
            return torch.add(x, f, alpha=0.5)
        if self.form == "minus":
            return x - f
        if self.form == "in_place":
            y = torch.relu(x)
            y += f
            return y
        if self.form == "method":
            return x.add(f)
        return torch.stack([x, f]).sum(0)  # "stack"


@pytest.mark.parametrize("form", ["flat", "sub_sum", "branch_first", "alpha", "minus",
                                  "in_place", "method",
                                  "stack"])
def test_each_additive_form_is_gated_bit_exactly(form):
    torch.manual_seed(0)
    model = _Sum(form)
    x = torch.randn(4, 8) * 1e3  # large values: a non-exact rewrite would show in the bits
    gated = gate_residuals(model, init=1.0, graph=True)
    assert torch.equal(gated(x), model(x))
    (gate,) = GatesReport.of(gated).gates
    muls = [n for n in gated.graph.nodes if n.op == "call_function" and n.target.__name__ == "mul"]
    expected = {"flat": 2}.get(form, 1)  # `x + (f + b)`: the sub-sum once, not f and b
    assert len(muls) == expected == len(gate.operands), gated.code

    with torch.no_grad():
        gated.get_parameter(gate.name).zero_()
    values = _values(gated, (x,))
    assert torch.equal(values[gate.merge], values[gate.skip])
    assert not torch.equal(values[gate.skip], model(x))  # the branch did add something


def test_a_join_the_rule_leaves_alone_is_not_gated_and_the_report_says_why():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)  # RepVGG-style: no skip
            self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            x = self.a(x) + self.b(x)
            return x + self.fc2(torch.relu(self.fc1(x)))

    torch.manual_seed(0)
    model = Net()
    gated = gate_residuals(model, init=0.0, graph=True)
    report = GatesReport.of(gated)
    assert report.names == ["gate_fc2"]
    assert [s.node for s in report.skipped] == ["add"]
    assert "no path is clearly the skip" in report.skipped[0].reason
    assert "no path is clearly the skip" in str(report)
    add = next(n for n in gated.graph.nodes if n.name == "add")
    assert [a.name for a in add.args] == ["a", "b"]  # untouched
    x = torch.randn(2, 8)
    assert torch.equal(gated(x), model.a(x) + model.b(x))


def test_a_rule_that_finds_no_joins_returns_the_traced_model_with_an_empty_report():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    gated = gate_residuals(model, rule="residual_branch_last", graph=True)
    assert isinstance(gated, fx.GraphModule) and gated is not model
    report = GatesReport.of(gated)
    assert report.gates == () and "found nothing to gate" in str(report)
    assert set(gated.state_dict()) == set(model.state_dict())
    x = torch.randn(3, 4)
    assert torch.equal(gated(x), model(x))
    # a rule without merges (the output layer) gates nothing and says so
    other = GatesReport.of(gate_residuals(model, rule="output_layer", graph=True))
    assert other.gates == () and "not a residual branch" in other.skipped[0].reason


def test_names_are_the_branch_child_and_never_collide():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)
            self.gate_fc2 = nn.Linear(4, 4)  # the natural name is taken

        def forward(self, x):
            return x + self.fc2(torch.relu(self.fc1(x)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Block()

        def forward(self, x):
            return self.block(self.block(x))  # one module, two merges

    model = Net()
    gated = gate_residuals(model, init=1.0, graph=True)
    assert GatesReport.of(gated).names == ["block.gate_fc2_1", "block.gate_fc2_2"]
    assert gated.get_submodule("block.gate_fc2") is model.block.gate_fc2
    assert not hasattr(model.block, "gate_fc2_1")
    x = torch.randn(2, 4)
    assert torch.equal(gated(x), model(x))


def test_a_graph_module_given_is_not_changed():
    torch.manual_seed(0)
    traced = fx.symbolic_trace(GPT(n_layer=2))
    code, before = traced.code, _snapshot(traced)
    gated = gate_residuals(traced, init=0.5, graph=True)
    assert gated is not traced and traced.code == code
    _assert_unchanged(traced, before)
    assert len(GatesReport.of(gated).gates) == 4 and META_KEY not in traced.meta


# -- per channel, dtype ---------------------------------------------------------------------

def test_per_channel_gates_follow_the_layout_of_the_branch():
    model, x = _build("gpt")  # (B, T, C): channels last
    gated = gate_residuals(model, init=1.0, per_channel=True, example_inputs=x, graph=True)
    assert {(g.shape, g.dim) for g in GatesReport.of(gated).gates} == {((32,), 2)}
    with torch.no_grad():
        assert torch.equal(gated(*x), model(*x))

    model, x = _build("torchvision_resnet18")  # (B, C, H, W) after BatchNorm: dim 1
    gated = gate_residuals(model, init=0.0, per_channel=True, example_inputs=x, graph=True)
    gates = GatesReport.of(gated).gates
    assert [(g.shape, g.dim) for g in gates][::2] == [((64,), 1), ((128,), 1), ((256,), 1),
                                                      ((512,), 1)]
    values = _values(gated, x)
    assert all(torch.equal(values[g.merge], values[g.skip]) for g in gates)
    with torch.no_grad():  # channel by channel: opening one channel changes only that one
        gated.get_parameter(gates[0].name)[3] = 1.0
    values = _values(gated, x)
    diff = (values[gates[0].merge] - values[gates[0].skip]).abs().sum(dim=(0, 2, 3))
    assert diff[3] > 0 and diff.count_nonzero() == 1

    gated = gate_residuals(model, init=1.0, per_channel=-1, example_inputs=x, graph=True)  # explicit
    assert GatesReport.of(gated).gates[0].shape == (8,) and GatesReport.of(gated).gates[0].dim == 3


def test_per_channel_shapes_come_from_fake_tensors_and_do_not_touch_the_model():
    model, x = _build("se_resnet")
    model.train()  # BatchNorm would update its running stats if anything really ran
    before = _snapshot(model)
    gated = gate_residuals(model, per_channel=True, example_inputs=x, graph=True)
    assert [g.shape for g in GatesReport.of(gated).gates] == [(16,), (16,), (32,), (32,),
                                                              (64,), (64,)]
    _assert_unchanged(model, before)


def test_gates_take_the_dtype_and_device_of_the_branch():
    torch.manual_seed(0)
    model = GPT(n_layer=2).double()
    x = (_ids(),)
    for per_channel in (False, True):
        gated = gate_residuals(model, init=1.0, per_channel=per_channel, example_inputs=x, graph=True)
        assert all(gated.get_parameter(n).dtype == torch.float64
                   for n in GatesReport.of(gated).names)
        assert torch.equal(gated(*x), model(*x))
    scalar = gate_residuals(model, graph=True)
    assert scalar.get_parameter("h.0.gate_attn").shape == (1,)


def test_meta_model_gates_are_meta():
    with torch.device("meta"):
        model = GPT(n_layer=2)
    gated = gate_residuals(model, init=0.0, graph=True)
    assert all(p.is_meta for p in gated.parameters())
    assert len(GatesReport.of(gated).gates) == 4


# -- errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("init", [float("nan"), float("inf"), "0", None, True, torch.tensor(0.0)])
def test_init_must_be_a_finite_number(init):
    model = GPT(n_layer=1)
    before = _snapshot(model)
    with pytest.raises(GateError, match="init must be a finite number"):
        gate_residuals(model, init=init, graph=True)
    assert issubclass(GateError, ValueError)
    _assert_unchanged(model, before)


def test_bad_per_channel_and_missing_shapes_say_what_to_pass():
    model, x = _build("gpt")
    with pytest.raises(GateError, match="per_channel must be"):
        gate_residuals(model, per_channel="yes", graph=True)
    with pytest.raises(ExampleInputsError, match="pass example_inputs"):
        gate_residuals(model, per_channel=True, graph=True)
    with pytest.raises(GateError, match=r"per_channel=5 is not a dimension .*\[-3, 2\]"):
        gate_residuals(model, per_channel=5, example_inputs=x, graph=True)
    with pytest.raises(ExampleInputsError, match="fake copies of example_inputs failed"):
        gate_residuals(model, per_channel=True, example_inputs=(torch.randn(2, 3, 4),), graph=True)
    with pytest.raises(NotAModuleError):
        gate_residuals(lambda x: x, graph=True)
    with pytest.raises(GateError, match="holds no gates report"):
        GatesReport.of(fx.symbolic_trace(nn.Linear(2, 2)))
    assert not any("gate" in n for n, _ in model.named_parameters())


def test_report_is_plain_data():
    model, x = _build("gpt")
    gated = gate_residuals(model, init=0.0, graph=True)
    report = gated.meta["zeta_fx_gates"]
    data = report.to_dict()
    assert [g["name"] for g in data["gates"]] == report.names
    assert data["gates"][0] == {"name": "h.0.gate_attn", "merge": "add_1", "skip": "drop",
                                "operands": ["h_0_attn_resid_dropout"],
                                "layers": ["h.0.attn.c_proj"],
                                "position": "branch into `add_1` from `drop`, skip: identity",
                                "shape": [1], "dim": None, "init": 0.0}
    text = format(report, "github")
    assert text.splitlines()[0].startswith("| gate ") and "h.1.gate_mlp" in text
    assert str(report).endswith("gated 4 residual joins with 4 new parameter elements; "
                                "0 candidates left alone")
    assert copy.deepcopy(gated).meta[META_KEY] == report


# -- torch.compile ---------------------------------------------------------------------------

@pytest.mark.slow  # torch.compile
def test_gated_module_compiles_without_graph_breaks_and_trains_alpha():
    torch._dynamo.reset()
    try:
        model, x = _build("gpt")
        gated = gate_residuals(model, init=0.0, graph=True)
        explained = torch._dynamo.explain(gated)(*x)
        assert explained.graph_break_count == 0 and explained.graph_count == 1
        torch._dynamo.reset()
        compiled = torch.compile(gated, backend="aot_eager")
        eager_out = gated(*x)
        eager_out.pow(2).mean().backward()
        eager_grads = {n: p.grad.clone() for n, p in gated.named_parameters() if "gate" in n}
        gated.zero_grad()
        out = compiled(*x)
        assert torch.allclose(out, eager_out, rtol=1e-5, atol=1e-6)
        out.pow(2).mean().backward()
        for name, grad in eager_grads.items():
            got = gated.get_parameter(name).grad
            assert grad.abs().sum() > 0 and torch.allclose(got, grad, rtol=1e-4, atol=1e-7)
    finally:
        torch._dynamo.reset()


# -- FSDP2 ----------------------------------------------------------------------------------

WORLD = 2
TIMEOUT_S = 90


def _fsdp_model() -> tuple[fx.GraphModule, torch.Tensor]:
    torch.manual_seed(0)
    model = GPT(vocab_size=64, block_size=16, n_layer=2, n_head=2, dim=16)
    return gate_residuals(model, init=0.0, graph=True), _ids(2, 8)


def _fsdp_step(gated: fx.GraphModule, ids: torch.Tensor) -> tuple[torch.Tensor, dict]:
    out = gated(ids)
    out.pow(2).mean().backward()
    return out.detach(), {n: p.grad for n, p in gated.named_parameters()}


def _fsdp_worker(rank: int, port: int) -> None:
    import torch.distributed as dist

    rendezvous(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        from torch.distributed.tensor import DTensor

        reference, ids = _fsdp_model()
        ref_out, ref_grads = _fsdp_step(reference, ids)  # one process, unsharded
        gated, _ = _fsdp_model()
        names = GatesReport.of(gated).names
        mesh = init_device_mesh("cpu", (WORLD,))
        # the graph calls leaf modules, not the block containers the trace flattened:
        # shard the leaves of each block, then the root (which holds the gates)
        for node in gated.graph.nodes:
            if node.op == "call_module" and node.target.startswith("h."):
                module = gated.get_submodule(node.target)
                if any(True for _ in module.parameters()):
                    fully_shard(module, mesh=mesh)
        fully_shard(gated, mesh=mesh)
        params = dict(gated.named_parameters())
        assert all(isinstance(p, DTensor) for p in params.values())
        assert all(params[n].shape == (1,) for n in names)
        out, grads = _fsdp_step(gated, ids)
        assert torch.allclose(out, ref_out, rtol=1e-5, atol=1e-6)
        for name in names:
            grad = grads[name].full_tensor()
            assert grad.abs().item() > 0 and math.isfinite(grad.item()), (name, grad)
            assert torch.allclose(grad, ref_grads[name], rtol=1e-4, atol=1e-7), name
        optim = torch.optim.SGD(gated.parameters(), lr=0.1)
        optim.step()  # the gate opens where its gradient says
        for name in names:
            assert torch.allclose(params[name].full_tensor(), -0.1 * ref_grads[name],
                                  rtol=1e-4, atol=1e-7)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    leave()  # gloo's threads can abort a finished rank at interpreter teardown


@pytest.mark.slow  # two spawned gloo processes
def test_gated_module_trains_under_fsdp2_on_two_gloo_ranks():
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("needs torch.distributed with gloo")
    run_ranks(_fsdp_worker, (free_port(),), WORLD, TIMEOUT_S)


def test_zero_dim_parameters_are_what_fsdp2_refuses():
    # why the scalar gate has shape (1,): FSDP2 needs a dimension to shard
    from torch.distributed.fsdp._fully_shard._fsdp_init import _verify_managed_param

    with pytest.raises(ValueError, match="scalar"):
        _verify_managed_param("alpha", nn.Parameter(torch.zeros(())))
    _verify_managed_param("alpha", nn.Parameter(torch.zeros(1)))


# -- the example ------------------------------------------------------------------------------

@pytest.mark.slow  # runs the example in a fresh process
def test_example_draws_every_curve_and_gates_every_block(tmp_path):
    import subprocess
    import xml.etree.ElementTree as ET
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "curves.svg"
    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.run([sys.executable, str(root / "examples" / "deep_mlp_rezero.py"),
                           "--quick", "--out", str(out)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "gated 20 residual joins" in proc.stdout
    svg = ET.parse(out).getroot()
    lines = [e for e in svg.iter() if e.tag.endswith("polyline")]
    labels = [e.text for e in svg.iter() if e.tag.endswith("text")]
    assert len(lines) == (4 if "init_pass" in labels[-1] else 3)
    assert any(t and t.startswith("gate_residuals") for t in labels)
    assert all(len(e.get("points").split()) >= 2 for e in lines)


def test_a_gate_never_lands_on_one_of_the_models_own_modules():
    # a hand-made graph whose merge claims to run inside `fc2`, a leaf the graph calls:
    # the gate goes to the root instead, named after that path
    traced = fx.symbolic_trace(_Sum("method"))
    merge = next(n for n in traced.graph.nodes if n.op == "call_method")
    merge.meta["nn_module_stack"] = {"fc2": ("fc2", nn.Linear)}
    gated = gate_residuals(traced, init=1.0, graph=True)
    assert GatesReport.of(gated).names == ["fc2_residual_gate"]
    assert gated.fc2 is traced.fc2 and set(vars(traced.fc2)) == set(vars(nn.Linear(2, 2)))
    x = torch.randn(3, 8)
    assert torch.equal(gated(x), traced(x))
