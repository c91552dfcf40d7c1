"""Hugging Face transformers families, built from tiny configs (nothing downloaded).

For each family: ``residual_branch_last`` zeroes exactly the expected branch ends, and a
check that does not trust the pass confirms it by running the model: forward hooks on every
layer show each returns exactly its skip (pre-LN: its input; post-LN: the norms of its
input, computed with the layer's own norms), nothing outside the report changed by a bit,
and each zeroed module is needed (restoring it makes its layer differ from its skip).
Symbolic tracing cannot follow these models: the example inputs are what captures them; a
tied GPT-2 head is refused, naming the embedding.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import pytest
import torch
from torch import nn

from claims import assert_unchanged, snapshot
from zeta_fx import CaptureError, TiedParameterError, zero_init_pass

T = pytest.importorskip("transformers")

V = 64


def _ids(b: int = 1, n: int = 8) -> torch.Tensor:
    return torch.randint(0, V, (b, n), generator=torch.Generator().manual_seed(0))


def _dec(cfg_cls, model_cls, **kw):
    base = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                use_cache=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    base.update(kw)
    return model_cls(cfg_cls(**base))


def _moe(cfg_cls, model_cls, impl, **kw):
    config = cfg_cls(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                     use_cache=False, pad_token_id=0, bos_token_id=1, eos_token_id=2, **kw)
    config._experts_implementation = impl
    return model_cls(config)


def _pre(layer: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: x


def _bert(layer: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: layer.output.LayerNorm(layer.attention.output.LayerNorm(x))


def _distilbert(layer: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: layer.output_layer_norm(layer.sa_layer_norm(x))


def _bart_encoder(layer: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: layer.final_layer_norm(layer.self_attn_layer_norm(x))


def _bart_decoder(layer: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: layer.final_layer_norm(layer.encoder_attn_layer_norm(
        layer.self_attn_layer_norm(x)))


PRE_DECODER = ("model.layers.{}.self_attn.o_proj", "model.layers.{}.mlp.down_proj")

# family -> (build, example inputs, example kwargs, zeroed modules (per layer index),
#            [(layers' container FQN, skip function of a layer)])
FAMILIES: dict[str, tuple[Callable[[], nn.Module], tuple, dict, tuple[str, ...], list]] = {
    "llama": (lambda: _dec(T.LlamaConfig, T.LlamaForCausalLM), (_ids(),), {}, PRE_DECODER,
              [("model.layers", _pre)]),
    "mistral": (lambda: _dec(T.MistralConfig, T.MistralForCausalLM), (_ids(),), {},
                PRE_DECODER, [("model.layers", _pre)]),
    "qwen2": (lambda: _dec(T.Qwen2Config, T.Qwen2ForCausalLM), (_ids(),), {}, PRE_DECODER,
              [("model.layers", _pre)]),
    "qwen3": (lambda: _dec(T.Qwen3Config, T.Qwen3ForCausalLM, head_dim=8), (_ids(),), {},
              PRE_DECODER, [("model.layers", _pre)]),
    "gemma": (lambda: _dec(T.GemmaConfig, T.GemmaForCausalLM, head_dim=8), (_ids(),), {},
              PRE_DECODER, [("model.layers", _pre)]),
    # sandwich norms with a `1 + w` scale: the post-norm cannot be the last layer
    "gemma2": (lambda: _dec(T.Gemma2Config, T.Gemma2ForCausalLM, head_dim=8), (_ids(),), {},
               PRE_DECODER, [("model.layers", _pre)]),
    "phi": (lambda: _dec(T.PhiConfig, T.PhiForCausalLM), (_ids(),), {},
            ("model.layers.{}.self_attn.dense", "model.layers.{}.mlp.fc2"),
            [("model.layers", _pre)]),
    "phi3": (lambda: _dec(T.Phi3Config, T.Phi3ForCausalLM), (_ids(),), {}, PRE_DECODER,
             [("model.layers", _pre)]),
    "gpt_neox": (lambda: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=64, use_cache=False)), (_ids(),), {},
        ("gpt_neox.layers.{}.attention.dense", "gpt_neox.layers.{}.mlp.dense_4h_to_h"),
        [("gpt_neox.layers", _pre)]),
    "gpt2": (lambda: T.GPT2LMHeadModel(T.GPT2Config(
        vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64, use_cache=False,
        bos_token_id=1, eos_token_id=2)), (_ids(),), {},
        ("transformer.h.{}.attn.c_proj", "transformer.h.{}.mlp.c_proj"),
        [("transformer.h", _pre)]),
    # `x @ self.weight.T` (FalconLinear), parallel attention and MLP
    "falcon": (lambda: T.FalconForCausalLM(T.FalconConfig(
        vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        use_cache=False)), (_ids(),), {},
        ("transformer.h.{}.self_attention.dense", "transformer.h.{}.mlp.dense_4h_to_h"),
        [("transformer.h", _pre)]),
    "bert": (lambda: T.BertModel(T.BertConfig(
        vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64)), (_ids(),), {},
        ("encoder.layer.{}.attention.output.dense", "encoder.layer.{}.output.dense"),
        [("encoder.layer", _bert)]),
    "roberta": (lambda: T.RobertaModel(T.RobertaConfig(
        vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64)), (_ids() + 2,), {},
        ("encoder.layer.{}.attention.output.dense", "encoder.layer.{}.output.dense"),
        [("encoder.layer", _bert)]),
    "distilbert": (lambda: T.DistilBertModel(T.DistilBertConfig(
        vocab_size=V, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
        max_position_embeddings=64)), (_ids(),), {},
        ("transformer.layer.{}.attention.out_lin", "transformer.layer.{}.ffn.lin2"),
        [("transformer.layer", _distilbert)]),
    "t5": (lambda: T.T5Model(T.T5Config(
        vocab_size=V, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        use_cache=False)), (_ids(),), {"decoder_input_ids": _ids()},
        ("encoder.block.{}.layer.0.SelfAttention.o", "encoder.block.{}.layer.1.DenseReluDense.wo",
         "decoder.block.{}.layer.0.SelfAttention.o", "decoder.block.{}.layer.1.EncDecAttention.o",
         "decoder.block.{}.layer.2.DenseReluDense.wo"),
        [("encoder.block", _pre), ("decoder.block", _pre)]),
    "bart": (lambda: T.BartModel(T.BartConfig(
        vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_position_embeddings=64, use_cache=False)), (_ids(),), {"decoder_input_ids": _ids()},
        ("encoder.layers.{}.self_attn.out_proj", "encoder.layers.{}.fc2",
         "decoder.layers.{}.self_attn.out_proj", "decoder.layers.{}.encoder_attn.out_proj",
         "decoder.layers.{}.fc2"),
        [("encoder.layers", _bart_encoder), ("decoder.layers", _bart_decoder)]),
    "vit": (lambda: T.ViTModel(T.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        image_size=16, patch_size=8)), (torch.randn(1, 3, 16, 16),), {},
        None, [("layers", _pre)]),
    "clip_text": (lambda: T.CLIPTextModel(T.CLIPTextConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
        pad_token_id=0)), (_ids(),), {},
        ("encoder.layers.{}.self_attn.out_proj", "encoder.layers.{}.mlp.fc2"),
        [("encoder.layers", _pre)]),
    "whisper": (lambda: T.WhisperModel(T.WhisperConfig(
        vocab_size=V, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
        d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=8,
        max_source_positions=8, max_target_positions=16, use_cache=False)),
        (torch.randn(1, 8, 16),), {"decoder_input_ids": _ids(1, 4)},
        ("encoder.layers.{}.self_attn.out_proj", "encoder.layers.{}.fc2",
         "decoder.layers.{}.self_attn.out_proj", "decoder.layers.{}.encoder_attn.out_proj",
         "decoder.layers.{}.fc2"),
        [("encoder.layers", _pre), ("decoder.layers", _pre)]),
    # experts as stacked parameters: the grouped (default on CPU) and batched kernels
    "mixtral": (lambda: _moe(T.MixtralConfig, T.MixtralForCausalLM, "grouped_mm",
                             num_local_experts=4, num_experts_per_tok=2), (_ids(),), {},
                ("model.layers.{}.self_attn.o_proj", "model.layers.{}.mlp.experts"),
                [("model.layers", _pre)]),
    "mixtral_batched": (lambda: _moe(T.MixtralConfig, T.MixtralForCausalLM, "batched_mm",
                                     num_local_experts=4, num_experts_per_tok=2), (_ids(),), {},
                        ("model.layers.{}.self_attn.o_proj", "model.layers.{}.mlp.experts"),
                        [("model.layers", _pre)]),
    # the eager loop over the experts that were hit is data-dependent Python: captured by
    # following the example inputs; its index_add_ into zeros is the experts' sum
    "mixtral_eager": (lambda: _moe(T.MixtralConfig, T.MixtralForCausalLM, "eager",
                                   num_local_experts=4, num_experts_per_tok=2), (_ids(),), {},
                      ("model.layers.{}.self_attn.o_proj", "model.layers.{}.mlp.experts"),
                      [("model.layers", _pre)]),
    "qwen2_moe": (lambda: _moe(T.Qwen2MoeConfig, T.Qwen2MoeForCausalLM, "grouped_mm",
                               num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                               shared_expert_intermediate_size=16), (_ids(),), {},
                  ("model.layers.{}.self_attn.o_proj", "model.layers.{}.mlp.experts",
                   "model.layers.{}.mlp.shared_expert.down_proj"),
                  [("model.layers", _pre)]),
    "qwen2_moe_batched": (lambda: _moe(T.Qwen2MoeConfig, T.Qwen2MoeForCausalLM, "batched_mm",
                                       num_experts=4, num_experts_per_tok=2,
                                       moe_intermediate_size=16,
                                       shared_expert_intermediate_size=16), (_ids(),), {},
                          ("model.layers.{}.self_attn.o_proj", "model.layers.{}.mlp.experts",
                           "model.layers.{}.mlp.shared_expert.down_proj"),
                          [("model.layers", _pre)]),
    # the SSM's `D * x` beside the scan is not a skip: the mixer's out_proj ends the branch
    "mamba": (lambda: T.MambaForCausalLM(T.MambaConfig(
        vocab_size=V, hidden_size=32, state_size=4, num_hidden_layers=2, expand=2,
        conv_kernel=2, use_cache=False)), (_ids(),), {},
        ("backbone.layers.{}.mixer.out_proj",), [("backbone.layers", _pre)]),
}
# ViT's module names changed across transformers releases: read them from the model
VIT_ENDS = ("attention.output.dense", "output.dense", "attention.o_proj", "mlp.fc2")


def _build(name: str) -> tuple[nn.Module, tuple, dict]:
    build, args, kwargs, _, _ = FAMILIES[name]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build()
    return model.eval(), args, kwargs


def _first(value: Any) -> torch.Tensor:
    while isinstance(value, (tuple, list)):
        value = value[0]
    if hasattr(value, "last_hidden_state"):
        value = value.last_hidden_state
    return value


class LayerRecorder:
    """Input hidden states and outputs of every layer under the given containers."""

    def __init__(self, model: nn.Module, containers: list) -> None:
        self.layers: list[tuple[str, nn.Module, Callable]] = []
        self.seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.handles = []
        for fqn, skip in containers:
            for i, layer in enumerate(model.get_submodule(fqn)):
                name = f"{fqn}.{i}"
                self.layers.append((name, layer, skip(layer)))
                self.handles.append(layer.register_forward_hook(self._hook(name),
                                                                with_kwargs=True))

    def _hook(self, name: str):
        def hook(module, args, kwargs, output):
            x = args[0] if args else kwargs.get("hidden_states")
            self.seen[name] = (x.detach().clone(), _first(output).detach().clone())
        return hook

    def differing(self) -> list[str]:
        bad = []
        with torch.no_grad():
            for name, _, skip in self.layers:
                x, out = self.seen[name]
                expect = skip(x)
                if out.shape != expect.shape or not torch.equal(out, expect.to(out.dtype)) \
                        or not torch.isfinite(out).all():
                    bad.append(name)
        return bad

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _expected(name: str, model: nn.Module) -> set[str]:
    _, _, _, ends, containers = FAMILIES[name]
    if ends is None:  # ViT
        layers = model.get_submodule(containers[0][0])
        return {f"{containers[0][0]}.{i}.{e}" for i in range(len(layers)) for e in VIT_ENDS
                if _has(layers[i], e)}
    n = len(model.get_submodule(containers[0][0]))
    return {e.format(i) for i in range(n) for e in ends}


def _has(module: nn.Module, fqn: str) -> bool:
    try:
        module.get_submodule(fqn)
        return True
    except AttributeError:
        return False


def _run(model: nn.Module, args: tuple, kwargs: dict) -> None:
    with torch.no_grad():
        model(*args, **kwargs)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_layers_start_as_their_skip(name):
    model, args, kwargs = _build(name)
    before = snapshot(model)
    report = zero_init_pass(model, rule="residual_branch_last", example_inputs=args,
                            example_kwargs=kwargs)
    assert set(report.modules) == _expected(name, model), report.table()
    # nothing outside the report changed; what it lists is zero
    after = snapshot(model)
    for fqn, value in after.items():
        if fqn in report.params:
            assert not value.any(), fqn
        else:
            assert torch.equal(value, before[fqn]), f"{fqn} changed"
    recorder = LayerRecorder(model, FAMILIES[name][4])
    try:
        _run(model, args, kwargs)
        assert recorder.differing() == []
        # each zeroed module is needed: with its values back, some layer leaves its skip
        for module in report.modules:
            params = [p for p in report.params if p.rsplit(".", 1)[0] == module]
            saved = {p: after[p] for p in params}
            with torch.no_grad():
                for p in params:
                    model.get_parameter(p).copy_(before[p])
            _run(model, args, kwargs)
            assert recorder.differing(), f"{module} was zeroed but is not needed"
            with torch.no_grad():
                for p in params:
                    model.get_parameter(p).copy_(saved[p])
    finally:
        recorder.close()


# -- what symbolic tracing cannot follow, and ties -------------------------------------------
@pytest.mark.parametrize("name", ["bert", "gpt2", "llama"])
def test_symbolic_tracing_fails_so_example_inputs_are_needed(name):
    model, args, kwargs = _build(name)
    with pytest.raises(CaptureError, match="example_inputs"):
        zero_init_pass(model, rule="residual_branch_last", dry_run=True)
    report = zero_init_pass(model, rule="residual_branch_last", dry_run=True,
                            example_inputs=args, example_kwargs=kwargs)
    modules = [end.format(i) for i in range(2) for end in FAMILIES[name][3]]
    assert report.modules == modules  # in the order of the graph, each once
    own = {f"{m}.{p}" for m in modules for p, _ in model.get_submodule(m).named_parameters()}
    assert set(report.params) == own and len(report.params) == len(own)


def test_tied_lm_head_is_refused_naming_the_embedding():
    model, args, kwargs = _build("gpt2")
    before = snapshot(model)
    with pytest.raises(TiedParameterError) as info:
        zero_init_pass(model, rule="output_layer", example_inputs=args, example_kwargs=kwargs)
    assert "`lm_head.weight`" in str(info.value)
    assert "`transformer.wte.weight`" in str(info.value)
    assert_unchanged(model, before)
