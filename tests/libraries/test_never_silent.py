"""Never silent: every additive merge whose operands share a fork is named in the report.

For every real-library model the other files in this folder build (torchvision, timm,
transformers, diffusers), the graph the pass sees is captured again and walked here,
without asking the analysis: an additive op (``+``, ``+=``, ``-``, ``torch.add``/``sub``,
``.add_``, the aten overloads, ``stack(...).sum``) whose operands' backward cones share a
data node (a tensor computed from a model input; edges through non-tensor values such as
``x.shape`` carry no data) is a merge. Each such merge must be named by the report: a
touched row whose ``merge`` is it, or a row left alone whose node is it or whose reason is
about the branch ``into `it```. A merge whose one user is another additive op of the same
sum is named when the outermost add of that sum is.

The tensor-ness of each node is read by running the captured graph on the example inputs
(an interpreter, not the analysis under test).
"""
from __future__ import annotations

import operator
import warnings
from typing import Any

import pytest
import torch
import torchvision
from torch import fx, nn

from zeta_fx import zero_init_pass
from zeta_fx.capture import capture

import test_diffusers
import test_timm_metaformer as metaformer
import test_timm_parallel_blocks as parallel
import test_timm
import test_torchvision
import test_transformers
import test_transformers_mobilebert as mobilebert
import test_buffer_families as buffer_families
import test_hidream as hidream
import test_past_first_block as past_first_block
import test_recurrent_families as recurrent
import test_sana_linear_attention as sana
import test_value_flow_families as value_flow

ADD_FUNCS = {operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub}
ADD_METHODS = {"add", "add_", "sub", "sub_", "__add__", "__iadd__", "__sub__", "__radd__"}
ADD_ATEN = {"aten::add.Tensor", "aten::add_.Tensor", "aten::sub.Tensor", "aten::sub_.Tensor"}


def _aten_name(target: Any) -> str:
    schema = getattr(target, "_schema", None)
    return f"{schema.name}.{schema.overload_name}" if schema is not None else ""


def _is_stack(node: Any) -> bool:
    return isinstance(node, fx.Node) and (
        node.target is torch.stack or _aten_name(node.target) == "aten::stack.")


def is_additive(node: fx.Node) -> bool:
    if node.op == "call_function":
        if node.target in ADD_FUNCS or _aten_name(node.target) in ADD_ATEN:
            return True
        if node.target is torch.sum or _aten_name(node.target).startswith("aten::sum."):
            return _is_stack(node.args[0] if node.args else None)
        return False
    if node.op == "call_method":
        if node.target in ADD_METHODS:
            return True
        return node.target == "sum" and _is_stack(node.args[0])
    return False


def operands(node: fx.Node) -> list[fx.Node]:
    if (node.target in (torch.sum, "sum") or _aten_name(node.target).startswith("aten::sum.")):
        node = node.args[0]  # the stack
        values = node.args[0] if node.args else node.kwargs.get("tensors", ())
        return [v for v in values if isinstance(v, fx.Node)]
    values = list(node.args[:2]) + [node.kwargs.get(k) for k in ("other", "input")]
    return [v for v in values if isinstance(v, fx.Node)]


# ops that read only their input's shape, dtype and device: `zeros_like(x) - 1e38` (RWKV's
# initial running maximum) is a constant, not data from `x`
METADATA_ATEN = {f"aten::{op}." for op in ("zeros_like", "ones_like", "empty_like", "full_like",
                                           "new_zeros", "new_ones", "new_empty", "new_full")}
METADATA_TORCH = {torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like}
METADATA_METHODS = {"new_zeros", "new_ones", "new_empty", "new_full"}


def reads_metadata_only(node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in METADATA_TORCH or _aten_name(node.target) in METADATA_ATEN
    return node.op == "call_method" and node.target in METADATA_METHODS


def carries_tensor(value: Any) -> bool:
    """A tensor, or a container holding one (``split``'s tuple, a layer's output dict)."""
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (list, tuple)):
        return any(carries_tensor(v) for v in value)
    if isinstance(value, dict):
        return any(carries_tensor(v) for v in value.values())
    return False


class TensorKinds(fx.Interpreter):
    """Runs the graph and keeps, per node, whether its value is a tensor."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.tensor: dict[fx.Node, bool] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.tensor[n] = carries_tensor(out)
        return out


def tensor_nodes(gm: fx.GraphModule, args: tuple, kwargs: dict) -> dict[fx.Node, bool]:
    """Per node: is its value a tensor? From a run on the example inputs, or the export's
    own ``meta["val"]`` where the graph cannot be called with them."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    flat = list(args)
    for p in placeholders[len(args):]:
        name = p.target.lstrip("*")
        flat.append(kwargs[name] if name in kwargs else (p.args[0] if p.args else None))
    interp = TensorKinds(gm)
    try:
        with torch.no_grad():
            interp.run(*flat)
        return interp.tensor
    except Exception:  # torch.export flattens nested inputs: read its own meta instead
        return {n: carries_tensor(n.meta["val"]) for n in gm.graph.nodes if "val" in n.meta}


def shared_fork_merges(gm: fx.GraphModule, is_tensor: dict[fx.Node, bool]) -> list[fx.Node]:
    """The additive nodes whose operands' data cones (tensor edges only) share a data node."""
    data: dict[fx.Node, bool] = {}
    cone: dict[fx.Node, frozenset[fx.Node]] = {}
    for n in gm.graph.nodes:
        tensor_inputs = [i for i in n.all_input_nodes if is_tensor.get(i)]
        data[n] = bool(is_tensor.get(n)) and not reads_metadata_only(n) and (
            n.op == "placeholder" or any(data[i] for i in tensor_inputs))
        own = frozenset((n,)) if data[n] else frozenset()
        cone[n] = own.union(*(cone[i] for i in tensor_inputs if data[i])) if data[n] else own
    merges = []
    for n in gm.graph.nodes:
        if not data.get(n) or not is_additive(n):
            continue
        ops = [o for o in operands(n) if data.get(o)]
        if any(cone[a] & cone[b] for k, a in enumerate(ops) for b in ops[k + 1:]):
            merges.append(n)
    return merges


