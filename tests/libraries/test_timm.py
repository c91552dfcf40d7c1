"""timm's own ``zero_init_last`` against ``zero_init_pass(rule="residual_branch_last")``.

For every timm family that zero-initialises the end of its residual branches, two
instances are built from one seed: one with timm's zero-init switched on (its own API),
one with it off, on which the pass runs. The parameters that end up all-zero are compared
(by value: timm zeroes only a norm's ``weight``, the pass its ``weight`` and ``bias``, and
the bias is zero at construction either way), and every difference must be the one listed
in ``EXPECTED`` with its reason, so the test fails if either side changes.

Then, by running the model: every timm block that holds a parameter in ``report.params``
outputs exactly its skip value (identity, or its ``downsample``/``shortcut`` applied to
the input, then the block's post-activation), and every parameter outside
``report.params`` is bit-identical. Models are shrunk (one or two blocks a stage) so the
file runs in well under a minute on CPU; ``pretrained=False`` always.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch
from torch import nn

timm = pytest.importorskip("timm")

from timm.models import byoanet, byobnet, cspnet, nfnet, regnet, res2net, resnest  # noqa: E402
from timm.models import resnet, resnetv2, sknet, tresnet  # noqa: E402

from claims import owning_blocks
from zeta_fx import zero_init_pass  # noqa: E402

SEED = 0


# --- building the two instances ------------------------------------------------------

def _create(name: str, **kw) -> Callable[[bool], nn.Module]:
    """timm's registered model, with ``zero_init_last`` as the constructor flag."""
    return lambda on: timm.create_model(name, pretrained=False, zero_init_last=on, **kw)


def _ctor(cls, cfg, **kw) -> Callable[[bool], nn.Module]:
    """A model class built from a (shrunk) registered config."""
    return lambda on: cls(cfg, zero_init_last=on, **kw)


def _byob_blocks(cfg, first=2, rest=1):
    """ByobNet/ByoaNet config with ``first`` blocks in stage 0 and ``rest`` in the others."""
    def shrink(stage, i):
        if isinstance(stage, (list, tuple)):
            return tuple(dataclasses.replace(b, d=1) for b in stage)
        return dataclasses.replace(stage, d=min(stage.d, first if i == 0 else rest))
    return tuple(shrink(s, i) for i, s in enumerate(cfg.blocks))


def _byob(name: str, **kw) -> Callable[[bool], nn.Module]:
    cfg = byobnet.model_cfgs.get(name) or byoanet.model_cfgs[name.replace("_256", "")]
    return _create(name, blocks=_byob_blocks(cfg), **kw)


def _csp(name: str) -> Callable[[bool], nn.Module]:
    cfg = cspnet.model_cfgs[name]
    stages = dataclasses.replace(cfg.stages, depth=tuple(min(d, 2) for d in cfg.stages.depth))
    return _ctor(cspnet.CspNet, dataclasses.replace(cfg, stages=stages))


def _nf(name: str) -> Callable[[bool], nn.Module]:
    """NF-Nets have no switch: the last conv's ``gain`` (or ``skipinit_gain``) is built zero.
    "Off" is the same model with those gains set to one."""
    cfg = dataclasses.replace(nfnet.model_cfgs[name], depths=(2, 1, 1, 1))

    def make(on: bool) -> nn.Module:
        model = nfnet.NormFreeNet(cfg)
        if not on:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n.endswith(("conv3.gain", "skipinit_gain")):
                        p.fill_(1.0)
        return model
    return make


def _tresnet(on: bool) -> nn.Module:
    """TResNet zeroes ``conv2.bn`` / ``conv3.bn`` weights in ``__init__``, unconditionally."""
    model = timm.create_model("tresnet_m", pretrained=False, layers=(2, 1, 1, 1))
    if not on:
        with torch.no_grad():
            for m in model.modules():
                last = {tresnet.BasicBlock: "conv2", tresnet.Bottleneck: "conv3"}.get(type(m))
                if last:
                    getattr(m, last).bn.weight.fill_(1.0)
    return model


RN = dict(layers=(2, 1, 1, 1))
REGNET_TINY = dict(depth=13, w0=24, wa=36.44, wm=2.49)   # regnetx_002's widths: 4 stages


# --- what each block's skip value is (read from each block's forward) ----------------

def _or_x(mod, x):
    return x if mod is None else mod(x)


def _act(block, name):
    act = getattr(block, name)
    return lambda y: act(y.clone())  # timm's acts are often in-place


