"""Generated architectures: the pass is never wrong silently.

Hypothesis draws random networks of residual blocks (``tests/netgen.py``): branches mixing
convs, channels-last linears, module and functional norms, activations, dropout and
drop-path, squeeze-excite gates (sigmoid and hard-sigmoid), LayerScale, projection
shortcuts, nested residual blocks, conditioning side inputs, shared blocks and a shared conv,
``cat`` merges and FPN-style sums. For each model, after ``residual_branch_last``:

- the zeroed modules are exactly the ones the generator's own oracle names;
- every branch the report claims is zero outputs exactly zero (eval mode, random inputs,
  recorded with forward hooks), at every call site;
- every parameter not in the plan and every buffer is bit-identical, the planned ones zero;
- nothing on a skip path (a projection shortcut, an FPN lateral) is zeroed;
- the model still runs forward and backward with finite values.

Profiles (``HYPOTHESIS_PROFILE``): "ci" (default) runs a fixed number of examples,
derandomised; "dev" runs many more with fresh randomness.
"""

from __future__ import annotations

import os

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import netgen
from netgen import Block, Net, Op
from zeta_fx import zero_init_pass
from zeta_fx.analysis import GraphView
from zeta_fx.capture import capture
from zeta_fx.rules import ResidualBranchLast

CI_EXAMPLES = 250
DEV_EXAMPLES = 10000

