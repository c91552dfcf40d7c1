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


def _judge_rows(model, report, before, make_inputs, capture_options, branches, run=None):
    """Rows hold on the captured graph; each zeroed module is needed: ``branches`` maps it
    to the module whose output its merge adds (its branch), which is exactly zero after the
    pass and, with the module's original values back (those not zero already), is not.
    ``run`` calls the model on a tuple of inputs (default: positionally)."""
    run = run or (lambda args: model(*args))
    assert_graph_claims(model, report, make_inputs, before=before,
                        capture_options=capture_options)
    assert set(branches) == set(report.modules), report.table()
    rec = OutputRecorder(model, set(branches.values()))
    with torch.no_grad():
        run(make_inputs(5))
    rec.close()
    rec.assert_all_zero()
    for module, branch in branches.items():
        params = [p for p in report.params if p.startswith(module + ".") and before[p].any()]
        assert params, f"`{module}`: nothing it holds was non-zero before the pass"
        rec = OutputRecorder(model, [branch])
        with state_swapped(model, {p: before[p] for p in params}), torch.no_grad():
            run(make_inputs(6))
        rec.close()
        assert any(v.any() for v in rec.outputs[branch]), \
            f"`{module}` was zeroed but its branch `{branch}` is zero without it"


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


def test_wan_attention_and_ffn_are_zeroed_past_the_cast_back():
    """Every branch of every block: the cast-back merges (metadata reads) and the
    self-attention, whose rotary embedding fills a fresh buffer (`out = empty_like(h);
    out[..., 0::2] = ...`: the data written into it is followed)."""
    model, inputs = _wan()
    options = dict(example_kwargs=_wan_kwargs(inputs))
    before = snapshot(model)
    report = zero_init_pass(model, **options)
    ends = [f"blocks.{i}.{m}" for i in range(2)
            for m in ("attn1.to_out.0", "attn2.to_out.0", "ffn.net.2")]
    assert set(report.params) == params_of(*ends), report.table()
    _judge_rows(model, report, before, _wan_make(inputs), options,
                {end: end.rsplit(".", 2)[0] for end in ends},  # attn2.to_out.0: attn2
                run=lambda args: model(**_wan_kwargs(args)))


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


# -- weight norm under aten: wav2vec2 / HuBERT positional conv, EnCodec residual units ---------

def _wn(module: str) -> set[str]:
    return {f"{module}.parametrizations.weight.original0", f"{module}.bias"}


def _speech(kind: str):
    transformers = pytest.importorskip("transformers")
    config_cls, model_cls = {"wav2vec2": ("Wav2Vec2Config", "Wav2Vec2Model"),
                             "hubert": ("HubertConfig", "HubertModel")}[kind]
    config = getattr(transformers, config_cls)(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=4,
        num_conv_pos_embedding_groups=2)
    torch.manual_seed(0)
    return getattr(transformers, model_cls)(config).eval()


def _fixed(shape):
    return lambda seed: (torch.randn(shape, generator=torch.Generator().manual_seed(seed)),)


@pytest.mark.parametrize("capture_method", ["export", "concrete"])
@pytest.mark.parametrize("kind", ["wav2vec2", "hubert"])
def test_speech_positional_conv_is_zeroed_by_its_weight_norm_magnitude(kind, capture_method):
    model = _speech(kind)
    x = (torch.randn(1, 400),)
    options = dict(example_inputs=x, method=capture_method)
    before = snapshot(model)
    report = zero_init_pass(model, example_inputs=x, capture=capture_method)
    layers = [f"encoder.layers.{i}.{m}" for i in range(1)
              for m in ("attention.out_proj", "feed_forward.output_dense")]
    expected = _wn("encoder.pos_conv_embed.conv") | params_of(*layers)
    assert set(report.params) == expected, report.table()
    # the positional embedding adds exactly zero now, and only while its magnitude is zero
    branches = {m: m.rsplit(".", 1)[0] for m in layers}
    branches["encoder.pos_conv_embed.conv"] = "encoder.pos_conv_embed"
    _judge_rows(model, report, before, _fixed((1, 400)), options, branches)


