"""Capture with torch.export when symbolic tracing cannot follow the model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from claims import OutputRecorder, assert_unchanged, check_pass, params_of, snapshot
from zeta_fx import CaptureError, TiedParameterError, zero_init_pass
from zeta_fx.capture import capture, export_capture
from zeta_fx.models import GPT, DiT, SEResNet, UNet


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


def test_without_example_inputs_the_error_says_how_to_enable_export():
    model = Routed()
    before = snapshot(model)
    with pytest.raises(CaptureError) as info:
        zero_init_pass(model, rule="residual_branch_last")
    message = str(info.value)
    assert "`block` (RoutedBlock)" in message
    assert "example_inputs" in message and "torch.export" in message
    assert_unchanged(model, before)


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


def test_export_failure_reports_both_captures():
    model = Routed()
    with pytest.raises(CaptureError) as info:
        zero_init_pass(model, example_inputs=(torch.randn(4, 5),))  # wrong width
    message = str(info.value)
    assert "symbolic tracing failed" in message and "torch.export (non-strict) failed" in message


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


def test_transformer_encoder_layer_traced_through_by_export():
    torch.manual_seed(0)
    model = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, norm_first=True)
    with pytest.raises(CaptureError):  # its forward branches on the input
        zero_init_pass(model)
    x = torch.randn(2, 5, 16)
    check_pass(model, params=params_of("self_attn.out_proj", "linear2"),
                  example_inputs=(x,))
    assert torch.equal(model.eval()(x), x)


# -- Hugging Face transformers (built from small configs; nothing is downloaded) ---------------
transformers = pytest.importorskip("transformers")


def _hf(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "bert":
        config = transformers.BertConfig(
            vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=32)
        return transformers.BertModel(config).eval()
    if name == "gpt2":
        config = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4,
                                         n_positions=32, use_cache=False)
        return transformers.GPT2LMHeadModel(config).eval()
    config = transformers.LlamaConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=32,
        use_cache=False)
    return transformers.LlamaForCausalLM(config).eval()


HF_EXPECTED = {
    "bert": ("encoder.layer.{}.attention.output.dense", "encoder.layer.{}.output.dense"),
    "gpt2": ("transformer.h.{}.attn.c_proj", "transformer.h.{}.mlp.c_proj"),
    "llama": ("model.layers.{}.self_attn.o_proj", "model.layers.{}.mlp.down_proj"),
}


@pytest.mark.parametrize("name", ["bert", "gpt2", "llama"])
def test_hugging_face_models_via_export(name):
    model = _hf(name)
    ids = torch.randint(0, 100, (2, 8))
    with pytest.raises(CaptureError, match="example_inputs"):
        zero_init_pass(model, rule="residual_branch_last", dry_run=True)
    modules = [m.format(i) for i in range(2) for m in HF_EXPECTED[name]]
    names = ("weight",) if name == "llama" else ("weight", "bias")
    kwargs = {} if name == "bert" else {"use_cache": False}
    report = check_pass(model, params=params_of(*modules, names=names),
                           example_inputs=(ids,), example_kwargs=kwargs)
    assert report.modules == modules
    rec = OutputRecorder(model, modules)
    with torch.no_grad():
        model(ids, **kwargs)
    rec.assert_all_zero()


def test_hugging_face_tied_lm_head_refused():
    model = _hf("gpt2")
    before = snapshot(model)
    with pytest.raises(TiedParameterError) as info:
        zero_init_pass(model, rule="output_layer", example_inputs=(torch.randint(0, 100, (1, 8)),),
                       example_kwargs={"use_cache": False})
    assert "`lm_head.weight`" in str(info.value)
    assert "`transformer.wte.weight`" in str(info.value)
    assert_unchanged(model, before)


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
