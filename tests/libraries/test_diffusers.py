"""``zero_init_pass`` on diffusers models, checked by running them, not by trusting the pass.

Every model is built from a tiny config on CPU (no weights are downloaded). None of these
models can be traced symbolically (``len`` on a proxy in ``Timesteps``, control flow on
shapes in ``PatchEmbed``/``Downsample2D``, ``**kwargs`` forwarding...), so each test passes
``example_inputs``/``example_kwargs`` and the pass captures the model with ``torch.export``.

For ``residual_branch_last`` the expected parameters come from an oracle that reads the
model's structure (``BRANCH_ENDS``: for each residual block class, the last layer of each
of its branches, read off its ``forward``). Then, with forward hooks on every block:

- every block that holds a zeroed parameter returns exactly its skip value (``SKIP``: a
  ResnetBlock2D ``conv_shortcut(x) / output_scale_factor``, a pre-LN transformer block its
  input, a two-stream MMDiT block BOTH streams' inputs);
- every parameter outside ``report.params`` (and every buffer) is bit-identical;
- each zeroed module is needed: with its original values back, some block differs from
  its skip value.

For ``adaln_zero`` (DiT, PixArt, SD3, Flux): every gate a block multiplies its branches by
is exactly zero, every block is the identity, the model's output is exactly zero, nothing
else moved, and each zeroed module is needed (restoring it makes a modulation, a block
or the output non-zero).

Where the pass is wrong today the test fails on purpose (no xfail): it encodes the
correct behaviour. Takes about 25 s on two busy cores (no test is marked slow).
"""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest
import torch
from torch import nn

pytest.importorskip("diffusers")

from diffusers import (  # noqa: E402
    AutoencoderKL,
    DiTTransformer2DModel,
    FluxTransformer2DModel,
    PixArtTransformer2DModel,
    SD3Transformer2DModel,
    UNet2DConditionModel,
    UNet2DModel,
)
from diffusers.models.attention import BasicTransformerBlock, JointTransformerBlock  # noqa: E402
from diffusers.models.attention_processor import Attention  # noqa: E402
from diffusers.models.normalization import (  # noqa: E402
    AdaLayerNormContinuous,
    AdaLayerNormSingle,
    AdaLayerNormZero,
    AdaLayerNormZeroSingle,
)
from diffusers.models.resnet import ResnetBlock2D  # noqa: E402
from diffusers.models.transformers.transformer_2d import Transformer2DModel  # noqa: E402
from diffusers.models.transformers.transformer_flux import (  # noqa: E402
    FluxSingleTransformerBlock,
    FluxTransformerBlock,
)

from claims import owning_blocks
from zeta_fx import zero_init_pass  # noqa: E402
from zeta_fx.capture import capture  # noqa: E402
from zeta_fx.errors import CaptureError  # noqa: E402
from zeta_fx.rules import ResidualBranchLast  # noqa: E402


# --- the models: tiny configs and example inputs ---------------------------------------

def _randn(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed + len(shape)))


@dataclass
class Family:
    build: Callable[[], nn.Module]
    args: Callable[[], tuple]
    kwargs: Callable[[], dict] = dict
    adaln_output: str | None = None       # the output layer adaln_zero zeroes


def _unet2d():
    return UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=8)


def _unet2d_condition():
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=12,
        norm_num_groups=4, attention_head_dim=4)


def _dit():
    return DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
        num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=10)


def _pixart(use_additional_conditions=True):
    # PixArt-alpha 1024px style: resolution and aspect ratio are extra conditions (each
    # embedded in inner_dim // 3 channels: inner_dim 24)
    return PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=8,
        num_layers=2, sample_size=8, patch_size=2, cross_attention_dim=24, caption_channels=12,
        use_additional_conditions=use_additional_conditions)


def _sd3():
    # two joint blocks: the last one is context_pre_only (its text stream ends there)
    return SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=12, caption_projection_dim=16,
        pooled_projection_dim=6, out_channels=4, pos_embed_max_size=8)


def _flux():
    return FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=12, pooled_projection_dim=6,
        axes_dims_rope=(2, 2, 4))