SKIP: dict[type, Callable[[nn.Module, torch.Tensor], torch.Tensor]] = {
    # out = act(branch + (downsample(x) or x))
    resnet.BasicBlock: lambda b, x: _act(b, "act2")(_or_x(b.downsample, x)),
    resnet.Bottleneck: lambda b, x: _act(b, "act3")(_or_x(b.downsample, x)),
    sknet.SelectiveKernelBasic: lambda b, x: _act(b, "act")(_or_x(b.downsample, x)),
    sknet.SelectiveKernelBottleneck: lambda b, x: _act(b, "act")(_or_x(b.downsample, x)),
    resnest.ResNestBottleneck: lambda b, x: _act(b, "act3")(_or_x(b.downsample, x)),
    res2net.Bottle2neck: lambda b, x: _act(b, "relu")(_or_x(b.downsample, x)),
    tresnet.BasicBlock: lambda b, x: _act(b, "act")(_or_x(b.downsample, x)),
    tresnet.Bottleneck: lambda b, x: _act(b, "act")(_or_x(b.downsample, x)),
    # pre-activation: out = branch + (downsample(norm1(x)) or x)
    resnetv2.PreActBasic: lambda b, x: x if b.downsample is None else b.downsample(b.norm1(x)),
    resnetv2.PreActBottleneck: lambda b, x: x if b.downsample is None else b.downsample(b.norm1(x)),
    resnetv2.Bottleneck: lambda b, x: _act(b, "act3")(_or_x(b.downsample, x)),
    # RegNet: out = act3(branch + downsample(x)); no shortcut at all when downsample is None
    regnet.Bottleneck: lambda b, x: _act(b, "act3")(b.downsample(x)),
    regnet.PreBottleneck: lambda b, x: b.downsample(b.norm1(x)),
    # ByobNet: out = act(branch + shortcut(x)); RepVGG: act(attn(identity_bn(x)))
    byobnet.BasicBlock: lambda b, x: _act(b, "act")(b.shortcut(x)),
    byobnet.BottleneckBlock: lambda b, x: _act(b, "act")(b.shortcut(x)),
    byobnet.DarkBlock: lambda b, x: _act(b, "act")(b.shortcut(x)),
    byobnet.EdgeBlock: lambda b, x: _act(b, "act")(b.shortcut(x)),
    byobnet.SelfAttnBlock: lambda b, x: _act(b, "act")(b.shortcut(x)),
    byobnet.RepVggBlock: lambda b, x: _act(b, "act")(b.attn(b.identity(x))),
    # CSPNet: bottleneck ends in act3, dark/edge blocks have no post-activation
    cspnet.BottleneckBlock: lambda b, x: _act(b, "act3")(x),
    cspnet.DarkBlock: lambda b, x: x,
    cspnet.EdgeBlock: lambda b, x: x,
    # NF-Net: out = branch * alpha + (downsample(act1(x) * beta) or x)
    nfnet.NormFreeBlock: lambda b, x: x if b.downsample is None else b.downsample(b.act1(x) * b.beta),
}


# --- the models and the expected, explained differences -------------------------------

@dataclass
class Case:
    make: Callable[[bool], nn.Module]
    size: int = 32
    timm_only: str | None = None      # regex over FQNs timm zeroes and the pass does not
    pass_only: str | None = None      # regex over FQNs the pass zeroes and timm does not
    reason: str = ""
    bug: str | None = None            # a zeta_fx bug: the expectation is the correct behaviour
    export: bool = False              # symbolic tracing fails: the pass gets example_inputs
    marks: list = field(default_factory=list)


