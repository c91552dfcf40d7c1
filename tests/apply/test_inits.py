"""init_pass: the positions the rules find, with other actions than zero (issue 12).

Each claim is checked by running or reading the model, never by asking the analysis: which
parameters were written, that nothing else changed by a bit, the drawn values' scale, that
a plan reproduces the same tensors from its seed, and that each Fixup branch outputs zero.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from claims import snapshot
from zeta_fx import ZeroInitPlan, init_pass, inits, zero_init_pass
from zeta_fx.apply import InitSite
from zeta_fx.errors import PlanError
from zeta_fx.models import GPT
from zeta_fx.rules import OutputLayer, ResidualBranchLast

transformers = pytest.importorskip("transformers")


def _changed(before: dict[str, torch.Tensor], model: nn.Module) -> set[str]:
    return {k for k, v in snapshot(model).items() if not torch.equal(v, before[k])}


class MLPBlock(nn.Module):
    def __init__(self, dim: int = 16, hidden: int = 64) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x)))


def deep_mlp(depth: int = 6) -> nn.Sequential:
    return nn.Sequential(*[MLPBlock() for _ in range(depth)], nn.Linear(16, 3))


# -- scaled_normal against the hand-written originals ---------------------------------------
def test_scaled_normal_touches_what_nanogpt_touches_with_its_sigma():
    n_layer = 4
    torch.manual_seed(0)
    model = GPT(n_layer=n_layer, dim=64, n_head=4)
    before = snapshot(model)
    report = init_pass(model, init=inits.scaled_normal(std=0.02), seed=0)
    # nanoGPT's model.py: `if pn.endswith('c_proj.weight'): normal_(p, 0, 0.02/sqrt(2*n_layer))`
    nanogpt = [pn for pn, _ in model.named_parameters() if pn.endswith("c_proj.weight")]
    assert report.params == nanogpt
    assert _changed(before, model) == set(nanogpt)
    sigma = 0.02 / math.sqrt(2 * n_layer)
    drawn = torch.cat([model.get_parameter(p).flatten() for p in nanogpt])
    assert abs(drawn.std().item() / sigma - 1) < 0.05 and abs(drawn.mean().item()) < sigma / 10
    action = report.plan.entries[0].action
    assert action.kind == "normal" and math.isclose(action.std, sigma)
    # the bias beside the drawn weight is kept, and the row says so
    assert dict(action.figures) == {"sigma": 0.02, "L": 2 * n_layer,
                                    "kept": "h.0.attn.c_proj.bias"}
    assert report.touched[0]["kept"] == ["h.0.attn.c_proj.bias"]
    assert f"N(0, {sigma:.4g}); bias kept" in report.table()
    assert f"N(0, {sigma:.4g})" in report.table() and "L = 8" in report.summary()


def test_scaled_normal_touches_what_hf_gpt2_touches_with_its_sigma():
    config = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=3, n_head=4,
                                     n_positions=32, use_cache=False)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    # GPT2PreTrainedModel._init_weights: every `c_proj.weight` (attention and MLP) is drawn
    # from N(0, initializer_range / sqrt(2 * n_layer))
    hf = sorted(pn for pn, _ in model.named_parameters() if pn.endswith("c_proj.weight"))
    ids = torch.randint(0, 64, (1, 8))
    before = snapshot(model)
    report = init_pass(model, init=inits.scaled_normal(config.initializer_range),
                       example_inputs=(ids,), seed=3)
    assert sorted(report.params) == hf
    assert _changed(before, model) == set(hf)
    sigma = config.initializer_range / math.sqrt(2 * config.n_layer)
    assert {round(e.action.std, 12) for e in report.plan.entries} == {round(sigma, 12)}


def test_the_plan_reproduces_the_same_tensors_from_its_seed():
    torch.manual_seed(0)
    a, b = GPT(n_layer=2), GPT(n_layer=2)
    b.load_state_dict(a.state_dict())
    plan = init_pass(a, init=inits.scaled_normal(0.02), dry_run=True, seed=7).plan
    assert plan.seed == 7 and ZeroInitPlan.from_json(plan.to_json()) == plan
    init_pass(a, init=inits.scaled_normal(0.02), seed=7)
    ZeroInitPlan.from_json(plan.to_json()).apply(b)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    # another seed, other values; no seed: one drawn from torch's generator, recorded
    c = GPT(n_layer=2)
    init_pass(c, init=inits.scaled_normal(0.02), seed=8)
    assert not torch.equal(c.h[0].attn.c_proj.weight, a.h[0].attn.c_proj.weight)
    torch.manual_seed(1)
    first = init_pass(GPT(n_layer=2), init=inits.scaled_normal(0.02), dry_run=True).plan.seed
    torch.manual_seed(1)
    assert init_pass(GPT(n_layer=2), init=inits.scaled_normal(0.02), dry_run=True).plan.seed == first


def test_zero_init_pass_is_init_pass_with_zero():
    torch.manual_seed(0)
    a, b = GPT(n_layer=2), GPT(n_layer=2)
    b.load_state_dict(a.state_dict())
    ra, rb = zero_init_pass(a), init_pass(b, init="zero")
    assert ra.plan == rb.plan and ra.plan.init == "zero" and ra.plan.seed is None
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert ra.table() == rb.table()


# -- Fixup ------------------------------------------------------------------------------------
def test_fixup_zeroes_each_branch_end_and_scales_the_rest():
    depth = 6
    torch.manual_seed(0)
    model = deep_mlp(depth)
    before = snapshot(model)
    x = torch.randn(4, 16)
    report = init_pass(model, rule=ResidualBranchLast() | OutputLayer(), init=inits.fixup(),
                       seed=0, verify=True, example_inputs=(x,))
    last = {f"{i}.fc2.{p}" for i in range(depth) for p in ("weight", "bias")} | {"6.weight", "6.bias"}
    scaled = {f"{i}.fc1.weight" for i in range(depth)}
    assert set(report.params) == last | scaled
    assert _changed(before, model) == last | scaled  # fc1 biases kept
    assert all(not model.get_parameter(p).any() for p in last)
    # He-normal (fan-out) scaled by L^(-1/(2m-2)), L = depth branches, m = 2 layers each
    std = math.sqrt(2 / 64) * depth ** -0.5
    drawn = torch.cat([model.get_parameter(p).flatten() for p in scaled])
    assert abs(drawn.std().item() / std - 1) < 0.05
    # every block is the identity on a forward pass; the Fixup rows claim nothing
    outs = {}
    hooks = [model[i].register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, (a[0], o)))
             for i in range(depth)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    assert all(torch.equal(inp, out) for inp, out in outs.values())
    rows = {r["module"]: r for r in report.touched}
    assert rows["0.fc2"]["verified"] is True and rows["0.fc1"]["verified"] is None
    assert rows["0.fc1"]["site"]["kind"] == "fixup" and rows["0.fc1"]["node"] == "_0_fc1"


# -- a callable ---------------------------------------------------------------------------
def test_a_callable_gets_each_tensor_with_its_site():
    model = deep_mlp(3)
    seen: list[tuple[str, InitSite]] = []

    def half_by_depth(tensor: torch.Tensor, site: InitSite) -> None:
        seen.append((site.fqn, site))
        tensor.fill_(0.5 / (site.depth + 1))

    report = init_pass(model, init=half_by_depth)
    assert [f for f, _ in seen] == [f"{i}.fc2.{p}" for i in range(3) for p in ("weight", "bias")]
    site = dict(seen)["1.fc2.weight"]
    assert (site.depth, site.branches, site.branch_layers) == (1, 3, ("1.fc1", "1.fc2"))
    assert site.sites[0].merge and torch.all(model[1].fc2.weight == 0.25)
    assert "half_by_depth" in report.plan.init
    # a loaded plan names the callable; applying it asks for the function again
    plan = ZeroInitPlan.from_json(report.plan.to_json())
    other = deep_mlp(3)
    before = snapshot(other)
    with pytest.raises(PlanError, match="half_by_depth.*init="):
        plan.apply(other)
    assert _changed(before, other) == set()
    plan.apply(other, init=half_by_depth)
    assert torch.all(other[2].fc2.bias == 0.5 / 3)


def test_bad_inits_are_refused_before_anything_is_written():
    model = deep_mlp(2)
    before = snapshot(model)
    with pytest.raises(ValueError, match="not known"):
        init_pass(model, init="normal")
    with pytest.raises(ValueError, match="std > 0"):
        inits.scaled_normal(std=float("nan"))
    with pytest.raises(TypeError, match="callable"):
        init_pass(model, init=3)
    assert _changed(before, model) == set()


# -- the papers' definitions on torchvision's blocks (issue 21) -----------------------------
@pytest.mark.slow  # torchvision's ResNets, built and captured
@pytest.mark.parametrize("arch, block_m, exponent", [("resnet18", 2, -1 / 2),
                                                     ("resnet50", 3, -1 / 4)])
def test_fixup_m_counts_the_branch_weight_layers_of_torchvision_blocks(arch, block_m, exponent):
    """Fixup's m is the number of weight layers on a branch: BasicBlock's two convs,
    Bottleneck's three (the zeroed bn2/bn3 is a norm, not a weight layer)."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)()
    before = snapshot(model)
    report = init_pass(model, init=inits.fixup(), seed=0)
    drawn = [e for e in report.plan.entries if e.action.kind == "normal"]
    L = 8 if arch == "resnet18" else 16
    assert {dict(e.action.figures)["m"] for e in drawn} == {block_m}
    assert {dict(e.action.figures)["L"] for e in drawn} == {L}
    # every conv of every branch is drawn He-normal (fan-out) times L^(-1/(2m-2))
    convs = {n for n, mod in model.named_modules() if isinstance(mod, nn.Conv2d)
             and n.startswith("layer") and "downsample" not in n}
    assert {e.module for e in drawn} == convs
    for entry in drawn:
        weight = model.get_submodule(entry.module).weight
        fan_out = weight.shape[0] * weight.shape[2] * weight.shape[3]
        assert math.isclose(entry.action.std, math.sqrt(2 / fan_out) * L ** exponent)
    # nothing but the branch convs' weights and the zeroed norms changed
    zeroed = {p for e in report.plan.entries if e.action.kind == "zero" for p in e.params}
    assert _changed(before, model) <= {f"{m}.weight" for m in convs} | zeroed
    assert all(name.endswith(("bn2.weight", "bn2.bias", "bn3.weight", "bn3.bias"))
               for name in zeroed)


@pytest.mark.slow  # torchvision's ResNet-50, built and captured
def test_scaled_normal_on_resnet50_leaves_every_bn_gain_and_says_so():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet50()
    before = snapshot(model)
    report = init_pass(model, init=inits.scaled_normal(std=0.02), seed=0)
    assert _changed(before, model) == set() and report.params == []
    assert not report.changed
    rows = {s.module: s.reason for s in report.skipped}
    bn3 = [n for n in dict(model.named_modules()) if n.endswith("bn3")]
    assert len(bn3) == 16 and all(
        "a norm's gain (1-D)" in rows[n] and "draws weight layers' weights only" in rows[n]
        and "left as it is" in rows[n] for n in bn3)
    assert "found nothing to initialise" in report.summary()
    assert "layer1.0.bn3" in report.table()