def _vae():
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16),
        norm_num_groups=4, sample_size=8)


FAMILIES: dict[str, Family] = {
    "UNet2DModel": Family(_unet2d, lambda: (_randn(1, 3, 8, 8), torch.tensor([10]))),
    "UNet2DConditionModel": Family(
        _unet2d_condition,
        lambda: (_randn(1, 4, 8, 8), torch.tensor([10]), _randn(1, 5, 12))),
    "DiTTransformer2DModel": Family(
        _dit, lambda: (_randn(1, 4, 8, 8),),
        lambda: dict(timestep=torch.tensor([10]), class_labels=torch.tensor([3])),
        adaln_output="proj_out_2"),
    "PixArtTransformer2DModel": Family(
        _pixart, lambda: (_randn(1, 4, 8, 8),),
        lambda: dict(encoder_hidden_states=_randn(1, 5, 12), timestep=torch.tensor([10]),
                     added_cond_kwargs={"resolution": torch.tensor([[64.0, 64.0]]),
                                        "aspect_ratio": torch.tensor([[1.0]])}),
        adaln_output="proj_out"),
    # PixArt-Sigma / PixArt-alpha 512px: no additional conditions
    "PixArtTransformer2DModel-sigma": Family(
        lambda: _pixart(use_additional_conditions=False), lambda: (_randn(1, 4, 8, 8),),
        lambda: dict(encoder_hidden_states=_randn(1, 5, 12), timestep=torch.tensor([10])),
        adaln_output="proj_out"),
    "SD3Transformer2DModel": Family(
        _sd3, lambda: (_randn(1, 4, 8, 8),),
        lambda: dict(encoder_hidden_states=_randn(1, 5, 12), pooled_projections=_randn(1, 6),
                     timestep=torch.tensor([10])),
        adaln_output="proj_out"),
    "FluxTransformer2DModel": Family(
        _flux, lambda: (_randn(1, 16, 4),),
        lambda: dict(encoder_hidden_states=_randn(1, 5, 12), pooled_projections=_randn(1, 6),
                     timestep=torch.tensor([1.0]),
                     img_ids=torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0),
                                                        torch.arange(4.0), indexing="ij"),
                                         -1).reshape(16, 3),
                     txt_ids=torch.zeros(5, 3)),
        adaln_output="proj_out"),
    "AutoencoderKL": Family(_vae, lambda: (_randn(1, 3, 8, 8),)),
    "AutoencoderKL.encoder": Family(lambda: _vae().encoder, lambda: (_randn(1, 3, 8, 8),)),
    "AutoencoderKL.decoder": Family(lambda: _vae().decoder, lambda: (_randn(1, 4, 4, 4),)),
}
ADALN = [name for name, fam in FAMILIES.items() if fam.adaln_output]


def _build(name: str) -> tuple[nn.Module, tuple, dict]:
    fam = FAMILIES[name]
    torch.manual_seed(0)
    return fam.build().eval(), fam.args(), fam.kwargs()


# --- residual blocks: their skip value and the last layer of each branch -----------------
# Read off each block's forward in diffusers 0.42.

def _resnet_skip(block, a):
    # out = (shortcut + branch) / output_scale_factor, where the shortcut is the input,
    # resampled like the branch when the block itself up/downsamples, then conv_shortcut
    x = a["input_tensor"]
    if block.upsample is not None:
        x = block.upsample(x)
    elif block.downsample is not None:
        x = block.downsample(x)
    if block.conv_shortcut is not None:
        x = block.conv_shortcut(x)
    return (x / block.output_scale_factor,)


