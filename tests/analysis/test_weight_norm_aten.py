"""Weight norm as aten captures it (``aten._weight_norm(v, g, dim)`` under ``torch.export``
and concrete capture of what symbolic tracing cannot follow) is a weight, zero exactly when its magnitude ``g`` is: the conv that
computes with it is the branch's last layer, and ``g`` (with the bias) is what is zeroed,
as under symbolic capture. Judged by running: exact parameters, every other bit kept, the
block the identity, each merge its skip on the captured graph, each zeroed tensor needed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations, weight_norm

from claims import check_pass, snapshot, assert_unchanged, state_swapped
from zeta_fx import zero_init_pass

X = (torch.randn(2, 4, 16),)
G = "conv2.parametrizations.weight.original0"


class WNBlock(nn.Module):
    """``x + conv2(gelu(conv1(x)))`` with both convs weight-normed (``legacy``: the old hook,
    ``weight_g``/``weight_v``)."""

    def __init__(self, legacy: bool = False, dim: int = 0) -> None:
        super().__init__()
        wrap = (lambda m: weight_norm(m, dim=dim)) if legacy else \
            (lambda m: parametrizations.weight_norm(m, dim=dim))
        self.conv1 = wrap(nn.Conv1d(4, 8, 3, padding=1))
        self.conv2 = wrap(nn.Conv1d(8, 4, 3, padding=1))

    def forward(self, x):
        return x + self.conv2(F.gelu(self.conv1(x)))


def _is_identity(model):
    x = torch.randn(3, 4, 16)
    with torch.no_grad():
        return torch.equal(model(x), x)


@pytest.mark.parametrize("legacy", [False, True])
def test_weight_normed_last_conv_is_zeroed_by_its_magnitude(legacy):
    # (concrete capture of wav2vec2 and EnCodec: tests/libraries/test_value_flow_families.py)
    capture = "export"
    torch.manual_seed(0)
    model = WNBlock(legacy).eval()
    g = "conv2.weight_g" if legacy else G
    before = snapshot(model)
    check_pass(model, params={g, "conv2.bias"}, inputs=X, capture=capture, example_inputs=X)
    assert _is_identity(model)
    for needed in (g, "conv2.bias"):  # un-zeroing either breaks the identity
        with state_swapped(model, {needed: before[needed]}):
            assert not _is_identity(model), needed


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_weight_norm_along_any_dim(dim):
    torch.manual_seed(0)
    model = WNBlock(dim=dim).eval()
    check_pass(model, params={G, "conv2.bias"}, inputs=X, capture="export", example_inputs=X)
    assert _is_identity(model)


class SharedDirection(nn.Module):
    """The weight-normed weight is used again outside the branch: zeroing its magnitude
    would change that use too."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(4, 4, 3, padding=1)
        self.conv2 = parametrizations.weight_norm(nn.Conv1d(4, 4, 3, padding=1))

    def forward(self, x):
        y = x + self.conv2(F.gelu(self.conv1(x)))
        return y, F.conv1d(x, self.conv2.weight, padding=1)


def test_a_weight_norm_also_used_elsewhere_is_left_alone():
    torch.manual_seed(0)
    model = SharedDirection().eval()
    before = snapshot(model)
    report = zero_init_pass(model, capture="export", example_inputs=X)
    assert G not in report.params, report.table()
    # the other conv1 is no end of the branch either: zeroing it leaves conv2's bias
    assert not report.params, report.table()
    assert_unchanged(model, before)