CASES: dict[str, Case] = {
    # resnet.py: BasicBlock / Bottleneck zero bn2 / bn3, attention after the norm
    "resnet18": Case(_create("resnet18", **RN)),
    "resnet50": Case(_create("resnet50", **RN)),
    "seresnet50": Case(_create("seresnet50", **RN)),            # SE after bn3
    "ecaresnet26t": Case(_create("ecaresnet26t", **RN)),        # ECA, deep stem, avg-pool down
    "resnet50_gn": Case(_create("resnet50_gn", **RN)),          # GroupNorm
    "resnetaa50d": Case(_create("resnetaa50d", **RN)),          # anti-aliased
    "resnetrs50": Case(_create("resnetrs50", **RN)),            # SE, replaced stem pool
    "skresnet18": Case(_create("skresnet18", **RN)),
    "skresnext50_32x4d": Case(_create("skresnext50_32x4d", **RN)),
    "resnest14d": Case(_create("resnest14d", **RN)),            # split attention
    "res2net50_26w_4s": Case(_create("res2net50_26w_4s", **RN)),
    "tresnet_m": Case(_tresnet, size=64),
    # resnetv2.py: pre-act blocks zero the last conv, the non-pre-act Bottleneck its norm3
    "resnetv2_18": Case(_create("resnetv2_18", **RN)),
    "resnetv2_50": Case(_create("resnetv2_50", **RN)),
    "resnetv2_bit": Case(lambda on: resnetv2.ResNetV2(layers=(2, 1, 1, 1), stem_type="fixed",
                                                      zero_init_last=on)),  # StdConv2d + GN
    "resnetv2_50d_gn": Case(_create("resnetv2_50d_gn", **RN)),
    "resnetv2_50d_evos": Case(_create("resnetv2_50d_evos", **RN)),
    "resnetv2_50d_frn": Case(_create("resnetv2_50d_frn", **RN)),
    # regnet.py
    "regnetx_002": Case(_ctor(regnet.RegNet, regnet.model_cfgs["regnetx_002"])),
    "regnety_002": Case(_ctor(regnet.RegNet, regnet.model_cfgs["regnety_002"])),  # SE mid-branch
    "regnetv_040": Case(
        _ctor(regnet.RegNet, dataclasses.replace(regnet.model_cfgs["regnetv_040"], **REGNET_TINY)),
        pass_only=r"^s\d\.b\d+\.conv3\.weight$",
        reason="timm's PreBottleneck.zero_init_last is a no-op ('no-op for pre-activation'); "
               "zeroing conv3 makes the pre-act block its skip, as the pass does"),
    "regnetz_005": Case(
        _ctor(regnet.RegNet, dataclasses.replace(regnet.model_cfgs["regnetz_005"], **REGNET_TINY)),
        timm_only=r"^s\d\.b1\.conv3\.bn\.weight$",
        reason="timm is wrong: each stage's first block has no shortcut (downsample=None), "
               "zeroing it cuts the network (timm's regnetz_* entrypoints force "
               "zero_init_last=False because of it); the pass leaves those blocks alone"),
    # byobnet.py / byoanet.py: init_weights(zero_init_last) zeroes only where a shortcut exists
    "gernet_s": Case(_byob("gernet_s")),
    "resnet33ts": Case(_byob("resnet33ts")),
    "seresnext26ts": Case(_byob("seresnext26ts")),
    "eca_resnext26ts": Case(_byob("eca_resnext26ts")),
    "gcresnet33ts": Case(_byob("gcresnet33ts")),
    "bat_resnext26ts": Case(
        _byob("bat_resnext26ts", attn_kwargs=dict(block_size=4)), size=128,
        export=True,  # bilinear attention has data-dependent Python: captured with torch.export
        pass_only=r"^stages\.\d\.\d\.attn\.conv2\.bn\.weight$",
        reason="BatNonLocalAttn is itself residual (`conv2(ba(conv1(x))) + x`, mid-branch); "
               "the pass zeroes that inner branch's end too, timm only zeroes block ends"),                # global context after conv3
    "regnetz_b16": Case(_byob("regnetz_b16")),                  # most blocks: no shortcut
    "regnetz_b16_evos": Case(_byob("regnetz_b16_evos")),  # EvoNorm2dS0a: x / std(x) * w + b
    "repvgg_a0": Case(
        _byob("repvgg_a0"),
        pass_only=r"^stages\.0\.1\.conv_(1x1|kxk)\.bn\.(weight|bias)$",
        reason="timm's RepVggBlock ignores zero_init_last (random BN init, for "
               "re-parameterisation); the pass treats the identity BN as the skip and zeroes "
               "both conv branches' BNs, so the block outputs act(identity_bn(x))"),
    # `q @ kᵀ + rel_logits(q)` and `content_out + position_out` are not residual joins:
    # another data value (k, the content) enters each path; only the block ends are zeroed
    "botnet26t_256": Case(_byob("botnet26t_256", img_size=64), size=64),
    "halonet26t": Case(_byob("halonet26t", img_size=128, self_attn_kwargs=dict(block_size=4, halo_size=1)), size=128),
    "lambda_resnet26t": Case(_byob("lambda_resnet26t", img_size=64), size=64),
    # cspnet.py
    "cspresnet50": Case(_csp("cspresnet50")),
    "cspdarknet53": Case(_csp("cspdarknet53")),
    "darknet17": Case(_csp("darknet17")),
    "cs3darknet_s": Case(_csp("cs3darknet_s")),
    "cs3sedarknet_l": Case(_csp("cs3sedarknet_l")),
    "cs3edgenet_x": Case(_csp("cs3edgenet_x")),
    # nfnet.py: conv3 is a ScaledStdConv2d whose gain is built zero
    # conv3.gain only (its weight keeps its values and learns once gain moves), as timm
    "nf_resnet26": Case(_nf("nf_resnet26")),
    "nf_seresnet26": Case(_nf("nf_seresnet26")),
    "nf_regnet_b0": Case(_nf("nf_regnet_b0")),
    "eca_nfnet_l0": Case(_nf("eca_nfnet_l0")),
    "dm_nfnet_f0": Case(_nf("dm_nfnet_f0"), export=True),   # skipinit_gain; 'SAME' padding
}


