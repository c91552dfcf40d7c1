"""Families whose joins hinge on the value-flow index (issue 20), built from tiny configs:
a cast to another value's dtype is no data use of it (Wan).

Judged by running: exactly the expected parameters zeroed, every other bit kept, each
zeroed branch outputs exactly zero in the model, each residual row's merge equals its skip
on the captured graph, and each zeroed module is needed (with its original values back,
its merge differs from its skip).
"""

from __future__ import annotations

import pytest
import torch

from claims import (OutputRecorder, assert_graph_claims, graph_claim_mismatches, params_of,
                    snapshot, state_swapped)
from zeta_fx import zero_init_pass
from zeta_fx.capture import capture


def _judge_rows(model, report, before, make_inputs, capture_options):
    """Rows hold on the captured graph, and each zeroed module is needed for them."""
    assert_graph_claims(model, report, make_inputs, before=before,
                        capture_options=capture_options)
    gm = capture(model, **capture_options)
    owners: dict[str, list[str]] = {}
    for p in report.params:
        owners.setdefault(p.rsplit(".", 1)[0], []).append(p)
    for owner, params in owners.items():
        with state_swapped(model, {p: before[p] for p in params}):
            problems = graph_claim_mismatches(model, gm, report, make_inputs, modes=("eval",),
                                              seeds=(0,))
        assert problems, f"`{owner}` was zeroed but no merge needs it"


# -- Wan: ``(x.float() + f(x) * gate).type_as(x)`` -------------------------------------------

def _wan():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    model = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4,
        out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2,
        rope_max_seq_len=32).eval()
    inputs = (torch.randn(1, 4, 2, 8, 8), torch.tensor([3]), torch.randn(1, 5, 16))
    return model, inputs


def _wan_kwargs(inputs):
    return dict(zip(("hidden_states", "timestep", "encoder_hidden_states"), inputs))


def _wan_make(inputs):
    def make(seed: int):
        gen = torch.Generator().manual_seed(seed)
        x, t, enc = inputs
        return (torch.randn(x.shape, generator=gen), t, torch.randn(enc.shape, generator=gen))
    return make


def test_wan_cross_attention_and_ffn_are_zeroed_past_the_cast_back():
    model, inputs = _wan()
    options = dict(example_kwargs=_wan_kwargs(inputs))
    before = snapshot(model)
    report = zero_init_pass(model, **options)
    ends = [f"blocks.{i}.{m}" for i in range(2) for m in ("attn2.to_out.0", "ffn.net.2")]
    assert set(report.params) == params_of(*ends), report.table()
    rec = OutputRecorder(model, [f"blocks.{i}.{m}" for i in range(2) for m in ("attn2", "ffn")])
    with torch.no_grad():
        model(**_wan_kwargs(_wan_make(inputs)(5)))
    rec.close()
    rec.assert_all_zero()
    _judge_rows(model, report, before, _wan_make(inputs), options)
    # the self-attention merges are left alone, with a reason (its rotary embedding writes
    # into a fresh buffer, which the index does not follow yet)
    skipped = {s.node for s in report.skipped}
    assert {"add_5", "add_15"} <= skipped, report.table()


@pytest.mark.xfail(strict=True, reason="needs data flow through writes into fresh buffers "
                   "(Wan's rotary embedding: `out = empty_like(h); out[..., 0::2] = ...`), "
                   "another part of issue 20: attn1 is left alone until then")
def test_wan_each_block_is_the_identity_after_the_pass():
    model, inputs = _wan()
    zero_init_pass(model, example_kwargs=_wan_kwargs(inputs))
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    handles = [b.register_forward_hook(
        lambda m, a, kw, out: seen.append((kw.get("hidden_states", a[0] if a else None), out)),
        with_kwargs=True) for b in model.blocks]
    handles += [b.register_forward_pre_hook(
        lambda m, a, kw: seen.append(("in", (a[0] if a else kw["hidden_states"]).clone())),
        with_kwargs=True) for b in model.blocks]
    with torch.no_grad():
        model(**_wan_kwargs(_wan_make(inputs)(7)))
    for h in handles:
        h.remove()
    ins = [v for k, v in seen if isinstance(k, str)]
    outs = [out for k, out in seen if not isinstance(k, str)]
    assert len(ins) == len(outs) == 2
    for i, o in zip(ins, outs):
        assert torch.equal(i, o)