SKIP: dict[type, Callable[[nn.Module, dict], tuple]] = {
    ResnetBlock2D: _resnet_skip,
    # Attention(residual_connection=True) (UNet2DModel's attention blocks, the VAE's
    # mid-block): AttnProcessor adds its input back, then divides by rescale_output_factor
    Attention: lambda b, a: (a["hidden_states"] / b.rescale_output_factor,),
    # Transformer2DModel (UNet2DConditionModel's cross-attention blocks): proj_out(...) + x
    Transformer2DModel: lambda b, a: (a["hidden_states"],),
    # pre-LN transformer blocks (UNet, DiT, PixArt): the input
    BasicTransformerBlock: lambda b, a: (a["hidden_states"],),
    # MMDiT blocks return (text, image); SD3's last block is context_pre_only: text is None
    JointTransformerBlock: lambda b, a: (None if b.context_pre_only else a["encoder_hidden_states"],
                                         a["hidden_states"]),
    FluxTransformerBlock: lambda b, a: (a["encoder_hidden_states"], a["hidden_states"]),
    # cat([text, image]) + gate * proj_out(...), split back into (text, image)
    FluxSingleTransformerBlock: lambda b, a: (a["encoder_hidden_states"], a["hidden_states"]),
}


def _outputs(block, out) -> tuple:
    if isinstance(block, Transformer2DModel):
        return (out[0] if isinstance(out, tuple) else out.sample,)
    return tuple(out) if isinstance(out, tuple) else (out,)


BRANCH_ENDS: dict[type, Callable[[nn.Module], list[str]]] = {
    ResnetBlock2D: lambda b: ["conv2"],
    Attention: lambda b: ["to_out.0"],
    Transformer2DModel: lambda b: ["proj_out"],
    BasicTransformerBlock: lambda b: ["attn1.to_out.0", "ff.net.2"]
    + (["attn2.to_out.0"] if b.attn2 is not None else []),
    # one joint attention, split into an image and a text stream: both streams' ends
    JointTransformerBlock: lambda b: ["attn.to_out.0", "ff.net.2"]
    + ([] if b.context_pre_only else ["attn.to_add_out", "ff_context.net.2"]),
    FluxTransformerBlock: lambda b: ["attn.to_out.0", "attn.to_add_out", "ff.net.2",
                                     "ff_context.net.2"],
    FluxSingleTransformerBlock: lambda b: ["proj_out"],
}


def _is_block(module: nn.Module) -> bool:
    if type(module) is Attention:
        return bool(module.residual_connection)
    return type(module) in SKIP


def _params_of(model: nn.Module, module_fqns) -> set[str]:
    out = set()
    for fqn in module_fqns:
        module = model.get_submodule(fqn)
        assert isinstance(module, (nn.Linear, nn.Conv2d)), f"{fqn} is a {type(module).__name__}"
        out |= {f"{fqn}.{p}" for p, _ in module.named_parameters(recurse=False)}
    return out


def _branch_ends(model: nn.Module) -> set[str]:
    """The oracle: the last layer of every residual branch, from the block classes."""
    ends = []
    for name, module in model.named_modules():
        if _is_block(module):
            ends += [f"{name}.{end}" if name else end for end in BRANCH_ENDS[type(module)](module)]
    return _params_of(model, ends)


def _owner(param_fqn: str) -> str:
    return param_fqn.rpartition(".")[0]


def _owning_blocks(model: nn.Module, params) -> dict[str, nn.Module]:
    return owning_blocks(model, params, _is_block)


# --- running the model with hooks ------------------------------------------------------

_SIGNATURES: dict[type, inspect.Signature] = {}


def _bound(block, args, kwargs) -> dict[str, Any]:
    sig = _SIGNATURES.setdefault(type(block), inspect.signature(type(block).forward))
    bound = sig.bind(block, *args, **kwargs)
    bound.apply_defaults()
    return bound.arguments


def _clone(value):
    return torch.utils._pytree.tree_map(
        lambda v: v.detach().clone() if isinstance(v, torch.Tensor) else v, value)


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and torch.equal(a, b)


@dataclass
class Probe:
    """What one forward pass showed: per block, (skip, output) at each call; gates and
    modulations by the module computing them; the model's output."""
    blocks: dict[str, list[tuple[tuple, tuple]]] = field(default_factory=dict)
    inputs: dict[str, list[tuple[tuple, dict]]] = field(default_factory=dict)
    gates: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    modulations: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    output: torch.Tensor | None = None

    def not_skip(self) -> list[str]:
        return sorted(name for name, calls in self.blocks.items()
                      if any(not all(map(_same, skip, out)) for skip, out in calls))

    def nonzero(self, which: str) -> list[str]:
        return sorted(n for n, vals in getattr(self, which).items() if any(v.any() for v in vals))


