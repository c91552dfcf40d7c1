"""The analysis (``zeta_fx.analysis``, ``zeta_fx.analysis.joins``): what is data, what is a residual join.

Only value edges are data flow (shape queries and ``torch._assert`` are metadata); an
additive merge is a residual join only where the values strictly between fork and merge are
used on the way to it alone (an FPN top-down sum is not one; ``cat`` never is), while the
fork itself may have other uses. The zero facts have their own file, ``test_facts.py``.
"""

import torch
import torch.nn.functional as F
from torch import fx, nn

from claims import assert_only_zeroed, check_pass, snapshot
from zeta_fx import zero_init_pass
from zeta_fx.analysis import GraphView
from zeta_fx.models import UNet

SEQ = (torch.randn(2, 5, 16),)


# -- value flow: metadata is not data ------------------------------------------------------
class ShapeQueries(nn.Module):
    """The branch reads x's shape and asserts on it: metadata, not data flow."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)

    def forward(self, x):
        b, t, c = x.shape
        torch._assert(x.dim() == 3, "expects (B, T, C)")
        h = self.fc1(x.reshape(b * t, c))
        return x + self.fc2(F.silu(h)).view(b, t, x.size(-1))


def test_shape_queries_are_not_data_flow():
    torch.manual_seed(0)
    check_pass(ShapeQueries(), modules={"fc2"}, inputs=SEQ)


# -- residual joins: which merges, which fork ----------------------------------------------
def conv_bn(c_in, c_out, k=3):
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False),
                         nn.BatchNorm2d(c_out))


class FPN(nn.Module):
    """Top-down sum: p4 = lat4(c4) + up(p5); p5 is also an output, so no join."""

    def __init__(self):
        super().__init__()
        self.body4, self.body5 = conv_bn(8, 8), conv_bn(8, 8)
        self.lat4, self.lat5 = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)
        self.out4 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        c4 = self.body4(x)
        c5 = self.body5(F.max_pool2d(c4, 2))
        p5 = self.lat5(c5)
        p4 = self.lat4(c4) + F.interpolate(p5, scale_factor=2.0, mode="nearest")
        return self.out4(p4), p5


def test_fpn_top_down_sum_is_not_a_join():
    model = FPN()
    before = snapshot(model)
    report = zero_init_pass(model)
    assert report.modules == []
    assert_only_zeroed(model, before, set())
    (skip,) = report.skipped
    assert skip.node == "add" and "not a residual join" in skip.reason
    assert "`lat5` is also used by `output`" in skip.reason


class DenseLayer(nn.Module):
    def __init__(self, c_in, growth=4):
        super().__init__()
        self.conv = conv_bn(c_in, growth)

    def forward(self, x):
        return torch.cat([x, self.conv(F.relu(x))], dim=1)


def test_cat_merges_are_never_joins():
    model = nn.Sequential(DenseLayer(8), DenseLayer(12))
    before = snapshot(model)
    report = zero_init_pass(model)
    assert report.modules == [] and report.skipped == []
    assert_only_zeroed(model, before, set())


def test_unet_encoder_output_kept_for_cat_still_forks_next_block():
    view = GraphView(fx.symbolic_trace(UNet()))
    join = next(j for j in view.joins() if j.ok and any(
        n.target == "mid_res1.out_layers.3" for b in j.branches for n in j.sides[b]))
    users = {u.target for u in view.data_users[join.fork]}
    assert torch.cat in users  # the fork is also kept for the decoder's cat
    assert all(j.merge.target is not torch.cat for j in view.joins())

