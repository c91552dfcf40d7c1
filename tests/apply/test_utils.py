"""The seed utilities, as the seed document describes them."""

import runpy
from pathlib import Path

import pytest
import torch
from torch import nn

from zeta_fx import NoWeightError
from zeta_fx.utils import exists, init_zero_

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_init_zero_linear_in_place_keeps_dtype_device_grad():
    layer = nn.Linear(10, 5).to(torch.float64)
    w_ptr, b_ptr = layer.weight.data_ptr(), layer.bias.data_ptr()
    w_obj = layer.weight
    init_zero_(layer)
    assert layer.weight is w_obj
    assert layer.weight.data_ptr() == w_ptr and layer.bias.data_ptr() == b_ptr
    assert layer.weight.dtype == torch.float64 and layer.weight.device.type == "cpu"
    assert layer.weight.requires_grad and layer.bias.requires_grad
    assert not layer.weight.any() and not layer.bias.any()
    # still trains: gradients flow to the zeroed weight
    layer(torch.randn(3, 10, dtype=torch.float64)).sum().backward()
    assert layer.weight.grad is not None and layer.bias.grad.abs().sum() > 0


def test_init_zero_leaves_batchnorm_buffers_alone():
    bn = nn.BatchNorm2d(4)
    bn.train()(torch.randn(8, 4, 3, 3))
    mean, var, tracked = bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()
    init_zero_(bn)
    assert not bn.weight.any() and not bn.bias.any()
    assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)
    assert torch.equal(bn.num_batches_tracked, tracked)


@pytest.mark.parametrize("layer", [nn.Linear(3, 2, bias=False), nn.Conv2d(2, 2, 3, bias=False),
                                   nn.LayerNorm(4, bias=False)])
def test_init_zero_without_bias(layer):
    init_zero_(layer)
    assert not layer.weight.any()
    assert layer.bias is None


def test_init_zero_half_and_bfloat16():
    for dtype in (torch.float16, torch.bfloat16):
        layer = nn.Linear(4, 4).to(dtype)
        init_zero_(layer)
        assert layer.weight.dtype == dtype and not layer.weight.any()


@pytest.mark.parametrize("module", [nn.ReLU(), nn.Sequential(), nn.Dropout()])
def test_init_zero_without_weight_names_the_type(module):
    with pytest.raises(NoWeightError, match=type(module).__name__) as info:
        init_zero_(module)
    assert isinstance(info.value, TypeError)
    assert "exists(layer, 'weight')" in str(info.value)


def test_exists():
    assert exists(0) and exists("") and exists([]) and not exists(None)
    assert exists(nn.Linear(2, 2), "weight") and exists(nn.Linear(2, 2), "bias")
    assert not exists(nn.Linear(2, 2, bias=False), "bias")  # attribute present but None
    assert not exists(nn.ReLU(), "weight")


def test_seed_example_single_layer(capsys):
    runpy.run_path(str(EXAMPLES / "seed_single_linear.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "Weights:" in out and "Bias:" in out
    assert "tensor([[0., 0., 0., 0., 0., 0., 0., 0., 0., 0.]," in out


def test_seed_example_all_layers(capsys):
    namespace = runpy.run_path(str(EXAMPLES / "seed_all_layers.py"), run_name="__main__")
    model = namespace["model"]
    assert not model[0].weight.any() and not model[0].bias.any()
    assert not model[2].weight.any() and not model[2].bias.any()
    assert "Weights of Third Layer:" in capsys.readouterr().out
