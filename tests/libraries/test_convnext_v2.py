"""ConvNeXt-V2 (timm, from its registered config, random init): every block starts as the
identity.

A ConvNeXt-V2 block is ``x + mlp(norm(conv_dw(x)))`` with a Global Response Norm inside the
MLP, itself residual: ``x + addcmul(beta, gamma, x * n(x))`` (``torch.addcmul``, which the
pass reads through torch's decomposition). The pass zeroes each block's ``mlp.fc2`` (its
branch's last layer) and each GRN's ``weight`` and ``bias`` (the inner branch; timm builds
them zero already, so they do not change). Judged by running the model: each block returns
its input exactly, on several inputs, and putting back any one ``fc2`` breaks that block.
"""
from __future__ import annotations

import pytest
import torch

from claims import assert_blocks_equal_skip, assert_each_zeroed_needed, fixed_inputs, snapshot
from zeta_fx import zero_init_pass

timm = pytest.importorskip("timm")


def _model():
    torch.manual_seed(0)
    return timm.create_model("convnextv2_atto", pretrained=False).eval()


def test_every_convnext_v2_block_is_its_input_after_the_pass():
    model = _model()
    before = snapshot(model)
    report = zero_init_pass(model)
    blocks = [(name, m) for name, m in model.named_modules()
              if type(m).__name__ == "ConvNeXtBlock"]
    assert len(blocks) == 2 + 2 + 6 + 2  # convnextv2_atto: depths (2, 2, 6, 2)
    fc2 = {f"{name}.mlp.fc2.{p}" for name, _ in blocks for p in ("weight", "bias")}
    assert fc2 <= set(report.params)
    grn = {f"{name}.mlp.grn.{p}" for name, _ in blocks for p in ("weight", "bias")}
    assert set(report.params) - fc2 <= grn  # nothing else
    for name, value in model.state_dict().items():  # zeroed exactly, the rest bit for bit
        assert not value.any() if name in report.params else torch.equal(value, before[name])
    x = torch.randn(2, 3, 32, 32)
    assert_blocks_equal_skip(model, [(m, lambda y: y) for _, m in blocks], fixed_inputs((x,)))
    # each zeroed fc2 is needed: restoring it breaks its block (GRN's were zero already)
    assert_each_zeroed_needed(model, before, report, [(m, lambda y: y) for _, m in blocks],
                              fixed_inputs((x,)))
