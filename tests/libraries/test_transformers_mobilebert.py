"""MobileBERT: what its skips really are, judged by running.

A MobileBERT layer narrows the stream with bottlenecks: ``layer_input =
NoNorm(dense(h))`` (``bottleneck.input``), attention whose queries and keys read another
bottleneck and whose values read ``h``, then ``NoNorm(attn_dense(a) + layer_input)``,
stacked FFNs ``NoNorm(dense(f) + x)``, the output ``NoNorm(dense(i) + x)`` and the output
bottleneck ``NoNorm(dense(o) + h)`` back at full width. ``NoNorm`` is ``x * w + b``: an
elementwise affine of its own parameters, so ``bottleneck.input`` (a linear and a NoNorm)
is a projection skip like conv + BN, and the attention's output dense is that join's
branch end. Every join is zeroed at its branch end; no ``NoNorm`` and no bottleneck input
projection is touched.
"""
from __future__ import annotations

import warnings

import pytest
import torch

T = pytest.importorskip("transformers")

from claims import (assert_blocks_equal_skip, check_pass, fixed_inputs,  # noqa: E402
                    graph_claim_mismatches, params_of, snapshot, state_swapped)
from zeta_fx.capture import capture  # noqa: E402

IDS = (torch.randint(0, 64, (1, 8), generator=torch.Generator().manual_seed(0)),)


def build(layers: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = T.MobileBertConfig(vocab_size=64, hidden_size=32, embedding_size=16,
                             num_hidden_layers=layers, num_attention_heads=2,
                             intermediate_size=32, intra_bottleneck_size=16,
                             true_hidden_size=16, num_feedforward_networks=2,
                             max_position_embeddings=16, hidden_dropout_prob=0.0,
                             attention_probs_dropout_prob=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return T.MobileBertModel(cfg).eval()


ENDS = ("attention.output.dense", "ffn.0.output.dense", "output.dense",
        "output.bottleneck.dense")


def test_every_mobilebert_join_is_zeroed_at_its_branch_end():
    model = build()
    before = snapshot(model)
    expected = params_of(*(f"encoder.layer.{i}.{e}" for i in range(2) for e in ENDS))
    report = check_pass(model, params=expected, inputs=IDS, example_inputs=IDS)
    assert report.skipped == [], report.table()
    # the attention join's skip is the input bottleneck (a projection), never zeroed
    attention_rows = [r for r in report.touched if r["module"].endswith("attention.output.dense")]
    assert all(r["site"]["skip_kind"] == "projection" for r in attention_rows)
    assert all("bottleneck.input" in m for r in attention_rows for m in r["site"]["skip_modules"])

    # by running the modules: each sum inside a module equals its skip
    claims = []
    for layer in model.encoder.layer:
        out = layer.attention.output
        claims.append((out, lambda h, r, out=out: out.LayerNorm(r)))
        for ffn in layer.ffn:
            claims.append((ffn.output, lambda h, r, o=ffn.output: o.LayerNorm(r)))
        bott = layer.output.bottleneck
        claims.append((layer.output, lambda i, r1, r2, b=bott: b.LayerNorm(r2)))
        claims.append((layer, lambda h, *a, layer=layer, **k: (layer.output.bottleneck.LayerNorm(h),)))
    assert_blocks_equal_skip(model, claims, fixed_inputs(IDS), before=before)

    # each zeroed module is needed: restored, some row's merge is no longer its skip
    gm = capture(model, example_inputs=IDS)
    for module in report.modules:
        params = [p for p in report.params if p.rsplit(".", 1)[0] == module]
        with state_swapped(model, {p: before[p] for p in params}):
            assert graph_claim_mismatches(model, gm, report, fixed_inputs(IDS), seeds=(0,),
                                          modes=("eval",)), f"{module} is not needed"
