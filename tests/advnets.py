"""Small adversarial residual blocks for issue 17: writes through aliases, opaque calls that
write, patched forwards, storage-sharing attributes, half-precision eps and range-dependent
ops. Each case is a few lines of ``forward`` over a block ``x + fc2(relu(fc1(x)))`` (or a
stack of two), built in a given dtype; ``tests/test_adversarial_semantics.py`` runs the pass
on each and judges every claim by running the model.

A case's ``kind`` says what a sound and reasonably complete pass must do:

- ``"harmful"``: the structure breaks "the merge equals its skip" if the branch's last layer
  is zeroed naively. The pass may refuse the join (then a left-alone reason names one of
  ``names``) or make a claim that really holds (say, naming the written value as the skip).
- ``"harmless"``: the write / op cannot break the claim; the pass must still zero the branch
  (at least one residual row) and every claim must hold.
- ``"either"``: only the claims are judged.

``block_check``: the model's output is the merge and its input the fork, so a row whose skip
is the input placeholder and whose merge is the output also claims ``model(x) == x``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

C = 8
SHAPE = (3, C)
IMAGE = (2, C, 4, 4)


class Base(nn.Module):
    """fc1, fc2 (8 -> 8); ``setup`` adds what a case needs."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(C, C)
        self.fc2 = nn.Linear(C, C)

    def branch(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(h)))


