"""The pass agrees with torchvision's own ``zero_init_residual=True`` on every ResNet family."""

import pytest
import torch
import torchvision

from claims import assert_graph_claims, fixed_inputs, residual_rows
from zeta_fx import zero_init_pass
from zeta_fx.capture import capture

RESNETS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
           "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"]


@pytest.mark.parametrize("name", RESNETS)
def test_matches_zero_init_residual_bit_for_bit(name):
    factory = getattr(torchvision.models, name)
    torch.manual_seed(0)
    reference = factory(zero_init_residual=True)
    torch.manual_seed(0)
    model = factory()  # same seed: identical init except what zero_init_residual zeroes

    report = zero_init_pass(model, rule="residual_branch_last")

    ref_zeroed = {fqn for fqn, m in reference.named_modules()
                  if isinstance(m, torch.nn.BatchNorm2d) and not m.weight.any()}
    assert set(report.modules) == ref_zeroed
    assert len(ref_zeroed) == sum(len(getattr(model, f"layer{i}")) for i in range(1, 5))
    assert not any("downsample" in fqn for fqn in report.params)
    assert report.skipped == []
    # BN biases start at zero in torchvision, so the whole state must be bit-identical.
    ref_state, state = reference.state_dict(), model.state_dict()
    for key in ref_state:
        assert torch.equal(ref_state[key], state[key]), key


def test_resnet_blocks_are_identities_after_the_pass():
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    zero_init_pass(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for layer in (model.layer1, model.layer3):
            block = layer[1]  # identity skip: block(x) == relu(x)
            h = torch.randn(1, block.conv1.in_channels, 8, 8)
            assert torch.equal(block(h), torch.relu(h))
    # and on the graph the pass captured every row's merge equals its skip (eval and train)
    gm = capture(model)
    report = zero_init_pass(model, dry_run=True)
    assert len(residual_rows(report)) == 8
    assert_graph_claims(model, report, fixed_inputs((x,)), gm=gm, seeds=(0,))
    assert gm(x).shape == (1, 1000)
