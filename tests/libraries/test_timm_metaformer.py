"""timm's MetaFormers: a skip scaled by its own parameter, and PoolFormer's token mixer.

- PoolFormerV2 / CAFormer (``res_scale_init_values``, on by default in stages 2 and 3):
  ``x = res_scale(x) + layer_scale(mixer(norm(x)))``. ``res_scale`` is a ``Scale`` module
  whose only parameter multiplies its input elementwise: the skip, like a projection
  shortcut made of the fork's own layers. Every branch is zeroed at its end and each
  block outputs exactly ``res_scale2(res_scale1(x))``, with the scales untouched.
- PoolFormer v1's token mixer ``pool(norm(x)) - norm(x)`` has no parameter of its own:
  with layer scale (timm's config, 1e-5) the scale after the mixer is nearest the join and
  is what is zeroed; without it the norm before the mixer is the nearest layer whose
  zeroing makes the branch zero (its weight and bias: ``pool(0) - 0 = 0``), and it is the
  right answer, as this test says: timm has no ``zero_init_last`` for MetaFormers, and no
  other layer sits between that norm and the join. The subtraction inside the mixer is no
  residual join (no parameterised layer between its fork and it) and is named as such.

Judged by running: each block equals its skip, nothing else moved, each zeroed module is
needed, every row's merge equals its skip on the captured graph.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

timm = pytest.importorskip("timm")
import timm.models.metaformer as mf  # noqa: E402

from claims import fixed_inputs, judge, params_of, snapshot  # noqa: E402
from zeta_fx import zero_init_pass  # noqa: E402

X = (torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)),)
SMALL = dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))  # attention: 32 per head
CONFIGS = {  # timm's registered configs (metaformer.py), shrunk
    "poolformerv2": dict(norm_layers=mf.GroupNorm1NoBias, use_mlp_head=False),
    "caformer": dict(token_mixers=[mf.SepConv, mf.SepConv, mf.Attention, mf.Attention],
                     norm_layers=[mf.LayerNorm2dNoBias] * 2 + [mf.LayerNormNoBias] * 2),
    "poolformer": dict(downsample_norm=None, mlp_act=nn.GELU, mlp_bias=True,
                       norm_layers=mf.GroupNorm1, layer_scale_init_values=1e-5,
                       res_scale_init_values=None, use_mlp_head=False),
    "poolformer-no-ls": dict(downsample_norm=None, mlp_act=nn.GELU, mlp_bias=True,
                             norm_layers=mf.GroupNorm1, layer_scale_init_values=None,
                             res_scale_init_values=None, use_mlp_head=False),
}
MIXER_END = {"poolformerv2": "norm1", "caformer": None, "poolformer": "layer_scale1",
             "poolformer-no-ls": "norm1"}
MLP_END = {"poolformer": "layer_scale2"}


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return mf.MetaFormer(**SMALL, **CONFIGS[name]).eval()


def _expected(name: str, model: nn.Module) -> set[str]:
    out = set()
    for s in range(4):
        block = f"stages.{s}.blocks.0"
        mixer = MIXER_END[name] or ("token_mixer.pwconv2" if s < 2 else "token_mixer.proj")
        for end in (mixer, MLP_END.get(name, "mlp.fc2")):
            module = model.get_submodule(f"{block}.{end}")
            out |= {f"{block}.{end}.{p}" for p, v in module.named_parameters() if v is not None}
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_metaformer_block_starts_as_its_skip(name):
    model = build(name)
    before = snapshot(model)
    report = zero_init_pass(model, rule="residual_branch_last", example_inputs=X)
    assert set(report.params) == _expected(name, model), report.table()
    # the skip's own scale is never zeroed
    assert not any("res_scale" in p for p in report.params)
    blocks = [m for m in model.modules() if isinstance(m, mf.MetaFormerBlock)]
    claims = [(b, lambda x, b=b: b.res_scale2(b.res_scale1(x))) for b in blocks]
    judge(model, before, report, claims, fixed_inputs(X))
    # the token mixer's own subtraction is named, not silent
    if name.startswith("pool"):
        mixers = [s for s in report.skipped if "not a residual block" in s.reason]
        assert len(mixers) == 4, report.table()


def test_res_scale_rows_say_the_merge_equals_the_scaled_skip():
    model = build("poolformerv2")
    report = zero_init_pass(model, dry_run=True, example_inputs=X)
    scaled = [r for r in report.touched if "scaled by its own parameter" in r["position"]]
    # stages 2 and 3: both joins of each block
    assert {r["module"].split(".")[1] for r in scaled} == {"2", "3"}
    assert all("res_scale" in r["position"] for r in scaled)


class ScaledByData(nn.Module):
    """``(x * g(x)) + f(x)``: the 'scale' reads data, so that path is no skip."""

    def __init__(self):
        super().__init__()
        self.g = nn.Linear(4, 4)
        self.f = nn.Linear(4, 4)

    def forward(self, x):
        return x * torch.sigmoid(self.g(x)) + self.f(x)


class ParentParam(nn.Module):
    """``x * self.d + f(x)``: a parameter of the block itself used inline (an SSM's ``D``),
    not a scale module of the skip: no skip."""

    def __init__(self):
        super().__init__()
        self.d = nn.Parameter(torch.ones(4))
        self.f = nn.Linear(4, 4)

    def forward(self, x):
        return x * self.d + self.f(x)


@pytest.mark.parametrize("cls", [ScaledByData, ParentParam])
def test_a_scale_that_is_not_the_skips_own_module_is_not_a_skip(cls):
    torch.manual_seed(0)
    model = cls().eval()
    report = zero_init_pass(model, dry_run=True)
    # the scaled path is never taken for the skip (ParentParam: `f` is the cheaper
    # projection path and `x * d` the branch, as for an SSM's `D * x`)
    assert all(r["site"]["skip"] != "mul" for r in report.touched), report.table()
    assert not any("scaled by its own parameter" in r["position"] for r in report.touched)
    if cls is ScaledByData:
        assert report.params == [] and report.skipped, report.table()