settings.register_profile("ci", max_examples=CI_EXAMPLES, deadline=None, derandomize=True,
                          print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=DEV_EXAMPLES, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
if PROFILE not in ("ci", "dev"):
    PROFILE = "ci"

_SIMPLE = ("conv3", "conv1", "lin", "fconv", "wsconv", "bn", "fbn", "gn", "fln", "ls",
           "shared", "relu", "gelu", "silu", "tanh", "f_relu", "f_gelu", "t_tanh", "drop",
           "droppath", "sd", "gn0", "se", "hse", "slice_pad", "sigmoid", "bn0", "fbn0",
           "in_track")


@st.composite
def ops(draw, depth: int, cond: bool) -> tuple[Op, ...]:
    kinds = list(_SIMPLE) + (list(netgen.COND_OPS) if cond else []) + ["cat"]
    if depth < 2:
        kinds.append("nested")
    out = []
    for kind in draw(st.lists(st.sampled_from(kinds), min_size=1, max_size=5)):
        if kind in ("conv3", "conv1", "ls"):
            out.append(Op(kind, draw(st.booleans())))
        elif kind == "cat":
            out.append(Op(kind, draw(st.tuples(st.sampled_from(("conv", "slice")),
                                               st.sampled_from(("conv", "slice"))))))
        elif kind == "nested":
            out.append(Op(kind, draw(blocks(depth + 1, cond))))
        else:
            out.append(Op(kind))
    return tuple(out)


@st.composite
def blocks(draw, depth: int, cond: bool) -> Block:
    skip = draw(st.sampled_from((0, 0, 1, 2)))
    n_branches = 1 if skip else draw(st.sampled_from((1, 1, 2)))
    branches = []
    for _ in range(n_branches):
        b = draw(ops(depth, cond))
        # The pass tells the skip from the branch by their layer counts: make the branch
        # the heavier path, as in every real block, so the generator's skip is the skip.
        while netgen.layer_nodes(b) <= skip:
            b = (Op("conv1", False),) + b
        # A branch ending in an add (a nested block without post-activation, a `+ emb`)
        # flattens into the merge's longer sum; see the README's limitations. Keep the
        # drawn structure, but end it with an activation so the sum stays binary.
        if b[-1].kind == "cond_add" or (b[-1].kind == "nested" and b[-1].arg.post is None):
            b = b + (Op("relu"),)
        branches.append(b)
    return Block(tuple(branches), skip, draw(st.sampled_from(("op", "torch", "method"))),
                 draw(st.booleans()), draw(st.sampled_from((None, "relu"))))


@st.composite
def nets(draw) -> Net:
    cond = draw(st.booleans())
    units: list = []
    n_blocks = 0
    for kind in draw(st.lists(st.sampled_from(("block", "block", "block", "repeat", "fpn",
                                               "conv", "shared")), min_size=1, max_size=4)):
        if kind == "block":
            units.append(("block", draw(blocks(0, cond))))
        elif kind == "repeat":
            done = [i for i, (k, _) in enumerate(units) if k == "block"]
            if not done:
                continue
            units.append(("repeat", draw(st.sampled_from(done))))
        elif kind == "fpn":
            units.append(("fpn", draw(st.booleans())))
        else:
            units.append((kind, None))
    return Net(draw(st.sampled_from((4, 8))), cond, tuple(units))


# -- checking one model ---------------------------------------------------------------

def _claimed_branches(model: nn.Module, report) -> set[int]:
    """``id``s of the branch modules the report claims are now zero.

    The plan lists modules and join positions; which branch each zeroed node ends is read
    from the rule's targets (node, join, branch term) for the covers the plan kept whole,
    and mapped to the generator's modules through each node's ``nn_module_stack``.
    """
    gm = capture(model)
    stacks = {n.name: [path for path, _ in n.meta.get("nn_module_stack", {}).values()]
              for n in gm.graph.nodes}
    planned = set(report.modules)
    covers: dict[str, list] = {}
    for t in ResidualBranchLast().select(GraphView(gm, model)).targets:
        covers.setdefault(t.cover, []).append(t)
    claimed = set()
    for cover, targets in covers.items():
        if not all(t.module in planned for t in targets):
            continue  # dropped whole: not claimed
        merge, term = cover.split(":")
        block_path = stacks[merge][-1]
        block = model.get_submodule(block_path)
        assert isinstance(block, (netgen.ResBlock, netgen.FPN)), (merge, type(block))
        ends = [b for k, b in enumerate(block.branches)
                if f"{block_path}.branches.{k}" in stacks[term]]
        assert len(ends) == 1, f"branch term `{term}` of `{merge}` is not on one branch"
        for t in targets:
            # The zeroed layer lies on that branch of the join, never on its skip.
            assert f"{block_path}.skip" not in stacks[t.nodes[0]], t
        claimed.add(id(ends[0]))
    return claimed


def check_model(spec: Net, seed: int = 0) -> None:
    model = netgen.build(spec, seed)
    x, cond = netgen.example_inputs(spec)
    before = {k: v.clone() for k, v in model.state_dict(keep_vars=False).items()}

    report = zero_init_pass(model, rule="residual_branch_last")

    # Exactly what the generator's oracle says, by module identity.
    zeroed = {id(model.get_submodule(m)) for m in report.modules}
    expected = netgen.expected_modules(model)
    names = {id(m): n for n, m in model.named_modules()}
    assert zeroed == expected, (
        f"zeroed {sorted(names[i] for i in zeroed)}, expected {sorted(names[i] for i in expected)}"
        f"\n{report}")

    # Planned parameters are zero; everything else, buffers included, is bit-identical.
    # (A module registered under two paths has its tensors under both names.)
    planned = {id(model.get_parameter(n)) for n in report.params}
    after = model.state_dict(keep_vars=True)
    for name, value in after.items():
        if id(value) in planned:
            assert not value.any(), name
        else:
            assert torch.equal(value, before[name]), f"{name} changed but is not in the plan"

    # Nothing on a projection skip or an FPN lateral.
    for name, m in model.named_modules():
        if isinstance(m, (netgen.ResBlock, netgen.FPN)) and m.skip is not None:
            for p in m.skip.parameters():
                assert p.any(), f"a parameter of the skip `{name}.skip` was zeroed"

    # Each claimed branch outputs exactly zero, at every call site.
    claimed = _claimed_branches(model, report)
    outputs: dict[int, list[torch.Tensor]] = {}
    hooks = [m.register_forward_hook(lambda mod, args, out: outputs.setdefault(id(mod), []).append(out))
             for m in model.modules() if id(m) in claimed]
    model.eval()
    with torch.no_grad():
        model(x, cond)
    for h in hooks:
        h.remove()
    assert set(outputs) == claimed
    for key, outs in outputs.items():
        for out in outs:
            assert not out.any(), f"branch `{names[key]}` is claimed zero but outputs {out.abs().max()}"

    # The model still runs, forward and backward, with finite values.
    model.train()
    out = model(x, cond)
    out = out[0] if isinstance(out, tuple) else out
    out.square().mean().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@settings(settings.get_profile(PROFILE))
@given(spec=nets())
def test_generated_networks(spec: Net) -> None:
    check_model(spec)


# -- shrunk failures, kept as regular tests ---------------------------------------------

def _block(*ops: Op, skip: int = 0, post: str | None = None) -> Block:
    return Block((tuple(ops),), skip, "op", False, post)


def test_hard_sigmoid_gate_is_not_a_zero_path() -> None:
    """relu6(g + 3) / 6 is 0.5 at g = 0: the gate's conv must not be taken as the last layer
    (the pass used to zero `hse.fc2` and claim the branch zero)."""
    check_model(Net(4, False, (("block", _block(Op("conv3", False))),
                               ("block", _block(Op("hse")))))),
    check_model(Net(4, False, (("block", _block(Op("conv1", False), Op("sigmoid"), Op("hse"))),)))


def test_shared_conv_registered_under_two_paths() -> None:
    """One conv object in two ModuleLists is a shared module, not a tied parameter."""
    check_model(Net(4, False, (("block", _block(Op("shared"))),)))
    check_model(Net(4, False, (("block", _block(Op("shared"))), ("shared", None))))


def test_functional_batch_norm_with_running_stats_traced_in_train_mode() -> None:
    """F.batch_norm(training=self.training) is traced with training=True, but in eval mode
    batch_norm(0) = -mean/std: the conv before it is not a last layer."""
    check_model(Net(4, False, (("block", _block(Op("conv1", False), Op("conv1", False),
                                                Op("fbn0"), skip=1)),)))


def test_instance_norm_tracking_running_stats() -> None:
    check_model(Net(4, False, (("block", _block(Op("conv1", False), Op("conv1", False),
                                                Op("in_track"), skip=1)),)))


def test_branch_ending_in_a_block_with_a_projection_shortcut() -> None:
    """Zeroing the outer branch would need the inner block's projection zeroed: never."""
    inner = _block(Op("conv1", False), Op("lin"), skip=1, post="relu")
    check_model(Net(4, False, (("block", _block(Op("cat", ("conv", "conv")),
                                                Op("nested", inner), skip=1)),)))


def test_residual_block_wrapped_directly_in_a_residual() -> None:
    """x + (x + f(x)): the flat sum adds x twice; the inner block is still a join."""
    spec = Net(4, False, (("block", _block(Op("nested", _block(Op("lin"))))),))
    check_model(spec)
    model = netgen.build(spec)
    report = zero_init_pass(model)
    assert report.modules == ["units.0.branches.0.ops.0.branches.0.ops.0.lin"]
    assert any("outside the branch" in s.reason for s in report.skipped)


def test_outer_branch_zeroed_through_an_inner_gate_block() -> None:
    """The inner block h + se(h) cannot be zeroed on its own (its branch reaches its fork),
    but zeroing the conv before it zeroes the whole outer branch: se(0) = 0 * gate."""
    inner = _block(Op("se"))
    spec = Net(4, False, (("block", _block(Op("conv3", False), Op("conv3", False),
                                           Op("nested", inner), Op("relu"))),))
    check_model(spec)
    assert zero_init_pass(netgen.build(spec)).modules == ["units.0.branches.0.ops.1"]


def test_conditioning_add_is_not_a_join_over_the_embedding() -> None:
    """h = conv(x * (1 + scale(emb))) + proj(emb): both paths leave `emb`, but proj(emb) is
    conditioning, not a skip; the pass used to zero the conv as that 'join's branch."""
    spec = Net(4, True, (("block", _block(Op("cond_mod"), Op("conv3", False), Op("cond_add"),
                                          Op("relu"))),))
    check_model(spec)
    report = zero_init_pass(netgen.build(spec))
    assert report.modules == []
    assert any("not a residual join" in s.reason and "only, not from `x`" in s.reason
               for s in report.skipped), [s.reason for s in report.skipped]


def test_inner_block_inside_a_sum_with_a_side_input() -> None:
    """(x + conv(x)) + proj(emb): the flat sum is no join, but the inner block still is."""
    spec = Net(4, True, (("block", _block(Op("nested", _block(Op("conv3", False))),
                                          Op("cond_add"), Op("relu"))),))
    check_model(spec)
    assert zero_init_pass(netgen.build(spec)).modules == ["units.0.branches.0.ops.0.branches.0.ops.0"]


def test_cover_with_a_shared_member_is_dropped_whole() -> None:
    """cat([a(h), h[:, 2:]]) with h = shared(x): zeroing the branch needs both `a` and the
    shared conv, which is also used on the trunk and so left alone; `a` must not be zeroed
    alone (the branch would not be zero, yet the report claimed it)."""
    spec = Net(4, False, (("block", _block(Op("shared"), Op("cat", ("conv", "slice")), skip=1)),
                          ("shared", None)))
    check_model(spec)
    report = zero_init_pass(netgen.build(spec))
    assert report.modules == []
    assert any("is only zero if `shared` is zeroed too" in s.reason for s in report.skipped)
    spec = Net(4, False, (("block", Block(((Op("shared"), Op("nested", _block(Op("conv3", False))),
                                            Op("relu")),), 1, "op", False, None)),
                          ("shared", None)))
    check_model(spec)


def test_shared_conv_in_two_branches_of_one_block() -> None:
    """The shared conv ends one branch and an inner block of the other: both its sites are
    selected; the outer second branch (relu(x + shared(x))) is not claimed."""
    inner = _block(Op("shared"))
    check_model(Net(4, True, (("block", Block(((Op("shared"),),
                                               (Op("nested", inner), Op("relu"))),
                                              0, "op", False, None)),)))
