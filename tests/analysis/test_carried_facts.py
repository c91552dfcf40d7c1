"""Past the first block: what a proven merge and the guards models use carry onward.

Once block 0's branch is zeroed, block 1 reads a value the zeroing reached; its guards must
be proven, not assumed: a state-space model's ``exp(segsum(A * dt))`` with ``-inf`` above the
diagonal, a router's ``topk / (topk.sum(-1) + eps)``, a divisor ``skip + branch`` that is the
(positive) skip once the branch is zero. Each claim is judged by running the model; the
structures that cannot be proven (a value that may be positive under ``exp``, a divisor
whose branch stays unzeroed in a sweep with fewer parameters) are left alone with a reason.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from claims import (assert_blocks_equal_skip, assert_each_zeroed_needed, check_pass,
                    fixed_inputs, params_of, snapshot)
from zeta_fx import zero_init_pass
from zeta_fx.analysis.facts import Fact
from zeta_fx.capture.front import capture_model
from zeta_fx.analysis.view import GraphView

D, L = 8, 4


def segment_sum(a: torch.Tensor) -> torch.Tensor:
    """Mamba-2's segment sums: ``-inf`` above the diagonal, cumulative sums below."""
    n = a.size(-1)
    a = a[..., None].expand(*a.size(), n)
    keep = torch.tril(torch.ones(n, n, dtype=torch.bool), diagonal=-1)
    a = a.masked_fill(~keep, 0)
    s = torch.cumsum(a, dim=-2)
    keep = torch.tril(torch.ones(n, n, dtype=torch.bool), diagonal=0)
    return s.masked_fill(~keep, -torch.inf)


class Scan(nn.Module):
    """A state-space mixer's intra-chunk part: ``out(exp(segsum(A * dt)) @ v)``."""

    def __init__(self, negate: bool = True, low: float = 0.0) -> None:
        super().__init__()
        self.negate, self.low = negate, low
        self.A_log = nn.Parameter(torch.randn(1))
        self.dt = nn.Linear(D, 1)
        self.v = nn.Linear(D, D)
        self.out = nn.Linear(D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, L, D)
        A = -torch.exp(self.A_log) if self.negate else torch.exp(self.A_log)
        dt = torch.clamp(nn.functional.softplus(self.dt(x)), self.low, float("inf"))
        decay = torch.exp(segment_sum((A * dt).squeeze(-1)))  # (batch, L, L)
        return self.out(decay @ self.v(x))


class Stack(nn.Module):
    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return x


def _x() -> torch.Tensor:
    return torch.randn(2, L, D)


def _claims(model: Stack):
    return [(b, lambda x: torch.zeros_like(x)) for b in model.blocks]


def test_every_scan_block_after_the_first_is_zeroed_and_each_is_its_skip():
    torch.manual_seed(0)
    model = Stack([Scan() for _ in range(3)])
    before = snapshot(model)
    report = check_pass(model, params=params_of(*(f"blocks.{i}.out" for i in range(3))),
                        inputs=(_x(),), example_inputs=(_x(),))
    # each block's output is exactly zero (the merge is its skip) and each zero is needed
    assert_blocks_equal_skip(model, _claims(model), fixed_inputs((_x(),)), before=before)
    assert_each_zeroed_needed(model, before, report, _claims(model), fixed_inputs((_x(),)))


def test_exp_of_masked_values_that_may_be_positive_is_not_proven():
    # A = +exp(A_log): exp(segsum) may overflow, so block 1 (reached by block 0's zeroing)
    # is left alone, with the reason
    torch.manual_seed(0)
    model = Stack([Scan(negate=False) for _ in range(2)])
    report = check_pass(model, params=params_of("blocks.0.out"), inputs=(_x(),), example_inputs=(_x(),))
    reasons = [s.reason for s in report.skipped if s.module == "blocks.1.out"]
    assert reasons and "non-finite" in reasons[0], report.table()


def test_dt_clamped_below_zero_may_be_negative_and_is_not_proven():
    # clamp(min=-1) leaves dt possibly negative: A * dt may be positive
    torch.manual_seed(0)
    model = Stack([Scan(low=-1.0) for _ in range(2)])
    check_pass(model, params=params_of("blocks.0.out"), inputs=(_x(),), example_inputs=(_x(),))


