"""Random residual networks built from a spec, and what ``residual_branch_last`` must do on them.

A spec is plain data (frozen dataclasses of tuples), so hypothesis shrinks it and prints it
readably. :func:`build` turns a spec into a real ``nn.Module`` whose ``forward`` interprets
the spec; ``torch.fx.symbolic_trace`` unrolls the interpretation, so the traced graph has
exactly the structure the spec describes (functional norms, ``x * gamma``, permutes for
channels-last linears, squeeze-excite gates, side inputs, shared modules, ...).

:func:`expected_modules` is the oracle: from the spec alone it derives which modules the
pass must zero (the last layer of every branch that can provably be made zero, nothing on a
skip path, nothing shared with a use the rule does not select).

The benchmarks import this module too (a 1000-block generated network).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zeta_fx.models import SqueezeExcite

# -- the spec --------------------------------------------------------------------------

# Ops with parameters whose zeroing zeroes their output (one layer node each).
LAYER_OPS = ("conv3", "conv1", "lin", "fconv", "wsconv", "bn", "fbn", "gn", "fln", "ls",
             "shared")
# Ops that map zero to zero in eval mode (a gate's own path never counts).
PRESERVING_OPS = ("relu", "gelu", "silu", "tanh", "f_relu", "f_gelu", "t_tanh", "drop",
                  "droppath", "sd", "gn0", "se", "hse", "slice_pad", "cond_mod")
# Ops that do not map zero to zero in eval mode (or bring in a side value).
BLOCKING_OPS = ("sigmoid", "bn0", "fbn0", "in_track", "cond_add")
COND_OPS = ("cond_mod", "cond_add")
# Structures that fooled the pass (the soundness issue); the generated test judges them by
# running the model only (``expected_modules`` does not know them):
# divisions and eps-free norms, where-fills, bounded clamps, leaf subclasses with their own
# forward, hooks, in-place ops on the fork, relative-position logits, scan-plus-D skips,
# residual gates at the branch end, affine norms, a Gemma (1 + w) norm.
HARD_OPS = ("l2div", "rms0", "rms_eps", "gemma", "wnconv", "tempconv", "unitconv",
            "where0", "where_half", "where_buf", "htanh", "htanh_pos", "htanh_neg", "lora",
            "plusone", "hooked", "prehooked", "relu_inplace", "relattn", "scan_d", "gc_gate",
            "evo") + ("view_write", "data_write", "silu_inplace", "out_write", "iadd_view")
# Writes through an alias of the value they receive (the op-semantics issue): a branch
# value, or the fork itself when one starts a branch.
ALIAS_WRITE_OPS = ("view_write", "data_write", "silu_inplace", "out_write", "iadd_view")
# Terms added beside a block's merge: ``skip + branch + extra``.
EXTRAS = ("param", "buffer", "const")
# Layer nodes an op puts in the branch region (the pass tells skip from branch by them).
_LAYER_NODES = {**{k: 1 for k in LAYER_OPS}, "se": 2, "hse": 2, "gemma": 1, "wnconv": 1,
                "tempconv": 1, "unitconv": 1, "lora": 1, "hooked": 1, "prehooked": 1,
                "relattn": 4, "scan_d": 3, "gc_gate": 4, "evo": 1}


@dataclass(frozen=True)
class Op:
    """One step of a branch. ``arg``: a ``Block`` for "nested", part kinds for "cat"."""

    kind: str
    arg: Any = None


@dataclass(frozen=True)
class Block:
    """A residual block: ``skip(x) + sum(branch(x))``.

    ``skip`` is 0 (identity), 1 (1x1 conv) or 2 (1x1 conv + BatchNorm); ``form`` is how the
    sum is written ("op", "torch", "method"); ``skip_first`` its order; ``post`` an
    activation after the merge (ResNet style) or None; ``extra`` a Parameter, buffer or
    constant added beside the merge, or None.
    """

    branches: tuple[tuple[Op, ...], ...]
    skip: int = 0
    form: str = "op"
    skip_first: bool = True
    post: str | None = None
    extra: str | None = None   # one of EXTRAS: a term added beside the merge


@dataclass(frozen=True)
class Net:
    """``units``: ("block", Block) | ("repeat", i) re-calls the i-th unit (a block) |
    ("fpn", tap) an FPN-style top-down sum, its top path also an output when ``tap`` |
    ("conv", None) a trunk conv | ("shared", None) the shared conv on the trunk."""

    channels: int
    cond: bool
    units: tuple[tuple[str, Any], ...]


def layer_nodes(ops: tuple[Op, ...]) -> int:
    """How many parameter-consuming nodes ``ops`` put between fork and merge."""
    n = 0
    for op in ops:
        if op.kind == "nested":
            n += sum(layer_nodes(b) for b in op.arg.branches) + op.arg.skip
        elif op.kind == "cat":
            n += sum(1 for part in op.arg if part == "conv")
        else:
            n += _LAYER_NODES.get(op.kind, 0)
    return n


# -- the modules ------------------------------------------------------------------------

def _randomise_stats(module: nn.Module, gen: torch.Generator) -> None:
    if getattr(module, "running_mean", None) is not None:
        module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen))
        module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)


def _randomise_affine(module: nn.Module, gen: torch.Generator) -> None:
    for p in module.parameters(recurse=False):
        with torch.no_grad():
            p.copy_(torch.randn(p.shape, generator=gen))


class ChannelsLastLinear(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.lin = nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class FConv(nn.Module):
    """A conv written with ``F.conv2d`` and its own parameters."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c, c, 3, 3) * 0.2)
        self.bias = nn.Parameter(torch.randn(c) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, padding=1)