def _gates_of(module, out) -> list[torch.Tensor]:
    if isinstance(module, AdaLayerNormZero):      # (x, gate_msa, shift, scale, gate_mlp[, x2, gate2])
        return [out[1], out[4]] + ([out[6]] if len(out) > 6 else [])
    if isinstance(module, AdaLayerNormZeroSingle):  # (x, gate)
        return [out[1]]
    return []


def _probe(model: nn.Module, args, kwargs, blocks: dict[str, nn.Module] | None = None,
           adaln: bool = False) -> Probe:
    probe = Probe()
    inputs: dict[str, Any] = {}
    handles = []

    def watch_block(name, block):
        def pre(mod, a, kw):
            inputs[name] = _clone((a, kw))
            probe.inputs.setdefault(name, []).append(inputs[name])
            if adaln and isinstance(mod, BasicTransformerBlock) and mod.norm_type == "ada_norm_single":
                # PixArt: the block's own table plus adaln_single's output, chunked into 6
                t = _bound(mod, *inputs[name])["timestep"]
                chunks = (mod.scale_shift_table[None] + t.reshape(t.shape[0], 6, -1)).chunk(6, dim=1)
                probe.modulations.setdefault(name, []).append(torch.cat(chunks, 1).detach())
                probe.gates.setdefault(name, []).extend([chunks[2].detach(), chunks[5].detach()])

        def post(mod, a, kw, out):
            with torch.no_grad():
                skip = SKIP[type(mod)](mod, _bound(mod, *inputs[name]))
            probe.blocks.setdefault(name, []).append((skip, _clone(_outputs(mod, out))))
        handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(block.register_forward_hook(post, with_kwargs=True))

    def watch_modulation(name, module, gates_of=None):
        def post(mod, a, out):
            probe.modulations.setdefault(name, []).append(out.detach().clone())
        handles.append(module.register_forward_hook(post))
        if gates_of is not None:
            def gates(mod, a, out):
                probe.gates.setdefault(gates_of[0], []).extend(g.detach().clone() for g in _gates_of(mod, out))
            handles.append(gates_of[1].register_forward_hook(gates))

    if blocks is None:
        blocks = {n: m for n, m in model.named_modules() if _is_block(m)}
    for name, block in blocks.items():
        watch_block(name, block)
    if adaln:
        for name, module in model.named_modules():
            if isinstance(module, (AdaLayerNormZero, AdaLayerNormZeroSingle, AdaLayerNormContinuous,
                                   AdaLayerNormSingle)):
                watch_modulation(f"{name}.linear", module.linear, (name, module))
        if isinstance(model, DiTTransformer2DModel):
            watch_modulation("proj_out_1", model.proj_out_1)   # the final layer's shift, scale
    try:
        with torch.no_grad():
            out = model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    probe.output = out[0] if isinstance(out, tuple) else getattr(out, "sample", out)
    if not isinstance(probe.output, torch.Tensor):   # AutoencoderKL's encoder: a distribution
        probe.output = None
    return probe


def _is_skip(block: nn.Module, args, kwargs) -> bool:
    with torch.no_grad():
        out = _outputs(block, block(*_clone(args), **_clone(kwargs)))
        return all(map(_same, SKIP[type(block)](block, _bound(block, args, kwargs)), out))


# --- the state of the parameters -------------------------------------------------------

def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in
            [*model.named_parameters(remove_duplicate=False), *model.named_buffers()]}


def _moved(model: nn.Module, before, zeroed) -> list[str]:
    now = dict([*model.named_parameters(remove_duplicate=False), *model.named_buffers()])
    return sorted(n for n, t in now.items() if n not in zeroed and not torch.equal(t, before[n]))


def _restore(model, params, before):
    with torch.no_grad():
        for p in params:
            model.get_parameter(p).copy_(before[p])


def _zero(model, params):
    with torch.no_grad():
        for p in params:
            model.get_parameter(p).zero_()


