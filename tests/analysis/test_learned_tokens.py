"""Learned tokens are data: a value computed from parameters alone (a class token, perceiver
latents) that a block updates with ``tok = tok + f(tok, x)`` is a residual stream, and its
merges are joins like any other. Every other parameter-only value stays a weight.

Judged by running: the exact parameters zeroed, every other bit kept, each claimed merge
equal to its skip on the captured graph, the token stream unchanged by its blocks after
the pass, and each zeroed module needed."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from claims import assert_unchanged, check_pass, params_of, snapshot, state_swapped
from zeta_fx import zero_init_pass
from zeta_fx.analysis import GraphView

X = (torch.randn(2, 6, 8),)


class ClassAttention(nn.Module):
    """CaiT's class-attention stage: the class token attends to ``cat(tok, x)`` and is
    updated in place of the stream; then an MLP on the token alone."""

    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.randn(1, 1, 8))
        self.norm1, self.norm2 = nn.LayerNorm(8), nn.LayerNorm(8)
        self.q, self.kv, self.proj = nn.Linear(8, 8), nn.Linear(8, 16), nn.Linear(8, 8)
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)

    def forward(self, x):
        tok = self.cls_token.expand(x.shape[0], -1, -1)
        u = self.norm1(torch.cat((tok, x), dim=1))
        k, v = self.kv(u).chunk(2, dim=-1)
        attn = torch.softmax(self.q(u[:, :1]) @ k.transpose(1, 2), dim=-1)
        tok = tok + self.proj(attn @ v)
        tok = tok + self.fc2(F.gelu(self.fc1(self.norm2(tok))))
        return torch.cat((tok, x), dim=1)


def _token_stream_is_its_own(model: ClassAttention) -> bool:
    x = torch.randn(3, 6, 8)
    with torch.no_grad():
        out = model(x)
    return torch.equal(out[:, :1], model.cls_token.expand(3, -1, -1)) and torch.equal(out[:, 1:], x)


def test_class_token_updates_are_joins():
    torch.manual_seed(0)
    model = ClassAttention().eval()
    before = snapshot(model)
    check_pass(model, params=params_of("proj", "fc2"), inputs=X)
    assert _token_stream_is_its_own(model)
    for module in ("proj", "fc2"):  # each is needed
        with state_swapped(model, {p: before[p] for p in params_of(module)}):
            assert not _token_stream_is_its_own(model), module


def test_the_token_is_data_with_no_data_inputs_and_no_weight():
    view = GraphView(fx.symbolic_trace(ClassAttention()))
    assert [t.name for t in view.tokens] == ["expand"]
    nodes = {n.name: n for n in view.nodes}
    assert view.is_data[nodes["expand"]] and view.data_inputs[nodes["expand"]] == ()
    assert not view.is_data[nodes["cls_token"]]
    assert nodes["cat"] not in view.layer_nodes  # the token is no weight of the cat


class Perceiver(nn.Module):
    """Perceiver latents cross-attending to the input, then a self MLP; twice."""

    def __init__(self) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(4, 8))
        self.q, self.k, self.v = nn.ModuleList(nn.Linear(8, 8) for _ in range(3))
        self.out = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)])
        self.fc1 = nn.ModuleList([nn.Linear(8, 16), nn.Linear(8, 16)])
        self.fc2 = nn.ModuleList([nn.Linear(16, 8), nn.Linear(16, 8)])

    def forward(self, x):
        lat = self.latents.unsqueeze(0).expand(x.shape[0], -1, -1)
        for i in range(2):
            w = torch.softmax(self.q(lat) @ self.k(x).transpose(1, 2), dim=-1)
            lat = lat + self.out[i](w @ self.v(x))
            lat = lat + self.fc2[i](F.gelu(self.fc1[i](lat)))
        return lat


def test_perceiver_latents_are_the_stream():
    torch.manual_seed(0)
    model = Perceiver().eval()
    check_pass(model, params=params_of("out.0", "fc2.0", "out.1", "fc2.1"), inputs=X)
    x = torch.randn(3, 6, 8)
    with torch.no_grad():
        assert torch.equal(model(x), model.latents.unsqueeze(0).expand(3, -1, -1))


# -- ordinary weights stay weights ----------------------------------------------------------
class Ordinary(nn.Module):
    """A position embedding added to the input, LayerScale, a bias added beside the join,
    and a learned query added to data that does not read it."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, 6, 8))
        self.fc1, self.fc2, self.other = nn.Linear(8, 16), nn.Linear(16, 8), nn.Linear(8, 8)
        self.gamma = nn.Parameter(torch.full((8,), 0.5))
        self.bias = nn.Parameter(torch.randn(8))
        self.query = nn.Parameter(torch.randn(1, 6, 8))

    def forward(self, x):
        x = x + self.pos
        x = x + self.gamma * self.fc2(F.gelu(self.fc1(x))) + self.bias
        return self.query + self.other(x)


def test_position_embeddings_layer_scales_and_biases_stay_weights():
    view = GraphView(fx.symbolic_trace(Ordinary()))
    assert view.tokens == frozenset()
    torch.manual_seed(0)
    model = Ordinary().eval()
    # LayerScale's gamma ends the branch and the bias beside the join is part of it; the
    # position embedding and the query (added to data they do not reach) are left as they are
    check_pass(model, params={"gamma", "bias"}, inputs=X)


class LeakyToken(nn.Module):
    """The token's update is also returned on its own: not a join (its branch value leaves),
    so nothing may be zeroed for it."""

    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Parameter(torch.randn(1, 1, 8))
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        t = self.tok.expand(x.shape[0], -1, -1)
        h = self.fc(torch.cat((t, x), dim=1)[:, :1])
        return t + h, h


def test_a_token_merge_whose_branch_leaks_is_left_alone_with_a_reason():
    torch.manual_seed(0)
    model = LeakyToken().eval()
    before = snapshot(model)
    report = zero_init_pass(model)
    assert not report.params, report.table()
    assert any(s.node == "add" for s in report.skipped), report.table()
    assert_unchanged(model, before)


class TokenFromTheBranchsWeight(nn.Module):
    """The token is a row of the very weight that ends its branch: zeroing that weight
    would zero the skip too, so the branch end is left alone."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        tok = self.fc.weight[:1].unsqueeze(0).expand(x.shape[0], -1, -1)
        h = torch.relu(self.fc1(torch.cat((tok, x), dim=1)))[:, :1]
        return tok + self.fc(h)


def test_a_parameter_the_token_reads_is_not_zeroed_as_its_branch_end():
    torch.manual_seed(0)
    model = TokenFromTheBranchsWeight().eval()
    before = snapshot(model)
    report = zero_init_pass(model)
    assert "fc.weight" not in report.params, report.table()
    assert any("fc" == s.module for s in report.skipped), report.table()
    assert not report.params, report.table()  # (fc1 alone leaves fc's bias on the branch)
    assert_unchanged(model, before)
