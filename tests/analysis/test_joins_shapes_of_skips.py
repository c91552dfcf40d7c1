"""Joins on small graphs: parallel branches of a fused projection, a skip scaled by its own
``Scale`` module, and a stacked sum whose stack is read again (each judged by running)."""
from __future__ import annotations

import torch
from torch import fx, nn

from claims import check_pass, params_of
from zeta_fx import zero_init_pass
from zeta_fx.analysis.view import GraphView


class Scale(nn.Module):
    def __init__(self, dim: int, init: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), init))

    def forward(self, x):
        return x * self.scale


class ScaledSkip(nn.Module):
    """``res_scale(x) + fc2(relu(fc1(x)))``."""

    def __init__(self) -> None:
        super().__init__()
        self.res_scale = Scale(4, 0.5)
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 4)

    def forward(self, x):
        return self.res_scale(x) + self.fc2(torch.relu(self.fc1(x)))


class FusedParallel(nn.Module):
    """``x + ls(out_a(a) + out_b(relu(b)))`` with ``a, b = split(proj(x))``, as timm's
    ParallelScalingBlock: the inner sum of two parallel branches sits inside the block's
    branch (an identity layer scale keeps it a sum of its own)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 8)
        self.out_a, self.out_b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.ls = nn.Identity()

    def forward(self, x):
        a, b = self.proj(x).split(4, dim=-1)
        return x + self.ls(self.out_a(torch.tanh(a) * a) + self.out_b(torch.relu(b)))


class SharedStack(nn.Module):
    """SK-style: ``s = stack(paths); s.sum(0)`` feeds an attention that reweights ``s``."""

    def __init__(self) -> None:
        super().__init__()
        self.p0, self.p1, self.fc = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        s = torch.stack([self.p0(x), self.p1(x)])
        w = torch.sigmoid(self.fc(s.sum(0)))
        return (s * w).sum(0)


def test_a_skip_scaled_by_its_own_scale_module_is_a_skip():
    torch.manual_seed(0)
    model = ScaledSkip().eval()
    x = torch.randn(3, 4)
    report = check_pass(model, params=params_of("fc2"), inputs=(x,))
    (row,) = report.touched
    assert row["site"]["skip"] == "mul" and "res_scale" in row["position"]
    with torch.no_grad():
        assert torch.equal(model(x), model.res_scale(x))
        model.fc2.bias.fill_(1.0)  # un-zeroing breaks the identity: the row was needed
        assert not torch.equal(model(x), model.res_scale(x))


def test_both_parallel_branches_are_zeroed_for_the_outer_join():
    torch.manual_seed(0)
    model = FusedParallel().eval()
    x = torch.randn(3, 4)
    report = check_pass(model, params=params_of("out_a", "out_b"), inputs=(x,))
    assert any("parallel branches of one fused projection" in s.reason
               for s in report.skipped), report.table()
    with torch.no_grad():
        assert torch.equal(model(x), x)
        for m in (model.out_a, model.out_b):  # each is needed
            m.bias.fill_(1.0)
            assert not torch.equal(model(x), x)
            m.bias.zero_()


def test_a_stacked_sum_whose_stack_is_read_again_is_named_not_a_join():
    torch.manual_seed(0)
    gm = fx.symbolic_trace(SharedStack())
    joins = GraphView(gm).joins()
    named = [j for j in joins if "also read by" in j.reason]
    assert len(named) == 1 and not named[0].ok
    report = zero_init_pass(SharedStack(), dry_run=True)
    assert any("also read by" in s.reason for s in report.skipped), report.table()
