"""Sana's linear attention past the first block (issue 20).

``SanaLinearAttnProcessor2_0`` divides by ``(pad(v, value=1) @ relu(k) @ relu(q))[..., -1:, :]
+ 1e-15``: the padded row of ones times values ``>= 0``, so ``>= 0``, plus an eps that float32
holds. Once block 0 is zeroed, block 1 reads the skip alone, and that divisor must be proven
positive from the graph, not assumed. Judged by running the model: every transformer block
returns exactly its input, nothing else changed, each zeroed module is needed.
"""

from __future__ import annotations

import pytest
import torch

from claims import snapshot
from zeta_fx import zero_init_pass

pytest.importorskip("diffusers")
from diffusers import SanaTransformer2DModel  # noqa: E402


def _kwargs(seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(1, 4, 8, 8, generator=gen),
                encoder_hidden_states=torch.randn(1, 5, 16, generator=gen),
                timestep=torch.tensor([10]))


def _differing(model, kwargs) -> list[int]:
    seen = {}
    handles = [b.register_forward_hook(
        lambda m, a, kw, out, i=i: seen.__setitem__(i, (
            (a[0] if a else kw["hidden_states"]).detach().clone(), out.detach().clone())),
        with_kwargs=True) for i, b in enumerate(model.transformer_blocks)]
    try:
        with torch.no_grad():
            model(**kwargs)
    finally:
        for h in handles:
            h.remove()
    assert len(seen) == len(model.transformer_blocks)
    return [i for i, (x, out) in sorted(seen.items())
            if not torch.equal(x, out) or not torch.isfinite(out).all()]


def build(num_layers: int = 3) -> SanaTransformer2DModel:
    torch.manual_seed(0)
    return SanaTransformer2DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8,
        num_layers=num_layers, num_cross_attention_heads=2, cross_attention_head_dim=8,
        cross_attention_dim=16, caption_channels=16, mlp_ratio=2.0, sample_size=8,
        patch_size=1, norm_elementwise_affine=False).eval()


def test_every_sana_block_is_its_input():
    model = build()
    before = snapshot(model)
    report = zero_init_pass(model, example_kwargs=_kwargs(0))
    assert set(report.modules) == {f"transformer_blocks.{i}.{end}" for i in range(3)
                                   for end in ("attn1.to_out.0", "attn2.to_out.0",
                                               "ff.conv_point")}, report.table()
    after = snapshot(model)
    for fqn, value in after.items():
        assert not value.any() if fqn in report.params else torch.equal(value, before[fqn]), fqn
    for seed in range(3):
        assert _differing(model, _kwargs(seed)) == [], seed
    for module in report.modules:  # each zeroed module is needed
        params = [p for p in report.params if p.rsplit(".", 1)[0] == module]
        with torch.no_grad():
            for p in params:
                model.get_parameter(p).copy_(before[p])
        assert _differing(model, _kwargs(0)), f"{module} was zeroed but is not needed"
        with torch.no_grad():
            for p in params:
                model.get_parameter(p).zero_()