def outermost(node: fx.Node) -> fx.Node:
    """The outermost add of the sum ``node`` is an inner term of (itself if none)."""
    while len(node.users) == 1:
        user = next(iter(node.users))
        if not is_additive(user) or node not in operands(user):
            break
        node = user
    return node


def silent_merges(model: nn.Module, args: tuple, kwargs: dict,
                  **options: Any) -> tuple[list[str], int]:
    gm = capture(model, example_inputs=args or None, example_kwargs=kwargs or None, **options)
    merges = shared_fork_merges(gm, tensor_nodes(gm, args, kwargs))
    report = zero_init_pass(model, rule="residual_branch_last", dry_run=True,
                            example_inputs=args or None, example_kwargs=kwargs or None)
    named = {r["merge"] for r in report.touched if r["merge"]}
    named |= {s.node for s in report.skipped}
    reasons = [s.reason for s in report.skipped]

    def mentioned(name: str) -> bool:
        return name in named or any(f"into `{name}`" in r for r in reasons)

    silent = [m.name for m in merges if not mentioned(m.name) and not mentioned(outermost(m).name)]
    return silent, len(merges)


# --- every real-library model the folder builds -------------------------------------------

def _torchvision(name):
    def build():
        torch.manual_seed(0)
        return getattr(torchvision.models, name)().eval(), (torch.randn(1, 3, 64, 64),), {}
    return build


def _tv_vit():
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2,
                                                 num_heads=2, hidden_dim=32, mlp_dim=64)
    return model.eval(), (torch.randn(1, 3, 32, 32),), {}


def _tv_swin():
    torch.manual_seed(0)
    model = torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 1],
                                               num_heads=[2, 2], window_size=[2, 2])
    return model.eval(), (torch.randn(1, 3, 32, 32),), {}


def _timm(case_id):
    def build():
        case = test_timm.CASES[case_id]
        x = torch.randn(1, 3, case.size, case.size, generator=torch.Generator().manual_seed(1))
        return test_timm._build(case, False), (x,), {}
    return build


MODELS = {f"torchvision-{n}": _torchvision(n) for n in test_torchvision.RESNETS[:3]}
MODELS["torchvision-vit"] = _tv_vit
MODELS["torchvision-swin"] = _tv_swin
MODELS.update({f"timm-{c}": _timm(c) for c in test_timm.CASES})
MODELS.update({f"timm-vit-{b.__name__}-ls{ls}": (lambda b=b, ls=ls: (parallel.vit(b, ls), parallel.X, {}))
               for b in (parallel.ParallelScalingBlock, parallel.ParallelThingsBlock)
               for ls in (None, 1e-5)})
MODELS.update({f"timm-metaformer-{n}": (lambda n=n: (metaformer.build(n), metaformer.X, {}))
               for n in metaformer.CONFIGS})
MODELS.update({f"transformers-{n}": (lambda n=n: test_transformers._build(n))
               for n in sorted(test_transformers.FAMILIES)})
MODELS["transformers-mobilebert"] = lambda: (mobilebert.build(), mobilebert.IDS, {})
MODELS.update({f"diffusers-{n}": (lambda n=n: test_diffusers._build(n))
               for n in test_diffusers.FAMILIES})

def _ids() -> dict:
    return {"input_ids": torch.randint(3, 64, (1, 8), generator=torch.Generator().manual_seed(0)),
            "use_cache": False}


def _sana():
    return sana.build(num_layers=2), (), sana._kwargs(0)


def _convnext_v2():
    import timm

    torch.manual_seed(0)
    return timm.create_model("convnextv2_atto", pretrained=False).eval(), \
        (torch.randn(2, 3, 32, 32),), {}


# the families issue 20 names, built as their own tests build them
MODELS.update({f"transformers-{n}": (lambda n=n: (past_first_block.FAMILIES[n][0]().eval(), (),
                                                  _ids()))
               for n in past_first_block.FAMILIES})
MODELS.update({f"transformers-{n}": (lambda b=b: (b().eval(), (), _ids())) for n, b in
               (("recurrent_gemma", recurrent._recurrent_gemma), ("rwkv", recurrent._rwkv),
                ("qwen3_next", recurrent._qwen3_next))})
MODELS["diffusers-hidream"] = lambda: (hidream._model(), (), hidream._inputs(0))
MODELS["diffusers-lumina2"] = lambda: (buffer_families._lumina2(), (),
                                       buffer_families._inputs(0))
MODELS["diffusers-sana"] = _sana
MODELS["diffusers-wan"] = lambda: (lambda m, i: (m, (), value_flow._wan_kwargs(i)))(
    *value_flow._wan())
MODELS["timm-convnextv2_atto"] = _convnext_v2

# merges that are silent today because another part of issue 20 owns the fix
XFAIL: dict[str, str] = {}


def _param(name: str):
    marks = [pytest.mark.xfail(strict=True, reason=XFAIL[name])] if name in XFAIL else []
    return pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", [_param(n) for n in MODELS])
def test_every_shared_fork_merge_is_named_in_the_report(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, args, kwargs = MODELS[name]()
        silent, total = silent_merges(model, args, kwargs)
    assert total, "the walk found no merge at all: the test is not looking"
    assert not silent, f"{name}: {len(silent)} of {total} merges have no row: {silent}"