class WSConv(nn.Conv2d):
    """Weight-standardised conv (timm's StdConv2d): the weight is normalised before use."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, padding=1)


class FBatchNorm(nn.BatchNorm2d):
    """timm's BatchNormAct style: ``F.batch_norm`` with the module's own tensors."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            self.training, self.momentum, self.eps)


class FLayerNorm(nn.Module):
    """Channels-last ``F.layer_norm`` with its own weight and bias."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c))
        self.bias = nn.Parameter(torch.randn(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias).permute(0, 3, 1, 2)


class LayerScale(nn.Module):
    def __init__(self, c: int, gamma_first: bool) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.rand(c, 1, 1) + 0.5)
        self.gamma_first = gamma_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gamma * x if self.gamma_first else x * self.gamma


class Act(nn.Module):
    """Functional activations, so the graph has call_function nodes."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "f_relu":
            return F.relu(x)
        if self.kind == "f_gelu":
            return F.gelu(x)
        return torch.tanh(x)


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """timm's drop_path, verbatim in structure."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    random_tensor = x.new_empty(shape).bernoulli_(keep_prob)
    return x.div(keep_prob) * random_tensor


class DropPath(nn.Module):
    def __init__(self, p: float = 0.2) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training)


class HardSE(nn.Module):
    """MobileNetV3-style gate with the hard sigmoid written out: relu6(g + 3) / 6."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, 4, 1), nn.Conv2d(4, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * (F.relu6(g + 3.0) / 6.0)


class SlicePad(nn.Module):
    """Keep half the channels and pad back with zeros (an option-A shortcut's op)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x[:, : x.shape[1] // 2]
        return F.pad(half, (0, 0, 0, 0, 0, x.shape[1] - x.shape[1] // 2))


class CondMod(nn.Module):
    """FiLM-style scale from the conditioning: ``x * (1 + scale(emb))``."""

    def __init__(self, c: int, e: int) -> None:
        super().__init__()
        self.scale = nn.Linear(e, c)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return x * (1 + self.scale(emb)[:, :, None, None])


class CondAdd(nn.Module):
    """UNet-style timestep injection: ``x + proj(emb)``."""

    def __init__(self, c: int, e: int) -> None:
        super().__init__()
        self.proj = nn.Linear(e, c)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return x + self.proj(emb)[:, :, None, None]


class Cat(nn.Module):
    """``cat`` of two half-width parts: a 1x1 conv ("conv") or a channel slice ("slice")."""

    def __init__(self, c: int, parts: tuple[str, str]) -> None:
        super().__init__()
        self.parts = parts
        self.a = nn.Conv2d(c, c // 2, 1) if parts[0] == "conv" else None
        self.b = nn.Conv2d(c, c // 2, 1) if parts[1] == "conv" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[1] // 2
        a = self.a(x) if self.a is not None else x[:, :half]
        b = self.b(x) if self.b is not None else x[:, half:]
        return torch.cat([a, b], dim=1)


class L2Div(nn.Module):
    """``h / |h|`` over channels: 0/0 at zero."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(dim=1, keepdim=True)


