"""``residual_branch_last`` on each block structure the core must understand.

Each test asserts the exact set of zeroed modules, that nothing else changed by a bit, and
that on a forward pass every residual row's merge equals its skip (``check_pass``). Merges
that are not residual joins (FPN sums, ``cat``) are in ``test_analysis.py``; parallel paths
of equal weight and a branch ending in a sigmoid, left alone, in ``test_bad_inputs.py``.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from claims import assert_only_zeroed, block_mismatches, check_pass, fixed_inputs, snapshot
from zeta_fx import zero_init_pass
from zeta_fx.models import GPT, SEBottleneck, SEResNet

IMG = (torch.randn(2, 8, 8, 8),)
SEQ = (torch.randn(2, 5, 16),)


# -- squeeze-excite ------------------------------------------------------------------------
def test_squeeze_excite_zeroes_norm_before_gate_not_gate_conv():
    torch.manual_seed(0)
    model = nn.Sequential(SEBottleneck(8, 4, 8), SEBottleneck(8, 4, 16, stride=2))
    report = check_pass(model, modules={"0.bn3", "1.bn3"}, inputs=IMG)
    assert not any("se." in m for m in report.modules)
    assert "downsample" not in " ".join(report.params)
    identity, projection = (row["site"] for row in report.touched)
    assert (identity["skip_kind"], identity["skip"], identity["fork"]) == ("identity", "input_1",
                                                                           "input_1")
    assert projection["skip_kind"] == "projection"
    assert projection["skip_modules"] == ["1.downsample.0", "1.downsample.1"]


def test_se_resnet_demo_model():
    torch.manual_seed(0)
    model = SEResNet()
    report = check_pass(model, modules={f"blocks.{i}.bn3" for i in range(6)},
                        inputs=(torch.randn(2, 3, 16, 16),))
    assert report.skipped == []


# -- functional layers -----------------------------------------------------------------------
class FunctionalBN(nn.BatchNorm2d):
    """A BatchNorm subclass whose forward calls F.batch_norm with its own weight (timm BNAct)."""

    def __init__(self, c, act=True):
        super().__init__(c)
        self.act = nn.ReLU() if act else nn.Identity()

    def forward(self, x):
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         self.training, self.momentum, self.eps)
        return self.act(x)


class StdConv2d(nn.Conv2d):
    """timm's weight-standardised conv: the weight is normalised before F.conv2d."""

    def forward(self, x):
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                         training=True, momentum=0.0, eps=1e-6).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class FunctionalBlock(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), FunctionalBN(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), FunctionalBN(c, act=True)

    def forward(self, x):
        return x + self.bn2(self.conv2(self.bn1(self.conv1(x))))


def test_functional_batchnorm_with_activation_after_the_norm():
    torch.manual_seed(0)
    report = check_pass(FunctionalBlock(), modules={"bn2"}, inputs=IMG)
    assert report.params == ["bn2.weight", "bn2.bias"]  # argument order
    assert report.touched[0]["type"] == "FunctionalBN"


class StdConvBlock(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.conv1 = StdConv2d(c, c, 3, padding=1)
        self.conv2 = StdConv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(x)))


def test_weight_standardised_conv_zeroes_its_raw_weight():
    torch.manual_seed(0)
    model = StdConvBlock()
    report = check_pass(model, modules={"conv2"}, inputs=IMG)
    assert sorted(report.params) == ["conv2.bias", "conv2.weight"]
    x = IMG[0]
    assert torch.equal(model(x), x)  # standardising a zero weight gives zero, not NaN


class PreActBlock(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c), nn.Conv2d(c, c, 3, padding=1)
        self.bn2, self.conv2 = nn.BatchNorm2d(c), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))


def test_pre_activation_block_zeroes_the_last_conv():
    torch.manual_seed(0)
    check_pass(PreActBlock(), modules={"conv2"}, inputs=IMG)


class LayerScale(nn.Module):
    def __init__(self, dim, init=1e-5, inplace=False):
        super().__init__()
        self.inplace = inplace
        self.gamma = nn.Parameter(init * torch.ones(dim))

    def forward(self, x):
        return x.mul_(self.gamma) if self.inplace else x * self.gamma


class ViTBlock(nn.Module):
    """timm's Block: x + drop_path(ls(mlp(norm(x)))) with a Mlp of fc1, GELU, fc2."""

    def __init__(self, dim=16, inplace=False):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
        self.ls = LayerScale(dim, inplace=inplace)

    def forward(self, x):
        return x + self.ls(self.fc2(self.act(self.fc1(self.norm(x)))))


@pytest.mark.parametrize("inplace", [False, True])
def test_layerscale_gamma_is_the_branch_end(inplace):
    torch.manual_seed(0)
    model = nn.Sequential(ViTBlock(inplace=inplace), ViTBlock(inplace=inplace))
    report = check_pass(model, modules={"0.ls", "1.ls"}, inputs=SEQ)
    assert report.params == ["0.ls.gamma", "1.ls.gamma"]
    assert [r["type"] for r in report.touched] == ["LayerScale", "LayerScale"]