def _set_diff(expected: set[str], got: set[str]) -> list[str]:
    out = []
    if expected - got:
        out.append(f"not zeroed, should be: {sorted(expected - got)}")
    if got - expected:
        out.append(f"zeroed, should not be: {sorted(got - expected)}")
    return out


def _by_module(params) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for p in sorted(params):
        out.setdefault(_owner(p), []).append(p)
    return out


# --- the tests -------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(FAMILIES))
def test_residual_branch_last(name):
    model, args, kwargs = _build(name)
    before = _state(model)
    report = zero_init_pass(model, rule="residual_branch_last",
                            example_inputs=args, example_kwargs=kwargs)
    zeroed = set(report.params)
    problems = _set_diff(_branch_ends(model), zeroed)

    problems += [f"{n} changed but is not in report.params" for n in _moved(model, before, zeroed)]
    problems += [f"{p} is in report.params but not zero" for p in sorted(zeroed)
                 if model.get_parameter(p).any()]

    # every block the pass touched is exactly its skip value
    owners = _owning_blocks(model, zeroed)
    probe = _probe(model, args, kwargs, owners)
    problems += [f"block {b} was never called" for b in sorted(set(owners) - set(probe.blocks))]
    problems += [f"block {b} is not its skip value" for b in probe.not_skip()]

    # each zeroed module is needed: with its values back, the block holding it is no
    # longer its skip (the block is rerun on the inputs it saw, not the whole model)
    for module, params in _by_module(zeroed).items():
        (block_name, block), = _owning_blocks(model, params).items()
        _restore(model, params, before)
        if all(_is_skip(block, a, kw) for a, kw in probe.inputs.get(block_name, [])):
            problems.append(f"{module} is not needed: restored, {block_name} is still its skip")
        _zero(model, params)
    assert not problems, f"{name}, residual_branch_last:\n  " + "\n  ".join(problems)


def _adaln_expected(model: nn.Module, output_layer: str) -> set[str]:
    """adaLN-Zero: every modulation linear (each block's and the final layer's), every
    ungated branch's end (PixArt's cross-attention), the output layer; for PixArt each
    block's ``scale_shift_table`` too, since its gates are ``table + adaln_single(t)``."""
    modules, params = [output_layer], set()
    for name, module in model.named_modules():
        if isinstance(module, (AdaLayerNormZero, AdaLayerNormZeroSingle, AdaLayerNormContinuous,
                               AdaLayerNormSingle)):
            modules.append(f"{name}.linear")
        if isinstance(module, BasicTransformerBlock) and module.norm_type == "ada_norm_single":
            params.add(f"{name}.scale_shift_table")
            if module.attn2 is not None:          # added without a gate
                modules.append(f"{name}.attn2.to_out.0")
    if isinstance(model, DiTTransformer2DModel):
        modules.append("proj_out_1")              # the final layer's adaLN modulation
    return params | _params_of(model, modules)


@pytest.mark.parametrize("name", ADALN)
def test_adaln_zero(name):
    model, args, kwargs = _build(name)
    before = _state(model)
    report = zero_init_pass(model, rule="adaln_zero", example_inputs=args, example_kwargs=kwargs)
    zeroed = set(report.params)
    problems = _set_diff(_adaln_expected(model, FAMILIES[name].adaln_output), zeroed)
    problems += [f"{n} changed but is not in report.params" for n in _moved(model, before, zeroed)]

    probe = _probe(model, args, kwargs, adaln=True)
    assert probe.gates, "no gate was seen: the probe is broken"
    problems += [f"a gate of {g} is not zero" for g in probe.nonzero("gates")]
    problems += [f"block {b} is not the identity" for b in probe.not_skip()]
    if probe.output.any():
        problems.append(f"the model's output is not zero (max |y| = {probe.output.abs().max():.3g})")

    # each zeroed module is needed: restored, a modulation, a block or the output moves
    for module, params in _by_module(zeroed).items():
        _restore(model, params, before)
        p = _probe(model, args, kwargs, adaln=True)
        if not (p.nonzero("modulations") or p.not_skip() or p.output.any()):
            problems.append(f"{module} is not needed: restored, every modulation, block and "
                            "the output are unchanged")
        _zero(model, params)
    assert not problems, f"{name}, adaln_zero:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("name", ["UNet2DModel", "UNet2DConditionModel", "AutoencoderKL"])