class Router(nn.Module):
    """DeepSeek-V3's routing: sigmoid scores, top-k by index, ``w / (w.sum(-1) + 1e-20)``."""

    def __init__(self, experts: int = 4, k: int = 2, eps: float = 1e-20) -> None:
        super().__init__()
        self.k, self.eps = k, eps
        self.gate = nn.Linear(D, experts, bias=False)
        self.experts = nn.ModuleList(nn.Linear(D, D) for _ in range(experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.gate(x).sigmoid()
        idx = torch.topk(scores.masked_fill(scores < 0.1, float("-inf")), self.k, dim=-1)[1]
        w = scores.gather(-1, idx)
        w = w / (w.sum(dim=-1, keepdim=True) + self.eps)
        out = torch.stack([e(x) for e in self.experts], dim=-2)  # (..., experts, D)
        picked = out.gather(-2, idx[..., None].expand(*idx.shape, D))
        return (w[..., None] * picked).sum(-2)


def test_router_normalisation_past_the_first_block():
    torch.manual_seed(0)
    model = Stack([Router() for _ in range(3)])
    before = snapshot(model)
    expected = params_of(*(f"blocks.{b}.experts.{e}" for b in range(3) for e in range(4)))
    report = check_pass(model, params=expected, inputs=(_x(),), example_inputs=(_x(),))
    assert_blocks_equal_skip(model, _claims(model), fixed_inputs((_x(),)), before=before)
    assert_each_zeroed_needed(model, before, report, _claims(model), fixed_inputs((_x(),)))


class ReluRouter(Router):
    """Scores ``relu(gate(x))``: >= 0, and zero on a whole row where every gate is off."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = torch.relu(self.gate(x))
        idx = torch.topk(scores, self.k, dim=-1)[1]
        w = scores.gather(-1, idx)
        w = w / (w.sum(dim=-1, keepdim=True) + self.eps)
        out = torch.stack([e(x) for e in self.experts], dim=-2)
        picked = out.gather(-2, idx[..., None].expand(*idx.shape, D))
        return (w[..., None] * picked).sum(-2)


def test_router_eps_is_a_guard_only_where_the_dtype_holds_it():
    # 1e-20 is a guard in float32 and 0 in float16, where a row of relu scores all zero
    # divides 0 by 0: nothing past block 0 is proven there, and the reason says so
    for dtype, proven in ((torch.float32, True), (torch.float16, False)):
        torch.manual_seed(0)
        model = Stack([ReluRouter() for _ in range(2)]).to(dtype)
        report = zero_init_pass(model, dry_run=True, example_inputs=(_x().to(dtype),))
        assert any(p.startswith("blocks.1.") for p in report.params) == proven, report.table()
        if not proven:
            assert any("is unknown" in s.reason for s in report.skipped
                       if s.module.startswith("blocks.1.")), report.table()


class ExpSkip(nn.Module):
    """``y / (exp(x) + fc(x))``: the divisor is positive exactly when ``fc`` is zero."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / (torch.exp(x) + self.fc(x))


def test_a_proven_zero_operand_carries_the_sign_of_the_other_and_only_then():
    gm = fx.symbolic_trace(ExpSkip())
    div = next(n for n in gm.graph.nodes if n.op == "call_function"
               and getattr(n.target, "__name__", "") == "truediv")
    # fc zero: the divisor is exp(x) > 0, and x / exp(x) is finite
    assert GraphView(gm).facts({"fc.weight", "fc.bias"})[div] != Fact.UNKNOWN
    # only the weight zero: the divisor is exp(x) + bias, which may be zero
    facts = GraphView(gm).facts({"fc.weight"})
    assert facts[div] == Fact.UNKNOWN and "may be zero" in facts.why(div)


def test_sign_of_a_merge_written_in_place_after_it_is_not_carried():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(D, D)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            d = torch.exp(x) + self.fc(x)
            d.sub_(x)  # no longer exp(x): may be zero or negative
            return x / d

    gm = fx.symbolic_trace(Block())
    div = next(n for n in gm.graph.nodes if n.op == "call_function"
               and getattr(n.target, "__name__", "") == "truediv")
    assert GraphView(gm).facts({"fc.weight", "fc.bias"})[div] == Fact.UNKNOWN


class LinearAttention(nn.Module):
    """Sana's linear attention: ``(pad(v, value=fill) @ relu(k) @ relu(q))``, its rows
    ``rows`` divided by the ``divisor`` rows (the padded one: ``>= 0``) plus an eps."""

    def __init__(self, fill: float = 1.0, divisor: slice = slice(-1, None),
                 rows: slice = slice(None, -1)) -> None:
        super().__init__()
        self.fill, self.divisor, self.rows = fill, divisor, rows
        self.qkv = nn.Linear(D, 3 * D)
        self.out = nn.Linear(D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, L, D)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = torch.relu(q).transpose(1, 2), torch.relu(k), v.transpose(1, 2)
        v = nn.functional.pad(v, (0, 0, 0, 1), mode="constant", value=self.fill)
        h = torch.matmul(torch.matmul(v, k), q)  # (batch, D + 1, L)
        h = h[:, self.rows] / (h[:, self.divisor] + 1e-15)
        return self.out(h[:, :D].transpose(1, 2))


def test_linear_attention_normaliser_past_the_first_block():
    torch.manual_seed(0)
    model = Stack([LinearAttention() for _ in range(3)])
    before = snapshot(model)
    report = check_pass(model, params=params_of(*(f"blocks.{i}.out" for i in range(3))),
                        inputs=(_x(),), example_inputs=(_x(),), capture="export")
    assert_blocks_equal_skip(model, _claims(model), fixed_inputs((_x(),)), before=before)
    assert_each_zeroed_needed(model, before, report, _claims(model), fixed_inputs((_x(),)))


def test_linear_attention_normaliser_not_the_padded_row_is_not_proven():
    # the first row of v @ relu(k) may be negative, and so may a row padded with -1: only
    # block 0 (whose input the zeroing does not reach) is zeroed
    for block in (lambda: LinearAttention(divisor=slice(0, 1), rows=slice(1, None)),
                  lambda: LinearAttention(fill=-1.0)):
        torch.manual_seed(0)
        model = Stack([block() for _ in range(2)])
        report = check_pass(model, params=params_of("blocks.0.out"), inputs=(_x(),),
                            example_inputs=(_x(),), capture="export")
        assert any(s.module == "blocks.1.out" for s in report.skipped), report.table()


class MaskedAttention(nn.Module):
    """Single-head attention with scores masked by ``-inf``: causally, or where the
    ``keep`` input (a padding mask) is false."""

    def __init__(self, causal: bool = True) -> None:
        super().__init__()
        self.causal = causal
        self.qkv = nn.Linear(D, 3 * D)
        self.out = nn.Linear(D, D)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        scores = q @ k.transpose(-1, -2)
        n = scores.size(-1)
        if self.causal:
            mask = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
        else:
            mask = ~keep[:, None, :]
        weights = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
        return self.out(weights @ v)


class MaskedStack(nn.Module):
    def __init__(self, causal: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MaskedAttention(causal) for _ in range(2))

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x, keep)
        return x


def test_softmax_over_causal_minus_inf_scores_past_the_first_block():
    torch.manual_seed(0)
    model = MaskedStack(causal=True)
    keep = torch.ones(2, L, dtype=torch.bool)
    before = snapshot(model)
    report = check_pass(model, params=params_of("blocks.0.out", "blocks.1.out"),
                        inputs=(_x(), keep), example_inputs=(_x(), keep), capture="export")
    claims = [(b, lambda x, keep: torch.zeros_like(x)) for b in model.blocks]
    make = fixed_inputs((_x(), keep))
    assert_blocks_equal_skip(model, claims, make, before=before)
    assert_each_zeroed_needed(model, before, report, claims, make)


def test_softmax_over_a_padding_mask_is_not_proven_and_says_why():
    # keep may be false on a whole row: softmax of all -inf is NaN (and NaN * 0 is NaN)
    torch.manual_seed(0)
    model = MaskedStack(causal=False)
    keep = torch.ones(2, L, dtype=torch.bool)
    report = check_pass(model, params=params_of("blocks.0.out"), inputs=(_x(), keep),
                        example_inputs=(_x(), keep), capture="export")
    assert any(s.module == "blocks.1.out" for s in report.skipped), report.table()
    # the softmax is where it is lost, and its reason says why
    gm = capture_model(model, example_inputs=(_x(), keep), method="export").gm
    facts = GraphView(gm, model).facts(params_of("blocks.0.out"))
    softmaxes = [n for n in gm.graph.nodes if "softmax" in str(n.target)]
    assert facts[softmaxes[1]] == Fact.UNKNOWN and "whole row" in facts.why(softmaxes[1])


def test_a_clamp_whose_max_is_below_its_min_is_not_a_positive_guard():
    # clamp(v, min=1e-3, max=-1) is -1 everywhere: dividing by it is finite, but its sign
    # is not what min says; with max >= min the divisor is >= 1e-3
    for high, proven in ((-1.0, False), (10.0, True)):
        class Block(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.fc = nn.Linear(D, D)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return torch.log(torch.clamp(self.fc(x), min=1e-3, max=high))

        gm = fx.symbolic_trace(Block())
        log = next(n for n in gm.graph.nodes if "log" in str(n.target))
        facts = GraphView(gm).facts({"fc.weight", "fc.bias"})
        assert (facts[log] != Fact.UNKNOWN) == proven, high
