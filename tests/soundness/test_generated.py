"""Generated architectures: the pass is never wrong silently.

Hypothesis draws random networks of residual blocks (``tests/netgen.py``): branches mixing
convs, channels-last linears, module and functional norms, activations, dropout and
drop-path, squeeze-excite gates (sigmoid and hard-sigmoid), LayerScale, projection
shortcuts, nested residual blocks, conditioning side inputs, shared blocks and a shared conv,
``cat`` merges and FPN-style sums; and, in the "hard" networks, the structures that used to
fool the pass: terms beside the merge, divisions and eps-free norms, where-fills, bounded
clamps, leaf subclasses with their own forward, hooks, in-place ops on the fork,
relative-position logits, scan-plus-D merges, residual gates at the branch end, affine
norms. For each model, after ``residual_branch_last``, judged by running the model (the
oracle in ``tests/claims.py``, which never asks the analysis):

- every parameter not in the report and every buffer is bit-identical, the reported ones
  zero; nothing on a skip path (a projection shortcut, an FPN lateral) is zeroed;
- every report row's merge equals its skip value on random inputs (eval and train mode),
  finite, and its zeroed node does not feed that skip; the merge lies in a residual unit
  of the generator (a block, an FPN, a GC gate), and that unit equals its skip value;
- each zeroed module is needed: restoring it makes some unit that equals its skip differ;
- the model still runs forward and backward with finite values;
- for networks made only of the original structures, the zeroed modules are also exactly
  the ones the generator's own oracle (``netgen.expected_modules``) names: nothing missed.

Profiles (``HYPOTHESIS_PROFILE``): "ci" (default) runs a fixed number of examples,
derandomised; "dev" runs many more with fresh randomness.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import netgen
from claims import (assert_each_zeroed_needed, assert_graph_claims, assert_state_matches_report,
                    holding_claims, residual_rows, snapshot)
from netgen import Block, Net, Op
from zeta_fx import zero_init_pass
from zeta_fx.capture import capture

CI_EXAMPLES = 250


pytestmark = pytest.mark.usefixtures("one_thread")
DEV_EXAMPLES = 10000
SEEDS = (0,)

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
def ops(draw, depth: int, cond: bool, hard: bool = False) -> tuple[Op, ...]:
    kinds = list(_SIMPLE) + (list(netgen.COND_OPS) if cond else []) + ["cat"]
    if hard:
        kinds += list(netgen.HARD_OPS) * 2   # as likely as the simple ones, roughly
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
            out.append(Op(kind, draw(blocks(depth + 1, cond, hard))))
        else:
            out.append(Op(kind))
    return tuple(out)


@st.composite
def blocks(draw, depth: int, cond: bool, hard: bool = False) -> Block:
    skip = draw(st.sampled_from((0, 0, 1, 2)))
    n_branches = 1 if skip else draw(st.sampled_from((1, 1, 2)))
    branches = []
    for _ in range(n_branches):
        b = draw(ops(depth, cond, hard))
        # The pass tells the skip from the branch by their layer counts: make the branch
        # the heavier path, as in every real block, so the generator's skip is the skip.
        while netgen.layer_nodes(b) <= skip:
            b = (Op("conv1", False),) + b
        # A branch ending in an add (a nested block without post-activation, a `+ emb`)
        # flattens into the merge's longer sum; see the README's limitations. Keep the
        # drawn structure, but end it with an activation so the sum stays binary. (Not in
        # the hard networks: there a flat sum must be handled soundly, if not completely.)
        if not hard and (b[-1].kind == "cond_add"
                         or (b[-1].kind == "nested" and b[-1].arg.post is None)):
            b = b + (Op("relu"),)
        branches.append(b)
    extra = draw(st.sampled_from((None, None, None) + netgen.EXTRAS)) if hard else None
    return Block(tuple(branches), skip, draw(st.sampled_from(("op", "torch", "method"))),
                 draw(st.booleans()), draw(st.sampled_from((None, "relu"))), extra)


@st.composite
def nets(draw, hard: bool = False) -> Net:
    cond = draw(st.booleans())
    units: list = []
    for kind in draw(st.lists(st.sampled_from(("block", "block", "block", "repeat", "fpn",
                                               "conv", "shared")), min_size=1, max_size=4)):
        if kind == "block":
            units.append(("block", draw(blocks(0, cond, hard))))
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


# -- checking one model, by running it ------------------------------------------------

def _merge_units(model: nn.Module, report, claims) -> dict[str, nn.Module | None]:
    """For each residual row's merge node: the generator unit whose forward computes it
    (innermost module on its ``nn_module_stack`` in the captured graph), or None."""
    gm = capture(model, leaf_modules=netgen.LEAF_MODULES)
    units = {id(m): m for m, _ in claims}
    out: dict[str, nn.Module | None] = {}
    nodes = {n.name: n for n in gm.graph.nodes}
    for row in residual_rows(report):
        merge = row["site"]["merge"]
        node = nodes.get(merge)
        stack = list((node.meta.get("nn_module_stack") or {}).values()) if node is not None else []
        inner = model.get_submodule(stack[-1][0]) if stack else model
        out[merge] = units.get(id(inner))
    return out


def check_model(spec: Net, seed: int = 0) -> None:
    model = netgen.build(spec, seed)
    x, cond = netgen.example_inputs(spec)
    before = snapshot(model)

    report = zero_init_pass(model, rule="residual_branch_last",
                            leaf_modules=netgen.leaves_in(model))
    names = {id(m): n for n, m in model.named_modules()}

    # Planned parameters are zero; everything else, buffers included, is bit-identical.
    assert_state_matches_report(model, before, report)

    # Nothing on a projection skip or an FPN lateral.
    for name, m in model.named_modules():
        if isinstance(m, (netgen.ResBlock, netgen.FPN)) and m.skip is not None:
            for p in m.skip.parameters():
                assert p.any(), f"a parameter of the skip `{name}.skip` was zeroed\n{report}"

    # Each row's merge lies in a residual unit of the generator, which equals its skip now.
    make = netgen.random_inputs(spec)
    claims = netgen.block_claims(model)
    holding = holding_claims(model, claims, make, seeds=SEEDS)
    holding_ids = {id(m) for m, _ in holding}
    for merge, unit in _merge_units(model, report, claims).items():
        assert unit is not None, f"row claims merge `{merge}`, which is no residual unit\n{report}"
        assert id(unit) in holding_ids, (
            f"`{names[id(unit)]}` is claimed (merge `{merge}`) but does not equal its skip\n{report}")

    # Each row's merge equals its skip on the graph (eval mode: train mode is covered by
    # the unit check above, which the row's merge is tied to); each zeroed module is needed.
    assert_graph_claims(model, report, make, seeds=SEEDS, modes=("eval",),
                        capture_options={"leaf_modules": netgen.LEAF_MODULES})
    assert_each_zeroed_needed(model, before, report, holding, make, seeds=SEEDS)

    # Completeness, where the generator's own oracle knows every structure.
    if netgen.is_legacy(spec):
        zeroed = {id(model.get_submodule(m)) for m in report.modules}
        expected = netgen.expected_modules(model)
        assert zeroed == expected, (
            f"zeroed {sorted(names[i] for i in zeroed)}, expected "
            f"{sorted(names[i] for i in expected)}\n{report}")

    # The model still runs, forward and backward, with finite values. (An in-place relu
    # may overwrite a value autograd needs: such a model only runs forward, before too.)
    model.train()
    out = model(x, cond)
    out = out[0] if isinstance(out, tuple) else out
    if not torch.isfinite(out).all():
        # Only a model that itself divides by a value that may be zero (`x / |x|`, RMS
        # without eps) may: a zeroed branch changes that value's input, which for some
        # inputs now makes it zero. No row claims anything downstream of such a division.
        assert netgen.op_kinds(spec) & {"l2div", "rms0"}, f"non-finite output\n{report}"
        return
    if not netgen.op_kinds(spec) & {"relu_inplace", *netgen.ALIAS_WRITE_OPS}:
        out.square().mean().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@settings(settings.get_profile(PROFILE))
@given(spec=nets())
def test_generated_networks(spec: Net) -> None:
    check_model(spec)


@settings(settings.get_profile(PROFILE))
@given(spec=nets(hard=True))
def test_generated_hard_networks(spec: Net) -> None:
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
    assert any("`shared` is also used at" in s.reason for s in report.skipped)
    assert {s.module for s in report.skipped} >= {"shared", "units.0.branches.0.ops.1.a"}
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


# -- each hard structure once, at the branch end and inside it ---------------------------

@pytest.mark.parametrize("kind", netgen.HARD_OPS)
@pytest.mark.parametrize("where", ["end", "middle"])
def test_hard_op_in_a_branch(kind: str, where: str) -> None:
    """conv1 → kind (→ conv1): judged by running the model, like every generated network."""
    ops = (Op("conv1", True), Op(kind)) + ((Op("conv1", True),) if where == "middle" else ())
    check_model(Net(4, False, (("block", Block((ops,), 0, "op", False, None)),
                               ("block", _block(Op("conv3", True))))))


@pytest.mark.parametrize("kind", netgen.ALIAS_WRITE_OPS)
def test_alias_write_on_the_fork(kind: str) -> None:
    """A branch that starts by writing the fork through an alias (the skip the merge reads
    is then not the block's input): judged by running the model."""
    ops = (Op(kind), Op("conv1", False), Op("relu"), Op("conv1", True))
    check_model(Net(4, False, (("block", Block((ops,), 0, "op", False, None)),
                               ("block", _block(Op("conv3", True))))))


@pytest.mark.parametrize("extra", netgen.EXTRAS)
@pytest.mark.parametrize("skip_first", [True, False])
@pytest.mark.parametrize("skip", [0, 2])
def test_term_beside_the_merge(extra: str, skip_first: bool, skip: int) -> None:
    """skip + branch + extra, in both orders, with an identity and a projection skip."""
    branch = (Op("conv1", False), Op("relu"), Op("conv1", True))
    check_model(Net(4, False, (("block", Block((branch,), skip, "op", skip_first, "relu", extra)),)))


def test_residual_gate_at_the_end_of_a_branch_with_a_projection() -> None:
    """GCNet: bn(conv(x)) then h + gc(h), beside a conv+BN projection: the projection's BN
    is never zeroed (it sits on the skip), the outer claim needs the gate zeroed too."""
    branch = (Op("conv1", False), Op("bn"), Op("gc_gate"))
    check_model(Net(4, False, (("block", Block((branch,), 2, "op", False, "relu")),)))


def test_a_division_the_zeroing_reaches_may_now_divide_by_zero() -> None:
    """Found by gate_residuals' generated tests: zeroing block 0 changes block 1's input, and
    block 1 divides by `|relu(conv(x))|`, which for some inputs is now zero. Block 2, whose
    input may so be NaN (and 0 * NaN is NaN), must not be claimed (it used to be)."""
    check_model(Net(4, False, (("fpn", False),
                               ("block", _block(Op("conv1", False), Op("relu"), Op("l2div"))),
                               ("block", _block(Op("conv1", False), Op("conv3", False),
                                                skip=1)))))