def test_adaln_zero_without_modulation_zeroes_nothing_and_says_so(name):
    """The README's table says "—" under adaln_zero for the UNets and the VAE: the rule finds
    no adaLN modulation there, zeroes nothing (not even ``conv_out``) and says why."""
    model, args, kwargs = _build(name)
    before = _state(model)
    report = zero_init_pass(model, rule="adaln_zero", example_inputs=args, example_kwargs=kwargs)
    assert report.params == [] and not _moved(model, before, set())
    assert any(s.reason.startswith("no adaLN modulation found") for s in report.skipped)


# Where symbolic tracing stops in each family (so the pass needs example inputs and
# captures with torch.export): the submodule the CaptureError names.
SYMBOLIC_FAILS_IN = {
    "UNet2DModel": "`time_proj` (Timesteps)",                       # len() on a proxy
    "UNet2DConditionModel": "the model's own forward",             # iterates a proxy
    "DiTTransformer2DModel": "`pos_embed` (PatchEmbed)",           # control flow on shapes
    "PixArtTransformer2DModel": "the model's own forward",         # attention_mask.ndim
    "PixArtTransformer2DModel-sigma": "the model's own forward",
    "SD3Transformer2DModel": "`pos_embed` (PatchEmbed)",
    "FluxTransformer2DModel": "`time_text_embed`",                 # forward called with a guidance None
    "AutoencoderKL": "(Downsample2D)",                             # control flow on shapes
    "AutoencoderKL.encoder": "(Downsample2D)",
    "AutoencoderKL.decoder": "`mid_block.attentions.0` (Attention)",  # control flow in the processor
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_symbolic_tracing_fails_so_export_is_used(name):
    model, _, _ = _build(name)
    with pytest.raises(CaptureError, match=re.escape(SYMBOLIC_FAILS_IN[name])):
        capture(model, method="symbolic")


@pytest.mark.parametrize("rule", ["residual_branch_last", "adaln_zero"])
def test_verify_accepts_nested_example_kwargs(rule):
    """PixArt takes ``added_cond_kwargs={"resolution": ..., "aspect_ratio": ...}``: export
    flattens it into placeholders ``added_cond_kwargs_resolution``, ...; verification must
    find those values in the nested dict it was given."""
    model, args, kwargs = _build("PixArtTransformer2DModel")
    plain = zero_init_pass(model, rule=rule, example_inputs=args, example_kwargs=kwargs,
                           dry_run=True)
    verified = zero_init_pass(model, rule=rule, example_inputs=args, example_kwargs=kwargs,
                              dry_run=True, verify=True)
    assert verified.params == plain.params


def test_unet_outermost_is_ldm_zero_module():
    """LDM / guided-diffusion (``openaimodel.py``, ``attention.py``) wrap three layers in
    ``zero_module``: each ResBlock's last conv, AttentionBlock's ``proj_out`` and
    SpatialTransformer's ``proj_out`` (diffusers: ``resnets.*.conv2``, ``Transformer2DModel``'s
    ``proj_out``), never the layers of the transformer blocks inside a SpatialTransformer.
    The pass's default (``nested="all"``) also zeroes those inner blocks' branch ends
    (``attn1/attn2.to_out.0``, ``ff.net.2``); ``nested="outermost"`` gives LDM's set exactly.
    (diffusers' own models zero nothing when built from a config: its ``zero_module``
    is only used by ControlNets, whose zero convs are outputs, not residual branches.)"""
    model, args, kwargs = _build("UNet2DConditionModel")
    report = zero_init_pass(model, rule=ResidualBranchLast(nested="outermost"),
                            example_inputs=args, example_kwargs=kwargs, dry_run=True)
    ldm = [n for n, m in model.named_modules() if isinstance(m, ResnetBlock2D)]
    ldm = [f"{n}.conv2" for n in ldm]
    ldm += [f"{n}.proj_out" for n, m in model.named_modules() if isinstance(m, Transformer2DModel)]
    assert set(report.params) == _params_of(model, ldm)