# --- helpers ---------------------------------------------------------------------------

def _build(case: Case, on: bool) -> nn.Module:
    torch.manual_seed(SEED)
    return case.make(on).eval()


def _all_zero(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.numel() and not p.detach().any()}


def _matching(names, pattern: str | None) -> set[str]:
    return set() if pattern is None else {n for n in names if re.search(pattern, n)}


def _owning_blocks(model: nn.Module, params) -> dict[str, nn.Module]:
    return owning_blocks(model, params, lambda m: type(m) in SKIP)


def _params(case_id):
    case = CASES[case_id]
    marks = list(case.marks)
    if case.bug:
        marks.append(pytest.mark.xfail(strict=True, reason=f"zeta_fx bug: {case.bug}"))
    return pytest.param(case_id, marks=marks, id=case_id)


# --- the tests -------------------------------------------------------------------------

@pytest.mark.parametrize("case_id", [_params(c) for c in CASES])
def test_pass_matches_timm_zero_init_last(case_id):
    case = CASES[case_id]
    theirs, ours = _build(case, True), _build(case, False)
    x = torch.randn(1, 3, case.size, case.size, generator=torch.Generator().manual_seed(1))

    # timm's switch changes nothing but the parameters it zeroes
    changed = {n for (n, p), (_, q) in zip(theirs.named_parameters(), ours.named_parameters())
               if not torch.equal(p, q)}
    assert changed <= _all_zero(theirs), sorted(changed - _all_zero(theirs))

    before = {n: p.detach().clone() for n, p in ours.named_parameters()}
    report = zero_init_pass(ours, rule="residual_branch_last",
                            example_inputs=(x,) if case.export else None)
    zeroed = set(report.params)
    assert zeroed, "the pass zeroed nothing"

    # the same parameters end up zero, but for the listed, explained differences
    timm_zero, pass_zero = _all_zero(theirs), _all_zero(ours)
    names = set(before)
    assert timm_zero - pass_zero == _matching(names, case.timm_only), case.reason
    assert pass_zero - timm_zero == _matching(names, case.pass_only), case.reason

    # the report says what it zeroed; nothing else moved
    assert zeroed <= pass_zero
    for n, p in ours.named_parameters():
        if n not in zeroed:
            assert torch.equal(p, before[n]), f"{n} changed but is not in report.params"

    # every block the pass touched now outputs exactly its skip value
    owners = _owning_blocks(ours, zeroed)
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def watch(name, block):
        def pre(_, args):
            seen[name] = (args[0].detach().clone(), None)

        def post(_, args, out):
            with torch.no_grad():
                seen[name] = (SKIP[type(block)](block, seen[name][0]), out.detach().clone())
        return block.register_forward_pre_hook(pre), block.register_forward_hook(post)

    handles = [h for name, block in owners.items() for h in watch(name, block)]
    try:
        with torch.no_grad():
            ours(x)
    finally:
        for h in handles:
            h.remove()
    assert set(seen) == set(owners)
    for name, (skip, out) in seen.items():
        assert torch.equal(out, skip), f"{case_id}: block {name} is not its skip value"


def test_timm_zero_init_last_on_regnetz_cuts_the_network():
    """With zero_init_last=True, timm zeroes the first block of each RegNetZ stage, which has
    no shortcut: the logits no longer depend on the input. The pass's model still does."""
    case = CASES["regnetz_005"]
    theirs, ours = _build(case, True), _build(case, False)
    zero_init_pass(ours, rule="residual_branch_last")
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randn(2, 1, 3, 32, 32, generator=gen)
    with torch.no_grad():
        assert torch.equal(theirs(a), theirs(b))
        assert not torch.equal(ours(a), ours(b))


def test_pass_on_nfnet_leaves_a_layer_that_can_learn():
    """timm zeroes only the ScaledStdConv2d gain of each NF block's conv3: its weight still
    gets gradient once gain moves, and gain gets gradient now. Zeroing weight and gain
    together makes both gradients zero: the branch can never leave zero."""
    case = CASES["nf_resnet26"]
    model = _build(case, False)
    zero_init_pass(model, rule="residual_branch_last")
    model.train()
    model(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))).sum().backward()
    conv3 = model.stages[0][0].conv3
    gain_grad = conv3.gain.grad
    assert gain_grad is not None and gain_grad.any(), (
        "zeta_fx bug: conv3.weight and conv3.gain both zeroed, the branch is dead")

