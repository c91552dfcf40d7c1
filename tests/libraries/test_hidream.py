"""HiDream (diffusers ``HiDreamImageTransformer2DModel``) from a tiny config: its MoE
feed-forward accumulates the experts' outputs into ``zeros_like(x).to(dtype)`` with
``scatter_reduce_(..., reduce="sum")`` under ``torch.no_grad()``, beside a shared expert.
With ``scatter_reduce`` followed (every reduction of zeros is zero) the pass reaches every
branch end: each block's attention output projections, every routed expert's and the shared
expert's last layer, and the text stream's feed-forward. Judged by running the model with
forward hooks: each block returns exactly its inputs on fresh inputs, nothing outside the
report changed, and each zeroed module is needed.

The MoE loop is data dependent (``bincount().cpu().numpy()``): the capture unrolls it for the
example, so the example routes tokens to every expert (checked), as a user's example must.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from claims import snapshot
from zeta_fx import zero_init_pass

diffusers = pytest.importorskip("diffusers")
transformer_hidream_image = pytest.importorskip(
    "diffusers.models.transformers.transformer_hidream_image")

EXPERTS = 4


def _model() -> nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return diffusers.HiDreamImageTransformer2DModel(
            patch_size=2, in_channels=4, out_channels=4, num_layers=1, num_single_layers=2,
            attention_head_dim=8, num_attention_heads=2, caption_channels=[8, 8],
            text_emb_dim=16, num_routed_experts=EXPERTS, num_activated_experts=2,
            axes_dims_rope=(2, 2, 4), max_resolution=(8, 8), llama_layers=[0, 1, 2, 3]).eval()


def _inputs(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(1, 4, 8, 8, generator=g),
                timesteps=torch.tensor([3 + seed]),
                encoder_hidden_states_t5=torch.randn(1, 5, 8, generator=g),
                encoder_hidden_states_llama3=torch.randn(4, 1, 5, 8, generator=g),
                pooled_embeds=torch.randn(1, 16, generator=g), return_dict=False)


def _expected(model: nn.Module) -> set[str]:
    out = set()
    for i, _ in enumerate(model.double_stream_blocks):
        b = f"double_stream_blocks.{i}.block"
        out |= {f"{b}.attn1.to_out", f"{b}.attn1.to_out_t", f"{b}.ff_t.w2",
                f"{b}.ff_i.shared_experts.w2"} | {f"{b}.ff_i.experts.{e}.w2"
                                                 for e in range(EXPERTS)}
    for i, _ in enumerate(model.single_stream_blocks):
        b = f"single_stream_blocks.{i}.block"
        out |= {f"{b}.attn1.to_out", f"{b}.ff_i.shared_experts.w2"} | {
            f"{b}.ff_i.experts.{e}.w2" for e in range(EXPERTS)}
    return out


class Blocks:
    """Each transformer block's inputs and outputs, recorded by forward hooks."""

    def __init__(self, model: nn.Module) -> None:
        self.seen: list[tuple[str, list, list]] = []
        blocks = [(f"double.{i}", b.block) for i, b in enumerate(model.double_stream_blocks)] + \
            [(f"single.{i}", b.block) for i, b in enumerate(model.single_stream_blocks)]
        self.handles = [b.register_forward_hook(self._hook(name), with_kwargs=True)
                        for name, b in blocks]

    def _hook(self, name: str):
        def hook(module, args, kwargs, output):
            ins = [kwargs["hidden_states"]]
            if isinstance(output, tuple):
                ins.append(kwargs["encoder_hidden_states"])
            outs = list(output) if isinstance(output, tuple) else [output]
            self.seen.append((name, [t.detach().clone() for t in ins],
                              [t.detach().clone() for t in outs]))
        return hook

    def differing(self, model: nn.Module, seed: int) -> list[str]:
        self.seen.clear()
        with torch.no_grad():
            model(**_inputs(seed))
        return [name for name, ins, outs in self.seen
                if len(ins) != len(outs) or not all(
                    torch.equal(a, b) and torch.isfinite(b).all() for a, b in zip(ins, outs))]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _routed(model: nn.Module, kwargs: dict) -> set[str]:
    """The experts that receive a token on ``kwargs`` (the capture keeps only those)."""
    hit: set[str] = set()
    handles = [m.register_forward_hook(lambda mod, a, out, n=n: hit.add(n))
               for n, m in model.named_modules() if ".ff_i.experts." in n and n.count(".") == 5]
    try:
        with torch.no_grad():
            model(**kwargs)
    finally:
        for h in handles:
            h.remove()
    return hit


def test_hidream_reaches_every_branch_end():
    model = _model()
    example = _inputs(0)
    routed = _routed(model, example)
    assert len(routed) == EXPERTS * (len(model.double_stream_blocks) +
                                     len(model.single_stream_blocks)), sorted(routed)
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = zero_init_pass(model, example_kwargs=example)
    assert set(report.modules) == _expected(model), report.table()
    after = snapshot(model)
    for fqn, value in after.items():
        assert not value.any() if fqn in report.params else torch.equal(value, before[fqn]), fqn
    blocks = Blocks(model)
    try:
        for seed in range(3):
            assert blocks.differing(model, seed) == [], seed
        for module in report.modules:  # each zeroed module is needed
            params = [p for p in report.params if p.rsplit(".", 1)[0] == module]
            with torch.no_grad():
                for p in params:
                    model.get_parameter(p).copy_(before[p])
            assert blocks.differing(model, 0), f"{module} was zeroed but is not needed"
            with torch.no_grad():
                for p in params:
                    model.get_parameter(p).zero_()
    finally:
        blocks.remove()
