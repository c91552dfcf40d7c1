"""timm's parallel ViT blocks: several branches into one merge, each zeroed at its end.

``ParallelScalingBlock`` (ViT-22B): ``x + ls(attn_out_proj(a) + mlp_out_proj(m))`` where
``m, q, k, v = split(in_proj(norm(x)))``. The inner sum of the two output projections is no
residual join (the MLP path reads another item of the fused projection than attention
does, so it is a branch, not a projection skip); the block's merge is, with an identity skip:
both output projections are its branch ends, or the LayerScale after their sum when there
is one. ``ParallelThingsBlock``: ``x + sum(stack([attn_i(x) ...]))`` then the same for the
MLPs: every parallel branch is zeroed at its end.

Judged by running: each block outputs its input exactly, nothing else moved, each zeroed
module is needed (restored, its block is no longer the identity), each row's merge is its
skip on the captured graph.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

timm = pytest.importorskip("timm")
from timm.models.vision_transformer import ParallelScalingBlock, ParallelThingsBlock  # noqa: E402

from claims import fixed_inputs, judge, params_of, snapshot  # noqa: E402
from zeta_fx import zero_init_pass  # noqa: E402


def vit(block_fn, init_values=None, depth=2):
    torch.manual_seed(0)
    return timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32,
                             patch_size=8, embed_dim=32, depth=depth, num_heads=2,
                             block_fn=block_fn, init_values=init_values).eval()


X = (torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)),)


def _run(model, expected):
    before = snapshot(model)
    report = zero_init_pass(model, rule="residual_branch_last")
    assert set(report.params) == expected, report.table()
    claims = [(block, lambda h: h) for block in model.blocks]
    judge(model, before, report, claims, fixed_inputs(X))
    return report


def test_parallel_scaling_block_zeroes_both_output_projections():
    model = vit(ParallelScalingBlock)
    expected = params_of(*(f"blocks.{i}.{m}" for i in range(2)
                           for m in ("attn_out_proj", "mlp_out_proj")))
    report = _run(model, expected)
    # the inner sum of the two projections is named, left alone, with why
    inner = [s for s in report.skipped if "parallel branches of one fused projection" in s.reason]
    assert len(inner) == 2, report.table()
    # the block still computes: the fused input projection is untouched
    assert model.blocks[0].in_proj.weight.any()


def test_parallel_scaling_block_with_layer_scale_zeroes_the_scale_only():
    model = vit(ParallelScalingBlock, init_values=1e-5)
    _run(model, {f"blocks.{i}.ls.gamma" for i in range(2)})


@pytest.mark.parametrize("init_values, ends", [
    (None, ("attns.{}.attn.proj", "ffns.{}.mlp.fc2")),
    (1e-5, ("attns.{}.ls", "ffns.{}.ls")),
])
def test_parallel_things_block_zeroes_every_parallel_branch(init_values, ends):
    model = vit(ParallelThingsBlock, init_values=init_values)
    names = ("gamma",) if init_values else ("weight", "bias")
    expected = params_of(*(f"blocks.{b}.{e.format(i)}" for b in range(2) for e in ends
                           for i in range(2)), names=names)
    _run(model, expected)


def test_a_projection_of_the_same_item_as_the_branch_is_still_a_skip():
    """The rule is about disjoint items: a projection that reads the same item as the
    branch is still a skip (one item of a split, projected, beside a branch on it)."""
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.down = nn.Linear(4, 4)
            self.fc1 = nn.Linear(4, 8)
            self.fc2 = nn.Linear(8, 4)

        def forward(self, x):
            parts = x.chunk(2, dim=-1)  # each `parts[0]` is a getitem node of its own
            return self.down(parts[0]) + self.fc2(torch.relu(self.fc1(parts[0])))

    torch.manual_seed(0)
    model = Block().eval()
    report = zero_init_pass(model, dry_run=True)
    assert report.modules == ["fc2"], report.table()
    assert report.touched[0]["site"]["skip_kind"] == "projection"