# -- drop-path -------------------------------------------------------------------------------
def drop_path(x, drop_prob: float = 0.0, training: bool = False):
    """timm's drop_path: the random mask is built from x's shape, not its values."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = x.new_empty(shape).bernoulli_(keep).div_(keep)
    return x * mask


class DropPath(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        return drop_path(x, self.p, self.training)


class DropPathBlock(nn.Module):
    def __init__(self, dim=16, p=0.2):
        super().__init__()
        self.fc1, self.fc2, self.drop_path = nn.Linear(dim, dim), nn.Linear(dim, dim), DropPath(p)

    def forward(self, x):
        return x + self.drop_path(self.fc2(F.gelu(self.fc1(x))))


def test_drop_path_in_training_mode_passes_zero():
    torch.manual_seed(0)
    model = DropPathBlock().train()  # traced in training mode: the mask multiply is in the graph
    gm = fx.symbolic_trace(model)
    assert any(n.target == "bernoulli_" for n in gm.graph.nodes)
    before = snapshot(model)
    report = zero_init_pass(gm)
    assert report.modules == ["fc2"]
    assert_only_zeroed(model, before, {"fc2.weight", "fc2.bias"})
    x = SEQ[0]
    assert torch.equal(model(x), x)


def test_torchvision_stochastic_depth():
    from torchvision.ops import StochasticDepth

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.sd = nn.Linear(16, 16), StochasticDepth(0.5, "row")

        def forward(self, x):
            return x + self.sd(self.fc(x))

    torch.manual_seed(0)
    check_pass(Block().train(), modules={"fc"}, inputs=SEQ)


# -- shared modules ----------------------------------------------------------------------------
class Residual(nn.Module):
    def __init__(self, dim=16):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x):
        return x + self.fc2(F.relu(self.fc1(x)))


class SharedBlockTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Residual()

    def forward(self, x):
        return self.block(self.block(x))


def test_shared_block_is_zeroed_once_and_every_site_listed():
    torch.manual_seed(0)
    model = SharedBlockTwice()
    report = check_pass(model, modules={"block.fc2"}, inputs=SEQ)
    assert [row["node"] for row in report.touched] == ["block_fc2", "block_fc2_1"]
    assert [row["module"] for row in report.touched] == ["block.fc2", "block.fc2"]
    assert all(row["shared"] for row in report.touched)
    assert report.elements == 16 * 16 + 16  # counted once


class SharedLastAndElsewhere(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.proj = nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x):
        h = x + self.proj(F.relu(self.fc(x)))
        return self.proj(h)  # the same module again, outside any branch


def test_shared_module_used_elsewhere_is_left_alone_with_reason():
    torch.manual_seed(0)
    model = SharedLastAndElsewhere()
    before = snapshot(model)
    report = zero_init_pass(model)
    assert report.modules == []
    assert_only_zeroed(model, before, set())
    assert any(s.module == "proj" and "`proj` is also used at `proj_1`" in s.reason
               for s in report.skipped), [s.reason for s in report.skipped]


# -- parallel branches ------------------------------------------------------------------------
class ParallelBlock(nn.Module):
    """GPT-J style: x + attn(ln(x)) + mlp(ln(x)); the shared ln belongs to neither branch."""

    def __init__(self, dim=16):
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.attn_in, self.attn_out = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.mlp_in, self.mlp_out = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        h = self.ln(x)
        return x + self.attn_out(torch.tanh(self.attn_in(h))) + self.mlp_out(F.gelu(self.mlp_in(h)))


def test_parallel_transformer_block_zeroes_both_branches():
    torch.manual_seed(0)
    model = ParallelBlock()
    check_pass(model, modules={"attn_out", "mlp_out"}, inputs=SEQ)
    x = SEQ[0]
    assert torch.equal(model(x), x)


# -- transformers and the oracle itself ---------------------------------------------------------
def test_gpt_zeroes_attention_and_mlp_projections_only():
    torch.manual_seed(0)
    model = GPT(n_layer=3, dim=32, dropout=0.1)
    idx = torch.randint(0, 64, (2, 8))
    report = check_pass(model, modules={f"h.{i}.{part}.c_proj" for i in range(3)
                                        for part in ("attn", "mlp")}, inputs=(idx,))
    assert report.skipped == []  # wte + wpe(arange(T)) is not a merge of two data paths
    x = torch.randn(2, 8, 32)
    for block in model.h:  # pre-LN: each block is now the identity
        assert torch.equal(block(x), x)


def test_blocks_are_identities_only_after_the_pass():
    """The oracle is not vacuous: before the pass neither block equals its skip, after it both."""
    torch.manual_seed(0)
    model = nn.Sequential(Residual(), Residual()).eval()
    claims = [(model[0], lambda x: x), (model[1], lambda x: x)]
    assert len(block_mismatches(model, claims, fixed_inputs(SEQ), modes=("eval",))) == 6
    report = check_pass(model, modules={"0.fc2", "1.fc2"}, inputs=SEQ)
    assert [(r["site"]["merge"], r["site"]["skip"]) for r in report.touched] == [
        ("add", "input_1"), ("add_1", "add")]
    assert block_mismatches(model, claims, fixed_inputs(SEQ)) == []
