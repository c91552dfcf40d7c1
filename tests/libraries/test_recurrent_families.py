"""RecurrentGemma, RWKV and Qwen3-Next past their first block (issue 20), judged by running.

RecurrentGemma's recurrent block normalises its input by ``sqrt(1 - a²)`` with
``a² = exp(2 · (-8 · sigmoid(·) · softplus(·)))``: once block 0 is the identity, block 1 reads
a changed value, and the proof must see that ``1 - a² >= 0`` again (``a² <= 1``). Every
layer then returns exactly its input.

RWKV's WKV divides by ``e1 · den + e2`` where one of ``e1 = exp(m_old - m)``,
``e2 = exp(k - m)`` is ``exp(0) = 1`` (``m`` is their maximum): positive, but only by a
relation between the two exponents that the facts do not draw. Block 0 reads the model's own
values and is proven; the later blocks are left alone with rows. In eval mode RWKV rescales
its output weights in place under ``torch.no_grad()`` on the first call, which export keeps
as a subgraph the analysis does not enter: the branch ends cannot be zeroed, and the search
must not go past them to zero ``feed_forward.key`` (``value(relu(key(x))²)``: a claim that
holds, on a branch that would never get a gradient again).

Qwen3-Next's gated delta rule takes ``exp`` of pairwise decays ``cum_i - cum_j`` masked
with ``-inf`` above the diagonal, ``cum`` a cumulative sum of decays ``<= 0``: the kept
entries are ``<= 0``, so past block 0 too the ``exp`` stays in [0, 1] and every layer
returns exactly its input. (transformers 5.25 first cuts ``g`` with ``tensor_split``, whose
pieces keep its sign: the same in both versions.)
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


def _recurrent_gemma() -> nn.Module:
    return T.RecurrentGemmaModel(T.RecurrentGemmaConfig(
        vocab_size=V, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=1, intermediate_size=64, lru_width=32, attention_window_size=8,
        head_dim=8, block_types=["recurrent", "recurrent", "attention"]))


def _rwkv() -> nn.Module:
    return T.RwkvModel(T.RwkvConfig(vocab_size=V, hidden_size=32, num_hidden_layers=3,
                                    attention_hidden_size=32, intermediate_size=64,
                                    context_length=16))


def _qwen3_next() -> nn.Module:
    return T.Qwen3NextModel(T.Qwen3NextConfig(
        vocab_size=V, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=64, num_key_value_heads=2, head_dim=8, linear_num_value_heads=4,
        linear_num_key_heads=2, linear_key_head_dim=8, linear_value_head_dim=8, num_experts=4,
        num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=16,
        layer_types=["linear_attention", "linear_attention", "full_attention"]))


_DELTA = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2, linear_key_head_dim=8,
              linear_value_head_dim=8, linear_num_key_heads=2, linear_num_value_heads=4,
              layer_types=["linear_attention", "linear_attention", "full_attention"])


def _delta_model(model: str, config: str, **kw) -> nn.Module:
    if not hasattr(T, model):
        pytest.skip(f"transformers {T.__version__} has no {model}")
    return getattr(T, model)(getattr(T, config)(**_DELTA, **kw))


def _qwen3_5() -> nn.Module:
    return _delta_model("Qwen3_5TextModel", "Qwen3_5TextConfig", head_dim=8)


def _olmo_hybrid() -> nn.Module:
    return _delta_model("OlmoHybridModel", "OlmoHybridConfig", pad_token_id=0, eos_token_id=1)


class Blocks:
    """Each block's input and output, recorded by forward hooks. ``entries``: blocks whose
    residual stream starts at a submodule's output (RWKV's block 0 first applies
    ``pre_ln``), recorded as that block's input."""

    def __init__(self, blocks: nn.ModuleList, entries: dict[int, nn.Module] | None = None
                 ) -> None:
        self.seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.entry: dict[int, torch.Tensor] = {}
        self.handles = [b.register_forward_hook(self._hook(i), with_kwargs=True)
                        for i, b in enumerate(blocks)]
        for i, module in (entries or {}).items():
            self.handles.append(module.register_forward_hook(
                lambda m, a, out, i=i: self.entry.__setitem__(i, out.detach().clone())))

    def _hook(self, i: int):
        def hook(module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            out = output[0] if isinstance(output, (tuple, list)) else output
            self.seen[i] = (self.entry.pop(i, x).detach().clone(), out.detach().clone())
        return hook

    def identity(self) -> list[bool]:
        return [bool(torch.equal(x, out)) for _, (x, out) in sorted(self.seen.items())]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _run(model: nn.Module, seed: int) -> None:
    ids = torch.randint(0, V, (2, 8), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        model(input_ids=ids)


def _pass(build, train: bool = False):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build()
    model.train(train)
    before = snapshot(model)
    ids = torch.randint(0, V, (1, 8), generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = zero_init_pass(model, example_kwargs={"input_ids": ids})
    after = snapshot(model)
    for fqn, value in after.items():  # zeroed exactly, nothing else changed by a bit
        assert not value.any() if fqn in report.params else torch.equal(value, before[fqn]), fqn
    return model, before, report


def _judge(model: nn.Module, blocks: nn.ModuleList, before, report, identity: list[bool],
           entries: dict[int, nn.Module] | None = None):
    """Each block is (or is not) its input on several inputs, and each zeroed module is
    needed: with its values back, some block that was the identity no longer is."""
    recorder = Blocks(blocks, entries)
    try:
        for seed in range(3):
            _run(model, seed)
            assert recorder.identity() == identity, seed
        for module in report.modules:
            params = [p for p in report.params if p.rsplit(".", 1)[0] == module]
            with torch.no_grad():
                for p in params:
                    model.get_parameter(p).copy_(before[p])
            _run(model, 0)
            assert recorder.identity() != identity, f"{module} was zeroed but is not needed"
            with torch.no_grad():
                for p in params:
                    model.get_parameter(p).zero_()
    finally:
        recorder.remove()


def test_recurrent_gemma_every_layer_is_its_input():
    model, before, report = _pass(_recurrent_gemma)
    expected = {"layers.0.temporal_block.linear_out", "layers.1.temporal_block.linear_out",
                "layers.2.temporal_block.o_proj"} | {f"layers.{i}.mlp_block.down_proj"
                                                     for i in range(3)}
    assert set(report.modules) == expected, report.table()
    _judge(model, model.layers, before, report, [True, True, True])


def test_rwkv_block_zero_is_proven_and_the_later_blocks_say_why_not():
    model, before, report = _pass(_rwkv, train=True)
    assert set(report.modules) == {"blocks.0.attention.output", "blocks.0.feed_forward.value"}, \
        report.table()
    _judge(model, model.blocks, before, report, [True, False, False],
           {0: model.blocks[0].pre_ln})
    reasons = {s.module: s.reason for s in report.skipped if s.module.startswith("blocks.1.")}
    assert "may be non-finite" in reasons["blocks.1.attention.output"], reasons


def test_rwkv_in_eval_mode_zeroes_no_earlier_layer_than_the_branch_end():
    model, before, report = _pass(_rwkv, train=False)
    # on the first eval call RWKV rescales its output weights in place under no_grad: the
    # facts read through that subgraph (each rescaled weight from its own value), so block
    # 0's branch ends are zeroed as in train mode, and no layer before them is
    # (feed_forward.key would hold the merge but kill the branch)
    assert set(report.modules) == {"blocks.0.attention.output", "blocks.0.feed_forward.value"}, \
        report.table()
    _judge(model, model.blocks, before, report, [True, False, False],
           {0: model.blocks[0].pre_ln})
    for i in (1, 2):  # the later blocks say why not
        reasons = {s.module: s.reason for s in report.skipped
                   if s.module.startswith(f"blocks.{i}.")}
        assert "may be non-finite" in reasons[f"blocks.{i}.attention.output"], reasons


def test_qwen3_next_every_layer_is_its_input():
    # transformers 5.25 cuts the decay with ``torch.tensor_split(g, [n], dim=1)`` before the
    # rule (5.24 does not): each piece keeps g's sign, so every layer is proven in both
    model, before, report = _pass(_qwen3_next)
    expected = {"layers.0.linear_attn.out_proj", "layers.1.linear_attn.out_proj",
                "layers.2.self_attn.o_proj"} | {f"layers.{i}.mlp.{m}" for i in range(3)
                                                for m in ("experts", "shared_expert.down_proj")}
    assert set(report.modules) == expected, report.table()
    _judge(model, model.layers, before, report, [True, True, True])


@pytest.mark.parametrize("build, expected", [
    (_qwen3_5, {f"layers.{i}.{m}" for i in range(2)
                for m in ("linear_attn.out_proj", "mlp.down_proj")}
     | {"layers.2.self_attn.o_proj", "layers.2.mlp.down_proj"}),
    # OLMo-hybrid normalises each branch's output (post-norm): its full-attention layer's
    # branch ends are those norms' gains
    (_olmo_hybrid, {f"layers.{i}.{m}" for i in range(2)
                    for m in ("linear_attn.o_proj", "mlp.down_proj")}
     | {"layers.2.post_attention_layernorm", "layers.2.post_feedforward_layernorm"}),
], ids=["qwen3_5", "olmo_hybrid"])
def test_gated_delta_families_every_layer_is_its_input(build, expected):
    # the same gated delta rule as Qwen3-Next (transformers 5.25 cuts g with tensor_split
    # before it too): past layer 0 as well, every layer returns exactly its input
    model, before, report = _pass(build)
    assert set(report.modules) == expected, report.table()
    _judge(model, model.layers, before, report, [True, True, True])