def test_encodec_residual_units_end_at_their_weight_normed_conv():
    transformers = pytest.importorskip("transformers")
    config = transformers.EncodecConfig(
        hidden_size=8, num_filters=4, num_residual_layers=1, upsampling_ratios=[2, 2],
        codebook_size=16, codebook_dim=8, num_lstm_layers=1, compress=2, audio_channels=1,
        sampling_rate=800)
    torch.manual_seed(0)
    model = transformers.EncodecModel(config).eval()
    x = (torch.randn(1, 1, 64),)
    options = dict(example_inputs=x, method="concrete")
    before = snapshot(model)
    report = zero_init_pass(model, example_inputs=x, capture="concrete")
    units = ["encoder.layers.1", "encoder.layers.4", "decoder.layers.4", "decoder.layers.7"]
    assert set(report.params) == set().union(*(_wn(f"{u}.block.3.conv") for u in units)), \
        report.table()
    # each residual unit returns its shortcut exactly
    seen = []
    hooks = [model.get_submodule(u).register_forward_hook(
        lambda m, a, out: seen.append(torch.equal(out, m.shortcut(a[0])))) for u in units]
    with torch.no_grad():
        model(*_fixed((1, 1, 64))(4))
    for h in hooks:
        h.remove()
    assert seen == [True] * 4
    _judge_rows(model, report, before, _fixed((1, 1, 64)), options,
                {f"{u}.block.3.conv": f"{u}.block.3" for u in units})


# -- learned tokens: CaiT class attention, Idefics2 perceiver latents -----------------------

def _blocks_equal_skip(model, blocks, run, stream_of):
    """Run the model once; for each block (module FQN), whether its output equals its
    stream input (``stream_of(args, kwargs)``), exactly."""
    seen: dict[str, list[bool]] = {b: [] for b in blocks}

    def hook(name):
        def record(module, args, kwargs, out):
            out = out[0] if isinstance(out, tuple) else out
            seen[name].append(torch.equal(out, stream_of(args, kwargs)))
        return record
    handles = [model.get_submodule(b).register_forward_hook(hook(b), with_kwargs=True)
               for b in blocks]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    assert all(seen.values()), f"blocks that did not run: {[b for b, v in seen.items() if not v]}"
    return {b: all(v) for b, v in seen.items()}


def test_cait_class_attention_updates_the_class_token_as_a_stream():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("cait_xxs24_224", pretrained=False, img_size=32, patch_size=8,
                              embed_dim=16, depth=2, num_heads=2, depth_token_only=1,
                              num_classes=5).eval()
    before = snapshot(model)
    report = zero_init_pass(model)
    expected = {f"{b}.gamma_{i}" for b in ("blocks.0", "blocks.1", "blocks_token_only.0")
                for i in (1, 2)}
    assert set(report.params) == expected, report.table()
    images = torch.randn(2, 3, 32, 32)
    blocks = {"blocks.0": lambda a, kw: a[0], "blocks.1": lambda a, kw: a[0],
              "blocks_token_only.0": lambda a, kw: a[1]}  # (x, x_cls): returns x_cls + ...

    def identities():
        out = {}
        for b, stream in blocks.items():
            out.update(_blocks_equal_skip(model, [b], lambda: model(images), stream))
        return out
    assert all(identities().values())
    for p in ("blocks_token_only.0.gamma_1", "blocks_token_only.0.gamma_2"):  # each needed
        with state_swapped(model, {p: before[p]}):
            assert not identities()["blocks_token_only.0"], p
    assert_graph_claims(model, report, _fixed((2, 3, 32, 32)), before=before)


def test_idefics2_perceiver_latents_are_the_stream():
    transformers = pytest.importorskip("transformers")
    from transformers.models.idefics2.modeling_idefics2 import Idefics2PerceiverResampler
    config = transformers.Idefics2PerceiverConfig(
        hidden_size=16, resampler_n_latents=4, resampler_depth=2, resampler_n_heads=2,
        resampler_head_dim=8, num_key_value_heads=1, attention_dropout=0.0)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = Idefics2PerceiverResampler(config).eval()
    inputs = (torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.long))
    before = snapshot(model)
    report = zero_init_pass(model, example_inputs=inputs)
    ends = [f"layers.{i}.{m}" for i in range(2) for m in ("self_attn.o_proj", "mlp.down_proj")]
    assert set(report.params) == {f"{e}.weight" for e in ends}, report.table()

    def make(seed):
        return (torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(seed)), inputs[1])
    layers = ["layers.0", "layers.1"]

    def identities():
        return _blocks_equal_skip(model, layers, lambda: model(*make(3)),
                                  lambda a, kw: kw.get("latents", a[0] if a else None))
    assert all(identities().values())
    for end in ends:  # each needed: its layer leaves its latents with it back
        with state_swapped(model, {f"{end}.weight": before[f"{end}.weight"]}):
            assert not identities()[end.split(".self_attn")[0].split(".mlp")[0]], end
    assert_graph_claims(model, report, make, before=before,
                        capture_options=dict(example_inputs=inputs))
