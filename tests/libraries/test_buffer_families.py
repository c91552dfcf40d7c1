"""Families whose residual stream passes through a buffer filled by writes (issue 20).

Lumina2 packs caption and image tokens into ``hidden_states.new_zeros(...)`` with one
``setitem`` per sample; before the writes were followed, the main layers' input looked like
a constant and ``layers.0``'s attention branch was left non-identity with no row. Judged by
running the model: every block returns its input exactly, every zeroed module is needed.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from claims import snapshot, assert_only_zeroed
from zeta_fx import zero_init_pass

D = pytest.importorskip("diffusers")

BLOCKS = ("context_refiner.0", "noise_refiner.0", "layers.0", "layers.1")


def _lumina2():
    torch.manual_seed(0)
    model = D.Lumina2Transformer2DModel(
        sample_size=4, patch_size=2, in_channels=4, hidden_size=24, num_layers=2,
        num_refiner_layers=1, num_attention_heads=3, num_kv_heads=1, multiple_of=16,
        axes_dim_rope=(4, 2, 2), axes_lens=(128, 128, 128), cap_feat_dim=8).eval()
    return model


def _inputs(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(1, 4, 4, 4, generator=g),
                timestep=torch.rand(1, generator=g),
                encoder_hidden_states=torch.randn(1, 5, 8, generator=g),
                encoder_attention_mask=torch.ones(1, 5, dtype=torch.bool))


def _mismatched_blocks(model) -> list[str]:
    bad: list[str] = []

    def hook(name):
        def check(module, args, kwargs, out):
            x = args[0] if args else kwargs["hidden_states"]
            if not (torch.equal(out, x) and torch.isfinite(out).all()):
                bad.append(name)
        return check

    handles = [model.get_submodule(b).register_forward_hook(hook(b), with_kwargs=True)
               for b in BLOCKS]
    try:
        with torch.no_grad():
            for seed in (0, 1, 2):
                model(**_inputs(seed))
    finally:
        for h in handles:
            h.remove()
    return sorted(set(bad))


def test_lumina2_every_block_including_those_after_the_token_buffer():
    model = _lumina2()
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = zero_init_pass(model, example_kwargs=_inputs(0))
    expected = {f"{b}.{n}" for b in BLOCKS for n in ("norm2", "ffn_norm2")}
    assert set(report.modules) == expected, report.table()
    assert_only_zeroed(model, before, set(report.params))
    assert _mismatched_blocks(model) == []
    # each zeroed module is needed: restoring it makes its block differ from its input
    for fqn in sorted(expected):
        module = model.get_submodule(fqn)
        saved = {n: p.detach().clone() for n, p in module.named_parameters()}
        with torch.no_grad():
            for n, p in module.named_parameters():
                p.copy_(before[f"{fqn}.{n}"])
        assert fqn.rsplit(".", 1)[0] in _mismatched_blocks(model), fqn
        with torch.no_grad():
            for n, p in module.named_parameters():
                p.copy_(saved[n])