class RMS(nn.Module):
    """RMS normalisation over channels, with or without eps (without: 0 * inf at zero)."""

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ms = x.pow(2).mean(1, keepdim=True)
        return x * torch.rsqrt(ms + self.eps) if self.eps else x * torch.rsqrt(ms)


class GemmaRMS(nn.Module):
    """Gemma's RMSNorm: the scale is ``1 + weight``, so zeroing ``weight`` is not zeroing."""

    def __init__(self, c: int, gen: torch.Generator) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c, 1, 1, generator=gen) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + 1e-6) * (1 + self.weight)


class WeightFnConv(nn.Module):
    """A 1x1 conv whose weight is computed first: manual weight norm ``g * v / |v|``
    ("wn"), a learnable temperature ``w / t`` ("temp"), a unit weight ``w / |w|`` ("unit")."""

    def __init__(self, c: int, kind: str, gen: torch.Generator) -> None:
        super().__init__()
        self.kind = kind
        self.bias = nn.Parameter(torch.randn(c, generator=gen) * 0.1)
        if kind == "wn":
            self.g = nn.Parameter(torch.rand(c, 1, 1, 1, generator=gen) + 0.5)
            self.v = nn.Parameter(torch.randn(c, c, 1, 1, generator=gen))
        else:
            self.w = nn.Parameter(torch.randn(c, c, 1, 1, generator=gen) * 0.3)
        if kind == "temp":
            self.t = nn.Parameter(torch.rand((), generator=gen) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "wn":
            w = self.g * self.v / self.v.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        elif self.kind == "temp":
            w = self.w / self.t
        else:
            w = self.w / self.w.norm()
        return F.conv2d(x, w, self.bias)


class WhereFill(nn.Module):
    """``where(c, h, fill)``: fill 0.0 with a mask buffer ("where0", zero-preserving),
    0.5 where ``h <= 0`` ("where_half"), a buffer ("where_buf")."""

    def __init__(self, c: int, kind: str, gen: torch.Generator) -> None:
        super().__init__()
        self.kind = kind
        self.register_buffer("mask", torch.rand(c, 1, 1, generator=gen) > 0.5)
        self.register_buffer("fill", torch.randn(c, 1, 1, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "where0":
            return torch.where(self.mask, x, 0.0)
        if self.kind == "where_half":
            return torch.where(x > 0, x, 0.5)
        return torch.where(self.mask, x, self.fill)


class NegHardtanh(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.hardtanh(x, -1.0, -0.25)


class LoRAConv(nn.Conv2d):
    """A 1x1 conv plus a low-rank update, with its own forward; kept a leaf (LEAF_MODULES)."""

    def __init__(self, c: int) -> None:
        super().__init__(c, c, 1)
        self.A = nn.Conv2d(c, 2, 1, bias=False)
        self.B = nn.Conv2d(2, c, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.B(self.A(x))


class AliasWrite(nn.Module):
    """Writes the value it receives in place through an alias and returns it: through a
    view, ``.data``, ``inplace=True``, ``out=`` or an augmented assignment on a view."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.how == "view_write":
            x.flatten(1).mul_(2.0)
        elif self.how == "data_write":
            x.data.clamp_(min=-0.5)
        elif self.how == "silu_inplace":
            F.silu(x, inplace=True)
        elif self.how == "out_write":  # (through detached aliases: out= and autograd)
            torch.mul(x.detach(), 3.0, out=x.detach())
        else:  # iadd_view
            v = x.flatten(1)
            v += 1.0
        return x


class PlusOne(nn.Identity):
    """An ``nn.Identity`` subclass that adds 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1


def _add_half(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
    return out + 0.5


def _shift_input(module: nn.Module, args: tuple) -> tuple:
    return (args[0] + 1,)


class RelAttn(nn.Module):
    """Attention over the 4x4 positions with relative-position logits ``q kᵀ + q @ table``."""

    def __init__(self, c: int, gen: torch.Generator, positions: int = 16) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(c, c), nn.Linear(c, c), nn.Linear(c, c)
        self.table = nn.Parameter(torch.randn(c, positions, generator=gen) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        q, k, v = self.q(t), self.k(t), self.v(t)
        logits = q @ k.transpose(-1, -2) + q @ self.table
        return (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, c, h, w)


class ScanD(nn.Module):
    """SSM-style ``scan(x) + D * x``: a merge of two data paths, not a residual join."""

    def __init__(self, c: int, gen: torch.Generator) -> None:
        super().__init__()
        self.inp, self.gate = nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 1)
        self.D = nn.Parameter(torch.randn(c, 1, 1, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scan = torch.cumsum(self.inp(x) * torch.sigmoid(self.gate(x)), dim=3)
        return scan + self.D * x


class GCGate(nn.Module):
    """GCNet's global-context gate, itself residual: ``x + transform(context(x))``."""

    def __init__(self, c: int, r: int = 2) -> None:
        super().__init__()
        self.attn = nn.Conv2d(c, 1, 1)
        self.conv_a, self.ln, self.conv_b = nn.Conv2d(c, r, 1), nn.LayerNorm([r, 1, 1]), nn.Conv2d(r, c, 1)

    def skip_value(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        weights = self.attn(x).view(b, 1, h * w).softmax(-1)
        ctx = (x.view(b, c, h * w) @ weights.transpose(1, 2)).view(b, c, 1, 1)
        return x + self.conv_b(F.relu(self.ln(self.conv_a(ctx))))


class EvoAffine(nn.Module):
    """EvoNorm-S0: ``x * sigmoid(v x) / group_std(x) * weight + bias``."""

    def __init__(self, c: int, gen: torch.Generator) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.rand(c, 1, 1, generator=gen) + 0.5)
        self.bias = nn.Parameter(torch.randn(c, 1, 1, generator=gen))
        self.v = nn.Parameter(torch.rand(c, 1, 1, generator=gen) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        g = x.reshape(b, 2, c // 2, h, w)
        std = (g.var(dim=(2, 3, 4), keepdim=True, unbiased=False) + 1e-5).sqrt()
        n = (x * torch.sigmoid(self.v * x)).reshape(b, 2, c // 2, h, w) / std
        return n.reshape(b, c, h, w) * self.weight + self.bias


# Modules a capture must keep opaque (pass as ``leaf_modules``).
LEAF_MODULES = (LoRAConv,)


def leaves_in(model: nn.Module) -> tuple[type, ...]:
    """The LEAF_MODULES classes this model holds (a leaf class that matches no module of
    the model is an error in zeta_fx: it would silently do nothing)."""
    return tuple(c for c in LEAF_MODULES if any(isinstance(m, c) for m in model.modules()))


class Branch(nn.Module):
    def __init__(self, ops: tuple[Op, ...], ctx: "_Ctx") -> None:
        super().__init__()
        self.kinds = tuple(op.kind for op in ops)
        self.ops = nn.ModuleList(ctx.make(op) for op in ops)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        for kind, op in zip(self.kinds, self.ops):
            x = op(x, emb) if kind in COND_OPS or kind == "nested" else op(x)
        return x


class ResBlock(nn.Module):
    def __init__(self, spec: Block, ctx: "_Ctx") -> None:
        super().__init__()
        self.spec = spec
        self.branches = nn.ModuleList(Branch(b, ctx) for b in spec.branches)
        c = ctx.channels
        self.skip: nn.Module | None = None
        if spec.skip:
            layers: list[nn.Module] = [nn.Conv2d(c, c, 1, bias=False)]
            if spec.skip == 2:
                layers.append(ctx.bn(nn.BatchNorm2d(c)))
            self.skip = nn.Sequential(*layers)
        self.extra_kind = spec.extra
        if spec.extra == "param":
            self.extra = nn.Parameter(torch.randn(c, 1, 1, generator=ctx.gen))
        elif spec.extra == "buffer":
            self.register_buffer("extra", torch.randn(c, 1, 1, generator=ctx.gen))

    def skip_value(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        """What the block computes when its branches (and a parameter beside them) are zero."""
        out = x if self.skip is None else self.skip(x)
        return F.relu(out) if self.spec.post == "relu" else out

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        skip = x if self.skip is None else self.skip(x)
        outs = [b(x, emb) for b in self.branches]
        if self.extra_kind == "const":
            outs.append(0.5)
        elif self.extra_kind is not None:
            outs.append(self.extra)
        terms = [skip, *outs] if self.spec.skip_first else [*outs, skip]
        acc = terms[0]
        for t in terms[1:]:
            if self.spec.form == "torch":
                acc = torch.add(acc, t)
            elif self.spec.form == "method":
                acc = acc.add(t)
            else:
                acc = acc + t
        if self.spec.post == "relu":
            acc = F.relu(acc)
        return acc


class FPN(nn.Module):
    """``lat1(f1) + lat2(b(f1))`` with ``f1 = a(x)``; with ``tap`` the top path is an output."""

    def __init__(self, c: int, tap: bool) -> None:
        super().__init__()
        self.tap = tap
        self.a = nn.Conv2d(c, c, 1)
        self.skip = nn.Conv2d(c, c, 1)                                   # lateral
        self.branches = nn.ModuleList([nn.Sequential(nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 1))])

    def skip_value(self, x: torch.Tensor, taps: list | None = None) -> torch.Tensor:
        return self.skip(self.a(x))

    def forward(self, x: torch.Tensor, taps: list) -> torch.Tensor:
        f1 = self.a(x)
        top = self.branches[0](f1)
        if self.tap:
            taps.append(top)
        return self.skip(f1) + top


class GenNet(nn.Module):
    """The interpreter: stem, units, pooled linear head; returns ``(logits, *taps)``."""

    def __init__(self, spec: Net, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        c, e = spec.channels, 6
        self.spec = spec
        self.shared = nn.Conv2d(c, c, 1)  # registered first: its FQN is "shared"
        ctx = _Ctx(c, e, self.shared, gen)
        self.stem = nn.Conv2d(c, c, 1)
        self.embed = nn.Sequential(nn.Linear(4, e), nn.SiLU()) if spec.cond else None
        units: list[nn.Module] = []
        for kind, arg in spec.units:
            if kind == "block":
                units.append(ResBlock(arg, ctx))
            elif kind == "repeat":
                units.append(units[arg])
            elif kind == "fpn":
                units.append(FPN(c, arg))
            elif kind == "conv":
                units.append(nn.Conv2d(c, c, 3, padding=1))
            elif kind == "shared":
                units.append(self.shared)
            else:
                raise ValueError(kind)
        self.unit_kinds = tuple(k for k, _ in spec.units)
        self.units = nn.ModuleList(units)
        self.head = nn.Linear(c, 3)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> Any:
        emb = self.embed(cond) if self.embed is not None else None
        h = self.stem(x)
        taps: list[torch.Tensor] = []
        for kind, unit in zip(self.unit_kinds, self.units):
            if kind in ("block", "repeat"):
                h = unit(h, emb)
            elif kind == "fpn":
                h = unit(h, taps)
            else:
                h = unit(h)
        out = self.head(h.mean((2, 3)))
        return (out, *taps) if taps else out


@dataclass
class _Ctx:
    channels: int
    emb: int
    shared: nn.Module
    gen: torch.Generator
    made: dict = field(default_factory=dict)

    def bn(self, m: nn.Module) -> nn.Module:
        _randomise_stats(m, self.gen)
        _randomise_affine(m, self.gen)
        return m

    def make(self, op: Op) -> nn.Module:
        c, k = self.channels, op.kind
        if k == "conv3":
            m: nn.Module = nn.Conv2d(c, c, 3, padding=1, bias=bool(op.arg))
        elif k == "conv1":
            m = nn.Conv2d(c, c, 1, bias=bool(op.arg))
        elif k == "lin":
            m = ChannelsLastLinear(c)
        elif k == "fconv":
            m = FConv(c)
        elif k == "wsconv":
            m = WSConv(c, c, 3, padding=1)
        elif k == "bn":
            m = self.bn(nn.BatchNorm2d(c))
        elif k == "bn0":
            m = self.bn(nn.BatchNorm2d(c, affine=False))
        elif k == "fbn":
            m = self.bn(FBatchNorm(c))
        elif k == "fbn0":
            m = self.bn(FBatchNorm(c, affine=False))
        elif k == "in_track":
            m = self.bn(nn.InstanceNorm2d(c, track_running_stats=True))
        elif k == "gn":
            m = self.bn(nn.GroupNorm(2, c))
        elif k == "gn0":
            m = nn.GroupNorm(2, c, affine=False)
        elif k == "fln":
            m = FLayerNorm(c)
        elif k == "ls":
            m = LayerScale(c, bool(op.arg))
        elif k == "shared":
            m = self.shared
        elif k in ("relu", "gelu", "silu", "tanh", "sigmoid"):
            m = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh,
                 "sigmoid": nn.Sigmoid}[k]()
        elif k in ("f_relu", "f_gelu", "t_tanh"):
            m = Act(k)
        elif k == "drop":
            m = nn.Dropout(0.2)
        elif k == "droppath":
            m = DropPath(0.2)
        elif k == "sd":
            from torchvision.ops import StochasticDepth
            m = StochasticDepth(0.2, "row")
        elif k == "se":
            m = SqueezeExcite(c, reduction=2)
        elif k == "hse":
            m = HardSE(c)
        elif k == "slice_pad":
            m = SlicePad()
        elif k == "cond_mod":
            m = CondMod(c, self.emb)
        elif k == "cond_add":
            m = CondAdd(c, self.emb)
        elif k == "cat":
            m = Cat(c, op.arg)
        elif k == "nested":
            m = ResBlock(op.arg, self)
        elif k == "l2div":
            m = L2Div()
        elif k in ("rms0", "rms_eps"):
            m = RMS(0.0 if k == "rms0" else 1e-6)
        elif k == "gemma":
            m = GemmaRMS(c, self.gen)
        elif k in ("wnconv", "tempconv", "unitconv"):
            m = WeightFnConv(c, {"wnconv": "wn", "tempconv": "temp", "unitconv": "unit"}[k], self.gen)
        elif k in ("where0", "where_half", "where_buf"):
            m = WhereFill(c, k, self.gen)
        elif k == "htanh":
            m = nn.Hardtanh()
        elif k == "htanh_pos":
            m = nn.Hardtanh(min_val=0.1)
        elif k == "htanh_neg":
            m = NegHardtanh()
        elif k == "lora":
            m = LoRAConv(c)
        elif k == "plusone":
            m = PlusOne()
        elif k == "hooked":
            m = nn.Conv2d(c, c, 1)
            m.register_forward_hook(_add_half)
        elif k == "prehooked":
            m = nn.Conv2d(c, c, 1)
            m.register_forward_pre_hook(_shift_input)
        elif k == "relu_inplace":
            m = nn.ReLU(inplace=True)
        elif k in ALIAS_WRITE_OPS:
            m = AliasWrite(k)
        elif k == "relattn":
            m = RelAttn(c, self.gen)
        elif k == "scan_d":
            m = ScanD(c, self.gen)
        elif k == "gc_gate":
            m = GCGate(c)
        elif k == "evo":
            m = EvoAffine(c, self.gen)
        else:
            raise ValueError(k)
        self.made[id(op)] = m
        return m


def build(spec: Net, seed: int = 0) -> GenNet:
    """The model for ``spec``; parameter values are random but fixed by ``seed``."""
    torch.manual_seed(seed)
    return GenNet(spec, seed)


def example_inputs(spec: Net, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(2, spec.channels, 4, 4, generator=gen), torch.randn(2, 4, generator=gen))


# -- the oracle -------------------------------------------------------------------------

def _param_module(model: GenNet, op_module: nn.Module, kind: str) -> nn.Module:
    return op_module.lin if kind == "lin" else op_module


def expected_modules(model: GenNet) -> set[int]:
    """``id``s of the modules ``residual_branch_last`` must zero in ``model`` (nested="all").

    Per branch, walk back from its end: a layer ends the walk (it is the last layer); an op
    that maps zero to zero continues it; a blocking op, the fork itself, or a nested block
    with a projection skip (zeroing it would zero a skip) gives up on the branch. A nested
    block with an identity skip needs both its input and its branches zero (a walk in its
    branch that reaches its fork goes on in the outer branch). Then, as the
    pass does, a module also used where no kept branch selects it is dropped, and with it
    every branch whose zeroing needed it (and every other branch of its block), until
    nothing changes.
    """
    covers: list[frozenset] = []         # sets of (use key, module id)
    owner: dict[frozenset, int] = {}     # cover -> id of the block (or FPN) whose merge it zeroes
    uses: dict[int, set] = {}            # module id -> use keys

    def use(op_module: nn.Module, kind: str, key: tuple) -> tuple[tuple, int]:
        pm = _param_module(model, op_module, kind)
        uses.setdefault(id(pm), set()).add(key)
        return key, id(pm)

    def walk(branch: Branch, i: int, at_fork: frozenset | None = None) -> frozenset | None:
        # ``at_fork``: what makes the fork zero, for a nested block walked from an outer
        # branch (its fork lies inside that branch); None at a join's own fork.
        if i < 0:
            return at_fork
        kind, mod = branch.kinds[i], branch.ops[i]
        if kind in LAYER_OPS:
            return frozenset({use(mod, kind, (id(branch), i))})
        if kind in PRESERVING_OPS:
            return walk(branch, i - 1, at_fork)
        if kind in BLOCKING_OPS:
            return None
        if kind == "cat":
            parts: set = set()
            for part in (mod.a, mod.b):
                if part is None:
                    prev = walk(branch, i - 1, at_fork)
                    if prev is None:
                        return None
                    parts |= prev
                else:
                    parts.add(use(part, "conv1", (id(part), 0)))
            return frozenset(parts)
        if kind == "nested":
            if mod.skip is not None:
                return None
            prev = walk(branch, i - 1, at_fork)
            if prev is None:
                return None
            inner = [walk(b, len(b.kinds) - 1, prev) for b in mod.branches]
            if any(c is None for c in inner):
                return None
            return prev.union(*inner)
        raise ValueError(kind)

    def block(b: ResBlock) -> None:
        # A row claims the merge equals its skip, every operand counted: a block's branches
        # are zeroed all together or not at all, and a term beside the merge (a Parameter,
        # buffer or constant; hard networks only) is beyond this oracle.
        found = [walk(branch, len(branch.kinds) - 1) for branch in b.branches]
        if all(c is not None for c in found) and b.extra_kind is None:
            for cover in found:
                covers.append(cover)
                owner[cover] = id(b)
        for branch in b.branches:
            for kind, mod in zip(branch.kinds, branch.ops):
                if kind == "nested":
                    block(mod)

    seen: set[int] = set()
    for kind, unit in zip(model.unit_kinds, model.units):
        if kind in ("block", "repeat") and id(unit) not in seen:
            seen.add(id(unit))
            block(unit)
        elif kind == "fpn" and not unit.tap:
            cover = frozenset({use(unit.branches[0][1], "conv1", (id(unit), 0))})
            covers.append(cover)
            owner[cover] = id(unit)
        elif kind == "shared":
            uses.setdefault(id(model.shared), set()).add(("trunk", 0))  # a trunk use, never selected
    # The shared conv's uses inside branches that were never walked count too.
    for name, m in model.named_modules(remove_duplicate=False):
        if isinstance(m, Branch):
            for i, kind in enumerate(m.kinds):
                if kind == "shared":
                    uses.setdefault(id(model.shared), set()).add((id(m), i))
    while True:
        chosen = {u for c in covers for u, _ in c}
        dropped = {mid for mid, keys in uses.items() if not keys <= chosen}
        kept = [c for c in covers if not any(mid in dropped for _, mid in c)]
        broken = {owner[c] for c in covers if c not in kept}   # a block loses all or nothing
        kept = [c for c in kept if owner[c] not in broken]
        if len(kept) == len(covers):
            break
        covers = kept
    return {mid for c in covers for _, mid in c}


# -- what the running oracle needs ------------------------------------------------------

def block_claims(model: GenNet) -> list[tuple[nn.Module, Any]]:
    """Every residual unit of ``model`` with the value it must equal once its branch is
    zero: ``(block, block.skip_value)`` for each ResBlock, FPN and GC gate, once each."""
    seen: set[int] = set()
    out = []
    for m in model.modules():
        if isinstance(m, (ResBlock, FPN, GCGate)) and id(m) not in seen:
            seen.add(id(m))
            out.append((m, m.skip_value))
    return out


def op_kinds(spec: Net) -> set[str]:
    """Every op kind and extra the spec uses, nested blocks included."""
    kinds: set[str] = set()

    def block(b: Block) -> None:
        if b.extra is not None:
            kinds.add(f"extra:{b.extra}")
        for ops in b.branches:
            for op in ops:
                kinds.add(op.kind)
                if op.kind == "nested":
                    block(op.arg)

    for kind, arg in spec.units:
        if kind == "block":
            block(arg)
    return kinds


def is_legacy(spec: Net) -> bool:
    """Whether :func:`expected_modules` knows every structure in ``spec``."""
    return not any(k in HARD_OPS or k.startswith("extra:") for k in op_kinds(spec))


def random_inputs(spec: Net):
    """``make_inputs(seed)`` for the oracle: fresh random ``(x, cond)`` per seed."""
    def make(seed: int) -> tuple:
        return example_inputs(spec, seed + 100)
    return make
