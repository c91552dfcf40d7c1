"""Families whose later blocks were left alone once the first was zeroed (issue 20).

After block 0's branch ends are zero, block 1 reads the skip alone: its guards (a state-space
model's ``exp(segsum(A * dt))`` with ``-inf`` above the diagonal, a router's
``topk / (topk.sum(-1) + 1e-20)``, Phi-MoE's sparsemixer margin mask, built under
``torch.no_grad()``) must be proven again from the facts. Each family is built
from a tiny config and judged by running it: every decoder layer returns exactly its input,
nothing outside the report changed, and each zeroed module is needed (with its values back,
some layer differs from its input). DeepSeek-V3 is also planned at its published sizes on
the meta device (fewer layers, same structure: 3 dense layers, then MoE ones).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from claims import snapshot
from zeta_fx import zero_init_pass

T = pytest.importorskip("transformers")

V = 64
BASE = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            use_cache=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _model(cfg_cls, model_cls, **kw):
    config = dict(BASE)
    config.update(kw)
    return model_cls(cfg_cls(**config))


ATTN_MLP = ("layers.{}.self_attn.o_proj", "layers.{}.mlp.down_proj")
# family -> (build, zeroed modules per layer: {layer index or None (all): names})
FAMILIES = {
    "mamba2": (lambda: T.Mamba2Model(T.Mamba2Config(
        vocab_size=V, hidden_size=32, state_size=8, num_hidden_layers=3, expand=2,
        num_heads=4, head_dim=16, n_groups=1, conv_kernel=2, chunk_size=4, use_cache=False)),
        {None: ("layers.{}.mixer.out_proj",)}),
    "falcon_h1": (lambda: _model(
        T.FalconH1Config, T.FalconH1Model, mamba_d_ssm=64, mamba_n_heads=4, mamba_d_head=16,
        mamba_d_state=8, mamba_n_groups=1, mamba_d_conv=2, mamba_chunk_size=4, head_dim=8),
        {None: ("layers.{}.mamba.out_proj", "layers.{}.self_attn.o_proj",
                "layers.{}.feed_forward.down_proj")}),
    "zamba2": (lambda: _model(
        T.Zamba2Config, T.Zamba2Model, mamba_d_state=8, mamba_headdim=16, mamba_ngroups=1,
        n_mamba_heads=4, num_hidden_layers=4, chunk_size=4, attention_head_dim=8,
        layers_block_type=["mamba", "hybrid", "mamba", "mamba"], hybrid_layer_ids=[1]),
        {None: ("layers.{}.mamba.out_proj",),
         1: ("layers.1.shared_transformer.feed_forward.gate_up_proj_adapter_list.0.1",
             "layers.1.linear", "layers.1.mamba_decoder.mamba.out_proj")}),
    "deepseek_v3": (lambda: _model(
        T.DeepseekV3Config, T.DeepseekV3Model, n_routed_experts=8, num_experts_per_tok=2,
        moe_intermediate_size=16, first_k_dense_replace=1, n_group=1, topk_group=1,
        kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8,
        v_head_dim=8, n_shared_experts=1, num_key_value_heads=4),
        {0: ATTN_MLP, None: ("layers.{}.self_attn.o_proj", "layers.{}.mlp.experts",
                             "layers.{}.mlp.shared_experts.down_proj")}),
    # its sparsemixer router masks scores more than a margin below the row's best with -inf,
    # the mask computed under torch.no_grad() (a subgraph under export)
    "phimoe": (lambda: _model(T.PhimoeConfig, T.PhimoeModel, num_local_experts=4,
                              num_experts_per_tok=2),
               {None: ("layers.{}.self_attn.o_proj", "layers.{}.mlp.experts")}),
}


def _outputs_zero(fqn: str):
    """The claim "``fqn``'s output is exactly zero", judged by running the model."""
    def holds(model: nn.Module) -> bool:
        seen = []
        handle = model.get_submodule(fqn).register_forward_hook(
            lambda m, a, out: seen.append(bool(out.any()) or not bool(torch.isfinite(out).all())))
        try:
            _run(model, 0)
        finally:
            handle.remove()
        return bool(seen) and not any(seen)
    return holds


def _input_is(fqn: str, layer: str):
    """The claim "``fqn`` reads exactly ``layer``'s input" (an inner merge is its skip)."""
    def holds(model: nn.Module) -> bool:
        seen: dict[str, torch.Tensor] = {}

        def keep(name):
            def hook(m, args, kwargs):
                x = args[0] if args else kwargs["hidden_states"]
                seen[name] = x.detach().clone()
            return hook
        handles = [model.get_submodule(f).register_forward_pre_hook(keep(f), with_kwargs=True)
                   for f in (fqn, layer)]
        try:
            _run(model, 0)
        finally:
            for h in handles:
                h.remove()
        return torch.equal(seen[fqn], seen[layer])
    return holds


# zeroed modules whose claim is a merge inside a layer, not the layer. Zamba2's shared MLP
# adds a LoRA-style adapter beside its own projection (`gate_up_proj(x) + adapter(x)`), and
# its hybrid layer adds `linear(shared_transformer(h))` to `h` before the Mamba mixer: the
# mixer's zeroed out_proj already makes the layer its input, so these are judged inside.
INNER = {"layers.1.shared_transformer.feed_forward.gate_up_proj_adapter_list.0.1":
         _outputs_zero("layers.1.shared_transformer.feed_forward.gate_up_proj_adapter_list.0"),
         "layers.1.linear": _input_is("layers.1.mamba_decoder.input_layernorm", "layers.1")}


def _expected(name: str, n: int) -> set[str]:
    per = FAMILIES[name][1]
    out = set()
    for i in range(n):
        out |= {e.format(i) for e in per.get(i, per[None])}
    return out


class Layers:
    """Each layer's input and output, recorded by forward hooks."""

    def __init__(self, layers: nn.ModuleList) -> None:
        self.seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.handles = [layer.register_forward_hook(self._hook(i), with_kwargs=True)
                        for i, layer in enumerate(layers)]

    def _hook(self, i: int):
        def hook(module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            out = output[0] if isinstance(output, (tuple, list)) else output
            self.seen[i] = (x.detach().clone(), out.detach().clone())
        return hook

    def differing(self) -> list[int]:
        return [i for i, (x, out) in sorted(self.seen.items())
                if not torch.equal(x, out) or not torch.isfinite(out).all()]


def _run(model: nn.Module, seed: int) -> None:
    ids = torch.randint(3, V, (2, 8), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        model(ids)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_layer_is_its_input_after_the_pass(name):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = FAMILIES[name][0]().eval()
    before = snapshot(model)
    ids = torch.randint(3, V, (1, 8), generator=torch.Generator().manual_seed(0))
    report = zero_init_pass(model, example_inputs=(ids,))
    assert set(report.modules) == _expected(name, len(model.layers)), report.table()
    after = snapshot(model)
    for fqn, value in after.items():
        assert not value.any() if fqn in report.params else torch.equal(value, before[fqn]), fqn
    recorder = Layers(model.layers)
    try:
        for seed in range(3):
            _run(model, seed)
            assert recorder.differing() == [], seed
        assert all(INNER[m](model) for m in report.modules if m in INNER)
        for module in report.modules:  # each zeroed module is needed
            params = [p for p in report.params if p.rsplit(".", 1)[0] == module]
            with torch.no_grad():
                for p in params:
                    model.get_parameter(p).copy_(before[p])
            if module in INNER:
                assert not INNER[module](model), f"{module} was zeroed but is not needed"
            else:
                _run(model, 0)
                assert recorder.differing(), f"{module} was zeroed but is not needed"
            with torch.no_grad():
                for p in params:
                    model.get_parameter(p).zero_()
    finally:
        for h in recorder.handles:
            h.remove()


def test_deepseek_v3_at_published_sizes_on_meta_gets_every_layer():
    # hidden 7168, 128 heads, MLA ranks 512 / 1536, 256 routed experts of 2048, 8 per token
    # in 8 groups (top 4), first 3 layers dense; 5 layers here (the 61-layer model plans
    # 180 modules the same way, in about a minute)
    config = T.DeepseekV3Config(
        vocab_size=129280, hidden_size=7168, intermediate_size=18432,
        moe_intermediate_size=2048, num_hidden_layers=5, num_attention_heads=128,
        num_key_value_heads=128, n_shared_experts=1, n_routed_experts=256,
        routed_scaling_factor=2.5, kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64,
        v_head_dim=128, qk_nope_head_dim=128, n_group=8, topk_group=4, num_experts_per_tok=8,
        first_k_dense_replace=3, norm_topk_prob=True, max_position_embeddings=4096,
        rms_norm_eps=1e-6, use_cache=False)
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        model = T.DeepseekV3Model(config)
    ids = torch.zeros(1, 8, dtype=torch.long, device="meta")
    report = zero_init_pass(model, dry_run=True, example_kwargs={"input_ids": ids})
    dense = {e.format(i) for i in range(3) for e in ATTN_MLP}
    moe = {e.format(i) for i in (3, 4) for e in ("layers.{}.self_attn.o_proj",
                                                 "layers.{}.mlp.experts",
                                                 "layers.{}.mlp.shared_experts.down_proj")}
    assert set(report.modules) == dense | moe, report.table()