@dataclass
class Case:
    name: str
    forward: Callable[..., Any]
    kind: str                                   # "harmful" | "harmless" | "either"
    names: tuple[str, ...] = ()                 # a refusal's reason names one of these
    dtypes: tuple[str, ...] = ("float32",)
    setup: Callable[[nn.Module], None] | None = None
    leaf: tuple[Any, ...] = ()
    block_check: bool = True
    skip_fixed: bool = True
    captures: tuple[str, ...] = ("auto",)
    shape: tuple[int, ...] = SHAPE
    # the example inputs given to the pass (capture / verify); default: random, seed 99
    example: Callable[[torch.dtype], tuple] | None = None
    # kind per dtype, where it differs (a bf16 positive control of a float16 trap)
    kind_by_dtype: dict[str, str] = field(default_factory=dict)

    def kind_for(self, dtype: str) -> str:
        return self.kind_by_dtype.get(dtype, self.kind)

    def build(self, dtype: str = "float32", seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        cls = type(f"Block_{self.name}", (Base,), {"forward": self.forward,
                                                   "__module__": __name__})
        model = cls()
        if self.setup is not None:
            self.setup(model)
        model.to(getattr(torch, dtype))
        if self.setup is not None and getattr(self.setup, "after_dtype", False):
            self.setup(model)
        return model.eval()


CASES: dict[str, Case] = {}


def scale_in_place(t: torch.Tensor) -> torch.Tensor:
    """An opaque function (``torch.fx.wrap``) that writes what it receives."""
    t.mul_(2)
    return t * 1.0


def scale_copy(t: torch.Tensor) -> torch.Tensor:
    """An opaque function that does not."""
    return t * 2.0


torch.fx.wrap("scale_in_place")
torch.fx.wrap("scale_copy")


@torch.library.custom_op("zeta_fx_adv::scale_", mutates_args=("t",))
def _custom_scale_(t: torch.Tensor) -> None:
    """A custom op whose schema says it writes its argument: ``(Tensor(a0!) t) -> ()``."""
    t.mul_(2)


@torch.library.custom_op("zeta_fx_adv::scaled", mutates_args=())
def _custom_scaled(t: torch.Tensor) -> torch.Tensor:
    """A custom op that does not write: ``(Tensor t) -> Tensor``."""
    return t * 2


@_custom_scaled.register_fake
def _(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(t)


def _second_block(s: nn.Module) -> None:
    s.fc3 = nn.Linear(C, C)
    s.fc4 = nn.Linear(C, C)


def case(name: str, kind: str, names: tuple[str, ...] = (), **options: Any):
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        assert name not in CASES, name
        CASES[name] = Case(name, fn, kind, tuple(names), **options)
        return fn
    return register


def after_dtype(fn: Callable[[nn.Module], None]) -> Callable[[nn.Module], None]:
    """A setup run again after the dtype cast (attributes that view parameters)."""
    fn.after_dtype = True
    return fn


# -- writes through an alias of the fork (the block input), before the merge reads it ------

@case("to_same_dtype_mul_", "harmful", ("mul_",), captures=("auto", "export", "concrete"))
def _(s, x):
    x.to(x.dtype).mul_(2)                   # `to` with the same dtype returns x itself
    return x + s.branch(x)


@case("to_same_dtype_mul_after_branch", "harmful", ("mul_",))
def _(s, x):
    f = s.branch(x)
    x.to(x.dtype).mul_(2)
    return x + f


@case("float_mul_", "harmful", ("mul_",), dtypes=("float32",))
def _(s, x):
    x.float().mul_(2)                       # float32 -> float32: x itself
    return x + s.branch(x)


@case("type_as_mul_", "harmful", ("mul_",))
def _(s, x):
    x.type_as(x).mul_(2)
    return x + s.branch(x)


@case("contiguous_mul_", "harmful", ("mul_",))
def _(s, x):
    x.contiguous().mul_(2)
    return x + s.branch(x)


@case("data_clamp_", "harmful", ("clamp_",), captures=("auto", "concrete"))
def _(s, x):
    x.data.clamp_(-0.1, 0.1)
    return x + s.branch(x)


@case("T_mul_", "harmful", ("mul_",), captures=("auto", "export"))
def _(s, x):
    x.T.mul_(2)
    return x + s.branch(x)


@case("transpose_add_", "harmful", ("add_",))
def _(s, x):
    x.transpose(0, 1).add_(1)
    return x + s.branch(x)


@case("permute_mul_", "harmful", ("mul_",))
def _(s, x):
    x.permute(1, 0).mul_(2)
    return x + s.branch(x)


@case("unfold_mul_", "harmful", ("mul_",))
def _(s, x):
    x.unfold(1, 2, 2).mul_(2)
    return x + s.branch(x)


@case("view_add_", "harmful", ("add_",), captures=("auto", "export"))
def _(s, x):
    x.view(-1).add_(1)
    return x + s.branch(x)


@case("view_as_mul_", "harmful", ("mul_",))
def _(s, x):
    x.view_as(x).mul_(2)
    return x + s.branch(x)


@case("reshape_mul_", "harmful", ("mul_",))
def _(s, x):
    x.reshape(-1).mul_(2)                   # contiguous: a view
    return x + s.branch(x)


@case("flatten_mul_", "harmful", ("mul_",))
def _(s, x):
    x.flatten().mul_(2)
    return x + s.branch(x)


@case("detach_zero_", "harmful", ("zero_",))
def _(s, x):
    x.detach().zero_()
    return x + s.branch(x)


@case("slice_mul_", "harmful", ("mul_",), captures=("auto", "export"))
def _(s, x):
    x[:, :2].mul_(0)
    return x + s.branch(x)


@case("narrow_mul_", "harmful", ("mul_",))
def _(s, x):
    x.narrow(1, 0, 2).mul_(2)
    return x + s.branch(x)


@case("chunk_mul_", "harmful", ("mul_",))
def _(s, x):
    x.chunk(2, dim=1)[0].mul_(2)
    return x + s.branch(x)


@case("unbind_mul_", "harmful", ("mul_",))
def _(s, x):
    x.unbind(0)[0].mul_(2)
    return x + s.branch(x)


@case("diagonal_fill_", "harmful", ("fill_",))
def _(s, x):
    x.diagonal().fill_(5.0)
    return x + s.branch(x)


@case("as_strided_mul_", "harmful", ("mul_",))
def _(s, x):
    x.as_strided((3,), (1,)).mul_(2)
    return x + s.branch(x)


@case("expand_mul_", "harmful", ("mul_",))
def _(s, x):
    x.expand(1, 3, C).mul_(2)
    return x + s.branch(x)


@case("squeeze_mul_", "harmful", ("mul_",))
def _(s, x):
    x.unsqueeze(0).squeeze(0).mul_(2)
    return x + s.branch(x)


@case("add_out_fork", "harmful", ("add", "out"), captures=("auto", "concrete"))
def _(s, x):
    a = x * 2
    torch.add(a, 1.0, out=x)
    return x + s.branch(x)


@case("silu_inplace_fork", "harmful", ("silu",), captures=("auto", "export"))
def _(s, x):
    h = F.silu(x, inplace=True)
    return x + s.fc2(s.fc1(h))


@case("relu6_inplace_fork", "harmful", ("relu6", "hardtanh"))
def _(s, x):
    h = F.relu6(x, inplace=True)
    return x + s.fc2(s.fc1(h))


@case("hardswish_inplace_fork", "harmful", ("hardswish",))
def _(s, x):
    h = F.hardswish(x, inplace=True)
    return x + s.fc2(s.fc1(h))


@case("leaky_relu_inplace_fork", "harmful", ("leaky_relu",))
def _(s, x):
    h = F.leaky_relu(x, 0.1, inplace=True)
    return x + s.fc2(s.fc1(h))


def _inplace_relu(s: nn.Module) -> None:
    s.act = nn.ReLU(inplace=True)


@case("relu_module_inplace_fork", "harmful", ("act", "ReLU", "relu"), setup=_inplace_relu)
def _(s, x):
    h = s.act(x)                            # pre-activation block with ReLU(inplace=True)
    return x + s.fc2(s.fc1(h))


@case("relu_module_inplace_fork_view", "harmful", ("act", "ReLU", "relu"), setup=_inplace_relu)
def _(s, x):
    h = s.act(x.view(3, C))
    return x + s.fc2(s.fc1(h))


@case("torch_relu__fork", "harmful", ("relu_",))
def _(s, x):
    torch.relu_(x)
    return x + s.branch(x)


@case("sigmoid__method_fork", "harmful", ("sigmoid_",))
def _(s, x):
    f = s.branch(x)
    x.sigmoid_()
    return x + f


@case("copy__fork", "harmful", ("copy_",))
def _(s, x):
    x.copy_(x * 2)
    return x + s.branch(x)


@case("setitem_fork", "harmful", ("setitem", "fill_", "copy_"),
      captures=("export", "concrete"))   # symbolic tracing cannot record `x[...] = v`
def _(s, x):
    x[:, 0] = 0.0
    return x + s.branch(x)


@case("index_put__fork", "harmful", ("index_put_",))
def _(s, x):
    x.index_put_((torch.tensor([0]),), torch.tensor(5.0))
    return x + s.branch(x)


@case("masked_fill__fork", "harmful", ("masked_fill_",))
def _(s, x):
    x.masked_fill_(x > 0, 0.0)
    return x + s.branch(x)


@case("view_in_branch_writes_fork", "harmful", ("mul_",))
def _(s, x):
    h = x.view(3, C)                        # the branch's input is a view of the fork
    h.mul_(2)
    return x + s.branch(h)


@case("to_float32_mul_", "harmful", ("mul_",), dtypes=("float32", "float16", "bfloat16"),
      kind_by_dtype={"float16": "harmless", "bfloat16": "harmless"})
def _(s, x):
    x.to(torch.float32).mul_(2)             # x itself in float32, a copy in half precision
    return x + s.branch(x)


@case("half_mul_", "harmful", ("mul_",), dtypes=("float16", "float32"),
      kind_by_dtype={"float32": "harmless"})
def _(s, x):
    x.half().mul_(2)                        # x itself in float16, a copy in float32
    return x + s.branch(x)


@case("cpu_mul_", "harmful", ("mul_",))
def _(s, x):
    x.cpu().mul_(2)                         # on the CPU: x itself
    return x + s.branch(x)


@case("clone_mul_", "harmless")
def _(s, x):
    x.clone().mul_(2)                       # a copy: x is intact
    return x + s.branch(x)


@case("advanced_index_mul_", "harmless")
def _(s, x):
    x[[0, 1]].mul_(0)                       # advanced indexing copies
    return x + s.branch(x)


@case("clamp__direct", "harmful", ("clamp_",))
def _(s, x):
    x.clamp_(min=0.0)
    return x + s.branch(x)


@case("F_relu__fork", "harmful", ("relu_",))
def _(s, x):
    h = F.relu_(x)
    return x + s.fc2(s.fc1(h))


@case("hardtanh_inplace_fork", "harmful", ("hardtanh",))
def _(s, x):
    h = F.hardtanh(x, -0.5, 0.5, inplace=True)
    return x + s.fc2(s.fc1(h))


@case("elu_inplace_fork", "harmful", ("elu",))
def _(s, x):
    h = F.elu(x, inplace=True)
    return x + s.fc2(s.fc1(h))


@case("threshold_inplace_fork", "harmful", ("threshold",))
def _(s, x):
    h = F.threshold(x, 0.0, 0.0, inplace=True)
    return x + s.fc2(s.fc1(h))


def _inplace_silu(s: nn.Module) -> None:
    s.act = nn.SiLU(inplace=True)


@case("silu_module_inplace_fork", "harmful", ("act", "SiLU", "silu"), setup=_inplace_silu)
def _(s, x):
    return x + s.fc2(s.fc1(s.act(x)))


@case("scatter__fork", "harmful", ("scatter_",))
def _(s, x):
    x.scatter_(1, torch.zeros(3, 1, dtype=torch.long), 0.0)
    return x + s.branch(x)


@case("index_fill__fork", "harmful", ("index_fill_",))
def _(s, x):
    x.index_fill_(1, torch.tensor([0, 3]), 0.0)
    return x + s.branch(x)


@case("addcmul__fork", "harmful", ("addcmul_",))
def _(s, x):
    x.addcmul_(x, x)
    return x + s.branch(x)


@case("lerp__fork", "harmful", ("lerp_",))
def _(s, x):
    x.lerp_(torch.ones_like(x), 0.5)
    return x + s.branch(x)


@case("written_between_two_blocks", "harmful", ("mul_",), setup=_second_block,
      block_check=False, skip_fixed=False)
def _(s, x):
    y = x + s.branch(x)
    y.T.mul_(2)                             # the second block's fork, written through `.T`
    return y + s.fc4(torch.relu(s.fc3(y)))


@case("view_taken_before_write_to_base", "harmful", ("mul_",))
def _(s, x):
    skip = x.view(3, C)                     # a view taken before the base is written
    x.mul_(2)
    return skip + s.branch(x)


@case("relu_out_fork", "harmful", ("relu", "out"))
def _(s, x):
    h = s.fc1(x)
    torch.relu(h, out=x)
    return x + s.fc2(h)


@case("unbound_tensor_method_add_", "harmful", ("add_",))
def _(s, x):
    torch.Tensor.add_(x, 1.0)
    return x + s.branch(x)


@case("augmented_assign_through_view", "harmful", ("mul", "*="))
def _(s, x):
    v = x.view(-1)
    v *= 2                                  # eager: writes x; symbolic trace records `v * 2`
    return x + s.branch(x)


@case("wrapped_function_writes_fork", "harmful", ("scale_in_place",))
def _(s, x):
    h = scale_in_place(x)
    return x + s.fc2(torch.relu(s.fc1(h)))


@case("wrapped_function_pure", "either")
def _(s, x):
    h = scale_copy(x)
    return x + s.fc2(torch.relu(s.fc1(h)))


def _projection(s: nn.Module) -> None:
    s.proj = nn.Linear(C, C)


@case("projection_skip_written_in_place", "harmful", ("mul_",), setup=_projection)
def _(s, x):
    skip = s.proj(x)
    f = s.branch(x)
    skip.mul_(2)                            # the skip value, written after it was produced
    return skip + f


@case("merge_by_add_out_into_fork", "either")
def _(s, x):
    f = s.branch(x)
    return torch.add(x, f, out=x)           # an in-place merge spelled with out=


def _dropout_inplace(s: nn.Module) -> None:
    s.drop = nn.Dropout(0.5, inplace=True)


@case("dropout_module_inplace_on_fork", "harmful", ("drop", "Dropout", "dropout"),
      setup=_dropout_inplace)
def _(s, x):
    h = s.drop(x)                           # writes x in train mode only
    return x + s.fc2(torch.relu(s.fc1(h)))


@case("functional_dropout_inplace_on_fork", "harmful", ("dropout",))
def _(s, x):
    h = F.dropout(x, 0.5, training=s.training, inplace=True)   # traced with training=False
    return x + s.fc2(torch.relu(s.fc1(h)))


def _convs(s: nn.Module) -> None:
    s.conv1 = nn.Conv2d(C, C, 3, padding=1)
    s.bn1 = nn.BatchNorm2d(C)
    s.conv2 = nn.Conv2d(C, C, 3, padding=1)
    s.bn2 = nn.BatchNorm2d(C)
    s.relu = nn.ReLU(inplace=True)
    with torch.no_grad():
        s.bn2.weight.uniform_(0.5, 1.5)
        s.bn2.running_var.uniform_(0.5, 1.5)


def _conv_branch(s: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return s.bn2(s.conv2(torch.relu(s.bn1(s.conv1(x)))))


@case("conv_plain", "harmless", setup=_convs, shape=IMAGE)
def _(s, x):
    return x + _conv_branch(s, x)


@case("conv_preact_inplace_relu_on_fork", "harmful", ("relu", "ReLU"), setup=_convs, shape=IMAGE)
def _(s, x):
    out = s.relu(x)                         # pre-activation with ReLU(inplace=True): writes x
    return x + _conv_branch(s, out)


@case("conv_channels_last_view_write", "harmful", ("mul_",), setup=_convs, shape=IMAGE)
def _(s, x):
    x.permute(0, 2, 3, 1).mul_(2)
    return x + _conv_branch(s, x)


@case("conv_flatten_view_write", "harmful", ("add_",), setup=_convs, shape=IMAGE)
def _(s, x):
    x.flatten(2).add_(1)
    return x + _conv_branch(s, x)


@case("conv_data_write", "harmful", ("mul_",), setup=_convs, shape=IMAGE)
def _(s, x):
    f = _conv_branch(s, x)
    x.data.mul_(2)
    return x + f


@case("conv_torchvision_basic_block", "harmless", setup=_convs, shape=IMAGE, block_check=False)
def _(s, x):
    out = s.relu(s.bn1(s.conv1(x)))
    out = s.bn2(s.conv2(out))
    out += x
    return s.relu(out)


@case("custom_op_schema_writes_fork", "harmful", ("scale_", "zeta_fx_adv"),
      captures=("auto", "export"))
def _(s, x):
    torch.ops.zeta_fx_adv.scale_(x)         # Tensor(a0!): the schema says it writes x
    return x + s.branch(x)


@case("custom_op_pure_at_branch_start", "either", captures=("auto", "export"))
def _(s, x):
    return x + s.branch(torch.ops.zeta_fx_adv.scaled(x))


def _negative_example(dtype: torch.dtype) -> tuple:
    return (-torch.ones(SHAPE, dtype=dtype),)


@case("data_dependent_write_concrete", "harmful", ("mul_",), captures=("concrete",),
      example=_negative_example)
def _(s, x):
    if x.sum() > 0:                         # the example takes the other path: no write seen
        x.mul_(2)
    return x + s.branch(x)


# -- writes through an alias of a branch value, before the merge ---------------------------

@case("branch_out_view_add_", "harmful", ("add_",), captures=("auto", "export"))
def _(s, x):
    f = s.branch(x)
    f.view(-1).add_(1)
    return x + f


@case("branch_out_data_add_", "harmful", ("add_",))
def _(s, x):
    f = s.branch(x)
    f.data.add_(1)
    return x + f


@case("branch_out_detach_fill_", "harmful", ("fill_",))
def _(s, x):
    f = s.branch(x)
    f.detach().fill_(1.0)
    return x + f


@case("branch_out_setitem", "harmful", ("setitem", "fill_", "copy_"),
      captures=("export", "concrete"))
def _(s, x):
    f = s.branch(x)
    f[:, 0] = 1.0
    return x + f


@case("branch_out_T_copy_", "harmful", ("copy_",))
def _(s, x):
    h = torch.relu(s.fc1(x))
    f = s.fc2(h)
    f.T.copy_(h.T)
    return x + f


@case("mul_out_branch", "harmful", ("mul", "out"), captures=("auto", "concrete"))
def _(s, x):
    h = torch.relu(s.fc1(x))
    v = s.fc2(h)
    torch.mul(h, 2, out=v)                  # overwrites the zeroed layer's output
    return x + v


# -- harmless writes: the pass must still zero the branch ----------------------------------

@case("plain", "harmless", captures=("auto", "export", "concrete"))
def _(s, x):
    return x + s.branch(x)


@case("fresh_value_written_in_branch", "harmless")
def _(s, x):
    h = s.fc1(x)
    h.mul_(2)
    h.clamp_(min=0)
    return x + s.fc2(h)


@case("fresh_value_written_through_view", "harmless")
def _(s, x):
    h = s.fc1(x)
    h.view(-1).mul_(3)
    return x + s.fc2(torch.relu(h))


@case("relu_module_inplace_on_fresh", "harmless", setup=_inplace_relu)
def _(s, x):
    return x + s.fc2(s.act(s.fc1(x)))


@case("silu_inplace_on_fresh", "harmless")
def _(s, x):
    return x + s.fc2(F.silu(s.fc1(x), inplace=True))


# a buffer filled through out= is not followed as data yet (the real-families issue's
# "data flow through writes into fresh buffers"): refusing is sound
@case("mul_out_into_fresh", "either")
def _(s, x):
    h = s.fc1(x)
    g = torch.empty_like(h)
    torch.mul(h, 2, out=g)
    return x + s.fc2(g)


@case("zeroed_output_scaled_in_place", "harmless")
def _(s, x):
    f = s.branch(x)
    f.mul_(2)                               # 0 * 2 = 0
    return x + f


@case("zeroed_output_relu_inplace", "harmless")
def _(s, x):
    f = F.relu(s.branch(x), inplace=True)   # relu(0) = 0
    return x + f


@case("merge_output_written_after", "harmless", block_check=False)
def _(s, x):
    y = x + s.branch(x)
    y.mul_(2)
    return y


@case("torchvision_iadd_then_inplace_relu", "harmless", block_check=False, setup=_inplace_relu)
def _(s, x):
    out = s.branch(x)
    out += x
    out = s.act(out)
    return out


@case("fork_written_after_merge", "harmless")
def _(s, x):
    y = x + s.branch(x)
    x.mul_(2)                               # the merge has already read x
    return y


# (read through torch's decomposition of lerp, the refusal names the term that keeps it off
# zero: the constant 1.0 added to the branch)
@case("lerp_at_branch_end", "harmful", ("lerp", "1.0"))
def _(s, x):
    f = s.branch(x)
    return x + torch.lerp(f, f + 1.0, 0.5)  # 0.5 where f = 0


@case("addcmul_of_zeros", "either")
def _(s, x):
    f = s.branch(x)
    return x + torch.addcmul(f, f, f)        # 0 + 0 * 0


# -- opaque calls that may write what they receive -----------------------------------------

def _write_input(write: Callable[[torch.Tensor], Any]) -> Callable[..., None]:
    """A hook (pre or post) that writes the module's first input in place, returns None."""
    def hook(module: nn.Module, args: tuple, *rest: Any) -> None:
        write(args[0])
    return hook


def _prehook_writes(s: nn.Module) -> None:
    s.norm = nn.LayerNorm(C)
    s.norm.register_forward_pre_hook(_write_input(lambda t: t.mul_(2)))


def _prehook_copies(s: nn.Module) -> None:
    s.norm = nn.LayerNorm(C)
    s.norm.register_forward_pre_hook(lambda m, a: (a[0] * 2,))


def _posthook_writes_input(s: nn.Module) -> None:
    s.fc1.register_forward_hook(_write_input(lambda t: t.add_(1)))


def _prehook_on_fc1_writes(s: nn.Module) -> None:
    s.fc1.register_forward_pre_hook(_write_input(lambda t: t.mul_(2)))


@case("prehook_writes_fork", "harmful", ("norm", "hook"), setup=_prehook_writes,
      captures=("auto", "export", "concrete"))
def _(s, x):
    return x + s.branch(s.norm(x))


# an opaque call may write what it receives; no fake-tensor run proves this one does not
# yet (symbolic capture has no shapes): refusing is sound
@case("prehook_returns_copy", "either", setup=_prehook_copies)
def _(s, x):
    return x + s.branch(s.norm(x))


@case("posthook_on_fc1_writes_fork", "harmful", ("fc1", "hook"), setup=_posthook_writes_input)
def _(s, x):
    return x + s.branch(x)


@case("prehook_on_fc1_writes_fork", "harmful", ("fc1", "hook"), setup=_prehook_on_fc1_writes)
def _(s, x):
    return x + s.branch(x)


class InplaceCenter(nn.Module):
    """Centres its input in place (a user's leaf)."""

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t.sub_(t.mean(-1, keepdim=True))


class InplaceViaView(nn.Module):
    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t.view(-1).mul_(2)
        return t * 1.0


class Center(nn.Module):
    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t - t.mean(-1, keepdim=True)


def _leaf(cls: type) -> Callable[[nn.Module], None]:
    def setup(s: nn.Module) -> None:
        s.pre = cls()
    return setup


@case("leaf_writes_fork", "harmful", ("pre", "InplaceCenter"), setup=_leaf(InplaceCenter),
      leaf=(InplaceCenter,), captures=("auto", "concrete"))
def _(s, x):
    return x + s.branch(s.pre(x))


@case("leaf_writes_fork_through_view", "harmful", ("pre", "InplaceViaView"),
      setup=_leaf(InplaceViaView), leaf=("pre",))
def _(s, x):
    return x + s.branch(s.pre(x))


@case("leaf_pure", "either", setup=_leaf(Center), leaf=(Center,))  # (see prehook_returns_copy)
def _(s, x):
    return x + s.branch(s.pre(x))


# -- a forward replaced on the instance ----------------------------------------------------

def _patch_fc2_plus_one(s: nn.Module) -> None:
    lin = s.fc2
    lin.forward = lambda h: F.linear(h, lin.weight, lin.bias) + 1.0


def _patch_fc2_divides(s: nn.Module) -> None:
    lin = s.fc2
    lin.forward = lambda h: F.linear(h, lin.weight, lin.bias) / lin.weight.abs().sum()


def _patch_fc1_writes(s: nn.Module) -> None:
    lin = s.fc1
    lin.forward = lambda t: F.linear(t.mul_(2), lin.weight, lin.bias)


@case("patched_fc2_adds_one", "harmful", ("fc2", "forward", "constant 1.0"), setup=_patch_fc2_plus_one,
      captures=("auto", "export"))
def _(s, x):
    return x + s.branch(x)


@case("patched_fc2_divides_by_own_weight", "harmful", ("fc2", "forward"),
      setup=_patch_fc2_divides, captures=("auto", "export"))
def _(s, x):
    return x + s.branch(x)


@case("patched_fc1_writes_fork", "harmful", ("fc1", "forward", "mul_"), setup=_patch_fc1_writes,
      captures=("auto", "export"))
def _(s, x):
    return x + s.branch(x)


def _patch_fc2_same(s: nn.Module) -> None:
    s.fc2.forward = s.fc2.forward           # the class's own, but now in the instance dict


@case("patched_fc2_with_its_own_forward", "either", setup=_patch_fc2_same)
def _(s, x):
    return x + s.branch(x)


# -- plain tensor attributes sharing storage with a branch parameter -----------------------

@after_dtype
def _bias_alias(s: nn.Module) -> None:
    s.skip_scale = s.fc2.bias.data          # a plain attribute: neither parameter nor buffer


@after_dtype
def _weight_half(s: nn.Module) -> None:
    s.w_half = s.fc2.weight.data[:, :4]


# (the refusal says the path reaches the fork `x` without a layer that can be zeroed; it does
# not yet name the attribute: a wording gap noted in the op-semantics closing note)
@case("skip_scaled_by_alias_of_fc2_bias", "harmful", ("skip_scale", "fc2", "reaches `x`"),
      setup=_bias_alias)
def _(s, x):
    return x * s.skip_scale + s.branch(x)


@case("branch_divided_by_alias_of_fc2_weight", "harmful", ("w_half", "fc2"), setup=_weight_half)
def _(s, x):
    return x + s.branch(x) / s.w_half.abs().sum()


@case("branch_rsqrt_of_alias_of_fc2_weight", "harmful", ("w_half", "fc2"), setup=_weight_half)
def _(s, x):
    return x + s.branch(x) * torch.rsqrt(s.w_half.square().mean())


@after_dtype
def _bias_buffer_alias(s: nn.Module) -> None:
    if "skip_scale" in s._buffers:
        del s._buffers["skip_scale"]
    s.register_buffer("skip_scale", s.fc2.bias.data)


@case("skip_scaled_by_buffer_alias_of_fc2_bias", "harmful", ("skip_scale", "fc2", "reaches `x`"),
      setup=_bias_buffer_alias)
def _(s, x):
    return x * s.skip_scale + s.branch(x)


@after_dtype
def _bias_detached(s: nn.Module) -> None:
    s.skip_scale = s.fc2.bias.detach()      # detach() shares storage too


@case("skip_scaled_by_detached_fc2_bias", "harmful", ("skip_scale", "fc2", "reaches `x`"),
      setup=_bias_detached)
def _(s, x):
    return x * s.skip_scale + s.branch(x)


@after_dtype
def _fc2_shares_proj(s: nn.Module) -> None:
    if not hasattr(s, "proj"):
        s.proj = nn.Linear(C, C)
    s.fc2.weight.data = s.proj.weight.data  # two parameters, one storage


@case("fc2_weight_shares_storage_with_projection_skip", "harmful", ("proj", "fc2", "storage"),
      setup=_fc2_shares_proj)
def _(s, x):
    return s.proj(x) + s.branch(x)


@case("alias_of_fc2_weight_used_before_fc2", "either", setup=_weight_half)
def _(s, x):
    h = torch.relu(s.fc1(x) + F.linear(x[:, :4], s.w_half))
    return x + s.fc2(h)


# -- half precision: an eps that rounds to zero in the value's dtype -----------------------

HALF = ("float16", "bfloat16", "float32")
_HALF_KINDS = {"float16": "harmful", "bfloat16": "harmless", "float32": "harmless"}


@case("normalize_default_eps", "harmful", ("normalize", "eps", "float16"), dtypes=HALF,
      kind_by_dtype=_HALF_KINDS)
def _(s, x):
    return x + F.normalize(s.branch(x), dim=-1)


@case("norm_plus_1e-8", "harmful", ("div", "eps", "1e-08", "float16"), dtypes=HALF,
      kind_by_dtype=_HALF_KINDS)
def _(s, x):
    f = s.branch(x)
    return x + f / (f.norm(dim=-1, keepdim=True) + 1e-8)


@case("rms_eps_1e-8", "harmful", ("rsqrt", "eps", "1e-08", "float16"), dtypes=HALF,
      kind_by_dtype=_HALF_KINDS)
def _(s, x):
    f = s.branch(x)
    return x + f * torch.rsqrt(f.pow(2).mean(-1, keepdim=True) + 1e-8)


@case("norm_plus_1e-5_half", "harmless", dtypes=("float16", "bfloat16"))
def _(s, x):
    f = s.branch(x)                         # 1e-5 is a (subnormal) float16: 0 / 1e-5 = 0
    return x + f / (f.norm(dim=-1, keepdim=True) + 1e-5)


def _ln_tiny_eps(s: nn.Module) -> None:
    s.ln = nn.LayerNorm(C, eps=1e-8, elementwise_affine=False)


@case("layernorm_eps_1e-8_at_branch_end", "either", dtypes=HALF, setup=_ln_tiny_eps)
def _(s, x):
    return x + s.ln(s.branch(x))


# exp of a value the zeroing changed is taken to overflow in every dtype (the pass knows no
# value ranges): the bfloat16 control, which does not overflow here, may be refused too
@case("exp_overflow", "harmful", ("exp",), dtypes=HALF, kind_by_dtype={"bfloat16": "either"})
def _(s, x):
    f = s.branch(x)
    return x + f * torch.exp(f + 12.0)      # exp(12) = 162755 > float16 max


@case("pow_overflow", "harmful", ("pow",), dtypes=HALF, kind_by_dtype=_HALF_KINDS)
def _(s, x):
    f = s.branch(x)
    return x + f * (f + 300.0).pow(2)       # 90000 > float16 max


def _nn_rms(s: nn.Module) -> None:
    s.rms = nn.RMSNorm(C, eps=1e-8, elementwise_affine=False)


@case("nn_rmsnorm_eps_1e-8_at_branch_end", "either", dtypes=HALF, setup=_nn_rms)
def _(s, x):
    return x + s.rms(s.branch(x))


@case("normalize_explicit_tiny_eps", "harmful", ("normalize", "eps"), dtypes=HALF,
      kind_by_dtype=_HALF_KINDS)
def _(s, x):
    return x + F.normalize(s.branch(x), dim=-1, eps=1e-30)  # 0 in float16, not in bfloat16


@case("eps_1e-50_rounds_to_zero_in_float32", "harmful", ("div", "eps", "1e-50", "float32"),
      dtypes=("float32", "float64"), kind_by_dtype={"float64": "harmless"})
def _(s, x):
    f = s.branch(x)
    return x + f / (f.norm(dim=-1, keepdim=True) + 1e-50)


@case("exp_overflow_float32", "harmful", ("exp",), dtypes=("float32", "bfloat16", "float64"),
      kind_by_dtype={"float64": "either"})  # (float64: see exp_overflow)
def _(s, x):
    f = s.branch(x)
    return x + f * torch.exp(f + 100.0)     # exp(100) = 2.7e43 > float32 max


# -- range-dependent ops on a value the zeroing changed ------------------------------------

@case("log1p_of_minus_one", "harmful", ("log1p",))
def _(s, x):
    f = s.branch(x)
    return x + f * torch.log1p(f - 1.0)


@case("log_of_abs", "harmful", ("log",))
def _(s, x):
    f = s.branch(x)
    return x + f * torch.log(f.abs())


@case("sqrt_of_negative", "harmful", ("sqrt",))
def _(s, x):
    f = s.branch(x)
    return x + f * torch.sqrt(f - 1.0)


@case("acos_out_of_domain", "harmful", ("acos",))
def _(s, x):
    f = s.branch(x)
    return x + f * torch.acos(f + 2.0)


@case("asin_out_of_domain", "harmful", ("asin",))
def _(s, x):
    f = s.branch(x)
    return x + f * torch.asin(f - 2.0)


@case("atanh_of_one", "harmful", ("atanh",))
def _(s, x):
    f = s.branch(x)
    return x + f * torch.atanh(f + 1.0)


@case("log1p_of_minus_twice_sigmoid", "harmful", ("log1p",))
def _(s, x):
    f = s.branch(x)
    return x + f * torch.log1p(-2.0 * torch.sigmoid(f))     # sigmoid(0) = 1/2


@case("times_zero_of_overflowing_exp", "harmful", ("exp", "mul"))
def _(s, x):
    h = torch.exp(s.fc1(x) * 100.0)         # inf for some inputs: inf * 0 is NaN
    return x + s.fc2(torch.relu(h)) + h * 0.0


@case("log1p_of_zero", "harmless")
def _(s, x):
    f = s.branch(x)
    return x + f * torch.log1p(f)           # log1p(0) = 0: fine


@case("reciprocal_of_one_plus_zero", "either")
def _(s, x):
    f = s.branch(x)
    return x + f * torch.reciprocal(f + 1.0)


@case("where_nan_where_zero", "harmful", ("where", "nan"))
def _(s, x):
    f = s.branch(x)
    return x + torch.where(f == 0, torch.full_like(f, float("nan")), f)


@case("clamp_min_positive", "harmful", ("clamp",))
def _(s, x):
    f = s.branch(x)
    return x + torch.clamp(f, min=0.5)


@case("rsqrt_of_minus_one", "harmful", ("rsqrt",))
def _(s, x):
    f = s.branch(x)
    return x + f * torch.rsqrt(f - 1.0)


@case("log_of_previous_branch_across_blocks", "harmful", ("log",), setup=_second_block,
      block_check=False, skip_fixed=False)
def _(s, x):
    y = x + s.branch(x)
    g = y - x                               # the first branch: zero after the pass
    return y + s.fc4(torch.relu(s.fc3(y))) * torch.log(g.abs())


class Two(nn.Module):
    """Two blocks in a chain, ``b1(b0(x))``, each made by ``make()``: block 1 reads what
    zeroing block 0 leaves, so a proof past the first block is drawn."""

    def __init__(self, make: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.b0, self.b1 = make(), make()

    def forward(self, x):
        return self.b1(self.b0(x))
