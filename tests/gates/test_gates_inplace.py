"""gate_residuals in the user's own model (issue 21): the gates are parameters on the module
that holds each merge and a forward hook on the branch's last layer, wherever scaling that
layer's output is exactly scaling the branch. The model keeps its class, methods, config,
keyword arguments and dynamic shapes; its state_dict gains the gates only; alpha = 1 is
bit-exact; torch.compile works. Joins where the gate must sit at the merge are left alone
with the reason (graph=True is the opt-in rewrite)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from test_gates import MODELS, _build, _ids, _output
from zeta_fx import gate_residuals, zero_init_pass
from zeta_fx.gates import GatesReport
from zeta_fx.models import GPT, SEResNet

pytestmark = pytest.mark.usefixtures("one_thread")

IN_PLACE = ["gpt", "unet", "dit", "torchvision_resnet18", "timm_vit", "hf_llama"]


def _gate_in_place(name, model, x, **kw):
    needs_examples = MODELS[name][2]
    return gate_residuals(model, example_inputs=x if needs_examples else None, **kw)


@pytest.mark.parametrize("name", IN_PLACE)
def test_alpha_one_is_bit_exact_in_the_users_own_model(name):
    model, x = _build(name)
    cls, keys = type(model), set(model.state_dict())
    with torch.no_grad():
        reference = _output(model(*x))
    report = _gate_in_place(name, model, x, init=1.0)
    assert isinstance(report, GatesReport) and report.names == MODELS[name][3]
    assert type(model) is cls
    assert set(model.state_dict()) - keys == set(report.names)
    assert keys <= set(model.state_dict())
    with torch.no_grad():
        assert torch.equal(_output(model(*x)), reference)


@pytest.mark.parametrize("name", ["gpt", "torchvision_resnet18", "timm_vit"])
def test_alpha_zero_makes_each_gated_branch_add_nothing(name):
    """With every gate 0, the model computes what it computes with each branch's last layer
    zeroed (the branch adds an exact zero either way)."""
    model, x = _build(name)
    zeroed = copy.deepcopy(model)
    zero_init_pass(zeroed, rule="residual_branch_last")
    _gate_in_place(name, model, x, init=0.0)
    with torch.no_grad():
        assert torch.equal(_output(model(*x)), _output(zeroed(*x)))


@pytest.mark.slow  # transformers' Llama, generate and torch.compile
def test_gated_llama_generates_keeps_config_kwargs_batch_sizes_and_compiles():
    model, x = _build("hf_llama")
    cls, config = type(model), model.config
    ids = x[0]
    mask = torch.ones_like(ids)
    with torch.no_grad():
        reference = model(ids, attention_mask=mask).logits
        bigger = model(_ids(3, 5)).logits
    report = gate_residuals(model, init=1.0, example_inputs=(ids,),
                            example_kwargs={"use_cache": False})
    assert report.names == MODELS["hf_llama"][3]
    assert type(model) is cls and model.config is config and hasattr(model, "generate")
    with torch.no_grad():
        assert torch.equal(model(ids, attention_mask=mask).logits, reference)  # keywords
        assert torch.equal(model(_ids(3, 5)).logits, bigger)  # another batch size and length
        generated = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert generated.shape == (1, ids.shape[1] + 3)
    compiled = torch.compile(model, backend="aot_eager", dynamic=True)
    with torch.no_grad():
        assert torch.equal(compiled(_ids(2, 6)).logits, model(_ids(2, 6)).logits)
    # the gates train: a gradient reaches each
    model.train()
    model(ids).logits.sum().backward()
    assert all(model.get_parameter(n).grad is not None for n in report.names)


def test_gates_survive_deepcopy_and_state_dict_round_trip():
    torch.manual_seed(0)
    model = GPT(n_layer=2).eval()
    report = gate_residuals(model, init=0.25)
    copied = copy.deepcopy(model)
    with torch.no_grad():
        copied.get_parameter(report.names[0]).fill_(0.0)  # the copy's gate, not the original's
    assert model.get_parameter(report.names[0]).item() == 0.25
    fresh = GPT(n_layer=2).eval()
    gate_residuals(fresh, init=1.0)
    fresh.load_state_dict(copied.state_dict())  # strict: the same keys
    idx = _ids()
    with torch.no_grad():
        assert torch.equal(fresh(idx), copied(idx))
        assert not torch.equal(copied(idx), model(idx))


def test_joins_where_the_gate_must_sit_at_the_merge_are_left_alone_with_the_reason():
    """SE-ResNet: the squeeze-excite gate multiplies bn3's output by a function of it, so
    scaling bn3 is not scaling the branch; nothing is added to the model, and graph=True
    still gates those joins at the merge."""
    torch.manual_seed(0)
    model = SEResNet().eval()
    keys = set(model.state_dict())
    report = gate_residuals(model, init=0.0)
    assert report.names == [] and set(model.state_dict()) == keys
    reasons = [s.reason for s in report.skipped if "must sit at the merge" in s.reason]
    assert len(reasons) == 6 and all("graph=True" in r and "`blocks." in r for r in reasons)
    graph = gate_residuals(model, init=0.0, graph=True)
    assert len(GatesReport.of(graph).names) == 6


def test_per_channel_gates_in_place():
    model, x = _build("torchvision_resnet18")
    with torch.no_grad():
        reference = model(*x)
    report = gate_residuals(model, init=1.0, per_channel=True)
    shapes = {g.name: g.shape for g in report.gates}
    assert shapes["layer1.0.gate_bn2"] == (64,) and shapes["layer4.1.gate_bn2"] == (512,)
    assert all(g.dim == 1 for g in report.gates)
    with torch.no_grad():
        assert torch.equal(model(*x), reference)
        model.get_parameter("layer1.0.gate_bn2")[:32] = 0.0  # half the channels closed
        out = model.layer1[0].bn2(torch.randn(1, 64, 4, 4))
    assert not out[:, :32].any() and out[:, 32:].any()


def test_bad_init_changes_nothing():
    torch.manual_seed(0)
    model = GPT(n_layer=1).to(torch.float16)
    keys = set(model.state_dict())
    with pytest.raises(Exception, match="does not fit"):
        gate_residuals(model, init=1e6)
    assert set(model.state_dict()) == keys
    assert not any(m._forward_hooks for m in model.modules())


@pytest.mark.slow  # a diffusers model
def test_diffusers_dit_gates_every_branch_in_place():
    """diffusers' DiT divides its attention output by ``rescale_output_factor`` before the
    merge: a division by a constant is linear, so that branch is gated in place too."""
    pytest.importorskip("diffusers")
    from test_diffusers import _build as build_diffusers
    model, args, kwargs = build_diffusers("DiTTransformer2DModel")
    with torch.no_grad():
        reference = _output(model(*args, **kwargs))
    zeroed = copy.deepcopy(model)
    planned = zero_init_pass(zeroed, rule="residual_branch_last", example_inputs=args,
                             example_kwargs=kwargs)
    report = gate_residuals(model, init=1.0, example_inputs=args, example_kwargs=kwargs)
    assert len(report.names) == len(planned.touched) > 0, report
    with torch.no_grad():
        assert torch.equal(_output(model(*args, **kwargs)), reference)
        for name in report.names:
            model.get_parameter(name).zero_()
        assert torch.equal(_output(model(*args, **kwargs)), _output(zeroed(*args, **kwargs)))
